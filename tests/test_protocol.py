"""supervisor.shared.protocol: every message survives the wire, and every bad frame is a
ProtocolError with the right reason — never any other exception."""

from __future__ import annotations

import typing

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from supervisor.shared.protocol import (
    MAX_FRAME_BYTES,
    PROTOCOL_VERSION,
    Ack,
    AnyMessage,
    CheckpointArgs,
    ChipStatus,
    Command,
    CtlReply,
    CtlRequest,
    Event,
    Goodbye,
    Heartbeat,
    HostStatus,
    InjectArgs,
    KeepStandbysArgs,
    ProtocolError,
    RankAssignment,
    Register,
    Result,
    RunningRank,
    StartRanksArgs,
    StopRanksArgs,
    command_ref,
    decode,
    encode,
    new_id,
)
from supervisor.shared.vocab import Accelerator, Fault, Health, Signal

HOST = HostStatus(
    health=Health.WARNING,
    mem_used_pct=96.5,
    disk_free_bytes=10 * 2**30,
    disk_total_bytes=500 * 2**30,
    load1=3.25,
    reason="memory 96% used",
)
CHIPS = (
    ChipStatus(index=0, health=Health.OK, temperature_c=41.0, memory_used_mb=1024, memory_total_mb=65536),
    ChipStatus(
        index=1,
        health=Health.CRITICAL,
        temperature_c=88.5,
        memory_used_mb=0,
        memory_total_mb=65536,
        ecc_uncorrectable=2,
        ecc_correctable=17,
        error_codes=("80E01801", "80CF8009"),
        reason="80E01801, 80CF8009",
    ),
)
RUNNING = (RunningRank(job="gpt-7b", rank=0, pid=4242, step=1200), RunningRank(job="gpt-7b", rank=1, pid=4243))

# One fully populated example of every message type.
EXAMPLES: list[AnyMessage] = [
    Register(
        id="reg-1",
        ts=1_700_000_000.25,
        node="node-01.rack_3",
        accelerator=Accelerator.SIM_ASCEND,
        chips=CHIPS,
        host=HOST,
        agent_version="0.1.0",
        agent_instance="a1b2c3",
        hostname="gpu-host-01",
        pid=1234,
        running=RUNNING,
    ),
    Heartbeat(id="hb-7", ts=1_700_000_002.0, node="node-01", seq=7, agent_instance="a1b2c3", chips=CHIPS, host=HOST, running=RUNNING),
    Event(
        id="ev-1",
        ts=1_700_000_003.0,
        node="node-01",
        name="chip.health_changed",
        observed_at=1_700_000_002.9,
        signal=Signal.CHIP_ERROR,
        chip=1,
        job="gpt-7b",
        rank=1,
        evidence="EI0002: HCCL timeout",
        fields={"status": {"index": 1, "health": "critical"}, "nested": [1, 2.5, "x", None, True]},
    ),
    Command(id="cmd-1", ts=1_700_000_004.0, args=InjectArgs(fault=Fault.CRITICAL, chip=1, count=1)),
    Ack(id="ack-1", ts=1_700_000_005.0, ref="reg-1", ok=True, detail={"heartbeat_interval": 2.0, "daemon_instance": "d-1"}),
    Result(id="res-1", ts=1_700_000_006.0, node="node-01", ref="cmd-1", ok=False, error="no such chip", detail={"chip": 9}),
    CtlRequest(id="ctl-1", ts=1_700_000_007.0, verb="inject", args={"node": "node-01", "fault": "ecc"}),
    CtlReply(id="rep-1", ts=1_700_000_008.0, ref="ctl-1", ok=False, error="unknown node 'x'", code="unknown_node", result=None),
    Goodbye(id="bye-1", ts=1_700_000_003.5, node="node-01", agent_instance="a1b2c3", reason="agent stopped (SIGTERM)"),
]

