"""A real training job on simulated nodes, watched end to end: daemon, agents, ranks. The
policy here only alerts, so what is checked is detection: the faults are acted out where
the real ones show, and the production detectors report them with their evidence."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from supervisor.cli.localcluster import wait_for
from tests.conftest import trainguard
from tests.jobsupport import job_file, show, submit, wait_step

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

REPO = Path(__file__).resolve().parent.parent

WATCH = """\
version: 1
name: default
pools: {ascend: {accelerator: ascend}, nvidia: {accelerator: nvidia}}
detect: {hang_timeout: 2s, probe_interval: 500ms}
checkpoint: {every: off}
rules:
  - name: watch
    when: {signal: [crash, hang, interconnect_timeout, chip_error, chip_degraded, oom, network, node_lost, user_error]}
    then: {action: alert, message: "watching only"}
"""


def start(make_cluster, tmp_path):
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "watch.yaml").write_text(WATCH)
    cluster = make_cluster()
    cluster.start_daemon("--policy-dir", str(policies))
    cluster.start_agent("n1", "sim-ascend", 2)
    cluster.wait_nodes("up", ["n1"], timeout=30)
    return cluster


def test_a_crash_injected_into_a_training_rank_reaches_the_daemon_as_a_signal(make_cluster, tmp_path):
    cluster = start(make_cluster, tmp_path)
    job = submit(cluster, job_file(tmp_path / "work", "gpt", steps=100000, ascend=(1, 2)))
    wait_step(cluster, job, 5, 180)
    # The same job name cannot be live twice.
    again = trainguard("job", "submit", "--ctl", cluster.ctl, str(job_file(tmp_path / "work2", "gpt", steps=1)))
    assert again.returncode == 1 and "already live" in again.stderr

    assert trainguard("inject", "--ctl", cluster.ctl, "n1", "crash", "--chip", "1").returncode == 0
    crash = wait_for(lambda: cluster.find_events("daemon", "signal.crash", node="n1", rank=1), 30,
                     "the daemon to log the crash of rank 1")[0]
    assert crash["signal"] == "crash" and crash["job"] == job and crash["chip"] == 1 and crash["attempt"] == 1
    assert crash["evidence"] == f"rank 1 of job {job} was killed by SIGKILL"
    assert crash["level"] == "warning" and crash["detection_latency_s"] < 5
    # One incident, rooted at the killed rank (its peer's collective error, when gloo
    # notices in time, is a consequence); this policy only alerts, so nothing restarts.
    (incident,) = wait_for(lambda: cluster.find_events("daemon", "job.incident", job=job), 20, "one incident")
    assert incident["signal"] == "crash" and incident["rank"] == 1
    assert show(cluster, job)["attempt"] == 1
    assert (cluster.root / "nodes" / "n1" / "logs" / job / "attempt-1" / "rank-0.log").exists()


def test_injected_hang_and_interconnect_timeout_are_acted_out_by_the_rank_and_detected(make_cluster, tmp_path):
    """The detectors that run are the production ones: the hang watcher sees a rank stop
    stepping; the log scanner reads the vendor's timeout line the rank printed."""
    cluster = start(make_cluster, tmp_path)
    stepper = [sys.executable, str(REPO / "tests" / "ranks" / "stepper.py")]
    job = submit(cluster, job_file(tmp_path / "work", "j1", steps=0, command=stepper, ascend=(1, 1)))
    wait_for(lambda: (show(cluster, job)["step"] or 0) > 5, 60, "the rank to step")

    assert trainguard("inject", "--ctl", cluster.ctl, "n1", "hang", "--chip", "0").returncode == 0
    hang = wait_for(lambda: cluster.find_events("daemon", "signal.hang", node="n1"), 2 + 2 + 5, "signal.hang")[0]
    assert hang["job"] == job and hang["rank"] == 0 and hang["chip"] == 0
    # Healing the chip lets the rank step again.
    stuck_at = show(cluster, job)["step"]
    assert trainguard("inject", "--ctl", cluster.ctl, "n1", "ok", "--chip", "0").returncode == 0
    wait_for(lambda: (show(cluster, job)["step"] or 0) > stuck_at, 20, "the rank to step again")

    assert trainguard("inject", "--ctl", cluster.ctl, "n1", "interconnect_timeout", "--chip", "0").returncode == 0
    timeout = wait_for(lambda: cluster.find_events("daemon", "signal.interconnect_timeout", node="n1"), 20,
                       "signal.interconnect_timeout")[0]
    assert "EI0002" in timeout["evidence"] and timeout["rank"] == 0
    wait_for(lambda: cluster.find_events("daemon", "signal.crash", node="n1", rank=0), 20, "the rank to fail")

