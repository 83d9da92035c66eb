"""One fault, one incident (`supervisor/core/incidents.py`): the window, the root cause."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from supervisor.core.incidents import SPECIFICITY, IncidentTracker, rank_of
from supervisor.policy.engine import SignalEvent
from supervisor.shared.vocab import Signal

T0 = 1_700_000_000.0


def sig(signal: Signal, at: float, node: str = "a1", rank: int | None = 0, chip: int | None = None) -> SignalEvent:
    return SignalEvent(signal=signal, at=T0 + at, job="j", pool="ascend", node=node, rank=rank, chip=chip)


def test_every_signal_has_a_specificity() -> None:
    assert set(SPECIFICITY) == set(Signal)
    assert len(set(SPECIFICITY.values())) == len(Signal)


def test_killed_rank_is_the_root_over_its_peers_errors() -> None:
    tracker = IncidentTracker(window=3.0)
    killed = sig(Signal.CRASH, 10, node="a2", rank=1)
    tracker.add(sig(Signal.NETWORK, 9.9), attempt=1, now=9.9)
    tracker.add(killed, attempt=1, now=10.0, killed_by_signal=True)
    tracker.add(sig(Signal.CRASH, 10.05), attempt=1, now=10.05)
    assert tracker.due(10.08) is None
    assert tracker.next_deadline() == 10.1  # decisive: settled, not the whole window
    incident = tracker.due(10.1)
    assert incident is not None and incident.root is killed
    assert [s.signal for s in incident.consequences] == [Signal.NETWORK, Signal.CRASH]
    assert incident.summary() == "crash on a2 rank 1 (and 2 consequences: crash, network)"
    assert tracker.due(100.0) is None and tracker.next_deadline() is None


def test_signals_after_the_decision_join_the_decided_incident_never_a_second_one() -> None:
    tracker = IncidentTracker(window=3.0)
    tracker.add(sig(Signal.CHIP_ERROR, 10, chip=0), attempt=1, now=10.0)
    incident = tracker.due(10.1)
    assert incident is not None
    tracker.add(sig(Signal.NETWORK, 11, rank=1), attempt=1, now=11.0)  # a peer, late
    assert tracker.next_deadline() is None and tracker.due(20.0) is None
    assert [s.signal for s in incident.consequences] == [Signal.NETWORK]
    tracker.add(sig(Signal.CRASH, 30), attempt=2, now=30.0)  # the next attempt's fault is new
    assert tracker.due(33.0).attempt == 2  # type: ignore[union-attr]


def test_a_crash_with_an_exit_code_waits_the_window_for_a_more_specific_signal() -> None:
    tracker = IncidentTracker(window=3.0)
    tracker.add(sig(Signal.CRASH, 10), attempt=1, now=10.0)
    assert tracker.next_deadline() == 13.0


def test_chip_error_is_the_root_even_when_it_arrives_last() -> None:
    tracker = IncidentTracker()
    tracker.add(sig(Signal.CRASH, 10, rank=0), 1, 10.0)
    tracker.add(sig(Signal.INTERCONNECT_TIMEOUT, 10.2, node="a2", rank=1), 1, 10.2)
    chip = sig(Signal.CHIP_ERROR, 11, chip=3, rank=None)
    tracker.add(chip, 1, 11.0)
    incident = tracker.due(13.0)
    assert incident is not None and incident.root is chip
    assert incident.summary().startswith("chip_error on a1 chip 3 (and 2 consequences")


def test_earliest_first_among_equals() -> None:
    tracker = IncidentTracker()
    late, early = sig(Signal.CRASH, 10.4, rank=1), sig(Signal.CRASH, 10.1, rank=0)
    tracker.add(late, 1, 10.0)
    tracker.add(early, 1, 10.5)
    assert tracker.due(13.0).root is early


def test_a_new_attempt_opens_a_new_incident() -> None:
    tracker = IncidentTracker()
    tracker.add(sig(Signal.CRASH, 10), 1, 10.0)
    second = sig(Signal.HANG, 11)
    tracker.add(second, 2, 11.0)
    incident = tracker.due(14.0)
    assert incident.attempt == 2 and incident.signals == [(second, False)]


def test_drop_forgets_the_open_incident() -> None:
    tracker = IncidentTracker()
    tracker.add(sig(Signal.CRASH, 10), 1, 10.0)
    tracker.drop()
    assert tracker.due(20.0) is None


_signals = st.lists(
    st.tuples(st.sampled_from(list(Signal)), st.floats(0, 2.9), st.booleans(), st.integers(0, 3)),
    min_size=1, max_size=20,
)


@given(_signals)
def test_root_is_always_the_most_specific_signal(signals: list[tuple[Signal, float, bool, int]]) -> None:
    """The root is the most specific signal (a rank killed by a signal above its peers'
    hangs), earliest among equals — except that a crashed rank's own log line says why it
    died, and then that line is the root."""
    tracker = IncidentTracker(window=3.0)
    events = []
    for signal, offset, killed, rank in signals:
        event = sig(signal, 10 + offset, rank=rank)
        killed = killed and signal is Signal.CRASH
        events.append((event, killed))
        tracker.add(event, 1, 10.0 + offset, killed_by_signal=killed)
    incident = tracker.due(10.0 + 3.0 + 2.9)
    assert incident is not None and len(incident.signals) == len(signals)
    first = min(events, key=lambda ek: rank_of(*ek))[0]
    expected = first
    if first.signal is Signal.CRASH:
        said = [e for e, _ in events if e.node == first.node and e.rank == first.rank and e.signal in
                (Signal.CHIP_ERROR, Signal.INTERCONNECT_TIMEOUT, Signal.OOM, Signal.USER_ERROR)]
        if said:
            expected = min(said, key=lambda e: rank_of(e))
    assert incident.root is expected