"""supervisor.policy.engine: signals in, decisions out, with literal times in seconds."""

from __future__ import annotations

import functools
from typing import Iterable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from supervisor.policy import engine
from supervisor.policy.engine import Count, Decision, JobPolicy, SignalEvent
from supervisor.policy.loader import load_bytes, load_file
from supervisor.policy.schema import Policy
from supervisor.policy.shipped import shipped_policy_dir
from supervisor.shared.vocab import Action, Severity, Signal

POLICIES = shipped_policy_dir()
DEFAULT = load_file(POLICIES / "default.yaml")
PATIENT = load_file(POLICIES / "patient-ascend.yaml")

POOLS = """\
version: 1
pools:
  ascend: {accelerator: ascend}
  nvidia: {accelerator: nvidia}
"""

M, H = 60.0, 3600.0


def policy(body: str) -> Policy:
    """A Policy from the pools above plus `body` (rules, limits, failback...)."""
    return load_bytes((POOLS + body).encode(), "test.yaml")


def sig(signal: Signal | str, at: float, pool: str | None = "ascend", node: str | None = None,
        chip: int | None = None, severity: Severity | None = None) -> SignalEvent:
    return SignalEvent(Signal(signal), at, job="j", pool=pool, node=node, chip=chip, severity=severity)


def feed(job: JobPolicy, events: Iterable[SignalEvent], pool_health: dict[str, int] | None = None) -> list[list[Decision]]:
    """The decisions for each event in turn, each decided at the event's own time."""
    return [job.on_signal(e, pool_health, e.at) for e in events]


def actions(results: list[list[Decision]]) -> list[list[tuple[Action, bool]]]:
    return [[(d.action, d.blocked) for d in ds] for ds in results]


def only(decisions: list[Decision]) -> Decision:
    assert len(decisions) == 1, decisions
    return decisions[0]


# --- default.yaml: the Ascend → Nvidia failover -----------------------------------


def test_three_interconnect_timeouts_within_30m_fail_over_to_nvidia() -> None:
    job = JobPolicy(DEFAULT, "j", "ascend")
    burst = [sig("interconnect_timeout", t, node="n1") for t in (0, 10 * M, 20 * M)]

    first, second, third = feed(job, burst)

    assert [only(first).action, only(second).action] == [Action.RESTART, Action.RESTART]
    assert only(first).rule == "any-fault"
    d = only(third)
    assert d.action is Action.FAILOVER
    assert not d.blocked
    assert d.rule == "ascend-unstable"
    assert (d.from_pool, d.to_pool) == ("ascend", "nvidia")
    assert d.checkpoint_first is True
    assert d.counts == (Count("interconnect_timeout pool=ascend within 30m", 39, observed=3, threshold=3, within=1800.0),)
    assert [e["at"] for e in d.evidence] == [0, 600, 1200]
    assert all(e["signal"] == "interconnect_timeout" and e["pool"] == "ascend" for e in d.evidence)
    assert d.reason == "3 × interconnect_timeout pool=ascend within 30m (threshold 3): fail over from ascend to nvidia"
    assert d.event_name == "policy.decision"
    assert job.pool == "nvidia"
    assert job.last_failover == 1200


def test_the_same_three_timeouts_over_three_hours_only_restart() -> None:
    job = JobPolicy(DEFAULT, "j", "ascend")

    results = feed(job, [sig("interconnect_timeout", t) for t in (0, 1.5 * H, 3 * H)])

    assert actions(results) == [[(Action.RESTART, False)]] * 3
    assert [only(r).rule for r in results] == ["any-fault"] * 3
    # The restart window (1h) forgot the earlier ones each time.
    assert only(results[2]).reason.endswith("restart on ascend from the latest checkpoint (restart 1 of at most 10 within 1h)")
    assert job.pool == "ascend"


@pytest.mark.parametrize("third_at, action", [(30 * M - 1, Action.FAILOVER), (30 * M, Action.RESTART)])
def test_the_window_is_open_at_its_far_end(third_at: float, action: Action) -> None:
    # (now - 30m, now]: a signal exactly 30 minutes old no longer counts.
    job = JobPolicy(DEFAULT, "j", "ascend")
    results = feed(job, [sig("interconnect_timeout", t) for t in (0, 15 * M, third_at)])
    assert only(results[2]).action is action


