"""Probes that read real chips through the vendors' tools: npu-smi and hccn_tool on
Ascend nodes; NVML (nvidia-ml-py) or nvidia-smi on Nvidia nodes.

The parsing is in `parsers.py` (pure, tested against recorded outputs); this module runs
the tools. A tool that is missing, hangs past its timeout, fails, or prints something
unparseable yields `unknown` health for the chips it should have described, with the
reason — never `ok`, and never an exception out of `read()`.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass

from agents.probes.base import LINK_DOWN_REASON
from agents.probes.parsers import (
    ParseError,
    XidEvent,
    parse_hccn_link,
    parse_npu_smi_health,
    parse_npu_smi_info,
    parse_nvidia_smi_csv,
)
from supervisor.shared.protocol import ChipStatus
from supervisor.shared.vocab import Health

NVIDIA_QUERY = (
    "index,temperature.gpu,memory.used,memory.total,"
    "ecc.errors.uncorrected.volatile.total,ecc.errors.corrected.volatile.total,utilization.gpu,power.draw"
)


@dataclass(frozen=True)
class ToolResult:
    stdout: str | None
    problem: str | None  # why there is no usable stdout


def run_tool(argv: list[str], timeout: float) -> ToolResult:
    """Run a vendor tool; never raises. The problem text is written for on-call."""
    if shutil.which(argv[0]) is None:
        return ToolResult(None, f"{argv[0]} not found on PATH")
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    except OSError as exc:
        return ToolResult(None, f"cannot run {argv[0]}: {exc.strerror or exc}")
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        try:
            proc.communicate(timeout=1.0)
        except subprocess.TimeoutExpired:
            pass  # stuck in the driver (D state) even after SIGKILL: leave it, do not wait forever
        return ToolResult(None, f"`{' '.join(argv)}` did not answer within {timeout:g}s (driver hung?)")
    if proc.returncode != 0:
        said = (stderr or stdout).strip().splitlines()
        return ToolResult(None, f"`{' '.join(argv)}` exited {proc.returncode}: {said[-1][:200] if said else 'no output'}")
    return ToolResult(stdout, None)


def _unknown(indices: range | list[int], reason: str) -> tuple[ChipStatus, ...]:
    return tuple(ChipStatus(index=i, health=Health.UNKNOWN, reason=reason) for i in indices)


def _fill_missing(chips: list[ChipStatus], expected: int, tool: str) -> tuple[ChipStatus, ...]:
    """A chip the tool no longer lists (lost, fallen off the bus) is unknown, not absent."""
    seen = {c.index for c in chips}
    missing = [ChipStatus(index=i, health=Health.UNKNOWN, reason=f"chip {i} is not listed by {tool}")
               for i in range(expected) if i not in seen]
    return tuple(sorted(chips + missing, key=lambda c: c.index))


class AscendProbe:
    """`npu-smi info` for every chip's health, temperature, power, AI Core use and memory
    (HBM and DDR apart); for a chip that is not ok, `npu-smi info -t health -i N` for its
    error codes; and, when hccn_tool is installed, each chip's RoCE link: `link` says
    "up" or "down", and a link that is down makes the chip alarm with the reason, which
    `chip_signal` turns into an interconnect fault on that chip (not a chip error)."""

    name = "npu-smi"

    def __init__(self, chips: int, timeout: float = 10.0) -> None:
        self.chips, self.timeout = chips, timeout

    def read(self) -> tuple[ChipStatus, ...]:
        result = run_tool(["npu-smi", "info"], self.timeout)
        if result.stdout is None:
            return _unknown(range(self.chips), result.problem or "npu-smi failed")
        try:
            chips = parse_npu_smi_info(result.stdout)
        except ParseError as exc:
            return _unknown(range(self.chips), f"cannot read npu-smi info: {exc}")
        chips = [self._details(c) for c in chips]
        if shutil.which("hccn_tool") is not None:
            chips = [self._link(c) for c in chips]
        return _fill_missing(chips, self.chips, "npu-smi")

    def _details(self, chip: ChipStatus) -> ChipStatus:
        if chip.health is Health.OK:
            return chip
        result = run_tool(["npu-smi", "info", "-t", "health", "-i", str(chip.index)], self.timeout)
        if result.stdout is None:
            return chip
        try:
            health = parse_npu_smi_health(result.stdout)
        except ParseError:
            return chip
        codes = tuple(health.get("error_codes") or ())
        reason = "; ".join(x for x in (chip.reason, health.get("reason")) if x) or None
        return _replace(chip, error_codes=codes or chip.error_codes, reason=reason)

    def _link(self, chip: ChipStatus) -> ChipStatus:
        result = run_tool(["hccn_tool", "-i", str(chip.index), "-link", "-g"], self.timeout)
        try:
            state = parse_hccn_link(result.stdout) if result.stdout is not None else None
        except ParseError:
            state = None
        if state == "down":
            reason = "; ".join(x for x in (chip.reason, LINK_DOWN_REASON) if x)
            return _replace(chip, health=Health.worst([chip.health, Health.ALARM]), reason=reason, link="down")
        return _replace(chip, link=state) if state is not None else chip


class NvidiaProbe:
    """NVML through nvidia-ml-py when it imports and initialises; otherwise
    `nvidia-smi --query-gpu=... --format=csv`."""

    name = "nvidia"

    def __init__(self, chips: int, timeout: float = 10.0) -> None:
        self.chips, self.timeout = chips, timeout

    def read(self) -> tuple[ChipStatus, ...]:
        chips = self._nvml()
        if chips is None:
            result = run_tool(["nvidia-smi", f"--query-gpu={NVIDIA_QUERY}", "--format=csv"], self.timeout)
            if result.stdout is None:
                return _unknown(range(self.chips), result.problem or "nvidia-smi failed")
            try:
                chips = parse_nvidia_smi_csv(result.stdout)
            except ParseError as exc:
                return _unknown(range(self.chips), f"cannot read nvidia-smi: {exc}")
        return _fill_missing(list(chips), self.chips, "nvidia-smi")

    def _nvml(self) -> list[ChipStatus] | None:
        try:
            import pynvml  # from nvidia-ml-py
        except ImportError:
            return None
        try:
            pynvml.nvmlInit()
        except Exception:
            return None  # no driver here: nvidia-smi will say why
        chips = []
        try:
            for i in range(pynvml.nvmlDeviceGetCount()):
                handle = pynvml.nvmlDeviceGetHandleByIndex(i)
                problems: list[str] = []
                temp = _try(lambda: float(pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU)))
                mem = _try(lambda: pynvml.nvmlDeviceGetMemoryInfo(handle))
                ecc_u = _try(lambda: int(pynvml.nvmlDeviceGetTotalEccErrors(
                    handle, pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, pynvml.NVML_VOLATILE_ECC)))
                ecc_c = _try(lambda: int(pynvml.nvmlDeviceGetTotalEccErrors(
                    handle, pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED, pynvml.NVML_VOLATILE_ECC)))
                pending = _try(lambda: pynvml.nvmlDeviceGetRetiredPagesPendingStatus(handle))
                power_mw = _try(lambda: pynvml.nvmlDeviceGetPowerUsage(handle))  # milliwatts
                rates = _try(lambda: pynvml.nvmlDeviceGetUtilizationRates(handle))
                health = Health.OK
                if ecc_u:
                    health = Health.ALARM
                    problems.append(f"{ecc_u} uncorrectable ECC errors since driver load")
                if pending:
                    health = Health.ALARM
                    problems.append("retired pages pending (reset the GPU)")
                chips.append(ChipStatus(
                    index=i, health=health, temperature_c=temp,
                    memory_used_mb=mem.used // 2**20 if mem else None,
                    memory_total_mb=mem.total // 2**20 if mem else None,
                    ecc_uncorrectable=ecc_u or 0, ecc_correctable=ecc_c or 0,
                    reason="; ".join(problems) or None,
                    power_w=power_mw / 1000.0 if power_mw is not None else None,
                    utilisation_pct=float(rates.gpu) if rates is not None else None,
                ))
        except Exception as exc:
            return [ChipStatus(index=i, health=Health.UNKNOWN, reason=f"NVML failed: {exc}") for i in range(self.chips)]
        finally:
            try:
                pynvml.nvmlShutdown()
            except Exception:
                pass
        return chips


def _try(read):  # type: ignore[no-untyped-def]
    """One NVML reading; a field the GPU does not support is None, not an error."""
    try:
        return read()
    except Exception:
        return None


def _replace(chip: ChipStatus, **changes: object) -> ChipStatus:
    import msgspec

    return msgspec.structs.replace(chip, **changes)


class KernelLogWatcher:
    """New NVRM Xid lines in the kernel log (`dmesg`), as they appear. What was already in
    the log when the agent started is history, not news: it is read once and skipped, so
    an agent restart does not report yesterday's Xid 79 again."""

    def __init__(self, timeout: float = 10.0) -> None:
        self.timeout = timeout
        self._seen: set[tuple[str | None, int, str | None, str]] | None = None
        self.problem: str | None = None

    def new_events(self) -> list[XidEvent]:
        from agents.probes.parsers import parse_dmesg_xid

        result = run_tool(["dmesg"], self.timeout)
        if result.stdout is None:
            self.problem = result.problem  # blind, and says so; never "no errors"
            return []
        try:
            events = parse_dmesg_xid(result.stdout)
        except ParseError as exc:
            self.problem = f"cannot read the kernel log: {exc}"
            return []
        self.problem = None
        keys = [(e.timestamp, e.xid, e.pci_bus_id, e.message) for e in events]
        if self._seen is None:
            self._seen = set(keys)
            return []
        fresh = [e for e, k in zip(events, keys) if k not in self._seen]
        self._seen = set(keys)  # what the ring buffer still holds; older lines are gone anyway
        return fresh
