"""Chip and host probes, chosen by the node's accelerator."""

from __future__ import annotations

from pathlib import Path

from agents.probes.base import ChipProbe, NoChips, UnavailableProbe
from agents.probes.sim import SimHardware, SimProbe
from agents.probes.vendor import AscendProbe, NvidiaProbe
from supervisor.shared.vocab import Accelerator


def chip_probe_for(accelerator: Accelerator, chips: int, work_dir: Path) -> ChipProbe:
    if accelerator.simulated:
        hardware = SimHardware(work_dir / "sim" / "chips.json", accelerator, chips)
        hardware.ensure()
        return SimProbe(hardware)
    if accelerator is Accelerator.CPU:
        return NoChips()
    if accelerator is Accelerator.ASCEND:
        return AscendProbe(chips)
    if accelerator is Accelerator.NVIDIA:
        return NvidiaProbe(chips)
    return UnavailableProbe(chips, f"no probe for {accelerator.value}")
