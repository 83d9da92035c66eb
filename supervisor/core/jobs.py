"""A job's record and its state machine. Pure: records in, records out, times passed in.

JobState is the lifecycle:

    pending ─► starting ─► running ─► succeeded
       ▲          │           │
       │          ├───────────┼─► restarting ──► pending (same pool; a new attempt)
       │          │           ├─► failing_over ─► pending (target pool)
       └──────────┴───────────┴─► stopping ─────► stopped | failed
    pending ─► failed | stopped (nothing to stop)

Every transition goes through `JobRecord.transition`, which refuses an illegal one
(`IllegalTransition`): the daemon persists the record before it acts on it. Each start is
an attempt with a number, its own placement and rendezvous, and its own rank logs.
"""

from __future__ import annotations

import enum
from typing import Any

import msgspec

from supervisor.core.jobspec import JobSpec
from supervisor.shared.protocol import RankAssignment


class JobState(str, enum.Enum):
    PENDING = "pending"
    STARTING = "starting"
    RUNNING = "running"
    RESTARTING = "restarting"
    FAILING_OVER = "failing_over"
    STOPPING = "stopping"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    STOPPED = "stopped"

    @property
    def ended(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.STOPPED)

    @property
    def has_ranks(self) -> bool:
        """States in which the current attempt's ranks may be alive."""
        return self in (JobState.STARTING, JobState.RUNNING, JobState.RESTARTING, JobState.FAILING_OVER,
                        JobState.STOPPING)


_S = JobState
TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    _S.PENDING: frozenset({_S.STARTING, _S.FAILED, _S.STOPPED, _S.PENDING}),
    _S.STARTING: frozenset({_S.RUNNING, _S.RESTARTING, _S.FAILING_OVER, _S.STOPPING, _S.SUCCEEDED}),
    _S.RUNNING: frozenset({_S.RESTARTING, _S.FAILING_OVER, _S.STOPPING, _S.SUCCEEDED}),
    _S.RESTARTING: frozenset({_S.PENDING, _S.FAILING_OVER, _S.STOPPING}),
    _S.FAILING_OVER: frozenset({_S.PENDING, _S.STOPPING}),
    _S.STOPPING: frozenset({_S.STOPPED, _S.FAILED}),
    _S.SUCCEEDED: frozenset(),
    _S.FAILED: frozenset(),
    _S.STOPPED: frozenset(),
}


class IllegalTransition(Exception):
    pass


class NodeAttempt(msgspec.Struct, kw_only=True):
    """One node's share of an attempt."""

    node: str
    address: str
    ranks: tuple[RankAssignment, ...]
    started: bool = False  # the node's agent confirmed its ranks were started


class Failover(msgspec.Struct, frozen=True, kw_only=True):
    from_pool: str
    to_pool: str
    at: float
    step: int | None
    rule: str


class Attempt(msgspec.Struct, kw_only=True):
    number: int
    pool: str
    nodes: list[NodeAttempt]
    world_size: int
    master_addr: str
    master_port: int = 0  # 0 until the master node reported the port it picked
    created_at: float = 0.0
    running_at: float | None = None
    ended_at: float | None = None
    outcome: str | None = None  # why it ended
    resumed_from: int | None = None  # checkpoint step it started from, when known
    #: (step, wall time) as heartbeats reported progress, thinned: for ETTR.
    progress: list[tuple[int, float]] = []
    #: ranks seen alive / exited, as "node/rank"
    alive: list[str] = []
    exited: dict[str, int] = {}  # "node/rank" -> exit code (negative: signal)

    def node(self, name: str) -> NodeAttempt | None:
        return next((n for n in self.nodes if n.node == name), None)

    def rank_count(self) -> int:
        return sum(len(n.ranks) for n in self.nodes)

    def chip_of(self, node: str, chip: int) -> int | None:
        """The global rank using `chip` of `node` in this attempt, if any."""
        share = self.node(node)
        if share is None:
            return None
        for r in share.ranks:
            if chip in r.chips:
                return r.rank
        return None