# The smallest valid message of every type: defaults only.
MINIMAL: list[AnyMessage] = [
    Register(id="r", ts=0.0, node="n", accelerator=Accelerator.CPU, chips=(), host=HostStatus(health=Health.OK),
             agent_version="", agent_instance="", hostname="", pid=1),
    Heartbeat(id="h", ts=0.0, node="n", seq=0, agent_instance="", chips=(), host=HostStatus(health=Health.UNKNOWN)),
    Event(id="e", ts=0.0, node="n", name="signal.crash", observed_at=1_700_000_000.0),
    Command(id="c", ts=0.0, args=StopRanksArgs(job="j")),
    Ack(id="a", ts=0.0, ref="r"),
    Result(id="s", ts=0.0, node="n", ref="c", ok=True),
    CtlRequest(id="q", ts=0.0, verb="status"),
    CtlReply(id="p", ts=0.0, ref="q", ok=True),
    Goodbye(id="g", ts=0.0, node="n", agent_instance=""),
]

FRAMES = [encode(m) for m in EXAMPLES + MINIMAL]


def as_fields(message: AnyMessage) -> dict[str, typing.Any]:
    """The message as the plain map that goes on the wire (`type` included)."""
    return msgspec.to_builtins(message)


def raw(fields: dict[str, typing.Any]) -> bytes:
    return msgspec.msgpack.encode(fields)


def reason_of(frame: bytes) -> str:
    with pytest.raises(ProtocolError) as info:
        decode(frame)
    return info.value.reason


def heartbeat_fields(**changes: typing.Any) -> dict[str, typing.Any]:
    fields = as_fields(EXAMPLES[1])
    fields.update(changes)
    return fields


# --- round trips ----------------------------------------------------------------------


def test_examples_cover_every_message_type() -> None:
    assert {type(m) for m in EXAMPLES} == set(typing.get_args(AnyMessage))
    assert {type(m) for m in MINIMAL} == set(typing.get_args(AnyMessage))


@pytest.mark.parametrize("message", EXAMPLES + MINIMAL, ids=lambda m: f"{type(m).__name__}")
def test_every_message_round_trips(message: AnyMessage) -> None:
    decoded = decode(encode(message))
    assert type(decoded) is type(message)
    assert decoded == message
    assert decoded.v == PROTOCOL_VERSION


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda m: type(m).__name__)
def test_decode_accepts_a_memoryview(message: AnyMessage) -> None:
    # The daemon decodes zmq frame buffers without copying them.
    assert decode(memoryview(encode(message))) == message


COMMANDS = [InjectArgs(fault=Fault.HANG),
            StartRanksArgs(job="gpt", attempt=3, argv=("python",), ranks=(RankAssignment(rank=2, local_rank=0, chips=(1,)),),
                           world_size=4, local_world_size=1, master_addr="10.0.0.1", ckpt_dir="/ckpt/gpt",
                           master_port=29511, hang_timeout=30.0),
            StopRanksArgs(job="gpt", attempt=3, grace=60.0), CheckpointArgs(job="gpt", attempt=3),
            KeepStandbysArgs(job="gpt", argv=("python", "train.py"), count=2, cwd="/w", env={"NCCL_DEBUG": "WARN"})]


def test_every_command_kind_round_trips() -> None:
    assert {type(c) for c in COMMANDS} == set(typing.get_args(typing.get_type_hints(Command)["args"]))
    for args in COMMANDS:
        decoded = decode(encode(Command(id="c", ts=0.0, args=args)))
        assert decoded.args == args and decoded.kind == args.kind


START = {"kind": "start_ranks", "job": "gpt", "attempt": 1, "argv": ["x"], "ranks": [{"rank": 0, "local_rank": 0}],
         "world_size": 1, "local_world_size": 1, "master_addr": "127.0.0.1", "ckpt_dir": "/ck"}


