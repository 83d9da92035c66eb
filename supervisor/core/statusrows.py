"""A node's row of `status` as the bytes the reply carries, the part that changes seldom
kept per node.

A page of 1,000 eight-chip nodes was ~5 ms of the daemon's loop (10-20 ms on the loaded
2-core machine), ten pages for a `status` of 10,000 nodes, each a turn that heartbeats
waited behind (bench/scale.py): every node was made into a `StatusNode`, encoded once to
measure the page and again in the reply, and its health worked out over its chips. Now a
row is encoded once, in two pieces: what changes only with the node's registration,
state or chip health (`_Head`: kept, made again when the record, its state or the node
table's `placement_version` moves, which every change of state or chip health moves),
and the rest (`_Rest`: the heartbeat times, readings and ranks, which move with nearly
every heartbeat). Keeping the rest too made a repeated `status` faster still, but its
readings change every probe interval (5 s), so a `status` asked less often than that
found nothing to reuse, and the kept bytes were ~45 MB at 10,000 nodes. The bytes are
exactly what msgspec writes for the `StatusNode` (tests say so).
"""

from __future__ import annotations

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


class _Rest(msgspec.Struct, gc=False):
    last_heartbeat: float
    last_heartbeat_age_s: float
    handler_failures: int
    chips: tuple[ChipStatus, ...]
    host: HostStatus | None
    running: tuple[RunningRank, ...]


_FIELDS = _Head.__struct_fields__ + _Rest.__struct_fields__
assert _FIELDS == StatusNode.__struct_fields__, "the pieces of a row are a StatusNode's fields, in order"
#: Each piece is a msgpack map of under 16 fields: one byte of header (fixmap), left off
#: when the pieces are joined under the row's own.
_ROW_HEADER = bytes([0x80 | len(_FIELDS)])
assert len(_FIELDS) < 16

_encode = msgspec.msgpack.Encoder().encode


class StatusRows:
    """node -> its row's kept head, and what it was made from."""

    def __init__(self) -> None:
        self._head: dict[str, tuple[NodeRecord, NodeState, float, int, bytes]] = {}

    def row(self, record: NodeRecord, age: float, version: int) -> bytes:
        """The node's `StatusNode` as msgpack: `age` its last_heartbeat_age_s, `version`
        the node table's placement_version."""
        head = self._head.get(record.node)
        if head is None or head[0] is not record or head[1] is not record.state or head[2] != record.state_since \
                or head[3] != version:
            head = (record, record.state, record.state_since, version, _encode(_Head(
                node=record.node, state=record.state, state_since=record.state_since, health=record.health,
                accelerator=record.accelerator, hostname=record.hostname, agent_version=record.agent_version,
                agent_pid=record.pid, registered_at=record.registered_at))[1:])
            self._head[record.node] = head
        rest = _encode(_Rest(last_heartbeat=record.last_seen, last_heartbeat_age_s=age,
                             handler_failures=record.handler_failures, chips=record.chips, host=record.host,
                             running=record.running))
        return b"".join((_ROW_HEADER, head[4], rest[1:]))

    def forget(self, node: str) -> None:
        self._head.pop(node, None)
