"""The jobs the daemon runs, carried through faults. Pure: what the daemon observed in,
commands for the nodes and events out; times passed in.

Level-triggered, like a controller: every `tick` compares what each job should have
(its state, its current attempt) with what the nodes report (their running ranks), and
(re)sends what is missing — a start, a stop, a checkpoint — so that a lost command, a
restarted agent or a restarted daemon only delays things. Commands are idempotent on the
nodes by (job, attempt), so sending one twice never starts a rank twice.

Faults reach a job as signals; the signals of one attempt within a short window form one
incident (`incidents.py`) whose root cause goes to the job's policy (`policy/engine.py`),
once. Its decision is carried out here: restart (stop the attempt, start a new one on the
same pool from the latest checkpoint), exclude (drain the node, then restart), failover
(checkpoint if the ranks still answer, stop, start on the target pool), stop, fail. A
restart or failover that cannot be placed is itself a signal, `no_capacity`.

Every change to a record is returned in `JobOutcome.records`; the daemon commits them to
the store before it sends any command of the same outcome.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import msgspec

from supervisor.core.hangs import HangJoin
from supervisor.core.incidents import DEFAULT_WINDOW, Incident, IncidentTracker
from supervisor.core.jobs import Attempt, Failover, JobRecord, JobState, NodeAttempt, ettr
from supervisor.core.jobspec import JobSpec
from supervisor.core.nodes import NodeChange, NodeRecord
from supervisor.core.placement import NoCapacity, NodeView, Placement, first_usable, place
from supervisor.policy.engine import Decision, JobPolicy, SignalEvent
from supervisor.policy.schema import ExcludeTarget, Policy
from supervisor.shared.clock import Instant
from supervisor.shared.protocol import (
    MAX_RANKS_PER_NODE,
    AnyCommandArgs,
    CheckpointArgs,
    HangRank,
    KeepStandbysArgs,
    StartRanksArgs,
    StopRanksArgs,
)
from supervisor.shared.vocab import Action, Health, NodeState, Signal

#: A command not confirmed within this is sent again (idempotent on the node).
RESEND_AFTER = 5.0
#: Extra time after a stop's grace before ranks on an unreachable node are given up on.
STOP_SLACK = 10.0
#: A running job's warm spares are chosen again at most this often after placement
#: changes (each choice walks every node; a large cluster's nodes change every second).
SPARES_EVERY = 2.0
#: SIGTERM → SIGKILL grace of a stop the policy asks for (the final checkpoint's time).
DEFAULT_STOP_GRACE = 30.0
#: ... after a fault, whose attempt can no longer agree on a final checkpoint (a rank
#: died, or hangs): time for the other ranks to print their last lines, not to save.
FAULT_STOP_GRACE = 1.0
#: Chip healths that may take ranks.
_USABLE = (Health.OK, Health.WARNING)


@dataclass(frozen=True)
class JobCommand:
    """A command for one node on behalf of a job."""

    node: str
    job: str
    attempt: int
    args: AnyCommandArgs


@dataclass
class JobOutcome:
    commands: list[JobCommand] = field(default_factory=list)
    changes: list[NodeChange] = field(default_factory=list)
    records: dict[str, JobRecord] = field(default_factory=dict)
    #: node -> (drained reason or None to undrain, chips to exclude)
    drains: list[tuple[str, str | None, int | None]] = field(default_factory=list)

    def event(self, event: str, /, **fields: Any) -> None:
        # Positional-only: an event may itself have a field called `name` (job.submitted).
        self.changes.append(NodeChange(event, "*", {k: v for k, v in fields.items() if v is not None}))

    def extend(self, other: "JobOutcome") -> None:
        self.commands += other.commands
        self.changes += other.changes
        self.records.update(other.records)
        self.drains += other.drains


class JobError(Exception):
    """A job request that cannot be honoured; `code` is the control reply's code."""

    def __init__(self, message: str, code: str = "bad_request") -> None:
        super().__init__(message)
        self.code = code


@dataclass
class _Live:
    """What the daemon keeps of a job in memory only (rebuilt after a restart)."""

    policy: JobPolicy
    incidents: IncidentTracker
    sent: dict[tuple[str, str], float] = field(default_factory=dict)  # (node, kind) -> mono time sent
    next_checkpoint: float | None = None  # mono
    incident_started: float | None = None  # wall time of the last incident's root, for recovery time
    no_capacity_health: dict[str, int] | None = None  # pool health when no_capacity was last reported
    hang: HangJoin | None = None  # the nodes' views of a hang being joined
    hang_observed_at: float | None = None  # wall time of the first view of that hang
    hang_named: int | None = None  # the attempt whose hang was given its one signal
    spares_key: tuple[int, int] | None = None  # (attempt, placement epoch) spares were chosen at
    spares_at: float = 0.0  # mono time they were
    #: What placement read when it last found no room for the pending job (see _tick_pending).
    no_room_key: tuple[Any, ...] | None = None


