"""sd_notify against a real unix datagram socket: the protocol, and what the daemon and
the agent send over their lives (READY, STATUS, WATCHDOG at half the interval, STOPPING)."""

from __future__ import annotations

import os
import signal
import socket
import time

import pytest

from supervisor.cli.localcluster import wait_for
from supervisor.shared.sdnotify import Notifier

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def notify_socket(tmp_path):
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(0.05)
    yield path, sock
    sock.close()


def drain(sock: socket.socket) -> list[tuple[float, dict[str, str]]]:
    """Every datagram waiting, with the time it was read, as KEY=value dicts."""
    got = []
    while True:
        try:
            data = sock.recv(4096)
        except (TimeoutError, socket.timeout, BlockingIOError):
            return got
        got.append((time.monotonic(), dict(line.split("=", 1) for line in data.decode().splitlines())))


def test_without_notify_socket_everything_is_a_quiet_no_op():
    n = Notifier(env={})
    assert not n.enabled and n.watchdog_interval is None
    assert n.send("READY=1") is False
    n.ready("x"), n.status("y"), n.watchdog(0.0), n.stopping()


def test_messages_reach_a_path_socket(notify_socket):
    path, sock = notify_socket
    n = Notifier(env={"NOTIFY_SOCKET": str(path)})
    n.ready("serving 3 nodes")
    n.status("serving 3 nodes")  # unchanged: not sent again
    n.status("serving 2 nodes, 1 lost")
    n.stopping()
    messages = [m for _, m in drain(sock)]
    assert messages == [
        {"READY": "1", "STATUS": "serving 3 nodes", "MAINPID": str(os.getpid())},
        {"STATUS": "serving 2 nodes, 1 lost"},
        {"STOPPING": "1", "STATUS": "stopping"},
    ]


def test_abstract_namespace_sockets_work():
    name = f"trainguard-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(2)
    try:
        assert Notifier(env={"NOTIFY_SOCKET": "@" + name}).send("READY=1")
        assert sock.recv(100) == b"READY=1"
    finally:
        sock.close()


def test_the_watchdog_pings_at_half_the_interval_with_literal_times(notify_socket):
    path, sock = notify_socket
    n = Notifier(env={"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "2000000"})
    assert n.watchdog_interval == 1.0
    for now in (10.0, 10.5, 10.99, 11.0, 11.2, 12.0):
        n.watchdog(now)
    assert [m for _, m in drain(sock)] == [{"WATCHDOG": "1"}] * 3  # at 10.0, 11.0, 12.0


def test_a_watchdog_meant_for_another_pid_is_ignored():
    assert Notifier(env={"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}, clock_pid=42).watchdog_interval is None
    assert Notifier(env={"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "42"}, clock_pid=42).watchdog_interval == 0.5


def test_a_vanished_socket_does_not_raise(tmp_path):
    assert Notifier(env={"NOTIFY_SOCKET": str(tmp_path / "gone.sock")}).send("READY=1") is False


@pytest.mark.slow
@pytest.mark.parametrize("who", ["daemon", "agent"])
def test_the_service_notifies_ready_pings_the_watchdog_and_says_it_stops(make_cluster, notify_socket, who):
    path, sock = notify_socket
    env = {"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "1000000"}  # ping every 0.5 s
    cluster = make_cluster()
    if who == "daemon":
        proc = cluster.start_daemon(env=env)
    else:
        cluster.start_daemon()
        proc = cluster.start_agent("n1", "sim-ascend", 2, env=env)
    messages: list[tuple[float, dict[str, str]]] = []
    wait_for(lambda: messages.extend(drain(sock)) or sum("WATCHDOG" in m for _, m in messages) >= 4, 30,
             "READY and four watchdog pings")
    assert messages[0][1]["READY"] == "1" and messages[0][1]["MAINPID"] == str(proc.pid)
    assert "STATUS" in messages[0][1]
    pings = [t for t, m in messages if "WATCHDOG" in m]
    gaps = [b - a for a, b in zip(pings, pings[1:])]
    assert all(0.3 <= g <= 0.9 for g in gaps), f"pings should come every 0.5 s, got gaps {gaps}"
    if who == "agent":
        wait_for(lambda: messages.extend(drain(sock)) or any("registered with" in m.get("STATUS", "")
                 and "not registered" not in m.get("STATUS", "") for _, m in messages), 20, "STATUS: registered")
    os.kill(proc.pid, signal.SIGTERM)
    proc.popen.wait(timeout=20)
    messages.extend(drain(sock))
    assert messages[-1][1].get("STOPPING") == "1", messages[-3:]
    assert not any("READY" in m for _, m in messages[1:]), "READY once"
