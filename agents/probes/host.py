"""Host health with psutil: memory, the work dir's disk, load.

A full disk is the classic silent killer of a checkpointing run, so free space of the
work dir (where checkpoints and logs go) is the headline figure here.
"""

from __future__ import annotations

import os
from pathlib import Path

import psutil

from supervisor.shared.protocol import HostStatus
from supervisor.shared.vocab import Health

MEM_WARNING_PCT = 95.0
DISK_WARNING_FRACTION = 0.05
DISK_CRITICAL_FRACTION = 0.01


class PsutilHostProbe:
    name = "host"

    def __init__(self, work_dir: Path) -> None:
        self.work_dir = work_dir

    def read(self) -> HostStatus:
        problems: list[str] = []
        try:
            mem = psutil.virtual_memory().percent
        except OSError as exc:
            mem = None
            problems.append(f"memory unreadable: {exc}")
        try:
            disk = psutil.disk_usage(str(self.work_dir))
            free, total = disk.free, disk.total
        except OSError as exc:
            free = total = None
            problems.append(f"disk of {self.work_dir} unreadable: {exc.strerror or exc}")
        try:
            load1 = os.getloadavg()[0]
        except OSError:
            load1 = None
        return assess_host(mem, free, total, load1, problems)


def assess_host(
    mem_used_pct: float | None,
    disk_free: int | None,
    disk_total: int | None,
    load1: float | None,
    problems: list[str] | None = None,
) -> HostStatus:
    """Pure: the host health these readings mean."""
    problems = list(problems or [])
    health = Health.UNKNOWN if problems else Health.OK
    if mem_used_pct is not None and mem_used_pct >= MEM_WARNING_PCT:
        health = Health.worst([health, Health.WARNING])
        problems.append(f"memory {mem_used_pct:.0f}% used")
    if disk_free is not None and disk_total:
        fraction = disk_free / disk_total
        if fraction < DISK_CRITICAL_FRACTION:
            health = Health.worst([health, Health.CRITICAL])
            problems.append(f"work dir disk {fraction:.1%} free")
        elif fraction < DISK_WARNING_FRACTION:
            health = Health.worst([health, Health.WARNING])
            problems.append(f"work dir disk {fraction:.1%} free")
    return HostStatus(
        health=health,
        mem_used_pct=mem_used_pct,
        disk_free_bytes=disk_free,
        disk_total_bytes=disk_total,
        load1=round(load1, 2) if load1 is not None else None,
        reason="; ".join(problems) or None,
    )
