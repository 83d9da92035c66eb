"""The policy engine: signals in, decisions out. Pure: the caller passes every time.

One `JobPolicy` per job remembers what the policy needs (the job's recent signals, its
restarts, its last failover, which pool it is on) and answers each new signal with the
decisions it leads to. Rules are tried in order and the first whose condition holds
decides; a failover that may not happen (cooldown, too few healthy nodes in the target
pool, already there) is a loud `blocked` decision and the next rules are tried. Once a
rule has fired, the signals it counted do not count for it again, so three timeouts
cause one failover, not one per later signal.

Times are seconds on any one timeline (the daemon passes monotonic time, a replay the
recorded wall times); the engine only subtracts them.
"""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

from supervisor.policy.schema import AllOf, AnyOf, Condition, ExcludeTarget, Leaf, Per, Policy, Rule, leaves
from supervisor.shared.durations import format_window as _fmt
from supervisor.shared.vocab import Action, Severity, Signal, default_severity

#: The most signals one job remembers; far more than any sane window holds.
HISTORY_LIMIT = 10_000
#: How many counted signals a decision quotes as its evidence.
EVIDENCE_LIMIT = 10


@dataclass(frozen=True)
class SignalEvent:
    """One signal as the engine sees it (and as `policy explain` reads it back)."""

    signal: Signal
    at: float
    job: str = ""
    pool: str | None = None
    node: str | None = None
    chip: int | None = None
    rank: int | None = None
    severity: Severity | None = None
    evidence: str = ""
    id: str = ""

    @property
    def effective_severity(self) -> Severity:
        return self.severity or default_severity(self.signal)

    def brief(self) -> dict[str, Any]:
        out = {"at": self.at, "signal": self.signal.value, "pool": self.pool, "node": self.node,
               "chip": self.chip, "rank": self.rank, "evidence": self.evidence}
        return {k: v for k, v in out.items() if v is not None and v != ""}


@dataclass(frozen=True)
class Count:
    """One condition that held: what it counts, how many it saw, the threshold."""

    condition: str
    line: int
    observed: int
    threshold: int
    within: float | None
    key: str | None = None  # the node or chip counted, for per-node / per-chip conditions

    def summary(self) -> str:
        where = f" on {self.key.removeprefix('chip:')}" if self.key else ""
        return f"{self.observed} × {self.condition}{where} (threshold {self.threshold})"


@dataclass(frozen=True)
class Decision:
    job: str
    at: float
    action: Action
    rule: str | None
    reason: str
    policy: str
    blocked: bool = False
    from_pool: str | None = None
    to_pool: str | None = None
    exclude_node: str | None = None
    exclude_chip: int | None = None
    checkpoint_first: bool = False
    message: str | None = None
    counts: tuple[Count, ...] = ()
    evidence: tuple[dict[str, Any], ...] = ()

    @property
    def event_name(self) -> str:
        """The log event this decision is reported as."""
        return "policy.blocked" if self.blocked else "policy.decision"

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["action"] = self.action.value
        return {k: v for k, v in out.items() if v not in (None, (), [], False) or k in ("blocked",)}


@dataclass(frozen=True)
class _Held:
    counts: tuple[Count, ...]
    events: tuple[SignalEvent, ...]
    key: str | None = None
    # The node / chip the counted signals are about: what `exclude` acts on.
    node: str | None = None
    chip: int | None = None


