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


class _Beat:
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
        self._pending: tuple[int, str, dict[str, Any]] | None = None
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
                self._pending = (int(step), phase, metrics)
                if self._flusher is None:
                    self._flusher = threading.Thread(target=self._flush_loop, name="trainguard-heartbeat", daemon=True)
                    self._flusher.start()
                return
            self._send(int(step), phase, metrics, now)

    def _send(self, step: int, phase: str, metrics: dict[str, Any], now: float) -> None:
        """Send one progress message; the caller holds the lock."""
        self._pending = None
        try:
            import zmq

            frame = encode_progress(self.rank, step, phase, {k: _plain(v) for k, v in metrics.items()}, time.time(), os.getpid(), self.job)
            self._socket().send(frame, zmq.NOBLOCK)
            self.sent += 1
            # Only a delivered message starts the interval: one dropped before the
            # agent connected is retried at the next call, not a whole interval later.
            self._last, self._phase = now, phase
        except Exception:
            self.dropped += 1  # no agent, queue full, bad metric: never the loop's problem

    def _flush_loop(self) -> None:
        while True:
            time.sleep(self.interval / 2)
            now = time.monotonic()
            with self._lock:
                if self._pending is not None and now - self._last >= self.interval:
                    self._send(*self._pending, now)


_beat: _Beat | None = None


def heartbeat(step: int, phase: str = "train", **metrics: Any) -> None:
    """Report progress: `step` just completed, in `phase` (train / checkpoint / eval)."""
    global _beat
    try:
        if _beat is None:
            _beat = _Beat(
                os.environ.get("TRAINGUARD_HEARTBEAT") or None,
                int(os.environ.get("RANK", "0") or 0),
                float(os.environ.get("TRAINGUARD_HEARTBEAT_INTERVAL", "0.5") or 0.5),
                os.environ.get("TRAINGUARD_JOB", ""),
            )
        _beat(step, phase if phase in PHASES else "train", metrics)
    except Exception:
        pass