@pytest.mark.parametrize("args, field", [
    ({**START, "argv": []}, "$.args.argv"),
    ({**START, "job": "../../etc"}, "$.args.job"),
    ({**START, "ranks": [{"rank": i, "local_rank": 0} for i in range(300)]}, "$.args.ranks"),
    ({**START, "bogus": 1}, "bogus"),
    ({**START, "cwd": "/tmp/\x00x"}, "$.args.cwd"),
    ({"kind": "inject", "fault": "melt"}, "$.args.fault"),
    ({"kind": "inject", "fault": "ok", "count": 10**18}, "$.args.count"),
    ({"kind": "stop_ranks", "job": "gpt", "grace": float("inf")}, "$.args.grace"),
    ({"kind": "drain"}, "kind"),
])
def test_a_malformed_command_is_invalid_naming_the_field_and_keeps_its_ref(args: dict, field: str) -> None:
    frame = raw({"v": 1, "type": "command", "id": "cmd-9", "ts": 1.0, "args": args})
    with pytest.raises(ProtocolError) as info:
        decode(frame)
    assert info.value.reason == "invalid" and field in info.value.detail
    assert command_ref(frame) == "cmd-9"  # so the agent can refuse it by id


def test_command_ref_of_garbage_is_none() -> None:
    assert command_ref(b"garbage") is None
    assert command_ref(raw({"v": 1, "type": "heartbeat", "id": "h"})) is None


@pytest.mark.parametrize("fields", [
    {"bad": float("nan")}, {"bad": float("inf")}, {"nested": {"deep": [float("-inf")]}},
    {"a": {"b": {"c": {"d": {"e": {"f": {"g": {}}}}}}}},
])
def test_event_fields_must_be_json_safe(fields: dict) -> None:
    frame = raw({**as_fields(EXAMPLES[2]), "fields": fields})
    assert reason_of(frame) == "invalid"


def test_an_event_field_map_with_a_bytes_key_is_invalid() -> None:
    # 87 bytes that once killed the daemon's store (json.dumps on a bytes key).
    frame = msgspec.msgpack.encode({**as_fields(EXAMPLES[2]), "fields": {b"k": 1}})
    assert reason_of(frame) == "invalid"


@pytest.mark.parametrize("name", ["node.lost", "policy.decision", "job.failover_started", "x"])
def test_an_agent_may_not_report_events_outside_its_own_names(name: str) -> None:
    assert reason_of(raw({**as_fields(EXAMPLES[2]), "name": name})) == "invalid"


@pytest.mark.parametrize("observed_at", [float("-inf"), float("nan"), float("inf"), -1.0, 1e300])
def test_event_times_must_be_finite_and_plausible(observed_at: float) -> None:
    assert reason_of(raw({**as_fields(EXAMPLES[2]), "observed_at": observed_at})) == "invalid"


@pytest.mark.parametrize("pid", [0, -5, 2**40])
def test_pids_must_be_positive(pid: int) -> None:
    assert reason_of(raw({**as_fields(EXAMPLES[0]), "pid": pid})) == "invalid"


def _unused() -> None:
    for kind in ():
        assert decode(encode(Command(id="c", ts=0.0, kind=kind))).kind is kind


