"""What the node's ranks are, on disk: `<work_dir>/ranks.json`, so a restarted agent can
adopt the ranks that outlived it and learn how the others ended.

One record per rank the agent runs (job, attempt, rank, the wrapper's and the rank's pids
with their create times, log and status files, what the rank was told), plus, per job,
the last attempt this node started (so a start_ranks resent after an agent restart still
starts nothing twice). Written atomically on every start and exit. Pure apart from
`save` / `load`; a damaged file is reported, never half-trusted.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

FORMAT = 1
#: Jobs whose last attempt is remembered after their ranks are gone.
MAX_JOBS_REMEMBERED = 256


class RankStateError(ValueError):
    """ranks.json cannot be read as this agent wrote it."""


@dataclass(frozen=True)
class RankRecord:
    job: str
    attempt: int  # 0: a `launch`, not a job attempt of the daemon
    rank: int
    local_rank: int
    world_size: int
    local_world_size: int
    wrapper_pid: int
    wrapper_created: float  # psutil create_time: a recycled pid is never mistaken for it
    pid: int  # the rank itself (0 until the wrapper has said)
    created: float
    log_path: str
    status_path: str
    chips: tuple[int, ...] = ()
    argv: tuple[str, ...] = ()
    stop_requested: bool = False
    #: The job's hang limits (train, checkpoint, eval), None for the agent's own.
    hang_limits: tuple[float, float, float] | None = None


@dataclass(frozen=True)
class AttemptRecord:
    attempt: int
    master_port: int
    pids: dict[int, int] = field(default_factory=dict)  # rank → pid


@dataclass
class RankState:
    ranks: list[RankRecord] = field(default_factory=list)
    attempts: dict[str, AttemptRecord] = field(default_factory=dict)


def dumps(state: RankState) -> str:
    attempts = dict(list(state.attempts.items())[-MAX_JOBS_REMEMBERED:])
    return json.dumps({
        "format": FORMAT,
        "ranks": [asdict(r) for r in state.ranks],
        "attempts": {job: {"attempt": a.attempt, "master_port": a.master_port,
                           "pids": {str(k): v for k, v in a.pids.items()}} for job, a in attempts.items()},
    }, indent=1)


def loads(text: str) -> RankState:
    try:
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise RankStateError(f"format {data.get('format') if isinstance(data, dict) else '?'!r}, expected {FORMAT}")
        ranks = []
        for r in data["ranks"]:
            r = dict(r)
            r["chips"] = tuple(int(c) for c in r.get("chips", ()))
            r["argv"] = tuple(str(a) for a in r.get("argv", ()))
            if r.get("hang_limits") is not None:
                r["hang_limits"] = tuple(float(x) for x in r["hang_limits"])
            ranks.append(RankRecord(**r))
        attempts = {str(job): AttemptRecord(int(a["attempt"]), int(a["master_port"]),
                                            {int(k): int(v) for k, v in a.get("pids", {}).items()})
                    for job, a in data.get("attempts", {}).items()}
    except RankStateError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise RankStateError(f"{type(exc).__name__}: {exc}") from None
    return RankState(ranks, attempts)


def save(path: Path, state: RankState) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(dumps(state))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load(path: Path) -> RankState:
    """The state the previous agent left; empty when there is none. RankStateError when
    the file is there but damaged (the caller logs it and starts empty)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return RankState()
    except OSError as exc:
        raise RankStateError(str(exc)) from None
    return loads(text)
