"""bench/recovery.py and bench/chaos.py kill what their systems left in their work
directory: torchrun's workers each run in a session of their own, so killing torchrun's
process group leaves them training and skews the next measurement."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from supervisor.cli.localcluster import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import recovery  # noqa: E402  (bench/recovery.py)

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]


def test_what_works_in_the_directory_is_killed_and_nothing_else(tmp_path: Path) -> None:
    root, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    (root / "worker").mkdir(parents=True)
    elsewhere.mkdir()
    own_session = subprocess.Popen(SLEEPER, cwd=root / "worker", start_new_session=True)
    in_root = subprocess.Popen(SLEEPER, cwd=root)
    outside = subprocess.Popen(SLEEPER, cwd=elsewhere)
    try:
        wait_for(lambda: all(psutil.Process(p.pid).cwd() for p in (own_session, in_root, outside)), 10, "the sleepers")
        killed = recovery.stop_processes_in(root)
        assert sorted(killed) == sorted([own_session.pid, in_root.pid])
        # Gone (reaped already by the bench's wait, so their exit status is lost to Popen).
        for p in (own_session, in_root):
            p.wait(5)
            assert not psutil.pid_exists(p.pid) or psutil.Process(p.pid).status() == psutil.STATUS_ZOMBIE
        assert outside.poll() is None, "a process working elsewhere was killed"
    finally:
        for p in (own_session, in_root, outside):
            p.kill()
            p.wait()