def test_timeouts_from_another_pool_do_not_count_for_ascend() -> None:
    job = JobPolicy(DEFAULT, "j", "ascend")
    results = feed(job, [sig("interconnect_timeout", t, pool="nvidia") for t in (0, 1, 2)])
    assert actions(results) == [[(Action.RESTART, False)]] * 3


def test_two_hangs_on_ascend_fail_over_through_another_branch_of_any() -> None:
    job = JobPolicy(DEFAULT, "j", "ascend")
    results = feed(job, [sig("hang", 0), sig("hang", 50 * M)])
    d = only(results[1])
    assert (d.action, d.rule) == (Action.FAILOVER, "ascend-unstable")
    assert d.counts == (Count("hang pool=ascend within 1h", 41, observed=2, threshold=2, within=3600.0),)


# --- blocked failovers ------------------------------------------------------------

PING_PONG = """\
rules:
  - name: ascend-bad
    when: {signal: hang, pool: ascend, count: 2, within: 10m}
    then: {action: failover, to: nvidia}
  - name: nvidia-bad
    when: {signal: hang, pool: nvidia, count: 2, within: 10m}
    then: {action: failover, to: ascend}
  - name: restart
    when: {signal: hang}
    then: {action: restart}
limits: {failover_cooldown: 1h}
checkpoint: {before_failover: false}
"""


def test_failover_cooldown_blocks_a_second_failover_then_the_next_rule_decides() -> None:
    job = JobPolicy(policy(PING_PONG), "j", "ascend")
    results = feed(job, [sig("hang", 0), sig("hang", 60)])
    assert only(results[1]).action is Action.FAILOVER
    assert only(results[1]).checkpoint_first is False  # checkpoint.before_failover: false
    assert job.pool == "nvidia"

    results = feed(job, [sig("hang", 120, pool="nvidia"), sig("hang", 180, pool="nvidia")])

    assert actions(results) == [[(Action.RESTART, False)], [(Action.FAILOVER, True), (Action.RESTART, False)]]
    blocked, restart = results[1]
    assert blocked.rule == "nvidia-bad"
    assert blocked.to_pool == "ascend"
    assert blocked.event_name == "policy.blocked"
    assert blocked.reason == (
        "rule 'nvidia-bad' wants a failover to ascend (2 × hang pool=nvidia within 10m (threshold 2)) "
        "but the last failover was 2m ago and limits.failover_cooldown is 1h; trying the next rules"
    )
    assert restart.rule == "restart"
    assert job.pool == "nvidia"
    assert job.last_failover == 60


def test_failover_is_allowed_again_once_the_cooldown_has_passed() -> None:
    job = JobPolicy(policy(PING_PONG), "j", "ascend")
    feed(job, [sig("hang", 0), sig("hang", 60)])

    results = feed(job, [sig("hang", 60 + H - 20, pool="nvidia"), sig("hang", 60 + H, pool="nvidia")])

    assert actions(results) == [[(Action.RESTART, False)], [(Action.FAILOVER, False)]]
    assert (only(results[1]).from_pool, only(results[1]).to_pool) == ("nvidia", "ascend")
    assert job.pool == "ascend"


def test_failover_blocked_while_the_target_pool_has_too_few_healthy_nodes() -> None:
    job = JobPolicy(DEFAULT, "j", "ascend")
    burst = [sig("interconnect_timeout", t) for t in (0, 60, 120)]

    results = feed(job, burst, pool_health={"ascend": 4, "nvidia": 0})

    assert actions(results)[2] == [(Action.FAILOVER, True), (Action.RESTART, False)]
    blocked = results[2][0]
    assert blocked.reason == (
        "rule 'ascend-unstable' wants a failover to nvidia (3 × interconnect_timeout pool=ascend within 30m "
        "(threshold 3)) but pool nvidia has 0 healthy nodes, fewer than its min_healthy_nodes (1); trying the next rules"
    )
    assert job.pool == "ascend"

    # The blocked rule did not consume its signals: once nvidia is healthy, the next
    # timeout fails over, counting all four.
    d = only(job.on_signal(sig("interconnect_timeout", 180), {"ascend": 4, "nvidia": 1}, 180))
    assert (d.action, d.blocked, d.to_pool) == (Action.FAILOVER, False, "nvidia")
    assert d.counts[0].observed == 4


