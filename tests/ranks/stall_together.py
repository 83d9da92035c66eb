"""A rank of a job whose ranks all stop at the same step, each in its own code (not in a
collective): the case where no rank can be told from the others. Steps are one
all_reduce each, with a heartbeat; at --stall-at every rank sleeps."""

import argparse
import time

import torch
import torch.distributed as dist

from agents.runtime import heartbeat, init_distributed

p = argparse.ArgumentParser()
p.add_argument("--stall-at", type=int, default=20)
args = p.parse_args()

init_distributed()
for step in range(1, 1_000_000):
    t = torch.ones(4)
    dist.all_reduce(t)
    heartbeat(step)
    if step == args.stall_at:
        while True:  # every rank, the same step, the same place
            time.sleep(1)
    time.sleep(0.02)
