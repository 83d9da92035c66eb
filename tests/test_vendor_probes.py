"""Vendor probes running real subprocesses: fake npu-smi / nvidia-smi / hccn_tool on
PATH replay recorded outputs (tests/fixtures/tools, see SOURCES.md), so the real
subprocess handling and parsers run. Failure modes: missing tool, hang, garbage, error."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from agents.probes.base import LINK_DOWN_REASON, chip_signal
from agents.probes.parsers import parse_npu_smi_info, parse_nvidia_smi_csv
from agents.probes.vendor import AscendProbe, NvidiaProbe
from supervisor.shared.protocol import ChipStatus
from supervisor.shared.vocab import Health, Signal

# The probes run fake vendor tools (executables on PATH) in child processes.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "tools"
WARNING_TABLE = FIXTURES / "npu-smi-info-atlas800-9010-24.1.RC2-warning.txt"
HEALTHY_TABLE = FIXTURES / "npu-smi-info-910b2-23.0.7.txt"
HEALTH_OK = FIXTURES / "npu-smi-health-910-ok-mindcluster.txt"
H100_CSV = FIXTURES / "nvidia-smi-csv-8xh100-535.161.07.txt"


@pytest.fixture
def fakebin(tmp_path, monkeypatch):
    """A directory on PATH (in place of the real PATH) to put fake tools in."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")

    def tool(name: str, script: str) -> None:
        path = bin_dir / name
        path.write_text("#!/bin/sh\n" + script + "\n")
        path.chmod(path.stat().st_mode | stat.S_IEXEC)

    return tool


def test_npu_smi_tables_are_read_through_the_real_tool_path(fakebin):
    fakebin("npu-smi", f'cat "{HEALTHY_TABLE}"')
    chips = AscendProbe(chips=len(parse_npu_smi_info(HEALTHY_TABLE.read_text()))).read()
    assert chips == tuple(parse_npu_smi_info(HEALTHY_TABLE.read_text()))
    assert chips and all(c.health is Health.OK for c in chips)


def test_a_chip_that_is_not_ok_gets_its_health_details(fakebin):
    # `npu-smi info -t health -i N` answers for the warning chips (recorded healthy detail
    # output: the chip's summary health still comes from the table).
    log = Path(os.environ["PATH"].split(":")[0]) / "calls"
    fakebin("npu-smi", f'echo "$@" >> "{log}"; if [ "$2" = "-t" ]; then cat "{HEALTH_OK}"; else cat "{WARNING_TABLE}"; fi')
    chips = AscendProbe(chips=8).read()
    assert [c.index for c in chips if c.health is Health.WARNING] == [3, 7]
    assert all("Warning" in (c.reason or "") for c in chips if c.health is Health.WARNING)
    assert log.read_text().splitlines() == ["info", "info -t health -i 3", "info -t health -i 7"]


def test_a_missing_tool_reports_every_chip_unknown_with_the_reason(fakebin):
    chips = AscendProbe(chips=4).read()
    assert [c.health for c in chips] == [Health.UNKNOWN] * 4
    assert chips[0].reason == "npu-smi not found on PATH"


def test_a_hanging_tool_is_cut_off_at_its_timeout(fakebin):
    fakebin("npu-smi", "sleep 30")
    started = time.monotonic()
    chips = AscendProbe(chips=2, timeout=0.5).read()
    assert time.monotonic() - started < 5
    assert [c.health for c in chips] == [Health.UNKNOWN] * 2
    assert "did not answer within 0.5s" in chips[0].reason


def test_garbage_output_is_unknown_not_ok(fakebin):
    fakebin("npu-smi", "echo 'Segmentation fault (core dumped)'; echo '%%%%'")
    chips = AscendProbe(chips=2).read()
    assert all(c.health is Health.UNKNOWN for c in chips)
    assert chips[0].reason.startswith("cannot read npu-smi info")


def test_a_failing_tool_passes_its_message_on(fakebin):
    fakebin("nvidia-smi", "echo \"NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.\"; exit 9")
    chips = NvidiaProbe(chips=2).read()
    assert all(c.health is Health.UNKNOWN for c in chips)
    assert "exited 9" in chips[0].reason and "couldn't communicate with the NVIDIA driver" in chips[0].reason


