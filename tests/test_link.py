"""agents.link: Backoff, DaemonLink and Outbox, with literal monotonic times and an injected
random source."""

from __future__ import annotations

from typing import Iterator

import pytest

from agents.link import UNDELIVERED_RETRY, Backoff, DaemonLink, LinkState, Outbox
from supervisor.shared.protocol import Ack, Event


def fixed(value: float):
    return lambda: value


def sequence(*values: float):
    it: Iterator[float] = iter(values)
    return lambda: next(it)


# --- Backoff --------------------------------------------------------------------------


def test_backoff_doubles_from_initial_up_to_the_cap() -> None:
    backoff = Backoff(initial=0.5, maximum=10.0, factor=2.0, rand=fixed(1.0))
    assert [backoff.next_delay() for _ in range(8)] == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]
    assert backoff.attempt == 8


def test_backoff_jitter_spans_half_to_all_of_the_step() -> None:
    backoff = Backoff(initial=0.5, maximum=10.0, factor=2.0, rand=sequence(0.0, 0.5, 0.0, 1.0, 0.25, 0.0))
    assert [backoff.next_delay() for _ in range(6)] == [0.25, 0.75, 1.0, 4.0, 5.0, 5.0]


def test_backoff_reset_starts_again_from_initial() -> None:
    backoff = Backoff(initial=1.0, maximum=60.0, factor=3.0, rand=fixed(1.0))
    assert [backoff.next_delay() for _ in range(3)] == [1.0, 3.0, 9.0]
    backoff.reset()
    assert backoff.attempt == 0
    assert backoff.next_delay() == 1.0


def test_backoff_stays_at_the_cap_however_long_the_outage() -> None:
    backoff = Backoff(initial=0.5, maximum=10.0, factor=2.0, rand=fixed(1.0))
    for _ in range(2000):  # ~5.5 hours of capped retries without an ack
        assert backoff.next_delay() <= 10.0


# --- DaemonLink: registering ----------------------------------------------------------


def make_link(heartbeat_interval: float = 2.0) -> DaemonLink:
    return DaemonLink(Backoff(initial=0.5, maximum=10.0, factor=2.0, rand=fixed(1.0)), heartbeat_interval)


def ack(ref: str, ok: bool = True, error: str | None = None, **detail: object) -> Ack:
    return Ack(id="ack", ts=0.0, ref=ref, ok=ok, error=error, detail=detail)


def registered_link(now: float = 10.0, heartbeat_interval: float = 2.0) -> DaemonLink:
    link = make_link()
    link.register_sent("reg-1", now, delivered=True)
    assert link.on_ack(ack("reg-1", heartbeat_interval=heartbeat_interval, daemon_instance="d-1"), now) == "registered"
    return link


def test_a_new_link_registers_at_once() -> None:
    link = make_link()
    assert link.state is LinkState.UNREGISTERED
    assert link.register_due(0.0)
    assert not link.heartbeat_due(100.0)


def test_a_delivered_register_is_retried_after_the_backoff() -> None:
    link = make_link()
    link.register_sent("reg-1", 100.0, delivered=True)
    assert link.state is LinkState.REGISTERING
    assert not link.register_due(100.499)
    assert link.register_due(100.5)
    assert link.next_wakeup() == 100.5

    link.register_sent("reg-2", 100.5, delivered=True)
    assert not link.register_due(101.499)
    assert link.register_due(101.5)
    assert link.register_attempts == 2


def test_an_undelivered_register_is_retried_soon_without_advancing_the_backoff() -> None:
    link = make_link()
    link.register_sent("reg-1", 100.0, delivered=False)
    assert link.state is LinkState.UNREGISTERED
    assert not link.register_due(100.0 + UNDELIVERED_RETRY - 0.001)
    assert link.register_due(100.0 + UNDELIVERED_RETRY)
    assert link.backoff.attempt == 0
    assert link.register_attempts == 1

    link.register_sent("reg-2", 101.0, delivered=True)
    assert link.register_due(101.5)  # the first backoff step, not the second


def test_the_ack_of_the_awaited_register_completes_registration() -> None:
    link = make_link()
    link.register_sent("reg-1", 0.0, delivered=True)
    link.register_sent("reg-2", 0.5, delivered=True)

    assert link.on_ack(ack("reg-2", heartbeat_interval=0.3, daemon_instance="daemon-7"), 0.6) == "registered"
    assert link.registered
    assert link.heartbeat_interval == 0.3
    assert link.daemon_instance == "daemon-7"
    assert link.last_heard == 0.6
    assert link.backoff.attempt == 0
    assert not link.register_due(1000.0)
    assert not link.heartbeat_due(0.6 + 0.3 - 0.001)
    assert link.heartbeat_due(0.6 + 0.3)


def test_an_ack_of_an_older_register_does_not_complete_registration() -> None:
    link = make_link()
    link.register_sent("reg-1", 0.0, delivered=True)
    link.register_sent("reg-2", 0.5, delivered=True)
    assert link.on_ack(ack("reg-1"), 0.6) is None
    assert link.state is LinkState.REGISTERING


def test_a_register_ack_without_an_interval_keeps_the_current_one() -> None:
    link = make_link(heartbeat_interval=1.5)
    link.register_sent("reg-1", 0.0, delivered=True)
    assert link.on_ack(ack("reg-1"), 0.1) == "registered"
    assert link.heartbeat_interval == 1.5
    assert link.daemon_instance is None


