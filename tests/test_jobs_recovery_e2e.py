"""Jobs end to end, continued (a second module so that two test workers share the load):
hangs, a daemon SIGKILLed mid-failover, an agent restarted under its ranks, a drain, and
the incident of a 4-rank job."""

from __future__ import annotations

import signal
import sys

import pytest

from supervisor.cli.localcluster import wait_for
from tests.conftest import trainguard
from tests.jobsupport import (
    ASCEND,
    NVIDIA,
    REPO,
    events,
    inject,
    job_file,
    make_policy,
    show,
    start_pools,
    submit,
    wait_step,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]



def test_a_hang_on_the_second_node_is_one_signal_naming_its_rank_with_its_stack(make_cluster, tmp_path):
    """Two nodes, one rank each: rank 1 (ascend-1) stops; rank 0 then waits for it in the
    next collective. Both agents see their rank stall; the daemon names rank 1, once."""
    cluster = make_cluster()
    start_pools(cluster, make_policy(tmp_path / "policies", hang_timeout="3s"), nvidia=False)
    job = submit(cluster, job_file(tmp_path / "work", "gpt", steps=100000))
    wait_step(cluster, job, 15, 120)
    inject(cluster, "ascend-1", "hang")
    wait_for(lambda: events(cluster, "job.incident", job=job), 60, "the hang to be an incident")
    inject(cluster, "ascend-1", "ok")
    j = wait_for(lambda: (j := show(cluster, job))["attempt"] == 2 and j["state"] == "running" and j, 120,
                 "a second attempt to run")
    (incident,) = events(cluster, "job.incident", job=job)
    assert incident["signal"] == "hang" and j["restarts"] == 1
    assert (incident["node"], incident["rank"]) == ("ascend-1", 1)
    (hang,) = events(cluster, "signal.hang", job=job)
    assert (hang["node"], hang["rank"], hang["attempt"], hang["culprit_by"]) == ("ascend-1", 1, 1, "stack")
    assert hang["nodes_reported"] == ["ascend-0", "ascend-1"]
    evidence = hang["evidence"].splitlines()
    assert evidence[0].startswith("rank 1 on ascend-1 is the culprit: its stack is outside any collective")
    # The culprit's stack (stopped in the heartbeat, where the simulated fault holds it),
    # then one line for rank 0, waiting in the runtime's per-step all_reduce.
    assert any(line.startswith("Thread ") for line in evidence) and "progress.py" in hang["evidence"]
    (other,) = [line for line in evidence if line.startswith("rank 0 on ascend-0")]
    assert "inside a collective" in other
    # Each agent logged its own view.
    assert cluster.find_events("ascend-0", "hang.observed", job=job)
    assert cluster.find_events("ascend-1", "hang.observed", job=job)


def test_a_hang_in_one_rank_of_four_names_the_one_outside_the_collective(make_cluster, tmp_path):
    cluster = make_cluster()
    # 8 s: four ranks importing torch on two cores take longer than 3 s to their first step.
    start_pools(cluster, make_policy(tmp_path / "policies", hang_timeout="8s"), nvidia=False)
    job = submit(cluster, job_file(tmp_path / "work", "gpt", steps=100000, ascend=(2, 2)))
    wait_step(cluster, job, 10, 150)
    inject(cluster, "ascend-0", "hang", chip=1)  # rank 1
    (hang,) = wait_for(lambda: events(cluster, "signal.hang", job=job), 60, "signal.hang")
    assert (hang.get("node"), hang.get("rank"), hang["culprit_by"]) == ("ascend-0", 1, "stack"), hang["evidence"]
    assert sorted((r["rank"], r["where"]) for r in hang["ranks"]) == [
        (0, "collective"), (1, "elsewhere"), (2, "collective"), (3, "collective")]


def test_ranks_that_stall_alike_are_one_signal_that_names_no_rank_and_says_why(make_cluster, tmp_path):
    cluster = make_cluster()
    start_pools(cluster, make_policy(tmp_path / "policies", hang_timeout="3s"), nvidia=False)
    script = str(REPO / "tests" / "ranks" / "stall_together.py")
    job = submit(cluster, job_file(tmp_path / "work", "alike", steps=0,
                                   command=[sys.executable, script, "--stall-at", "20"]))
    (hang,) = wait_for(lambda: events(cluster, "signal.hang", job=job), 120, "signal.hang")
    assert "rank" not in hang and hang["culprit_by"] == "none" and hang.get("node") is None
    assert hang["evidence"].startswith("the 2 ranks look alike (every stack is outside any collective; "
                                       "all at step 20), so no rank is named")
    (incident,) = wait_for(lambda: events(cluster, "job.incident", job=job), 30, "the incident")
    assert incident["signal"] == "hang" and incident.get("rank") is None


