"""The agent's eyes on the ranks it runs: exits, progress and output become signals.

`RankMonitor` owns the launcher and the socket the ranks' `heartbeat()` sends to. Its
`tick()` gathers what happened since the last one — ranks that exited (crash), log lines
the scanner classified (interconnect_timeout, chip_error, oom, network, crash, user_error;
an unrecognised traceback is a crash whose fields carry `unrecognised` and the failure
`fingerprint` the job layer compares across attempts), ranks
whose step stopped advancing (hang) — and returns them as `Observation`s carrying the
evidence and the time they were observed. The agent turns those into events for the
daemon; nothing here decides what to do about them.
"""

from __future__ import annotations

import queue
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import zmq

from agents.launcher import Launcher, RankSpec
from agents.runtime.progress import decode_progress
from agents.watchers.hang import HangLimits, HangWatcher, QuietReading, QuietWatcher
from agents.watchers.logscan import Catalog, LogScanner, fingerprint
from supervisor.shared.vocab import Signal

#: Enough of a stack dump to see where each rank is stuck, bounded for the wire.
_EVIDENCE_LIMIT = 12 * 1024


@dataclass(frozen=True)
class Observation:
    signal: Signal
    job: str
    rank: int | None
    evidence: str
    observed_at: float  # wall clock
    source: str  # launcher / logscan / hang
    fields: dict[str, Any] = field(default_factory=dict)
    chip: int | None = None  # the rank's (first) chip


