"""A real training job on a simulated node, watched end to end: daemon, agent, ranks."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from supervisor.cli.localcluster import wait_for
from tests.conftest import trainguard

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

REPO = Path(__file__).resolve().parent.parent


def test_a_crash_injected_into_a_training_rank_reaches_the_daemon_as_a_signal(make_cluster):
    cluster = make_cluster()
    cluster.start_daemon()
    cluster.start_agent("n1", "sim-ascend", 2)
    cluster.wait_nodes("up", ["n1"], timeout=30)

    result = trainguard("launch", "--ctl", cluster.ctl, "n1", "gpt", "--nproc", "2", "--cwd", str(REPO), "--",
                        sys.executable, "-m", "agents.examples.train_gpt", "--steps", "5000", "--checkpoint-every", "20")
    assert result.returncode == 0, result.stderr
    assert "started 2 rank(s) of gpt on n1" in result.stdout

    def training() -> bool:
        running = cluster.node("n1")["running"]
        return len(running) == 2 and all((r["step"] or 0) > 5 for r in running)

    wait_for(training, 180, "both ranks to report progress in status")
    # The same job cannot be launched twice.
    again = trainguard("launch", "--ctl", cluster.ctl, "n1", "gpt", "--", sys.executable, "-c", "pass")
    assert again.returncode == 1 and "already runs on node 'n1'" in again.stderr

    assert trainguard("inject", "--ctl", cluster.ctl, "n1", "crash", "--chip", "1").returncode == 0
    crash = wait_for(lambda: cluster.find_events("daemon", "signal.crash", node="n1", rank=1), 30,
                     "the daemon to log the crash of rank 1")[0]
    assert crash["signal"] == "crash" and crash["job"] == "gpt" and crash["chip"] == 1
    assert crash["evidence"] == "rank 1 of job gpt was killed by SIGKILL"
    assert crash["level"] == "warning" and crash["detection_latency_s"] < 5
    # Its peer loses the collective: the agent reports that too, and stops nothing by itself.
    wait_for(lambda: len(cluster.find_events("daemon", "signal.crash", node="n1")) == 2, 120, "rank 0 to fail as well")
    assert cluster.find_events("n1", "signal.crash", rank=0)
    assert (cluster.root / "nodes" / "n1" / "checkpoints" / "gpt").is_dir()
    assert (cluster.root / "nodes" / "n1" / "logs" / "gpt" / "rank-0.log").exists()


def test_injected_hang_and_interconnect_timeout_are_acted_out_by_the_rank_and_detected(make_cluster):
    """The detectors that run are the production ones: the hang watcher sees a rank stop
    stepping; the log scanner reads the vendor's timeout line the rank printed."""
    cluster = make_cluster()
    cluster.start_daemon()
    cluster.start_agent("n1", "sim-ascend", 2, "--hang-timeout", "2s")
    cluster.wait_nodes("up", ["n1"], timeout=30)
    stepper = str(REPO / "tests" / "ranks" / "stepper.py")
    assert trainguard("launch", "--ctl", cluster.ctl, "n1", "j1", "--cwd", str(REPO), "--",
                      sys.executable, stepper).returncode == 0
    wait_for(lambda: any((r["step"] or 0) > 5 for r in cluster.node("n1")["running"]), 60, "the rank to step")

    assert trainguard("inject", "--ctl", cluster.ctl, "n1", "hang", "--chip", "0").returncode == 0
    hang = wait_for(lambda: cluster.find_events("daemon", "signal.hang", node="n1"), 2 + 2 + 5, "signal.hang")[0]
    assert hang["job"] == "j1" and hang["rank"] == 0 and hang["chip"] == 0
    # Healing the chip lets the rank step again.
    stuck_at = cluster.node("n1")["running"][0]["step"]
    assert trainguard("inject", "--ctl", cluster.ctl, "n1", "ok", "--chip", "0").returncode == 0
    wait_for(lambda: (cluster.node("n1")["running"][0]["step"] or 0) > stuck_at, 20, "the rank to step again")

    assert trainguard("inject", "--ctl", cluster.ctl, "n1", "interconnect_timeout", "--chip", "0").returncode == 0
    timeout = wait_for(lambda: cluster.find_events("daemon", "signal.interconnect_timeout", node="n1"), 20,
                       "signal.interconnect_timeout")[0]
    assert "EI0002" in timeout["evidence"] and timeout["rank"] == 0
    wait_for(lambda: cluster.find_events("daemon", "signal.crash", node="n1", rank=0), 20, "the rank to fail")
