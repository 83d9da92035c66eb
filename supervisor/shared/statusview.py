"""The `status` reply's typed parts: built by the daemon, validated by the CLI.

A status page of 500 eight-chip nodes holds ~100,000 items. Read as free-form maps the
CLI decoded them and then walked every item in Python to refuse what is not JSON-safe
(most of `status --json`'s time at 5,000 nodes). As these structs the page is decoded and
validated in one pass by msgspec, with the same bounds the agents' messages have, and the
daemon puts the structs it keeps into the reply as they are instead of converting each
chip to a dict. Within one protocol version a new field is added with a default (an
older CLI ignores it).
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from supervisor.shared.protocol import (
    MAX_CHIPS,
    MAX_REPLY_BYTES,
    ChipStatus,
    Count,
    HostStatus,
    MsgId,
    NodeId,
    RunningRank,
    ShortText,
    Stamp,
    check_reply_freeform,
    decode_as,
)
from supervisor.shared.vocab import Accelerator, Health, NodeState

#: A process id as a node record keeps it: 0 when no agent has said.
_RecordedPid = Annotated[int, msgspec.Meta(ge=0, lt=1 << 31)]


class StatusNode(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One node of `status` (README.md, "status --json"). Untracked by the cycle
    collector for the reason the heartbeat's parts are (protocol.py)."""

    node: NodeId
    state: NodeState
    state_since: Stamp
    health: Health
    accelerator: Accelerator
    hostname: ShortText
    agent_version: ShortText
    agent_pid: _RecordedPid
    registered_at: Stamp
    last_heartbeat: Stamp
    last_heartbeat_age_s: Stamp
    handler_failures: Count
    chips: Annotated[tuple[ChipStatus, ...], msgspec.Meta(max_length=MAX_CHIPS)]
    host: HostStatus | None
    running: Annotated[tuple[RunningRank, ...], msgspec.Meta(max_length=4096)]


class StatusPageInfo(msgspec.Struct, frozen=True, kw_only=True):
    """Where a page lies in the view: `next_offset` is None on the last page."""

    offset: Count
    nodes_in_view: Count
    hidden_gone: Count
    next_offset: Count | None


class StatusPage(msgspec.Struct, kw_only=True):
    """One `status` reply's result. `daemon`, `summary` and `jobs` are small and
    free-form (checked as any reply is, `check_reply_freeform`); the nodes, nearly all
    of a page, are typed."""

    schema: int
    daemon: dict[str, Any]
    summary: dict[str, Any]
    nodes: list[StatusNode]
    page: StatusPageInfo
    jobs: list[dict[str, Any]]


class StatusReply(msgspec.Struct, tag_field="type", tag="ctl_reply", kw_only=True):
    """A `CtlReply` whose result, when ok, is a `StatusPage`."""

    id: MsgId
    ts: Stamp
    v: int
    ref: MsgId
    ok: bool
    result: StatusPage | None = None
    error: str | None = None
    code: str | None = None


_status_reply = msgspec.msgpack.Decoder(StatusReply)


def decode_status_reply(frame: bytes | memoryview) -> StatusReply:
    """A reply to `status`, validated as `protocol.decode` validates any reply (the same
    refusals, as ProtocolError), in one pass for the nodes."""
    reply: StatusReply = decode_as(frame, _status_reply, MAX_REPLY_BYTES)
    if reply.result is not None:
        check_reply_freeform(reply.result.daemon, "$.result.daemon")
        check_reply_freeform(reply.result.summary, "$.result.summary")
        check_reply_freeform(reply.result.jobs, "$.result.jobs")
    return reply
