"""Helpers for the jobs end-to-end tests: a local cluster with an Ascend and an Nvidia
pool, a test policy (the shipped default with test-sized detection), job files for the
example trainer, and the reference losses of a fault-free run of the same seed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from supervisor.cli.client import request
from supervisor.cli.localcluster import LocalCluster, wait_for
from supervisor.policy.shipped import shipped_policy_dir
from tests.conftest import trainguard

REPO = Path(__file__).resolve().parent.parent
ASCEND = ["ascend-0", "ascend-1"]
NVIDIA = "nvidia-0"

#: The trainer, small and fast: ~20 ms a step with 2 ranks here.
TRAIN = [sys.executable, "-m", "agents.examples.train_gpt", "--layers", "1", "--width", "64", "--data-bytes",
         "300000", "--seed", "77"]


def make_policy(directory: Path, hang_timeout: str = "30s", max_restarts: int = 10) -> Path:
    """The shipped default policy with detection sized for tests."""
    directory.mkdir(parents=True, exist_ok=True)
    text = (shipped_policy_dir() / "default.yaml").read_text()
    text = text.replace("hang_timeout: 300s", f"hang_timeout: {hang_timeout}")
    text = text.replace("probe_interval: 5s", "probe_interval: 500ms")
    text = text.replace("every: 10m", "every: off")
    text = text.replace("before_failover_timeout: 120s", "before_failover_timeout: 20s")
    text = text.replace("max_restarts: 10", f"max_restarts: {max_restarts}")
    (directory / "default.yaml").write_text(text)
    return directory


def start_pools(cluster: LocalCluster, policies: Path, chips: int = 2, nvidia: bool = True) -> None:
    cluster.start_daemon("--policy-dir", str(policies))
    for node in ASCEND:
        cluster.start_agent(node, "sim-ascend", chips)
    if nvidia:
        cluster.start_agent(NVIDIA, "sim-nvidia", 2)
    cluster.wait_nodes("up", ASCEND + ([NVIDIA] if nvidia else []), timeout=60)


def job_file(directory: Path, name: str, steps: int, every: int = 10, command: list[str] | None = None,
             ascend: tuple[int, int] = (2, 1), nvidia: tuple[int, int] = (1, 2), metrics: bool = True) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    argv = command or [*TRAIN, "--steps", str(steps), "--checkpoint-every", str(every)]
    if metrics and command is None:
        argv += ["--metrics", str(directory / f"{name}-metrics.jsonl")]
    spec = {
        "name": name,
        "command": argv,
        "workdir": str(directory),
        "checkpoint_dir": str(directory / f"{name}-ckpt"),
        "policy": "default",
        "pools": {"ascend": {"nodes": ascend[0], "ranks_per_node": ascend[1]},
                  "nvidia": {"nodes": nvidia[0], "ranks_per_node": nvidia[1]}},
    }
    path = directory / f"{name}.yaml"
    path.write_text(json.dumps(spec))  # JSON is YAML
    return path


def inject(cluster: LocalCluster, node: str, fault: str, chip: int = 0) -> None:
    result = trainguard("inject", "--ctl", cluster.ctl, node, fault, "--chip", str(chip))
    assert result.returncode == 0, result.stderr


def submit(cluster: LocalCluster, path: Path) -> str:
    result = trainguard("job", "submit", "--ctl", cluster.ctl, "--json", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)["job"]


def show(cluster: LocalCluster, job: str) -> dict[str, Any]:
    return request(cluster.ctl, "job_show", {"job": job}, timeout=5)


def wait_state(cluster: LocalCluster, job: str, states: set[str], timeout: float, what: str = "") -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        j = show(cluster, job)
        return j if j["state"] in states else None

    return wait_for(check, timeout, what or f"job {job} to be {'/'.join(sorted(states))}")


def wait_step(cluster: LocalCluster, job: str, step: int, timeout: float) -> dict[str, Any]:
    return wait_for(lambda: (j := show(cluster, job))["state"] == "running" and (j["step"] or 0) >= step and j,
                    timeout, f"job {job} past step {step}")


def events(cluster: LocalCluster, name: str, **match: Any) -> list[dict[str, Any]]:
    return cluster.find_events("daemon", name, **match)


def json_events(text: str, name: str) -> list[dict[str, Any]]:
    """The JSON lines called `name` in a log's text (a rank's, a standby's: other lines
    are skipped)."""
    found = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("event") == name:
            found.append(record)
    return found


def losses(path: Path) -> dict[int, float]:
    """The loss of each step, as the run that finally kept it wrote it (a replayed step
    after a restart is written again: the last line for a step wins)."""
    out: dict[int, float] = {}
    for line in path.read_text().splitlines():
        record = json.loads(line)
        out[record["step"]] = record["loss"]
    return out


def reference_losses(directory: Path, steps: int, nproc: int = 2) -> dict[int, float]:
    """A fault-free run of the same trainer and seed under plain torchrun."""
    directory.mkdir(parents=True, exist_ok=True)
    metrics = directory / "reference.jsonl"
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINGUARD_")}
    proc = subprocess.Popen([str(torchrun), "--standalone", f"--nproc-per-node={nproc}", "-m",
                             "agents.examples.train_gpt", *TRAIN[3:], "--steps", str(steps), "--checkpoint-every", "0",
                             "--ckpt-dir", str(directory / "ref-ckpt"), "--metrics", str(metrics)],
                            cwd=directory, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        # Every step's loss written is all the reference is for; how its processes exit is not.
        wait_for(lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= steps, 240, "the reference run")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return losses(metrics)