def test_min_healthy_nodes_comes_from_the_target_pool() -> None:
    job = JobPolicy(PATIENT, "j", "ascend")  # nvidia needs 2 healthy nodes
    events = [sig("interconnect_timeout", t) for t in range(5)] + [sig("chip_error", 5, node="n1"), sig("hang", 6)]
    results = feed(job, events, pool_health={"ascend": 8, "nvidia": 1})
    blocked = results[-1][0]
    assert (blocked.action, blocked.blocked, blocked.rule) == (Action.FAILOVER, True, "ascend-unstable")
    assert blocked.reason.endswith("but pool nvidia has 1 healthy nodes, fewer than its min_healthy_nodes (2); trying the next rules")
    assert results[-1][1].rule == "any-fault"


def test_failover_blocked_when_already_on_the_target_pool() -> None:
    job = JobPolicy(DEFAULT, "j", "nvidia")

    results = feed(job, [sig("interconnect_timeout", t) for t in (0, 60, 120)])

    assert actions(results)[2] == [(Action.FAILOVER, True), (Action.RESTART, False)]
    assert results[2][0].reason.endswith("but the job already runs on nvidia; trying the next rules")
    assert results[2][1].reason.startswith("1 × crash|hang|interconnect_timeout|network|oom (threshold 1): restart on nvidia")
    assert job.last_failover is None


def test_a_blocked_failover_with_no_rule_after_it_still_says_the_job_continues() -> None:
    p = policy("rules:\n  - name: move\n    when: {signal: hang, count: 2}\n    then: {action: failover, to: nvidia}\n")
    job = JobPolicy(p, "j", "nvidia")
    results = feed(job, [sig("hang", 0), sig("hang", 1)])
    assert actions(results) == [[(Action.NONE, False)], [(Action.FAILOVER, True), (Action.NONE, False)]]


# --- limits.max_restarts ----------------------------------------------------------

LIMITED = """\
rules:
  - name: crashes
    when: {signal: crash}
    then: {action: restart}
  - name: bad-chip
    when: {signal: chip_error}
    then: {action: exclude, exclude: faulty_chip}
limits: {max_restarts: 3, within: 10m}
"""


def test_restart_beyond_max_restarts_within_the_window_fails_the_job() -> None:
    job = JobPolicy(policy(LIMITED), "j", "ascend")

    results = feed(job, [sig("crash", 0), sig("crash", 10), sig("chip_error", 20, node="n1", chip=2), sig("crash", 30)])

    assert [only(r).action for r in results] == [Action.RESTART, Action.RESTART, Action.EXCLUDE, Action.FAIL]
    assert (only(results[2]).exclude_node, only(results[2]).exclude_chip) == ("n1", 2)
    assert only(results[2]).reason == (
        "1 × chip_error (threshold 1): restart on ascend without chip 2 of n1 from the latest checkpoint "
        "(restart 3 of at most 3 within 10m)"
    )
    fail = only(results[3])
    assert fail.rule == "crashes"
    assert fail.reason == (
        "1 × crash (threshold 1): rule 'crashes' asks for a restart, but the job already restarted 3 times "
        "within 10m (limits.max_restarts: 3); the job fails"
    )
    assert job.finished
    # A failed job decides nothing more, whatever arrives.
    assert feed(job, [sig("crash", 40), sig("user_error", 50), sig("crash", 2 * H)]) == [[], [], []]


def test_the_default_policy_fails_the_eleventh_restart_within_an_hour() -> None:
    job = JobPolicy(DEFAULT, "j", "ascend")
    results = feed(job, [sig("crash", t * M) for t in range(11)])
    assert [only(r).action for r in results] == [Action.RESTART] * 10 + [Action.FAIL]
    assert "(limits.max_restarts: 10)" in only(results[10]).reason


def test_restarts_spread_beyond_the_window_do_not_fail() -> None:
    job = JobPolicy(policy(LIMITED), "j", "ascend")
    # Never more than 3 restarts in any (now - 10m, now].
    times = [0, 200, 400, 600, 800, 1000, 1200, 1400]
    results = feed(job, [sig("crash", t) for t in times])
    assert [only(r).action for r in results] == [Action.RESTART] * len(times)
    assert not job.finished
    # At t=600 the restart at 0 is exactly 10 minutes old and has left the window.
    assert only(results[3]).reason.endswith("(restart 3 of at most 3 within 10m)")


