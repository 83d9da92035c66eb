"""The example trainer under plain torchrun: killed runs resume exactly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from supervisor.cli.localcluster import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parent.parent
TRAIN = REPO / "agents" / "examples" / "train_gpt.py"
STEPS = 40


def torchrun(args: list[str], log: Path, nproc: int = 2) -> subprocess.Popen[bytes]:
    """Start torchrun in its own session, so the whole tree can be killed at once."""
    torchrun_bin = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun_bin), "--standalone", f"--nproc-per-node={nproc}", str(TRAIN), *args]
    with open(log, "ab") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO)


def kill_tree(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL torchrun and every rank. torchrun starts its workers in sessions of their
    own, so killing its process group alone would leave the ranks training."""
    parent = psutil.Process(proc.pid)
    tree = [parent, *parent.children(recursive=True)]
    for p in tree:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(tree, timeout=30)
    proc.wait(timeout=30)


def losses(path: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in map(json.loads, path.read_text().splitlines())]


def last_step(path: Path) -> int:
    try:
        return max((s for s, _ in losses(path)), default=0)
    except (FileNotFoundError, json.JSONDecodeError):
        return 0


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[int, float]:
    """An uninterrupted run: the losses every other run must reproduce."""
    d = tmp_path_factory.mktemp("reference")
    proc = torchrun(["--steps", str(STEPS), "--ckpt-dir", str(d / "ckpt"), "--metrics", str(d / "m.jsonl"),
                     "--checkpoint-every", "10"], d / "log")
    assert proc.wait(timeout=240) == 0, (d / "log").read_text()[-3000:]
    result = dict(losses(d / "m.jsonl"))
    assert sorted(result) == list(range(1, STEPS + 1))
    return result


def test_a_sigkilled_run_resumes_with_bit_identical_losses(reference, tmp_path):
    args = ["--steps", str(STEPS), "--ckpt-dir", str(tmp_path / "ckpt"), "--metrics", str(tmp_path / "m.jsonl"),
            "--checkpoint-every", "10"]
    proc = torchrun(args, tmp_path / "log")
    wait_for(lambda: last_step(tmp_path / "m.jsonl") >= 25, timeout=240, what="the run to pass step 25", interval=0.01)
    kill_tree(proc)
    killed_at = last_step(tmp_path / "m.jsonl")
    assert killed_at < STEPS, "the run finished before it could be killed"

    restart = torchrun(args, tmp_path / "log")
    assert restart.wait(timeout=240) == 0, (tmp_path / "log").read_text()[-3000:]
    rows = losses(tmp_path / "m.jsonl")
    steps = [s for s, _ in rows]
    replayed = sorted({s for s in steps if steps.count(s) > 1})
    assert replayed, "no step was replayed: the restart did not resume from an earlier checkpoint"
    assert set(steps) == set(range(1, STEPS + 1))
    mismatches = [(s, loss, reference[s]) for s, loss in rows if loss != reference[s]]
    assert not mismatches, f"losses differ from the uninterrupted run: {mismatches[:5]}"
    resumed = [json.loads(line) for line in (tmp_path / "log").read_text().splitlines()
               if '"runtime.resumed"' in line]
    assert {r["rank"] for r in resumed} == {0, 1} and all(r["exact"] for r in resumed)


def test_sigterm_takes_a_final_checkpoint_and_the_run_continues_exactly(reference, tmp_path):
    args = ["--steps", str(STEPS), "--ckpt-dir", str(tmp_path / "ckpt"), "--metrics", str(tmp_path / "m.jsonl"),
            "--checkpoint-every", "0"]  # no periodic checkpoints: only the one SIGTERM asks for
    proc = torchrun(args, tmp_path / "log")
    wait_for(lambda: last_step(tmp_path / "m.jsonl") >= 15, timeout=240, what="the run to pass step 15", interval=0.01)
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=60)  # torchrun itself exits non-zero on SIGTERM, by design
    stopped_at = last_step(tmp_path / "m.jsonl")
    saved = [json.loads(line) for line in (tmp_path / "log").read_text().splitlines()
             if '"runtime.checkpoint_saved"' in line]
    assert [e["step"] for e in saved] == [stopped_at], "exactly one checkpoint, of the last completed step"
    assert stopped_at < STEPS
    committed = sorted(p.name for p in (tmp_path / "ckpt").iterdir() if p.name.startswith("step-"))
    assert committed == [f"step-{stopped_at:08d}"], "the final checkpoint must be of the last completed step"

    assert torchrun(args, tmp_path / "log").wait(timeout=240) == 0
    rows = losses(tmp_path / "m.jsonl")
    assert [s for s, _ in rows] == list(range(1, STEPS + 1)), "nothing replayed, nothing lost"
    assert all(loss == reference[s] for s, loss in rows)