def test_the_daemon_sigkilled_during_a_failover_carries_on_from_its_store(make_cluster, tmp_path):
    cluster = make_cluster()
    policies = make_policy(tmp_path / "policies")
    start_pools(cluster, policies)
    job = submit(cluster, job_file(tmp_path / "work", "gpt", steps=100000))
    wait_step(cluster, job, 15, 120)
    assert trainguard("job", "failover", "--ctl", cluster.ctl, job, "--to", "nvidia").returncode == 0
    wait_for(lambda: events(cluster, "job.failover_started", job=job), 30, "the failover to start")
    cluster.kill("daemon", signal.SIGKILL)
    cluster.start_daemon("--policy-dir", str(policies))
    j = wait_for(lambda: (j := show(cluster, job))["pool"] == "nvidia" and j["state"] == "running" and j, 180,
                 "the job to run on nvidia after the daemon restart")
    assert len(j["failovers"]) == 1
    # No rank was started twice: one rank.started per (attempt, rank) in the agents' logs.
    started = [(e["attempt"], e["node"], e["rank"]) for n in ASCEND + [NVIDIA]
               for e in cluster.find_events(n, "rank.started") if e.get("job") == job]
    assert len(started) == len(set(started))


def test_an_agent_restarted_under_running_ranks_adopts_them_and_a_drain_moves_the_job(make_cluster, tmp_path):
    # A heartbeat timeout (10 s) longer than an agent takes to start again on a loaded
    # machine: the node must not be declared lost while its agent restarts.
    cluster = make_cluster(heartbeat_timeout=10.0)
    start_pools(cluster, make_policy(tmp_path / "policies"))
    job = submit(cluster, job_file(tmp_path / "work", "gpt", steps=100000))
    before = wait_step(cluster, job, 15, 120)
    cluster.kill("ascend-0", signal.SIGKILL)
    cluster.start_agent("ascend-0", "sim-ascend", 2)
    cluster.wait_nodes("up", ["ascend-0"], timeout=30)
    after = wait_step(cluster, job, before["step"] + 20, 120)
    assert after["attempt"] == before["attempt"] and after["restarts"] == 0, "adopted, not restarted"
    assert trainguard("node", "drain", "--ctl", cluster.ctl, "ascend-1").returncode == 0
    moved = wait_for(lambda: (j := show(cluster, job))["pool"] == "nvidia" and j["state"] == "running" and j, 180,
                     "the job to leave the drained node (no capacity left on ascend: nvidia)")
    assert "ascend-1" not in moved["nodes"]


def test_one_sigkilled_rank_of_four_is_one_incident(make_cluster, tmp_path):
    cluster = make_cluster()
    start_pools(cluster, make_policy(tmp_path / "policies"), nvidia=False)
    job = submit(cluster, job_file(tmp_path / "work", "gpt", steps=100000, ascend=(2, 2)))
    wait_step(cluster, job, 10, 150)
    inject(cluster, "ascend-1", "crash", chip=1)
    wait_for(lambda: show(cluster, job)["attempt"] == 2, 120, "the restart")
    incidents = events(cluster, "job.incident", job=job)
    assert len(incidents) == 1 and incidents[0]["signal"] == "crash" and incidents[0]["node"] == "ascend-1"
    assert show(cluster, job)["restarts"] == 1
    # A rank killed by a signal is decided on at once (nothing later can outrank it); its
    # peers' failures still come, stay in the events, and open no second incident.
    crashed = incidents[0]["rank"]
    wait_for(lambda: [e for e in cluster.events("daemon") if e["event"].startswith("signal.") and e.get("job") == job
                      and e.get("attempt") == 1 and e.get("rank") != crashed], 30, "a peer's signal")
    assert len(events(cluster, "job.incident", job=job)) == 1


def test_a_script_without_heartbeats_that_goes_quiet_names_the_rank_outside_the_collective(make_cluster, tmp_path):
    cluster = make_cluster()
    start_pools(cluster, make_policy(tmp_path / "policies"), nvidia=False)
    script = str(REPO / "tests" / "ranks" / "quiet_pair.py")
    job = submit(cluster, job_file(tmp_path / "work", "quiet", steps=0, ascend=(1, 2),
                                   command=[sys.executable, script, "--stop-at", "20", "--culprit", "1"]))
    (hang,) = wait_for(lambda: events(cluster, "signal.hang", job=job), 120, "signal.hang")
    assert (hang.get("rank"), hang["how"], hang["culprit_by"]) == (1, "quiet", "stack"), hang["evidence"]
    assert "cpu" in hang["evidence"] and "quiet_pair.py" in hang["evidence"]
