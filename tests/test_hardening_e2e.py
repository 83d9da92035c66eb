"""End to end, with real processes and sockets: the agent survives its own errors and
says goodbye; the daemon leaves nothing behind when refused, does not blame nodes for its
own pause, and survives generated garbage; an Xid line reaches the daemon as a signal."""

from __future__ import annotations

import os
import signal
import stat
import sys
import time
from pathlib import Path

import msgspec
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from supervisor.cli.client import request
from supervisor.cli.localcluster import LocalCluster, free_tcp_endpoint, wait_for
from supervisor.shared.protocol import Ack, ProtocolError, Register, Result, decode, encode, new_id
from tests.conftest import trainguard

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

FIXTURES = Path(__file__).parent / "fixtures" / "tools"


def test_an_agent_stopped_cleanly_leaves_and_is_never_lost(make_cluster):
    cluster = make_cluster()
    cluster.start_daemon()
    cluster.start_agent("n1", "sim-ascend", 2)
    cluster.wait_nodes("up", ["n1"], timeout=30)
    cluster.kill("n1", signal.SIGTERM)
    cluster.wait_nodes("left", ["n1"], timeout=10)
    time.sleep(cluster.heartbeat_timeout + 1)  # long enough that a silent node would be lost
    assert cluster.node("n1")["state"] == "left"
    assert not cluster.find_events("daemon", "node.lost")
    (left,) = cluster.find_events("daemon", "node.left", node="n1")
    assert "SIGTERM" in left["reason"]
    # It comes back as itself.
    cluster.start_agent("n1", "sim-ascend", 2)
    cluster.wait_nodes("up", ["n1"], timeout=30)


def test_a_daemon_refused_at_start_leaves_no_state_and_a_stopped_one_no_socket_file(tmp_path):
    busy = free_tcp_endpoint()
    host, port = busy.removeprefix("tcp://").split(":")
    import socket

    with socket.socket() as holder:
        holder.bind((host, int(port)))
        holder.listen()
        state = tmp_path / "state"
        result = trainguard("daemon", "--insecure", "--bind", busy, "--ctl", f"ipc://{tmp_path}/ctl.sock",
                            "--state-dir", str(state))
    assert result.returncode == 1 and "cannot bind the agent endpoint" in result.stderr
    assert not state.exists() and not (tmp_path / "ctl.sock").exists()

    cluster = LocalCluster(tmp_path / "c")
    cluster.start_daemon()
    wait_for(lambda: request(cluster.ctl, "ping", timeout=1), 20, "the daemon to serve")
    sockets = [Path(e.removeprefix("ipc://")) for e in (cluster.bind, cluster.ctl)]
    assert all(p.exists() for p in sockets)
    cluster.stop_all()
    assert cluster.procs["daemon"].popen.returncode == 0
    assert not any(p.exists() for p in sockets)


def test_a_paused_daemon_does_not_declare_its_nodes_lost(make_cluster):
    cluster = make_cluster(heartbeat_timeout=3.0)
    daemon = cluster.start_daemon()
    cluster.start_agent("n1", "sim-ascend", 1)
    cluster.start_agent("n2", "sim-nvidia", 1)
    cluster.wait_nodes("up", ["n1", "n2"], timeout=30)
    os.kill(daemon.pid, signal.SIGSTOP)
    time.sleep(cluster.heartbeat_timeout * 2)
    os.kill(daemon.pid, signal.SIGCONT)
    wait_for(lambda: cluster.find_events("daemon", "daemon.stalled"), 10, "the daemon to notice its own pause")
    time.sleep(1.0)
    assert not cluster.find_events("daemon", "node.lost")
    assert {n["state"] for n in cluster.status()["nodes"]} == {"up"}