def test_new_ids_are_16_hex_digits_and_distinct() -> None:
    ids = {new_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(len(i) == 16 and int(i, 16) >= 0 for i in ids)


# --- oversize -------------------------------------------------------------------------


def test_frame_one_byte_over_the_limit_is_oversize_even_if_it_is_garbage() -> None:
    assert reason_of(b"\xc1" * (MAX_FRAME_BYTES + 1)) == "oversize"


def test_frame_of_exactly_the_limit_is_decoded() -> None:
    def padded(n: int) -> Event:
        return Event(id="e", ts=0.0, node="n", name="signal.crash", observed_at=1_700_000_000.0, fields={"pad": "x" * n})

    n = MAX_FRAME_BYTES - len(encode(padded(0)))
    n -= len(encode(padded(n))) - MAX_FRAME_BYTES  # the str header grows with the length
    frame = encode(padded(n))
    assert len(frame) == MAX_FRAME_BYTES
    assert decode(frame) == padded(n)
    assert reason_of(frame + b"\x00") == "oversize"


# --- malformed: not msgpack, or no valid envelope --------------------------------------


@pytest.mark.parametrize(
    "frame",
    [
        b"",
        b"\xc1",  # the one byte msgpack never uses
        b"hello, daemon",
        b"\xff" * 32,
        b'{"v": 1, "type": "ack", "id": "a", "ts": 0, "ref": "r"}',  # JSON, not msgpack
        b"\x93\x01\x02\x03",  # an array, not a map
        b"\x01",  # an int
        b"\xa3abc",  # a string
        b"\xc0",  # nil
    ],
    ids=["empty", "c1", "text", "ff", "json", "array", "int", "str", "nil"],
)
def test_garbage_is_malformed(frame: bytes) -> None:
    assert reason_of(frame) == "malformed"


def test_every_truncation_of_a_valid_frame_is_malformed() -> None:
    frame = encode(EXAMPLES[0])
    for cut in range(len(frame)):
        assert reason_of(frame[:cut]) == "malformed", cut


def test_trailing_bytes_after_a_valid_frame_are_malformed() -> None:
    assert reason_of(encode(EXAMPLES[4]) + b"\x00") == "malformed"


@pytest.mark.parametrize("missing", ["v", "type"])
def test_missing_envelope_field_is_malformed(missing: str) -> None:
    fields = heartbeat_fields()
    del fields[missing]
    assert reason_of(raw(fields)) == "malformed"


@pytest.mark.parametrize("changes", [{"v": "1"}, {"v": 1.0}, {"v": True}, {"v": None}, {"type": 7}, {"type": None}])
def test_envelope_field_of_the_wrong_type_is_malformed(changes: dict) -> None:
    assert reason_of(raw(heartbeat_fields(**changes))) == "malformed"


# --- unknown_version ------------------------------------------------------------------


@pytest.mark.parametrize("version", [0, 2, 99, -1, 2**63])
def test_other_protocol_versions_are_unknown_version(version: int) -> None:
    with pytest.raises(ProtocolError) as info:
        decode(raw(heartbeat_fields(v=version)))
    assert info.value.reason == "unknown_version"
    assert str(version) in info.value.detail


def test_version_is_checked_before_the_body() -> None:
    # A v2 sender may use types and fields v1 has never heard of.
    assert reason_of(raw({"v": 2, "type": "teleport", "where": "mars"})) == "unknown_version"


# --- invalid: a v1 envelope whose body does not validate -------------------------------


def test_unknown_type_is_invalid_and_named_in_the_detail() -> None:
    with pytest.raises(ProtocolError) as info:
        decode(raw(heartbeat_fields(type="teleport")))
    assert info.value.reason == "invalid"
    assert "teleport" in info.value.detail


@pytest.mark.parametrize("missing", ["id", "ts", "node", "seq", "agent_instance", "chips", "host"])
def test_missing_required_field_is_invalid(missing: str) -> None:
    fields = heartbeat_fields()
    del fields[missing]
    with pytest.raises(ProtocolError) as info:
        decode(raw(fields))
    assert info.value.reason == "invalid"
    assert missing in info.value.detail


@pytest.mark.parametrize(
    "changes",
    [
        {"seq": "7"},
        {"seq": 7.5},
        {"ts": "yesterday"},
        {"id": 5},
        {"id": ""},
        {"id": "x" * 65},
        {"chips": "none"},
        {"chips": [{"index": 0, "health": "fine"}]},
        {"chips": [{"index": -1, "health": "ok"}]},
        {"chips": [{"index": 4096, "health": "ok"}]},
        {"chips": [{"health": "ok"}]},
        {"host": {"health": "ok", "mem_used_pct": "lots"}},
        {"running": [{"job": "j", "rank": "zero", "pid": 1}]},
    ],
)
def test_wrong_field_types_and_values_are_invalid(changes: dict) -> None:
    assert reason_of(raw(heartbeat_fields(**changes))) == "invalid"


@pytest.mark.parametrize(
    "message, changes",
    [
        (EXAMPLES[0], {"accelerator": "tpu"}),
        (EXAMPLES[2], {"signal": "meteor"}),
        (EXAMPLES[2], {"evidence": "x" * (16 * 1024 + 1)}),
        (EXAMPLES[2], {"fields": ["not", "a", "map"]}),
        (EXAMPLES[3], {"args": {"kind": "self_destruct"}}),
        (EXAMPLES[4], {"ok": "yes"}),
        (EXAMPLES[5], {"ref": ""}),
        (EXAMPLES[6], {"verb": None}),
    ],
    ids=["accelerator", "signal", "evidence-too-long", "fields-not-map", "kind", "ok", "ref-empty", "verb"],
)
def test_bad_values_in_other_message_types_are_invalid(message: AnyMessage, changes: dict) -> None:
    fields = as_fields(message)
    fields.update(changes)
    assert reason_of(raw(fields)) == "invalid"


def test_a_hostile_type_name_is_clipped_in_the_detail() -> None:
    with pytest.raises(ProtocolError) as info:
        decode(raw(heartbeat_fields(type="x" * 100_000)))
    assert info.value.reason == "invalid"
    assert len(info.value.detail) < 400


def test_protocol_error_is_a_value_error_naming_its_reason() -> None:
    with pytest.raises(ValueError, match=r"^malformed: "):
        decode(b"\xc1")


# --- node ids -------------------------------------------------------------------------


NODE_ID_MESSAGES = [EXAMPLES[0], EXAMPLES[1], EXAMPLES[2], EXAMPLES[5]]  # every type with a `node`


@pytest.mark.parametrize("node", ["n", "0", "node-01.rack_3", "A" * 63, "a.b_c-d"])
def test_valid_node_ids_are_accepted(node: str) -> None:
    for message in NODE_ID_MESSAGES:
        fields = as_fields(message)
        fields["node"] = node
        assert decode(raw(fields)).node == node


@pytest.mark.parametrize(
    "node",
    ["", "-node", ".node", "_node", "a" * 64, "node 1", "node/1", "node:1", "nöde", "node\x00", "\nnode", "node\t"],
)
def test_node_ids_outside_the_pattern_are_invalid(node: str) -> None:
    for message in NODE_ID_MESSAGES:
        fields = as_fields(message)
        fields["node"] = node
        assert reason_of(raw(fields)) == "invalid", (type(message).__name__, node)


def test_node_id_with_a_trailing_newline_is_invalid() -> None:
    assert reason_of(raw(heartbeat_fields(node="node1\n"))) == "invalid"


# --- forward compatibility ------------------------------------------------------------


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda m: type(m).__name__)
def test_unknown_top_level_fields_are_ignored(message: AnyMessage) -> None:
    fields = as_fields(message)
    fields.update(added_in_v1_1="whatever", priority=3, extra={"deep": [1, 2]})
    assert decode(raw(fields)) == message


