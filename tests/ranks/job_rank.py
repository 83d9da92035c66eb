"""A fake rank of a daemon's job: says what it was told, heartbeats with a loss, answers
SIGUSR1 as the runtime does (rank 0 prints `runtime.checkpoint_saved`), stops with code 0
on SIGTERM, and exits with `--code` once the file `--exit-when` exists."""

import argparse
import json
import os
import pathlib
import signal
import sys
import time

from agents.runtime import heartbeat
from agents.runtime.env import emit

p = argparse.ArgumentParser()
p.add_argument("--exit-when", default=None, help="exit once this file exists")
p.add_argument("--code", type=int, default=0)
args = p.parse_args()

KEYS = ["RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "TRAINGUARD_ATTEMPT",
        "TRAINGUARD_CKPT_DIR", "TRAINGUARD_JOB", "TRAINGUARD_NODE", "TRAINGUARD_SIM_CHIPS", "ASCEND_RT_VISIBLE_DEVICES",
        "FROM_JOB"]
print(json.dumps({"env": {k: os.environ.get(k) for k in KEYS}, "pid": os.getpid(), "cwd": os.getcwd()}), flush=True)
rank = int(os.environ["RANK"])
step = 0
asked: list[str] = []
signal.signal(signal.SIGUSR1, lambda *_: asked.append("checkpoint"))
signal.signal(signal.SIGTERM, lambda *_: asked.append("stop"))
while True:
    step += 1
    heartbeat(step, loss=10.0 / step)
    if "checkpoint" in asked:
        asked.remove("checkpoint")
        if rank == 0:
            emit("runtime.checkpoint_saved", step=step, path=f"{os.environ['TRAINGUARD_CKPT_DIR']}/step-{step:08d}")
    if "stop" in asked:
        print("stopping on SIGTERM", flush=True)
        sys.exit(0)
    if args.exit_when and pathlib.Path(args.exit_when).exists():
        print(f"exiting with code {args.code}", flush=True)
        sys.exit(args.code)
    time.sleep(0.05)
