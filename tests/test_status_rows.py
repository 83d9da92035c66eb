"""`status` rows as bytes (`StatusRows`): each row is exactly what msgspec writes for
the node's `StatusNode`, and stays so through every change a node goes through; the
kept head is reused only while nothing it was made from changed. Pure."""

from __future__ import annotations

import msgspec
import pytest

from supervisor.core.cluster import Cluster
from supervisor.core.nodes import NodeRecord
from supervisor.shared.protocol import ChipStatus, Heartbeat, HostStatus, RunningRank, encode
from supervisor.shared.statusview import StatusNode, decode_status_reply
from supervisor.shared.vocab import Health
from tests.test_cluster_core import CLIENT, CONFIG, HOST, T0, at, ctl, deliver, event, only_reply, register

pytestmark = pytest.mark.timeout(30)


def _as_struct(record: NodeRecord, age: float) -> bytes:
    """What the page held before the rows were kept: the StatusNode, encoded."""
    return msgspec.msgpack.encode(StatusNode(
        node=record.node, state=record.state, state_since=record.state_since, health=record.health,
        accelerator=record.accelerator, hostname=record.hostname, agent_version=record.agent_version,
        agent_pid=record.pid, registered_at=record.registered_at, last_heartbeat=record.last_seen,
        last_heartbeat_age_s=age, handler_failures=record.handler_failures, chips=record.chips, host=record.host,
        running=record.running))


def _beat(node: str, seq: int, chips: tuple[ChipStatus, ...], running: tuple[RunningRank, ...] = (),
          host: HostStatus = HOST, failures: int = 0) -> Heartbeat:
    return Heartbeat(id=f"hb-{seq}", ts=T0.wall, node=node, seq=seq, agent_instance=f"agent-{node}", chips=chips,
                     host=host, running=running, handler_failures=failures)


def _rows(cluster: Cluster, now: float) -> dict[str, dict]:
    """Every row of a status at `now`, as the CLI reads it, checked byte for byte."""
    reply = only_reply(cluster.on_ctl_request(CLIENT, ctl("status", all=True), at(now)))
    typed = decode_status_reply(encode(reply)).result
    assert typed is not None
    rows = {}
    for node in typed.nodes:
        record = cluster.nodes.get(node.node)
        assert msgspec.msgpack.encode(node) == _as_struct(record, node.last_heartbeat_age_s)
        rows[node.node] = msgspec.to_builtins(node)
    return rows


def test_a_row_follows_every_change_of_its_node_and_is_the_bytes_of_its_status_node() -> None:
    cluster = Cluster(CONFIG, instance="d", started=T0)
    deliver(cluster, register("n1"), at(0))
    deliver(cluster, register("n2", chips=3), at(0))
    first = _rows(cluster, 1)
    assert first["n1"]["last_heartbeat_age_s"] == 1.0 and first["n1"]["running"][0]["step"] == 3
    assert _rows(cluster, 2)["n1"]["last_heartbeat_age_s"] == 2.0  # the age is made for each request

    ok = tuple(ChipStatus(index=i, health=Health.OK, temperature_c=40.0) for i in range(2))
    deliver(cluster, _beat("n1", 1, ok), at(3))  # new readings, ranks gone
    row = _rows(cluster, 3)["n1"]
    assert row["chips"][0]["temperature_c"] == 40.0 and not row["running"] and row["last_heartbeat"] == at(3).wall
    hot = tuple(ChipStatus(index=i, health=Health.OK, temperature_c=80.0) for i in range(2))
    running = (RunningRank(job="j", rank=0, pid=900, step=9),)
    deliver(cluster, _beat("n1", 2, hot, running, failures=2), at(4))
    row = _rows(cluster, 4)["n1"]
    assert (row["chips"][1]["temperature_c"], row["running"][0]["step"], row["handler_failures"]) == (80.0, 9, 2)
    warning = HostStatus(health=Health.WARNING)
    deliver(cluster, _beat("n1", 3, hot, running, host=warning, failures=2), at(5))
    assert _rows(cluster, 5)["n1"]["host"]["health"] == "warning"
    # Only the ranks' steps moved (the chips are the very same tuple, as `HeartbeatDecoder`
    # hands over for unchanged bytes).
    deliver(cluster, _beat("n1", 4, hot, (RunningRank(job="j", rank=0, pid=900, step=10),), warning, 2), at(6))
    assert _rows(cluster, 6)["n1"]["running"][0]["step"] == 10
    deliver(cluster, _beat("n1", 5, hot, (RunningRank(job="j", rank=0, pid=900, step=10),), warning, 3), at(6))
    assert _rows(cluster, 6)["n1"]["handler_failures"] == 3

    # A chip's health from an event, ahead of the next heartbeat: the node's health too.
    deliver(cluster, event(name="chip.health_changed", fields={"status": {"index": 0, "health": "critical"}}), at(6))
    row = _rows(cluster, 6)["n1"]
    assert row["health"] == "critical" and row["chips"][0]["health"] == "critical"
    # Lost, then back with a new agent (a new record).
    cluster.tick(at(30))
    rows = _rows(cluster, 30)
    assert rows["n1"]["state"] == "lost" and rows["n1"]["state_since"] == at(30).wall
    deliver(cluster, register("n1"), at(31))
    row = _rows(cluster, 31)["n1"]
    assert (row["state"], row["registered_at"], row["health"]) == ("up", at(31).wall, "ok")
    assert _rows(cluster, 31)["n2"]["state"] == "lost"


def test_the_head_is_reused_until_the_node_changes_state_or_chip_health_and_a_forgotten_node_leaves_nothing() -> None:
    cluster = Cluster(CONFIG, instance="d", started=T0)
    deliver(cluster, register("n1"), at(0))
    record = cluster.nodes.get("n1")
    rows = cluster.status_rows
    version = cluster.nodes.placement_version
    first = rows.row(record, 1.0, version)
    head = rows._head["n1"]
    record.last_seen = at(1).wall  # what a heartbeat changes
    second = rows.row(record, 0.5, version)
    assert rows._head["n1"] is head and second != first and second == _as_struct(record, 0.5)
    warm = tuple(ChipStatus(index=i, health=Health.OK, temperature_c=50.0) for i in range(2))
    deliver(cluster, _beat("n1", 1, warm), at(2))  # readings only: the placement version stays
    assert cluster.nodes.placement_version == version
    assert rows.row(record, 0.0, version) == _as_struct(record, 0.0) and rows._head["n1"] is head
    deliver(cluster, _beat("n1", 2, (ChipStatus(index=0, health=Health.ALARM),)), at(3))
    assert cluster.nodes.placement_version != version
    assert b"alarm" in rows.row(record, 0.0, cluster.nodes.placement_version) and rows._head["n1"] is not head
    cluster.forget("n1")
    assert "n1" not in rows._head
