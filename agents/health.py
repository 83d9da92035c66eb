"""The agent's eyes on its chips and host: probe reads off the loop thread, and what
changed between two reads turned into events.

`NodeHealth.due(now)` starts a read in a worker thread (vendor tools can take seconds,
or hang until their timeout: the agent's loop must keep heartbeating meanwhile) and
applies the previous read when it is there. A read that does not come back makes the
chips `unknown` ("a blind watcher must not look healthy"). Changes are handed to the
agent through two callbacks: `emit` for a ready event (chip.health_changed) and
`observe` for an Observation that becomes a signal (Xid lines, quiet hangs).
"""

from __future__ import annotations

import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable

import structlog

from agents.monitor import Observation, RankMonitor
from agents.probes.base import ChipProbe, HostProbe, chip_changes, chip_signal
from agents.probes.parsers import XidEvent
from agents.probes.vendor import KernelLogWatcher
from supervisor.shared.protocol import ChipStatus, Event, HostStatus, new_id
from supervisor.shared.vocab import Health, Signal

log = structlog.get_logger()

#: A probe read in flight longer than this is stuck (tools time out at 10 s each).
PROBE_STUCK_AFTER = 60.0



class NodeHealth:
    def __init__(self, node: str, chip_probe: ChipProbe, host_probe: HostProbe, kernel_log: KernelLogWatcher | None,
                 monitor: RankMonitor, probe_interval: float, emit: Callable[[Event], None],
                 observe: Callable[[Observation], None]) -> None:
        self.node = node
        self.chip_probe = chip_probe
        self.host_probe = host_probe
        self.kernel_log = kernel_log
        self.monitor = monitor
        self.probe_interval = probe_interval
        self._emit = emit
        self._observe = observe
        self.chips: tuple[ChipStatus, ...] = ()
        self.host: HostStatus | None = None
        self.next_probe = 0.0
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="probe")
        self._pending_xids: deque[tuple[XidEvent, float]] = deque()  # probe thread → loop
        self._kernel_log_problem: str | None = None
        self._probing: Future[tuple[tuple[ChipStatus, ...], HostStatus, float]] | None = None
        self._probing_since = 0.0
        self._stuck = False

    def first_read(self, now: float) -> None:
        """One read before registering, so the daemon learns the chips at once; nothing
        needs heartbeating yet, so waiting for a slow tool here costs nothing."""
        self.apply(*self.read())
        self.next_probe = now + self.probe_interval

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def due(self, now: float) -> None:
        """Start a read, or apply the one in flight when it has come back."""
        if now < self.next_probe:
            return
        if self._probing is not None:
            if not self._probing.done():
                self.next_probe = now + 0.05
                self._check_stuck(now)
                return
            self._stuck = False
            probing, self._probing = self._probing, None
            # At a fixed rate from the read's start: a chip's fault is seen within one
            # interval (plus the read), however long the reads take.
            self.next_probe = max(now + 0.05, self._probing_since + self.probe_interval)
            self.apply(*probing.result())
            return
        self._probing = self._pool.submit(self.read)
        self._probing_since = now
        self.next_probe = now + 0.05

    def _check_stuck(self, now: float) -> None:
        stuck_for = now - self._probing_since
        if stuck_for > PROBE_STUCK_AFTER and not self._stuck:
            # A blind probe must not look healthy: the chips become unknown until it returns.
            self._stuck = True
            log.error("probe.stuck", probe=self.chip_probe.name, stuck_for_s=round(stuck_for, 1),
                      effect="chips reported unknown until the probe returns")
            reason = f"probe {self.chip_probe.name} stuck for over {PROBE_STUCK_AFTER:g}s"
            self.apply(
                tuple(ChipStatus(index=c.index, health=Health.UNKNOWN, reason=reason) for c in self.chips),
                self.host or HostStatus(health=Health.UNKNOWN, reason=reason), time.time())

    def read(self) -> tuple[tuple[ChipStatus, ...], HostStatus, float]:
        """One read of everything (runs in the probe thread). Never raises."""
        observed_at = time.time()
        if self.kernel_log is not None:
            try:
                for xid in self.kernel_log.new_events():
                    self._pending_xids.append((xid, time.time()))
            except Exception:
                log.exception("probe.failed", probe="kernel-log")
        try:
            chips = self.chip_probe.read()
        except Exception as exc:  # a probe bug must not kill the agent, nor look healthy
            log.exception("probe.failed", probe=self.chip_probe.name)
            chips = tuple(ChipStatus(index=c.index, health=Health.UNKNOWN, reason=f"probe failed: {exc!r}")
                          for c in self.chips)
        try:
            host = self.host_probe.read()
        except Exception as exc:
            log.exception("probe.failed", probe="host")
            host = HostStatus(health=Health.UNKNOWN, reason=f"probe failed: {exc!r}")
        return chips, host, observed_at

    def apply(self, chips: tuple[ChipStatus, ...], host: HostStatus, observed_at: float) -> None:
        """Compare a read with the previous one and report what changed (loop thread)."""
        self._kernel_log_health()
        while self._pending_xids:
            xid, seen_at = self._pending_xids.popleft()
            self._observe(Observation(
                Signal.CHIP_ERROR, "", None,
                f"kernel log: NVRM Xid {xid.xid} on {xid.pci_bus_id or 'an unnamed GPU'}: {xid.message}"[:2000],
                seen_at, "dmesg",
                {"xid": xid.xid, "pci_bus_id": xid.pci_bus_id, "health": xid.health.value},
            ))
        first = not self.chips and self.host is None
        if not first:
            for change in chip_changes(self.chips, chips):
                self._chip_changed(change.before, change.after, observed_at)
            if self.host is not None and host.health is not self.host.health:
                log.warning("host.health_changed", previous=self.host.health.value, health=host.health.value,
                            evidence=host.reason)
        self.chips, self.host = chips, host
        # The no-heartbeat hang check rides on the probe interval (it needs chip use).
        utilisation = {c.index: c.utilisation_pct for c in chips}  # AI Core % / GPU %, None if unread
        for o in self.monitor.check_quiet(utilisation, self.probe_interval):
            self._observe(o)

    def _kernel_log_health(self) -> None:
        blind = self.kernel_log.problem if self.kernel_log is not None else None
        if blind != self._kernel_log_problem:
            if blind:
                log.warning("probe.kernel_log_unreadable", problem=blind,
                            effect="Xid errors in the kernel log are not seen until this is fixed")
            else:
                log.info("probe.kernel_log_readable")
            self._kernel_log_problem = blind

    def _chip_changed(self, before: ChipStatus | None, after: ChipStatus | None, observed_at: float) -> None:
        if after is None:
            return
        previous = before.health if before else None
        signal_ = chip_signal(after)  # a chip whose own link is down is an interconnect fault
        evidence = f"chip {after.index} health {after.health.value}" + (f": {after.reason}" if after.reason else "")
        fields = {
            "previous": previous.value if previous else None,
            "health": after.health.value,
            "error_codes": list(after.error_codes),
            "ecc_uncorrectable": after.ecc_uncorrectable,
            "probe": self.chip_probe.name,
        }
        worse = previous is None or after.health.rank > previous.rank
        (log.warning if worse else log.info)("chip.health_changed", chip=after.index, evidence=evidence, **fields)
        self._emit(Event(
            id=new_id(), ts=time.time(), node=self.node, name="chip.health_changed", observed_at=observed_at,
            signal=signal_, chip=after.index, evidence=evidence, fields={**fields, "status": after},
        ))