def test_max_restarts_zero_fails_the_first_restart() -> None:
    job = JobPolicy(policy(LIMITED.replace("max_restarts: 3", "max_restarts: 0")), "j", "ascend")
    assert only(job.on_signal(sig("crash", 0), None, 0)).action is Action.FAIL


def test_failovers_and_alerts_do_not_count_as_restarts() -> None:
    body = LIMITED.replace("rules:\n", "rules:\n  - name: slow\n    when: {signal: straggler}\n    then: {action: alert}\n")
    job = JobPolicy(policy(body), "j", "ascend")
    results = feed(job, [sig("straggler", t) for t in range(10)] + [sig("crash", t) for t in range(10, 13)])
    assert [only(r).action for r in results] == [Action.ALERT] * 10 + [Action.RESTART] * 3


# --- stop, none, severity, all ----------------------------------------------------


def test_user_error_stops_the_job() -> None:
    job = JobPolicy(DEFAULT, "j", "ascend")
    d = only(job.on_signal(sig("user_error", 5, node="n1"), None, 5))
    assert (d.action, d.rule) == (Action.STOP, "user-error")
    assert d.reason == "1 × user_error (threshold 1): stop the job (restarting would not help)"
    assert job.finished
    assert job.on_signal(sig("crash", 6), None, 6) == []


def test_a_signal_no_rule_matches_yields_none() -> None:
    job = JobPolicy(PATIENT, "j", "ascend")  # patient-ascend has no rule for stragglers
    d = only(job.on_signal(sig("straggler", 5, pool="nvidia", node="n3"), None, 5))
    assert d.action is Action.NONE
    assert d.rule is None
    assert not d.blocked
    assert d.reason == "no rule matched straggler on pool nvidia; the job continues as it is"
    assert d.evidence == ({"at": 5, "signal": "straggler", "pool": "nvidia", "node": "n3"},)
    assert not job.finished


def test_alert_decision_carries_the_rule_message() -> None:
    d = only(JobPolicy(DEFAULT, "j", "ascend").on_signal(sig("chip_degraded", 1), None, 1))
    assert (d.action, d.rule) == (Action.ALERT, "degraded")
    assert d.message == "a chip is degraded or a node is slow; check it before it fails"
    assert d.reason == "1 × chip_degraded|straggler (threshold 1): alert a human; the job is not touched"


SEVERE = """\
rules:
  - name: severe
    when: {signal: [crash, chip_degraded], severity: critical}
    then: {action: stop}
  - name: medium
    when: {signal: [crash, chip_degraded], severity: error}
    then: {action: restart}
"""


@pytest.mark.parametrize(
    "signal, severity, action",
    [
        ("crash", None, Action.RESTART),  # crash defaults to error
        ("crash", Severity.ERROR, Action.RESTART),
        ("crash", Severity.CRITICAL, Action.STOP),
        ("crash", Severity.WARNING, Action.NONE),
        ("chip_degraded", None, Action.NONE),  # chip_degraded defaults to warning
        ("chip_degraded", Severity.CRITICAL, Action.STOP),
    ],
)
def test_severity_is_a_minimum(signal: str, severity: Severity | None, action: Action) -> None:
    job = JobPolicy(policy(SEVERE), "j", "ascend")
    assert only(job.on_signal(sig(signal, 0, severity=severity), None, 0)).action is action


def test_patient_ascend_excludes_only_critical_chip_errors() -> None:
    job = JobPolicy(PATIENT, "j", "ascend")
    critical = only(job.on_signal(sig("chip_error", 0, node="n1", chip=4), None, 0))  # critical by default
    assert (critical.action, critical.exclude_node, critical.exclude_chip) == (Action.EXCLUDE, "n1", 4)
    warning = only(job.on_signal(sig("chip_error", 1, node="n1", chip=4, severity=Severity.WARNING), None, 1))
    assert warning.action is Action.NONE


ALL_OF = """\
rules:
  - name: both
    when:
      all:
        - {signal: hang, count: 2, within: 1h}
        - {signal: crash}
    then: {action: alert}
"""


