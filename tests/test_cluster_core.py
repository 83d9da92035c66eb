"""supervisor.core.cluster.Cluster and the control verbs, without sockets: protocol messages and
literal Instants in, messages to send and changes to log out."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from supervisor.core import control
from supervisor.core.cluster import Cluster, ClusterConfig, Outcome, ToClient, ToNode, ToPeer
from supervisor.shared import __version__
from supervisor.shared.clock import Instant
from supervisor.shared.protocol import (
    Ack,
    ChipStatus,
    Command,
    CtlReply,
    CtlRequest,
    Event,
    Heartbeat,
    HostStatus,
    InjectArgs,
    ProtocolError,
    Register,
    Result,
    RunningRank,
    StopRanksArgs,
    decode,
    encode,
)
from supervisor.shared.vocab import Accelerator, Fault, Health, NodeState, Signal

CONFIG = ClusterConfig(heartbeat_timeout=15.0, heartbeat_interval=2.0, command_timeout=10.0)
T0 = Instant(mono=500.0, wall=1_700_000_000.0)
CLIENT = b"cli-1"
HOST = HostStatus(health=Health.OK, mem_used_pct=40.0)


def at(seconds: float) -> Instant:
    return T0.after(seconds)


def register(node: str = "n1", accelerator: Accelerator = Accelerator.SIM_ASCEND, chips: int = 2) -> Register:
    return Register(
        id=f"reg-{node}",
        ts=T0.wall,
        node=node,
        accelerator=accelerator,
        chips=tuple(ChipStatus(index=i, health=Health.OK) for i in range(chips)),
        host=HOST,
        agent_version="0.1.0",
        agent_instance=f"agent-{node}",
        hostname=f"host-{node}",
        pid=777,
        running=(RunningRank(job="j", rank=0, pid=900, step=3),),
    )


def heartbeat(node: str = "n1", instance: str | None = None) -> Heartbeat:
    return Heartbeat(
        id="hb-1",
        ts=T0.wall,
        node=node,
        seq=1,
        agent_instance=instance or f"agent-{node}",
        chips=(ChipStatus(index=0, health=Health.OK), ChipStatus(index=1, health=Health.OK)),
        host=HOST,
    )


def event(event_id: str = "ev-1", node: str = "n1", **kw: Any) -> Event:
    kw.setdefault("name", "rank.crashed")
    kw.setdefault("observed_at", at(0).wall)
    return Event(id=event_id, ts=T0.wall, node=node, **kw)


def ctl(verb: str, request_id: str = "req-1", **args: Any) -> CtlRequest:
    return CtlRequest(id=request_id, ts=T0.wall, verb=verb, args=args)


def deliver(cluster: Cluster, msg: Any, now: Instant, route: bytes | None = None) -> Outcome:
    """A message as it arrives from the node's own connection (its route)."""
    return cluster.on_agent_message(msg, route if route is not None else getattr(msg, "node", "x").encode(), now)


@pytest.fixture
def cluster() -> Cluster:
    return Cluster(CONFIG, instance="daemon-1", started=T0)


def only_ack(out: Outcome, node: str = "n1") -> Ack:
    assert len(out.sends) == 1
    send = out.sends[0]
    assert isinstance(send, ToPeer) and send.route == node.encode()
    assert isinstance(send.message, Ack)
    return send.message


def only_reply(out: Outcome) -> CtlReply:
    assert len(out.sends) == 1
    send = out.sends[0]
    assert isinstance(send, ToClient) and send.client == CLIENT
    return send.message


def error_code(cluster: Cluster, req: CtlRequest, now: Instant = T0) -> str | None:
    reply = only_reply(cluster.on_ctl_request(CLIENT, req, now))
    assert reply.ok is False and reply.ref == req.id and reply.error
    return reply.code


# --- agents ---------------------------------------------------------------------------


def test_register_is_acked_with_the_heartbeat_interval_and_daemon_instance(cluster: Cluster) -> None:
    out = deliver(cluster, register(), at(1))
    ack = only_ack(out)
    assert ack.ref == "reg-n1"
    assert ack.ok is True and ack.error is None
    assert ack.detail == {"daemon_instance": "daemon-1", "heartbeat_interval": 2.0, "heartbeat_timeout": 15.0}
    assert ack.ts == at(1).wall
    assert [c.event for c in out.changes] == ["node.registered"]
    assert cluster.nodes.get("n1").state is NodeState.UP


