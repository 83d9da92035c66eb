"""Counting frames that are not valid messages, and deciding when to log them.

A misbehaving peer can send thousands of bad frames a second; the daemon counts every one
but logs at most one `protocol.bad_frame` line per peer per window, carrying how many were
suppressed since the last line. Pure: the caller passes the time.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass


@dataclass(frozen=True)
class BadFrameReport:
    """One log line's worth: the frame that triggered it and what was held back before."""

    peer: str
    reason: str
    detail: str
    suppressed: int
    total_from_peer: int


class BadFrameCounter:
    def __init__(self, window: float = 60.0, max_peers: int = 10_000) -> None:
        self.window = window
        self.max_peers = max_peers
        self.by_reason: Counter[str] = Counter()
        self.total = 0
        # peer -> [window_start_mono, suppressed_in_window, total]
        self._peers: dict[str, list[float]] = {}

    def record(self, peer: str, reason: str, detail: str, now: float) -> BadFrameReport | None:
        """Count one bad frame; return a report when this one should be logged."""
        self.total += 1
        self.by_reason[reason] += 1
        state = self._peers.get(peer)
        if state is None:
            if len(self._peers) >= self.max_peers:
                self._evict(now)
            self._peers[peer] = [now, 0, 1]
            return BadFrameReport(peer, reason, detail, suppressed=0, total_from_peer=1)
        state[2] += 1
        if now - state[0] >= self.window:
            suppressed = int(state[1])
            state[0], state[1] = now, 0
            return BadFrameReport(peer, reason, detail, suppressed, int(state[2]))
        state[1] += 1
        return None

    @property
    def peers_tracked(self) -> int:
        """Peers with a window in the table (at most `max_peers`)."""
        return len(self._peers)

    def suppressed(self, peer: str) -> int:
        """Frames from `peer` counted since its last report, to be carried by the next one."""
        state = self._peers.get(peer)
        return 0 if state is None else int(state[1])

    def _evict(self, now: float) -> None:
        stale = [p for p, s in self._peers.items() if now - s[0] >= self.window]
        for peer in stale or list(self._peers)[: max(1, len(self._peers) // 2)]:
            del self._peers[peer]
