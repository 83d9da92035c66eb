"""supervisor.core.nodes.NodeTable: registration, liveness and loss, driven by literal Instants."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from supervisor.core.nodes import NodeRecord, NodeTable, Unregistered
from supervisor.shared.clock import Instant
from supervisor.shared.protocol import ChipStatus, Heartbeat, HostStatus, Register, RunningRank
from supervisor.shared.vocab import Accelerator, Health, NodeState

TIMEOUT = 15.0
T0 = Instant(mono=100.0, wall=1_700_000_000.0)
HOST = HostStatus(health=Health.OK)


def at(seconds: float) -> Instant:
    """T0 plus `seconds` on both clocks."""
    return T0.after(seconds)


def chips(*healths: Health) -> tuple[ChipStatus, ...]:
    return tuple(ChipStatus(index=i, health=h) for i, h in enumerate(healths))


def register(
    node: str = "n1",
    instance: str = "agent-a",
    accelerator: Accelerator = Accelerator.SIM_ASCEND,
    chip_health: tuple[Health, ...] = (Health.OK, Health.OK),
    running: tuple[RunningRank, ...] = (),
) -> Register:
    return Register(
        id=f"reg-{node}-{instance}",
        ts=0.0,
        node=node,
        accelerator=accelerator,
        chips=chips(*chip_health),
        host=HOST,
        agent_version="0.1.0",
        agent_instance=instance,
        hostname=f"host-{node}",
        pid=4321,
        running=running,
    )


def heartbeat(
    node: str = "n1",
    instance: str = "agent-a",
    chip_health: tuple[Health, ...] = (Health.OK, Health.OK),
    host: HostStatus = HOST,
    running: tuple[RunningRank, ...] = (),
) -> Heartbeat:
    return Heartbeat(
        id="hb", ts=0.0, node=node, seq=1, agent_instance=instance, chips=chips(*chip_health), host=host, running=running
    )


def saved(node: str, state: NodeState, state_since: float, last_seen: float | None = None) -> NodeRecord:
    """A record as an earlier daemon persisted it."""
    return NodeRecord(
        node=node,
        accelerator=Accelerator.SIM_NVIDIA,
        state=state,
        chips=chips(Health.OK),
        host=HOST,
        agent_instance="old-agent",
        hostname=f"host-{node}",
        registered_at=state_since,
        last_seen=state_since if last_seen is None else last_seen,
        state_since=state_since,
    )


@pytest.fixture
def table() -> NodeTable:
    return NodeTable(heartbeat_timeout=TIMEOUT)


def events(changes: list) -> list[tuple[str, str]]:
    return [(c.event, c.node) for c in changes]


# --- registering ----------------------------------------------------------------------


def test_first_registration_brings_the_node_up(table: NodeTable) -> None:
    changes = table.register(register(chip_health=(Health.OK, Health.WARNING)), at(0))

    assert events(changes) == [("node.registered", "n1")]
    fields = changes[0].fields
    assert fields["first_time"] is True
    assert fields["accelerator"] == "sim-ascend"
    assert fields["chips"] == 2
    assert fields["health"] == "warning"
    assert fields["hostname"] == "host-n1"
    assert "previous_state" not in fields
    record = table.get("n1")
    assert record is not None
    assert record.state is NodeState.UP
    assert record.registered_at == record.last_seen == record.state_since == at(0).wall
    assert table.is_registered("n1")
    assert table.is_registered("n1", "agent-a")
    assert not table.is_registered("n1", "agent-b")
    assert len(table) == 1


def test_registering_again_while_up_keeps_state_since(table: NodeTable) -> None:
    table.register(register(), at(0))
    changes = table.register(register(), at(5))

    assert events(changes) == [("node.registered", "n1")]
    assert "first_time" not in changes[0].fields
    assert changes[0].fields["previous_state"] == "up"
    assert changes[0].fields["agent_restarted"] is False
    record = table.get("n1")
    assert record.state_since == at(0).wall
    assert record.registered_at == at(5).wall


def test_a_restarted_agent_is_reported_and_its_old_instance_is_refused(table: NodeTable) -> None:
    table.register(register(instance="agent-a"), at(0))
    changes = table.register(register(instance="agent-b"), at(1))

    assert changes[0].fields["agent_restarted"] is True
    with pytest.raises(Unregistered):
        table.heartbeat(heartbeat(instance="agent-a"), at(2))
    assert table.heartbeat(heartbeat(instance="agent-b"), at(2)) == []


def test_an_accelerator_change_is_reported(table: NodeTable) -> None:
    table.register(register(accelerator=Accelerator.SIM_ASCEND), at(0))
    changes = table.register(register(accelerator=Accelerator.SIM_NVIDIA), at(1))
    assert changes[0].fields["previous_accelerator"] == "sim-ascend"
    assert table.get("n1").accelerator is Accelerator.SIM_NVIDIA


# --- heartbeats and loss --------------------------------------------------------------


def test_heartbeats_keep_a_node_alive(table: NodeTable) -> None:
    table.register(register(), at(0))
    for t in range(10, 200, 10):
        assert table.heartbeat(heartbeat(), at(t)) == []
        assert table.expire(at(t + TIMEOUT - 0.001)) == []
    record = table.get("n1")
    assert record.state is NodeState.UP
    assert record.last_seen == at(190).wall


def test_a_silent_node_is_lost_at_exactly_the_timeout_and_not_a_tick_before(table: NodeTable) -> None:
    table.register(register(), at(0))

    assert table.expire(at(TIMEOUT - 0.001)) == []
    assert table.get("n1").state is NodeState.UP

    changes = table.expire(at(TIMEOUT))
    assert events(changes) == [("node.lost", "n1")]
    assert changes[0].fields == {
        "signal": "node_lost",  # so the daemon log replays through `policy explain`
        "previous_state": "up",
        "silent_for_s": TIMEOUT,
        "heartbeat_timeout_s": TIMEOUT,
        "last_seen": at(0).wall,
        "accelerator": "sim-ascend",
        "hostname": "host-n1",
        "reason": "no heartbeat within heartbeat_timeout",
    }
    record = table.get("n1")
    assert record.state is NodeState.LOST
    assert record.state_since == at(TIMEOUT).wall
    assert not table.is_registered("n1")
    assert table.expire(at(100)) == []  # reported once


def test_the_timeout_counts_from_the_last_heartbeat(table: NodeTable) -> None:
    table.register(register(), at(0))
    table.heartbeat(heartbeat(), at(7))
    assert table.expire(at(7 + TIMEOUT - 0.001)) == []
    assert events(table.expire(at(7 + TIMEOUT))) == [("node.lost", "n1")]


def test_heartbeat_from_an_unknown_node_raises_unregistered(table: NodeTable) -> None:
    with pytest.raises(Unregistered):
        table.heartbeat(heartbeat(node="stranger"), at(0))
    assert table.get("stranger") is None


def test_heartbeat_from_the_wrong_agent_instance_is_refused_and_does_not_keep_the_node_alive(
    table: NodeTable,
) -> None:
    table.register(register(instance="agent-a"), at(0))
    with pytest.raises(Unregistered):
        table.heartbeat(heartbeat(instance="impostor"), at(10))
    assert table.get("n1").last_seen == at(0).wall
    assert events(table.expire(at(TIMEOUT))) == [("node.lost", "n1")]


def test_a_lost_node_must_register_again_and_is_reported_recovered(table: NodeTable) -> None:
    table.register(register(), at(0))
    table.expire(at(TIMEOUT))

    with pytest.raises(Unregistered):
        table.heartbeat(heartbeat(), at(20))
    assert table.get("n1").state is NodeState.LOST

    changes = table.register(register(), at(40))
    assert events(changes) == [("node.registered", "n1"), ("node.recovered", "n1")]
    assert changes[0].fields["previous_state"] == "lost"
    assert changes[0].fields["agent_restarted"] is False
    assert changes[1].fields == {"down_for_s": 40 - TIMEOUT}
    record = table.get("n1")
    assert record.state is NodeState.UP
    assert record.state_since == at(40).wall
    assert table.heartbeat(heartbeat(), at(41)) == []


# --- restore after a daemon restart -----------------------------------------------------


def test_restored_live_nodes_become_pending_with_a_full_timeout_from_restore_time(table: NodeTable) -> None:
    restart = at(1000)
    changes = table.restore(
        [
            saved("a", NodeState.UP, state_since=at(0).wall),
            saved("b", NodeState.PENDING, state_since=at(500).wall),
            saved("c", NodeState.LOST, state_since=at(900).wall),
        ],
        restart,
    )

    assert events(changes) == [("node.restored", "*")]
    assert changes[0].fields == {"nodes": 3, "pending": 2, "lost": 1, "left": 0}
    for node in ("a", "b"):
        assert table.get(node).state is NodeState.PENDING
        assert table.get(node).state_since == restart.wall
        assert not table.is_registered(node)  # restored is not registered
    assert table.get("c").state is NodeState.LOST
    assert table.get("c").state_since == at(900).wall
    assert table.next_deadline() == restart.mono + TIMEOUT

    # A restored node must register: its heartbeat is refused.
    with pytest.raises(Unregistered):
        table.heartbeat(heartbeat(node="a", instance="old-agent"), at(1001))

    assert table.expire(at(1000 + TIMEOUT - 0.001)) == []
    lost = table.expire(at(1000 + TIMEOUT))
    assert events(lost) == [("node.lost", "a"), ("node.lost", "b")]
    for change in lost:
        assert change.fields["previous_state"] == "pending"
        assert change.fields["reason"] == "did not re-register after the daemon restarted"
    assert table.get("c").state_since == at(900).wall  # lost stays lost, untouched


def test_restoring_nothing_reports_nothing(table: NodeTable) -> None:
    assert table.restore([], at(0)) == []
    assert table.next_deadline() is None


def test_a_restored_pending_node_that_registers_is_up_without_a_recovery(table: NodeTable) -> None:
    table.restore([saved("n1", NodeState.UP, state_since=at(0).wall)], at(1000))
    changes = table.register(register(), at(1003))
    assert events(changes) == [("node.registered", "n1")]
    assert changes[0].fields["previous_state"] == "pending"
    assert changes[0].fields["agent_restarted"] is True  # new instance vs the saved one
    assert table.get("n1").state is NodeState.UP
    assert table.get("n1").state_since == at(1003).wall
    assert table.expire(at(1000 + TIMEOUT)) == []  # the restore deadline no longer applies


def test_a_restored_lost_node_that_registers_recovers_with_its_saved_downtime(table: NodeTable) -> None:
    table.restore([saved("n1", NodeState.LOST, state_since=at(900).wall)], at(1000))
    changes = table.register(register(), at(1010))
    assert events(changes) == [("node.registered", "n1"), ("node.recovered", "n1")]
    assert changes[1].fields == {"down_for_s": 110.0}


def test_seen_age_uses_the_wall_clock_of_the_last_sighting(table: NodeTable) -> None:
    table.restore([saved("a", NodeState.UP, state_since=at(0).wall, last_seen=at(900).wall)], at(1000))
    assert table.seen_age("a", at(1000)) == 100.0
    table.restore([saved("b", NodeState.UP, state_since=at(0).wall, last_seen=at(2000).wall)], at(1000))
    assert table.seen_age("b", at(1000)) == 0.0  # a clock ahead of ours is not a negative age


# --- ordering and deadlines -----------------------------------------------------------


def test_next_deadline_is_the_oldest_nodes(table: NodeTable) -> None:
    assert table.next_deadline() is None
    table.register(register("a"), at(0))
    table.register(register("b"), at(5))
    assert table.next_deadline() == at(0).mono + TIMEOUT
    table.heartbeat(heartbeat("a"), at(10))
    assert table.next_deadline() == at(5).mono + TIMEOUT
    table.expire(at(100))
    assert table.next_deadline() is None


def test_expire_at_exactly_next_deadline_expires_the_node() -> None:
    table = NodeTable(heartbeat_timeout=15.0)
    table.register(register(), Instant(mono=1.4, wall=1.4))
    deadline = table.next_deadline()
    assert events(table.expire(Instant(mono=deadline, wall=deadline))) == [("node.lost", "n1")]


def test_expire_touches_only_expired_nodes_in_heartbeat_order(table: NodeTable) -> None:
    table.register(register("a"), at(0))
    table.register(register("b"), at(1))
    table.register(register("c"), at(2))
    table.heartbeat(heartbeat("a"), at(3))  # order of silence is now b, c, a
    table.dirty.clear()

    assert events(table.expire(at(1 + TIMEOUT))) == [("node.lost", "b")]
    assert table.dirty == {"b"}
    assert table.get("c").state is NodeState.UP
    assert table.get("a").state is NodeState.UP
    assert events(table.expire(at(2 + TIMEOUT))) == [("node.lost", "c")]
    assert events(table.expire(at(3 + TIMEOUT))) == [("node.lost", "a")]


def test_nodes_silent_together_are_reported_oldest_first(table: NodeTable) -> None:
    for i, node in enumerate(["d", "a", "c", "b"]):
        table.register(register(node), at(i))
    table.heartbeat(heartbeat("d"), at(10))
    assert [node for _, node in events(table.expire(at(100)))] == ["a", "c", "b", "d"]


def test_records_are_sorted_by_node_id(table: NodeTable) -> None:
    for node in ["n3", "n1", "n2"]:
        table.register(register(node), at(0))
    assert [r.node for r in table.records()] == ["n1", "n2", "n3"]


# --- dirty bookkeeping ------------------------------------------------------------------


def test_dirty_marks_every_change_the_store_must_save(table: NodeTable) -> None:
    table.register(register(), at(0))
    assert table.dirty == {"n1"}
    table.dirty.clear()

    table.heartbeat(heartbeat(), at(1))
    assert table.dirty == set(), "an unchanged heartbeat is not worth a write"

    table.heartbeat(heartbeat(chip_health=(Health.OK, Health.ALARM)), at(2))
    assert table.dirty == {"n1"}
    table.dirty.clear()

    table.heartbeat(heartbeat(chip_health=(Health.OK, Health.ALARM), host=HostStatus(health=Health.WARNING)), at(3))
    assert table.dirty == {"n1"}
    table.dirty.clear()

    running = (RunningRank(job="j", rank=0, pid=9),)
    table.heartbeat(
        heartbeat(chip_health=(Health.OK, Health.ALARM), host=HostStatus(health=Health.WARNING), running=running), at(4)
    )
    assert table.dirty == {"n1"}
    table.dirty.clear()

    table.update_chip("n1", ChipStatus(index=0, health=Health.WARNING))
    assert table.dirty == {"n1"}
    table.dirty.clear()

    table.expire(at(4 + TIMEOUT))
    assert table.dirty == {"n1"}


def test_forget_removes_the_node_everywhere(table: NodeTable) -> None:
    table.register(register("a"), at(0))
    table.register(register("b"), at(1))
    assert table.forget("a") is True
    assert table.get("a") is None
    assert "a" not in table.dirty
    assert not table.is_registered("a")
    assert table.next_deadline() == at(1).mono + TIMEOUT
    assert events(table.expire(at(100))) == [("node.lost", "b")]
    assert table.forget("a") is False


# --- chips ----------------------------------------------------------------------------


def test_update_chip_replaces_the_chip_with_that_index(table: NodeTable) -> None:
    table.register(register(chip_health=(Health.OK, Health.OK, Health.OK)), at(0))
    table.update_chip("n1", ChipStatus(index=1, health=Health.CRITICAL, error_codes=("E1",)))
    record = table.get("n1")
    assert [c.health for c in record.chips] == [Health.OK, Health.CRITICAL, Health.OK]
    assert record.chips[1].error_codes == ("E1",)
    assert record.health is Health.CRITICAL


def test_update_chip_adds_an_unknown_index_in_order(table: NodeTable) -> None:
    table.register(register(chip_health=(Health.OK, Health.OK)), at(0))
    table.update_chip("n1", ChipStatus(index=5, health=Health.WARNING))
    table.update_chip("n1", ChipStatus(index=3, health=Health.OK))
    assert [c.index for c in table.get("n1").chips] == [0, 1, 3, 5]


def test_update_chip_of_an_unknown_node_raises(table: NodeTable) -> None:
    with pytest.raises(KeyError):
        table.update_chip("stranger", ChipStatus(index=0, health=Health.OK))


@pytest.mark.parametrize(
    "healths, worst",
    [
        ((), Health.OK),
        ((Health.OK, Health.OK), Health.OK),
        ((Health.OK, Health.WARNING), Health.WARNING),
        ((Health.WARNING, Health.UNKNOWN), Health.UNKNOWN),
        ((Health.UNKNOWN, Health.ALARM), Health.ALARM),
        ((Health.CRITICAL, Health.UNKNOWN, Health.OK), Health.CRITICAL),
    ],
)
def test_record_health_is_the_worst_chip(healths: tuple[Health, ...], worst: Health) -> None:
    record = NodeRecord(node="n", accelerator=Accelerator.CPU, state=NodeState.UP, chips=chips(*healths))
    assert record.health is worst


# --- the liveness invariant -----------------------------------------------------------

_NODES = ["a", "b", "c", "d"]
_ops = st.lists(
    st.tuples(
        st.sampled_from(["heartbeat", "expire"]),
        st.sampled_from(_NODES),
        st.floats(min_value=0.0, max_value=12.0, allow_nan=False),
    ),
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(timeout=st.sampled_from([0.5, 3.0, 5.0, 15.0]), ops=_ops)
def test_a_node_is_lost_iff_silent_for_the_timeout(timeout: float, ops: list) -> None:
    """For any interleaving of heartbeats and expiry checks: expire(now) reports exactly the
    live nodes with now - last heartbeat >= timeout, and a lost node's heartbeat is refused."""
    table = NodeTable(heartbeat_timeout=timeout)
    now = 0.0
    last: dict[str, float] = {}
    for node in _NODES:
        table.register(register(node), Instant(now, now))
        last[node] = now
    lost: set[str] = set()

    for op, node, step in ops:
        now += step
        instant = Instant(now, 1_700_000_000.0 + now)
        if op == "heartbeat":
            if node in lost:
                with pytest.raises(Unregistered):
                    table.heartbeat(heartbeat(node), instant)
            else:
                table.heartbeat(heartbeat(node), instant)
                last[node] = now
        else:
            expected = {n for n, seen in last.items() if n not in lost and now - seen >= timeout}
            reported = [c.node for c in table.expire(instant)]
            assert len(reported) == len(set(reported))
            assert set(reported) == expected
            lost |= expected
        alive = [seen for n, seen in last.items() if n not in lost]
        assert table.next_deadline() == (min(alive) + timeout if alive else None)

    for node in _NODES:
        assert table.get(node).state is (NodeState.LOST if node in lost else NodeState.UP)
