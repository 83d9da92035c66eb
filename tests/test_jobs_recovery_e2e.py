"""Jobs end to end, continued (a second module so that two test workers share the load):
hangs, a daemon SIGKILLed mid-failover, an agent restarted under its ranks, a drain, and
the incident of a 4-rank job."""

from __future__ import annotations

import signal

import pytest

from supervisor.cli.localcluster import wait_for
from tests.conftest import trainguard
from tests.jobsupport import (
    ASCEND,
    NVIDIA,
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



def test_a_hang_is_detected_and_the_ranks_restarted(make_cluster, tmp_path):
    cluster = make_cluster()
    start_pools(cluster, make_policy(tmp_path / "policies", hang_timeout="3s"), nvidia=False)
    job = submit(cluster, job_file(tmp_path / "work", "gpt", steps=100000))
    wait_step(cluster, job, 15, 120)
    inject(cluster, "ascend-0", "hang")
    wait_for(lambda: events(cluster, "job.incident", job=job), 60, "the hang to be an incident")
    inject(cluster, "ascend-0", "ok")
    j = wait_for(lambda: (j := show(cluster, job))["attempt"] == 2 and j["state"] == "running" and j, 120,
                 "a second attempt to run")
    (incident,) = events(cluster, "job.incident", job=job)
    assert incident["signal"] == "hang" and j["restarts"] == 1


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
    assert len(incidents[0]["consequences"]) >= 1  # the peers' failures stay in the events
    assert show(cluster, job)["restarts"] == 1