@dataclass
class JobPolicy:
    """The engine's memory of one job under one policy."""

    policy: Policy
    job: str
    pool: str
    # (sequence number, signal): a rule that fires has used the signals up to its number,
    # so signals with equal times are still told apart.
    history: deque[tuple[int, SignalEvent]] = field(default_factory=lambda: deque(maxlen=HISTORY_LIMIT))
    consumed: dict[str, int] = field(default_factory=dict)  # rule name -> last sequence it used
    _seq: int = 0
    restarts: deque[float] = field(default_factory=deque)
    last_failover: float | None = None
    preferred_healthy_since: float | None = None
    finished: bool = False

    # --- signals -------------------------------------------------------------------

    def on_signal(self, event: SignalEvent, pool_health: Mapping[str, int] | None, now: float) -> list[Decision]:
        """Decisions for one new signal. `pool_health` maps pool → healthy nodes (None:
        unknown, assume enough)."""
        if self.finished:
            return []
        self._seq += 1
        self.history.append((self._seq, event))
        if event.pool == self.policy.preferred_pool:
            self.preferred_healthy_since = None  # failback waits for a quiet preferred pool
        decisions: list[Decision] = []
        for rule in self.policy.rules:
            if not any(_matches(leaf, event) for leaf in leaves(rule.when)):
                continue
            held = self._holds(rule, now)
            if held is None:
                continue
            decision = self._act(rule, held, event, pool_health, now)
            decisions.append(decision)
            if not decision.blocked:
                return decisions
        decisions.append(
            Decision(
                job=self.job, at=now, action=Action.NONE, rule=None, policy=self.policy.name,
                reason=("no other rule matched " if decisions else "no rule matched ")
                + event.signal.value
                + (f" on pool {event.pool}" if event.pool else "")
                + "; the job continues as it is",
                evidence=(event.brief(),),
            )
        )
        return decisions

    def _holds(self, rule: Rule, now: float) -> _Held | None:
        since = self.consumed.get(rule.name, 0)
        events = [e for seq, e in self.history if seq > since]
        return _evaluate(rule.when, events, now, self.history[-1][1])

    def _act(self, rule: Rule, held: _Held, event: SignalEvent, pool_health: Mapping[str, int] | None, now: float) -> Decision:
        then = rule.then
        base = dict(
            job=self.job, at=now, rule=rule.name, policy=self.policy.name, from_pool=self.pool,
            counts=held.counts, evidence=tuple(e.brief() for e in held.events[-EVIDENCE_LIMIT:]),
            message=then.message,
        )
        summary = "; ".join(c.summary() for c in held.counts)
        if then.action is Action.FAILOVER:
            assert then.to is not None
            blocked = self._failover_blocked(then.to, pool_health, now)
            if blocked:
                return Decision(action=Action.FAILOVER, to_pool=then.to, blocked=True,
                                reason=f"rule {rule.name!r} wants a failover to {then.to} ({summary}) but {blocked}; trying the next rules",
                                **base)  # type: ignore[arg-type]
            self._fired(rule, now)
            self.pool, self.last_failover = then.to, now
            return Decision(action=Action.FAILOVER, to_pool=then.to, checkpoint_first=self.policy.checkpoint.before_failover,
                            reason=f"{summary}: fail over from {base['from_pool']} to {then.to}", **base)  # type: ignore[arg-type]
        if then.action in (Action.RESTART, Action.EXCLUDE):
            window = self.policy.limits.within
            while self.restarts and self.restarts[0] <= now - window:
                self.restarts.popleft()
            if len(self.restarts) >= self.policy.limits.max_restarts:
                self.finished = True
                return Decision(
                    action=Action.FAIL,
                    reason=(
                        f"{summary}: rule {rule.name!r} asks for a {then.action.value}, but the job already "
                        f"restarted {len(self.restarts)} times within {_fmt(window)} "
                        f"(limits.max_restarts: {self.policy.limits.max_restarts}); the job fails"
                    ),
                    **base,  # type: ignore[arg-type]
                )
            self.restarts.append(now)
            self._fired(rule, now)
            node, chip = self._exclusion(then.exclude, held, event)
            what = {ExcludeTarget.NODE: f" without node {node}", ExcludeTarget.CHIP: f" without chip {chip} of {node}"}.get(then.exclude, "")
            return Decision(action=then.action, exclude_node=node, exclude_chip=chip,
                            reason=f"{summary}: restart on {self.pool}{what} from the latest checkpoint "
                                   f"(restart {len(self.restarts)} of at most {self.policy.limits.max_restarts} within {_fmt(window)})",
                            **base)  # type: ignore[arg-type]
        self._fired(rule, now)
        if then.action is Action.STOP:
            self.finished = True
            return Decision(action=Action.STOP, reason=f"{summary}: stop the job (restarting would not help)", **base)  # type: ignore[arg-type]
        verb = {Action.CHECKPOINT: "take a checkpoint now", Action.ALERT: "alert a human; the job is not touched"}[then.action]
        return Decision(action=then.action, reason=f"{summary}: {verb}", **base)  # type: ignore[arg-type]

    def _failover_blocked(self, to: str, pool_health: Mapping[str, int] | None, now: float) -> str | None:
        if to == self.pool:
            return f"the job already runs on {to}"
        cooldown = self.policy.limits.failover_cooldown
        if self.last_failover is not None and now - self.last_failover < cooldown:
            return (f"the last failover was {_fmt(now - self.last_failover)} ago and "
                    f"limits.failover_cooldown is {_fmt(cooldown)}")
        need = self.policy.pools[to].min_healthy_nodes
        if pool_health is not None and pool_health.get(to, 0) < need:
            return f"pool {to} has {pool_health.get(to, 0)} healthy nodes, fewer than its min_healthy_nodes ({need})"
        return None

    def _fired(self, rule: Rule, now: float) -> None:
        self.consumed[rule.name] = self._seq

    @staticmethod
    def _exclusion(target: ExcludeTarget, held: _Held, event: SignalEvent) -> tuple[str | None, int | None]:
        if target is ExcludeTarget.NONE:
            return None, None
        return held.node, (held.chip if target is ExcludeTarget.CHIP else None)

    # --- time ----------------------------------------------------------------------

    def on_tick(self, pool_health: Mapping[str, int] | None, now: float) -> list[Decision]:
        """Failback: move back to the preferred pool once it has been healthy and quiet
        for `failback.after`. Off unless the policy enables it."""
        failback, preferred = self.policy.failback, self.policy.preferred_pool
        if not failback.enabled or self.finished or self.pool == preferred or pool_health is None:
            self.preferred_healthy_since = None
            return []
        if pool_health.get(preferred, 0) < self.policy.pools[preferred].min_healthy_nodes:
            self.preferred_healthy_since = None
            return []
        if self.preferred_healthy_since is None:
            self.preferred_healthy_since = now
            return []
        quiet = now - self.preferred_healthy_since
        if quiet < failback.after:
            return []
        if self._failover_blocked(preferred, pool_health, now):
            return []
        from_pool = self.pool
        self.pool, self.last_failover = preferred, now
        self.preferred_healthy_since = None
        return [
            Decision(
                job=self.job, at=now, action=Action.FAILOVER, rule="failback", policy=self.policy.name,
                from_pool=from_pool, to_pool=preferred, checkpoint_first=self.policy.checkpoint.before_failover,
                reason=f"pool {preferred} has been healthy with no signals for {_fmt(quiet)} "
                       f"(failback.after: {_fmt(failback.after)}): fail back from {from_pool}",
            )
        ]