def test_a_two_rank_checkpoint_resumes_on_one_rank_and_says_so(reference, tmp_path):
    args = ["--steps", "20", "--ckpt-dir", str(tmp_path / "ckpt"), "--checkpoint-every", "10"]
    assert torchrun(args, tmp_path / "log").wait(timeout=240) == 0
    single = subprocess.run(
        [sys.executable, str(TRAIN), "--steps", "25", "--ckpt-dir", str(tmp_path / "ckpt"),
         "--metrics", str(tmp_path / "m1.jsonl"), "--checkpoint-every", "5"],
        capture_output=True, text=True, timeout=240, cwd=REPO,
        env={k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")},
    )
    assert single.returncode == 0, single.stderr[-3000:]
    events = [json.loads(line) for line in single.stderr.splitlines() if line.startswith("{")]
    changed = [e for e in events if e["event"] == "runtime.world_size_changed"]
    assert changed and changed[0]["then"] == 2 and changed[0]["now"] == 1
    resumed = next(e for e in events if e["event"] == "runtime.resumed")
    assert resumed["step"] == 20 and resumed["exact"] is False
    assert [s for s, _ in losses(tmp_path / "m1.jsonl")] == [21, 22, 23, 24, 25]


def test_train_gpt_under_the_trainguard_launcher_heartbeats_and_checkpoints(tmp_path):
    """The example run by the agent's launcher: the assignment comes from the environment
    (no --ckpt-dir), progress reaches the agent's socket, and a killed rank is a crash."""
    import socket as pysocket

    import zmq

    from agents.launcher import Launcher, RankSpec
    from agents.runtime.progress import decode_progress
    from supervisor.shared.vocab import Accelerator

    endpoint = f"ipc://{tmp_path}/hb.sock"
    pull = zmq.Context.instance().socket(zmq.PULL)
    pull.setsockopt(zmq.LINGER, 0)
    pull.bind(endpoint)
    with pysocket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    launcher = Launcher(tmp_path / "logs")
    for rank in (0, 1):
        launcher.start(RankSpec(
            job="gpt", rank=rank, local_rank=rank, world_size=2, local_world_size=2,
            argv=(sys.executable, str(TRAIN), "--steps", "400", "--checkpoint-every", "5"),
            master_addr="127.0.0.1", master_port=port, accelerator=Accelerator.SIM_ASCEND,
            chips=(rank,), node="n1", heartbeat=endpoint, ckpt_dir=str(tmp_path / "ckpt"), cwd=str(REPO),
        ))
    progress: dict[int, int] = {}

    def both_ranks_past_step_10() -> bool:
        while pull.poll(10):
            msg = decode_progress(pull.recv())
            progress[msg["rank"]] = max(progress.get(msg["rank"], 0), msg["step"])
        return progress.get(0, 0) > 10 and progress.get(1, 0) > 10

    wait_for(both_ranks_past_step_10, timeout=240, what="progress from both ranks", interval=0)
    wait_for(lambda: any(p.name.startswith("step-") for p in (tmp_path / "ckpt").iterdir()), 60,
             "a checkpoint in TRAINGUARD_CKPT_DIR")
    os.kill(launcher.ranks[("gpt", 1)].pid, signal.SIGKILL)
    exits = []
    wait_for(lambda: exits.extend(launcher.poll()) or any(e.rank == 1 for e in exits), 30, "rank 1's exit")
    crash = next(e for e in exits if e.rank == 1)
    assert crash.crash and crash.signal_name == "SIGKILL"
    exits.extend(launcher.stop("gpt", grace=5))
    assert {e.rank for e in exits} == {0, 1}
    pull.close()
