"""Warm standbys end to end: a job with `warm_standby: true` keeps a standby per rank on
each node; a crash's restart hands them their ranks (no cold start), the losses are the
fault-free run's, and the standbys end with the job."""

from __future__ import annotations

import json
from pathlib import Path

import psutil
import pytest

from supervisor.cli.localcluster import wait_for
from tests.conftest import trainguard
from tests.jobsupport import (
    ASCEND,
    NVIDIA,
    events,
    inject,
    job_file,
    json_events,
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


def standbys_left(job: str) -> list[int]:
    """Processes waiting as standbys of `job` (their assignment file names it)."""
    return [p.pid for p in psutil.process_iter(["pid", "environ"])
            if (p.info["environ"] or {}).get("TRAINGUARD_STANDBY", "").find(job) >= 0]


def runtime_events(log: str, name: str) -> list[dict]:
    """The runtime's JSON lines called `name` in a rank's or a standby's log."""
    return json_events(Path(log).read_text(errors="replace"), name)


def test_a_crash_restarts_on_warm_standbys_with_identical_losses_and_they_end_with_the_job(make_cluster, tmp_path):
    steps = 600  # still training once the standbys have prepared their loads
    reference = reference_losses(tmp_path / "ref", steps)
    cluster = make_cluster()
    start_pools(cluster, make_policy(tmp_path / "policies"), nvidia=False)
    path = job_file(tmp_path / "work", "gpt", steps=steps)
    spec = json.loads(path.read_text())
    path.write_text(json.dumps({**spec, "warm_standby": True}))
    job = submit(cluster, path)
    wait_step(cluster, job, 20, 120)
    ready = wait_for(lambda: all(cluster.find_events(n, "standby.ready", job=job) for n in ASCEND) and
                     [cluster.find_events(n, "standby.ready", job=job)[0] for n in ASCEND], 120, "a standby per node")
    pids = [r["pid"] for r in ready]
    # While they wait, they first touch the memory the load will read the checkpoint into.
    waiting = [cluster.find_events(n, "standby.started", job=job)[0]["log"] for n in ASCEND]
    wait_for(lambda: all(runtime_events(log, "runtime.load_prepared") for log in waiting), 60, "prepared loads")
    inject(cluster, "ascend-1", "crash")
    wait_for(lambda: show(cluster, job)["attempt"] == 2, 60, "the restart")
    started = wait_for(lambda: len(s := [e for n in ASCEND for e in cluster.find_events(n, "rank.started", job=job)
                                          if e.get("attempt") == 2]) == 2 and s, 60, "attempt 2's ranks")
    assert all(e["warm"] for e in started), "the restart took the standbys, not a cold start"
    assert all(cluster.find_events(n, "job.attempt_started", job=job, attempt=2)[0]["warm"] == 1 for n in ASCEND)
    done = wait_state(cluster, job, {"succeeded", "failed", "stopped"}, 240)
    assert done["state"] == "succeeded" and done["restarts"] == 1, done
    (incident,) = events(cluster, "job.incident", job=job)
    assert incident["signal"] == "crash"
    got = losses(tmp_path / "work" / "gpt-metrics.jsonl")
    assert sorted(got) == list(range(1, steps + 1))
    assert got == reference, "the losses after a restart on warm standbys differ from the fault-free run"
    for rank in started:
        (resumed,) = runtime_events(rank["log"], "runtime.resumed")
        assert resumed["into_prepared_bytes"] > 0 and resumed["into_model_bytes"] > 0, resumed
    # The job is over: no standby of it is left (the ones taken ended as ranks; the new
    # ones are ended by the job's final stop).
    wait_for(lambda: not standbys_left(job), 30, "the job's standbys to end")
    assert all(not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE for pid in pids)


def test_a_restart_that_moves_nodes_and_a_failover_start_on_warm_spares(make_cluster, tmp_path):
    """The job runs on one Ascend node; the other Ascend node and the Nvidia node keep
    its spares. A chip error moves it to the other Ascend node, an operator's failover
    to Nvidia: both start on the spares' standbys, with the fault-free run's losses."""
    steps = 700
    reference = reference_losses(tmp_path / "ref", steps)
    cluster = make_cluster()
    start_pools(cluster, make_policy(tmp_path / "policies"))
    path = job_file(tmp_path / "work", "gpt", steps=steps, ascend=(1, 2), nvidia=(1, 2))
    path.write_text(json.dumps({**json.loads(path.read_text()), "warm_standby": True}))
    job = submit(cluster, path)
    assert wait_step(cluster, job, 10, 120)["nodes"] == ["ascend-0"]
    for node in ("ascend-1", NVIDIA):
        wait_for(lambda n=node: len(cluster.find_events(n, "standby.ready", job=job)) >= 2, 120, f"spares on {node}")
    (chosen,) = events(cluster, "job.spares_chosen", job=job, attempt=1)
    assert chosen["nodes"] == ["ascend-1", NVIDIA] and show(cluster, job)["spare_nodes"] == ["ascend-1", NVIDIA]

    inject(cluster, "ascend-0", "chip_error")  # chip 0 is excluded: 1 chip left, the job needs 2
    moved = wait_for(lambda: (j := show(cluster, job))["attempt"] == 2 and j["state"] == "running" and j, 120,
                     "the restart on ascend-1")
    assert moved["nodes"] == ["ascend-1"]
    (started,) = cluster.find_events("ascend-1", "job.attempt_started", job=job, attempt=2)
    assert started["warm"] == 2, "the restart on another node took that node's spares"

    wait_for(lambda: len(cluster.find_events(NVIDIA, "standby.ready", job=job)) >= 2, 120, "the Nvidia spares")
    result = trainguard("job", "failover", "--ctl", cluster.ctl, job, "--to", "nvidia")
    assert result.returncode == 0, result.stderr
    wait_for(lambda: (j := show(cluster, job))["pool"] == "nvidia" and j["state"] == "running", 180,
             "the job to run on nvidia")
    (started,) = cluster.find_events(NVIDIA, "job.attempt_started", job=job, attempt=3)
    assert started["warm"] == 2, "the failover took the Nvidia node's spares"

    done = wait_state(cluster, job, {"succeeded", "failed", "stopped"}, 240)
    assert done["state"] == "succeeded", done
    got = losses(tmp_path / "work" / "gpt-metrics.jsonl")
    assert sorted(got) == list(range(1, steps + 1))
    assert got == reference, "the losses after moving onto spares differ from the fault-free run"

    wait_for(lambda: not standbys_left(job), 30, "the job's standbys, spares included, to end")
