"""agents.probes: change detection between reads, the simulated chips and their probe,
and the host health thresholds."""

from __future__ import annotations

from pathlib import Path

import pytest

from agents.probes import chip_probe_for
from agents.probes.base import ChipChange, NoChips, UnavailableProbe, chip_changes
from agents.probes.host import DISK_CRITICAL_FRACTION, DISK_WARNING_FRACTION, MEM_WARNING_PCT, assess_host
from agents.probes.sim import SimHardware, SimProbe
from agents.probes.vendor import AscendProbe, NvidiaProbe
from supervisor.shared.protocol import ChipStatus
from supervisor.shared.vocab import Accelerator, Fault, Health

# --- chip_changes ---------------------------------------------------------------------

BASE = ChipStatus(index=0, health=Health.OK, temperature_c=40.0, memory_used_mb=100, memory_total_mb=65536)


def like(chip: ChipStatus, **changes: object) -> ChipStatus:
    fields = {name: getattr(chip, name) for name in chip.__struct_fields__}
    fields.update(changes)
    return ChipStatus(**fields)


def test_identical_reads_have_no_changes() -> None:
    chips = (BASE, like(BASE, index=1))
    assert chip_changes(chips, chips) == []
    assert chip_changes((), ()) == []


@pytest.mark.parametrize(
    "changes",
    [
        {"health": Health.WARNING},
        {"health": Health.UNKNOWN, "reason": "npu-smi timed out"},
        {"error_codes": ("80E01801",)},
        {"ecc_uncorrectable": 1},
        {"reason": "throttling"},
    ],
    ids=["health", "unknown", "error-code", "ecc-uncorrectable", "reason"],
)
def test_health_error_codes_and_ecc_changes_are_changes(changes: dict) -> None:
    after = like(BASE, **changes)
    assert chip_changes((BASE,), (after,)) == [ChipChange(0, BASE, after)]


@pytest.mark.parametrize(
    "changes",
    [{"temperature_c": 83.5}, {"memory_used_mb": 60000}, {"ecc_correctable": 12}, {"memory_total_mb": 65535}],
    ids=["temperature", "memory-used", "ecc-correctable", "memory-total"],
)
def test_drift_in_readings_is_not_a_change(changes: dict) -> None:
    assert chip_changes((BASE,), (like(BASE, **changes),)) == []


def test_appearing_and_disappearing_chips_are_changes_in_index_order() -> None:
    c0, c1, c2 = BASE, like(BASE, index=1), like(BASE, index=2)
    changes = chip_changes((c2, c0), (c1, c0))
    assert changes == [ChipChange(1, None, c1), ChipChange(2, c2, None)]
    assert (changes[0].health_before, changes[0].health_after) == (None, Health.OK)
    assert (changes[1].health_before, changes[1].health_after) == (Health.OK, None)


def test_only_the_changed_chip_is_reported() -> None:
    before = tuple(like(BASE, index=i) for i in range(4))
    after = before[:2] + (like(before[2], health=Health.CRITICAL),) + before[3:]
    changes = chip_changes(before, after)
    assert [(c.index, c.health_before, c.health_after) for c in changes] == [(2, Health.OK, Health.CRITICAL)]


# --- simulated hardware ---------------------------------------------------------------


@pytest.fixture
def hardware(tmp_path: Path) -> SimHardware:
    hw = SimHardware(tmp_path / "sim" / "chips.json", Accelerator.SIM_ASCEND, 4)
    hw.ensure()
    return hw


def read(hw: SimHardware) -> tuple[ChipStatus, ...]:
    return SimProbe(hw).read()


def test_ensure_creates_healthy_chips(tmp_path: Path) -> None:
    hw = SimHardware(tmp_path / "sim" / "chips.json", Accelerator.SIM_NVIDIA, 2)
    hw.ensure()
    assert hw.path.exists()
    assert read(hw) == tuple(
        ChipStatus(index=i, health=Health.OK, temperature_c=42.0, memory_used_mb=0, memory_total_mb=81559)
        for i in range(2)
    )


def test_sim_ascend_chips_have_ascend_memory(hardware: SimHardware) -> None:
    assert {c.memory_total_mb for c in read(hardware)} == {65536}