def test_nvidia_smi_csv_is_the_fallback_without_nvml(fakebin):
    try:
        import pynvml  # noqa: F401
        pytest.skip("nvidia-ml-py is installed: the NVML path would run instead")
    except ImportError:
        pass
    fakebin("nvidia-smi", f'cat "{H100_CSV}"')
    chips = NvidiaProbe(chips=8).read()
    assert chips == tuple(parse_nvidia_smi_csv(H100_CSV.read_text()))


def test_a_chip_the_tool_stops_listing_is_unknown(fakebin):
    table = HEALTHY_TABLE.read_text()
    listed = len(parse_npu_smi_info(table))
    fakebin("npu-smi", f'cat "{HEALTHY_TABLE}"')
    chips = AscendProbe(chips=listed + 1).read()
    assert len(chips) == listed + 1
    assert chips[-1].health is Health.UNKNOWN and chips[-1].reason == f"chip {listed} is not listed by npu-smi"


def test_a_roce_link_that_is_down_makes_the_chip_alarm(fakebin, tmp_path):
    # No public capture of `link status: DOWN` exists (SOURCES.md); this is the recorded
    # UP output with the state word changed.
    down = tmp_path / "link-down.txt"
    down.write_text((FIXTURES / "hccn-link-up-mindcluster.txt").read_text().replace("UP", "DOWN"))
    fakebin("npu-smi", f'cat "{HEALTHY_TABLE}"')
    fakebin("hccn_tool", f'if [ "$2" = "1" ]; then cat "{down}"; else cat "{FIXTURES / "hccn-link-up-mindcluster.txt"}"; fi')
    chips = AscendProbe(chips=len(parse_npu_smi_info(HEALTHY_TABLE.read_text()))).read()
    assert chips[1].health is Health.ALARM and "RoCE link down" in chips[1].reason
    assert chips[0].health is Health.OK
    # The chip computes; its network does not: an interconnect fault on that chip.
    assert (chips[1].link, chip_signal(chips[1])) == ("down", Signal.INTERCONNECT_TIMEOUT)
    assert (chips[0].link, chip_signal(chips[0])) == ("up", None)


def test_a_chip_signal_is_an_interconnect_fault_only_when_the_link_is_all_that_is_wrong():
    down = ChipStatus(index=0, health=Health.ALARM, reason=LINK_DOWN_REASON, link="down")
    assert chip_signal(down) is Signal.INTERCONNECT_TIMEOUT
    both = ChipStatus(index=0, health=Health.ALARM, reason=f"npu-smi reports health Alarm; {LINK_DOWN_REASON}", link="down")
    assert chip_signal(both) is Signal.CHIP_ERROR
    assert chip_signal(ChipStatus(index=0, health=Health.CRITICAL, link="down")) is Signal.CHIP_ERROR
    assert chip_signal(ChipStatus(index=0, health=Health.WARNING)) is Signal.CHIP_DEGRADED
    assert chip_signal(ChipStatus(index=0, health=Health.UNKNOWN)) is None


def test_npu_smi_readings_reach_the_probe(fakebin):
    fakebin("npu-smi", f'cat "{HEALTHY_TABLE}"')
    chips = AscendProbe(chips=8).read()
    assert all(c.power_w and c.utilisation_pct is not None and c.hbm_total_mb == 65536 for c in chips)


def test_the_kernel_log_watcher_reports_only_xids_that_appear_after_it_started(fakebin, tmp_path):
    from agents.probes.vendor import KernelLogWatcher

    log = tmp_path / "kmsg.txt"
    old = (FIXTURES / "dmesg-xid-63-row-remap.txt").read_text()
    log.write_text(old)
    fakebin("dmesg", f'cat "{log}"')
    watcher = KernelLogWatcher()
    assert watcher.new_events() == [], "what was in the log before the agent started is history"
    log.write_text(old + (FIXTURES / "dmesg-xid-79-fallen-off-bus.txt").read_text())
    (event,) = watcher.new_events()
    assert event.xid == 79 and event.pci_bus_id == "00000000:A1:00.0"
    assert watcher.new_events() == [], "reported once"


def test_an_unreadable_kernel_log_is_reported_as_blindness_not_silence(fakebin):
    from agents.probes.vendor import KernelLogWatcher

    fakebin("dmesg", "echo 'dmesg: read kernel buffer failed: Operation not permitted' >&2; exit 1")
    watcher = KernelLogWatcher()
    assert watcher.new_events() == []
    assert "Operation not permitted" in watcher.problem