class _FakeDaemon:
    """A bare ROUTER that registers one agent, to send it what a real daemon never would."""

    def __init__(self, endpoint: str) -> None:
        self.sock = zmq.Context.instance().socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(endpoint)
        self.route = b""

    def receive(self, kind: type, timeout: float = 20.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.sock.poll(200):
                route, frame = self.sock.recv_multipart()
                msg = decode(frame)
                if isinstance(msg, Register):  # always welcome it
                    self.route = route
                    self.send(Ack(id=new_id(), ts=time.time(), ref=msg.id, detail={"heartbeat_interval": 0.5}))
                if isinstance(msg, kind):
                    return msg
        raise AssertionError(f"no {kind.__name__} from the agent within {timeout}s")

    def send(self, message) -> None:
        self.sock.send_multipart([self.route, encode(message)])

    def send_raw(self, frame: bytes) -> None:
        self.sock.send_multipart([self.route, frame])


def test_a_malformed_command_is_refused_with_a_result_naming_the_field(tmp_path, make_cluster):
    endpoint = f"ipc://{tmp_path}/fake.sock"
    fake = _FakeDaemon(endpoint)
    cluster = make_cluster()
    cluster.bind = endpoint
    cluster.start_agent("n1", "sim-ascend", 2)
    fake.receive(Register)
    bad = msgspec.msgpack.encode({"v": 1, "type": "command", "id": "cmd-bad", "ts": time.time(),
                                  "args": {"kind": "start_ranks", "job": "gpt", "attempt": "many"}})
    fake.send_raw(bad)
    result = fake.receive(Result)
    assert result.ref == "cmd-bad" and not result.ok
    assert "malformed command" in result.error and "$.args.attempt" in result.error
    # The agent is still serving: a valid command gets its answer.
    from supervisor.shared.protocol import Command, InjectArgs
    from supervisor.shared.vocab import Fault

    fake.send(Command(id="cmd-ok", ts=time.time(), args=InjectArgs(fault=Fault.WARNING, chip=1)))
    result = fake.receive(Result)
    assert result.ref == "cmd-ok" and result.ok, result.error
    assert cluster.procs["n1"].alive()


def _fake_tools(bin_dir: Path, kernel_log: Path) -> dict[str, str]:
    bin_dir.mkdir()
    tools = {
        "nvidia-smi": f'cat "{FIXTURES / "nvidia-smi-csv-4xt4-510.108.03.txt"}"',
        "dmesg": f'cat "{kernel_log}"',
    }
    for name, script in tools.items():
        path = bin_dir / name
        path.write_text("#!/bin/sh\n" + script + "\n")
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return {"PATH": f"{bin_dir}:{Path(sys.executable).parent}:/usr/bin:/bin"}


def test_an_xid_line_in_the_kernel_log_reaches_the_daemon_as_a_chip_error(tmp_path, make_cluster):
    kernel_log = tmp_path / "kmsg.txt"
    kernel_log.write_text("[Thu Apr  4 18:03:56 2024] NVRM: loading NVIDIA UNIX x86_64 Kernel Module  535.161.07\n")
    env = _fake_tools(tmp_path / "bin", kernel_log)
    cluster = make_cluster()
    cluster.start_daemon()
    cluster.start_agent("gpu1", "nvidia", 4, env=env)
    cluster.wait_nodes("up", ["gpu1"], timeout=30)
    # Wait until the agent has read the kernel log once (what is there at start is history).
    wait_for(lambda: cluster.node("gpu1")["chips"], 20, "the first probe read")
    time.sleep(cluster.probe_interval * 3)
    with open(kernel_log, "a") as f:
        f.write((FIXTURES / "dmesg-xid-79-fallen-off-bus.txt").read_text())
    signals = wait_for(lambda: cluster.find_events("daemon", "signal.chip_error", node="gpu1"), 20,
                       "the Xid to reach the daemon")
    assert signals[0]["xid"] == 79 and signals[0]["health"] == "critical"
    assert "fallen off the bus" in signals[0]["evidence"]
    assert cluster.procs["gpu1"].alive()
    assert not cluster.find_events("gpu1", "agent.handler_failed")


# --- fuzzing a live daemon -----------------------------------------------------------------

_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8) | st.binary(max_size=4), inner,
                                                                  max_size=4),
    max_leaves=12,
)
_TYPES = ["register", "heartbeat", "event", "goodbye", "command", "ack", "result", "ctl", "ctl_reply", "x"]
_FIELDS = ["id", "ts", "node", "name", "observed_at", "fields", "chips", "host", "args", "pid", "seq", "signal",
           "agent_instance", "accelerator", "evidence", "ref", "ok", "detail", "running", "hostname"]
_messages = st.fixed_dictionaries(
    {"v": st.sampled_from([1, 1, 1, 2]), "type": st.sampled_from(_TYPES)},
    optional={f: _values for f in _FIELDS},
)


@pytest.fixture(scope="module")
def live_daemon(tmp_path_factory):
    cluster = LocalCluster(tmp_path_factory.mktemp("fuzz"), transport="tcp")
    cluster.start_daemon()
    wait_for(lambda: request(cluster.ctl, "ping", timeout=1), 20, "the daemon to serve")
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(cluster.bind)
    yield cluster, sock
    sock.close()
    cluster.stop_all()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                    HealthCheck.too_slow])
@given(batch=st.lists(_messages, min_size=1, max_size=10))
@pytest.mark.timeout(300)
def test_generated_msgpack_never_stops_the_daemon_and_every_bad_frame_is_counted(live_daemon, batch):
    cluster, sock = live_daemon
    before = request(cluster.ctl, "status", timeout=5)["daemon"]["bad_frames"]["total"]
    bad = 0
    for fields in batch:
        frame = msgspec.msgpack.encode(fields)
        try:
            msg = decode(frame)
            bad += type(msg).__name__ in ("Command", "Ack", "CtlRequest", "CtlReply")  # not an agent's to send
        except ProtocolError:
            bad += 1
        sock.send(frame)
    # The daemon handles one connection in order: its answer to a sentinel means it has
    # seen the whole batch.
    sentinel = msgspec.msgpack.encode({"v": 1, "type": "heartbeat", "id": "sentinel", "ts": 1.0, "node": "fuzz",
                                       "seq": 1, "agent_instance": "x", "chips": [], "host": {"health": "ok"}})
    sock.send(sentinel)
    deadline = time.monotonic() + 10
    while True:
        assert sock.poll(max(1, int((deadline - time.monotonic()) * 1000))), "the daemon stopped answering"
        answer = decode(sock.recv())
        if isinstance(answer, Ack) and answer.ref == "sentinel":
            break
    status = request(cluster.ctl, "status", timeout=5)
    assert status["daemon"]["bad_frames"]["total"] - before == bad
    assert cluster.procs["daemon"].alive()
