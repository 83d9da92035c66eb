"""supervisor.core.badframes.BadFrameCounter: count every bad frame, log at most one line per
peer per window, and stay bounded whatever the number of peers."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from supervisor.core.badframes import BadFrameCounter, BadFrameReport

WINDOW = 60.0


def test_the_first_bad_frame_of_a_peer_is_reported() -> None:
    counter = BadFrameCounter(window=WINDOW)
    report = counter.record("node-1", "malformed", "not msgpack", now=100.0)
    assert report == BadFrameReport("node-1", "malformed", "not msgpack", suppressed=0, total_from_peer=1)


def test_later_frames_within_the_window_are_counted_not_reported() -> None:
    counter = BadFrameCounter(window=WINDOW)
    counter.record("node-1", "malformed", "x", now=100.0)
    for i in range(1, 50):
        assert counter.record("node-1", "invalid", "y", now=100.0 + i) is None
    assert counter.total == 50
    assert counter.record("node-1", "invalid", "y", now=100.0 + WINDOW - 0.001) is None


def test_the_first_frame_after_the_window_is_reported_with_the_suppressed_count() -> None:
    counter = BadFrameCounter(window=WINDOW)
    counter.record("node-1", "malformed", "first", now=100.0)
    for i in range(7):
        counter.record("node-1", "malformed", "noise", now=101.0 + i)

    report = counter.record("node-1", "oversize", "big", now=100.0 + WINDOW)
    assert report == BadFrameReport("node-1", "oversize", "big", suppressed=7, total_from_peer=9)

    # A new window starts at that report: the count restarts from zero.
    assert counter.record("node-1", "malformed", "x", now=100.0 + WINDOW + 1) is None
    report = counter.record("node-1", "malformed", "x", now=100.0 + 2 * WINDOW)
    assert report is not None
    assert (report.suppressed, report.total_from_peer) == (1, 11)


def test_a_quiet_peer_is_reported_with_nothing_suppressed() -> None:
    counter = BadFrameCounter(window=WINDOW)
    counter.record("node-1", "malformed", "x", now=0.0)
    report = counter.record("node-1", "malformed", "x", now=1000.0)
    assert report is not None and report.suppressed == 0 and report.total_from_peer == 2


def test_peers_are_rate_limited_independently() -> None:
    counter = BadFrameCounter(window=WINDOW)
    assert counter.record("a", "malformed", "x", now=0.0) is not None
    assert counter.record("b", "malformed", "x", now=1.0) is not None
    assert counter.record("a", "malformed", "x", now=2.0) is None
    assert counter.record("b", "malformed", "x", now=3.0) is None


def test_totals_are_kept_by_reason() -> None:
    counter = BadFrameCounter(window=WINDOW)
    for reason, n in [("malformed", 3), ("invalid", 2), ("oversize", 1), ("unknown_version", 4)]:
        for i in range(n):
            counter.record(f"peer-{i}", reason, "d", now=float(i))
    assert counter.total == 10
    assert counter.by_reason == Counter(malformed=3, invalid=2, oversize=1, unknown_version=4)


def test_eviction_drops_stale_peers_first_and_keeps_live_ones() -> None:
    counter = BadFrameCounter(window=WINDOW, max_peers=3)
    counter.record("old-1", "malformed", "x", now=0.0)
    counter.record("old-2", "malformed", "x", now=0.0)
    counter.record("live", "malformed", "x", now=50.0)

    assert counter.record("new", "malformed", "x", now=70.0) is not None  # evicts old-1, old-2
    assert counter.peers_tracked == 2
    # "live" kept its window: still rate limited.
    assert counter.record("live", "malformed", "x", now=71.0) is None
    # An evicted peer is a stranger again: reported, its history forgotten.
    report = counter.record("old-1", "malformed", "x", now=72.0)
    assert report is not None and report.total_from_peer == 1


def test_eviction_without_stale_peers_drops_the_oldest_half() -> None:
    counter = BadFrameCounter(window=WINDOW, max_peers=4)
    for i, peer in enumerate(["p0", "p1", "p2", "p3"]):
        counter.record(peer, "malformed", "x", now=float(i))
    counter.record("p4", "malformed", "x", now=5.0)
    assert counter.peers_tracked == 3
    assert counter.record("p2", "malformed", "x", now=6.0) is None  # kept, still in its window
    assert counter.record("p0", "malformed", "x", now=6.0) is not None  # evicted, a stranger again
    assert counter.total == 7  # eviction never loses a count


@settings(max_examples=200, deadline=None)
@given(
    max_peers=st.integers(2, 20),
    frames=st.lists(st.tuples(st.integers(0, 200), st.floats(0, 30, allow_nan=False)), max_size=300),
)
def test_the_peer_table_stays_bounded(max_peers: int, frames: list[tuple[int, float]]) -> None:
    counter = BadFrameCounter(window=WINDOW, max_peers=max_peers)
    now = 0.0
    for peer, step in frames:
        now += step
        counter.record(f"peer-{peer}", "malformed", "x", now)
        assert counter.peers_tracked <= max_peers
    assert counter.total == len(frames)


def test_a_table_of_one_peer_stays_bounded() -> None:
    counter = BadFrameCounter(window=WINDOW, max_peers=1)
    for i in range(5):
        counter.record(f"peer-{i}", "malformed", "x", now=0.0)
        assert counter.peers_tracked <= 1


@settings(max_examples=200, deadline=None)
@given(
    frames=st.lists(
        st.tuples(st.sampled_from(["a", "b", "c"]), st.floats(0, 40, allow_nan=False), st.sampled_from(["malformed", "invalid"])),
        max_size=200,
    )
)
def test_every_frame_is_either_reported_or_counted_in_a_later_report(frames: list) -> None:
    """Per peer (never evicted here): each report stands for itself plus the frames it says
    were suppressed; reports of a peer are at least a window apart; nothing is lost."""
    counter = BadFrameCounter(window=WINDOW)
    now = 0.0
    sent: Counter[str] = Counter()
    accounted: Counter[str] = Counter()
    last_report: dict[str, float] = {}
    for peer, step, reason in frames:
        now += step
        sent[peer] += 1
        report = counter.record(peer, reason, "d", now)
        if report is None:
            assert peer in last_report and now - last_report[peer] < WINDOW
            continue
        assert peer not in last_report or now - last_report[peer] >= WINDOW
        assert report.total_from_peer == sent[peer]
        accounted[peer] += 1 + report.suppressed
        last_report[peer] = now
    for peer, n in sent.items():
        unreported = n - accounted[peer]
        assert unreported >= 0
        assert unreported == counter.suppressed(peer)  # held back for the next report
    assert counter.total == len(frames)
    assert sum(counter.by_reason.values()) == len(frames)
