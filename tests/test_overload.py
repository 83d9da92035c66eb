"""A daemon behind its agents does not blame them: a node whose heartbeat waits unread in
the daemon's own queue is not declared lost, and the daemon says it is overloaded.
In process, with real ZeroMQ sockets (the loop's turns driven one at a time)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import zmq
from structlog.testing import capture_logs

from supervisor.cli.localcluster import wait_for
from supervisor.daemon import loop
from supervisor.daemon.loop import Daemon, DaemonConfig
from supervisor.shared.protocol import Ack, decode, encode
from tests.test_cluster_core import heartbeat, register

pytestmark = pytest.mark.timeout(30)

TIMEOUT = 1.0


def _daemon(tmp_path: Path) -> tuple[Daemon, zmq.Poller]:
    daemon = Daemon(DaemonConfig(bind=f"ipc://{tmp_path}/agents.sock", ctl=f"ipc://{tmp_path}/ctl.sock",
                                 state_dir=tmp_path / "state", insecure=True, heartbeat_timeout=TIMEOUT,
                                 heartbeat_interval=0.2))
    poller = zmq.Poller()
    poller.register(daemon.agents, zmq.POLLIN)
    poller.register(daemon.ctl, zmq.POLLIN)
    daemon._next_flush = time.monotonic() + 3600
    daemon._last_poll = time.monotonic()
    return daemon, poller


def _agent(daemon: Daemon, tmp_path: Path) -> zmq.Socket:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.connect(f"ipc://{tmp_path}/agents.sock")
    return sock


def _registered(daemon: Daemon, poller: zmq.Poller, sock: zmq.Socket) -> None:
    sock.send(encode(register("n1")))

    def acked() -> bool:
        daemon._turn(poller)
        return sock.poll(0) and isinstance(decode(sock.recv()), Ack)

    wait_for(acked, 5, "the register's ack", interval=0.01)


def test_a_node_whose_heartbeat_waits_in_the_daemons_queue_is_not_lost_and_the_daemon_says_it_is_behind(
        tmp_path: Path) -> None:
    daemon, poller = _daemon(tmp_path)
    sock = _agent(daemon, tmp_path)
    try:
        _registered(daemon, poller, sock)
        registered_at = time.monotonic()
        # More than one batch of frames ahead of the node's heartbeat, on its own connection.
        for _ in range(loop._BATCH + 100):
            sock.send(b"\x00")
        sock.send(encode(heartbeat("n1")))
        # The heartbeat was sent in time; the daemon's turn comes only after the timeout.
        wait_for(lambda: time.monotonic() > registered_at + TIMEOUT + 0.1, 5, "the timeout to pass", interval=0.01)
        with capture_logs() as logs:
            daemon._turn(poller)  # one batch: the heartbeat is still in the queue
            assert daemon._backlog(time.monotonic()) is not None
            wait_for(lambda: (daemon._turn(poller), daemon._backlog(time.monotonic()) is None)[1], 5,
                     "the backlog to be read", interval=0.01)
            daemon._turn(poller)
        events = [e["event"] for e in logs]
        assert "node.lost" not in events, events
        [overloaded] = [e for e in logs if e["event"] == "daemon.overloaded"]
        assert overloaded["nodes_deferred"] == 1 and overloaded["log_level"] == "warning"
        assert "daemon.overload_cleared" in events
        assert daemon.cluster.nodes.get("n1").state.value == "up"
    finally:
        sock.close()
        daemon.close()


def test_a_node_that_really_stopped_is_lost_at_once_when_the_queue_is_empty(tmp_path: Path) -> None:
    daemon, poller = _daemon(tmp_path)
    sock = _agent(daemon, tmp_path)
    try:
        _registered(daemon, poller, sock)
        with capture_logs() as logs:
            wait_for(lambda: (daemon._turn(poller), daemon.cluster.nodes.get("n1").state.value == "lost")[1],
                     TIMEOUT + 3, "n1 lost", interval=0.01)
        assert [e["event"] for e in logs if e["event"].startswith("daemon.overload")] == []
    finally:
        sock.close()
        daemon.close()


def test_the_endpoints_accept_a_burst_of_connections(tmp_path: Path) -> None:
    """libzmq's default listen backlog (100) drops the SYNs of 10,000 agents connecting at
    once (a daemon restart): each is retried seconds later."""
    daemon, _ = _daemon(tmp_path)
    try:
        assert daemon.agents.getsockopt(zmq.BACKLOG) == loop._LISTEN_BACKLOG >= 4096
        assert daemon.ctl.getsockopt(zmq.BACKLOG) == loop._LISTEN_BACKLOG
    finally:
        daemon.close()


def test_agent_connections_are_reaped_by_tcp_keepalive_not_libzmq_pings(tmp_path: Path) -> None:
    """At 2 s libzmq's pings to 10,000 agents were as many messages as their heartbeats,
    on its one I/O thread, the first thing to run out of CPU; at 10 s the connections made
    together pinged together, a burst every 10 s that held heartbeats up to 1.5 s
    (bench/scale.py). A dead peer is still dropped within 30 s, by the kernel: probed
    after 10 s idle, every 5 s, 4 times; unacknowledged data for 30 s. Control
    connections (few) keep libzmq's pings every 10 s."""
    daemon, _ = _daemon(tmp_path)
    try:
        assert daemon.agents.getsockopt(zmq.HEARTBEAT_IVL) == 0
        assert daemon.agents.getsockopt(zmq.TCP_KEEPALIVE) == 1
        idle, every, count = (daemon.agents.getsockopt(o) for o in (
            zmq.TCP_KEEPALIVE_IDLE, zmq.TCP_KEEPALIVE_INTVL, zmq.TCP_KEEPALIVE_CNT))
        assert idle + every * count == 30
        assert daemon.agents.getsockopt(zmq.TCP_MAXRT) == 30_000
        assert daemon.ctl.getsockopt(zmq.HEARTBEAT_IVL) == 10_000
        assert daemon.ctl.getsockopt(zmq.HEARTBEAT_TIMEOUT) == 30_000
    finally:
        daemon.close()


