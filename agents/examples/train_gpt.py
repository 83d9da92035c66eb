"""A small GPT-style language model, trained on real text every machine already has: the
Python standard library's own source files, read at run time (byte-level, nothing to
download). Uses the trainguard runtime for everything a long run needs to survive faults:
device and process-group setup, progress heartbeats, complete asynchronous checkpoints,
exact resume, and a final checkpoint when asked to stop (SIGTERM).

    torchrun --nproc-per-node=2 -m agents.examples.train_gpt --steps 200 --ckpt-dir ckpt --metrics m.jsonl

Deterministic on one machine: same seed, same losses, with or without a kill and resume
in between (the tests check it bit for bit). Different Python versions ship different
standard libraries, so the text, and the losses, differ between machines.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import random
import sys
import sysconfig
import time
import traceback
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from agents.runtime import Checkpointer, ResumableSampler, assignment, heartbeat, init_distributed, standby
from agents.runtime.progress import flush as flush_heartbeat


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=200, help="train until this many steps are done")
    p.add_argument("--stop-at", type=int, default=None,
                   help="end this run after that step (the schedule still spans --steps): a reference for a run "
                        "that was stopped there")
    p.add_argument("--ckpt-dir", default=None, help="checkpoint directory (default: $TRAINGUARD_CKPT_DIR)")
    p.add_argument("--checkpoint-every", type=int, default=50, help="steps between checkpoints (0: only when asked)")
    p.add_argument("--keep", type=int, default=3, help="checkpoints to keep")
    p.add_argument("--metrics", default=None, help="rank 0 appends one JSON line per step: step, loss, time, pid")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--batch-size", type=int, default=8, help="sequences per rank per step")
    p.add_argument("--block", type=int, default=64, help="context length in bytes")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--data-bytes", type=int, default=2_000_000, help="how much standard-library source to read")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads per rank")
    p.add_argument("--pg-timeout", type=float, default=600.0,
                   help="seconds a collective may wait before the process group gives up")
    return p.parse_args(argv)


def load_corpus(max_bytes: int) -> torch.Tensor:
    """The standard library's top-level .py files, in name order, as bytes."""
    root = Path(sysconfig.get_paths()["stdlib"])
    buf = bytearray()
    for path in sorted(root.glob("*.py")):
        buf += path.read_bytes()
        if len(buf) >= max_bytes:
            break
    if len(buf) < 10_000:
        raise SystemExit(f"found only {len(buf)} bytes of Python source under {root}; cannot train")
    return torch.frombuffer(bytearray(buf[:max_bytes]), dtype=torch.uint8).long()


class Block(nn.Module):
    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(c, dim=2)
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.drop(self.proj(y.transpose(1, 2).reshape(b, t, c)))
        return x + self.drop(self.mlp(self.ln2(x)))


class GPT(nn.Module):
    def __init__(self, vocab: int, block: int, layers: int, width: int, heads: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, width)
        self.pos = nn.Embedding(block, width)
        self.blocks = nn.Sequential(*(Block(width, heads, dropout) for _ in range(layers)))
        self.ln = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab, bias=False)
        self.drop = nn.Dropout(dropout)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.drop(self.tok(idx) + self.pos(pos))
        return self.head(self.ln(self.blocks(x)))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    # What does not depend on the rank comes first: a warm standby has it done before a
    # restart needs it, then waits in standby() for its rank (outside one: no wait).
    data = load_corpus(args.data_bytes)
    torch.manual_seed(args.seed)  # the same initial weights on every rank
    model: nn.Module = GPT(256, args.block, args.layers, args.width, args.heads)
    standby()
    placement = init_distributed(datetime.timedelta(seconds=args.pg_timeout))
    a = assignment()
    rank, world = a.rank, a.world_size

    random.seed(args.seed)
    chunks = (len(data) - 1) // args.block
    sampler = ResumableSampler(chunks, args.batch_size, rank, world, seed=args.seed)
    model = model.to(placement.device)
    if world > 1:
        model = nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.1)
    warmup = max(1, args.steps // 20)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / max(1, args.steps)))),
    )
    torch.manual_seed(args.seed + 1 + rank)  # each rank its own dropout stream

    ckpt = Checkpointer(args.ckpt_dir, keep=args.keep)
    ckpt.install_signal_handlers()
    restored = ckpt.load_latest(model=model, optimizer=optimizer, scheduler=scheduler, sampler=sampler)
    step = restored.step if restored else 0
    metrics = open(args.metrics, "a") if args.metrics and rank == 0 else None

    offsets = torch.arange(args.block + 1)
    # ckpt.due() once per step on every rank (it agrees requests among the ranks), and
    # the stop checked after it: all ranks save and stop at the same step.
    end = min(args.steps, args.stop_at) if args.stop_at else args.steps
    while step < end:
        rows = torch.tensor(sampler.next_batch()) * args.block
        window = data[rows[:, None] + offsets].to(placement.device)
        x, y = window[:, :-1], window[:, 1:]
        logits = model(x)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        step += 1
        value = loss.item()
        if metrics is not None:
            metrics.write(json.dumps({"step": step, "loss": value, "time": time.time(), "pid": os.getpid()}) + "\n")
            metrics.flush()
        heartbeat(step, loss=value, lr=scheduler.get_last_lr()[0])
        if ckpt.due(step, args.checkpoint_every):
            ckpt.save(step, model=model, optimizer=optimizer, scheduler=scheduler, sampler=sampler)
        if ckpt.stop_requested:
            break

    if ckpt.requested:  # one process, asked between the last check and the end of the loop
        ckpt.save(step, model=model, optimizer=optimizer, scheduler=scheduler, sampler=sampler)
    error = ckpt.close()
    if metrics is not None:
        metrics.close()
    code = 0
    if error is not None:
        print(f"train_gpt: the last checkpoint failed: {error}", file=sys.stderr)
        code = 1
    # Everything is written (close() waited for the last checkpoint; metrics closed).
    # End the process here, before this frame's objects are freed: freeing the DDP
    # reducer destroys the gloo process group, which joins gloo's worker thread while
    # holding the GIL, and that thread may need the GIL to free the last collective's
    # tensor: a deadlock at exit (seen in 1 run in 4 after a SIGUSR1 checkpoint).
    flush_heartbeat()  # the last step reaches the agent
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run() -> None:
    """main(), and an end as prompt on an error as on success: after an exception the
    interpreter's exit would free the DDP reducer and the gloo process group, which can
    deadlock (see the end of main()), leaving a failed rank alive until it is killed and
    its fault unseen until then."""
    try:
        main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if exc.code is not None and not isinstance(exc.code, int):
            print(exc.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
        code = 1
    else:
        code = 0
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    run()