class JobRecord(msgspec.Struct, kw_only=True):
    """Everything the daemon knows of a job; persisted as-is (wall-clock times)."""

    id: str
    spec: JobSpec
    state: JobState = JobState.PENDING
    state_since: float = 0.0
    pool: str = ""
    attempt: int = 0
    attempts: list[Attempt] = []
    restarts: int = 0
    failovers: list[Failover] = []
    step: int | None = None
    loss: float | None = None
    last_checkpoint_step: int | None = None
    submitted_at: float = 0.0
    first_started_at: float | None = None
    ended_at: float | None = None
    reason: str | None = None
    decisions: list[dict[str, Any]] = []
    #: What placement is waiting for, while pending.
    waiting_for: str | None = None
    #: What the job does once the current attempt's ranks are gone:
    #: restart | failover | stop | fail
    next_action: str | None = None
    #: Target pool of a failover in progress.
    target_pool: str | None = None
    #: The rule that asked for that failover ("operator" for an operator's).
    target_rule: str | None = None
    #: Wall-clock deadline of the current phase (stop grace, checkpoint before failover).
    phase_deadline: float | None = None
    #: The failover is still waiting for its pre-failover checkpoint.
    checkpoint_wanted: bool = False
    checkpoint_asked_at: float | None = None
    #: A restart or failover could not be placed and no_capacity was reported.
    no_capacity_reported: bool = False
    #: Per-rank failure fingerprints of the previous attempt (deterministic-failure check).
    fingerprints: dict[str, str] = {}
    #: What the policy engine has counted for this job (incident roots fed to it) and which
    #: signals each rule has used up: rebuilt after a daemon restart.
    policy_signals: list[dict[str, Any]] = []
    policy_consumed: dict[str, int] = {}
    #: The stop of the current attempt: its SIGTERM → SIGKILL grace, and whether it was sent.
    stop_grace: float = 30.0
    stop_sent: bool = False
    #: Nodes that keep warm standbys for the job without running its ranks (where a
    #: restart or failover would go); told to end them when the job ends.
    spare_nodes: list[str] = []

    @property
    def current(self) -> Attempt | None:
        return self.attempts[-1] if self.attempts and self.attempts[-1].number == self.attempt else None

    def transition(self, new: JobState, now: float, reason: str | None = None) -> dict[str, Any]:
        """Move to `new`; returns the fields of the `job.state_changed` event."""
        if new not in TRANSITIONS[self.state]:
            raise IllegalTransition(f"job {self.id}: {self.state.value} → {new.value} is not allowed")
        previous, self.state, self.state_since = self.state, new, now
        if reason is not None:
            self.reason = reason
        if new.ended:
            self.ended_at = now
        return {"job": self.id, "previous": previous.value, "state": new.value, "pool": self.pool,
                "attempt": self.attempt, **({"reason": reason} if reason else {})}

    def add_decision(self, decision: dict[str, Any], limit: int = 100) -> None:
        self.decisions.append(decision)
        del self.decisions[:-limit]

    def nodes(self) -> list[str]:
        current = self.current
        return [n.node for n in current.nodes] if current is not None and self.state.has_ranks else []


def kept_seconds(record: JobRecord, now: float) -> float:
    """Wall time spent on steps that were kept: for each attempt, the steps from the
    checkpoint it resumed from to the checkpoint the next attempt resumed from (all of its
    steps, for the last attempt), at the attempt's own measured time per step."""
    total = 0.0
    attempts = record.attempts
    for i, attempt in enumerate(attempts):
        samples = attempt.progress
        if len(samples) < 2 or samples[-1][0] <= samples[0][0]:
            continue
        per_step = (samples[-1][1] - samples[0][1]) / (samples[-1][0] - samples[0][0])
        nxt = attempts[i + 1] if i + 1 < len(attempts) else None
        last = samples[-1][0] if nxt is None or nxt.resumed_from is None else min(samples[-1][0], nxt.resumed_from)
        kept = last - (attempt.resumed_from or 0)
        total += max(0, kept) * per_step
    return total


def _time_of_step(samples: list[tuple[int, float]], step: int) -> float:
    """When `step` was reached, interpolated between heartbeat samples."""
    previous = samples[0]
    for s, t in samples:
        if s >= step:
            if s == previous[0]:
                return t
            fraction = (step - previous[0]) / (s - previous[0])
            return previous[1] + fraction * (t - previous[1])
        previous = (s, t)
    return samples[-1][1]


def ettr(record: JobRecord, now: float) -> float | None:
    """Effective training time ratio: time on steps that were kept ÷ wall time since the
    first start (None before it started)."""
    if record.first_started_at is None:
        return None
    end = record.ended_at if record.ended_at is not None else now
    wall = end - record.first_started_at
    if wall <= 0:
        return None
    return round(min(1.0, kept_seconds(record, now) / wall), 4)


JOB_SCHEMA = 1


def job_view(record: JobRecord, now: float) -> dict[str, Any]:
    """`job show --json`: the stable form (README, "job show --json")."""
    current = record.current
    return {
        "schema": JOB_SCHEMA,
        "id": record.id,
        "name": record.spec.name,
        "state": record.state.value,
        "state_since": record.state_since,
        "pool": record.pool,
        "nodes": record.nodes(),
        # Nodes keeping warm standbys where a restart or failover would go (warm_standby).
        "spare_nodes": list(record.spare_nodes),
        "attempt": record.attempt,
        "restarts": record.restarts,
        "failovers": [msgspec.to_builtins(f) for f in record.failovers],
        "step": record.step,
        "loss": record.loss,
        "last_checkpoint_step": record.last_checkpoint_step,
        "submitted_at": record.submitted_at,
        "first_started_at": record.first_started_at,
        "ended_at": record.ended_at,
        "ettr": ettr(record, now),
        "reason": record.reason,
        "waiting_for": record.waiting_for if record.state is JobState.PENDING else None,
        "world_size": current.world_size if current else None,
        # The current attempt's own progress: its first step after resuming shows here.
        "attempt_step": current.progress[-1][0] if current and current.progress else None,
        "resumed_from": current.resumed_from if current else None,
        "master": f"{current.master_addr}:{current.master_port}" if current and current.master_port else None,
        "policy": record.spec.policy,
        "command": list(record.spec.command),
        "checkpoint_dir": record.spec.checkpoint_dir,
        "decisions": record.decisions,
    }
