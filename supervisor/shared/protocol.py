"""The wire protocol between the daemon, its agents and the CLI.

Every message is one ZeroMQ frame holding one msgpack map with `v` (protocol version),
`type`, `id` and `ts` (sender's wall clock, seconds since the epoch). `decode` is the one
way in: it either returns a fully validated message or raises `ProtocolError` with a short
machine-readable `reason` (`oversize`, `malformed`, `unknown_version`, `invalid`). Callers
drop and count such frames; nothing a peer sends can crash the receiver.

Within one version, unknown extra fields are ignored so that a newer sender can add
optional fields without breaking older receivers; anything that changes meaning bumps `v`.
"""

from __future__ import annotations

import enum
import os
from typing import Annotated, Any, Union

import msgspec

from supervisor.shared.vocab import Accelerator, Health, Signal

PROTOCOL_VERSION = 1
#: Where agents find the daemon, and the CLI its control endpoint, unless told otherwise.
DEFAULT_AGENT_ENDPOINT = "tcp://127.0.0.1:7755"
DEFAULT_CTL_ENDPOINT = "tcp://127.0.0.1:7756"
#: Frames above this are dropped unread. A heartbeat of a 16-chip node is ~1.5 KiB.
MAX_FRAME_BYTES = 256 * 1024

# \Z, not $: msgspec matches with re.search, and $ would accept a trailing newline.
NODE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}\Z"
NodeId = Annotated[str, msgspec.Meta(pattern=NODE_ID_PATTERN)]
MsgId = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Evidence = Annotated[str, msgspec.Meta(max_length=16 * 1024)]
ChipIndex = Annotated[int, msgspec.Meta(ge=0, lt=4096)]


class ProtocolError(ValueError):
    """A frame that is not a valid message of a known version."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class CommandKind(str, enum.Enum):
    """What the daemon can ask an agent to do. Commands carry ids and are idempotent."""

    INJECT = "inject"
    LAUNCH = "launch"
    STOP = "stop"
    CHECKPOINT = "checkpoint"
    DRAIN = "drain"


# --- payload pieces -------------------------------------------------------------------


class ChipStatus(msgspec.Struct, frozen=True, kw_only=True):
    """One chip as a probe last read it. `reason` says why health is not `ok`
    (an error code, "npu-smi timed out", ...)."""

    index: ChipIndex
    health: Health
    temperature_c: float | None = None
    memory_used_mb: int | None = None
    memory_total_mb: int | None = None
    ecc_uncorrectable: int = 0
    ecc_correctable: int = 0
    error_codes: tuple[str, ...] = ()
    reason: str | None = None
    # Readings an operator expects beside health (None: the probe cannot read it).
    # `memory_*` above is the memory training uses (HBM when the card has it); cards with
    # both report the on-chip HBM and the card's DDR separately here.
    power_w: float | None = None
    utilisation_pct: float | None = None  # AI Core % on Ascend, GPU % on Nvidia
    hbm_used_mb: int | None = None
    hbm_total_mb: int | None = None
    ddr_used_mb: int | None = None
    ddr_total_mb: int | None = None
    link: str | None = None  # the chip's own network link (Ascend RoCE via hccn_tool): "up" / "down"


class HostStatus(msgspec.Struct, frozen=True, kw_only=True):
    """The node's host resources, read with psutil."""

    health: Health
    mem_used_pct: float | None = None
    disk_free_bytes: int | None = None
    disk_total_bytes: int | None = None
    load1: float | None = None
    reason: str | None = None


class RunningRank(msgspec.Struct, frozen=True, kw_only=True):
    """A training rank an agent is running, reported so a restarted daemon can reconcile."""

    job: str
    rank: int
    pid: int
    step: int | None = None


# --- messages -------------------------------------------------------------------------


class Message(msgspec.Struct, tag_field="type", kw_only=True):
    id: MsgId
    ts: float
    v: int = PROTOCOL_VERSION


class Register(Message, tag="register"):
    """Agent → daemon, on start and whenever the daemon does not know it (after a daemon
    restart). `agent_instance` changes when the agent process restarts."""

    node: NodeId
    accelerator: Accelerator
    chips: tuple[ChipStatus, ...]
    host: HostStatus
    agent_version: str
    agent_instance: str
    hostname: str
    pid: int
    running: tuple[RunningRank, ...] = ()