def test_all_requires_every_child() -> None:
    job = JobPolicy(policy(ALL_OF), "j", "ascend")
    results = feed(job, [sig("hang", 0), sig("crash", 10), sig("hang", 20)])
    assert [only(r).action for r in results] == [Action.NONE, Action.NONE, Action.ALERT]
    d = only(results[2])
    assert [(c.condition, c.observed, c.threshold) for c in d.counts] == [("hang within 1h", 2, 2), ("crash", 1, 1)]
    assert [e["at"] for e in d.evidence] == [0, 10, 20]


def test_all_does_not_hold_when_one_child_is_outside_its_window() -> None:
    job = JobPolicy(policy(ALL_OF), "j", "ascend")
    results = feed(job, [sig("hang", 0), sig("hang", 10), sig("crash", H + 5)])
    assert [only(r).action for r in results] == [Action.NONE, Action.NONE, Action.NONE]


def test_patient_ascend_needs_timeouts_and_chip_errors_to_fail_over() -> None:
    job = JobPolicy(PATIENT, "j", "ascend")
    timeouts = feed(job, [sig("interconnect_timeout", t * M) for t in range(6)])
    assert [only(r).action for r in timeouts] == [Action.RESTART] * 6
    chips = feed(job, [sig("hang", 7 * M), sig("hang", 8 * M)])
    assert only(chips[0]).action is Action.RESTART
    d = only(chips[1])
    assert (d.action, d.rule, d.to_pool) == (Action.FAILOVER, "ascend-unstable", "nvidia")
    assert [(c.observed, c.threshold) for c in d.counts] == [(6, 5), (2, 2)]


# --- once per burst ---------------------------------------------------------------

BURST = """\
rules:
  - name: three-crashes
    when: {signal: crash, count: 3, within: 1h}
    then: {action: alert}
  - name: each-crash
    when: {signal: crash}
    then: {action: checkpoint}
"""


def test_a_rule_fires_once_per_burst() -> None:
    job = JobPolicy(policy(BURST), "j", "ascend")

    results = feed(job, [sig("crash", t) for t in range(8)])

    assert [only(r).rule for r in results] == [
        "each-crash", "each-crash", "three-crashes",
        "each-crash", "each-crash", "three-crashes",
        "each-crash", "each-crash",
    ]
    assert [e["at"] for e in only(results[5]).evidence] == [3, 4, 5]
    assert only(results[5]).counts[0].observed == 3
    assert only(results[3]).reason == "1 × crash (threshold 1): take a checkpoint now"


def test_the_default_failover_counts_a_fresh_burst_after_it_fired() -> None:
    job = JobPolicy(DEFAULT, "j", "ascend")
    results = feed(job, [sig("interconnect_timeout", t) for t in range(6)])
    # The 4th and 5th timeouts are not a burst of three; the 6th makes one (3, 4, 5),
    # which is blocked because the job already runs on nvidia.
    assert actions(results) == [
        [(Action.RESTART, False)], [(Action.RESTART, False)], [(Action.FAILOVER, False)],
        [(Action.RESTART, False)], [(Action.RESTART, False)], [(Action.FAILOVER, True), (Action.RESTART, False)],
    ]
    assert [e["at"] for e in results[5][0].evidence] == [3, 4, 5]


# --- per node / per chip and exclude ----------------------------------------------


def test_per_node_counts_each_node_separately_and_excludes_the_one_that_crossed() -> None:
    job = JobPolicy(DEFAULT, "j", "ascend")
    # On nvidia, so that ascend-unstable (3 chip errors on ascend) stays out of it.
    results = feed(job, [sig("chip_error", 0, pool="nvidia", node="n1"),
                         sig("chip_error", 10, pool="nvidia", node="n2"),
                         sig("chip_error", 20, pool="nvidia", node="n1")])

    assert [(only(r).rule, only(r).exclude_node) for r in results] == [
        ("chip-fault", "n1"), ("chip-fault", "n2"), ("bad-node", "n1"),
    ]
    d = only(results[2])
    assert d.action is Action.EXCLUDE
    assert d.counts == (Count("chip_error within 1h per node", 47, observed=2, threshold=2, within=3600.0, key="n1"),)
    assert d.reason == (
        "2 × chip_error within 1h per node on n1 (threshold 2): restart on ascend without node n1 "
        "from the latest checkpoint (restart 3 of at most 10 within 1h)"
    )
    assert [e["node"] for e in d.evidence] == ["n1", "n1"]


