"""`heartbeat(step, **metrics)`: tell the local agent that this rank made progress.

Never blocks and never raises: the message goes to a zmq PUSH socket with a tiny queue
and is dropped when the agent is not there. Rate-limited (at most one message per
`TRAINGUARD_HEARTBEAT_INTERVAL` seconds, default 0.5, except that a change of phase is
always sent at once). Outside trainguard (no TRAINGUARD_HEARTBEAT) it does nothing.
No torch here: the agent imports this module for the message format.
"""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any

PHASES = ("train", "checkpoint", "eval")
FORMAT_VERSION = 1


def encode_progress(rank: int, step: int, phase: str, metrics: dict[str, Any], now: float, pid: int,
                    job: str = "") -> bytes:
    return json.dumps(
        {"v": FORMAT_VERSION, "type": "progress", "job": job, "rank": rank, "step": step, "phase": phase,
         "ts": now, "pid": pid, "metrics": metrics},
        separators=(",", ":"),
    ).encode()


def decode_progress(frame: bytes) -> dict[str, Any]:
    """For the agent: raises ValueError on anything that is not a progress message."""
    try:
        msg = json.loads(frame)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(msg, dict) or msg.get("v") != FORMAT_VERSION or msg.get("type") != "progress":
        raise ValueError("not a progress message of a known version")
    if not isinstance(msg.get("step"), int) or msg.get("phase") not in PHASES or not isinstance(msg.get("rank"), int):
        raise ValueError("progress message without a valid rank, step and phase")
    return msg


def _plain(value: Any) -> Any:
    """Metrics as JSON numbers: tensors and numpy scalars become floats."""
    if isinstance(value, (int, float, str, bool)) or value is None:
        return value
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


class Beat:
    """The sender behind heartbeat(): one PUSH socket, the rate limit, and counts of what
    was sent and dropped."""

    def __init__(self, endpoint: str | None, rank: int, interval: float, job: str = "") -> None:
        self.endpoint, self.rank, self.interval, self.job = endpoint, rank, interval, job
        self.sent = self.dropped = 0
        self._last = float("-inf")
        self._phase: str | None = None
        self._sock: Any = None
        self._lock = threading.Lock()
        # The newest progress held back by the rate limit. A background thread sends it
        # once the interval has passed, so the last step before a stall is never lost
        # (the hang watcher must see where a rank stopped, not where it was 0.5 s before).
        self._pending: tuple[int, str, dict[str, Any], float] | None = None
        self._flusher: threading.Thread | None = None

    def _socket(self) -> Any:
        if self._sock is None:
            import zmq

            sock = zmq.Context.instance().socket(zmq.PUSH)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SNDHWM, 16)
            sock.setsockopt(zmq.IMMEDIATE, 1)
            sock.connect(self.endpoint)
            self._sock = sock
        return self._sock

    def __call__(self, step: int, phase: str, metrics: dict[str, Any]) -> None:
        if self.endpoint is None:
            return
        now = time.monotonic()
        with self._lock:
            if phase == self._phase and now - self._last < self.interval:
                # Stamped now: the agent times a stall from when the step was done, not
                # from when the rate limit let its message go.
                self._pending = (int(step), phase, metrics, time.time())
                if self._flusher is None:
                    self._flusher = threading.Thread(target=self._flush_loop, name="trainguard-heartbeat", daemon=True)
                    self._flusher.start()
                return
            self._send(int(step), phase, metrics, time.time(), now)

    def _send(self, step: int, phase: str, metrics: dict[str, Any], at: float, now: float) -> None:
        """Send one progress message (`at`: wall time the step was reported); the
        caller holds the lock."""
        self._pending = None
        try:
            import zmq

            frame = encode_progress(self.rank, step, phase, {k: _plain(v) for k, v in metrics.items()}, at, os.getpid(), self.job)
            self._socket().send(frame, zmq.NOBLOCK)
            self.sent += 1
            # Only a delivered message starts the interval: one dropped before the
            # agent connected is retried at the next call, not a whole interval later.
            self._last, self._phase = now, phase
        except Exception:
            self.dropped += 1  # no agent, queue full, bad metric: never the loop's problem

    def flush(self) -> None:
        """Send the progress held back by the rate limit now (the end of training: the
        last step must reach the agent before the process exits)."""
        with self._lock:
            if self._pending is not None:
                self._send(*self._pending, time.monotonic())

    def _flush_loop(self) -> None:
        while True:
            time.sleep(self.interval / 2)
            now = time.monotonic()
            with self._lock:
                if self._pending is not None and now - self._last >= self.interval:
                    self._send(*self._pending, now)