def test_a_real_accelerator_is_not_simulated(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a simulated accelerator"):
        SimHardware(tmp_path / "chips.json", Accelerator.ASCEND, 4)


def test_ensure_keeps_an_injected_fault_across_an_agent_restart(hardware: SimHardware) -> None:
    hardware.apply(Fault.CRITICAL, 2)
    SimHardware(hardware.path, Accelerator.SIM_ASCEND, 4).ensure()
    assert [c.health for c in read(hardware)] == [Health.OK, Health.OK, Health.CRITICAL, Health.OK]


@pytest.mark.parametrize(
    "accelerator, chips",
    [(Accelerator.SIM_ASCEND, 8), (Accelerator.SIM_NVIDIA, 4)],
    ids=["other-chip-count", "other-accelerator"],
)
def test_ensure_replaces_a_set_that_does_not_match(hardware: SimHardware, accelerator: Accelerator, chips: int) -> None:
    hardware.apply(Fault.CRITICAL, 2)
    replacement = SimHardware(hardware.path, accelerator, chips)
    replacement.ensure()
    status = read(replacement)
    assert len(status) == chips
    assert {c.health for c in status} == {Health.OK}


# What each Fault does to a healthy chip, as agents/probes/sim.py documents it:
# (health, uncorrectable ECC, error codes).
FAULT_ON_HEALTHY = {
    Fault.OK: (Health.OK, 0, ()),
    Fault.WARNING: (Health.WARNING, 0, ()),
    Fault.ALARM: (Health.ALARM, 0, ()),
    Fault.CRITICAL: (Health.CRITICAL, 0, ()),
    Fault.ECC: (Health.ALARM, 3, ("sim:ecc_uncorrectable",)),
    Fault.CHIP_ERROR: (Health.CRITICAL, 0, ("sim:chip_error",)),
    Fault.CHIP_DEGRADED: (Health.WARNING, 0, ("sim:chip_degraded",)),
    # Acted out by the rank on the chip (the runtime); the chip itself reads healthy.
    Fault.HANG: (Health.OK, 0, ()),
    Fault.INTERCONNECT_TIMEOUT: (Health.OK, 0, ()),
}


CHIP_FAULTS = [f for f in Fault if not f.needs_rank]


def test_every_chip_fault_has_an_expected_effect() -> None:
    assert set(FAULT_ON_HEALTHY) == set(CHIP_FAULTS)


def test_a_rank_fault_is_not_a_chip_state(hardware: SimHardware) -> None:
    """crash is acted out on the training rank (the agent SIGKILLs it), not on the chip."""
    with pytest.raises(ValueError):
        hardware.apply(Fault.CRASH, 1)
    assert all(c.health is Health.OK for c in read(hardware))


@pytest.mark.parametrize("fault", CHIP_FAULTS, ids=lambda f: f.value)
def test_each_fault_changes_what_the_probe_reads(hardware: SimHardware, fault: Fault) -> None:
    returned = hardware.apply(fault, 1, count=3)
    health, ecc, codes = FAULT_ON_HEALTHY[fault]

    chips = read(hardware)
    chip = chips[1]
    assert (chip.health, chip.ecc_uncorrectable, chip.error_codes) == (health, ecc, codes)
    assert chip.reason == (", ".join(codes) or None)
    assert returned["health"] == health.value and returned["ecc_uncorrectable"] == ecc
    assert [c.health for i, c in enumerate(chips) if i != 1] == [Health.OK] * 3, "other chips untouched"


def test_ok_resets_a_faulted_chip(hardware: SimHardware) -> None:
    hardware.apply(Fault.ECC, 0, count=2)
    hardware.apply(Fault.CHIP_ERROR, 0)
    hardware.apply(Fault.OK, 0)
    chip0, chip1 = read(hardware)[:2]
    assert like(chip0, index=1) == chip1  # as new as its untouched neighbour
    assert chip0.health is Health.OK


def test_ecc_accumulates_without_repeating_its_code_and_never_lowers_health(hardware: SimHardware) -> None:
    hardware.apply(Fault.CRITICAL, 0)
    hardware.apply(Fault.ECC, 0, count=2)
    hardware.apply(Fault.ECC, 0, count=5)
    chip = read(hardware)[0]
    assert chip.health is Health.CRITICAL
    assert chip.ecc_uncorrectable == 7
    assert chip.error_codes == ("sim:ecc_uncorrectable",)


def test_degraded_never_lowers_health_and_codes_accumulate(hardware: SimHardware) -> None:
    hardware.apply(Fault.ECC, 0)
    hardware.apply(Fault.CHIP_DEGRADED, 0)
    chip = read(hardware)[0]
    assert chip.health is Health.ALARM
    assert chip.error_codes == ("sim:ecc_uncorrectable", "sim:chip_degraded")
    assert chip.reason == "sim:ecc_uncorrectable, sim:chip_degraded"


def test_a_health_level_fault_sets_the_level_directly(hardware: SimHardware) -> None:
    hardware.apply(Fault.CRITICAL, 0)
    hardware.apply(Fault.WARNING, 0)
    assert read(hardware)[0].health is Health.WARNING


@pytest.mark.parametrize("chip", [-1, 4, 100])
def test_a_chip_that_does_not_exist_is_a_value_error(hardware: SimHardware, chip: int) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        hardware.apply(Fault.CRITICAL, chip)
    assert {c.health for c in read(hardware)} == {Health.OK}


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"{not json",
        b'{"accelerator": "sim-ascend", "chips": [{"index": 0, "health": "ok"}',  # cut short
        b"\xff\xfe\x00garbage",
        b"[]",
        b"null",
        b'{"accelerator": "sim-ascend"}',
        b'{"accelerator": "tpu", "chips": []}',
        b'{"accelerator": "sim-ascend", "chips": [{"index": 0, "health": "splendid"}]}',
    ],
    ids=["empty", "not-json", "truncated", "binary", "list", "null", "no-chips-key", "bad-accelerator", "bad-health"],
)
def test_a_corrupt_chips_file_reads_as_unknown_never_ok(hardware: SimHardware, content: bytes) -> None:
    hardware.path.write_bytes(content)
    chips = read(hardware)
    assert [c.index for c in chips] == [0, 1, 2, 3]
    for chip in chips:
        assert chip.health is Health.UNKNOWN
        assert chip.reason and str(hardware.path) in chip.reason