def test_unknown_fields_in_nested_structs_are_ignored() -> None:
    fields = heartbeat_fields()
    fields["chips"][1]["hbm_bandwidth_gbs"] = 1600
    fields["host"]["numa_nodes"] = 2
    fields["running"][0]["phase_detail"] = "allreduce"
    assert decode(raw(fields)) == EXAMPLES[1]


def test_optional_fields_may_be_omitted_by_an_older_sender() -> None:
    fields = as_fields(EXAMPLES[2])
    for optional in ("signal", "chip", "job", "rank", "evidence", "fields"):
        del fields[optional]
    event = decode(raw(fields))
    assert isinstance(event, Event)
    assert (event.signal, event.chip, event.job, event.rank, event.evidence, event.fields) == (None, None, None, None, "", {})


# --- nothing a peer sends raises anything but ProtocolError ----------------------------


def decode_or_protocol_error(frame: bytes) -> AnyMessage | ProtocolError:
    """Any other exception escapes and fails the test."""
    try:
        message = decode(frame)
    except ProtocolError as exc:
        assert exc.reason in {"oversize", "malformed", "unknown_version", "invalid"}
        return exc
    assert isinstance(message, typing.get_args(AnyMessage))
    return message


@settings(max_examples=200)
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_decode_or_raise_protocol_error(frame: bytes) -> None:
    decode_or_protocol_error(frame)


@settings(max_examples=200)
@given(st.sampled_from(FRAMES), st.data())
def test_truncated_valid_frames_are_malformed(frame: bytes, data: st.DataObject) -> None:
    cut = data.draw(st.integers(0, len(frame) - 1))
    result = decode_or_protocol_error(frame[:cut])
    assert isinstance(result, ProtocolError) and result.reason == "malformed"


