"""The daemon's logic, without sockets: decoded messages in, messages to send and
changes to log out.

`daemon.py` owns the sockets, the store and the clock and hands every decoded message
here; what comes back is data (`Outcome`): replies addressed to a node or a CLI client,
and `NodeChange`s to log and persist. That keeps everything the daemon decides testable
with literal times and no network.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

import msgspec

from supervisor.core import control
from supervisor.core.badframes import BadFrameCounter
from supervisor.core.jobs import JobRecord
from supervisor.core.nodes import NodeChange, NodeTable, Unregistered
from supervisor.core.scheduler import JobOutcome, Jobs
from supervisor.core.statusrows import StatusRows
from supervisor.policy.directory import PolicyDirectory
from supervisor.shared.clock import Instant
from supervisor.shared.defaults import DEFAULT_HEARTBEAT_INTERVAL, DEFAULT_HEARTBEAT_TIMEOUT
from supervisor.shared.protocol import (
    Ack,
    AnyMessage,
    ChipStatus,
    Command,
    CtlReply,
    CtlRequest,
    Event,
    Goodbye,
    Heartbeat,
    Message,
    ProtocolError,
    Register,
    Result,
    new_id,
)


@dataclass(frozen=True)
class ToNode:
    """A message for a node, sent on the connection it registered from."""

    node: str
    message: Message


@dataclass(frozen=True)
class ToPeer:
    """An answer to the connection (ROUTER routing id) a message came from."""

    route: bytes
    message: Message


@dataclass(frozen=True)
class ToClient:
    client: bytes
    message: CtlReply


@dataclass
class Outcome:
    sends: list[ToNode | ToPeer | ToClient] = field(default_factory=list)
    changes: list[NodeChange] = field(default_factory=list)
    #: Job records changed: the daemon commits them before sending any job command.
    jobs: dict[str, JobRecord] = field(default_factory=dict)

    def extend(self, other: "Outcome") -> None:
        self.sends.extend(other.sends)
        self.changes.extend(other.changes)
        self.jobs.update(other.jobs)


@dataclass(frozen=True)
class _Waiting:
    """A CLI request whose reply waits for an agent's Result."""

    client: bytes
    request_id: str
    verb: str
    node: str
    deadline: float


class _SeenIds:
    """The last N event ids of one node, so a resent event is acknowledged, not re-logged."""

    def __init__(self, size: int = 512) -> None:
        self._order: deque[str] = deque(maxlen=size)
        self._set: set[str] = set()

    def add(self, item: str) -> bool:
        """True if new."""
        if item in self._set:
            return False
        if len(self._order) == self._order.maxlen:
            self._set.discard(self._order[0])
        self._order.append(item)
        self._set.add(item)
        return True


#: Fields of an agent's event that name the record itself: the daemon sets them, an
#: agent's `fields` can never override them (nor the log line's own keys).
RESERVED_FIELDS = frozenset({
    "event", "timestamp", "level", "node", "job", "rank", "chip", "signal", "evidence", "observed_at",
    "detection_latency_s", "accelerator", "event_id", "status", "clock_skew_s",
})
#: An event observed further in the future than this (a node's clock is wrong), or
#: longer ago than MAX_EVENT_AGE, is stamped with the time it arrived instead.
MAX_FUTURE_SKEW = 60.0
MAX_EVENT_AGE = 86400.0


@dataclass(frozen=True)
class ClusterConfig:
    heartbeat_timeout: float = DEFAULT_HEARTBEAT_TIMEOUT
    heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL
    command_timeout: float = 10.0


