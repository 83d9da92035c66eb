"""Hang detection with literal times."""

from __future__ import annotations

from agents.watchers.hang import HangLimits, HangWatcher, QuietReading, QuietWatcher

LIMITS = HangLimits(train=10.0, checkpoint=60.0, eval=30.0)


def test_a_rank_stuck_on_a_step_is_hung_at_exactly_its_limit_and_reported_once():
    w = HangWatcher(LIMITS)
    w.started("j", 0, now=0.0)
    w.progress("j", 0, step=5, phase="train", now=3.0)
    assert w.check(12.9) == []
    (finding,) = w.check(13.0)
    assert (finding.rank, finding.step, finding.phase, finding.stalled_for, finding.how) == (0, 5, "train", 10.0, "heartbeat")
    assert "step 5 (train) for 10s" in finding.evidence
    assert w.check(100.0) == [], "one finding per stall"
    w.progress("j", 0, step=6, phase="train", now=101.0)
    assert w.check(110.0) == []
    assert len(w.check(111.0)) == 1, "advancing re-arms the watcher"


def test_the_same_step_repeated_is_no_progress():
    w = HangWatcher(LIMITS)
    w.progress("j", 0, 5, "train", 0.0)
    w.progress("j", 0, 5, "train", 9.0)
    assert len(w.check(10.0)) == 1


def test_checkpoint_and_eval_phases_have_their_own_longer_limits():
    w = HangWatcher(LIMITS)
    w.progress("j", 0, 5, "checkpoint", 0.0)
    w.progress("j", 1, 5, "eval", 0.0)
    assert w.check(29.0) == []
    assert [f.rank for f in w.check(30.0)] == [1]
    assert [f.rank for f in w.check(60.0)] == [0]


def test_a_rank_that_never_reports_is_hung_after_the_startup_limit_or_the_train_limit_if_longer():
    """Starting (import torch, the model, the process group) is not a hang under a short
    train limit; a rank whose start never ends still is one."""
    w = HangWatcher(LIMITS)  # train 10 s, startup the default 60 s
    w.started("j", 3, 100.0)
    assert w.check(159.0) == []
    (finding,) = w.check(160.0)
    assert finding.rank == 3 and finding.step == 0 and finding.phase == "startup"
    long = HangWatcher(HangLimits(train=300.0))
    long.started("j", 0, 0.0)
    assert long.check(299.0) == [] and len(long.check(300.0)) == 1
    w.started("j", 4, 200.0)
    w.progress("j", 4, 1, "train", 203.0)  # its first step: the train limit from now on
    assert w.check(212.9) == [] and len(w.check(213.0)) == 1


def test_forgotten_ranks_are_not_reported():
    w = HangWatcher(LIMITS)
    w.started("j", 0, 0.0)
    w.forget("j", 0)
    assert w.check(1000.0) == []


def quiet(lines=0, cpu=0.0, util=0.0):
    return QuietReading(new_log_lines=lines, cpu_seconds=cpu, chip_utilisation=util)


def test_a_job_quiet_for_n_consecutive_checks_is_hung_once():
    w = QuietWatcher(checks=3)
    assert w.observe("j", quiet(), 5.0) is None
    assert w.observe("j", quiet(), 5.0) is None
    finding = w.observe("j", quiet(), 5.0)
    assert finding is not None and finding.how == "quiet" and finding.stalled_for == 15.0
    assert "no log output" in finding.evidence and "3 consecutive checks" in finding.evidence
    assert w.observe("j", quiet(), 5.0) is None, "reported once per quiet spell"


def test_any_sign_of_life_resets_the_count():
    for alive in (quiet(lines=1), quiet(cpu=0.5), quiet(util=80.0)):
        w = QuietWatcher(checks=2)
        assert w.observe("j", quiet(), 5.0) is None
        assert w.observe("j", alive, 5.0) is None
        assert w.observe("j", quiet(), 5.0) is None, f"{alive} should have reset the count"
        assert w.observe("j", quiet(), 5.0) is not None


def test_unknown_chip_utilisation_does_not_count_as_busy():
    w = QuietWatcher(checks=1)
    finding = w.observe("j", QuietReading(0, 0.0, None), 5.0)
    assert finding is not None and "chips at unknown" in finding.evidence


def test_cpu_over_the_floor_at_every_check_is_never_quiet_and_at_the_floor_is():
    """The decision test_monitor's busy script relies on, with literal readings."""
    w = QuietWatcher(checks=2, cpu_floor=0.05)
    for _ in range(10):
        assert w.observe("j", quiet(cpu=0.06, util=None), 0.2) is None
    assert w.observe("j", quiet(cpu=0.05, util=None), 0.2) is None
    assert w.observe("j", quiet(cpu=0.05, util=None), 0.2) is not None


def test_a_forgotten_job_counts_from_zero_again():
    w = QuietWatcher(checks=2)
    assert w.observe("j", quiet(), 5.0) is None
    w.forget("j")
    assert w.observe("j", quiet(), 5.0) is None
    assert w.observe("j", quiet(), 5.0) is not None
    w.forget("never-seen")  # harmless


def test_a_job_with_its_own_limits_is_judged_by_them_and_others_by_the_agents():
    w = HangWatcher(LIMITS)
    w.set_limits("strict", HangLimits(train=2.0, checkpoint=5.0, eval=3.0))
    for job in ("strict", "plain"):
        w.started(job, 0, 0.0)
        w.progress(job, 0, 1, "train", 0.0)
    assert [(f.job, f.limit) for f in w.check(2.0)] == [("strict", 2.0)]
    assert [(f.job, f.limit) for f in w.check(10.0)] == [("plain", 10.0)]
    w.progress("strict", 0, 2, "checkpoint", 11.0)
    assert w.check(15.9) == [] and [f.limit for f in w.check(16.0)] == [5.0]
    w.set_limits("strict", None)  # its ranks are gone: the agent's own again
    assert w.limits_for("strict") == LIMITS
