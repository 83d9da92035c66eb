"""What a peer sends cannot rewrite the daemon's history, take another node's route, or
make the daemon blame nodes for its own pause; big clusters page their status. Pure:
the Cluster with literal times."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from supervisor.core.cluster import Cluster, ToNode, ToPeer
from supervisor.core.control import STATUS_PAGE_LIMIT
from supervisor.daemon.store import Store
from supervisor.shared.paths import PathEscape, inside
from supervisor.shared.protocol import (
    MAX_REPLY_BYTES,
    Ack,
    ChipStatus,
    CtlReply,
    Goodbye,
    HostStatus,
    Register,
    decode,
    encode,
)
from supervisor.shared.statusview import StatusNode, decode_status_reply
from supervisor.shared.vocab import Accelerator, Health, NodeState
from tests.test_cluster_core import CLIENT, at, ctl, deliver, event, heartbeat, only_reply, register

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def cluster() -> Cluster:
    from tests.test_cluster_core import CONFIG, T0

    return Cluster(CONFIG, instance="daemon-1", started=T0)


def test_event_fields_cannot_override_the_records_node_job_or_event(cluster: Cluster) -> None:
    deliver(cluster, register("n1"), at(0))
    msg = event("ev-1", node="n1", name="signal.crash", job="gpt", rank=1,
                fields={"node": "victim", "job": "other", "event": "node.lost", "event_id": "forged", "pattern": "x"})
    change = deliver(cluster, msg, at(1)).changes[0]
    assert change.node == "n1" and change.event == "signal.crash"
    assert change.fields["job"] == "gpt" and change.fields["event_id"] == "ev-1"
    assert "node" not in change.fields and "event" not in change.fields
    assert change.fields["pattern"] == "x"  # the agent's own fields stay


def test_an_event_stamped_in_the_future_is_timed_on_arrival_and_says_so(cluster: Cluster) -> None:
    deliver(cluster, register("n1"), at(0))
    change = deliver(cluster, event("ev-1", observed_at=at(10).wall + 3600), at(10)).changes[0]
    assert change.fields["observed_at"] == at(10).wall
    assert change.fields["clock_skew_s"] == 3600.0 and change.fields["detection_latency_s"] == 0.0


def test_a_register_from_another_connection_takes_the_route_and_the_old_one_is_told_to_register(cluster: Cluster) -> None:
    deliver(cluster, register("n1"), at(0), route=b"conn-1")
    deliver(cluster, register("n1"), at(1), route=b"conn-2")  # the agent restarted
    assert cluster.route_of("n1") == b"conn-2"
    out = deliver(cluster, heartbeat("n1"), at(2), route=b"conn-1")
    (send,) = out.sends
    assert isinstance(send, ToPeer) and send.route == b"conn-1"
    assert isinstance(send.message, Ack) and send.message.error == "unregistered"


def test_commands_go_to_the_connection_the_node_registered_from(cluster: Cluster) -> None:
    deliver(cluster, register("n1"), at(0), route=b"conn-1")
    out = cluster.on_ctl_request(CLIENT, ctl("inject", node="n1", fault="critical"), at(1))
    (send,) = out.sends
    assert isinstance(send, ToNode) and send.node == "n1"
    assert cluster.route_of(send.node) == b"conn-1"


def test_a_goodbye_makes_the_node_left_not_lost(cluster: Cluster) -> None:
    deliver(cluster, register("n1"), at(0))
    out = deliver(cluster, Goodbye(id="g", ts=0.0, node="n1", agent_instance="agent-n1"), at(1))
    assert [c.event for c in out.changes] == ["node.left"]
    assert cluster.nodes.get("n1").state is NodeState.LEFT
    assert cluster.tick(at(100)).changes == []  # never lost afterwards
    assert cluster.route_of("n1") is None


def test_a_goodbye_from_a_replaced_agent_instance_is_ignored(cluster: Cluster) -> None:
    deliver(cluster, register("n1"), at(0))
    out = deliver(cluster, Goodbye(id="g", ts=0.0, node="n1", agent_instance="an-older-instance"), at(1))
    assert out.changes == [] and cluster.nodes.get("n1").state is NodeState.UP


def test_after_the_daemon_stalls_no_node_is_lost_for_it(cluster: Cluster) -> None:
    deliver(cluster, register("n1"), at(0))
    deliver(cluster, register("n2"), at(0))
    # SIGSTOP for 60 s (timeout 15 s): the loop notices the gap before anything else.
    out = cluster.on_stall(60.0, at(60))
    assert [c.event for c in out.changes] == ["daemon.stalled"]
    assert out.changes[0].fields["nodes_rearmed"] == 2
    assert cluster.tick(at(60.5)).changes == []
    # A node that really is gone is still found, a full timeout later.
    deliver(cluster, heartbeat("n1"), at(70))
    lost = [c.node for c in cluster.tick(at(76)).changes if c.event == "node.lost"]
    assert lost == ["n2"]


def test_a_node_is_not_lost_while_its_heartbeat_may_wait_in_the_daemons_own_backlog(cluster: Cluster) -> None:
    deliver(cluster, register("n1"), at(0))
    deliver(cluster, register("n2"), at(0))
    deliver(cluster, heartbeat("n2"), at(10))
    # The queue was last empty at 12 (n1 was not yet overdue then): its heartbeat may be in it.
    backlog_since = at(12).mono
    assert cluster.tick(at(16), backlog_since).changes == []
    assert cluster.nodes.deferred == 1
    # Read at last: n1 is fresh; n2 is held back too, then read.
    deliver(cluster, heartbeat("n1"), at(20))
    assert cluster.tick(at(26), backlog_since).changes == [] and cluster.nodes.deferred == 1
    deliver(cluster, heartbeat("n2"), at(27))
    assert cluster.tick(at(28), backlog_since).changes == [] and cluster.nodes.deferred == 0


def test_a_dead_node_is_still_lost_under_a_backlog_that_never_ends(cluster: Cluster) -> None:
    deliver(cluster, register("n1"), at(0))
    # At most one more heartbeat_timeout (15 s) for the backlog: lost at 30, not before.
    assert cluster.tick(at(29.9), at(1).mono).changes == []
    lost = [c for c in cluster.tick(at(30), at(1).mono).changes if c.event == "node.lost"]
    assert [c.node for c in lost] == ["n1"] and lost[0].fields["silent_for_s"] == 30.0


def test_a_node_overdue_before_the_backlog_began_is_lost_at_once(cluster: Cluster) -> None:
    deliver(cluster, register("n1"), at(0))
    deliver(cluster, register("n2"), at(10))
    # The queue was empty at 16, when n1 was already overdue: nothing of its can be waiting.
    lost = [c.node for c in cluster.tick(at(17), at(16).mono).changes if c.event == "node.lost"]
    assert lost == ["n1"] and cluster.nodes.deferred == 0
    # Without a backlog the timeout is exact.
    assert [c.node for c in cluster.tick(at(25)).changes if c.event == "node.lost"] == ["n2"]


def _big_register(i: int) -> Register:
    chips = tuple(ChipStatus(index=c, health=Health.OK, temperature_c=40.0, memory_used_mb=1000, memory_total_mb=65536)
                  for c in range(8))
    return Register(id=f"r{i}", ts=0.0, node=f"node-{i:05d}", accelerator=Accelerator.ASCEND, chips=chips,
                    host=HostStatus(health=Health.OK, mem_used_pct=10.0, load1=1.0), agent_version="0.1.0",
                    agent_instance=f"a{i}", hostname=f"host-{i}", pid=100 + i)


@pytest.mark.timeout(120)
def _nodes(reply: CtlReply) -> list[StatusNode]:
    """A status reply's nodes as the CLI reads them (the daemon puts them in as bytes)."""
    page = decode_status_reply(encode(reply)).result
    assert page is not None
    return page.nodes