@settings(max_examples=200)
@given(st.sampled_from(FRAMES), st.data())
def test_bit_flipped_valid_frames_decode_or_raise_protocol_error(frame: bytes, data: st.DataObject) -> None:
    mutated = bytearray(frame)
    flips = data.draw(st.lists(st.tuples(st.integers(0, len(frame) - 1), st.integers(0, 7)), min_size=1, max_size=8))
    for position, bit in flips:
        mutated[position] ^= 1 << bit
    decode_or_protocol_error(bytes(mutated))


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=20) | st.binary(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
_field_names = sorted(
    {name for cls in typing.get_args(AnyMessage) for name in cls.__struct_fields__}
    | {name for cls in (ChipStatus, HostStatus, RunningRank) for name in cls.__struct_fields__}
)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from([cls.__struct_config__.tag for cls in typing.get_args(AnyMessage)] + ["teleport"]),
    st.dictionaries(st.sampled_from(_field_names) | st.text(max_size=8), _json_values, max_size=10),
)
def test_v1_maps_with_arbitrary_fields_decode_or_raise_protocol_error(type_: str, fields: dict) -> None:
    fields.update(v=PROTOCOL_VERSION, type=type_)
    decode_or_protocol_error(raw(fields))


def test_a_status_reply_of_a_large_cluster_is_not_oversize_for_the_cli() -> None:
    """Regression: a status reply of ~160 nodes is past the agent-frame limit; the CLI
    decodes replies with the larger reply limit."""
    from supervisor.shared.protocol import MAX_FRAME_BYTES, MAX_REPLY_BYTES, CtlReply

    big = encode(CtlReply(id="r1", ts=0.0, ref="q1", ok=True, result={"nodes": ["x" * 1700] * 200}))
    assert MAX_FRAME_BYTES < len(big) < MAX_REPLY_BYTES
    with pytest.raises(ProtocolError):
        decode(big)
    assert decode(big, limit=MAX_REPLY_BYTES).ok


def test_a_status_reply_with_a_jobs_decisions_is_not_too_deep_but_a_peers_event_still_is() -> None:
    """`status` lists jobs with their decisions and what each counted: depth 8. The CLI
    refused it ("nested deeper than 6") once a job had had one decision."""
    from supervisor.shared.protocol import CtlReply, Event, ProtocolError, decode, encode

    condition = {"signal": ["crash"], "count": 1, "within": None}
    status = {"nodes": [], "jobs": [{"id": "gpt-1", "decisions": [{"action": "restart", "counts": [
        {"condition": condition, "seen": 1, "threshold": 1}]}]}]}
    reply = decode(encode(CtlReply(id="r1", ts=1.0, ref="q1", ok=True, result=status)))
    assert reply.result == status  # type: ignore[union-attr]
    deep: dict = {"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": 1}}}}}}}}
    with pytest.raises(ProtocolError):
        decode(encode(Event(id="e1", ts=1.0, node="n1", name="rank.started", observed_at=1.0e9 + 1, fields=deep)))


def test_a_decoded_heartbeat_and_the_node_record_it_updates_are_not_tracked_by_the_cycle_collector() -> None:
    """The daemon decodes thousands a second and keeps 10,000 nodes' worth: tracked, the
    collector's passes over them were about a third of its loop (bench/scale.py)."""
    import gc

    from supervisor.core.nodes import NodeRecord
    from supervisor.shared.vocab import NodeState

    chips = tuple(ChipStatus(index=i, health=Health.OK, temperature_c=40.0, error_codes=("x",)) for i in range(8))
    beat = decode(encode(Heartbeat(id="hb", ts=1.0, node="n1", seq=1, agent_instance="a", chips=chips,
                                   host=HostStatus(health=Health.OK, load1=1.0),
                                   running=(RunningRank(job="j", rank=0, pid=1, step=3),))))
    assert isinstance(beat, Heartbeat)
    assert not any(gc.is_tracked(x) for x in (beat, *beat.chips, beat.host, *beat.running))
    record = NodeRecord(node="n1", accelerator=Accelerator.SIM_ASCEND, state=NodeState.UP, chips=beat.chips)
    assert not gc.is_tracked(record)


