"""What keeps the daemon's loop cheap at 10,000 nodes (bench/scale.py), and that it
still sees what it must: pure, literal times."""

from __future__ import annotations

import msgspec
import pytest

from supervisor.core.cluster import Cluster
from supervisor.policy.directory import PolicyDirectory
from supervisor.policy.shipped import shipped_policy_dir
from supervisor.shared.protocol import ChipStatus, Heartbeat
from supervisor.shared.vocab import Health
from tests.test_cluster_core import CLIENT, CONFIG, T0, at, ctl, deliver, heartbeat, only_reply, register

pytestmark = pytest.mark.timeout(30)


def _chips(*health: Health, temperature: float = 40.0) -> tuple[ChipStatus, ...]:
    return tuple(ChipStatus(index=i, health=h, temperature_c=temperature) for i, h in enumerate(health))


def _beat(node: str, chips: tuple[ChipStatus, ...], seq: int = 1) -> Heartbeat:
    return msgspec.structs.replace(heartbeat(node), id=f"hb-{node}-{seq}", seq=seq, chips=chips,
                                   running=register(node).running)


def _three_nodes_and_the_shipped_policy() -> Cluster:
    cluster = Cluster(CONFIG, instance="d", started=T0)
    cluster.policies = PolicyDirectory(shipped_policy_dir())
    cluster.policies.load_all(T0.wall)
    for node in ("n1", "n2", "n3"):
        deliver(cluster, register(node), at(0))
    return cluster


def test_readings_alone_leave_the_placement_version_and_chip_health_moves_it() -> None:
    cluster = Cluster(CONFIG, instance="d", started=T0)
    deliver(cluster, register("n1"), at(0))
    version = cluster.nodes.placement_version
    deliver(cluster, _beat("n1", _chips(Health.OK, Health.OK, temperature=41.0)), at(1))
    deliver(cluster, _beat("n1", _chips(Health.OK, Health.OK, temperature=57.5), seq=2), at(2))
    assert cluster.nodes.placement_version == version
    deliver(cluster, _beat("n1", _chips(Health.OK, Health.CRITICAL), seq=3), at(3))
    assert cluster.nodes.placement_version > version
    version = cluster.nodes.placement_version
    cluster.nodes.drain("n1", "maintenance")
    assert cluster.nodes.placement_version > version
    version = cluster.nodes.placement_version
    cluster.tick(at(100))  # n1 is lost
    assert cluster.nodes.placement_version > version


def test_pool_health_follows_chip_health_and_drains_without_recounting_every_turn() -> None:
    cluster = _three_nodes_and_the_shipped_policy()
    spec = {"name": "big", "command": ["python", "train.py"], "workdir": "/w", "checkpoint_dir": "/w/ckpt",
            "policy": "default", "pools": {"ascend": {"nodes": 5, "ranks_per_node": 1}}}
    assert only_reply(cluster.on_ctl_request(CLIENT, ctl("job_submit", spec=spec), at(0))).ok  # waits: 3 of 5 nodes

    def health(now: float) -> int:
        for node in ("n1", "n2", "n3"):
            if cluster.nodes.is_registered(node):
                deliver(cluster, _beat(node, cluster.nodes.get(node).chips, seq=int(now)), at(now))
        cluster.tick(at(now))
        return cluster.jobs._pool_health_cache["ascend"]

    assert health(1) == 3
    counted = cluster.jobs._pool_health_cache
    assert health(2) == 3 and cluster.jobs._pool_health_cache is counted  # nothing moved: not counted again
    deliver(cluster, _beat("n2", _chips(Health.CRITICAL, Health.CRITICAL), seq=3), at(2.5))
    assert health(3) == 2
    cluster.nodes.drain("n3", "maintenance")
    assert health(4) == 1
    cluster.nodes.drain("n3", None)
    assert health(5) == 2
    deliver(cluster, _beat("n2", _chips(Health.OK, Health.WARNING), seq=6), at(5.5))
    assert health(6) == 3