def test_a_refused_register_does_not_complete_registration() -> None:
    link = make_link()
    link.register_sent("reg-1", 0.0, delivered=True)
    assert link.on_ack(ack("reg-1", ok=False, error="bad_request"), 0.1) is None
    assert not link.registered


def test_an_unregistered_ack_drops_the_link_to_register_again_at_once() -> None:
    link = registered_link(now=10.0)
    assert link.on_ack(ack("hb-9", ok=False, error="unregistered"), 30.0) == "unregistered"
    assert link.state is LinkState.UNREGISTERED
    assert link.lost_at == 30.0
    assert link.register_attempts == 0
    assert link.register_due(30.0)
    assert link.next_wakeup() == 30.0
    assert not link.heartbeat_due(1000.0)


def test_an_unregistered_ack_while_registering_changes_nothing() -> None:
    link = make_link()
    link.register_sent("reg-1", 0.0, delivered=True)
    assert link.on_ack(ack("hb-old", ok=False, error="unregistered"), 0.1) is None
    assert link.state is LinkState.REGISTERING


def test_other_acks_only_refresh_last_heard() -> None:
    link = registered_link(now=10.0)
    assert link.on_ack(ack("hb-1"), 12.0) is None
    assert link.on_ack(ack("ev-1", ok=False, error="something else"), 13.0) is None
    assert link.registered
    assert link.last_heard == 13.0


# --- DaemonLink: heartbeats and silence -----------------------------------------------


def test_heartbeats_are_due_every_interval() -> None:
    link = registered_link(now=10.0, heartbeat_interval=2.0)
    assert not link.heartbeat_due(11.999)
    assert link.heartbeat_due(12.0)
    link.heartbeat_sent(12.0)
    assert not link.heartbeat_due(13.999)
    assert link.heartbeat_due(14.0)


@pytest.mark.parametrize("interval, timeout", [(0.3, 5.0), (1.0, 5.0), (2.0, 6.0), (10.0, 30.0)])
def test_silence_timeout_is_three_intervals_but_at_least_five_seconds(interval: float, timeout: float) -> None:
    assert make_link(heartbeat_interval=interval).silence_timeout == timeout


def test_a_silent_daemon_is_declared_after_silence_timeout_and_not_before() -> None:
    link = registered_link(now=10.0, heartbeat_interval=2.0)  # silence_timeout 6
    link.on_ack(ack("hb-1"), 12.0)
    assert link.check_silence(12.0 + 6.0 - 0.001) is None
    assert link.registered

    assert link.check_silence(18.0) == 6.0
    assert link.state is LinkState.UNREGISTERED
    assert link.lost_at == 18.0
    assert link.register_due(18.0)


def test_check_silence_does_nothing_when_not_registered() -> None:
    link = make_link()
    link.register_sent("reg-1", 0.0, delivered=True)
    link.last_heard = 0.0
    assert link.check_silence(1000.0) is None
    assert link.state is LinkState.REGISTERING


def test_next_wakeup_is_the_next_heartbeat_or_the_silence_deadline() -> None:
    link = registered_link(now=10.0, heartbeat_interval=2.0)
    assert link.next_wakeup() == 12.0
    for t in (12.0, 14.0, 16.0):
        link.heartbeat_sent(t)  # sent, but never acked
    assert link.next_wakeup() == 16.0  # silence at 10 + 6 comes before the heartbeat at 18


# --- Outbox ---------------------------------------------------------------------------


def event(event_id: str) -> Event:
    return Event(id=event_id, ts=0.0, node="n1", name="rank.crashed", observed_at=0.0)


def ids(events: list[Event]) -> list[str]:
    return [e.id for e in events]


def test_new_events_are_due_at_once_oldest_first() -> None:
    outbox = Outbox()
    for i in range(3):
        outbox.add(event(f"e{i}"))
    assert len(outbox) == 3
    assert ids(outbox.due(0.0)) == ["e0", "e1", "e2"]
    assert outbox.next_due() is None


def test_a_sent_event_is_resent_after_resend_after() -> None:
    outbox = Outbox(resend_after=3.0)
    outbox.add(event("e0"))
    outbox.add(event("e1"))
    outbox.mark_sent("e0", 10.0)

    assert ids(outbox.due(12.999)) == ["e1"]
    assert ids(outbox.due(13.0)) == ["e0", "e1"]
    assert outbox.next_due() == 13.0


def test_an_acked_event_is_gone() -> None:
    outbox = Outbox()
    outbox.add(event("e0"))
    outbox.mark_sent("e0", 0.0)
    assert outbox.acked("e0") is True
    assert len(outbox) == 0
    assert outbox.due(100.0) == []
    assert outbox.acked("e0") is False  # a duplicate ack
    outbox.mark_sent("e0", 1.0)  # a late mark_sent does not resurrect it
    assert len(outbox) == 0


def test_a_full_outbox_drops_the_oldest_and_counts_it() -> None:
    outbox = Outbox(capacity=3)
    for i in range(5):
        outbox.add(event(f"e{i}"))
    assert len(outbox) == 3
    assert outbox.dropped == 2
    assert ids(outbox.due(0.0)) == ["e2", "e3", "e4"]


def test_unsend_all_makes_everything_due_again() -> None:
    outbox = Outbox(resend_after=3.0)
    for i in range(3):
        outbox.add(event(f"e{i}"))
        outbox.mark_sent(f"e{i}", 10.0)
    assert outbox.due(11.0) == []
    outbox.unsend_all()
    assert ids(outbox.due(11.0)) == ["e0", "e1", "e2"]
    assert outbox.next_due() is None
