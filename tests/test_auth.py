"""CurveZMQ authentication with real sockets: who gets in, who is refused and logged."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest

from supervisor.cli.client import ClientError, request
from supervisor.cli.localcluster import LocalCluster, wait_for
from tests.conftest import trainguard

# Every test runs the CLI (keys, daemon) in child processes.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]


def generate(directory: Path, name: str) -> None:
    result = trainguard("keys", "generate", str(directory), "--name", name)
    assert result.returncode == 0, result.stderr


@pytest.fixture
def keys(tmp_path, monkeypatch):
    """A daemon keys dir allowing node `good` and one admin, agent keys dirs for `good`
    and `stranger`, and this test process holding the admin's pair (for tcp control)."""
    daemon = tmp_path / "keys-daemon"
    generate(daemon, "daemon")
    admin = tmp_path / "keys-admin"
    generate(admin, "admin")
    shutil.copy(daemon / "daemon.key", admin / "daemon.key")
    (daemon / "admins").mkdir()
    shutil.copy(admin / "admin.key", daemon / "admins" / "ops.key")
    monkeypatch.setenv("TRAINGUARD_KEYS_DIR", str(admin))
    nodes = {}
    for node in ("good", "stranger"):
        d = tmp_path / f"keys-{node}"
        generate(d, "agent")
        shutil.copy(daemon / "daemon.key", d / "daemon.key")
        nodes[node] = d
    (daemon / "agents").mkdir()
    shutil.copy(nodes["good"] / "agent.key", daemon / "agents" / "good.key")
    return daemon, nodes


def test_generate_writes_a_public_key_and_a_private_secret_key(tmp_path):
    generate(tmp_path, "agent")
    assert stat.S_IMODE((tmp_path / "agent.key_secret").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "agent.key").stat().st_mode) == 0o644
    again = trainguard("keys", "generate", str(tmp_path), "--name", "agent")
    assert again.returncode == 1 and "refusing to overwrite" in again.stderr


def test_the_daemon_refuses_to_start_without_keys_unless_insecure(tmp_path):
    result = trainguard("daemon", "--state-dir", str(tmp_path / "s"), "--keys-dir", str(tmp_path / "none"),
                        "--bind", f"ipc://{tmp_path}/a.sock", "--ctl", f"ipc://{tmp_path}/c.sock")
    assert result.returncode == 1
    assert "no daemon key in" in result.stderr and "trainguard keys generate" in result.stderr
    assert "--insecure" in result.stderr


def test_a_world_readable_secret_key_refuses_to_start(tmp_path):
    generate(tmp_path / "k", "daemon")
    os.chmod(tmp_path / "k" / "daemon.key_secret", 0o644)
    result = trainguard("daemon", "--state-dir", str(tmp_path / "s"), "--keys-dir", str(tmp_path / "k"),
                        "--bind", f"ipc://{tmp_path}/a.sock", "--ctl", f"ipc://{tmp_path}/c.sock")
    assert result.returncode == 1 and "readable by other users" in result.stderr and "chmod 600" in result.stderr