PER_NODE_BEHIND = """\
rules:
  - name: n1-crash
    when: {signal: crash, node: n1}
    then: {action: restart}
  - name: repeat-offender
    when: {signal: crash, count: 2, within: 1h, per: %s}
    then: {action: exclude, exclude: %s}
"""


def test_per_node_excludes_the_node_that_crossed_not_the_node_of_the_last_signal() -> None:
    # n1's two crashes are decided by the first rule; the crash from n2 lets the second
    # rule look, and it is n1 that has crossed its count.
    job = JobPolicy(policy(PER_NODE_BEHIND % ("node", "faulty_node")), "j", "ascend")
    results = feed(job, [sig("crash", 0, node="n1"), sig("crash", 10, node="n1"), sig("crash", 20, node="n2")])
    d = only(results[2])
    assert (d.rule, d.action) == ("repeat-offender", Action.EXCLUDE)
    assert d.counts[0].key == "n1"
    assert d.exclude_node == "n1"


def test_a_per_node_count_ignores_signals_with_no_node() -> None:
    job = JobPolicy(policy(PER_NODE_BEHIND % ("node", "faulty_node")), "j", "ascend")
    results = feed(job, [sig("crash", 0), sig("crash", 1), sig("crash", 2)])
    assert [only(r).action for r in results] == [Action.NONE] * 3


def test_per_chip_counts_each_chip_separately() -> None:
    p = policy("rules:\n  - name: chip\n    when: {signal: chip_error, count: 2, per: chip}\n"
               "    then: {action: exclude, exclude: faulty_chip}\n")
    job = JobPolicy(p, "j", "ascend")
    results = feed(job, [sig("chip_error", 0, node="n1", chip=0), sig("chip_error", 1, node="n1", chip=1),
                         sig("chip_error", 2, node="n2", chip=0), sig("chip_error", 3, node="n1", chip=1)])
    assert [only(r).action for r in results] == [Action.NONE, Action.NONE, Action.NONE, Action.EXCLUDE]
    d = only(results[3])
    assert (d.exclude_node, d.exclude_chip, d.counts[0].key) == ("n1", 1, "chip:n1/1")
    assert d.reason.startswith("2 × chip_error per chip on n1/1 (threshold 2): restart on ascend without chip 1 of n1")


def test_per_chip_excludes_the_chip_that_crossed_not_the_chip_of_the_last_signal() -> None:
    job = JobPolicy(policy(PER_NODE_BEHIND % ("chip", "faulty_chip")), "j", "ascend")
    results = feed(job, [sig("crash", 0, node="n1", chip=0), sig("crash", 10, node="n1", chip=0),
                         sig("crash", 20, node="n2", chip=3)])
    d = only(results[2])
    assert d.counts[0].key == "chip:n1/0"
    assert (d.exclude_node, d.exclude_chip) == ("n1", 0)


# --- failback ---------------------------------------------------------------------

FAILBACK = """\
rules:
  - name: move
    when: {signal: hang, pool: ascend, count: 2, within: 1h}
    then: {action: failover, to: nvidia}
  - name: restart
    when: {signal: [hang, crash]}
    then: {action: restart}
limits: {failover_cooldown: 30m}
failback: {enabled: true, after: 2h}
"""
HEALTHY = {"ascend": 2, "nvidia": 2}


def failed_over(body: str = FAILBACK) -> JobPolicy:
    job = JobPolicy(policy(body), "j", "ascend")
    assert only(feed(job, [sig("hang", 0), sig("hang", 100)])[1]).action is Action.FAILOVER
    assert job.pool == "nvidia"
    return job


