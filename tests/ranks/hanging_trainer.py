"""A real (tiny) training loop that reports progress, then hangs inside the loop at
--hang-at, the way a rank stuck in a collective would: alive, silent, not stepping."""

import argparse
import pathlib
import time

import torch

from agents.runtime import heartbeat

p = argparse.ArgumentParser()
p.add_argument("--hang-at", type=int, default=5)
p.add_argument("--marker", required=True)
args = p.parse_args()

torch.manual_seed(0)
model = torch.nn.Linear(16, 1)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
for step in range(1, 1_000_000):
    x = torch.randn(32, 16)
    loss = (model(x) - x.sum(dim=1, keepdim=True)).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    heartbeat(step, loss=loss.item())
    print(f"step {step} loss {loss.item():.4f}", flush=True)
    if step == args.hang_at:
        pathlib.Path(args.marker).write_text(str(time.time()))
        while True:  # stuck, as in a collective that never returns
            time.sleep(1)
    time.sleep(0.05)
