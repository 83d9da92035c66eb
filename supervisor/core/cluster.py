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
from supervisor.core.nodes import NodeChange, NodeTable, Unregistered
from supervisor.policy.directory import PolicyDirectory
from supervisor.shared.clock import Instant
from supervisor.shared.protocol import (
    Ack,
    AnyMessage,
    ChipStatus,
    Command,
    CtlReply,
    CtlRequest,
    Event,
    Heartbeat,
    Message,
    ProtocolError,
    Register,
    Result,
    new_id,
)


@dataclass(frozen=True)
class ToNode:
    node: str
    message: Message


@dataclass(frozen=True)
class ToClient:
    client: bytes
    message: CtlReply


@dataclass
class Outcome:
    sends: list[ToNode | ToClient] = field(default_factory=list)
    changes: list[NodeChange] = field(default_factory=list)

    def extend(self, other: "Outcome") -> None:
        self.sends.extend(other.sends)
        self.changes.extend(other.changes)


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


@dataclass(frozen=True)
class ClusterConfig:
    heartbeat_timeout: float = 15.0
    heartbeat_interval: float = 2.0
    command_timeout: float = 10.0


class Cluster:
    def __init__(self, config: ClusterConfig, instance: str, started: Instant) -> None:
        self.config = config
        self.instance = instance
        self.started = started
        self.nodes = NodeTable(config.heartbeat_timeout)
        self._waiting: dict[str, _Waiting] = {}
        self._event_ids: dict[str, _SeenIds] = {}
        #: Frames that were not valid messages, counted by the daemon's transport.
        self.bad_frames = BadFrameCounter()
        #: The policy directory, when the daemon was given one (read by control verbs).
        self.policies: PolicyDirectory | None = None

    @property
    def heartbeat_timeout(self) -> float:
        return self.config.heartbeat_timeout

    @property
    def heartbeat_interval(self) -> float:
        return self.config.heartbeat_interval

    # --- agents --------------------------------------------------------------------

    def on_agent_message(self, msg: AnyMessage, now: Instant) -> Outcome:
        if isinstance(msg, Heartbeat):
            return self._on_heartbeat(msg, now)
        if isinstance(msg, Register):
            return self._on_register(msg, now)
        if isinstance(msg, Event):
            return self._on_event(msg, now)
        if isinstance(msg, Result):
            return self._on_result(msg, now)
        raise ProtocolError("unexpected", f"{type(msg).__name__} on the agent socket")

    def _ack(self, node: str, ref: str, now: Instant, **kw: Any) -> ToNode:
        return ToNode(node, Ack(id=new_id(), ts=now.wall, ref=ref, **kw))

    def _on_register(self, msg: Register, now: Instant) -> Outcome:
        changes = self.nodes.register(msg, now)
        detail = {
            "daemon_instance": self.instance,
            "heartbeat_interval": self.config.heartbeat_interval,
            "heartbeat_timeout": self.config.heartbeat_timeout,
        }
        return Outcome([self._ack(msg.node, msg.id, now, detail=detail)], changes)

    def _on_heartbeat(self, msg: Heartbeat, now: Instant) -> Outcome:
        try:
            changes = self.nodes.heartbeat(msg, now)
        except Unregistered:
            return Outcome([self._ack(msg.node, msg.id, now, ok=False, error="unregistered")])
        return Outcome([self._ack(msg.node, msg.id, now)], changes)

    def _on_event(self, msg: Event, now: Instant) -> Outcome:
        if not self.nodes.is_registered(msg.node):
            # Keep it on the agent's side until it has registered; it will resend.
            return Outcome([self._ack(msg.node, msg.id, now, ok=False, error="unregistered")])
        ack = self._ack(msg.node, msg.id, now)
        if not self._event_ids.setdefault(msg.node, _SeenIds()).add(msg.id):
            return Outcome([ack])
        if msg.name == "chip.health_changed" and "status" in msg.fields:
            try:
                self.nodes.update_chip(msg.node, msgspec.convert(msg.fields["status"], ChipStatus))
            except msgspec.ValidationError:
                pass  # the next heartbeat carries the chip anyway
        fields = {k: v for k, v in msg.fields.items() if k != "status"}
        fields.update(
            chip=msg.chip,
            signal=msg.signal.value if msg.signal else None,
            job=msg.job,
            rank=msg.rank,
            evidence=msg.evidence,
            observed_at=msg.observed_at,
            # Wall clocks of two machines: good to NTP accuracy, which is what we have.
            detection_latency_s=round(max(0.0, now.wall - msg.observed_at), 3),
            accelerator=self.nodes.get(msg.node).accelerator.value,  # type: ignore[union-attr]
            event_id=msg.id,
        )
        fields = {k: v for k, v in fields.items() if v is not None}
        return Outcome([ack], [NodeChange(msg.name, msg.node, fields)])

    def _on_result(self, msg: Result, now: Instant) -> Outcome:
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
                error=f"node {msg.node}: {msg.error}",
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
            command = Command(id=new_id(), ts=now.wall, kind=answer.kind, args=answer.args)
            self._waiting[command.id] = _Waiting(
                client, req.id, req.verb, answer.node, now.mono + self.config.command_timeout
            )
            return Outcome([ToNode(answer.node, command)])
        return Outcome([ToClient(client, CtlReply(id=new_id(), ts=now.wall, ref=req.id, ok=True, result=answer))])

    def on_send_failed(self, send: ToNode, reason: str, now: Instant) -> Outcome:
        """The transport could not hand a message to a node (not connected, queue full)."""
        waiting = self._waiting.pop(send.message.id, None)
        if waiting is None:
            return Outcome()
        error = f"node {send.node} is not connected to this daemon ({reason})"
        return Outcome([ToClient(waiting.client, _error(waiting.request_id, error, "unreachable", now))])

    # --- time ----------------------------------------------------------------------

    def tick(self, now: Instant) -> Outcome:
        out = Outcome(changes=self.nodes.expire(now))
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
        node_deadline = self.nodes.next_deadline()
        if node_deadline is not None:
            deadlines.append(node_deadline)
        return min(deadlines, default=None)


def _error(ref: str, error: str, code: str, now: Instant) -> CtlReply:
    return CtlReply(id=new_id(), ts=now.wall, ref=ref, ok=False, error=error, code=code)