def test_a_missing_chips_file_reads_as_unknown(hardware: SimHardware) -> None:
    hardware.path.unlink()
    assert {c.health for c in read(hardware)} == {Health.UNKNOWN}


def test_ensure_repairs_a_corrupt_chips_file(hardware: SimHardware) -> None:
    hardware.path.write_bytes(b"{not json")
    hardware.ensure()
    assert {c.health for c in read(hardware)} == {Health.OK}


def test_chip_probe_for_picks_the_probe_by_accelerator(tmp_path: Path) -> None:
    sim = chip_probe_for(Accelerator.SIM_NVIDIA, 2, tmp_path)
    assert isinstance(sim, SimProbe)
    assert (tmp_path / "sim" / "chips.json").exists()
    assert [c.health for c in sim.read()] == [Health.OK, Health.OK]

    assert isinstance(chip_probe_for(Accelerator.CPU, 0, tmp_path), NoChips)
    assert NoChips().read() == ()

    assert isinstance(chip_probe_for(Accelerator.ASCEND, 3, tmp_path), AscendProbe)
    assert isinstance(chip_probe_for(Accelerator.NVIDIA, 3, tmp_path), NvidiaProbe)


def test_an_unavailable_probe_is_blind_not_healthy() -> None:
    chips = UnavailableProbe(3, "no probe for ascend").read()
    assert [c.index for c in chips] == [0, 1, 2]
    assert all(c.health is Health.UNKNOWN and c.reason == "no probe for ascend" for c in chips)


# --- host thresholds ------------------------------------------------------------------

GIB = 2**30


def test_thresholds_are_the_documented_ones() -> None:
    assert (MEM_WARNING_PCT, DISK_WARNING_FRACTION, DISK_CRITICAL_FRACTION) == (95.0, 0.05, 0.01)


def test_a_healthy_host_is_ok_with_no_reason() -> None:
    status = assess_host(40.0, 500 * GIB, 1000 * GIB, 1.234)
    assert status.health is Health.OK
    assert status.reason is None
    assert (status.mem_used_pct, status.disk_free_bytes, status.disk_total_bytes, status.load1) == (
        40.0,
        500 * GIB,
        1000 * GIB,
        1.23,
    )


@pytest.mark.parametrize(
    "mem, free, total, health, reason",
    [
        (94.9, 50, 1000, Health.OK, None),
        (95.0, 50, 1000, Health.WARNING, "memory 95% used"),
        (99.6, 50, 1000, Health.WARNING, "memory 100% used"),
        (10.0, 49, 1000, Health.WARNING, "work dir disk 4.9% free"),
        (10.0, 10, 1000, Health.WARNING, "work dir disk 1.0% free"),
        (10.0, 9, 1000, Health.CRITICAL, "work dir disk 0.9% free"),
        (10.0, 0, 1000, Health.CRITICAL, "work dir disk 0.0% free"),
        (97.0, 5, 1000, Health.CRITICAL, "memory 97% used; work dir disk 0.5% free"),
    ],
)
def test_memory_and_disk_thresholds(mem: float, free: int, total: int, health: Health, reason: str | None) -> None:
    status = assess_host(mem, free, total, None)
    assert status.health is health
    assert status.reason == reason


def test_readings_that_failed_make_the_host_unknown() -> None:
    status = assess_host(None, 500, 1000, None, ["memory unreadable: EPERM"])
    assert status.health is Health.UNKNOWN
    assert status.reason == "memory unreadable: EPERM"


def test_unknown_outranks_warning_but_not_critical() -> None:
    assert assess_host(99.0, 500, 1000, None, ["disk unreadable"]).health is Health.UNKNOWN
    critical = assess_host(None, 1, 1000, None, ["memory unreadable"])
    assert critical.health is Health.CRITICAL
    assert critical.reason == "memory unreadable; work dir disk 0.1% free"


@pytest.mark.parametrize("free, total", [(None, None), (0, 0), (5, None)])
def test_a_disk_without_a_size_is_not_judged(free: int | None, total: int | None) -> None:
    assert assess_host(10.0, free, total, None).health is Health.OK


def test_assess_host_does_not_modify_the_callers_problem_list() -> None:
    problems = ["memory unreadable"]
    assess_host(99.0, 1, 1000, None, problems)
    assert problems == ["memory unreadable"]


def test_rank_faults_are_marked_on_the_chip_for_the_runtime_and_ok_clears_them(hardware: SimHardware) -> None:
    for fault in (Fault.HANG, Fault.INTERCONNECT_TIMEOUT, Fault.CHIP_ERROR):
        hardware.apply(fault, 1)
        assert hardware.load().chips[1].act == fault.value
        hardware.apply(Fault.OK, 1)
        assert hardware.load().chips[1].act is None