@pytest.mark.parametrize(("value", "error"), [
    ({"a": [1, 2, 1 << 63]}, "$.a[2]: integer out of range"),
    ({"a": [1.0, float("nan")]}, "$.a[1]: nan is not a finite number"),
    ({"a": {"b": float("-inf")}}, "$.a.b: -inf is not a finite number"),
    ({"a": [b"x"]}, "$.a[0]: bytes values are not allowed"),
    ({"a": ["x"] * 10}, "$.a[8]: more items than allowed"),  # the map and the list count too
    ({"a": {"b": {"c": "too deep"}}}, "$.a.b.c: nested deeper than 2"),
    ({"a": {1: "x"}}, "$.a: key 1 is not a string"),
])
def test_plain_items_counted_inline_get_the_same_verdicts_as_the_walk(value: dict, error: str) -> None:
    from supervisor.shared.protocol import _check_freeform

    with pytest.raises(ValueError) as info:
        _check_freeform(value, "$", budget=[10], max_depth=2)
    assert str(info.value).startswith(error)
    _check_freeform({"a": [1, -(1 << 63) + 1, 2.5, None, True, "x"], "b": {"c": 1}}, "$", budget=[10], max_depth=2)


# --- the daemon's heartbeat decoder ----------------------------------------------------


def _refusal(decoder: typing.Callable[[bytes], typing.Any], frame: bytes) -> tuple[str, str]:
    with pytest.raises(ProtocolError) as info:
        decoder(frame)
    return info.value.reason, info.value.detail


def test_the_heartbeat_decoder_gives_what_decode_gives_for_every_message() -> None:
    from supervisor.shared.protocol import HeartbeatDecoder

    decoder = HeartbeatDecoder()
    for message in [*EXAMPLES, *EXAMPLES]:  # the second time from what it remembers
        frame = encode(message)
        assert decoder.decode(frame) == decode(frame) == message
        assert decoder.decode(memoryview(frame)) == message


def test_a_heartbeat_whose_chips_differ_from_the_last_is_validated_in_full() -> None:
    from supervisor.shared.protocol import HeartbeatDecoder

    decoder = HeartbeatDecoder()
    good = raw(heartbeat_fields())
    first = decoder.decode(good)
    again = decoder.decode(raw(heartbeat_fields(id="hb-8", seq=8)))
    assert again.chips is first.chips and again.host is first.host and again.seq == 8  # bytes alike: reused
    chips = heartbeat_fields()["chips"]
    hostile = [
        heartbeat_fields(chips=[{**chips[0], "index": -1}]),
        heartbeat_fields(chips=[{**chips[0], "health": "fine"}]),
        heartbeat_fields(chips=[{**chips[0], "reason": "x" * 5000}]),
        heartbeat_fields(host={"health": "ok", "load1": "high"}),
        heartbeat_fields(chips="not a list"),
        heartbeat_fields(v=PROTOCOL_VERSION + 1),
        heartbeat_fields(node="../etc"),
    ]
    for fields in hostile:
        frame = raw(fields)
        assert _refusal(decoder.decode, frame) == _refusal(decode, frame)
        # ... and a valid heartbeat after it is still read as such.
        assert decoder.decode(good) == decode(good)
    for frame in (b"", b"\xc1", raw({"type": "heartbeat"}), b"\x00" * (MAX_FRAME_BYTES + 1)):
        assert _refusal(decoder.decode, frame) == _refusal(decode, frame)


def test_the_heartbeat_decoder_remembers_at_most_its_limit_of_nodes() -> None:
    from supervisor.shared.protocol import HeartbeatDecoder

    decoder = HeartbeatDecoder(limit=3)
    for i in range(10):
        decoder.decode(raw(heartbeat_fields(node=f"n{i}")))
        assert len(decoder._last) <= 3