def test_heartbeat_from_an_unregistered_node_is_refused_with_unregistered(cluster: Cluster) -> None:
    out = deliver(cluster, heartbeat(), at(1))
    ack = only_ack(out)
    assert (ack.ref, ack.ok, ack.error) == ("hb-1", False, "unregistered")
    assert out.changes == []


def test_heartbeat_from_a_registered_node_is_acked(cluster: Cluster) -> None:
    deliver(cluster, register(), at(0))
    ack = only_ack(deliver(cluster, heartbeat(), at(2)))
    assert (ack.ref, ack.ok, ack.error) == ("hb-1", True, None)


def test_heartbeat_from_a_restarted_agent_is_refused_until_it_registers(cluster: Cluster) -> None:
    deliver(cluster, register(), at(0))
    ack = only_ack(deliver(cluster, heartbeat(instance="agent-n1-restarted"), at(2)))
    assert (ack.ok, ack.error) == (False, "unregistered")


def test_event_from_an_unregistered_node_is_refused_and_not_reported(cluster: Cluster) -> None:
    out = deliver(cluster, event(), at(1))
    ack = only_ack(out)
    assert (ack.ref, ack.ok, ack.error) == ("ev-1", False, "unregistered")
    assert out.changes == []


def test_an_event_is_acked_and_reported_with_its_evidence_and_latency(cluster: Cluster) -> None:
    deliver(cluster, register(), at(0))
    msg = event(
        signal=Signal.CRASH,
        chip=1,
        rank=1,
        evidence="exit code -9",
        observed_at=at(10).wall,
        fields={"exit_code": -9},
    )
    out = deliver(cluster, msg, at(10.25))

    ack = only_ack(out)
    assert (ack.ref, ack.ok) == ("ev-1", True)
    assert len(out.changes) == 1
    change = out.changes[0]
    assert (change.event, change.node) == ("rank.crashed", "n1")
    assert change.fields == {
        "exit_code": -9,
        "chip": 1,
        "signal": "crash",
        "rank": 1,
        "evidence": "exit code -9",
        "observed_at": at(10).wall,
        "detection_latency_s": 0.25,
        "event_id": "ev-1",
        "accelerator": "sim-ascend",  # so a replay can tell the pool
    }  # job is None, so it is left out


def test_a_duplicate_event_is_acked_but_not_reported_again(cluster: Cluster) -> None:
    deliver(cluster, register(), at(0))
    first = deliver(cluster, event("ev-1"), at(1))
    again = deliver(cluster, event("ev-1"), at(4))

    assert len(first.changes) == 1
    assert only_ack(again).ok is True
    assert again.changes == []
    assert len(deliver(cluster, event("ev-2"), at(5)).changes) == 1


def test_event_ids_are_tracked_per_node(cluster: Cluster) -> None:
    deliver(cluster, register("n1"), at(0))
    deliver(cluster, register("n2"), at(0))
    deliver(cluster, event("ev-1", node="n1"), at(1))
    out = deliver(cluster, event("ev-1", node="n2"), at(1))
    assert [(c.event, c.node) for c in out.changes] == [("rank.crashed", "n2")]


def test_chip_health_changed_with_a_status_updates_the_nodes_chip(cluster: Cluster) -> None:
    deliver(cluster, register(), at(0))
    status = {"index": 1, "health": "critical", "error_codes": ["sim:chip_error"], "reason": "sim:chip_error"}
    out = deliver(cluster, 
        event(name="chip.health_changed", signal=Signal.CHIP_ERROR, chip=1, fields={"status": status, "before": "ok"}),
        at(1),
    )

    chip = cluster.nodes.get("n1").chips[1]
    assert chip == ChipStatus(index=1, health=Health.CRITICAL, error_codes=("sim:chip_error",), reason="sim:chip_error")
    assert cluster.nodes.get("n1").health is Health.CRITICAL
    assert out.changes[0].fields["before"] == "ok"
    assert "status" not in out.changes[0].fields


def test_chip_health_changed_with_an_invalid_status_is_still_reported(cluster: Cluster) -> None:
    deliver(cluster, register(), at(0))
    before = cluster.nodes.get("n1").chips
    out = deliver(cluster, 
        event(name="chip.health_changed", fields={"status": {"index": "one", "health": "bad"}}), at(1)
    )
    assert only_ack(out).ok is True
    assert [c.event for c in out.changes] == ["chip.health_changed"]
    assert cluster.nodes.get("n1").chips == before