def test_a_daemon_stopped_between_its_poll_and_its_deadlines_does_not_declare_its_nodes_lost(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression (test_hardening_e2e's SIGSTOP, under the load of the full suite): the
    pause was measured from one poll to the next, so a daemon stopped while handling what
    a poll returned ran that turn's deadlines first, declared its nodes lost, and only
    then said daemon.stalled. The clock jumps as a SIGSTOP would, in the middle of
    handling a frame."""
    daemon, poller = _daemon(tmp_path)
    sock = _agent(daemon, tmp_path)
    try:
        _registered(daemon, poller, sock)
        jump = [0.0]
        real_now = loop.system_now
        monkeypatch.setattr(loop, "system_now", lambda: (lambda t: type(t)(t.mono + jump[0], t.wall + jump[0]))(
            real_now()))
        handle = daemon._on_agent_frames

        def stopped_while_handling(frames: list) -> None:
            jump[0] = 10 * TIMEOUT  # the SIGSTOP, and the SIGCONT much later
            handle(frames)

        monkeypatch.setattr(daemon, "_on_agent_frames", stopped_while_handling)
        sock.send(encode(register("n2")))  # a frame that is not n1's heartbeat
        with capture_logs() as logs:
            wait_for(lambda: daemon._turn(poller) and any(e["event"] == "daemon.stalled" for e in logs), 5,
                     "the daemon to say it was stopped", interval=0.01)
        assert not [e for e in logs if e["event"] == "node.lost"]
    finally:
        sock.close(linger=0)
        daemon.close()


def test_the_flush_and_each_housekeeping_chore_run_on_turns_of_their_own(tmp_path: Path) -> None:
    """Regression: the flush, the metrics, the allow-lists and the descriptor count ran
    in one go once a second, holding the heartbeats behind them for ~45 ms at 10,000
    nodes (bench/scale.py). Now one of them per turn, and a turn with chores waiting
    does not sleep in its poll."""
    daemon, poller = _daemon(tmp_path)
    sock = _agent(daemon, tmp_path)
    notify = loop.Notifier()

    def nodes_up() -> float | None:
        return daemon.metrics.registry.get_sample_value("trainguard_nodes", {"state": "up"})

    try:
        _registered(daemon, poller, sock)
        daemon._next_flush = daemon._next_housekeeping = time.monotonic()
        daemon._background(notify)  # the flush, which queues the chores
        assert not daemon.cluster.nodes.dirty and len(daemon._chores) == 3
        assert nodes_up() == 0  # not observed yet
        daemon._next_flush = time.monotonic() + 3600  # not again, however slow this machine
        started = time.monotonic()
        daemon._turn(poller)
        assert time.monotonic() - started < loop._POLL_CAP / 2
        daemon._background(notify)
        assert nodes_up() == 1 and len(daemon._chores) == 2
        daemon._background(notify)
        daemon._background(notify)
        assert daemon._chores == []
        daemon._background(notify)  # nothing due: nothing runs
        assert daemon._chores == [] and daemon._next_housekeeping > time.monotonic()
    finally:
        sock.close(linger=0)
        daemon.close()