def test_status_of_ten_thousand_eight_chip_nodes_comes_in_pages_under_the_reply_limit(cluster: Cluster) -> None:
    for i in range(10_000):
        deliver(cluster, _big_register(i), at(0))
    seen, offset, pages = [], 0, 0
    while offset is not None:
        reply = only_reply(cluster.on_ctl_request(CLIENT, ctl("status", offset=offset), at(1)))
        assert len(encode(reply)) < MAX_REPLY_BYTES
        decode(encode(reply), MAX_REPLY_BYTES)  # as the CLI reads it (it refused >10,000 items)
        seen += [n.node for n in _nodes(reply)]
        offset = reply.result["page"]["next_offset"]
        pages += 1
    assert len(seen) == len(set(seen)) == 10_000
    assert pages == -(-10_000 // STATUS_PAGE_LIMIT)
    assert reply.result["summary"]["nodes"] == 10_000


@pytest.mark.timeout(120)
def test_a_status_page_of_nodes_with_many_chips_stays_under_the_reply_limit(cluster: Cluster) -> None:
    """A page is bounded by its bytes as well as its node count: 1,000 nodes of 64 chips
    would be ~19 MB, which the CLI refuses."""
    chips = tuple(ChipStatus(index=c, health=Health.OK, temperature_c=40.0, memory_used_mb=1000, memory_total_mb=65536,
                             reason="r" * 100) for c in range(64))
    for i in range(1_500):
        deliver(cluster, msgspec.structs.replace(_big_register(i), chips=chips), at(0))
    seen, offset = [], 0
    while offset is not None:
        reply = only_reply(cluster.on_ctl_request(CLIENT, ctl("status", offset=offset), at(1)))
        assert len(encode(reply)) < MAX_REPLY_BYTES
        seen += [n.node for n in _nodes(reply)]
        offset = reply.result["page"]["next_offset"]
    assert len(seen) == len(set(seen)) == 1_500


def test_nodes_gone_for_over_an_hour_leave_the_default_view_but_not_the_summary(cluster: Cluster) -> None:
    deliver(cluster, register("n1"), at(0))
    deliver(cluster, register("n2"), at(0))
    deliver(cluster, Goodbye(id="g", ts=0.0, node="n2", agent_instance="agent-n2"), at(1))
    deliver(cluster, heartbeat("n1"), at(4000))
    reply = only_reply(cluster.on_ctl_request(CLIENT, ctl("status"), at(4000)))
    default = reply.result
    assert [n.node for n in _nodes(reply)] == ["n1"]
    assert default["summary"]["nodes"] == 2 and default["page"]["hidden_gone"] == 1
    everything = only_reply(cluster.on_ctl_request(CLIENT, ctl("status", all=True), at(4000)))
    assert [n.node for n in _nodes(everything)] == ["n1", "n2"]


def test_node_forget_removes_a_node_that_is_not_up(cluster: Cluster) -> None:
    deliver(cluster, register("n1"), at(0))
    refused = only_reply(cluster.on_ctl_request(CLIENT, ctl("node_forget", node="n1"), at(1)))
    assert (refused.ok, refused.code) == (False, "node_up")
    cluster.tick(at(100))  # lost
    reply = only_reply(cluster.on_ctl_request(CLIENT, ctl("node_forget", node="n1"), at(101)))
    assert reply.ok and reply.result == {"node": "n1", "forgotten": True, "was": "lost"}
    assert cluster.nodes.get("n1") is None and cluster.nodes.forgotten == {"n1"}


@pytest.mark.parametrize("args", [{"count": 10**23}, {"chip": 10**23}, {"count": 0}, {"chip": -1}])
def test_inject_numbers_out_of_range_are_a_bad_request(cluster: Cluster, args: dict) -> None:
    deliver(cluster, register("n1"), at(0))
    reply = only_reply(cluster.on_ctl_request(CLIENT, ctl("inject", node="n1", fault="ecc", **args), at(1)))
    assert isinstance(reply, CtlReply) and (reply.ok, reply.code) == (False, "bad_request")


@pytest.mark.parametrize("job", ["/tmp/x", "../../etc", "a/b", "Gpt", "x" * 64, ""])
def test_jobs_refuse_names_that_are_not_plain_lowercase_names(cluster: Cluster, job: str) -> None:
    spec = {"name": job, "command": ["x"], "workdir": "/w", "checkpoint_dir": "/c",
            "pools": {"ascend": {"nodes": 1, "ranks_per_node": 1}}}
    reply = only_reply(cluster.on_ctl_request(CLIENT, ctl("job_submit", spec=spec), at(1)))
    assert (reply.ok, reply.code) == (False, "bad_request")


@pytest.mark.parametrize("name", ["..", ".", "/abs", "a/../../b", "", "x\0y"])
def test_paths_built_from_names_never_leave_their_directory(tmp_path: Path, name: str) -> None:
    with pytest.raises(PathEscape):
        inside(tmp_path, name)


def test_a_name_through_a_symlink_out_of_the_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "evil").symlink_to("/tmp")
    with pytest.raises(PathEscape):
        inside(tmp_path / "logs", "evil", "rank-0.log")
    assert inside(tmp_path / "logs", "gpt", "rank-0.log") == tmp_path / "logs" / "gpt" / "rank-0.log"