@pytest.mark.parametrize(
    "msg",
    [ctl("status"), Ack(id="a", ts=0.0, ref="r"), Command(id="c", ts=0.0, args=StopRanksArgs(job="j"))],
    ids=["ctl", "ack", "command"],
)
def test_a_message_agents_never_send_is_refused_as_a_protocol_error(cluster: Cluster, msg: Any) -> None:
    # The daemon counts it as a bad frame from that peer.
    with pytest.raises(ProtocolError) as info:
        deliver(cluster, msg, at(0))
    assert info.value.reason == "unexpected"
    assert type(msg).__name__ in info.value.detail


def test_tick_reports_lost_nodes(cluster: Cluster) -> None:
    deliver(cluster, register(), at(0))
    assert cluster.tick(at(14.9)).changes == []
    out = cluster.tick(at(15))
    assert [(c.event, c.node) for c in out.changes] == [("node.lost", "n1")]
    assert out.sends == []


# --- control: status, ping, dispatch errors ---------------------------------------------


def test_status_has_the_documented_shape(cluster: Cluster) -> None:
    deliver(cluster, register("n1"), at(0))
    deliver(cluster, register("n2", accelerator=Accelerator.SIM_NVIDIA, chips=1), at(1))
    deliver(cluster, 
        event(name="chip.health_changed", fields={"status": {"index": 0, "health": "warning"}}), at(2)
    )
    cluster.tick(at(1 + 15))  # n1 (silent since 0) is lost; n2 was seen at 1, lost at exactly 16 too
    deliver(cluster, register("n2", accelerator=Accelerator.SIM_NVIDIA, chips=1), at(17))

    reply = only_reply(cluster.on_ctl_request(CLIENT, ctl("status"), at(20)))
    assert reply.ok is True and reply.ref == "req-1"
    status = reply.result

    assert set(status) == {"schema", "daemon", "summary", "nodes", "page", "jobs"}
    assert status["schema"] == control.STATUS_SCHEMA
    assert status["jobs"] == []
    daemon = status["daemon"]
    assert {
        "version": __version__,
        "instance": "daemon-1",
        "started_at": T0.wall,
        "uptime_s": 20.0,
        "heartbeat_timeout_s": 15.0,
        "heartbeat_interval_s": 2.0,
        "policy_dir": None,
    }.items() <= daemon.items()
    assert daemon["bad_frames"] == {"total": 0, "by_reason": {}}
    assert status["summary"] == {
        "nodes": 2,
        "states": {"pending": 0, "up": 1, "lost": 1, "left": 0},
        "chips": {"ok": 2, "warning": 1, "alarm": 0, "critical": 0, "unknown": 0},
    }

    def as_sent(value: object) -> object:  # StatusNode structs, chips and tuples, as the CLI receives them
        return msgspec.msgpack.decode(msgspec.msgpack.encode(value))

    n1, n2 = as_sent(status["nodes"])
    assert n1 == as_sent({
        "node": "n1",
        "state": "lost",
        "state_since": at(16).wall,
        "health": "warning",
        "accelerator": "sim-ascend",
        "hostname": "host-n1",
        "agent_version": "0.1.0",
        "agent_pid": 777,
        "registered_at": at(0).wall,
        "last_heartbeat": at(0).wall,
        "last_heartbeat_age_s": 20.0,
        "handler_failures": 0,
        "chips": [
            msgspec.to_builtins(ChipStatus(index=0, health=Health.WARNING)),
            msgspec.to_builtins(ChipStatus(index=1, health=Health.OK)),
        ],
        "host": msgspec.to_builtins(HOST),
        "running": [{"job": "j", "rank": 0, "pid": 900, "step": 3, "attempt": 0, "loss": None}],
    })
    assert (n2["node"], n2["state"], n2["accelerator"], n2["last_heartbeat_age_s"]) == ("n2", "up", "sim-nvidia", 3.0)

    # The whole reply survives the wire to the CLI (tuples arrive as lists).
    wire = decode(encode(reply)).result
    assert wire["summary"] == status["summary"] and wire["daemon"] == daemon
    assert [set(n) for n in wire["nodes"]] == [set(n1), set(n2)]
    assert wire["nodes"][0]["chips"][0]["health"] == "warning"


