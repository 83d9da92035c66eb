"""One fault, one incident. Pure.

When one rank dies its peers fail moments later with collective errors, and a chip error
kills the rank on it: a single fault arrives as a burst of signals. The signals of one
attempt of a job within `window` seconds of the first form one incident whose root cause
is the most specific of them (hardware over its consequences, the dead rank over its
peers' network errors), earliest first among equals. The policy counts the incident
once, by its root; the others stay in the events as its consequences.

A root that nothing later can outrank — a rank killed by a signal, a chip error, a lost
node, a hang every node of the attempt has reported, any root once every rank of the
attempt has ended (all its ranks are accounted for) — need not wait out the window: the incident is decided `SETTLE` seconds after it
arrived (time for the signals already on the wire), so a restart starts sooner. Signals
of the same attempt that come after its incident was decided join that incident as
consequences; they never open a second one (the attempt is already being ended).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from supervisor.policy.engine import SignalEvent
from supervisor.shared.vocab import Signal

#: Most specific first: what a fault IS before what it CAUSED.
SPECIFICITY = {
    Signal.CHIP_ERROR: 0,
    Signal.NODE_LOST: 1,
    Signal.INTERCONNECT_TIMEOUT: 2,
    Signal.OOM: 3,
    Signal.HANG: 4,
    Signal.USER_ERROR: 5,
    Signal.CRASH: 6,
    Signal.NETWORK: 7,
    Signal.NO_CAPACITY: 8,
    Signal.CHIP_DEGRADED: 9,
    Signal.STRAGGLER: 10,
}
DEFAULT_WINDOW = 3.0
#: How long a decisive root waits for signals already in flight before it is decided: the
#: other ranks' last lines and exits, sent as they happen (an agent's loop wakes on a
#: rank's end and on a fault line) and a few ms on the wire. 0.25 s was a quarter of a
#: crash's whole restart on warm standbys.
SETTLE = 0.1
#: What a rank's own output can say about why it died.
_WHY_A_RANK_DIED = (Signal.CHIP_ERROR, Signal.INTERCONNECT_TIMEOUT, Signal.OOM, Signal.USER_ERROR)


#: A rank killed by a signal (SIGKILL, SIGSEGV, SIGBUS) is the cause of what its peers
#: then show — they hang in the collective, or fail with network or plain errors — so it
#: ranks just after the hardware, before a hang.
KILLED_SPECIFICITY = 1.5


def rank_of(event: SignalEvent, killed_by_signal: bool = False) -> tuple[float, float]:
    """The sort key of a signal for root cause: its kind's specificity (a crash by a
    signal above a hang, a hang above a crash with an error exit, which is how the peers
    of a stuck or dead rank end), then time."""
    specificity = KILLED_SPECIFICITY if killed_by_signal and event.signal is Signal.CRASH else SPECIFICITY.get(event.signal, 99)
    return (float(specificity), event.at)


def decisive(event: SignalEvent, killed_by_signal: bool) -> bool:
    """Can a signal arriving later be more specific than this one? Not for a chip error
    or a lost node (the most specific kinds), nor for a rank killed by a signal: what its
    peers show next is what its death caused."""
    return event.signal in (Signal.CHIP_ERROR, Signal.NODE_LOST) or (killed_by_signal and event.signal is Signal.CRASH)


@dataclass
class Incident:
    attempt: int
    opened_at: float  # monotonic
    signals: list[tuple[SignalEvent, bool]] = field(default_factory=list)  # (signal, killed by a signal)
    decisive_at: float | None = None  # monotonic: when a decisive signal arrived

    @property
    def root(self) -> SignalEvent:
        first = min(self.signals, key=lambda s: rank_of(*s))[0]
        if first.signal is Signal.CRASH:
            # A rank's own log said why it died (an HCCL timeout, a device error, OOM):
            # that is more specific than its exit, whatever the exit looked like.
            said = [s for s, _ in self.signals if s.node == first.node and s.rank == first.rank
                    and s.signal in _WHY_A_RANK_DIED]
            if said:
                return min(said, key=lambda s: rank_of(s))
        return first

    @property
    def consequences(self) -> list[SignalEvent]:
        root = self.root
        return [s for s, _ in self.signals if s is not root]

    def summary(self) -> str:
        root = self.root
        where = f" on {root.node}" + (f" chip {root.chip}" if root.chip is not None else "") if root.node else ""
        rank = f" rank {root.rank}" if root.rank is not None else ""
        rest = len(self.signals) - 1
        return (f"{root.signal.value}{where}{rank}" + (f" (and {rest} consequence{'s' if rest != 1 else ''}: "
                f"{', '.join(sorted({s.signal.value for s in self.consequences}))})" if rest else ""))


class IncidentTracker:
    """The open incident of one job, if any."""

    def __init__(self, window: float = DEFAULT_WINDOW, settle: float = SETTLE) -> None:
        self.window = window
        self.settle_s = settle
        self.open: Incident | None = None
        self.decided: Incident | None = None  # the last one decided (its late signals join it)

    def add(self, signal: SignalEvent, attempt: int, now: float, killed_by_signal: bool = False,
            settled: bool = False) -> None:
        """`settled`: the caller knows nothing more specific is coming (a hang whose
        every node has reported): decide after SETTLE, like a decisive kind."""
        if self.open is None and self.decided is not None and self.decided.attempt == attempt:
            self.decided.signals.append((signal, killed_by_signal))
            return
        if self.open is None or self.open.attempt != attempt:
            self.open = Incident(attempt, now)
        self.open.signals.append((signal, killed_by_signal))
        if self.open.decisive_at is None and (settled or decisive(signal, killed_by_signal)):
            self.open.decisive_at = now

    def settle(self, now: float) -> None:
        """Nothing more of this attempt's ranks is coming (they have all ended): the open
        incident is decided after SETTLE, not the rest of its window."""
        if self.open is not None and (self.open.decisive_at is None or now < self.open.decisive_at):
            self.open.decisive_at = now

    def due(self, now: float) -> Incident | None:
        """The incident, once its window has passed since its first signal, or its
        settle time since a decisive signal."""
        deadline = self.next_deadline()
        if self.open is not None and deadline is not None and now >= deadline:
            incident, self.open = self.open, None
            self.decided = incident
            return incident
        return None

    def next_deadline(self) -> float | None:
        if self.open is None:
            return None
        deadline = self.open.opened_at + self.window
        if self.open.decisive_at is not None:
            deadline = min(deadline, self.open.decisive_at + self.settle_s)
        return deadline

    def drop(self) -> None:
        self.open = None