class Jobs:
    def __init__(self, policies: Callable[[str], Policy | None], incident_window: float = DEFAULT_WINDOW) -> None:
        self._policies = policies
        self.incident_window = incident_window
        self.records: dict[str, JobRecord] = {}
        self._live: dict[str, _Live] = {}
        #: A tick is due again at once (a job changed state in the last one).
        self._again: float | None = None
        #: Recovery times (seconds from an incident to the job running again), for metrics.
        self.recoveries: list[tuple[str, float]] = []
        #: job -> (its current attempt's `alive` list, the same as a set): see `_alive`.
        self._alive_sets: dict[str, tuple[list[str], set[str]]] = {}

    # --- queries ---------------------------------------------------------------------

    def _alive(self, job: str, attempt: Attempt) -> set[str]:
        """`attempt.alive` as a set, kept beside the list (which is what is saved): every
        heartbeat asks it about each of the node's ranks, and a 1,000-node job has 8,000
        entries (scanning the list was 16% of the loop at 5,000 nodes). Rebuilt whenever
        the list is not the one it mirrors (a new attempt, a restored record)."""
        mirror = self._alive_sets.get(job)
        if mirror is None or mirror[0] is not attempt.alive or len(mirror[1]) != len(attempt.alive):
            mirror = (attempt.alive, set(attempt.alive))
            self._alive_sets[job] = mirror
        return mirror[1]

    def get(self, job: str) -> JobRecord:
        record = self.records.get(job)
        if record is None:
            record = next((r for r in self.records.values() if r.spec.name == job and not r.state.ended), None)
        if record is None:
            known = ", ".join(sorted(self.records)[-20:]) or "none"
            raise JobError(f"unknown job {job!r}; known jobs: {known}", "unknown_job")
        return record

    def live(self) -> list[JobRecord]:
        return [r for r in self.records.values() if not r.state.ended]

    def next_deadline(self) -> float | None:
        times = [d for live in self._live.values() if (d := live.incidents.next_deadline()) is not None]
        if self._again is not None:
            times.append(self._again)
        times += [live.hang.deadline for live in self._live.values() if live.hang is not None]
        return min(times, default=None)

    # --- restore ---------------------------------------------------------------------

    def restore(self, records: list[JobRecord], now: Instant) -> JobOutcome:
        out = JobOutcome()
        for record in records:
            self.records[record.id] = record
            if record.state.ended:
                continue
            policy = self._policies(record.spec.policy)
            if policy is None:
                out.event("job.policy_missing", job=record.id, policy=record.spec.policy,
                          effect="the job keeps running but no fault is acted on until the policy is loaded")
                continue
            self._live[record.id] = self._new_live(record, policy)
        if records:
            out.event("job.restored", jobs=len(records), live=len(self.live()))
        return out

    def _new_live(self, record: JobRecord, policy: Policy) -> _Live:
        engine = JobPolicy(policy, record.id, record.pool or policy.preferred_pool)
        # What the engine must remember across a daemon restart: restarts in the window
        # and the last failover (their times are in the record, wall clock).
        for decision in record.decisions:
            if decision.get("action") in ("restart", "exclude") and not decision.get("blocked"):
                engine.restarts.append(float(decision["at"]))
        if record.failovers:
            engine.last_failover = record.failovers[-1].at
        # The signals it counted (three HCCL timeouts before a daemon restart and one
        # after must still cross a threshold of three) and what each rule has used up.
        for saved in record.policy_signals:
            try:
                event = SignalEvent(signal=Signal(saved["signal"]), at=float(saved["at"]), job=record.id,
                                    pool=saved.get("pool"), node=saved.get("node"), chip=saved.get("chip"),
                                    rank=saved.get("rank"), evidence=str(saved.get("evidence", "")))
            except (KeyError, ValueError, TypeError):
                continue
            engine._seq += 1
            engine.history.append((engine._seq, event))
        engine.consumed.update(record.policy_consumed)
        return _Live(engine, IncidentTracker(self.incident_window))

    # --- requests ----------------------------------------------------------------------

    def submit(self, spec: JobSpec, now: Instant) -> JobOutcome:
        if any(r.spec.name == spec.name for r in self.live()):
            raise JobError(f"a job named {spec.name!r} is already live; stop it or choose another name", "busy")
        policy = self._policies(spec.policy)
        if policy is None:
            raise JobError(f"policy {spec.policy!r} is not loaded by this daemon (see `trainguard policy show`)",
                           "unknown_policy")
        missing = [p for p in policy.pools if p not in spec.pools]
        unknown = [p for p in spec.pools if p not in policy.pools]
        if unknown:
            raise JobError(f"pools {', '.join(unknown)} are not pools of policy {policy.name} "
                           f"({', '.join(policy.pools)})")
        if policy.preferred_pool not in spec.pools:
            raise JobError(f"the job has no shape for {policy.preferred_pool}, policy {policy.name}'s preferred pool")
        job_id = f"{spec.name}-{secrets.token_hex(3)}"
        record = JobRecord(id=job_id, spec=spec, pool=policy.preferred_pool, submitted_at=now.wall, state_since=now.wall)
        self.records[job_id] = record
        self._live[job_id] = self._new_live(record, policy)
        out = JobOutcome(records={job_id: record})
        out.event("job.submitted", job=job_id, name=spec.name, policy=policy.name, pool=record.pool,
                  pools={p: s.world_size for p, s in spec.pools.items()}, command=list(spec.command),
                  no_shape_for=missing or None)
        return out

    def stop(self, job: str, grace: float, now: Instant) -> JobOutcome:
        record = self.get(job)
        if record.state.ended:
            raise JobError(f"job {record.id} has already ended ({record.state.value})", "ended")
        out = JobOutcome()
        self._begin_end(record, "stop", "stopped by the operator", now, out, grace=grace)
        return out

    def failover(self, job: str, to_pool: str, now: Instant) -> JobOutcome:
        record = self.get(job)
        live = self._live.get(record.id)
        if record.state.ended or live is None:
            raise JobError(f"job {record.id} is {record.state.value}; nothing to fail over", "ended")
        if to_pool not in record.spec.pools:
            raise JobError(f"job {record.id} has no shape for pool {to_pool!r} (it has: {', '.join(record.spec.pools)})")
        if to_pool == record.pool:
            raise JobError(f"job {record.id} already runs on {to_pool}", "busy")
        decision = Decision(job=record.id, at=now.wall, action=Action.FAILOVER, rule="operator", policy=live.policy.policy.name,
                            reason=f"an operator asked for a failover from {record.pool} to {to_pool}",
                            from_pool=record.pool, to_pool=to_pool,
                            checkpoint_first=live.policy.policy.checkpoint.before_failover)
        live.policy.pool, live.policy.last_failover = to_pool, now.wall
        out = JobOutcome()
        self._carry_out(record, decision, now, out)
        return out

    def drained(self, node: str, reason: str, now: Instant) -> JobOutcome:
        """A node was drained: jobs with ranks on it are moved off by a restart."""
        out = JobOutcome()
        for record in self.live():
            if node in record.nodes() and record.state in (JobState.STARTING, JobState.RUNNING):
                decision = Decision(job=record.id, at=now.wall, action=Action.RESTART, rule="operator-drain",
                                    policy=record.spec.policy, reason=f"node {node} was drained ({reason}): "
                                    f"restart without it", from_pool=record.pool)
                self._carry_out(record, decision, now, out)
        return out

    # --- what the nodes report ---------------------------------------------------------

    def on_node_event(self, node: str, name: str, fields: Mapping[str, Any], now: Instant,
                      nodes: Mapping[str, NodeRecord]) -> JobOutcome:
        """An event from an agent (already logged by the daemon) that may concern a job."""
        out = JobOutcome()
        job = fields.get("job")
        attempt = fields.get("attempt")
        if name == "chip.health_changed":
            signal = fields.get("signal")
            if signal in (Signal.CHIP_ERROR.value,) and fields.get("chip") is not None:
                for record in self.live():
                    current = record.current
                    if current is None or not record.state.has_ranks:
                        continue
                    rank = current.chip_of(node, int(fields["chip"]))
                    if rank is not None:
                        self._signal(record, Signal.CHIP_ERROR, node, fields, now, out, rank=rank)
            return out
        record = self.records.get(job) if isinstance(job, str) else None
        if record is None or record.state.ended or not isinstance(attempt, int) or attempt != record.attempt:
            return out  # another job's, a launch's, or an older attempt's: recorded, not acted on
        current = record.current
        if current is None:
            return out
        key = f"{node}/{fields.get('rank')}"
        if name == "rank.started":
            alive = self._alive(record.id, current)
            if key not in alive:
                alive.add(key)
                current.alive.append(key)
            share = current.node(node)
            if share is not None:
                share.started = True
            self._maybe_running(record, now, nodes, out)
            out.records[record.id] = record
        elif name == "rank.exited":
            alive = self._alive(record.id, current)
            if key in alive:
                alive.discard(key)
                current.alive.remove(key)
            code = fields.get("exit_code")
            current.exited[key] = int(code) if isinstance(code, int) else -9
            live = self._live.get(record.id)
            if live is not None and len(current.exited) >= current.rank_count():
                # Every rank has ended (and said how): what else they had to say is in.
                live.incidents.settle(now.mono)
            self._maybe_succeeded(record, now, out)
            out.records[record.id] = record
        elif name == "rank.checkpoint_saved":
            step = fields.get("step")
            if isinstance(step, int):
                record.last_checkpoint_step = step
                out.event("job.checkpoint_saved", job=record.id, attempt=attempt, step=step, node=node)
                if record.checkpoint_wanted and (record.step is None or step >= (record.step or 0) - 1):
                    record.checkpoint_wanted = False
                out.records[record.id] = record
        elif name == "hang.observed":
            if record.state in (JobState.STARTING, JobState.RUNNING):
                self._hang_view(record, node, fields, now, out)
        elif name.startswith("signal."):
            try:
                signal = Signal(name.removeprefix("signal."))
            except ValueError:
                return out
            if record.state in (JobState.STARTING, JobState.RUNNING):
                rank = fields.get("rank")
                self._signal(record, signal, node, fields, now, out, rank=rank if isinstance(rank, int) else None)
        return out

    def on_node_lost(self, node: str, now: Instant) -> JobOutcome:
        out = JobOutcome()
        for record in self.live():
            if node in record.nodes() and record.state in (JobState.STARTING, JobState.RUNNING):
                self._signal(record, Signal.NODE_LOST, node, {"evidence": f"node {node} sent no heartbeat"}, now, out)
        return out

    def on_start_result(self, node: str, job: str, attempt: int, ok: bool, error: str | None,
                        detail: Mapping[str, Any], now: Instant) -> JobOutcome:
        out = JobOutcome()
        record = self.records.get(job)
        if record is None or record.attempt != attempt or record.state is not JobState.STARTING:
            return out
        current = record.current
        assert current is not None
        share = current.node(node)
        if share is None:
            return out
        if not ok:
            # The node refused to start the ranks (a missing working directory, a
            # command that does not exist): the same on any node, so not worth a restart.
            self._begin_end(record, "fail", f"node {node} could not start the ranks: {error}", now, out)
            return out
        port = detail.get("master_port")
        if node == current.nodes[0].node and isinstance(port, int) and port > 0 and not current.master_port:
            current.master_port = port
            out.event("job.rendezvous", job=record.id, attempt=attempt, master=f"{current.master_addr}:{port}")
        # The master counts as started only with its port: the others cannot start without it.
        share.started = node != current.nodes[0].node or bool(current.master_port)
        out.records[record.id] = record
        return out

    def on_running(self, node: str, running: list[tuple[str, int, int, int | None, float | None]],
                   now: Instant, nodes: Mapping[str, NodeRecord]) -> JobOutcome:
        """A heartbeat's running ranks (job, attempt, rank, step, loss): progress."""
        out = JobOutcome()
        for job, attempt, rank, step, loss in running:
            record = self.records.get(job)
            if record is None or record.attempt != attempt or record.current is None:
                continue
            current = record.current
            key = f"{node}/{rank}"
            alive = self._alive(job, current)
            if key not in alive and key not in current.exited:
                alive.add(key)
                current.alive.append(key)
            # Step 0 (or one below the checkpoint the attempt resumed from) is a rank
            # still loading: not progress.
            if rank == 0 and step is not None and step > (current.resumed_from or 0):
                # A new attempt's first step is sampled even when the old attempt ended on it.
                if record.step != step or not current.progress:
                    record.step = step
                    if loss is not None:
                        record.loss = loss
                    _sample(current, step, now.wall)
                    out.records[record.id] = record
            if record.state is JobState.STARTING:
                self._maybe_running(record, now, nodes, out)
        return out

    # --- time ----------------------------------------------------------------------------

    def tick(self, now: Instant, nodes: Mapping[str, NodeRecord]) -> JobOutcome:
        out = JobOutcome()
        self._again = None
        for record in list(self.live()):
            live = self._live.get(record.id)
            if live is None:
                continue
            if live.hang is not None and live.hang.complete(now.mono):
                self._name_hang(record, live, now, out)
            incident = live.incidents.due(now.mono)
            if incident is not None:
                self._decide(record, incident, now, out)
            state = record.state
            step = getattr(self, f"_tick_{state.value}", None)
            if step is not None:
                try:
                    step(record, live, now, nodes, out)
                except Exception as exc:  # one job's bug (a reloaded policy without its pool) is not all jobs'
                    out.event("job.tick_failed", job=record.id, state=record.state.value, error=repr(exc)[:500])
            if record.state is not state and not record.state.ended:
                # The new state's step is due at once (restarting -> pending -> starting):
                # a restart must not wait a poll interval per state.
                self._again = now.mono
        return out

    def _tick_pending(self, record: JobRecord, live: _Live, now: Instant, nodes: Mapping[str, NodeRecord],
                      out: JobOutcome) -> None:
        policy = live.policy.policy
        shape = record.spec.pools.get(record.pool)
        if shape is None:
            self._begin_end(record, "fail", f"the job has no shape for pool {record.pool}", now, out)
            return
        # Placed again only when something placement reads has changed: a node's state,
        # drain or chip health, or a policy (the placement epoch), or another job's ranks.
        # Placing walks every node: at 10,000 nodes, a job left pending by a lost node made
        # this ~80 % of the daemon's loop, every turn, and it never caught up again.
        key = (self._placement_epoch, record.pool, record.attempt,
               tuple((r.id, r.attempt, r.state) for r in self.live() if r.id != record.id))
        if self._pool_health_cache is not None and live.no_room_key == key:
            return
        family = policy.pools[record.pool].accelerator
        placed = place(record.pool, family, shape.nodes, shape.ranks_per_node, self._views(nodes, record.id))
        if isinstance(placed, NoCapacity):
            live.no_room_key = key
            if record.waiting_for != placed.reason:
                record.waiting_for = placed.reason
                out.records[record.id] = record
                out.event("job.waiting", job=record.id, pool=record.pool, reason=placed.reason)
            # no_capacity is a restart or failover that cannot be placed: a first start
            # waits, and so does a pool with nodes not yet re-registered (unknown, not empty).
            reregistering = any(n.state is NodeState.PENDING and n.accelerator.family == family
                                for n in nodes.values())
            # Once per change of the pools' health: a failover blocked for want of a
            # healthy target is tried again when the target pool recovers.
            health = dict(self._pool_health_cache or {})
            changed = not record.no_capacity_reported or live.no_capacity_health != health
            if changed and record.attempt > 0 and not reregistering:
                record.no_capacity_reported = True
                live.no_capacity_health = health
                out.records[record.id] = record
                self._feed(record, SignalEvent(signal=Signal.NO_CAPACITY, at=now.wall, job=record.id, pool=record.pool,
                                               evidence=placed.reason), now, out)
            return
        self._start_attempt(record, placed, now, out)
        self._send_starts(record, live, now, out)

    def _tick_starting(self, record: JobRecord, live: _Live, now: Instant, nodes: Mapping[str, NodeRecord],
                       out: JobOutcome) -> None:
        self._maybe_running(record, now, nodes, out)
        if record.state is JobState.STARTING:
            self._send_starts(record, live, now, out)

    def _tick_running(self, record: JobRecord, live: _Live, now: Instant, nodes: Mapping[str, NodeRecord],
                      out: JobOutcome) -> None:
        # Failback (off unless the policy enables it): the engine decides it on time alone.
        for decision in live.policy.on_tick(self._pool_health_cache, now.wall):
            self._record_decision(record, decision, out)
            self._carry_out(record, decision, now, out)
        if record.state is not JobState.RUNNING:
            return
        if record.spec.warm_standby:
            self._keep_spares(record, live, now, nodes, out)
        every = live.policy.policy.checkpoint.every
        if every is None:
            return
        if live.next_checkpoint is None:
            live.next_checkpoint = now.mono + every
        elif now.mono >= live.next_checkpoint:
            live.next_checkpoint = now.mono + every
            self._send_checkpoint(record, now, out, why="checkpoint.every")

    def _tick_restarting(self, record: JobRecord, live: _Live, now: Instant, nodes: Mapping[str, NodeRecord],
                         out: JobOutcome) -> None:
        self._wind_down(record, live, now, nodes, out)

    _tick_failing_over = _tick_restarting
    _tick_stopping = _tick_restarting

    # --- carrying out ------------------------------------------------------------------------

    def _signal(self, record: JobRecord, signal: Signal, node: str | None, fields: Mapping[str, Any], now: Instant,
                out: JobOutcome, rank: int | None = None, settled: bool = False) -> None:
        live = self._live.get(record.id)
        if live is None:
            return
        chip = fields.get("chip")
        event = SignalEvent(signal=signal, at=float(fields.get("observed_at") or now.wall), job=record.id,
                            pool=record.pool, node=node, chip=chip if isinstance(chip, int) else None, rank=rank,
                            evidence=str(fields.get("evidence") or "")[:2000], id=str(fields.get("event_id") or ""))
        # Killed from outside (SIGKILL: the OOM killer, an operator, a dying node) or by
        # its own fatal fault (SIGSEGV, SIGBUS): the cause of what its peers then show.
        # Not SIGABRT: that is how a process ends after an error it has already printed.
        killed = signal is Signal.CRASH and fields.get("signal_name") in ("SIGKILL", "SIGSEGV", "SIGBUS", "SIGILL")
        live.incidents.add(event, record.attempt, now.mono, killed_by_signal=killed, settled=settled)

    def _hang_view(self, record: JobRecord, node: str, fields: Mapping[str, Any], now: Instant,
                   out: JobOutcome) -> None:
        """One node's view of a stalled job (`hang.observed`): joined with the other
        nodes' into the attempt's one `signal.hang` (`hangs.py`)."""
        live = self._live.get(record.id)
        if live is None or live.hang_named == record.attempt:
            return  # this attempt's hang has its signal; a late view stays in the events
        note = str(fields.get("stacks_note") or "")[:500] or None
        try:
            ranks = msgspec.convert(fields.get("ranks") or [], list[HangRank])[:MAX_RANKS_PER_NODE]
        except msgspec.ValidationError as exc:
            ranks, note = [], f"its view of the ranks was malformed ({str(exc)[:200]})"
        if live.hang is None or live.hang.attempt != record.attempt:
            live.hang = HangJoin(record.attempt, now.mono, frozenset(record.nodes()))
            observed = fields.get("observed_at")
            live.hang_observed_at = float(observed) if isinstance(observed, (int, float)) else now.wall
        live.hang.add(node, ranks, note, str(fields.get("how") or "heartbeat"))
        if live.hang.complete(now.mono):
            self._name_hang(record, live, now, out)

    def _name_hang(self, record: JobRecord, live: _Live, now: Instant, out: JobOutcome) -> None:
        """The joined views as one `signal.hang` on the culprit's node and rank (or on
        none, saying why), fed to the job's incident like any signal."""
        join, live.hang = live.hang, None
        if join is None:
            return
        live.hang_named = join.attempt
        current = record.current
        verdict, text, _ = join.verdict(current.world_size if current is not None else None)
        culprit = verdict.culprit
        nodes = sorted(join.views)
        node = culprit.node if culprit is not None else (nodes[0] if len(nodes) == 1 else None)
        chip = None
        if culprit is not None and current is not None:
            share = current.node(culprit.node)
            assigned = next((r for r in share.ranks if r.rank == culprit.view.rank), None) if share else None
            chip = assigned.chips[0] if assigned is not None and assigned.chips else None
        fields: dict[str, Any] = {
            "job": record.id, "attempt": join.attempt, "signal": Signal.HANG.value, "evidence": text,
            "observed_at": live.hang_observed_at or now.wall, "how": join.how, "culprit_by": verdict.by,
            "rank": culprit.view.rank if culprit is not None else None, "chip": chip,
            "step": culprit.view.step if culprit is not None else None,
            "phase": culprit.view.phase if culprit is not None else None,
            "stalled_for_s": culprit.view.stalled_for_s if culprit is not None else None,
            "nodes_reported": nodes,
            "ranks": [{"node": s.node, "rank": s.view.rank, "step": s.view.step, "where": s.view.where}
                      for s in join.seen()[:MAX_RANKS_PER_NODE]],
        }
        fields = {k: v for k, v in fields.items() if v is not None}
        out.changes.append(NodeChange("signal.hang", node or "*", fields))
        if join.attempt == record.attempt and record.state in (JobState.STARTING, JobState.RUNNING):
            # Every node saw its ranks stall: the whole attempt is accounted for, and what
            # its ranks would say next is only the hang's consequence.
            self._signal(record, Signal.HANG, node, fields, now, out,
                         rank=culprit.view.rank if culprit is not None else None,
                         settled=join.expected <= set(join.views))

    def _decide(self, record: JobRecord, incident: Incident, now: Instant, out: JobOutcome) -> None:
        live = self._live[record.id]
        root = incident.root
        out.event("job.incident", job=record.id, attempt=incident.attempt, signal=root.signal.value, node=root.node,
                  chip=root.chip, rank=root.rank, summary=incident.summary(), evidence=root.evidence,
                  observed_at=root.at, step=record.step, last_checkpoint_step=record.last_checkpoint_step,
                  consequences=[{"signal": s.signal.value, "node": s.node, "rank": s.rank} for s in incident.consequences])
        if record.state not in (JobState.STARTING, JobState.RUNNING) or incident.attempt != record.attempt:
            return  # the attempt is already being ended: the incident is recorded, nothing more
        # A hung attempt has nothing to flush: its ranks are killed at once.
        self._feed(record, root, now, out, grace=0.0 if root.signal is Signal.HANG else FAULT_STOP_GRACE)
        if record.state in (JobState.RESTARTING, JobState.FAILING_OVER):
            live.incident_started = root.at  # a recovery is timed from the fault that caused it

    def _feed(self, record: JobRecord, event: SignalEvent, now: Instant, out: JobOutcome,
              grace: float | None = None) -> None:
        live = self._live[record.id]
        health = self._pool_health_cache
        decisions = live.policy.on_signal(event, health, now.wall)
        # Persist what the engine counts, so a restarted daemon counts on from it.
        record.policy_signals.append({k: v for k, v in {
            "signal": event.signal.value, "at": event.at, "pool": event.pool, "node": event.node, "chip": event.chip,
            "rank": event.rank, "evidence": event.evidence[:200]}.items() if v is not None})
        del record.policy_signals[:-500]
        record.policy_consumed = dict(live.policy.consumed)
        out.records[record.id] = record
        for decision in decisions:
            self._record_decision(record, decision, out)
            if not decision.blocked:
                self._carry_out(record, decision, now, out, grace)

    _pool_health_cache: dict[str, int] | None = None

    def set_pool_health(self, health: dict[str, int]) -> None:
        """Healthy undrained nodes per pool, as the engine's failover guard wants them.
        Called whenever a node's placement could have changed."""
        self._pool_health_cache = health
        self._placement_epoch += 1

    _placement_epoch = 0

    def _record_decision(self, record: JobRecord, decision: Decision, out: JobOutcome) -> None:
        data = decision.to_dict()
        record.add_decision(data)
        out.records[record.id] = record
        fields = {k: v for k, v in data.items() if k not in ("job",)}
        out.changes.append(NodeChange(decision.event_name, "*", {"job": record.id, **fields}))

    def _carry_out(self, record: JobRecord, decision: Decision, now: Instant, out: JobOutcome,
                   grace: float | None = None) -> None:
        action = decision.action
        if action is Action.NONE:
            return
        if action is Action.ALERT:
            out.event("policy.alert", job=record.id, rule=decision.rule, message=decision.message, reason=decision.reason)
            return
        if action is Action.CHECKPOINT:
            self._send_checkpoint(record, now, out, why=f"rule {decision.rule}")
            return
        if decision.exclude_node is not None and (action is Action.EXCLUDE or action is Action.RESTART):
            policy = self._live[record.id].policy.policy
            rule = next((r for r in policy.rules if r.name == decision.rule), None)
            chip = decision.exclude_chip if rule is not None and rule.then.exclude is ExcludeTarget.CHIP else None
            out.drains.append((decision.exclude_node, f"excluded by rule {decision.rule} of job {record.id}", chip))
        if action in (Action.RESTART, Action.EXCLUDE):
            self._begin_end(record, "restart", decision.reason, now, out, grace=grace)
        elif action is Action.FAILOVER:
            assert decision.to_pool is not None
            self._begin_end(record, "failover", decision.reason, now, out, grace=grace, to_pool=decision.to_pool,
                            checkpoint_first=decision.checkpoint_first, rule=decision.rule or "")
        elif action is Action.STOP:
            self._begin_end(record, "stop", f"rule {decision.rule}: {decision.message or decision.reason}", now, out,
                            grace=grace)
        elif action is Action.FAIL:
            self._begin_end(record, "fail", f"rule {decision.rule}: {decision.reason}", now, out, grace=grace)

    def _begin_end(self, record: JobRecord, what: str, reason: str, now: Instant, out: JobOutcome,
                   grace: float | None = None, to_pool: str | None = None, checkpoint_first: bool = False,
                   rule: str = "") -> None:
        """Begin ending the current attempt: restart, failover, stop or fail once its ranks are gone."""
        live = self._live.get(record.id)
        target = {"restart": JobState.RESTARTING, "failover": JobState.FAILING_OVER}.get(what, JobState.STOPPING)
        if record.state is JobState.PENDING:
            if what == "failover" and to_pool is not None:
                self._switch_pool(record, to_pool, now, rule, out)
                record.waiting_for = None
                record.no_capacity_reported = False
                out.records[record.id] = record
                return
            if what in ("stop", "fail"):
                out.event("job.state_changed", **record.transition(JobState.STOPPED if what == "stop" else JobState.FAILED,
                                                                   now.wall, reason))
                self._ended(record, out)
                return
            return  # a restart of a job that is not running: placement goes on trying
        if record.state is JobState.STOPPING and what != "fail":
            return  # already ending for good
        if record.state in (JobState.RESTARTING, JobState.FAILING_OVER) and what == "restart":
            return  # one recovery at a time
        policy = live.policy.policy if live else None
        record.next_action = what
        record.target_pool = to_pool
        record.target_rule = rule if what == "failover" else None
        # A checkpoint first only if every rank still answers: after a rank died (the
        # usual reason to fail over) its peers cannot agree on a step; the newest
        # complete checkpoint is then the one to resume from.
        current = record.current
        answering = current is not None and not current.exited and len(current.alive) >= current.rank_count()
        record.checkpoint_wanted = bool(checkpoint_first and record.state is JobState.RUNNING and answering)
        record.checkpoint_asked_at = None
        record.stop_grace = grace if grace is not None else DEFAULT_STOP_GRACE
        record.stop_sent = False
        record.phase_deadline = None
        if target is not record.state:
            out.event("job.state_changed", **record.transition(target, now.wall, reason))
        else:
            record.reason = reason
        if what == "failover":
            out.event("job.failover_started", job=record.id, from_pool=record.pool, to_pool=to_pool, rule=rule,
                      step=record.step, checkpoint_first=record.checkpoint_wanted, reason=reason)
        out.records[record.id] = record
        if policy is not None and record.checkpoint_wanted:
            return  # the checkpoint is asked for on the next tick
        self._stop_now(record, now, out)

    def _stop_now(self, record: JobRecord, now: Instant, out: JobOutcome) -> None:
        record.stop_sent = True
        record.phase_deadline = now.wall + record.stop_grace + STOP_SLACK
        self._send_stops(record, now, out, record.stop_grace)
        out.records[record.id] = record

    def _wind_down(self, record: JobRecord, live: _Live, now: Instant, nodes: Mapping[str, NodeRecord],
                   out: JobOutcome) -> None:
        policy = live.policy.policy
        if record.checkpoint_wanted:
            if record.checkpoint_asked_at is None:
                record.checkpoint_asked_at = now.wall
                record.phase_deadline = now.wall + policy.checkpoint.before_failover_timeout
                self._send_checkpoint(record, now, out, why="before failover")
                out.records[record.id] = record
                return
            if record.phase_deadline is not None and now.wall < record.phase_deadline:
                return
            out.event("job.checkpoint_timeout", job=record.id, waited_s=policy.checkpoint.before_failover_timeout,
                      effect="failing over from the newest complete checkpoint")
            record.checkpoint_wanted = False
        if not record.stop_sent:
            self._stop_now(record, now, out)
            return
        alive = self._alive_ranks(record, nodes)
        if alive and now.wall < (record.phase_deadline or 0):
            self._resend_stops(record, live, now, out, record.stop_grace)
            return
        self._attempt_over(record, now, out, gave_up=sorted(alive))

    def _attempt_over(self, record: JobRecord, now: Instant, out: JobOutcome, gave_up: list[str]) -> None:
        current = record.current
        what = record.next_action or "stop"
        if current is not None and current.ended_at is None:
            current.ended_at = now.wall
            current.outcome = f"{what}: {record.reason}"
        if gave_up:
            out.event("job.ranks_unaccounted", job=record.id, attempt=record.attempt, ranks=gave_up,
                      effect="their nodes did not confirm the stop in time; they are presumed gone")
        record.phase_deadline = None
        record.checkpoint_asked_at = None
        record.stop_sent = False
        out.records[record.id] = record
        if what == "restart":
            record.restarts += 1
            record.no_capacity_reported = False
            out.event("job.state_changed", **record.transition(JobState.PENDING, now.wall, record.reason))
        elif what == "failover":
            assert record.target_pool is not None
            self._switch_pool(record, record.target_pool, now, record.target_rule or self._last_rule(record), out)
            record.no_capacity_reported = False
            out.event("job.state_changed", **record.transition(JobState.PENDING, now.wall, record.reason))
        elif what == "stop":
            out.event("job.state_changed", **record.transition(JobState.STOPPED, now.wall, record.reason))
            self._ended(record, out)
        else:
            out.event("job.state_changed", **record.transition(JobState.FAILED, now.wall, record.reason))
            self._ended(record, out)

    def _switch_pool(self, record: JobRecord, to_pool: str, now: Instant, rule: str, out: JobOutcome) -> None:
        failover = Failover(from_pool=record.pool, to_pool=to_pool, at=now.wall, step=record.last_checkpoint_step,
                            rule=rule or "operator")
        record.failovers.append(failover)
        record.pool = to_pool
        record.target_pool = record.target_rule = None
        live = self._live.get(record.id)
        if live is not None:
            live.policy.pool = to_pool
        out.records[record.id] = record

    def _last_rule(self, record: JobRecord) -> str:
        for decision in reversed(record.decisions):
            if decision.get("action") == "failover" and not decision.get("blocked"):
                return str(decision.get("rule") or "")
        return "operator"

    def _ended(self, record: JobRecord, out: JobOutcome) -> None:
        name = {JobState.SUCCEEDED: "job.succeeded", JobState.FAILED: "job.failed", JobState.STOPPED: "job.stopped"}
        out.event(name[record.state], job=record.id, reason=record.reason, step=record.step, restarts=record.restarts,
                  failovers=len(record.failovers), ettr=ettr(record, record.ended_at or 0.0))
        self._live.pop(record.id, None)
        out.records[record.id] = record
        if record.spec.warm_standby:  # the nodes it ran on, and its spares, end its standbys
            ran_on = {share.node for attempt in record.attempts for share in attempt.nodes}
            for node in sorted(ran_on | set(record.spare_nodes)):
                out.commands.append(JobCommand(node, record.id, record.attempt, StopRanksArgs(
                    job=record.id, grace=0.0, final=True)))

    # --- warm spares -----------------------------------------------------------------------

    def _keep_spares(self, record: JobRecord, live: _Live, now: Instant, nodes: Mapping[str, NodeRecord],
                     out: JobOutcome) -> None:
        """Warm standbys where the job would go next, so that a restart that leaves its
        nodes (a lost node, an excluded one) and a failover start warm too: in its pool,
        the nodes a placement would take in place of the current ones (the first usable
        ones, as many as the job has nodes); in each pool its policy may fail over to,
        those a placement there would take. Chosen again when the attempt or a node's
        placement changes; nodes no longer chosen are told to end theirs."""
        key = (record.attempt, self._placement_epoch)
        current = record.current
        # Not before the attempt has stepped: standbys starting while its ranks start
        # would slow them where they share a host (a test cluster, a crowded node).
        if current is None or not current.progress or live.spares_key == key:
            return
        if live.spares_key is not None and live.spares_key[0] == record.attempt \
                and now.mono - live.spares_at < SPARES_EVERY:
            return  # the same attempt: a placement change is looked at once per SPARES_EVERY
        live.spares_key, live.spares_at = key, now.mono
        policy = live.policy.policy
        here = {share.node for share in current.nodes}
        views = [v for v in self._views(nodes, record.id) if v.node not in here]
        chosen: dict[str, str] = {}  # node -> pool
        for pool in _next_pools(record, policy):
            shape = record.spec.pools[pool]
            for node in first_usable(policy.pools[pool].accelerator, shape.ranks_per_node,
                                     [v for v in views if v.node not in chosen], shape.nodes):
                chosen[node] = pool
        spec = record.spec
        for node, pool in sorted(chosen.items()):
            out.commands.append(JobCommand(node, record.id, record.attempt, KeepStandbysArgs(
                job=record.id, argv=spec.command, cwd=spec.workdir, env=_rank_env(spec, pool, policy),
                count=spec.pools[pool].ranks_per_node, ckpt_dir=spec.checkpoint_dir)))
        for node in sorted(set(record.spare_nodes) - set(chosen) - here):
            out.commands.append(JobCommand(node, record.id, record.attempt, KeepStandbysArgs(
                job=record.id, argv=spec.command, count=0)))
        spares = sorted(chosen)
        if spares != record.spare_nodes:
            out.event("job.spares_chosen", job=record.id, attempt=record.attempt, nodes=spares,
                      pools=sorted(set(chosen.values())), released=sorted(set(record.spare_nodes) - set(chosen) - here))
            record.spare_nodes = spares
            out.records[record.id] = record

    # --- attempts --------------------------------------------------------------------------

    def _start_attempt(self, record: JobRecord, placed: Placement, now: Instant, out: JobOutcome) -> None:
        record.attempt += 1
        attempt = Attempt(
            number=record.attempt, pool=placed.pool, world_size=placed.world_size, created_at=now.wall,
            # The ranks resume from the newest checkpoint the daemon heard of (a corrupt
            # one is skipped by the runtime for the one before: ETTR is then a little high).
            resumed_from=record.last_checkpoint_step or 0,
            master_addr=placed.master.address,
            nodes=[NodeAttempt(node=n.node, address=n.address, ranks=n.ranks) for n in placed.nodes],
        )
        previous = record.attempts[-1] if record.attempts else None
        record.attempts.append(attempt)
        del record.attempts[:-50]  # keep the recent history bounded
        if previous is not None and previous.world_size != attempt.world_size:
            out.event("job.world_size_changed", job=record.id, attempt=record.attempt, then=previous.world_size,
                      now=attempt.world_size, pool=placed.pool,
                      effect="model, optimizer and data position resume; per-rank random streams start afresh, "
                             "so losses will not repeat the earlier run bit for bit (the runtime's exact: false)")
        record.waiting_for = None
        record.next_action = None
        out.event("job.state_changed", **record.transition(JobState.STARTING, now.wall, None))
        out.event("job.placed", job=record.id, attempt=record.attempt, pool=placed.pool, nodes=placed.node_names(),
                  world_size=placed.world_size, master_addr=attempt.master_addr)
        out.records[record.id] = record

    def _maybe_running(self, record: JobRecord, now: Instant, nodes: Mapping[str, NodeRecord], out: JobOutcome) -> None:
        current = record.current
        if record.state is not JobState.STARTING or current is None:
            return
        if len(current.alive) + len(current.exited) < current.rank_count():
            return
        current.running_at = now.wall
        if record.first_started_at is None:
            record.first_started_at = now.wall
        out.event("job.state_changed", **record.transition(JobState.RUNNING, now.wall, None))
        live = self._live.get(record.id)
        if live is not None and live.incident_started is not None:
            recovery = max(0.0, now.wall - live.incident_started)
            self.recoveries.append((record.pool, recovery))
            out.event("job.recovered", job=record.id, attempt=record.attempt, pool=record.pool,
                      recovery_s=round(recovery, 3))
            live.incident_started = None
        if len(record.failovers) and record.attempt > 1 and record.attempts[-2].pool != record.pool:
            out.event("job.failover_completed", job=record.id, pool=record.pool, attempt=record.attempt,
                      world_size=current.world_size)
        out.records[record.id] = record
        self._maybe_succeeded(record, now, out)

    def _maybe_succeeded(self, record: JobRecord, now: Instant, out: JobOutcome) -> None:
        current = record.current
        if current is None or record.state not in (JobState.STARTING, JobState.RUNNING):
            return
        if len(current.exited) == current.rank_count() and all(code == 0 for code in current.exited.values()):
            current.ended_at = now.wall
            current.outcome = "succeeded"
            if record.first_started_at is None:
                record.first_started_at = current.created_at
            out.event("job.state_changed", **record.transition(JobState.SUCCEEDED, now.wall, "every rank exited 0"))
            self._ended(record, out)

    def _alive_ranks(self, record: JobRecord, nodes: Mapping[str, NodeRecord]) -> set[str]:
        """Ranks of the current attempt still running on a node that is up (a lost
        node's ranks are presumed dead; a left node's agent is gone, but its ranks are
        not, so they count until the grace runs out)."""
        current = record.current
        if current is None:
            return set()
        alive = set()
        for share in current.nodes:
            node = nodes.get(share.node)
            if node is None or node.state is NodeState.LOST:
                continue
            for r in node.running:
                key = f"{share.node}/{r.rank}"
                # A rank.exited event is the agent's word; the heartbeat may not know yet.
                if r.job == record.id and r.attempt == record.attempt and key not in current.exited:
                    alive.add(key)
        return alive

    # --- commands --------------------------------------------------------------------------

    def _due(self, live: _Live, node: str, kind: str, now: Instant) -> bool:
        sent = live.sent.get((node, kind))
        if sent is not None and now.mono - sent < RESEND_AFTER:
            return False
        live.sent[(node, kind)] = now.mono
        return True

    def _send_starts(self, record: JobRecord, live: _Live, now: Instant, out: JobOutcome) -> None:
        current = record.current
        if current is None:
            return
        policy = live.policy.policy
        spec = record.spec
        env = _rank_env(spec, record.pool, policy)
        shares = current.nodes if current.master_port else current.nodes[:1]
        for share in shares:
            if share.started or not self._due(live, share.node, f"start-{record.attempt}", now):
                continue
            out.commands.append(JobCommand(share.node, record.id, record.attempt, StartRanksArgs(
                job=record.id, attempt=record.attempt, argv=spec.command, ranks=share.ranks,
                world_size=current.world_size, local_world_size=len(share.ranks), master_addr=current.master_addr,
                master_port=current.master_port, ckpt_dir=spec.checkpoint_dir, cwd=spec.workdir, env=env,
                hang_timeout=policy.detect.hang_timeout, checkpoint_hang_timeout=policy.detect.checkpoint_hang_timeout,
                eval_hang_timeout=policy.detect.eval_hang_timeout, probe_interval=policy.detect.probe_interval,
                standby=spec.warm_standby,
            )))

    def _send_stops(self, record: JobRecord, now: Instant, out: JobOutcome, grace: float) -> None:
        current = record.current
        live = self._live.get(record.id)
        if current is None:
            return
        for share in current.nodes:
            if live is not None:
                live.sent[(share.node, f"stop-{record.attempt}")] = now.mono
            out.commands.append(JobCommand(share.node, record.id, record.attempt,
                                           StopRanksArgs(job=record.id, attempt=record.attempt, grace=grace,
                                                         final=_final(record))))

    def _resend_stops(self, record: JobRecord, live: _Live, now: Instant, out: JobOutcome, grace: float) -> None:
        current = record.current
        if current is None:
            return
        for share in current.nodes:
            if self._due(live, share.node, f"stop-{record.attempt}", now):
                out.commands.append(JobCommand(share.node, record.id, record.attempt,
                                               StopRanksArgs(job=record.id, attempt=record.attempt, grace=grace,
                                                             final=_final(record))))

    def _send_checkpoint(self, record: JobRecord, now: Instant, out: JobOutcome, why: str) -> None:
        current = record.current
        if current is None or record.state not in (JobState.RUNNING, JobState.FAILING_OVER):
            return
        out.event("job.checkpoint_requested", job=record.id, attempt=record.attempt, why=why, step=record.step)
        for share in current.nodes:
            out.commands.append(JobCommand(share.node, record.id, record.attempt,
                                           CheckpointArgs(job=record.id, attempt=record.attempt)))

    # --- the cluster as placement sees it ------------------------------------------------

    def _views(self, nodes: Mapping[str, NodeRecord], for_job: str) -> list[NodeView]:
        busy: dict[str, set[int]] = {}
        busy_nodes: set[str] = set()
        for record in self.live():
            if record.id == for_job or record.current is None or not record.state.has_ranks:
                continue
            for share in record.current.nodes:
                busy_nodes.add(share.node)
                for r in share.ranks:
                    busy.setdefault(share.node, set()).update(r.chips)
        views = []
        for record in nodes.values():
            excluded = set(record.drained_chips)
            usable = tuple(c.index for c in record.chips if c.health in _USABLE and c.index not in excluded)
            views.append(NodeView(
                node=record.node, family=record.accelerator.family, up=record.state is NodeState.UP,
                address=record.address or record.hostname or record.node, usable_chips=usable,
                has_chips=bool(record.chips), drained=record.drained,
                busy_chips=frozenset(busy.get(record.node, ())), busy=record.node in busy_nodes,
            ))
        return views

    def pool_health(self, nodes: Mapping[str, NodeRecord], policy: Policy) -> dict[str, int]:
        """Nodes per pool that could take ranks (up, undrained, a usable chip)."""
        out: dict[str, int] = {}
        for pool in policy.pools.values():
            out[pool.name] = sum(
                1 for r in nodes.values()
                if r.accelerator.family == pool.accelerator and r.state is NodeState.UP and r.drained is None
                and (not r.chips or any(c.health in _USABLE and c.index not in r.drained_chips for c in r.chips))
            )
        return out


