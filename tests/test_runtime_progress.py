"""agents.runtime.progress: heartbeats from a training loop to the local agent.

A real zmq PULL socket on an ipc path stands in for the agent. Each test uses its own
`Beat` (or resets the module's sender), and every receive is
polled with a deadline.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
import torch
import zmq

from agents.runtime import progress
from agents.runtime.progress import FORMAT_VERSION, Beat, decode_progress, encode_progress, heartbeat

try:
    import numpy
except ImportError:
    numpy = None


@pytest.fixture
def endpoint(tmp_path: Path) -> str:
    """An ipc endpoint in a private directory, short enough for a unix socket path."""
    where = tmp_path if len(str(tmp_path)) < 80 else Path(tempfile.mkdtemp(prefix="tg-", dir="/tmp"))
    return f"ipc://{where}/hb.sock"


@pytest.fixture
def agent(endpoint: str) -> Iterator[zmq.Socket]:
    sock = zmq.Context.instance().socket(zmq.PULL)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(endpoint)
    yield sock
    sock.close()


@pytest.fixture(autouse=True)
def fresh_singleton(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    progress.reset()
    for key in ("TRAINGUARD_HEARTBEAT", "TRAINGUARD_HEARTBEAT_INTERVAL", "RANK"):
        monkeypatch.delenv(key, raising=False)
    yield
    progress.reset()  # no sender aimed at this test's endpoint outlives it


def receive(sock: zmq.Socket, timeout: float = 5.0) -> dict[str, Any]:
    if not sock.poll(int(timeout * 1000)):
        raise AssertionError(f"no message within {timeout}s")
    return decode_progress(sock.recv())


def send_until_received(sock: zmq.Socket, send: Any, timeout: float = 10.0) -> dict[str, Any]:
    """Calls `send()` until a message arrives. The PUSH socket drops what it sends
    before its connection is up (ZMQ_IMMEDIATE), so the first few may be lost."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        send()
        if sock.poll(20):
            return decode_progress(sock.recv())
    raise AssertionError(f"no message within {timeout}s")


# --- outside trainguard ---------------------------------------------------------------------


def test_heartbeat_without_an_agent_is_a_no_op() -> None:
    assert heartbeat(1, loss=0.5) is None
    heartbeat(2, phase="nonsense", weird=object())
    beat = progress.sender()
    assert beat is not None and beat.endpoint is None
    assert (beat.sent, beat.dropped) == (0, 0)