def test_the_store_writes_any_event_fields_and_raises_nothing_else(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    store.save([], [(1.0, "signal.crash", {"node": "n1", b"bytes-key": 1, "nan": float("nan"), "obj": object()})])
    (saved,) = store.events()
    assert saved["event"] == "signal.crash" and saved["node"] == "n1"
    assert saved["b'bytes-key'"] == 1 and saved["nan"] == "nan"
    store.close()


def test_a_forgotten_node_is_deleted_from_the_store(tmp_path: Path) -> None:
    from supervisor.core.nodes import NodeRecord

    store = Store(tmp_path / "state.db")
    store.save([NodeRecord(node="n1", accelerator=Accelerator.CPU, state=NodeState.LOST)], [])
    assert [r.node for r in store.load_nodes()] == ["n1"]
    store.save([], [], deleted=["n1"])
    assert store.load_nodes() == []
    store.close()


def test_status_nodes_carry_the_agents_handler_failures(cluster: Cluster) -> None:
    deliver(cluster, register("n1"), at(0))
    hb = msgspec.structs.replace(heartbeat("n1"), handler_failures=3)
    deliver(cluster, hb, at(1))
    status = only_reply(cluster.on_ctl_request(CLIENT, ctl("status"), at(2)))
    assert _nodes(status)[0].handler_failures == 3


def test_a_register_repeated_by_the_same_agent_on_its_connection_is_taken_as_a_heartbeat(cluster: Cluster) -> None:
    """A storm of repeated registers (each a log line, a store write and the jobs' view)
    fed itself while the daemon was behind: a repeat is acknowledged as a register and
    costs what a heartbeat does."""
    deliver(cluster, register("n1"), at(0), route=b"conn-1")
    critical = tuple(ChipStatus(index=i, health=Health.CRITICAL) for i in range(2))
    again = msgspec.structs.replace(register("n1"), id="reg-again", chips=critical)
    out = deliver(cluster, again, at(1), route=b"conn-1")
    assert out.changes == []
    (ack,) = [s.message for s in out.sends]
    assert isinstance(ack, Ack) and ack.ok and ack.ref == "reg-again" and ack.detail["daemon_instance"] == "daemon-1"
    assert cluster.nodes.get("n1").chips == critical and "n1" in cluster.nodes.dirty  # health changed: saved
    assert cluster.nodes.get("n1").registered_at == at(0).wall
    # Another connection, or another agent instance, is a registration as before.
    assert [c.event for c in deliver(cluster, register("n1"), at(2), route=b"conn-2").changes] == ["node.registered"]
    other = msgspec.structs.replace(register("n1"), agent_instance="agent-n1-restarted")
    assert [c.event for c in deliver(cluster, other, at(3), route=b"conn-2").changes] == ["node.registered"]
    # A node that was lost registers again in full (and is recovered).
    cluster.tick(at(100))
    assert [c.event for c in deliver(cluster, other, at(101), route=b"conn-2").changes] == [
        "node.registered", "node.recovered"]