def test_failback_after_the_preferred_pool_was_healthy_and_quiet_long_enough() -> None:
    job = failed_over()

    assert job.on_tick(HEALTHY, 200) == []  # the quiet clock starts here
    assert job.on_tick(HEALTHY, 200 + 2 * H - 1) == []
    (d,) = job.on_tick(HEALTHY, 200 + 2 * H)

    assert (d.action, d.rule, d.from_pool, d.to_pool) == (Action.FAILOVER, "failback", "nvidia", "ascend")
    assert d.checkpoint_first is True
    assert d.reason == "pool ascend has been healthy with no signals for 2h (failback.after: 2h): fail back from nvidia"
    assert job.pool == "ascend"
    assert job.last_failover == 200 + 2 * H
    assert job.on_tick(HEALTHY, 300 + 4 * H) == []  # back home: nothing more to do


def test_a_signal_from_the_preferred_pool_restarts_the_failback_clock() -> None:
    job = failed_over()
    assert job.on_tick(HEALTHY, 200) == []
    assert only(job.on_signal(sig("crash", H, pool="ascend"), HEALTHY, H)).action is Action.RESTART

    # Without the signal this tick would fail back; instead the clock starts again here.
    assert job.on_tick(HEALTHY, 200 + 2 * H) == []
    assert job.on_tick(HEALTHY, 200 + 4 * H - 1) == []
    (d,) = job.on_tick(HEALTHY, 200 + 4 * H)
    assert d.rule == "failback"


def test_a_signal_from_the_current_pool_does_not_restart_the_failback_clock() -> None:
    job = failed_over()
    assert job.on_tick(HEALTHY, 200) == []
    assert only(job.on_signal(sig("crash", H, pool="nvidia"), HEALTHY, H)).action is Action.RESTART
    (d,) = job.on_tick(HEALTHY, 200 + 2 * H)
    assert d.rule == "failback"


def test_an_unhealthy_preferred_pool_restarts_the_failback_clock() -> None:
    job = failed_over()
    assert job.on_tick(HEALTHY, 200) == []
    assert job.on_tick({"ascend": 0, "nvidia": 2}, H) == []
    assert job.on_tick(HEALTHY, H + 1) == []
    assert job.on_tick(HEALTHY, 200 + 2 * H) == []
    (d,) = job.on_tick(HEALTHY, H + 1 + 2 * H)
    assert d.rule == "failback"


def test_failback_waits_for_the_failover_cooldown() -> None:
    body = FAILBACK.replace("failover_cooldown: 30m", "failover_cooldown: 5h")
    job = failed_over(body)
    assert job.on_tick(HEALTHY, 200) == []
    assert job.on_tick(HEALTHY, 200 + 2 * H) == []  # quiet long enough, but the last move was < 5h ago
    assert job.on_tick(HEALTHY, 100 + 5 * H - 1) == []
    (d,) = job.on_tick(HEALTHY, 100 + 5 * H)
    assert d.rule == "failback"


def test_failback_needs_known_pool_health() -> None:
    job = failed_over()
    assert job.on_tick(None, 200) == []
    assert job.on_tick(None, 200 + 10 * H) == []
    assert job.pool == "nvidia"


def test_failback_is_off_by_default() -> None:
    assert DEFAULT.failback.enabled is False
    job = JobPolicy(DEFAULT, "j", "ascend")
    feed(job, [sig("interconnect_timeout", t) for t in (0, 1, 2)])
    assert job.pool == "nvidia"
    for t in range(1, 100):
        assert job.on_tick(HEALTHY, t * H) == []
    assert job.pool == "nvidia"


def test_patient_ascend_fails_back_after_four_quiet_hours() -> None:
    job = JobPolicy(PATIENT, "j", "nvidia")
    assert job.on_tick(HEALTHY, 0) == []
    assert job.on_tick(HEALTHY, 4 * H - 1) == []
    (d,) = job.on_tick(HEALTHY, 4 * H)
    assert (d.from_pool, d.to_pool) == ("nvidia", "ascend")


# --- the window and the firing rule, as properties --------------------------------

times_st = st.lists(st.floats(min_value=-1e6, max_value=1e6, allow_nan=False), max_size=40)


@settings(max_examples=200, deadline=None)
@given(times=times_st, now=st.floats(min_value=-1e6, max_value=1e6, allow_nan=False),
       within=st.none() | st.floats(min_value=0.001, max_value=1e6, allow_nan=False))
def test_count_in_window_is_a_count_of_the_times_inside(times: list[float], now: float, within: float | None) -> None:
    expected = len(times) if within is None else sum(1 for t in times if now - within < t)
    assert engine.count_in_window(times, now, within) == expected