@pytest.mark.parametrize(
    "env",
    [
        {"TRAINGUARD_HEARTBEAT": "ipc:///nonexistent/dir/hb", "RANK": "not-a-number"},
        {"TRAINGUARD_HEARTBEAT": "ipc:///nonexistent/dir/hb", "TRAINGUARD_HEARTBEAT_INTERVAL": "soon"},
        {"TRAINGUARD_HEARTBEAT": "no-such-transport://x"},
    ],
    ids=["bad-rank", "bad-interval", "bad-endpoint"],
)
def test_heartbeat_never_raises_on_a_bad_environment(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    heartbeat(1, loss=1.0)
    heartbeat(2, phase="eval")
    heartbeat("not a step")  # type: ignore[arg-type]


# --- with an agent listening ----------------------------------------------------------------


def test_messages_arrive_and_decode(agent: zmq.Socket, endpoint: str) -> None:
    beat = Beat(endpoint, rank=3, interval=0.0)
    metrics: dict[str, Any] = {"loss": torch.tensor(0.25), "tokens": 4096, "note": "warmup", "vector": torch.ones(2)}
    if numpy is not None:
        metrics["lr"] = numpy.float32(0.5)
    msg = send_until_received(agent, lambda: beat(7, "train", metrics))

    assert {k: msg[k] for k in ("v", "type", "rank", "step", "phase", "pid")} == {
        "v": FORMAT_VERSION, "type": "progress", "rank": 3, "step": 7, "phase": "train", "pid": os.getpid(),
    }
    assert abs(msg["ts"] - time.time()) < 60
    assert type(msg["metrics"]["loss"]) is float and msg["metrics"]["loss"] == 0.25
    assert msg["metrics"]["tokens"] == 4096 and msg["metrics"]["note"] == "warmup"
    assert isinstance(msg["metrics"]["vector"], str)  # not a number: sent as text, not dropped
    if numpy is not None:
        assert type(msg["metrics"]["lr"]) is float and msg["metrics"]["lr"] == 0.5
    assert beat.sent >= 1


def test_heartbeat_uses_the_environment(agent: zmq.Socket, endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAINGUARD_HEARTBEAT", endpoint)
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("TRAINGUARD_HEARTBEAT_INTERVAL", "0")
    msg = send_until_received(agent, lambda: heartbeat(5, phase="bogus", loss=torch.tensor(1.5)))
    assert (msg["rank"], msg["step"], msg["phase"], msg["metrics"]) == (2, 5, "train", {"loss": 1.5})


def test_rate_limit_drops_calls_within_the_interval_but_not_phase_changes(agent: zmq.Socket, endpoint: str) -> None:
    beat = Beat(endpoint, rank=0, interval=0.0)
    send_until_received(agent, lambda: beat(0, "eval", {}))  # the connection is up
    beat.interval = 60.0  # nothing below expires during the test
    sent = beat.sent

    beat(10, "train", {})  # new phase: sent
    beat(11, "train", {})  # within the interval: dropped
    beat(12, "checkpoint", {})  # new phase: sent
    beat(13, "checkpoint", {})
    beat(14, "train", {})
    beat(15, "train", {})
    beat(99, "eval", {})  # a marker: once it arrives, everything sent before it has

    got = []
    while not got or got[-1] != (99, "eval"):
        msg = receive(agent)
        if msg["step"] != 0:  # late copies of the warm-up
            got.append((msg["step"], msg["phase"]))
    assert got == [(10, "train"), (12, "checkpoint"), (14, "train"), (99, "eval")]
    assert beat.sent - sent == 4


def test_the_last_step_held_back_by_the_rate_limit_is_sent_after_the_interval(agent: zmq.Socket, endpoint: str) -> None:
    """A rank that stops stepping right after a rate-limited heartbeat: the agent must
    still learn the step it stopped at, or a hang report would name an older one."""
    beat = Beat(endpoint, rank=0, interval=0.0)
    send_until_received(agent, lambda: beat(0, "train", {}))  # the connection is up
    beat.interval = 0.3
    for step in range(1, 6):
        beat(step, "train", {})  # 1 goes at once (interval passed); 2..5 are held back
    steps = []
    while not steps or steps[-1] != 5:
        steps.append(receive(agent, timeout=5.0)["step"])
    assert steps[-1] == 5 and 2 not in steps


def test_a_held_back_step_carries_the_time_it_was_reported_not_when_it_was_sent(agent: zmq.Socket,
                                                                                  endpoint: str) -> None:
    """The agent times a stall from the step's own time: a message the rate limit held
    back for up to an interval must not make a hang look younger than it is."""
    beat = Beat(endpoint, rank=0, interval=0.0)
    send_until_received(agent, lambda: beat(0, "train", {}))
    beat.interval = 0.5
    beat(1, "train", {})  # at once
    reported = time.time()
    beat(2, "train", {})  # held back
    msgs = [receive(agent, timeout=5.0)]
    while msgs[-1]["step"] != 2:
        msgs.append(receive(agent, timeout=5.0))
    arrived = time.time()
    assert arrived - reported >= 0.3, "held back for most of the interval"
    assert abs(msgs[-1]["ts"] - reported) < 0.1


def test_the_agent_backdates_a_step_by_its_message_age_within_bounds() -> None:
    from agents.monitor import MAX_PROGRESS_AGE, _age

    now = time.time()
    assert 0.45 <= _age(now - 0.5) <= 0.6
    assert _age(now + 30) == 0.0, "a time from the future moves nothing"
    assert _age(now - 3600) == MAX_PROGRESS_AGE, "nor does a stale or skewed one move it far"
    assert _age(None) == _age("soon") == _age(True) == _age(float("nan")) == 0.0


def test_a_dropped_message_does_not_start_the_interval() -> None:
    """Nobody listening: each call tries again (cheaply) instead of going quiet for an
    interval, so the first message after the agent appears is not held back."""
    beat = Beat("ipc:///nonexistent/dir/hb", rank=0, interval=60.0)
    beat(1, "train", {})
    beat(2, "train", {})
    assert (beat.sent, beat.dropped) == (0, 2)


# --- nobody listening ----------------------------------------------------------------------


@pytest.mark.parametrize("target", ["ipc", "tcp"])
def test_with_nobody_listening_calls_are_quick_and_silent(tmp_path: Path, target: str) -> None:
    where = f"ipc://{tmp_path}/nobody.sock" if target == "ipc" else "tcp://127.0.0.1:1"
    beat = Beat(where, rank=0, interval=0.0)  # every call tries to send
    started = time.monotonic()
    for step in range(10_000):
        beat(step, "train", {"loss": 1.0})
    assert time.monotonic() - started < 2.0
    assert (beat.sent, beat.dropped) == (0, 10_000)


def test_heartbeat_with_nobody_listening_is_quick(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAINGUARD_HEARTBEAT", f"ipc://{tmp_path}/nobody.sock")
    started = time.monotonic()
    for step in range(10_000):
        heartbeat(step, loss=torch.tensor(1.0))
    assert time.monotonic() - started < 2.0


# --- the wire format ------------------------------------------------------------------------


def test_encode_decode_round_trip() -> None:
    frame = encode_progress(1, 42, "eval", {"acc": 0.9}, now=1700000000.5, pid=123, job="gpt")
    assert decode_progress(frame) == {
        "v": FORMAT_VERSION, "type": "progress", "job": "gpt", "rank": 1, "step": 42, "phase": "eval",
        "ts": 1700000000.5, "pid": 123, "metrics": {"acc": 0.9},
    }


def _frame(**changes: Any) -> bytes:
    msg = json.loads(encode_progress(0, 1, "train", {}, now=0.0, pid=1))
    for key, value in changes.items():
        if value is _DROP:
            del msg[key]
        else:
            msg[key] = value
    return json.dumps(msg).encode()


_DROP = object()


@pytest.mark.parametrize(
    "frame",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"\xff\xfe garbage", id="not-utf8"),
        pytest.param(b"{not json", id="not-json"),
        pytest.param(b"[1, 2]", id="list"),
        pytest.param(b"42", id="number"),
        pytest.param(_frame(v=FORMAT_VERSION + 1), id="newer-version"),
        pytest.param(_frame(v=_DROP), id="no-version"),
        pytest.param(_frame(type="hello"), id="wrong-type"),
        pytest.param(_frame(phase="sleep"), id="bad-phase"),
        pytest.param(_frame(phase=_DROP), id="no-phase"),
        pytest.param(_frame(step="5"), id="step-as-text"),
        pytest.param(_frame(step=5.0), id="step-as-float"),
        pytest.param(_frame(rank=None), id="no-rank"),
    ],
)
def test_decode_rejects_what_is_not_a_progress_message(frame: bytes) -> None:
    with pytest.raises(ValueError):
        decode_progress(frame)