def test_a_heartbeats_readings_and_time_are_saved_within_the_period_and_changes_at_once() -> None:
    """Regression: every heartbeat's readings and time were written every second, one row
    update per node (50 µs of the loop per heartbeat at 10,000 nodes)."""
    cluster = Cluster(CONFIG, instance="d", started=T0)
    table = cluster.nodes
    deliver(cluster, register("n1"), at(0))
    deliver(cluster, register("n2"), at(0))
    table.saved(sorted(table.dirty))
    table.dirty.clear()
    deliver(cluster, _beat("n1", _chips(Health.OK, Health.OK, temperature=61.0)), at(1))  # new readings
    deliver(cluster, _beat("n2", table.get("n2").chips), at(2))  # heard from, nothing new
    assert table.dirty == set()
    assert table.due_saves(at(10.9).mono, 10.0, 100) == ([], [])
    assert table.due_saves(at(11).mono, 10.0, 100) == (["n1"], [])
    assert table.due_saves(at(12).mono, 10.0, 100) == (["n1"], ["n2"])
    assert table.due_saves(at(12).mono, 10.0, 1) == (["n1"], [])  # oldest first, bounded per flush
    table.saved(["n1", "n2"])
    assert table.due_saves(at(100).mono, 10.0, 100) == ([], [])
    deliver(cluster, _beat("n2", _chips(Health.OK, Health.ALARM), seq=2), at(101))  # health: at once
    assert table.dirty == {"n2"}


def test_the_status_summary_is_counted_once_per_change_and_still_follows_every_change() -> None:
    cluster = Cluster(CONFIG, instance="d", started=T0)
    for node in ("n1", "n2"):
        deliver(cluster, register(node), at(0))

    def summary(now: float) -> dict:
        pages, offset = [], 0
        while offset is not None:
            page = only_reply(cluster.on_ctl_request(CLIENT, ctl("status", offset=offset, limit=1), at(now))).result
            pages.append(page)
            offset = page["page"]["next_offset"]
        assert len(pages) >= 2 and all(p["summary"] == pages[0]["summary"] for p in pages)
        return pages[0]["summary"]

    assert summary(1)["states"]["up"] == 2 and summary(1)["chips"]["ok"] == 4
    counted = cluster.nodes.census()[1]
    deliver(cluster, _beat("n1", _chips(Health.OK, Health.OK, temperature=60.0)), at(2))
    assert cluster.nodes.census()[1] is counted  # readings alone: not counted again
    deliver(cluster, _beat("n1", _chips(Health.OK, Health.CRITICAL), seq=2), at(3))
    assert summary(3)["chips"] == {**summary(1)["chips"], "ok": 3, "critical": 1}
    deliver(cluster, heartbeat("n1"), at(10))
    cluster.tick(at(16))  # n2 lost (timeout 15 s)
    assert summary(16)["states"]["lost"] == 1 and summary(16)["states"]["up"] == 1
    deliver(cluster, register("n3"), at(16))
    assert summary(17)["nodes"] == 3
    # The caller gets its own copy: a reply cannot change the cached counts.
    summary(17)["states"]["up"] = 99
    assert summary(17)["states"]["up"] == 2


def test_a_pending_job_is_placed_again_only_when_something_placement_reads_changed(monkeypatch) -> None:
    """Regression: a job left pending (a node lost, no room) was placed again on every
    turn of the daemon's loop, each walking every node: at 10,000 nodes ~80 % of the
    loop (py-spy), so the daemon fell behind its heartbeats for good."""
    from supervisor.core import scheduler

    placements = []
    real_place = scheduler.place
    monkeypatch.setattr(scheduler, "place", lambda *a: placements.append(a) or real_place(*a))
    cluster = _three_nodes_and_the_shipped_policy()
    spec = {"name": "big", "command": ["python", "train.py"], "workdir": "/w", "checkpoint_dir": "/w/ckpt",
            "policy": "default", "pools": {"ascend": {"nodes": 4, "ranks_per_node": 1}}}
    job = only_reply(cluster.on_ctl_request(CLIENT, ctl("job_submit", spec=spec), at(0))).result["job"]
    for t in range(1, 11):
        for node in ("n1", "n2", "n3"):
            deliver(cluster, _beat(node, cluster.nodes.get(node).chips, seq=t), at(t))  # readings alone
        cluster.tick(at(t))
    assert len(placements) <= 2  # the submit's, the first tick's; not one per tick
    before = len(placements)
    deliver(cluster, register("n4"), at(11))  # a node more: placed again, and now it fits
    cluster.tick(at(11))
    assert len(placements) == before + 1
    assert cluster.jobs.records[job].state.value == "starting"
