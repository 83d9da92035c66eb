"""Simulated chips: the hardware seam for machines without accelerators.

The simulated hardware is a small JSON file in the agent's work dir
(`sim/chips.json`). `SimHardware` is the chip itself — `trainguard inject` changes it, as a
real fault would change a real chip — and `SimProbe` reads it the way the ascend / nvidia
probes read npu-smi or NVML. Nothing else looks at the injection: detection runs through
the probe, as it does in production. A file also lets other processes on the node (the
training ranks, later) see what state their chip is in.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import msgspec

from supervisor.shared.protocol import ChipStatus
from supervisor.shared.vocab import Accelerator, Fault, Health

# Plausible figures for the chips being simulated (Ascend 910B: 64 GB HBM; H100: 80 GB).
_MEMORY_MB = {Accelerator.SIM_ASCEND: 65536, Accelerator.SIM_NVIDIA: 81559}


class SimChip(msgspec.Struct, kw_only=True):
    index: int
    health: Health = Health.OK
    ecc_uncorrectable: int = 0
    error_codes: list[str] = []
    temperature_c: float = 42.0
    #: What the training rank on this chip must act out (hang, interconnect_timeout,
    #: chip_error), read by the runtime's heartbeat() on sim accelerators.
    act: str | None = None


class SimState(msgspec.Struct, kw_only=True):
    accelerator: Accelerator
    chips: list[SimChip]


class SimHardware:
    """The simulated chips of one node, persisted in `path`."""

    def __init__(self, path: Path, accelerator: Accelerator, chips: int) -> None:
        if not accelerator.simulated:
            raise ValueError(f"{accelerator.value} is not a simulated accelerator")
        self.path = path
        self.accelerator = accelerator
        self.chips = chips

    def ensure(self) -> None:
        """Create the chips (all healthy) unless a matching set already exists, so an
        agent restart keeps an injected fault, as a restart would on real hardware."""
        try:
            state = self.load()
            if state.accelerator is self.accelerator and len(state.chips) == self.chips:
                return
        except (OSError, msgspec.MsgspecError):
            pass
        self._save(SimState(accelerator=self.accelerator, chips=[SimChip(index=i) for i in range(self.chips)]))

    def load(self) -> SimState:
        return msgspec.json.decode(self.path.read_bytes(), type=SimState)

    def apply(self, fault: Fault, chip: int, count: int = 1) -> dict[str, Any]:
        """Change one chip as `fault` would; returns the chip's new state."""
        if fault.needs_rank:
            raise ValueError(f"{fault.value} is acted out on the training rank, not on the chip")
        state = self.load()
        if not 0 <= chip < len(state.chips):
            raise ValueError(f"chip {chip} does not exist (this node has 0..{len(state.chips) - 1})")
        c = state.chips[chip]
        if fault is Fault.OK:
            state.chips[chip] = SimChip(index=chip)
        elif fault is Fault.ECC:
            c.ecc_uncorrectable += count
            c.health = max(c.health, Health.ALARM, key=lambda h: h.rank)
            _add_code(c, "sim:ecc_uncorrectable")
        elif fault is Fault.CHIP_ERROR:
            c.health = Health.CRITICAL
            _add_code(c, "sim:chip_error")
            c.act = "chip_error"
        elif fault in (Fault.HANG, Fault.INTERCONNECT_TIMEOUT):
            c.act = fault.value  # the chip itself looks fine: the failure shows in the rank
        elif fault is Fault.CHIP_DEGRADED:
            c.health = max(c.health, Health.WARNING, key=lambda h: h.rank)
            _add_code(c, "sim:chip_degraded")
        else:
            c.health = Health(fault.value)
        self._save(state)
        return msgspec.to_builtins(state.chips[chip])

    def _save(self, state: SimState) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".chips.")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(msgspec.json.encode(state))
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _add_code(chip: SimChip, code: str) -> None:
    if code not in chip.error_codes:
        chip.error_codes.append(code)


class SimProbe:
    """Reads the simulated chips as a vendor tool would read real ones."""

    name = "sim"

    def __init__(self, hardware: SimHardware) -> None:
        self.hardware = hardware

    def read(self) -> tuple[ChipStatus, ...]:
        try:
            state = self.hardware.load()
        except (OSError, msgspec.MsgspecError, json.JSONDecodeError) as exc:
            reason = f"cannot read simulated chips from {self.hardware.path}: {exc}"
            return tuple(
                ChipStatus(index=i, health=Health.UNKNOWN, reason=reason) for i in range(self.hardware.chips)
            )
        memory = _MEMORY_MB[state.accelerator]
        read = {c.index for c in state.chips}
        # A chip the "hardware" no longer lists is not healthy, it is unaccounted for.
        missing = tuple(
            ChipStatus(index=i, health=Health.UNKNOWN, reason=f"chip {i} missing from {self.hardware.path}")
            for i in range(self.hardware.chips)
            if i not in read
        )
        present = tuple(
            ChipStatus(
                index=c.index,
                health=c.health,
                temperature_c=c.temperature_c,
                memory_used_mb=0,
                memory_total_mb=memory,
                ecc_uncorrectable=c.ecc_uncorrectable,
                error_codes=tuple(c.error_codes),
                reason=", ".join(c.error_codes) or None,
            )
            for c in state.chips
        )
        return tuple(sorted(missing + present, key=lambda c: c.index))