_beat: Beat | None = None

# What a simulated fault looks like where a real one would show itself: the vendor's own
# messages, as quoted in agents/watchers/faults.yaml (with their sources there).
_SIM_MESSAGES = {
    ("sim-ascend", "interconnect_timeout"): (
        "EI0002: The wait execution of the Notify register times out. Reason: The Notify register has not "
        "received the Notify record from remote rank: [unknown]. (trainguard simulated fault)"
    ),
    ("sim-nvidia", "interconnect_timeout"): (
        "[Rank {rank}] Watchdog caught collective operation timeout: WorkNCCL(SeqNum=1, OpType=ALLREDUCE, "
        "NumelIn=1, NumelOut=1, Timeout(ms)=600000) ran for 600020 milliseconds before timing out. "
        "(trainguard simulated fault)"
    ),
    ("sim-ascend", "chip_error"): (
        "EZ9999: The error from device(chipId:{chip}, dieId:0), there is an aivec error exception. "
        "(trainguard simulated fault)"
    ),
    ("sim-nvidia", "chip_error"): "RuntimeError: CUDA error: uncorrectable ECC error encountered (trainguard simulated fault)",
}


class _SimFaults:
    """On sim accelerators, act out a fault injected into this rank's chip (checked at
    most every 0.2 s, from heartbeat()). Off everywhere else."""

    def __init__(self) -> None:
        self.path = os.environ.get("TRAINGUARD_SIM_CHIPS") or None
        self.accelerator = os.environ.get("TRAINGUARD_ACCELERATOR", "")
        visible = (os.environ.get("ASCEND_RT_VISIBLE_DEVICES") or os.environ.get("CUDA_VISIBLE_DEVICES") or "").split(",")
        # This rank's chip: its only visible one (trainguard), or the LOCAL_RANK-th of
        # several (torchrun gives every worker the node's list).
        local = os.environ.get("LOCAL_RANK", "0")
        index = int(local) if len(visible) > 1 and local.isdigit() and int(local) < len(visible) else 0
        self.chip = int(visible[index]) if visible[index].isdigit() else None
        self.active = bool(self.path) and self.accelerator.startswith("sim-") and self.chip is not None
        self._next = 0.0

    def act(self) -> str | None:
        try:
            with open(self.path) as f:  # type: ignore[arg-type]
                for chip in json.load(f)["chips"]:
                    if chip["index"] == self.chip:
                        return chip.get("act")
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return None

    def check(self, rank: int) -> None:
        now = time.monotonic()
        if not self.active or now < self._next:
            return
        self._next = now + 0.2
        act = self.act()
        if act == "hang":
            # Stop stepping inside the "collective", as a rank stuck in one would; an
            # injected `ok` on the chip lets it go on.
            while self.act() == "hang":
                time.sleep(0.2)
        elif act in ("interconnect_timeout", "chip_error"):
            message = _SIM_MESSAGES[(self.accelerator, act)].format(rank=rank, chip=self.chip)
            import sys

            print(message, file=sys.stderr, flush=True)
            raise RuntimeError(message)


_sim: _SimFaults | None = None


def sender() -> Beat | None:
    """This process's sender, made by the first heartbeat() call from the environment."""
    return _beat


def flush(settle: float = 0.2) -> None:
    """Send any progress still held back by the rate limit, and give it `settle`
    seconds on the wire: call it before a process ends with os._exit (zmq sends from its
    own thread, which os._exit does not wait for)."""
    if _beat is not None and _beat.endpoint is not None:
        try:
            _beat.flush()
            time.sleep(settle)
        except Exception:
            pass


def reset() -> None:
    """Forget the sender: the next heartbeat() reads the environment again."""
    global _beat
    _beat = None


def heartbeat(step: int, phase: str = "train", **metrics: Any) -> None:
    """Report progress: `step` just completed, in `phase` (train / checkpoint / eval)."""
    global _beat, _sim
    if _sim is None:
        _sim = _SimFaults()
    if _sim.active:
        _sim.check(int(os.environ.get("RANK", "0") or 0))  # may block (hang) or raise: on purpose
    try:
        if _beat is None:
            _beat = Beat(
                os.environ.get("TRAINGUARD_HEARTBEAT") or None,
                int(os.environ.get("RANK", "0") or 0),
                float(os.environ.get("TRAINGUARD_HEARTBEAT_INTERVAL", "0.5") or 0.5),
                os.environ.get("TRAINGUARD_JOB", ""),
            )
        _beat(step, phase if phase in PHASES else "train", metrics)
    except Exception:
        pass
