"""Hang detection. Pure: progress and readings in, with the time; findings out.

Two ways to see a hang:

* `HangWatcher`: for ranks that call the runtime's `heartbeat()`. A rank whose step has
  not advanced for the limit of its phase (train: `hang_timeout`; checkpoint and eval
  have their own, longer limits; so does a rank's start, until its first step) is hung.
  One finding per stall: the rank must advance
  again before it can be reported again.
* `QuietWatcher`: for scripts that do not use the runtime. From what the node sees
  without code changes: no new log line, (almost) no CPU time used by any rank, and idle
  chips, for `checks` consecutive checks. Any sign of life resets the count.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from supervisor.shared import defaults as d


@dataclass(frozen=True)
class HangLimits:
    train: float = d.DEFAULT_HANG_TIMEOUT
    checkpoint: float = d.DEFAULT_CHECKPOINT_HANG_TIMEOUT
    eval: float = d.DEFAULT_EVAL_HANG_TIMEOUT
    startup: float = d.DEFAULT_STARTUP_HANG_TIMEOUT

    def for_phase(self, phase: str) -> float:
        if phase == "startup":  # launched, no step reported yet
            return max(self.startup, self.train)
        return {"checkpoint": self.checkpoint, "eval": self.eval}.get(phase, self.train)


@dataclass(frozen=True)
class HangFinding:
    job: str
    rank: int
    step: int | None
    phase: str
    stalled_for: float
    limit: float
    how: str  # "heartbeat" or "quiet"
    evidence: str


@dataclass
class _Progress:
    step: int
    phase: str
    since: float  # when the step last advanced (or the phase changed)
    reported: bool = False


class HangWatcher:
    """Per rank progress; limits per job (a job's policy may set its own detect section),
    the agent's own for jobs that did not."""

    def __init__(self, limits: HangLimits) -> None:
        self.limits = limits
        self._ranks: dict[tuple[str, int], _Progress] = {}
        self._job_limits: dict[str, HangLimits] = {}

    def set_limits(self, job: str, limits: HangLimits | None) -> None:
        """`job`'s own limits from now on; None: the agent's again."""
        if limits is None:
            self._job_limits.pop(job, None)
        else:
            self._job_limits[job] = limits

    def limits_for(self, job: str) -> HangLimits:
        return self._job_limits.get(job, self.limits)

    def started(self, job: str, rank: int, now: float) -> None:
        """A rank was launched: it has the startup limit to report its first step."""
        self._ranks[(job, rank)] = _Progress(step=0, phase="startup", since=now)

    def progress(self, job: str, rank: int, step: int, phase: str, now: float) -> None:
        current = self._ranks.get((job, rank))
        if current is None or step != current.step or phase != current.phase:
            self._ranks[(job, rank)] = _Progress(step, phase, now)

    def forget(self, job: str, rank: int) -> None:
        self._ranks.pop((job, rank), None)

    def last_step(self, job: str, rank: int) -> int | None:
        p = self._ranks.get((job, rank))
        return p.step if p else None

    def hold(self, job: str) -> None:
        """One stall of a job is one report: its other ranks (waiting for the stalled
        one, most likely) are not reported on their own until they step again."""
        for (j, _), p in self._ranks.items():
            if j == job:
                p.reported = True

    def snapshot(self, job: str, now: float) -> dict[int, tuple[int, str, float]]:
        """Each rank of `job`: (last step, phase, seconds since it last advanced)."""
        return {r: (p.step, p.phase, now - p.since) for (j, r), p in self._ranks.items() if j == job}

    def check(self, now: float) -> list[HangFinding]:
        findings = []
        for (job, rank), p in self._ranks.items():
            limit = self.limits_for(job).for_phase(p.phase)
            stalled = now - p.since
            if stalled >= limit and not p.reported:
                p.reported = True
                findings.append(
                    HangFinding(
                        job, rank, p.step, p.phase, stalled, limit, "heartbeat",
                        f"rank {rank} has been at step {p.step} ({p.phase}) for {stalled:.0f}s, "
                        f"over its {p.phase} limit of {limit:.0f}s",
                    )
                )
        return findings


@dataclass(frozen=True)
class QuietReading:
    """One check's worth of what the node can see of a job without its cooperation."""

    new_log_lines: int
    cpu_seconds: float  # CPU time all the job's ranks used since the last check
    chip_utilisation: float | None  # busiest chip of the job, 0..100; None if unknown


@dataclass
class QuietWatcher:
    checks: int = 5
    cpu_floor: float = 0.05  # seconds of CPU per check that still counts as idle
    util_floor: float = 1.0  # percent
    _quiet: dict[str, int] = field(default_factory=dict)

    def observe(self, job: str, reading: QuietReading, interval: float) -> HangFinding | None:
        """Count consecutive quiet checks; report once, on the `checks`-th."""
        busy_chip = reading.chip_utilisation is not None and reading.chip_utilisation > self.util_floor
        alive = reading.new_log_lines > 0 or reading.cpu_seconds > self.cpu_floor or busy_chip
        if alive:
            self._quiet[job] = 0
            return None
        count = self._quiet.get(job, 0) + 1
        self._quiet[job] = count
        if count != self.checks:
            return None
        chips = "unknown" if reading.chip_utilisation is None else f"{reading.chip_utilisation:.0f}%"
        return HangFinding(
            job, -1, None, "train", count * interval, self.checks * interval, "quiet",
            f"job {job}: no log output, under {self.cpu_floor}s CPU per check and chips at {chips} "
            f"for {count} consecutive checks ({count * interval:.0f}s); the script sends no heartbeats",
        )

    def count(self, job: str) -> int:
        """Quiet checks in a row so far (0: the job showed a sign of life last check)."""
        return self._quiet.get(job, 0)

    def forget(self, job: str) -> None:
        """The job has no rank left: drop its count."""
        self._quiet.pop(job, None)
