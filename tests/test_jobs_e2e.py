"""Jobs end to end: a daemon, an Ascend pool (two sim-ascend agents) and an Nvidia pool
(a sim-nvidia agent) as real processes, the real example trainer (gloo on the CPU), faults
injected with `trainguard inject` and acted out where the real ones show."""

from __future__ import annotations

import pytest

from supervisor.cli.localcluster import wait_for
from tests.conftest import trainguard
from tests.jobsupport import (
    ASCEND,
    events,
    inject,
    job_file,
    losses,
    make_policy,
    reference_losses,
    show,
    start_pools,
    submit,
    wait_state,
    wait_step,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]



def test_a_crash_is_restarted_on_the_same_pool_and_training_completes(make_cluster, tmp_path):
    cluster = make_cluster()
    start_pools(cluster, make_policy(tmp_path / "policies"), nvidia=False)
    job = submit(cluster, job_file(tmp_path / "work", "gpt", steps=120))
    first = wait_step(cluster, job, 25, 120)
    assert first["pool"] == "ascend" and sorted(first["nodes"]) == ASCEND and first["attempt"] == 1
    inject(cluster, "ascend-1", "crash")
    done = wait_state(cluster, job, {"succeeded", "failed", "stopped"}, 240)
    assert done["state"] == "succeeded", done
    assert done["restarts"] == 1 and done["attempt"] == 2 and done["pool"] == "ascend"
    (incident,) = events(cluster, "job.incident", job=job)
    assert incident["signal"] == "crash" and incident["node"] == "ascend-1"
    (decision,) = [d for d in done["decisions"] if d["action"] != "none"]
    assert decision["action"] == "restart" and decision["rule"] == "any-fault"
    assert done["ettr"] is not None and 0 < done["ettr"] <= 1
    assert max(losses(tmp_path / "work" / "gpt-metrics.jsonl")) == 120


def test_three_interconnect_timeouts_fail_over_to_nvidia_with_identical_losses(make_cluster, tmp_path):
    steps = 500  # enough that the job is still training when the third fault is acted out
    reference = reference_losses(tmp_path / "ref", steps)
    cluster = make_cluster()
    start_pools(cluster, make_policy(tmp_path / "policies"))
    job = submit(cluster, job_file(tmp_path / "work", "gpt", steps=steps))
    for n in range(3):
        j = wait_step(cluster, job, (show(cluster, job)["step"] or 0) + 12, 180)
        assert j["pool"] == "ascend"
        inject(cluster, "ascend-0", "interconnect_timeout")
        wait_for(lambda: len(events(cluster, "job.incident", job=job)) > n, 60, f"incident {n + 1}")
        inject(cluster, "ascend-0", "ok")  # the link is back; the next timeout is a new one
    moved = wait_state(cluster, job, {"running"}, 180, "the job to run on nvidia")
    wait_for(lambda: (j := show(cluster, job))["pool"] == "nvidia" and j["state"] == "running", 180,
             "the job to run on nvidia")
    done = wait_state(cluster, job, {"succeeded", "failed", "stopped"}, 240)
    assert done["state"] == "succeeded", done
    assert done["pool"] == "nvidia" and done["restarts"] == 2 and moved
    (failover,) = done["failovers"]
    assert (failover["from_pool"], failover["to_pool"], failover["rule"]) == ("ascend", "nvidia", "ascend-unstable")
    incidents = events(cluster, "job.incident", job=job)
    assert [i["signal"] for i in incidents] == ["interconnect_timeout"] * 3
    got = losses(tmp_path / "work" / "gpt-metrics.jsonl")
    assert sorted(got) == list(range(1, steps + 1))
    assert got == reference, "the losses after two restarts and a failover differ from the fault-free run"


def test_a_chip_error_excludes_its_node_and_too_few_ascend_nodes_fail_over(make_cluster, tmp_path):
    cluster = make_cluster()
    start_pools(cluster, make_policy(tmp_path / "policies"))
    job = submit(cluster, job_file(tmp_path / "work", "gpt", steps=400))
    wait_step(cluster, job, 15, 120)
    inject(cluster, "ascend-1", "chip_error")
    wait_for(lambda: (j := show(cluster, job))["pool"] == "nvidia" and j["state"] == "running", 180,
             "the job to fail over to nvidia")
    (incident,) = events(cluster, "job.incident", job=job)
    assert incident["signal"] == "chip_error" and incident["node"] == "ascend-1"
    drained = events(cluster, "node.drained", node="ascend-1")
    assert drained and "chip-fault" in drained[0]["reason"]
    waiting = events(cluster, "job.waiting", job=job)
    assert waiting and "ascend-1 is drained" in waiting[0]["reason"]
    decisions = [d["rule"] for d in show(cluster, job)["decisions"] if d["action"] != "none"]
    assert decisions == ["chip-fault", "ascend-no-capacity"]
    trainguard("job", "stop", "--ctl", cluster.ctl, job, "--grace", "20s")
    assert wait_state(cluster, job, {"stopped"}, 60)["reason"] == "stopped by the operator"


def test_a_user_error_stops_the_job_instead_of_restarting_it(make_cluster, tmp_path):
    cluster = make_cluster()
    start_pools(cluster, make_policy(tmp_path / "policies"), nvidia=False)
    command = ["python3", "-c", "import time; time.sleep(1); undefined_name_in_the_training_script"]
    job = submit(cluster, job_file(tmp_path / "work", "buggy", steps=0, command=command))
    done = wait_state(cluster, job, {"stopped", "failed", "succeeded"}, 120)
    assert done["state"] == "stopped" and done["restarts"] == 0
    assert "user-error" in done["reason"]
