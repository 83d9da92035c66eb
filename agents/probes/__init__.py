"""Chip and host probes, chosen by the node's accelerator."""

from __future__ import annotations

from pathlib import Path

from agents.probes.base import ChipProbe, NoChips, UnavailableProbe
from agents.probes.sim import SimHardware, SimProbe
from supervisor.vocab import Accelerator


def chip_probe_for(accelerator: Accelerator, chips: int, work_dir: Path) -> ChipProbe:
    if accelerator.simulated:
        hardware = SimHardware(work_dir / "sim" / "chips.json", accelerator, chips)
        hardware.ensure()
        return SimProbe(hardware)
    if accelerator is Accelerator.CPU:
        return NoChips()
    return UnavailableProbe(
        chips, f"this trainguard version has no {accelerator.value} probe yet; chip health is not read"
    )