def test_status_counts_bad_frames_by_reason(cluster: Cluster) -> None:
    cluster.bad_frames.record("peer-a", "malformed", "not msgpack", now=at(0).mono)
    cluster.bad_frames.record("peer-a", "malformed", "not msgpack", now=at(1).mono)
    cluster.bad_frames.record("peer-b", "unknown_version", "version 2", now=at(1).mono)
    status = only_reply(cluster.on_ctl_request(CLIENT, ctl("status"), at(2))).result
    assert status["daemon"]["bad_frames"] == {"total": 3, "by_reason": {"malformed": 2, "unknown_version": 1}}


def test_status_of_an_empty_cluster(cluster: Cluster) -> None:
    status = only_reply(cluster.on_ctl_request(CLIENT, ctl("status"), at(0))).result
    assert status["nodes"] == []
    assert status["summary"]["nodes"] == 0
    assert set(status["summary"]["states"].values()) == {0}


def test_ping_answers_with_version_instance_and_uptime(cluster: Cluster) -> None:
    reply = only_reply(cluster.on_ctl_request(CLIENT, ctl("ping"), at(42.5)))
    assert reply.result == {"version": __version__, "instance": "daemon-1", "uptime_s": 42.5}


def test_an_unknown_verb_is_an_unknown_verb_error_listing_the_known_ones(cluster: Cluster) -> None:
    reply = only_reply(cluster.on_ctl_request(CLIENT, ctl("reboot-everything"), at(0)))
    assert (reply.ok, reply.code) == (False, "unknown_verb")
    for verb in control.VERBS:
        assert verb in reply.error


def test_unknown_arguments_are_a_bad_request(cluster: Cluster) -> None:
    assert error_code(cluster, ctl("status", verbose=True)) == "bad_request"