def test_only_allow_listed_agents_register_and_the_rest_are_refused_and_logged(tmp_path, keys):
    daemon_keys, node_keys = keys
    cluster = LocalCluster(tmp_path / "c", heartbeat_timeout=3.0, heartbeat_interval=0.3, transport="tcp",
                           keys_dir=daemon_keys)
    try:
        cluster.start_daemon()
        cluster.keys_dir = node_keys["good"]
        cluster.start_agent("good", "sim-ascend", 2)
        cluster.keys_dir = node_keys["stranger"]
        cluster.start_agent("stranger", "sim-ascend", 2)
        cluster.keys_dir = None
        cluster.start_agent("plaintext", "sim-ascend", 2)  # --insecure against a secure daemon
        cluster.keys_dir = daemon_keys

        wait_for(lambda: (n := cluster.node("good", timeout=2)) and n["state"] == "up", 30, "the allowed agent")
        refused = wait_for(lambda: [e for e in cluster.find_events("daemon", "auth.refused")], 30, "a refusal")
        assert any("is not in" in e["reason"] and e["peer"].startswith("127.0.0.1") for e in refused), refused
        wait_for(lambda: any("handshake failed" in e["reason"] for e in cluster.find_events("daemon", "auth.refused")),
                 30, "the plain-text agent to be refused")
        names = {n["node"] for n in cluster.status()["nodes"]}
        assert names == {"good"}, "refused agents must never appear in status"

        # The refused node says so in its own log, for the on-call looking at the node.
        wait_for(lambda: cluster.find_events("stranger", "agent.auth_refused"), 20, "the stranger to log its refusal")
        # The allow-list is reloaded on change: admitting the stranger needs no restart.
        shutil.copy(node_keys["stranger"] / "agent.key", daemon_keys / "agents" / "stranger.key")
        wait_for(lambda: (n := cluster.node("stranger", timeout=2)) and n["state"] == "up", 30, "the newly allowed agent")

        # One node's key cannot speak for another node.
        cluster.keys_dir = node_keys["good"]
        cluster.start_agent("impostor", "sim-ascend", 2)
        cluster.keys_dir = daemon_keys
        wait_for(lambda: any("may only speak for node 'good'" in e["reason"]
                             for e in cluster.find_events("daemon", "auth.refused")), 20, "the impostor refused")
        assert "impostor" not in {n["node"] for n in cluster.status()["nodes"]}
        # ... nor take its route: good's commands still reach good (its sim chip changes).
        assert request(cluster.ctl, "inject", {"node": "good", "fault": "warning", "chip": 1}, timeout=10)["node"] == "good"
        wait_for(lambda: cluster.node("good")["chips"][1]["health"] == "warning", 20, "good's own probe to see it")
        assert cluster.node("good")["state"] == "up"
        # An agent without keys facing a secure daemon says authentication failed.
        plain = wait_for(lambda: cluster.find_events("plaintext", "agent.auth_refused"), 20, "the plain agent's refusal")
        assert "--insecure" in plain[0]["reason"]

        # Removing a key cuts its node off without a restart, and the node says why.
        before = len(cluster.find_events("stranger", "agent.auth_refused"))
        (daemon_keys / "agents" / "stranger.key").unlink()
        cluster.wait_nodes("lost", ["stranger"], timeout=cluster.heartbeat_timeout + 5)
        wait_for(lambda: len(cluster.find_events("stranger", "agent.auth_refused")) > before, 20,
                 "the cut-off agent to log that it is refused")
        assert not cluster.find_events("stranger", "agent.daemon_unreachable")

        # Secret keys never reach a log.
        secrets = [(d / f"{n}.key_secret").read_text() for d, n in
                   [(daemon_keys, "daemon"), (node_keys["good"], "agent"), (node_keys["stranger"], "agent")]]
        logs = "".join(p.read_text() for p in (cluster.root / "logs").iterdir())
        for text in secrets:
            secret = text.split('secret-key = "')[1].split('"')[0]
            assert secret not in logs
    finally:
        cluster.stop_all()


def test_a_tcp_control_endpoint_needs_an_admin_key(tmp_path, keys, monkeypatch):
    daemon_keys, _ = keys
    cluster = LocalCluster(tmp_path / "c", transport="tcp", keys_dir=daemon_keys)
    try:
        cluster.start_daemon()
        monkeypatch.setenv("TRAINGUARD_KEYS_DIR", str(tmp_path / "nobody"))
        with pytest.raises(ClientError, match="refused: not authorised"):
            request(cluster.ctl, "ping", timeout=2)
        wait_for(lambda: cluster.find_events("daemon", "auth.refused"), 10, "the refusal to be logged")
        monkeypatch.setenv("TRAINGUARD_KEYS_DIR", str(tmp_path / "keys-admin"))
        assert wait_for(lambda: request(cluster.ctl, "ping", timeout=2), 20, "an answer with the admin key")
    finally:
        cluster.stop_all()
