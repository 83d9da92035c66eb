"""The agent's side of its relationship with the daemon, without sockets or clocks.

`DaemonLink` decides when to register, when to heartbeat and when the daemon has gone
quiet; `Outbox` keeps events until the daemon acknowledges them, so nothing observed
while the daemon is away is lost. Times are monotonic seconds passed in by the caller.
"""

from __future__ import annotations

import enum
import random
from collections import OrderedDict
from typing import Callable

from supervisor.shared.protocol import Ack, Event


class Backoff:
    """Exponential backoff with jitter: initial, ×factor per attempt, capped at maximum;
    each delay is drawn from [50 %, 100 %] of the step so that thousands of agents that lost
    the same daemon do not come back in lockstep."""

    def __init__(
        self,
        initial: float = 0.5,
        maximum: float = 10.0,
        factor: float = 2.0,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.initial, self.maximum, self.factor, self._rand = initial, maximum, factor, rand
        self.attempt = 0

    def next_delay(self) -> float:
        # Capping the exponent too keeps a days-long outage from overflowing the float.
        exponent = min(self.attempt, 64)
        step = min(self.maximum, self.initial * self.factor**exponent)
        self.attempt += 1
        return step * (0.5 + 0.5 * self._rand())

    def reset(self) -> None:
        self.attempt = 0


class LinkState(str, enum.Enum):
    """unregistered → registering (Register sent, waiting for its Ack) → registered;
    registered → unregistered when the daemon says it does not know us (it restarted) or
    has been silent for `silence_timeout`."""

    UNREGISTERED = "unregistered"
    REGISTERING = "registering"
    REGISTERED = "registered"


#: How soon to retry a Register that could not even be handed to a connection; zmq is
#: reconnecting underneath with its own backoff, so this costs nothing.
UNDELIVERED_RETRY = 0.5


class DaemonLink:
    def __init__(self, backoff: Backoff | None = None, heartbeat_interval: float = 2.0) -> None:
        self.backoff = backoff or Backoff()
        self.state = LinkState.UNREGISTERED
        self.heartbeat_interval = heartbeat_interval
        self.daemon_instance: str | None = None
        self.last_heard: float | None = None
        self.lost_at: float | None = None  # when the current outage began, if any
        self.register_attempts = 0
        self._awaiting: str | None = None
        self._next_register = 0.0
        self._next_heartbeat = 0.0

    @property
    def registered(self) -> bool:
        return self.state is LinkState.REGISTERED

    @property
    def silence_timeout(self) -> float:
        return max(5.0, 3 * self.heartbeat_interval)

    # --- registering ---------------------------------------------------------------

    def register_due(self, now: float) -> bool:
        return not self.registered and now >= self._next_register

    def register_sent(self, msg_id: str, now: float, delivered: bool) -> None:
        self.register_attempts += 1
        if delivered:
            self.state = LinkState.REGISTERING
            self._awaiting = msg_id
            self._next_register = now + self.backoff.next_delay()
        else:
            self._next_register = now + UNDELIVERED_RETRY

    def on_ack(self, ack: Ack, now: float) -> str | None:
        """Returns "registered" when this ack completes registration, "unregistered"
        when the daemon asks us to register again, else None."""
        self.last_heard = now
        if ack.ok and ack.ref == self._awaiting and not self.registered:
            self.state = LinkState.REGISTERED
            self._awaiting = None
            self.backoff.reset()
            self.heartbeat_interval = float(ack.detail.get("heartbeat_interval", self.heartbeat_interval))
            self.daemon_instance = ack.detail.get("daemon_instance")
            self._next_heartbeat = now + self.heartbeat_interval
            return "registered"
        if not ack.ok and ack.error == "unregistered" and self.registered:
            self._drop(now, immediately=True)
            return "unregistered"
        return None

    # --- heartbeats and silence ----------------------------------------------------

    def heartbeat_due(self, now: float) -> bool:
        return self.registered and now >= self._next_heartbeat

    def heartbeat_sent(self, now: float) -> None:
        self._next_heartbeat = now + self.heartbeat_interval

    def check_silence(self, now: float) -> float | None:
        """If registered but unheard-from for silence_timeout, fall back to registering
        and return how long the daemon has been silent."""
        if self.registered and self.last_heard is not None:
            silent = now - self.last_heard
            if silent >= self.silence_timeout:
                self._drop(now, immediately=True)
                return silent
        return None

    def next_wakeup(self) -> float:
        if self.registered:
            silence_at = (self.last_heard or 0.0) + self.silence_timeout
            return min(self._next_heartbeat, silence_at)
        return self._next_register

    def _drop(self, now: float, immediately: bool) -> None:
        self.state = LinkState.UNREGISTERED
        self._awaiting = None
        self.lost_at = now
        self.register_attempts = 0
        self._next_register = now if immediately else now + self.backoff.next_delay()


class Outbox:
    """Events waiting for the daemon's Ack, oldest first; resent every `resend_after`
    seconds while unacknowledged. When full, the oldest is dropped and counted."""

    def __init__(self, capacity: int = 10_000, resend_after: float = 3.0) -> None:
        self.capacity = capacity
        self.resend_after = resend_after
        self.dropped = 0
        self._events: OrderedDict[str, tuple[Event, float | None]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._events)

    def add(self, event: Event) -> None:
        if len(self._events) >= self.capacity:
            self._events.popitem(last=False)
            self.dropped += 1
        self._events[event.id] = (event, None)

    def due(self, now: float) -> list[Event]:
        return [
            event
            for event, sent in self._events.values()
            if sent is None or now - sent >= self.resend_after
        ]

    def mark_sent(self, event_id: str, now: float) -> None:
        if event_id in self._events:
            self._events[event_id] = (self._events[event_id][0], now)

    def acked(self, event_id: str) -> bool:
        return self._events.pop(event_id, None) is not None

    def unsend_all(self) -> None:
        """The daemon forgot us: everything unacknowledged goes again after registering."""
        for event_id, (event, _) in list(self._events.items()):
            self._events[event_id] = (event, None)

    def next_due(self) -> float | None:
        times = [sent + self.resend_after for _, sent in self._events.values() if sent is not None]
        return min(times, default=None)
