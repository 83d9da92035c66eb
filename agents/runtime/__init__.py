"""The trainer runtime: imported INSIDE a training script, the only part of trainguard
that uses torch. Works on its own under plain torchrun (no daemon, no agent):

    from agents.runtime import Checkpointer, heartbeat, init_distributed
    placement = init_distributed()          # torch device + process group for this rank
    ckpt = Checkpointer("ckpt", keep=3)
    restored = ckpt.load_latest(model=model, optimizer=opt, scheduler=sched, sampler=sampler)
    for step in range(restored.step if restored else 0, steps):
        ...
        heartbeat(step + 1, loss=loss.item())
        if ckpt.due(step + 1, every=100):
            ckpt.save(step + 1, model=model, optimizer=opt, scheduler=sched, sampler=sampler)
        if ckpt.stop_requested:
            break
    ckpt.close()

Names are imported lazily so that the agent can use `agents.runtime.progress` (the wire
format of progress messages) without importing torch.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "Assignment",
    "AssignmentError",
    "Checkpointer",
    "Placement",
    "ResumableSampler",
    "Restored",
    "assignment",
    "CheckpointError",
    "device",
    "heartbeat",
    "init_distributed",
    "standby",
]

_WHERE = {
    "Assignment": "agents.runtime.env",
    "AssignmentError": "agents.runtime.env",
    "assignment": "agents.runtime.env",
    "heartbeat": "agents.runtime.progress",
    "ResumableSampler": "agents.runtime.sampler",
    "Placement": "agents.runtime.placement",
    "device": "agents.runtime.placement",
    "init_distributed": "agents.runtime.placement",
    "Checkpointer": "agents.runtime.checkpoint",
    "Restored": "agents.runtime.checkpoint",
    "CheckpointError": "agents.runtime.checkpoint",
    "standby": "agents.runtime.warm",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'agents.runtime' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_WHERE[name]), name)