def test_count_in_window_literal() -> None:
    assert engine.count_in_window([0, 10, 11, 18], 18, 8) == 2  # 10 is exactly 8 old: out
    assert engine.count_in_window([0, 10, 11, 18], 18, None) == 4
    assert engine.count_in_window([0, 10, 11, 25], 18, 8) == 2  # a time after now counts


@functools.lru_cache(maxsize=None)
def counting_policy(count: int, within: int) -> Policy:
    return policy(f"rules:\n  - name: crashes\n    when: {{signal: crash, count: {count}, within: {within}s}}\n"
                  "    then: {action: alert}\n")


def reference_firings(signals: list[tuple[str, float]], count: int, within: float) -> list[bool]:
    """At each signal: did at least `count` crash signals received since the rule last
    fired lie in (now - within, now]? Only a crash can make the rule fire."""
    fired: list[bool] = []
    since = 0  # index of the first signal the rule has not yet counted
    for i, (name, now) in enumerate(signals):
        recent = [t for n, t in signals[since:i + 1] if n == "crash" and now - within < t]
        fire = name == "crash" and len(recent) >= count
        if fire:
            since = i + 1
        fired.append(fire)
    return fired


@st.composite
def signal_sequences(draw: st.DrawFn, strictly_increasing: bool) -> list[tuple[str, float]]:
    low = 0.001 if strictly_increasing else 0.0
    gaps = draw(st.lists(st.floats(min_value=low, max_value=60, allow_nan=False), min_size=1, max_size=40))
    names = draw(st.lists(st.sampled_from(["crash", "crash", "crash", "hang"]), min_size=len(gaps), max_size=len(gaps)))
    out, t = [], 0.0
    for gap, name in zip(gaps, names):
        t_next = t + gap
        if strictly_increasing and t_next <= t:
            continue
        t = t_next
        out.append((name, t))
    return out


def engine_firings(signals: list[tuple[str, float]], count: int, within: float) -> list[bool]:
    job = JobPolicy(counting_policy(count, int(within)), "j", "ascend")
    fired = []
    for name, at in signals:
        decisions = job.on_signal(sig(name, at), None, at)
        assert len(decisions) == 1
        assert decisions[0].action in (Action.ALERT, Action.NONE)
        fired.append(decisions[0].action is Action.ALERT)
    return fired


@settings(max_examples=200, deadline=None)
@given(signals=signal_sequences(strictly_increasing=True), count=st.integers(1, 5), within=st.integers(1, 120))
def test_a_counting_rule_fires_exactly_when_the_reference_model_says(
    signals: list[tuple[str, float]], count: int, within: int
) -> None:
    assert engine_firings(signals, count, within) == reference_firings(signals, count, within)


def test_reference_model_literal() -> None:
    signals = [("crash", 0), ("crash", 10), ("hang", 11), ("crash", 18), ("crash", 19), ("crash", 40)]
    assert reference_firings(signals, 2, 8) == [False, False, False, False, True, False]
    assert engine_firings(signals, 2, 8) == [False, False, False, False, True, False]


def test_signals_at_the_same_time_as_a_firing_still_count_for_the_next_one() -> None:
    # Four crashes, two per second, as a replay with whole-second timestamps reads them:
    # the rule counted the first two; the last two are a second, separate pair.
    signals = [("crash", 0.0), ("crash", 0.0), ("crash", 0.0), ("crash", 0.0)]
    assert reference_firings(signals, 2, 60) == [False, True, False, True]
    assert engine_firings(signals, 2, 60) == [False, True, False, True]


def test_a_signal_timed_after_now_is_not_counted_twice() -> None:
    # A source clock a few seconds ahead: in_window counts such signals as inside. The
    # rule fires on e1+e2; e2 must not count again together with e3.
    job = JobPolicy(counting_policy(2, 600), "j", "ascend")
    e1, e2, e3 = sig("crash", 100), sig("crash", 105), sig("crash", 106)
    assert only(job.on_signal(e1, None, 100)).action is Action.NONE
    assert only(job.on_signal(e2, None, 101)).action is Action.ALERT
    assert only(job.on_signal(e3, None, 102)).action is Action.NONE
