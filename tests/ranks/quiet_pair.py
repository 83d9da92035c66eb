"""A rank of a job that does not use the trainguard runtime (no heartbeats): plain
torch.distributed, a print per step. At --stop-at, rank --culprit stops in its own code
(a sleep, as a stuck data loader would) and prints nothing more; the others block in the
next all_reduce, waiting for it."""

import argparse
import os
import time

import torch
import torch.distributed as dist

p = argparse.ArgumentParser()
p.add_argument("--stop-at", type=int, default=20)
p.add_argument("--culprit", type=int, default=1)
args = p.parse_args()

dist.init_process_group("gloo")
rank = int(os.environ["RANK"])
for step in range(1, 1_000_000):
    t = torch.ones(4)
    dist.all_reduce(t)
    print(f"step {step}", flush=True)
    if step == args.stop_at and rank == args.culprit:
        while True:
            time.sleep(1)
    time.sleep(0.02)