# --- conditions --------------------------------------------------------------------


def _matches(leaf: Leaf, event: SignalEvent) -> bool:
    """Does this signal belong to what `leaf` counts (ignoring count and window)?"""
    if event.signal not in leaf.signals:
        return False
    if leaf.pools is not None and event.pool not in leaf.pools:
        return False
    if not leaf.matches_node(event.node):
        return False
    if leaf.min_severity is not None and event.effective_severity.rank < leaf.min_severity.rank:
        return False
    return True


def in_window(at: float, now: float, within: float | None) -> bool:
    """Is a signal at `at` inside the window (now - within, now]? Always, when `within` is
    None. A time after `now` (clock skew between sources) counts as inside."""
    return within is None or at > now - within


def count_in_window(times: list[float], now: float, within: float | None) -> int:
    return sum(1 for t in times if in_window(t, now, within))


def _evaluate(condition: Condition, events: list[SignalEvent], now: float, trigger: SignalEvent) -> _Held | None:
    if isinstance(condition, AnyOf):
        for child in condition.children:
            held = _evaluate(child, events, now, trigger)
            if held is not None:
                return held
        return None
    if isinstance(condition, AllOf):
        parts = [_evaluate(child, events, now, trigger) for child in condition.children]
        if any(p is None for p in parts):
            return None
        merged = sorted({e for p in parts for e in p.events}, key=lambda e: e.at)  # type: ignore[union-attr]
        keyed = next((p for p in parts if p and p.key), parts[0])
        return _Held(tuple(c for p in parts for c in p.counts), tuple(merged), keyed.key, keyed.node, keyed.chip)  # type: ignore[union-attr]
    return _evaluate_leaf(condition, events, now, trigger)


def _evaluate_leaf(leaf: Leaf, events: list[SignalEvent], now: float, trigger: SignalEvent) -> _Held | None:
    if leaf.count == 1 and _matches(leaf, trigger):
        # "One such signal" is the one that just arrived: quote it, not older ones.
        key = _group_key(leaf.per, trigger)
        if leaf.per is Per.JOB or key is not None:
            count = Count(leaf.describe(), leaf.line, 1, 1, leaf.within, key)
            return _Held((count,), (trigger,), key, trigger.node, trigger.chip)
    matching = [
        e for e in events
        if _matches(leaf, e) and in_window(e.at, now, leaf.within)
    ]
    if leaf.per is Per.JOB:
        groups = {None: matching}
    else:
        groups: dict[str | None, list[SignalEvent]] = {}  # type: ignore[no-redef]
        for e in matching:
            key = _group_key(leaf.per, e)
            if key is not None:
                groups.setdefault(key, []).append(e)
    crossing = {k: g for k, g in groups.items() if len(g) >= leaf.count}
    if not crossing:
        return None
    # Prefer the group of the newest signal: that is the node or chip that just failed.
    key = max(crossing, key=lambda k: crossing[k][-1].at)
    group = crossing[key]
    count = Count(leaf.describe(), leaf.line, len(group), leaf.count, leaf.within, key)
    newest = group[-1]
    # per chip: that chip; per node: that node (its newest chip); per job: the newest signal.
    return _Held((count,), tuple(group), key, newest.node, newest.chip)


def _group_key(per: Per, event: SignalEvent) -> str | None:
    """Which counter a signal goes to under `per` (None: it cannot be attributed)."""
    if per is Per.JOB:
        return None
    if event.node is None:
        return None
    if per is Per.NODE:
        return event.node
    return f"chip:{event.node}/{event.chip}" if event.chip is not None else None