class Cluster:
    def __init__(self, config: ClusterConfig, instance: str, started: Instant) -> None:
        self.config = config
        self.instance = instance
        self.started = started
        self.nodes = NodeTable(config.heartbeat_timeout)
        #: Each node's `status` row, kept as bytes (`StatusRows`).
        self.status_rows = StatusRows()
        self._waiting: dict[str, _Waiting] = {}
        #: The jobs (pure; `scheduler.py`), with the policies as this daemon has them.
        self.jobs = Jobs(lambda name: self.policies.get(name) if self.policies is not None else None)
        #: Job commands in flight: command id -> (job, attempt, node, kind), for their Results.
        self._job_commands: dict[str, tuple[str, int, str, str]] = {}
        #: The store's event query, for the `events` verb (set by the daemon).
        self.event_log: Any = None
        #: node -> the ROUTER routing id of the connection it registered from, and back.
        self.routes: dict[str, bytes] = {}
        self._route_nodes: dict[bytes, str] = {}
        self._event_ids: dict[str, _SeenIds] = {}
        #: Frames that were not valid messages, counted by the daemon's transport.
        self.bad_frames = BadFrameCounter()
        #: The policy directory, when the daemon was given one (read by control verbs).
        self.policies: PolicyDirectory | None = None
        #: (node table's placement_version, policies) the jobs' pool health was counted at.
        self._pool_health_key: tuple[int, tuple[tuple[str, int], ...]] | None = None

    @property
    def heartbeat_timeout(self) -> float:
        return self.config.heartbeat_timeout

    @property
    def heartbeat_interval(self) -> float:
        return self.config.heartbeat_interval

    # --- agents --------------------------------------------------------------------

    def on_agent_message(self, msg: AnyMessage, route: bytes, now: Instant) -> Outcome:
        """One decoded message from the agent connection `route`. A node's connection is
        the one it registered from (authenticated by its key, on a secure daemon):
        anything else claiming to be that node is told to register first."""
        if isinstance(msg, Register):
            return self._on_register(msg, route, now)
        if not isinstance(msg, (Heartbeat, Event, Result, Goodbye)):
            raise ProtocolError("unexpected", f"{type(msg).__name__} on the agent socket")
        if self.routes.get(msg.node) != route:
            if isinstance(msg, (Result, Goodbye)):
                return Outcome()  # nothing to answer: it is not registered from here
            return Outcome([self._ack(route, msg.id, now, ok=False, error="unregistered")])
        if isinstance(msg, Heartbeat):
            return self._on_heartbeat(msg, route, now)
        if isinstance(msg, Event):
            return self._on_event(msg, route, now)
        if isinstance(msg, Goodbye):
            return self._on_goodbye(msg, now)
        return self._on_result(msg, now)

    def route_of(self, node: str) -> bytes | None:
        """The connection a node registered from (where its commands go)."""
        return self.routes.get(node)

    def node_of_route(self, route: bytes) -> str | None:
        return self._route_nodes.get(route)

    def _bind_route(self, node: str, route: bytes | None) -> None:
        old = self.routes.pop(node, None)
        if old is not None:
            self._route_nodes.pop(old, None)
        if route is not None:
            previous_owner = self._route_nodes.get(route)
            if previous_owner is not None and previous_owner != node:
                self.routes.pop(previous_owner, None)
            self.routes[node] = route
            self._route_nodes[route] = node

    def _ack(self, route: bytes, ref: str, now: Instant, **kw: Any) -> ToPeer:
        return ToPeer(route, Ack(id=new_id(), ts=now.wall, ref=ref, **kw))

    def _on_register(self, msg: Register, route: bytes, now: Instant) -> Outcome:
        if self.routes.get(msg.node) == route and self.nodes.is_registered(msg.node, msg.agent_instance):
            # The same agent process, on the connection it registered from, still up: a
            # register sent again (it crossed a refusal of an older heartbeat, or the peer
            # repeats itself). Nothing about the node changed but what a heartbeat says,
            # so it is taken as one: no new registration to log and store, no storm of
            # them when many agents do so while the daemon is behind.
            record = self.nodes.get(msg.node)
            assert record is not None
            changes = self.nodes.heartbeat(Heartbeat(
                id=msg.id, ts=msg.ts, node=msg.node, seq=0, agent_instance=msg.agent_instance, chips=msg.chips,
                host=msg.host, running=msg.running, handler_failures=record.handler_failures), now)
        else:
            changes = self.nodes.register(msg, now)
            self._bind_route(msg.node, route)
        detail = {
            "daemon_instance": self.instance,
            "heartbeat_interval": self.config.heartbeat_interval,
            "heartbeat_timeout": self.config.heartbeat_timeout,
        }
        out = Outcome([self._ack(route, msg.id, now, detail=detail)], changes)
        # Ranks that kept training through a daemon or agent restart are adopted here.
        out.extend(self._jobs_outcome(self.jobs.on_running(msg.node, _running(msg.running), now, self.nodes.by_name()), now))
        return out

    def _on_heartbeat(self, msg: Heartbeat, route: bytes, now: Instant) -> Outcome:
        try:
            changes = self.nodes.heartbeat(msg, now)
        except Unregistered:
            return Outcome([self._ack(route, msg.id, now, ok=False, error="unregistered")])
        out = Outcome([self._ack(route, msg.id, now)], changes)
        if msg.running:
            out.extend(self._jobs_outcome(self.jobs.on_running(msg.node, _running(msg.running), now,
                                                               self.nodes.by_name()), now))
        return out

    def _on_goodbye(self, msg: Goodbye, now: Instant) -> Outcome:
        self._bind_route(msg.node, None)
        return Outcome(changes=self.nodes.leave(msg.node, msg.agent_instance, msg.reason, now))

    def _on_event(self, msg: Event, route: bytes, now: Instant) -> Outcome:
        if not self.nodes.is_registered(msg.node):
            # Keep it on the agent's side until it has registered; it will resend.
            return Outcome([self._ack(route, msg.id, now, ok=False, error="unregistered")])
        ack = self._ack(route, msg.id, now)
        if not self._event_ids.setdefault(msg.node, _SeenIds()).add(msg.id):
            return Outcome([ack])
        if msg.name == "chip.health_changed" and "status" in msg.fields:
            try:
                self.nodes.update_chip(msg.node, msgspec.convert(msg.fields["status"], ChipStatus))
            except msgspec.ValidationError:
                pass  # the next heartbeat carries the chip anyway
        # The agent's own fields first; the record's identity on top, where they cannot
        # be overridden: a node cannot speak for another node, job or event.
        fields: dict[str, Any] = {k: v for k, v in msg.fields.items() if k not in RESERVED_FIELDS}
        observed_at = msg.observed_at
        skew = observed_at - now.wall
        if skew > MAX_FUTURE_SKEW or -skew > MAX_EVENT_AGE:
            fields["clock_skew_s"] = round(skew, 3)
            observed_at = now.wall
        fields.update(
            chip=msg.chip,
            signal=msg.signal.value if msg.signal else None,
            job=msg.job,
            rank=msg.rank,
            evidence=msg.evidence,
            observed_at=observed_at,
            # Wall clocks of two machines: good to NTP accuracy, which is what we have.
            detection_latency_s=round(max(0.0, now.wall - observed_at), 3),
            accelerator=self.nodes.get(msg.node).accelerator.value,  # type: ignore[union-attr]
            event_id=msg.id,
            attempt=msg.attempt,
        )
        fields = {k: v for k, v in fields.items() if v is not None}
        out = Outcome([ack], [NodeChange(msg.name, msg.node, fields)])
        out.extend(self._jobs_outcome(self.jobs.on_node_event(msg.node, msg.name, fields, now, self.nodes.by_name()), now))
        return out

    def _on_result(self, msg: Result, now: Instant) -> Outcome:
        tracked = self._job_commands.pop(msg.ref, None)
        if tracked is not None:
            job, attempt, node, kind = tracked
            if kind != "start_ranks" or node != msg.node:
                return Outcome()
            return self._jobs_outcome(self.jobs.on_start_result(node, job, attempt, msg.ok, msg.error, msg.detail, now),
                                      now)
        waiting = self._waiting.get(msg.ref)
        if waiting is None or waiting.node != msg.node:
            return Outcome()  # late, duplicate or misaddressed; the CLI already got its answer
        del self._waiting[msg.ref]
        if msg.ok:
            reply = CtlReply(id=new_id(), ts=now.wall, ref=waiting.request_id, ok=True, result=msg.detail)
        else:
            reply = CtlReply(
                id=new_id(),
                ts=now.wall,
                ref=waiting.request_id,
                ok=False,
                error=msg.error or f"node {msg.node} refused without a reason",
                code="agent_refused",
            )
        return Outcome([ToClient(waiting.client, reply)])

    # --- control clients -----------------------------------------------------------

    def on_ctl_request(self, client: bytes, req: CtlRequest, now: Instant) -> Outcome:
        try:
            answer = control.dispatch(self, req, now)
        except control.CtlError as exc:
            return Outcome([ToClient(client, _error(req.id, str(exc), exc.code, now))])
        except Exception as exc:  # a bug in a verb must not take the daemon down
            return Outcome(
                [ToClient(client, _error(req.id, f"internal error: {exc!r}", "internal", now))]
            )
        if isinstance(answer, control.SendCommand):
            command = Command(id=new_id(), ts=now.wall, args=answer.args)
            self._waiting[command.id] = _Waiting(
                client, req.id, req.verb, answer.node, now.mono + self.config.command_timeout
            )
            return Outcome([ToNode(answer.node, command)])
        if isinstance(answer, control.ActedCluster):
            out = answer.outcome
            out.sends.append(ToClient(client, CtlReply(id=new_id(), ts=now.wall, ref=req.id, ok=True,
                                                       result=answer.result)))
            return out
        if isinstance(answer, control.Acted):
            out = self._jobs_outcome(answer.outcome, now)
            out.sends.append(ToClient(client, CtlReply(id=new_id(), ts=now.wall, ref=req.id, ok=True,
                                                       result=answer.result)))
            return out
        return Outcome([ToClient(client, CtlReply(id=new_id(), ts=now.wall, ref=req.id, ok=True, result=answer))])

    # --- jobs --------------------------------------------------------------------------

    def _jobs_outcome(self, job_out: JobOutcome, now: Instant) -> Outcome:
        """A job outcome as the daemon acts on it: node drains applied, commands sent to
        the nodes' connections and tracked for their results, records to commit."""
        out = Outcome(changes=list(job_out.changes), jobs=dict(job_out.records))
        for node, reason, chip in job_out.drains:
            change = self.nodes.drain(node, reason, chip)
            if change is not None:
                out.changes.append(change)
        for cmd in job_out.commands:
            command = Command(id=new_id(), ts=now.wall, args=cmd.args)
            self._job_commands[command.id] = (cmd.job, cmd.attempt, cmd.node, cmd.args.kind)
            out.sends.append(ToNode(cmd.node, command))
        while len(self._job_commands) > 10_000:  # results that never came (a lost node): forget the oldest
            self._job_commands.pop(next(iter(self._job_commands)))
        return out

    def drain(self, node: str, reason: str | None, now: Instant) -> Outcome:
        """An operator drains (reason) or undrains (None) a node; jobs on a drained node
        are moved off it by a restart."""
        change = self.nodes.drain(node, reason)
        out = Outcome(changes=[change] if change is not None else [])
        if reason is not None and change is not None:
            out.extend(self._jobs_outcome(self.jobs.drained(node, reason, now), now))
        return out

    def on_send_failed(self, send: ToNode, reason: str, now: Instant) -> Outcome:
        """The transport could not hand a message to a node (not connected, queue full)."""
        waiting = self._waiting.pop(send.message.id, None)
        if waiting is None:
            return Outcome()
        error = f"node {send.node} is not connected to this daemon ({reason})"
        return Outcome([ToClient(waiting.client, _error(waiting.request_id, error, "unreachable", now))])

    # --- time ----------------------------------------------------------------------

    def on_stall(self, gap: float, now: Instant) -> Outcome:
        """The daemon itself did not run for `gap` seconds (SIGSTOP, a frozen VM, swap):
        its own silence is not the nodes' fault. Every live node gets a full
        heartbeat_timeout from now before it can be declared lost."""
        rearmed = self.nodes.rearm(now)
        return Outcome(changes=[NodeChange("daemon.stalled", "*", {
            "gap_s": round(gap, 3), "nodes_rearmed": rearmed,
            "action": f"no node is declared lost for the daemon's own pause; each has {self.config.heartbeat_timeout:g}s "
                      "from now to be heard from",
        })])

    def forget(self, node: str) -> bool:
        self._bind_route(node, None)
        self._event_ids.pop(node, None)
        self.status_rows.forget(node)
        return self.nodes.forget(node)

    def tick(self, now: Instant, backlog_since: float | None = None) -> Outcome:
        """Deadlines due at `now`. `backlog_since`: while the daemon's own agent queue holds
        unread frames, the monotonic time it was last empty (see `NodeTable.expire`)."""
        out = Outcome(changes=self.nodes.expire(now, backlog_since))
        nodes = self.nodes.by_name()
        for change in list(out.changes):
            if change.event == "node.lost":
                out.extend(self._jobs_outcome(self.jobs.on_node_lost(change.node, now), now))
        if self.jobs.live():
            if self.policies is not None:
                # Counted again only when a node's placement could have changed (or a
                # policy did): counting walks every chip of every node, and this runs
                # every turn of the daemon's loop.
                key = (self.nodes.placement_version,
                       tuple((name, id(loaded.policy)) for name, loaded in self.policies.by_name.items()))
                if key != self._pool_health_key:
                    health: dict[str, int] = {}
                    for loaded in self.policies.by_name.values():
                        health.update(self.jobs.pool_health(nodes, loaded.policy))
                    self.jobs.set_pool_health(health)
                    self._pool_health_key = key
            out.extend(self._jobs_outcome(self.jobs.tick(now, nodes), now))
        for command_id, waiting in list(self._waiting.items()):
            if now.mono >= waiting.deadline:
                del self._waiting[command_id]
                error = (
                    f"node {waiting.node} did not answer {waiting.verb!r} within "
                    f"{self.config.command_timeout:g}s"
                )
                out.sends.append(ToClient(waiting.client, _error(waiting.request_id, error, "timeout", now)))
        return out

    def next_deadline(self) -> float | None:
        deadlines = [w.deadline for w in self._waiting.values()]
        job_deadline = self.jobs.next_deadline()
        if job_deadline is not None:
            deadlines.append(job_deadline)
        node_deadline = self.nodes.next_deadline()
        if node_deadline is not None:
            deadlines.append(node_deadline)
        return min(deadlines, default=None)


def _error(ref: str, error: str, code: str, now: Instant) -> CtlReply:
    return CtlReply(id=new_id(), ts=now.wall, ref=ref, ok=False, error=error, code=code)


def _running(ranks: Any) -> list[tuple[str, int, int, int | None, float | None]]:
    return [(r.job, r.attempt, r.rank, r.step, r.loss) for r in ranks]
