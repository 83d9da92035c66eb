"""Under torchrun with two ranks, a checkpoint or stop asked of ONE rank is taken by both
at the same step: the ranks agree on it in `Checkpointer.due()`."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import psutil
import pytest

from supervisor.cli.localcluster import wait_for
from tests.test_runtime_e2e import last_step, torchrun

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def _workers(proc) -> list[psutil.Process]:
    return [c for c in psutil.Process(proc.pid).children(recursive=True) if "train_gpt" in " ".join(c.cmdline())]


def _lines(log: Path, event: str) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines() if f'"{event}"' in line]


def test_sigterm_to_one_rank_stops_both_at_the_same_step_with_one_checkpoint(tmp_path):
    args = ["--steps", "400", "--ckpt-dir", str(tmp_path / "ckpt"), "--metrics", str(tmp_path / "m.jsonl"),
            "--checkpoint-every", "0"]
    proc = torchrun(args, tmp_path / "log")
    wait_for(lambda: last_step(tmp_path / "m.jsonl") >= 10, timeout=240, what="the run to pass step 10")
    workers = wait_for(lambda: len(_workers(proc)) == 2 and _workers(proc), 30, "two workers")
    os.kill(workers[1].pid, signal.SIGTERM)  # one rank only, not torchrun
    assert proc.wait(timeout=120) == 0, (tmp_path / "log").read_text()[-3000:]
    stopped_at = last_step(tmp_path / "m.jsonl")
    assert stopped_at < 400
    saved = _lines(tmp_path / "log", "runtime.checkpoint_saved")
    assert [e["step"] for e in saved] == [stopped_at]
    committed = sorted(p.name for p in (tmp_path / "ckpt").iterdir() if not p.name.startswith("."))
    assert committed == [f"step-{stopped_at:08d}"]
    assert not [p for p in (tmp_path / "ckpt").iterdir() if p.name.startswith(".")], "no torn temp dir left"


def test_sigusr1_to_one_rank_gives_one_checkpoint_of_both_and_training_goes_on(tmp_path):
    args = ["--steps", "60", "--ckpt-dir", str(tmp_path / "ckpt"), "--metrics", str(tmp_path / "m.jsonl"),
            "--checkpoint-every", "0"]
    proc = torchrun(args, tmp_path / "log")
    wait_for(lambda: last_step(tmp_path / "m.jsonl") >= 10, timeout=240, what="the run to pass step 10")
    workers = wait_for(lambda: len(_workers(proc)) == 2 and _workers(proc), 30, "two workers")
    os.kill(workers[0].pid, signal.SIGUSR1)
    assert proc.wait(timeout=240) == 0, (tmp_path / "log").read_text()[-3000:]
    assert last_step(tmp_path / "m.jsonl") == 60, "training went on to the end"
    saved = _lines(tmp_path / "log", "runtime.checkpoint_saved")
    assert len(saved) == 1 and 10 <= saved[0]["step"] < 60
    step = saved[0]["step"]
    committed = sorted(p.name for p in (tmp_path / "ckpt").iterdir() if not p.name.startswith("."))
    assert committed == [f"step-{step:08d}"]
    manifest = json.loads((tmp_path / "ckpt" / committed[0] / "manifest.json").read_text())
    assert set(manifest["files"]) == {"state.ckpt", "rank-0.ckpt", "rank-1.ckpt"}, "both ranks saved that step"