def _sample(attempt: Attempt, step: int, at: float, limit: int = 2000) -> None:
    """Keep (step, time) samples for ETTR; thin to every other one when full."""
    attempt.progress.append((step, at))
    if len(attempt.progress) > limit:
        attempt.progress[:] = attempt.progress[::2] + ([attempt.progress[-1]] if len(attempt.progress) % 2 == 0 else [])


def _rank_env(spec: JobSpec, pool: str, policy: Policy) -> dict[str, str]:
    """The job's environment for its ranks on `pool` (a warm standby must match it)."""
    env = dict(spec.env.get(pool, {}))
    # The policy's checkpoint.keep: the runtime's Checkpointer prunes to it.
    env.setdefault("TRAINGUARD_CKPT_KEEP", str(policy.checkpoint.keep))
    return env


def _next_pools(record: JobRecord, policy: Policy) -> list[str]:
    """Where the job may go next: its own pool, then each pool a rule of its policy
    fails it over to (that the job has a shape for)."""
    pools = [record.pool]
    for rule in policy.rules:
        to = rule.then.to
        if rule.then.action is Action.FAILOVER and to and to not in pools and to in record.spec.pools \
                and to in policy.pools:
            pools.append(to)
    return [p for p in pools if p in policy.pools and p in record.spec.pools]


def _final(record: JobRecord) -> bool:
    """A stop after which the job does not come back to these nodes: it ends, or it
    leaves the pool (their warm standbys are stopped too). A restart's is not."""
    return record.state in (JobState.STOPPING, JobState.FAILING_OVER)