class Heartbeat(Message, tag="heartbeat"):
    """Agent → daemon, every heartbeat interval, with the current health summary."""

    node: NodeId
    seq: int
    agent_instance: str
    chips: tuple[ChipStatus, ...]
    host: HostStatus
    running: tuple[RunningRank, ...] = ()


class Event(Message, tag="event"):
    """Agent → daemon: something changed or went wrong on the node. `name` is the stable
    log event name (`chip.health_changed`); `signal` is the fault taxonomy entry, if any.
    Events are resent until acknowledged; the daemon ignores duplicates by `id`."""

    node: NodeId
    name: str
    observed_at: float
    signal: Signal | None = None
    chip: ChipIndex | None = None
    job: str | None = None
    rank: int | None = None
    evidence: Evidence = ""
    fields: dict[str, Any] = {}


class Command(Message, tag="command"):
    """Daemon → agent. The agent answers with a `Result` whose `ref` is this id, and
    answers a repeated id with the first result instead of acting twice."""

    kind: CommandKind
    args: dict[str, Any] = {}


class Ack(Message, tag="ack"):
    """Daemon → agent: receipt of a register / heartbeat / event (`ref`). `ok=False` with
    `error="unregistered"` asks the agent to register again."""

    ref: MsgId
    ok: bool = True
    error: str | None = None
    detail: dict[str, Any] = {}


class Result(Message, tag="result"):
    """Agent → daemon: the outcome of a command (`ref`)."""

    node: NodeId
    ref: MsgId
    ok: bool
    error: str | None = None
    detail: dict[str, Any] = {}


class CtlRequest(Message, tag="ctl"):
    """CLI → daemon control endpoint: one verb (`status`, `inject`, ...) with arguments."""

    verb: str
    args: dict[str, Any] = {}


class CtlReply(Message, tag="ctl_reply"):
    """Daemon → CLI: `ok` with a `result`, or `error` (human sentence) and `code`
    (stable machine word: `bad_request`, `unknown_node`, `timeout`, `busy`, ...)."""

    ref: MsgId
    ok: bool
    result: Any = None
    error: str | None = None
    code: str | None = None


AnyMessage = Union[Register, Heartbeat, Event, Command, Ack, Result, CtlRequest, CtlReply]


class _Envelope(msgspec.Struct):
    v: int
    type: str


_encoder = msgspec.msgpack.Encoder()
_envelope_decoder = msgspec.msgpack.Decoder(_Envelope)
_message_decoder = msgspec.msgpack.Decoder(AnyMessage)


def _clip(text: str, limit: int = 200) -> str:
    """Keep what a hostile peer can put into our logs short."""
    return text if len(text) <= limit else text[:limit] + "…"


def new_id() -> str:
    """A message / command / event id: 64 random bits, hex."""
    return os.urandom(8).hex()


def encode(message: Message) -> bytes:
    return _encoder.encode(message)


#: A status reply of a large cluster is bigger than any agent message may be.
MAX_REPLY_BYTES = 4 * 1024 * 1024


def decode(frame: bytes | memoryview, limit: int = MAX_FRAME_BYTES) -> AnyMessage:
    """Decode and validate one frame, or raise ProtocolError saying why not."""
    if len(frame) > limit:
        raise ProtocolError("oversize", f"{len(frame)} bytes, limit {limit}")
    try:
        envelope = _envelope_decoder.decode(frame)
    except msgspec.ValidationError as exc:
        raise ProtocolError("malformed", f"no valid envelope ({_clip(str(exc))})") from None
    except Exception as exc:  # msgspec.DecodeError, and anything else garbage provokes
        raise ProtocolError("malformed", f"not msgpack ({_clip(str(exc))})") from None
    if envelope.v != PROTOCOL_VERSION:
        raise ProtocolError(
            "unknown_version", f"version {envelope.v}, this side speaks {PROTOCOL_VERSION}"
        )
    try:
        return _message_decoder.decode(frame)
    except msgspec.ValidationError as exc:
        raise ProtocolError("invalid", f"{_clip(envelope.type, 40)!r} message: {_clip(str(exc))}") from None
    except Exception as exc:
        raise ProtocolError("malformed", f"{_clip(envelope.type, 40)!r}: {_clip(str(exc))}") from None
