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

import math
import os
from math import isfinite
from typing import Annotated, Any, Literal, Union

import msgspec

from supervisor.shared.vocab import Accelerator, Fault, Health, Signal

PROTOCOL_VERSION = 1
#: Frames above this are dropped unread. A heartbeat of a 16-chip node is ~1.5 KiB.
MAX_FRAME_BYTES = 256 * 1024

# \Z, not $: msgspec matches with re.search, and $ would accept a trailing newline.
NODE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}\Z"
NodeId = Annotated[str, msgspec.Meta(pattern=NODE_ID_PATTERN)]
#: Job names become file and directory names on every node: lower case, no path parts.
JOB_NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,62}\Z"
JobName = Annotated[str, msgspec.Meta(pattern=JOB_NAME_PATTERN)]
MsgId = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Evidence = Annotated[str, msgspec.Meta(max_length=16 * 1024)]
ShortText = Annotated[str, msgspec.Meta(max_length=256)]
#: Chips a node may have (and the highest chip index + 1).
MAX_CHIPS = 4096
ChipIndex = Annotated[int, msgspec.Meta(ge=0, lt=MAX_CHIPS)]
#: The most ranks one node runs for one job, whatever it has: a cpu node (no chips) is
#: bounded too, so a typo such as --nproc 100000 cannot fork-bomb a node.
MAX_RANKS_PER_NODE = 256
Rank = Annotated[int, msgspec.Meta(ge=0, lt=1 << 24)]
#: Process ids are positive; Linux caps them at 2**22.
Pid = Annotated[int, msgspec.Meta(gt=0, lt=1 << 31)]
Count = Annotated[int, msgspec.Meta(ge=0, lt=1 << 62)]
#: Unix times from peers: finite and after 2000-01-01, before 2100 (a NaN or inf from a
#: broken clock must never reach a sum, a histogram or the store).
WallTime = Annotated[float, msgspec.Meta(ge=946684800.0, le=4102444800.0)]
#: Times that may be zero in tests and minimal messages (`ts`): finite, not negative.
Stamp = Annotated[float, msgspec.Meta(ge=0.0, le=4102444800.0)]
Seconds = Annotated[float, msgspec.Meta(ge=0.0, le=7 * 86400.0)]
Reading = Annotated[float, msgspec.Meta(ge=-1e9, le=1e12)]


class ProtocolError(ValueError):
    """A frame that is not a valid message of a known version."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


# --- payload pieces -------------------------------------------------------------------

# gc=False on the structs a heartbeat is made of (and on the daemon's NodeRecord): they
# hold only scalars, strings, enums and tuples of such, so they can never be part of a
# reference cycle and the cycle collector need not track them. A daemon decodes thousands
# of them a second and keeps 10,000 nodes' worth; tracked, the collector's passes over
# them took about a third of the loop (bench/scale.py, 5,000 agents: 39 -> 22 µs of CPU
# per heartbeat in process). Do not give these a field that can hold a container of
# arbitrary objects (a dict, a list).


class ChipStatus(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One chip as a probe last read it. `reason` says why health is not `ok`
    (an error code, "npu-smi timed out", ...)."""

    index: ChipIndex
    health: Health
    temperature_c: Reading | None = None
    memory_used_mb: Count | None = None
    memory_total_mb: Count | None = None
    ecc_uncorrectable: Count = 0
    ecc_correctable: Count = 0
    error_codes: Annotated[tuple[ShortText, ...], msgspec.Meta(max_length=64)] = ()
    reason: Annotated[str, msgspec.Meta(max_length=2048)] | None = None
    # Readings an operator expects beside health (None: the probe cannot read it).
    # `memory_*` above is the memory training uses (HBM when the card has it); cards with
    # both report the on-chip HBM and the card's DDR separately here.
    power_w: Reading | None = None
    utilisation_pct: Reading | None = None  # AI Core % on Ascend, GPU % on Nvidia
    hbm_used_mb: Count | None = None
    hbm_total_mb: Count | None = None
    ddr_used_mb: Count | None = None
    ddr_total_mb: Count | None = None
    link: ShortText | None = None  # the chip's own network link (Ascend RoCE via hccn_tool): "up" / "down"