def test_a_verb_that_fails_unexpectedly_is_an_internal_error_not_a_crash(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Broken(control.Verb):
        name = "broken"
        Params = control._NoParams

        def execute(self, cluster: Cluster, params: Any, now: Instant) -> Any:
            raise ZeroDivisionError("oops")

    monkeypatch.setitem(control.VERBS, "broken", Broken())
    reply = only_reply(cluster.on_ctl_request(CLIENT, ctl("broken"), at(0)))
    assert reply.code == "internal"
    assert "ZeroDivisionError" in reply.error


# --- control: inject -------------------------------------------------------------------


def test_inject_into_an_unknown_node_is_unknown_node(cluster: Cluster) -> None:
    deliver(cluster, register("n1"), at(0))
    reply = only_reply(cluster.on_ctl_request(CLIENT, ctl("inject", node="ghost", fault="critical"), at(1)))
    assert reply.code == "unknown_node"
    assert "n1" in reply.error  # names the nodes it does know


def test_inject_into_a_real_accelerator_is_not_simulated(cluster: Cluster) -> None:
    deliver(cluster, register("gpu1", accelerator=Accelerator.NVIDIA), at(0))
    assert error_code(cluster, ctl("inject", node="gpu1", fault="critical")) == "not_simulated"


@pytest.mark.parametrize(
    "args",
    [
        {"chip": 2},
        {"chip": -1},
        {"count": 0},
        {"fault": "meltdown"},
        {"chip": "one"},
        {"colour": "red"},
        {"count": 10**23},
        {"count": 1_000_001},
        {"chip": 4096},
        {"chip": -(10**30)},
    ],
)
def test_inject_with_bad_arguments_is_a_bad_request(cluster: Cluster, args: dict) -> None:
    deliver(cluster, register("n1", chips=2), at(0))
    request = {"node": "n1", "fault": "critical", **args}
    assert error_code(cluster, ctl("inject", **request)) == "bad_request"


def test_inject_numbers_beyond_their_bounds_are_refused_before_anything_is_sent(cluster: Cluster) -> None:
    deliver(cluster, register("n1", chips=2), at(0))
    reply = only_reply(cluster.on_ctl_request(CLIENT, ctl("inject", node="n1", fault="ecc", count=10**23), at(1)))
    assert reply.code == "bad_request"
    assert reply.error == "inject: Expected `int` <= 1000000 - at `$.count`"


def test_inject_into_a_lost_node_is_node_not_up(cluster: Cluster) -> None:
    deliver(cluster, register("n1"), at(0))
    cluster.tick(at(15))
    assert error_code(cluster, ctl("inject", node="n1", fault="critical"), at(16)) == "node_not_up"


def test_inject_into_a_restored_pending_node_is_node_not_up(cluster: Cluster) -> None:
    other = Cluster(CONFIG, instance="daemon-0", started=T0)
    deliver(other, register("n1"), at(0))
    cluster.nodes.restore(other.nodes.records(), at(100))
    assert error_code(cluster, ctl("inject", node="n1", fault="critical"), at(101)) == "node_not_up"


def inject(cluster: Cluster, now: Instant, **args: Any) -> Command:
    """Send a valid inject request; returns the Command that goes to the node."""
    out = cluster.on_ctl_request(CLIENT, ctl("inject", **{"node": "n1", "fault": "chip_error", "chip": 1, **args}), now)
    assert out.changes == []
    assert len(out.sends) == 1, "no reply to the client until the agent answers"
    send = out.sends[0]
    assert isinstance(send, ToNode) and send.node == "n1"
    assert isinstance(send.message, Command)
    return send.message


def test_a_valid_inject_sends_a_command_and_replies_when_the_result_arrives(cluster: Cluster) -> None:
    deliver(cluster, register("n1"), at(0))
    command = inject(cluster, at(1), count=3)
    assert command.kind == "inject"
    assert command.args == InjectArgs(fault=Fault.CHIP_ERROR, chip=1, count=3)

    assert cluster.tick(at(1 + 9.999)).sends == []
    result = Result(id="res-1", ts=0.0, node="n1", ref=command.id, ok=True, detail={"health": "critical"})
    out = deliver(cluster, result, at(1 + 9.999))
    reply = only_reply(out)
    assert (reply.ok, reply.ref, reply.result) == (True, "req-1", {"health": "critical"})

    # A repeated Result and the old deadline both pass silently: the CLI has its answer.
    assert deliver(cluster, result, at(12)).sends == []
    assert cluster.tick(at(100)).sends == []


def test_a_refused_command_is_an_agent_refused_error(cluster: Cluster) -> None:
    deliver(cluster, register("n1"), at(0))
    command = inject(cluster, at(1))
    result = Result(id="res-1", ts=0.0, node="n1", ref=command.id, ok=False, error="chip 1 is busy")
    reply = only_reply(deliver(cluster, result, at(2)))
    assert (reply.ok, reply.code, reply.ref) == (False, "agent_refused", "req-1")
    assert reply.error == "chip 1 is busy"  # the agent names its node itself


def test_an_unanswered_command_times_out_at_command_timeout(cluster: Cluster) -> None:
    deliver(cluster, register("n1"), at(0))
    command = inject(cluster, at(1))
    assert cluster.next_deadline() == at(1).mono + CONFIG.command_timeout

    deliver(cluster, heartbeat(), at(5))  # keep the node up
    assert cluster.tick(at(1 + 10 - 0.001)).sends == []
    reply = only_reply(cluster.tick(at(1 + 10)))
    assert (reply.ok, reply.code, reply.ref) == (False, "timeout", "req-1")
    assert "'inject'" in reply.error and "10s" in reply.error

    late = Result(id="res-1", ts=0.0, node="n1", ref=command.id, ok=True)
    assert deliver(cluster, late, at(12)).sends == []
    assert cluster.next_deadline() == at(5).mono + CONFIG.heartbeat_timeout


def test_a_command_that_cannot_be_sent_is_unreachable(cluster: Cluster) -> None:
    deliver(cluster, register("n1"), at(0))
    out = cluster.on_ctl_request(CLIENT, ctl("inject", node="n1", fault="critical"), at(1))
    send = out.sends[0]
    assert isinstance(send, ToNode)

    reply = only_reply(cluster.on_send_failed(send, "EHOSTUNREACH", at(1)))
    assert (reply.ok, reply.code, reply.ref) == (False, "unreachable", "req-1")
    assert "n1" in reply.error and "EHOSTUNREACH" in reply.error
    assert cluster.tick(at(100)).sends == [], "no second (timeout) reply"


def test_a_failed_send_of_anything_else_needs_no_reply(cluster: Cluster) -> None:
    deliver(cluster, register("n1"), at(0))
    ack_send = deliver(cluster, heartbeat(), at(1)).sends[0]
    assert cluster.on_send_failed(ack_send, "EAGAIN", at(1)) == Outcome()


def test_next_deadline_is_the_earliest_of_commands_and_nodes(cluster: Cluster) -> None:
    assert cluster.next_deadline() is None
    deliver(cluster, register("n1"), at(0))
    assert cluster.next_deadline() == at(0).mono + 15
    inject(cluster, at(1))
    assert cluster.next_deadline() == at(1).mono + 10