class RankMonitor:
    def __init__(self, log_dir: Path, heartbeat_endpoint: str, limits: HangLimits, catalog: Catalog) -> None:
        self._lines: queue.SimpleQueue[tuple[str, int, str]] = queue.SimpleQueue()
        self.launcher = Launcher(log_dir, on_line=lambda spec, line: self._lines.put((spec.job, spec.rank, line)))
        self.heartbeat_endpoint = heartbeat_endpoint
        self.hang = HangWatcher(limits)
        self.catalog = catalog
        self._scanners: dict[tuple[str, int], LogScanner] = {}
        self._chips: dict[tuple[str, int], int | None] = {}
        # For scripts that send no heartbeats: output, CPU and chip use per job.
        self.quiet = QuietWatcher()
        self._lines_since: dict[str, int] = {}
        self._cpu_seen: dict[int, float] = {}
        self._heartbeating: set[str] = set()
        self._pull = zmq.Context.instance().socket(zmq.PULL)
        self._pull.setsockopt(zmq.LINGER, 0)
        self._pull.setsockopt(zmq.RCVHWM, 10_000)
        self._pull.bind(heartbeat_endpoint)
        # The endpoint actually bound (a tcp://127.0.0.1:* wildcard becomes a real port).
        self.heartbeat_endpoint = self._pull.getsockopt(zmq.LAST_ENDPOINT).decode()
        self.bad_progress = 0

    def close(self) -> None:
        self._pull.close(linger=0)

    # --- hands -----------------------------------------------------------------------

    def launch(self, spec: RankSpec, now: float) -> None:
        self.launcher.start(spec)
        self._scanners[(spec.job, spec.rank)] = LogScanner(self.catalog)
        self._chips[(spec.job, spec.rank)] = spec.chips[0] if spec.chips else None
        self.hang.started(spec.job, spec.rank, now)

    def request_stop(self, job: str, grace: float) -> int:
        """Non-blocking stop for the agent's loop: SIGTERM now, SIGKILL after `grace`
        (in a later tick). The ranks' exits are expected, not crashes."""
        for (j, rank) in list(self._scanners):
            if j == job:
                self.hang.forget(j, rank)
        return self.launcher.request_stop(job, grace)

    def running(self) -> list[tuple[str, int, int, int | None]]:
        """(job, rank, pid, last step) of every rank alive."""
        return [(j, r, p.pid, self.hang.last_step(j, r)) for (j, r), p in sorted(self.launcher.ranks.items())]

    def stop(self, job: str, grace: float) -> list[Observation]:
        """Stop a job's ranks; their exits are expected, so they are not crashes."""
        for (j, rank) in list(self._scanners):
            if j == job:
                self.hang.forget(j, rank)
        self.launcher.stop(job, grace)
        return self._flush_scanners(job)

    # --- eyes ------------------------------------------------------------------------

    def tick(self, now: float) -> list[Observation]:
        """Everything observed since the last tick. `now` is monotonic time."""
        observations: list[Observation] = []
        self._drain_progress(now)
        observations += self._drain_lines()
        for exit in self.launcher.poll():
            self.hang.forget(exit.job, exit.rank)
            self._cpu_seen.pop(exit.pid, None)
            if not any(j == exit.job for j, _ in self.launcher.ranks):
                self._heartbeating.discard(exit.job)
                self._lines_since.pop(exit.job, None)
                self.quiet.forget(exit.job)
            scanner = self._scanners.pop((exit.job, exit.rank), None)
            if scanner is not None:
                observations += [self._finding(exit.job, exit.rank, f) for f in scanner.flush()]
            chip = self._chips.pop((exit.job, exit.rank), None)
            if exit.crash:
                observations.append(
                    Observation(Signal.CRASH, exit.job, exit.rank, exit.describe(), exit.observed_at, "launcher",
                                {"exit_code": exit.returncode, "signal_name": exit.signal_name, "pid": exit.pid},
                                chip)
                )
        for finding in self.hang.check(now):
            observations.append(
                Observation(Signal.HANG, finding.job, finding.rank, self._hang_evidence(finding.job, finding.evidence),
                            time.time(), "hang",
                            {"step": finding.step, "phase": finding.phase,
                             "stalled_for_s": round(finding.stalled_for, 1), "limit_s": finding.limit},
                            self._chips.get((finding.job, finding.rank)))
            )
        return observations

    def _drain_progress(self, now: float) -> None:
        while True:
            try:
                frame = self._pull.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                msg = decode_progress(frame)
            except ValueError:
                self.bad_progress += 1
                continue
            job = msg.get("job") or next((j for (j, r) in self._scanners if r == msg["rank"]), None)
            if (job, msg["rank"]) in self._scanners:
                self._heartbeating.add(job)
                self.hang.progress(job, msg["rank"], msg["step"], msg["phase"], now)

    def _drain_lines(self) -> list[Observation]:
        out = []
        while True:
            try:
                job, rank, line = self._lines.get_nowait()
            except queue.Empty:
                return out
            scanner = self._scanners.get((job, rank))
            if scanner is None:
                continue  # a line that came after its rank's exit was reported (a child still printing)
            self._lines_since[job] = self._lines_since.get(job, 0) + 1
            out += [self._finding(job, rank, f) for f in scanner.feed(line)]

    def check_quiet(self, chip_utilisation: dict[int, float | None], interval: float) -> list[Observation]:
        """The no-heartbeat hang check, once per probe interval: a job whose ranks print
        nothing, use (almost) no CPU and whose chips idle for several checks in a row.
        Jobs that send heartbeats are left to the heartbeat watcher."""
        out = []
        for job in sorted({j for j, _ in self.launcher.ranks}):
            if job in self._heartbeating:
                continue
            cpu = 0.0
            utils: list[float] = []
            for (j, rank), process in self.launcher.ranks.items():
                if j != job:
                    continue
                try:
                    times = psutil.Process(process.pid).cpu_times()
                    total = times.user + times.system + times.children_user + times.children_system
                except psutil.Error:
                    continue
                cpu += max(0.0, total - self._cpu_seen.get(process.pid, 0.0))
                self._cpu_seen[process.pid] = total
                for chip in process.spec.chips:
                    if chip_utilisation.get(chip) is not None:
                        utils.append(chip_utilisation[chip])  # type: ignore[arg-type]
            reading = QuietReading(self._lines_since.pop(job, 0), cpu, max(utils) if utils else None)
            finding = self.quiet.observe(job, reading, interval)
            if finding is not None:
                out.append(Observation(Signal.HANG, job, None, self._hang_evidence(job, finding.evidence), time.time(),
                                       "hang", {"how": "quiet", "quiet_checks": self.quiet.checks}))
        return out

    def _flush_scanners(self, job: str) -> list[Observation]:
        out = self._drain_lines()
        for (j, rank) in [k for k in self._scanners if k[0] == job]:
            out += [self._finding(j, rank, f) for f in self._scanners.pop((j, rank)).flush()]
        return out

    def _finding(self, job: str, rank: int, finding: Any) -> Observation:
        fields: dict[str, Any] = {"pattern": finding.pattern, "line": finding.line, "severity": finding.severity.value}
        failure = fingerprint(finding)
        if failure is not None:
            fields.update(unrecognised=True, fingerprint=failure)
        return Observation(finding.signal, job, rank, finding.evidence, time.time(), "logscan", fields,
                           self._chips.get((job, rank)))

    def _hang_evidence(self, job: str, summary: str) -> str:
        """The finding plus where every rank of the job is: py-spy stacks when installed,
        else last steps and CPU use (and a note saying py-spy would show more)."""
        ranks = {r: p for (j, r), p in self.launcher.ranks.items() if j == job}
        parts = [summary]
        pyspy = shutil.which("py-spy")
        if pyspy is None:
            parts.append("py-spy is not installed, so no stack dumps; last steps and CPU use:")
        dumps: dict[int, subprocess.Popen[str]] = {}
        if pyspy is not None:
            # All ranks at once, with one short deadline: this runs on the agent's loop,
            # which must keep heartbeating (a rank hung in the driver can hang py-spy too).
            for rank, process in ranks.items():
                try:
                    dumps[rank] = subprocess.Popen([pyspy, "dump", "--pid", str(process.pid)], stdout=subprocess.PIPE,
                                                   stderr=subprocess.STDOUT, text=True)
                except OSError:
                    pass
        deadline = time.monotonic() + 3.0
        for rank, process in sorted(ranks.items()):
            if rank in dumps:
                try:
                    dump, _ = dumps[rank].communicate(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    dumps[rank].kill()
                    dump = "py-spy did not answer within 3s"
                parts.append(f"--- rank {rank} (pid {process.pid}) ---\n{(dump or '').strip()}")
            elif pyspy is not None:
                parts.append(f"--- rank {rank} (pid {process.pid}) --- py-spy could not run")
            else:
                try:
                    cpu = psutil.Process(process.pid).cpu_percent(interval=0.1)
                except psutil.Error:
                    cpu = float("nan")
                parts.append(f"rank {rank} (pid {process.pid}): last step {self.hang.last_step(job, rank)}, cpu {cpu:.0f}%")
        return "\n".join(parts)[:_EVIDENCE_LIMIT]
