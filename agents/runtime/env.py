"""What the agent (or torchrun) told this rank through its environment. No torch here.

trainguard's launcher sets the torchrun variables (RANK, LOCAL_RANK, WORLD_SIZE,
LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT) plus:

    TRAINGUARD_ACCELERATOR   ascend | nvidia | cpu | sim-ascend | sim-nvidia
    TRAINGUARD_HEARTBEAT     zmq endpoint of the local agent for progress messages
    TRAINGUARD_CKPT_DIR      where this job's checkpoints live
    TRAINGUARD_JOB, TRAINGUARD_NODE   names, for logs

Under plain torchrun none of the TRAINGUARD_* variables exist: the accelerator is then
detected (torch_npu importable → ascend, CUDA available → nvidia, else cpu).
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Mapping

ACCELERATORS = ("ascend", "nvidia", "cpu", "sim-ascend", "sim-nvidia")


class AssignmentError(RuntimeError):
    """The environment asks for something this process cannot do; the message says what
    and how to fix it."""


@dataclass(frozen=True)
class Assignment:
    accelerator: str | None  # None: not assigned by trainguard, detect
    rank: int
    local_rank: int
    world_size: int
    local_world_size: int
    heartbeat: str | None
    ckpt_dir: str | None
    job: str | None
    node: str | None


def assignment(env: Mapping[str, str] | None = None) -> Assignment:
    env = os.environ if env is None else env
    accelerator = env.get("TRAINGUARD_ACCELERATOR") or None
    if accelerator is not None and accelerator not in ACCELERATORS:
        raise AssignmentError(
            f"TRAINGUARD_ACCELERATOR={accelerator!r} is not one of {', '.join(ACCELERATORS)}"
        )
    rank, world_size = _int(env, "RANK", 0), _int(env, "WORLD_SIZE", 1)
    if world_size < 1 or not 0 <= rank < world_size:
        raise AssignmentError(f"RANK={rank} and WORLD_SIZE={world_size}: need 0 <= RANK < WORLD_SIZE")
    return Assignment(
        accelerator=accelerator,
        rank=rank,
        local_rank=_int(env, "LOCAL_RANK", 0),
        world_size=world_size,
        local_world_size=_int(env, "LOCAL_WORLD_SIZE", 1),
        heartbeat=env.get("TRAINGUARD_HEARTBEAT") or None,
        ckpt_dir=env.get("TRAINGUARD_CKPT_DIR") or None,
        job=env.get("TRAINGUARD_JOB") or None,
        node=env.get("TRAINGUARD_NODE") or None,
    )


def _int(env: Mapping[str, str], key: str, default: int) -> int:
    value = env.get(key)
    if value in (None, ""):
        return default
    try:
        return int(value)
    except ValueError:
        raise AssignmentError(f"{key}={value!r} is not a whole number") from None


def emit(event: str, **fields: Any) -> None:
    """One JSON line on stderr: the runtime's log, read by the agent's log scan and by
    humans. Never raises (a training step must not die of logging)."""
    try:
        record = {"timestamp": time.time(), "event": event, **fields}
        sys.stderr.write(json.dumps(record, default=str) + "\n")
        sys.stderr.flush()
    except Exception:
        pass
