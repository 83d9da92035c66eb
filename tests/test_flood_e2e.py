"""A flood of idle TCP connections against a real daemon held to a low descriptor limit:
the daemon says it is running short, keeps serving its registered agent, survives a
control request made while every descriptor is taken (libzmq aborts the process when an
ipc accept fails with EMFILE: the daemon closes its ipc control listener meanwhile),
drops every connection that never completes a handshake, and says when it has recovered."""

from __future__ import annotations

import shutil
from pathlib import Path

import psutil
import pytest

from supervisor.cli.client import request
from supervisor.cli.localcluster import IdleFlood, LocalCluster, free_tcp_endpoint, raise_own_descriptor_limit, wait_for
from tests.conftest import trainguard

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

LIMIT = 256  # the daemon's RLIMIT_NOFILE, soft and hard
# Idle connections: more than the daemon can hold at once, but no more than it can hold
# plus its listen backlog (libzmq's default, 100). Past that the kernel drops the client's
# final ACK and the client believes in a connection the daemon never had, which no
# deadline of the daemon's can close.
FLOOD = 400  # beyond the limit and the listen backlog, so the daemon stays pressed on a loaded machine
HANDSHAKE_S = 5.0  # supervisor.daemon.loop._HANDSHAKE_MS


def _flood_and_check(cluster: LocalCluster, node: str, late_keys: Path | None = None) -> None:
    daemon = psutil.Process(cluster.procs["daemon"].pid)
    raise_own_descriptor_limit(FLOOD + 256)
    flood = IdleFlood(cluster.bind, FLOOD)
    try:
        peak = 0

        def short_of_descriptors() -> bool:
            nonlocal peak
            flood.poll()
            peak = max(peak, daemon.num_fds())
            return bool(cluster.find_events("daemon", "daemon.descriptors_low"))

        wait_for(short_of_descriptors, 40, "daemon.descriptors_low during the flood", interval=0.2)
        assert peak >= LIMIT * 0.9, peak

        # Every descriptor is taken: the ipc control listener is closed, so this request
        # waits (the CLI retries) instead of crashing the daemon, and is answered once
        # the handshake deadline has freed half the limit, while the flood still goes on.
        (low,) = cluster.find_events("daemon", "daemon.descriptors_low")
        assert low["control"] == "paused" and low["limit"] == LIMIT
        status = request(cluster.ctl, "status", timeout=20)
        assert flood.poll() > 0, "the flood was over before status was answered"
        assert [n["state"] for n in status["nodes"] if n["node"] == node] == ["up"]
        (ok,) = cluster.find_events("daemon", "daemon.descriptors_ok")
        assert ok["control"] == "served"

        # Every connection the daemon accepted is dropped by its handshake deadline: its
        # descriptors come back. (Those still in the kernel's accept backlog, or in SYN
        # retry, are the kernel's: how soon libzmq takes them up varies with the load.)
        wait_for(lambda: flood.poll(0.2) < FLOOD and daemon.num_fds() < LIMIT // 2, 60,
                 "the daemon to drop the idle connections it accepted")
        assert flood.dropped > 0 and flood.failed == 0, (flood.dropped, flood.failed)
        assert flood.first_dropped_at - flood.started >= HANDSHAKE_S
    finally:
        flood.close()

    assert cluster.procs["daemon"].alive()
    # The agent port still takes new connections after the flood: a new agent registers.
    late = f"{node}-late"
    daemon_keys, cluster.keys_dir = cluster.keys_dir, late_keys or cluster.keys_dir
    cluster.start_agent(late, "sim-ascend", 1)
    cluster.keys_dir = daemon_keys
    cluster.wait_nodes("up", [late], timeout=60)
    # The registered agent was served throughout: its heartbeats were acked, it never
    # went lost, and it never lost the daemon.
    assert cluster.node(node)["state"] == "up"
    assert not cluster.find_events("daemon", "node.lost")
    assert not cluster.find_events(node, "agent.daemon_unreachable")
    assert request(cluster.ctl, "status", timeout=5)


def test_a_flood_of_idle_connections_past_the_descriptor_limit_is_survived_and_reported(make_cluster):
    cluster = make_cluster()
    assert cluster.ctl.startswith("ipc://")  # the control socket is not reachable over tcp
    cluster.bind = free_tcp_endpoint()
    cluster.start_daemon(descriptor_limit=LIMIT)
    cluster.start_agent("n1", "sim-ascend", 1)
    cluster.wait_nodes("up", ["n1"], timeout=30)
    (started,) = cluster.find_events("daemon", "daemon.started")
    assert started["descriptor_limit"] == LIMIT

    _flood_and_check(cluster, "n1")


def test_a_plain_text_flood_against_a_curve_daemon_is_survived_and_reported(tmp_path: Path, make_cluster):
    keys = tmp_path / "keys-daemon"
    node = tmp_path / "keys-good"
    late = tmp_path / "keys-good-late"
    for directory, name in ((keys, "daemon"), (node, "agent"), (late, "agent")):
        result = trainguard("keys", "generate", str(directory), "--name", name)
        assert result.returncode == 0, result.stderr
    (keys / "agents").mkdir()
    for directory, allowed in ((node, "good"), (late, "good-late")):
        shutil.copy(keys / "daemon.key", directory / "daemon.key")
        shutil.copy(directory / "agent.key", keys / "agents" / f"{allowed}.key")

    cluster = make_cluster(keys_dir=keys)
    assert cluster.ctl.startswith("ipc://")
    cluster.bind = free_tcp_endpoint()
    cluster.start_daemon(descriptor_limit=LIMIT)
    cluster.keys_dir = node
    cluster.start_agent("good", "sim-ascend", 1)
    cluster.keys_dir = keys
    cluster.wait_nodes("up", ["good"], timeout=30)

    _flood_and_check(cluster, "good", late_keys=late)
    # Connections that never spoke are not reported one by one: at most one refusal
    # line per minute for the endpoint (rate-limited), never one per connection.
    assert len(cluster.find_events("daemon", "auth.refused")) <= 2
