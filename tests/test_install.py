"""The wheel works outside the checkout: built, installed into a fresh virtual
environment (no torch: the daemon and the agent never need it), and run from a temporary
directory — the daemon, an agent registering with it, `logscan`, `policy check`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from supervisor.cli.localcluster import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """bin/ of a fresh venv with the trainguard wheel (and its dependencies) installed."""
    root = tmp_path_factory.mktemp("install")
    dist = root / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist),
                    str(REPO)], check=True, timeout=300)
    (wheel,) = dist.glob("trainguard-*.whl")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(wheel)], check=True, timeout=400)
    return venv / "bin"


def run(bin_dir: Path, *args: str, cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run([str(bin_dir / "trainguard"), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          input=stdin, timeout=60)


def test_the_installed_trainguard_has_no_checkout_behind_it(installed: Path, tmp_path: Path) -> None:
    probe = subprocess.run([str(installed / "python"), "-c", "import supervisor, agents; print(supervisor.__file__)"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert probe.returncode == 0 and str(REPO) not in probe.stdout and "site-packages" in probe.stdout


def test_policy_check_with_no_argument_checks_the_shipped_policies(installed: Path, tmp_path: Path) -> None:
    result = run(installed, "policy", "check", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "policy default" in result.stdout and "policy patient-ascend" in result.stdout


def test_logscan_uses_the_shipped_catalog(installed: Path, tmp_path: Path) -> None:
    line = ("[Rank 1] Watchdog caught collective operation timeout: WorkNCCL(SeqNum=1, OpType=ALLREDUCE, "
            "NumelIn=1, NumelOut=1, Timeout(ms)=600000) ran for 600020 milliseconds before timing out.\n")
    result = run(installed, "logscan", "-", "--json", cwd=tmp_path, stdin=line)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[0])["signal"] == "interconnect_timeout"


def test_the_installed_daemon_and_agent_run_from_another_directory(installed: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    bind, ctl = f"ipc://{tmp_path}/a.sock", f"ipc://{tmp_path}/c.sock"
    procs = [
        subprocess.Popen([str(installed / "trainguard"), "daemon", "--insecure", "--bind", bind, "--ctl", ctl,
                          "--state-dir", str(tmp_path / "state")], cwd=tmp_path, env=env,
                         stdout=open(tmp_path / "daemon.log", "wb"), stderr=subprocess.STDOUT),
        subprocess.Popen([str(installed / "trainguard"), "agent", "--insecure", "--daemon", bind, "--node-id", "n1",
                          "--accelerator", "sim-ascend", "--chips", "2", "--work-dir", str(tmp_path / "agent")],
                         cwd=tmp_path, env=env, stdout=open(tmp_path / "agent.log", "wb"), stderr=subprocess.STDOUT),
    ]
    try:
        def up() -> bool:
            result = run(installed, "status", "--ctl", ctl, "--json", cwd=tmp_path)
            return result.returncode == 0 and [n["state"] for n in json.loads(result.stdout)["nodes"]] == ["up"]

        wait_for(up, 60, "the installed agent to register with the installed daemon")
    finally:
        for p in procs:
            p.terminate()
        deadline = time.monotonic() + 10
        for p in procs:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
    assert "agent.started" in (tmp_path / "agent.log").read_text()
