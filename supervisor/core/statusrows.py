"""A node's row of `status` as the bytes the reply carries, kept per node and encoded
again only in the parts that changed.

A page of 1,000 eight-chip nodes was ~10 ms of the daemon's loop on a busy machine, ten
pages for a `status` of 10,000 nodes, each a turn that heartbeats waited behind
(bench/scale.py): every node was made into a `StatusNode`, encoded once to measure the
page and again in the reply, and its health worked out over its chips. Yet between two
requests most of a row is unchanged: only the last heartbeat time moves with every
heartbeat, and its age with every request. So a row is three pieces: what changes with
the node's registration, state or chip health (`_Head`), the two times made anew for
each request (`_Seen`), and the chips, host, running ranks and handler failures
(`_Tail`), kept while the node's record holds the very same objects (a heartbeat whose
chips are byte for byte the last ones keeps the decoded tuple: `HeartbeatDecoder`). The
bytes are exactly what msgspec writes for the `StatusNode` (tests say so).
"""

from __future__ import annotations

from typing import Any

import msgspec

from supervisor.core.nodes import NodeRecord
from supervisor.shared.protocol import ChipStatus, HostStatus, RunningRank
from supervisor.shared.statusview import StatusNode
from supervisor.shared.vocab import Accelerator, Health, NodeState


class _Head(msgspec.Struct, gc=False):
    node: str
    state: NodeState
    state_since: float
    health: Health
    accelerator: Accelerator
    hostname: str
    agent_version: str
    agent_pid: int
    registered_at: float


class _Seen(msgspec.Struct, gc=False):
    last_heartbeat: float
    last_heartbeat_age_s: float


class _Tail(msgspec.Struct, gc=False):
    handler_failures: int
    chips: tuple[ChipStatus, ...]
    host: HostStatus | None
    running: tuple[RunningRank, ...]


_FIELDS = _Head.__struct_fields__ + _Seen.__struct_fields__ + _Tail.__struct_fields__
assert _FIELDS == StatusNode.__struct_fields__, "the pieces of a row are a StatusNode's fields, in order"
#: Each piece is a msgpack map of under 16 fields: one byte of header (fixmap), left off
#: when the pieces are joined under the row's own.
_ROW_HEADER = bytes([0x80 | len(_FIELDS)])
assert len(_FIELDS) < 16

_encode = msgspec.msgpack.Encoder().encode


class StatusRows:
    """node -> its row's kept pieces, and what they were made from."""

    def __init__(self) -> None:
        self._head: dict[str, tuple[NodeRecord, NodeState, float, tuple[ChipStatus, ...], bytes]] = {}
        self._tail: dict[str, tuple[Any, Any, Any, int, bytes]] = {}

    def row(self, record: NodeRecord, age: float) -> bytes:
        """The node's `StatusNode` as msgpack, `age` its last_heartbeat_age_s."""
        name = record.node
        head = self._head.get(name)
        if head is None or head[0] is not record or head[1] is not record.state or head[2] != record.state_since \
                or head[3] is not record.chips:
            head = (record, record.state, record.state_since, record.chips, _encode(_Head(
                node=name, state=record.state, state_since=record.state_since, health=record.health,
                accelerator=record.accelerator, hostname=record.hostname, agent_version=record.agent_version,
                agent_pid=record.pid, registered_at=record.registered_at))[1:])
            self._head[name] = head
        tail = self._tail.get(name)
        if tail is None or tail[0] is not record.chips or tail[1] is not record.host \
                or tail[2] is not record.running or tail[3] != record.handler_failures:
            tail = (record.chips, record.host, record.running, record.handler_failures, _encode(_Tail(
                handler_failures=record.handler_failures, chips=record.chips, host=record.host,
                running=record.running))[1:])
            self._tail[name] = tail
        seen = _encode(_Seen(last_heartbeat=record.last_seen, last_heartbeat_age_s=age))
        return b"".join((_ROW_HEADER, head[4], seen[1:], tail[4]))

    def forget(self, node: str) -> None:
        self._head.pop(node, None)
        self._tail.pop(node, None)
