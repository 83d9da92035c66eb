"""Warm standby: a rank's process, started before it is needed, waiting for its rank.

A cold restart pays for `import torch`, torch's lazy imports (DDP pulls in torch._dynamo)
and building the model before it can load a checkpoint and step: seconds, most of a
restart. A job with `warm_standby: true` gets, on each node, one standby process per
rank, started from the job's own command once its ranks train. The script runs as usual
until it calls `standby()` — after its imports and everything that does not depend on
the rank (building the model on the host, reading the dataset index) — and waits there.
When the job restarts, the agent hands each standby a rank instead of starting a new
process: `standby()` takes the assignment (the environment a rank is started with:
RANK, WORLD_SIZE, MASTER_ADDR/PORT, the chips, the heartbeat endpoint, ...), sends its
output to the rank's log, and returns; the script goes on into `init_distributed()`.

Outside a standby (`TRAINGUARD_STANDBY` unset: torchrun, the first attempt, a plain
run) `standby()` returns at once. Do not touch the accelerator before calling it: the
chips are only known with the assignment.

While it waits, a standby also first touches the memory its load will read the newest
checkpoint into (`checkpoint.prepare_load`, from `TRAINGUARD_CKPT_DIR`; retried until
there is a checkpoint): a fresh process pays more for touching new memory than for
reading the checkpoint into it.

The agent writes the assignment to the file named by `TRAINGUARD_STANDBY` (atomically);
the standby writes `<that file>.ready` once it waits, and ends itself if the agent that
started it (`TRAINGUARD_AGENT_PID`) is gone.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

#: How often a waiting standby looks for its assignment (the restart's added latency).
POLL = 0.005
#: How often a waiting standby looks for a checkpoint to prepare its load from.
PREPARE_EVERY = 2.0


class StandbyError(RuntimeError):
    """A standby that cannot take its assignment (a damaged file): it ends, the agent
    starts the rank cold."""


def waiting() -> bool:
    """Is this process a standby that has not been given its rank yet?"""
    return bool(os.environ.get("TRAINGUARD_STANDBY"))


def warm_up() -> None:
    """The imports a rank pays for lazily on its first steps, paid while waiting."""
    import torch  # noqa: F401
    import torch.distributed  # noqa: F401
    import torch.nn.parallel  # noqa: F401

    try:
        import torch._dynamo  # noqa: F401  (DDP's constructor imports it)
    except Exception:
        pass


def standby() -> dict[str, Any] | None:
    """Wait here for a rank when this process is a warm standby; return the assignment
    (None, at once, when it is not one)."""
    path_text = os.environ.get("TRAINGUARD_STANDBY")
    if not path_text:
        return None
    path = Path(path_text)
    warm_up()
    agent = int(os.environ.get("TRAINGUARD_AGENT_PID", "0") or 0)
    ready = path.with_name(path.name + ".ready")
    ready.write_text(f"{os.getpid()}\n")
    checked = time.monotonic()
    ckpt_dir = os.environ.get("TRAINGUARD_CKPT_DIR")
    prepare_at = checked if ckpt_dir else math.inf
    while not path.exists():
        if time.monotonic() >= prepare_at:
            again = _prepare_load(ckpt_dir or "", stop=path.exists)
            prepare_at = time.monotonic() + PREPARE_EVERY if again else math.inf
        time.sleep(POLL)
        if time.monotonic() - checked > 1.0:
            checked = time.monotonic()
            if agent and not _alive(agent):
                sys.stderr.write("trainguard standby: the agent that started this standby is gone; ending\n")
                sys.stderr.flush()
                os._exit(0)
    try:
        assignment = json.loads(path.read_text())
        env, log = assignment["env"], assignment["log"]
        if not isinstance(env, dict) or not isinstance(log, str):
            raise TypeError("env must be an object, log a path")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StandbyError(f"cannot read the assignment {path}: {exc}") from None
    del os.environ["TRAINGUARD_STANDBY"]
    os.environ.update({str(k): str(v) for k, v in env.items()})
    _output_to(log)
    from agents.runtime import progress

    progress.reset()  # the heartbeat sender is made from the rank's environment, now set
    return assignment


def _prepare_load(ckpt_dir: str, stop: Callable[[], bool]) -> bool:
    """Prepare the load's memory from the newest checkpoint; True to try again later
    (there is none yet)."""
    from agents.runtime import checkpoint
    from agents.runtime.env import emit
    from agents.runtime.placement import on_host

    try:
        done = checkpoint.prepare_load(ckpt_dir, stop, weights=not on_host(os.environ.get("TRAINGUARD_ACCELERATOR")))
    except OSError as exc:  # an unreadable directory: the load will say so, with the rank's log
        done = {"skipped": f"cannot read {ckpt_dir}: {exc}"}
    if "prepared" in done:
        emit("runtime.load_prepared", bytes=done["prepared"], seconds=done["seconds"], checkpoint=done["from"])
        return False
    if done["skipped"] == checkpoint.NOTHING_YET:
        return True
    if done["skipped"] != checkpoint.STOPPED:
        emit("runtime.load_not_prepared", reason=done["skipped"])
    return False


def _output_to(log: str) -> None:
    """From now on this process writes to the rank's log, as a cold rank would."""
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