class HostStatus(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The node's host resources, read with psutil."""

    health: Health
    mem_used_pct: Reading | None = None
    disk_free_bytes: Count | None = None
    disk_total_bytes: Count | None = None
    load1: Reading | None = None
    reason: Annotated[str, msgspec.Meta(max_length=2048)] | None = None


class RunningRank(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A training rank an agent is running, reported so a restarted daemon can reconcile."""

    job: JobName
    rank: Rank
    pid: Pid
    step: Count | None = None
    attempt: Annotated[int, msgspec.Meta(ge=0, lt=1 << 31)] = 0  # 0: not started by the daemon (launch)
    loss: Reading | None = None


class HangRank(msgspec.Struct, frozen=True, kw_only=True):
    """One rank of a job, as its agent saw it when the job stopped stepping: the
    `ranks` of a `hang.observed` event. The daemon joins the nodes' lists and names the
    culprit (`supervisor.core.hangs`). `where`: its main thread is waiting in a
    collective, is somewhere else, or the stack cannot say (or there is none)."""

    rank: Rank
    pid: Pid | None = None
    step: Count | None = None
    phase: Annotated[str, msgspec.Meta(max_length=32)] = "train"
    stalled_for_s: Seconds | None = None
    where: Literal["collective", "elsewhere", "unknown"] = "unknown"
    summary: Annotated[str, msgspec.Meta(max_length=1024)] = ""
    stack: Evidence = ""
    cpu_s: Seconds | None = None  # CPU time it used over the quiet checks (no heartbeats)


# --- messages -------------------------------------------------------------------------


class Message(msgspec.Struct, tag_field="type", kw_only=True):
    id: MsgId
    ts: Stamp
    v: int = PROTOCOL_VERSION


class Register(Message, tag="register"):
    """Agent → daemon, on start and whenever the daemon does not know it (after a daemon
    restart). `agent_instance` changes when the agent process restarts."""

    node: NodeId
    accelerator: Accelerator
    chips: Annotated[tuple[ChipStatus, ...], msgspec.Meta(max_length=MAX_CHIPS)]
    host: HostStatus
    agent_version: ShortText
    agent_instance: ShortText
    hostname: ShortText
    pid: Pid
    running: Annotated[tuple[RunningRank, ...], msgspec.Meta(max_length=4096)] = ()
    #: Where this node's ranks can be reached by the others (MASTER_ADDR when it hosts
    #: rank 0); the hostname when the agent was not told.
    address: ShortText | None = None


class Heartbeat(Message, tag="heartbeat", gc=False):
    """Agent → daemon, every heartbeat interval, with the current health summary.
    `handler_failures` counts the agent's own loop steps that raised since it started
    (each is logged there as `agent.handler_failed`): a bug on a node shows in metrics."""

    node: NodeId
    seq: Count
    agent_instance: ShortText
    chips: Annotated[tuple[ChipStatus, ...], msgspec.Meta(max_length=MAX_CHIPS)]
    host: HostStatus
    running: Annotated[tuple[RunningRank, ...], msgspec.Meta(max_length=4096)] = ()
    handler_failures: Count = 0


#: The events an agent may report. Anything else (a `node.lost` for another node, say)
#: is refused at decode: a node speaks about itself, in its own words.
AGENT_EVENTS = frozenset(
    {"chip.health_changed", "host.health_changed", "rank.started", "rank.exited", "rank.checkpoint_saved",
     "hang.observed"}
    | {f"signal.{s.value}" for s in Signal}
)


class Event(Message, tag="event"):
    """Agent → daemon: something changed or went wrong on the node. `name` is the stable
    log event name (`chip.health_changed`, one of AGENT_EVENTS); `signal` is the fault
    taxonomy entry, if any. `fields` is JSON-safe (checked at decode) and can never
    override the record's own node, job, rank or event names (the daemon sees to that).
    Events are resent until acknowledged; the daemon ignores duplicates by `id`."""

    node: NodeId
    name: Annotated[str, msgspec.Meta(max_length=64)]
    observed_at: WallTime
    signal: Signal | None = None
    chip: ChipIndex | None = None
    job: JobName | None = None
    rank: Rank | None = None
    evidence: Evidence = ""
    fields: dict[str, Any] = {}
    #: The job's attempt the rank belongs to (None: not a job's rank, or a launch).
    attempt: Annotated[int, msgspec.Meta(ge=0, lt=1 << 31)] | None = None


class Goodbye(Message, tag="goodbye"):
    """Agent → daemon: this agent is stopping on purpose (SIGTERM, `systemctl stop`). The
    node is then `left`, not `lost`: no node_lost signal, nothing to fail over."""

    node: NodeId
    agent_instance: ShortText
    reason: ShortText = "agent stopped"


# --- commands (daemon → agent) ----------------------------------------------------------

#: An absolute or relative path as given by an operator: no NUL, bounded.
PathText = Annotated[str, msgspec.Meta(min_length=1, max_length=4096, pattern=r"^[^\x00]+\Z")]
EnvName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}\Z")]
EnvValue = Annotated[str, msgspec.Meta(max_length=32 * 1024, pattern=r"^[^\x00]*\Z")]
Arg = Annotated[str, msgspec.Meta(max_length=64 * 1024, pattern=r"^[^\x00]*\Z")]


class CommandArgs(msgspec.Struct, tag_field="kind", forbid_unknown_fields=True, frozen=True, kw_only=True):
    """What a command asks for; one struct per kind, validated when the frame is decoded."""

    @property
    def kind(self) -> str:
        return str(self.__struct_config__.tag)


class InjectArgs(CommandArgs, tag="inject"):
    """Act out `fault` on a simulated chip (sim nodes only)."""

    fault: Fault
    chip: ChipIndex = 0
    count: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 1


Attempt = Annotated[int, msgspec.Meta(ge=1, lt=1 << 31)]


class RankAssignment(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One rank a node is to run: its global and local rank and the chips it may see."""

    rank: Rank
    local_rank: Annotated[int, msgspec.Meta(ge=0, lt=MAX_RANKS_PER_NODE)]
    chips: Annotated[tuple[ChipIndex, ...], msgspec.Meta(max_length=64)] = ()


class StartRanksArgs(CommandArgs, tag="start_ranks"):
    """Start this node's ranks of one attempt of a job. Idempotent by (job, attempt): a
    repeated command never starts a rank twice, it answers with what runs. Ranks of an
    older attempt of the job still running on the node are killed first, never adopted.
    `master_port` 0 means this node hosts rank 0: pick a port free here and report it
    (Result detail `master_port`); the daemon then starts the other nodes with it."""

    job: JobName
    attempt: Attempt
    argv: Annotated[tuple[Arg, ...], msgspec.Meta(min_length=1, max_length=4096)]
    ranks: Annotated[tuple[RankAssignment, ...], msgspec.Meta(min_length=1, max_length=MAX_RANKS_PER_NODE)]
    world_size: Annotated[int, msgspec.Meta(ge=1, lt=1 << 24)]
    local_world_size: Annotated[int, msgspec.Meta(ge=1, le=MAX_RANKS_PER_NODE)]
    master_addr: ShortText
    ckpt_dir: PathText
    master_port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 0
    cwd: PathText | None = None
    env: Annotated[dict[EnvName, EnvValue], msgspec.Meta(max_length=1024)] = {}
    #: The job's policy's detect section, applied to these ranks (None: the agent's own).
    hang_timeout: Seconds | None = None
    checkpoint_hang_timeout: Seconds | None = None
    eval_hang_timeout: Seconds | None = None
    probe_interval: Seconds | None = None
    #: Keep a warm standby per rank for the job's next attempt (the job file's
    #: `warm_standby`; the script calls `agents.runtime.standby()`).
    standby: bool = False


class StopRanksArgs(CommandArgs, tag="stop_ranks"):
    """Stop a job's ranks on this node (of one attempt, or all): SIGTERM, which the
    runtime turns into a final checkpoint agreed by all ranks, then SIGKILL after
    `grace`. Answers at once; the exits arrive as `rank.exited` events."""

    job: JobName
    attempt: Attempt | None = None
    grace: Seconds = 30.0
    #: The job leaves this node (it ends, or fails over): its warm standbys go too.
    final: bool = False


class CheckpointArgs(CommandArgs, tag="checkpoint"):
    """Ask a job's ranks on this node for a checkpoint (SIGUSR1); the ranks agree on the
    step among themselves, so all of them save the same one (`rank.checkpoint_saved`)."""

    job: JobName
    attempt: Attempt


class KeepStandbysArgs(CommandArgs, tag="keep_standbys"):
    """Keep `count` warm standbys of a job on this node, which runs none of its ranks:
    the node a restart or a failover would move the job to (a job with `warm_standby`).
    The fields are those a `start_ranks` here would carry, so that its ranks take these
    standbys. `count` 0: this node is no longer one the job would move to; end them."""

    job: JobName
    argv: Annotated[tuple[Arg, ...], msgspec.Meta(min_length=1, max_length=4096)]
    count: Annotated[int, msgspec.Meta(ge=0, le=MAX_RANKS_PER_NODE)]
    cwd: PathText | None = None
    env: Annotated[dict[EnvName, EnvValue], msgspec.Meta(max_length=1024)] = {}
    ckpt_dir: PathText | None = None  # the job's: a standby prepares its load from there


AnyCommandArgs = Union[InjectArgs, StartRanksArgs, StopRanksArgs, CheckpointArgs, KeepStandbysArgs]


class Command(Message, tag="command"):
    """Daemon → agent. The agent answers with a `Result` whose `ref` is this id, and
    answers a repeated id with the first result instead of acting twice."""

    args: AnyCommandArgs

    @property
    def kind(self) -> str:
        return self.args.kind


class Ack(Message, tag="ack"):
    """Daemon → agent: receipt of a register / heartbeat / event (`ref`). `ok=False` with
    `error="unregistered"` asks the agent to register again; `error="not_authorised"`
    says its key may not speak for the node it claims (or was removed)."""

    ref: MsgId
    ok: bool = True
    error: ShortText | None = None
    detail: dict[str, Any] = {}


class Result(Message, tag="result"):
    """Agent → daemon: the outcome of a command (`ref`)."""

    node: NodeId
    ref: MsgId
    ok: bool
    error: Annotated[str, msgspec.Meta(max_length=4096)] | None = None
    detail: dict[str, Any] = {}


class CtlRequest(Message, tag="ctl"):
    """CLI → daemon control endpoint: one verb (`status`, `inject`, ...) with arguments."""

    verb: Annotated[str, msgspec.Meta(max_length=64)]
    args: dict[str, Any] = {}


class CtlReply(Message, tag="ctl_reply"):
    """Daemon → CLI: `ok` with a `result`, or `error` (human sentence) and `code`
    (stable machine word: `bad_request`, `unknown_node`, `timeout`, `busy`, ...)."""

    ref: MsgId
    ok: bool
    result: Any = None
    error: str | None = None
    code: str | None = None


AnyMessage = Union[Register, Heartbeat, Event, Goodbye, Command, Ack, Result, CtlRequest, CtlReply]


# --- free-form maps from peers ---------------------------------------------------------

#: Bounds on a free-form map (event fields, details, control arguments): deep or huge
#: structures, non-string keys and non-finite numbers are refused, so whatever is
#: accepted can be logged, stored as JSON and summed in metrics.
MAX_FREEFORM_DEPTH = 6
MAX_FREEFORM_ITEMS = 10_000
#: The daemon's answers to the CLI are deeper and bigger by nature (`status` lists jobs,
#: each with its decisions and what they counted; a page of 500 nodes with their chips);
#: the frame itself is bounded by MAX_REPLY_BYTES.
MAX_REPLY_DEPTH = 16


class _Refused(Exception):
    """A free-form value refused: why, and the path to it (innermost part first)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        self.path: list[str] = []


def _check_freeform(value: Any, where: str, depth: int = 0, budget: list[int] | None = None,
                    max_depth: int = MAX_FREEFORM_DEPTH) -> None:
    """Raise ValueError naming the first item of `value` that is not JSON-safe. The path
    to it is only built for a refusal: a status page has ~100,000 items, and formatting
    each one's path cost the CLI more than the page's transfer and decode together."""
    try:
        _walk(value, depth, budget if budget is not None else [MAX_FREEFORM_ITEMS], max_depth)
    except _Refused as exc:
        raise ValueError(f"{where}{''.join(reversed(exc.path))}: {exc.reason}") from None


_INT_LIMIT = 1 << 63


def _walk(value: Any, depth: int, budget: list[int], max_depth: int) -> None:
    budget[0] -= 1
    if budget[0] < 0:
        raise _Refused(f"more items than allowed ({MAX_FREEFORM_ITEMS:,} in a message, one per byte in a reply)")
    if depth > max_depth:
        raise _Refused(f"nested deeper than {max_depth}")
    if value is None or isinstance(value, (bool, str, int)):
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 1 << 63:
            raise _Refused("integer out of range")
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _Refused(f"{value!r} is not a finite number")
        return
    # An item that is plainly fine (a string, a bool, None, a finite float, an int in range,
    # told by its exact type: most of a status page's ~100,000) is counted here rather than
    # walked by a call of its own; anything else, or any doubt, goes through the walk above.
    # Same verdicts, in about half the time for the CLI reading a 10,000-node status.
    plain = depth < max_depth
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            kind = type(item)
            if plain and budget[0] > 0 and (kind is str or item is None or kind is bool or (
                    kind is float and isfinite(item)) or (kind is int and -_INT_LIMIT < item < _INT_LIMIT)):
                budget[0] -= 1
                continue
            try:
                _walk(item, depth + 1, budget, max_depth)
            except _Refused as exc:
                exc.path.append(f"[{i}]")
                raise
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if type(key) is not str and not isinstance(key, str):
                raise _Refused(f"key {_clip(repr(key), 40)} is not a string")
            kind = type(item)
            if plain and budget[0] > 0 and (kind is str or item is None or kind is bool or (
                    kind is float and isfinite(item)) or (kind is int and -_INT_LIMIT < item < _INT_LIMIT)):
                budget[0] -= 1
                continue
            try:
                _walk(item, depth + 1, budget, max_depth)
            except _Refused as exc:
                exc.path.append(f".{_clip(key, 40)}")
                raise
        return
    raise _Refused(f"{type(value).__name__} values are not allowed")


def _check(message: AnyMessage) -> None:
    """What msgspec's types cannot say: free-form maps are JSON-safe, event names known."""
    if isinstance(message, Event):
        if message.name not in AGENT_EVENTS:
            raise ValueError(f"event name {_clip(message.name, 64)!r} is not one an agent may report")
        _check_freeform(message.fields, "$.fields")
    elif isinstance(message, (Ack, Result)):
        _check_freeform(message.detail, "$.detail")
    elif isinstance(message, CtlRequest):
        _check_freeform(message.args, "$.args")
    elif isinstance(message, CtlReply):
        # A status page of 500 eight-chip nodes holds ~100,000 items: a reply is bounded
        # by its size (MAX_REPLY_BYTES; every item takes at least a byte), not by count.
        _check_freeform(message.result, "$.result", budget=[MAX_REPLY_BYTES], max_depth=MAX_REPLY_DEPTH)


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
    message = decode_as(frame, _message_decoder, limit)
    try:
        _check(message)
    except ValueError as exc:
        raise ProtocolError("invalid", f"{_clip(message.__struct_config__.tag, 40)!r} message: {_clip(str(exc))}") from None
    return message


def decode_as(frame: bytes | memoryview, decoder: msgspec.msgpack.Decoder, limit: int = MAX_FRAME_BYTES) -> Any:
    """`decode`'s size and envelope checks and refusals, with a decoder of the caller's
    own message type (`supervisor.shared.statusview`); what msgspec's types cannot say
    (free-form maps) is the caller's to check."""
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
        return decoder.decode(frame)
    except msgspec.ValidationError as exc:
        raise ProtocolError("invalid", f"{_clip(envelope.type, 40)!r} message: {_clip(str(exc))}") from None
    except Exception as exc:
        raise ProtocolError("malformed", f"{_clip(envelope.type, 40)!r}: {_clip(str(exc))}") from None


def check_reply_freeform(value: Any, where: str) -> None:
    """Raise ProtocolError unless `value`, a free-form part of a reply to the CLI, is
    JSON-safe within the reply's bounds (as `decode` checks a whole `CtlReply`)."""
    try:
        _check_freeform(value, where, budget=[MAX_REPLY_BYTES], max_depth=MAX_REPLY_DEPTH)
    except ValueError as exc:
        raise ProtocolError("invalid", f"'ctl_reply' message: {_clip(str(exc))}") from None


class _HeartbeatParts(msgspec.Struct, tag_field="type", tag="heartbeat", kw_only=True, gc=False):
    """A Heartbeat with its chips and host left as their msgpack bytes (`HeartbeatDecoder`);
    every other field typed and validated as Heartbeat's are."""

    id: MsgId
    ts: Stamp
    v: int = PROTOCOL_VERSION
    node: NodeId
    seq: Count
    agent_instance: ShortText
    chips: msgspec.Raw
    host: msgspec.Raw
    running: Annotated[tuple[RunningRank, ...], msgspec.Meta(max_length=4096)] = ()
    handler_failures: Count = 0


_parts_decoder = msgspec.msgpack.Decoder(_HeartbeatParts)
_chips_decoder = msgspec.msgpack.Decoder(Annotated[tuple[ChipStatus, ...], msgspec.Meta(max_length=MAX_CHIPS)])
_host_decoder = msgspec.msgpack.Decoder(HostStatus)


class HeartbeatDecoder:
    """`decode`, for the daemon's agent socket: the same messages and the same refusals,
    but a heartbeat whose chips (or host) are byte for byte those of the last heartbeat
    that named the same node reuses what those bytes decoded to, rather than decoding
    and validating them again. Chips and host are most of a heartbeat (2.7 KB for 8
    chips) and change only when a probe reads new values. Bytes that differ are decoded
    and validated in full; anything that is not a plain valid heartbeat goes to `decode`.
    At most `limit` nodes are remembered (a peer naming ever new nodes empties it)."""

    def __init__(self, limit: int = 100_000) -> None:
        self.limit = limit
        #: node -> (chips bytes, chips, host bytes, host) of its last heartbeat.
        self._last: dict[str, tuple[msgspec.Raw, tuple[ChipStatus, ...], msgspec.Raw, HostStatus]] = {}

    def decode(self, frame: bytes | memoryview) -> AnyMessage:
        if len(frame) > MAX_FRAME_BYTES:
            return decode(frame)
        try:
            parts = _parts_decoder.decode(frame)
        except Exception:  # another type, or not valid: `decode` says which and why
            return decode(frame)
        if parts.v != PROTOCOL_VERSION:
            return decode(frame)
        last = self._last.get(parts.node)
        try:
            if last is not None and parts.chips == last[0]:
                chips_raw, chips = last[0], last[1]
            else:
                chips_raw, chips = parts.chips.copy(), _chips_decoder.decode(parts.chips)
            if last is not None and parts.host == last[2]:
                host_raw, host = last[2], last[3]
            else:
                host_raw, host = parts.host.copy(), _host_decoder.decode(parts.host)
        except Exception:
            return decode(frame)  # refused there, with the path to what is wrong
        if last is None and len(self._last) >= self.limit:
            self._last.clear()
        self._last[parts.node] = (chips_raw, chips, host_raw, host)
        return Heartbeat(id=parts.id, ts=parts.ts, v=parts.v, node=parts.node, seq=parts.seq,
                         agent_instance=parts.agent_instance, chips=chips, host=host, running=parts.running,
                         handler_failures=parts.handler_failures)

    def forget(self, node: str) -> None:
        self._last.pop(node, None)


class _CommandRef(msgspec.Struct):
    type: str
    id: MsgId


_command_ref_decoder = msgspec.msgpack.Decoder(_CommandRef)


def command_ref(frame: bytes | memoryview) -> str | None:
    """The id of a command frame that failed to decode, so the agent can refuse it with
    a Result naming what is wrong; None when the frame is not even that."""
    try:
        ref = _command_ref_decoder.decode(frame)
    except Exception:
        return None
    return ref.id if ref.type == "command" else None
