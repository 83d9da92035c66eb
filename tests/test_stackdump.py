"""Stack dumps in the background (`agents/stackdump.py`): real py-spy on a real process,
and what the evidence says when py-spy is missing, refused or stuck."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agents.stackdump import StackDumps, find_pyspy, wait_all
from agents.watchers.stacks import read_stack

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]


@pytest.fixture
def sleeper():
    process = subprocess.Popen([sys.executable, "-c", "import time\nprint('up', flush=True)\ntime.sleep(600)"],
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None and process.stdout.readline() == "up\n"
    yield process
    process.kill()
    process.wait()


def fake_pyspy(tmp_path: Path, body: str) -> str:
    path = tmp_path / "py-spy"
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return str(path)


def test_py_spy_is_installed_with_the_agent():
    assert find_pyspy() is not None, "py-spy is a dependency of the agent on Linux"


def test_a_real_dump_is_taken_without_blocking_the_caller(sleeper):
    dumps = StackDumps()
    started = time.monotonic()
    dumps.start("j1", {0: sleeper.pid}, time.monotonic())
    assert time.monotonic() - started < 0.5, "start() only starts py-spy"
    [dump] = wait_all(dumps, "j1", 10)
    assert dump.error is None and dump.rank == 0 and dump.pid == sleeper.pid
    assert read_stack(dump.text).where == "elsewhere" and "<module>" in dump.text


def test_a_stuck_py_spy_is_killed_at_the_deadline_and_the_evidence_says_so(sleeper, tmp_path):
    marker = tmp_path / "pid"
    dumps = StackDumps(timeout=0.5, pyspy=fake_pyspy(tmp_path, f"echo $$ > {marker}; exec sleep 600"))
    dumps.start("j1", {0: sleeper.pid}, time.monotonic())
    [dump] = wait_all(dumps, "j1", 10)
    assert dump.text == "" and "did not answer within" in (dump.error or "")
    pid = int(marker.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_a_refused_dump_says_why(sleeper, tmp_path):
    dumps = StackDumps(pyspy=fake_pyspy(tmp_path, "echo 'Error: Permission Denied: Try running again with elevated "
                                                  "permissions' >&2; exit 1"))
    dumps.start("j1", {0: sleeper.pid}, time.monotonic())
    [dump] = wait_all(dumps, "j1", 10)
    assert dump.error is not None and dump.error.startswith("py-spy may not read the rank (Error: Permission Denied")
    assert "ptrace" in dump.error


def test_without_py_spy_every_rank_says_so(sleeper):
    dumps = StackDumps(pyspy="/nonexistent/py-spy")
    dumps.start("j1", {0: sleeper.pid, 1: sleeper.pid}, time.monotonic())
    result = wait_all(dumps, "j1", 5)
    assert [d.rank for d in result] == [0, 1] and all("could not start" in (d.error or "") for d in result)
