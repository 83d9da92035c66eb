"""Time as a value. Pure code takes an `Instant`; only the I/O shells read the clock.

`mono` (time.monotonic) measures durations and deadlines and never jumps; `wall`
(time.time) is for display, for the store and for the wire, where other machines read it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Instant:
    mono: float
    wall: float

    def after(self, seconds: float) -> "Instant":
        return Instant(self.mono + seconds, self.wall + seconds)


def system_now() -> Instant:
    return Instant(time.monotonic(), time.time())
