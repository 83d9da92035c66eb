"""What does agreeing on checkpoint / stop requests cost each training step?

    .venv/bin/python bench/agree.py                 # 2 ranks, gloo, ~1 min
    .venv/bin/python bench/agree.py --calls 5000 --steps 300

`Checkpointer.due()` does, under a process group of more than one rank, one all_reduce
(MAX) of two int32 flags per call, and train_gpt calls it once per step. Two numbers,
side by side: (a) the time of one `due()` call inside a 2-rank gloo group on this host
(median of --repeat blocks of --calls calls each, after a warm-up), and (b) the median
step time of `agents.examples.train_gpt` under torchrun with 2 ranks (steps after the
first 50). The cost per step is (a), its share of a step (a)/(b). Writes
bench/out/agree.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def worker(calls: int, repeat: int, out: str) -> None:
    import torch.distributed as dist

    from agents.runtime import Checkpointer, init_distributed

    init_distributed()
    ckpt = Checkpointer(tempfile.mkdtemp())
    for _ in range(100):
        ckpt.due(1, 0)
    blocks = []
    for _ in range(repeat):
        dist.barrier()
        started = time.perf_counter()
        for i in range(calls):
            ckpt.due(i, 0)
        blocks.append((time.perf_counter() - started) / calls)
    if dist.get_rank() == 0:
        Path(out).write_text(json.dumps(blocks))
    dist.destroy_process_group()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=2000)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args.calls, args.repeat, args.worker)
        return
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    with tempfile.TemporaryDirectory() as tmp:
        blocks_file = Path(tmp) / "blocks.json"
        subprocess.run([torchrun, "--standalone", "--nproc-per-node=2", __file__, "--calls", str(args.calls),
                        "--repeat", str(args.repeat), "--worker", str(blocks_file)], check=True, cwd=REPO,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        due = statistics.median(json.loads(blocks_file.read_text()))
        metrics = Path(tmp) / "m.jsonl"
        subprocess.run([torchrun, "--standalone", "--nproc-per-node=2", "-m", "agents.examples.train_gpt",
                        "--steps", str(args.steps), "--checkpoint-every", "0", "--ckpt-dir", f"{tmp}/ckpt",
                        "--metrics", str(metrics)], check=True, cwd=REPO, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        rows = [json.loads(line) for line in metrics.read_text().splitlines()]
        steps = [b["time"] - a["time"] for a, b in zip(rows[50:], rows[51:])]
        step = statistics.median(steps)
    result = {"due_s": due, "step_s": step, "share": due / step, "calls": args.calls, "repeat": args.repeat,
              "steps_timed": len(steps), "cpus": os.cpu_count()}
    print(f"{'due() per call (2 ranks, gloo)':34} {due * 1e6:8.0f} us")
    print(f"{'train_gpt step (2 ranks, median)':34} {step * 1e3:8.1f} ms")
    print(f"{'share of a step':34} {100 * due / step:8.2f} %")
    out = REPO / "bench" / "out" / "agree.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
