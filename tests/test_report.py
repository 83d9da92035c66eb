"""`job report` from a scripted history: ETTR, time lost by root cause, incidents."""

from __future__ import annotations

import pytest

from supervisor.core.report import job_report

pytestmark = pytest.mark.timeout(30)

T = 1_700_000_000.0


def job(**kw):
    base = {"id": "gpt-1", "state": "succeeded", "pool": "nvidia", "step": 1000, "restarts": 1,
            "failovers": [{"from_pool": "ascend", "to_pool": "nvidia", "at": T + 500, "step": 400, "rule": "r"}],
            "first_started_at": T, "ended_at": T + 1000, "ettr": 0.9}
    base.update(kw)
    return base


def test_a_scripted_history_gives_the_lost_time_by_root_cause_and_each_incident():
    events = [
        # a crash at step 250, checkpoint at 240: decided 3 s later, training again 5 s after that
        {"ts": T + 203, "event": "job.incident", "signal": "crash", "observed_at": T + 200, "node": "a1", "rank": 1,
         "step": 250, "last_checkpoint_step": 240, "summary": "crash on a1 rank 1"},
        {"ts": T + 203, "event": "policy.decision", "action": "restart", "rule": "any-fault"},
        {"ts": T + 208, "event": "job.state_changed", "state": "running"},
        # three HCCL timeouts: the last one fails over (no checkpoint first)
        {"ts": T + 503, "event": "job.incident", "signal": "interconnect_timeout", "observed_at": T + 500,
         "node": "a2", "step": 400, "last_checkpoint_step": 400},
        {"ts": T + 503, "event": "policy.decision", "action": "failover", "rule": "ascend-unstable"},
        {"ts": T + 515, "event": "job.state_changed", "state": "running"},
    ]
    report = job_report(job(), events, now=T + 2000)
    assert report["wall_s"] == 1000 and report["ettr"] == 0.9
    assert report["mean_step_s"] == pytest.approx(1000 * 0.9 / 1000)
    assert report["steps_redone"] == 10
    assert report["lost_s"]["crash"] == pytest.approx(3 + 10 * 0.9)
    assert report["lost_s"]["interconnect"] == pytest.approx(3)
    assert report["lost_s"]["restart_overhead"] == pytest.approx(5 + 12)
    assert report["lost_s"]["hang"] == 0 and report["lost_s"]["chip"] == 0
    first, second = report["incidents"]
    assert (first["signal"], first["category"], first["rule"], first["action"]) == ("crash", "crash", "any-fault", "restart")
    assert first["detected_s"] == 3 and first["recovery_s"] == 8 and first["steps_redone"] == 10
    assert (second["category"], second["action"], second["recovery_s"]) == ("interconnect", "failover", 15)
    assert report["restarts"] == 1 and len(report["failovers"]) == 1


def test_a_job_without_incidents_lost_nothing():
    report = job_report(job(restarts=0, failovers=[], ettr=1.0), [], now=T + 2000)
    assert report["lost_total_s"] == 0 and report["incidents"] == [] and report["steps_redone"] == 0
