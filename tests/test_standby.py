"""Which warm standbys a restart may take (`agents/standby.py`): all or none per node, only
standbys of the same command, directory and job environment, never a dead one."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from agents.launcher import RankSpec
from agents.standby import STANDBY_NICE, Blueprint, Standby, Standbys, restore_priority
from supervisor.cli.localcluster import wait_for
from supervisor.shared.vocab import Accelerator

pytestmark = pytest.mark.timeout(10)


class _Process:
    """What a standby's process answers to `poll()`: None while it runs."""

    def __init__(self, code: int | None = None) -> None:
        self.returncode = code
        self.pid = 4242

    def poll(self) -> int | None:
        return self.returncode


def spec(rank: int, argv: tuple[str, ...] = ("python", "train.py"), env: dict[str, str] | None = None) -> RankSpec:
    return RankSpec(job="j1", rank=rank, local_rank=rank, world_size=2, local_world_size=2, argv=argv,
                    master_addr="a", master_port=1, accelerator=Accelerator.SIM_ASCEND, chips=(rank,), cwd="/w",
                    env=env or {"HCCL_CONNECT_TIMEOUT": "120"}, attempt=2)


def standby(tmp_path: Path, blueprint: Blueprint, n: int, code: int | None = None) -> Standby:
    return Standby(blueprint, _Process(code), None, tmp_path / f"s{n}.assign", tmp_path / f"s{n}.status",  # type: ignore[arg-type]
                   tmp_path / f"s{n}.log", time.monotonic())


def test_a_restart_takes_a_standby_for_every_rank_or_none(tmp_path: Path) -> None:
    standbys = Standbys(tmp_path)
    blueprint = Blueprint.of(spec(0))
    standbys.ready["j1"] = [standby(tmp_path, blueprint, 1)]
    assert standbys.take([spec(0), spec(1)]) == {}, "one standby for two ranks: start both cold"
    standbys.ready["j1"].append(standby(tmp_path, blueprint, 2))
    taken = standbys.take([spec(0), spec(1)])
    assert sorted(taken) == [0, 1] and len({id(s) for s in taken.values()}) == 2
    assert standbys.ready["j1"] == [], "taken standbys are no longer waiting"


def test_only_a_standby_of_the_same_command_and_environment_stands_in(tmp_path: Path) -> None:
    standbys = Standbys(tmp_path)
    other = Blueprint.of(spec(0, argv=("python", "other.py")))
    standbys.ready["j1"] = [standby(tmp_path, other, 1), standby(tmp_path, other, 2)]
    assert standbys.take([spec(0), spec(1)]) == {}
    changed_env = Blueprint.of(spec(0, env={"HCCL_CONNECT_TIMEOUT": "300"}))
    standbys.ready["j1"] = [standby(tmp_path, changed_env, 1), standby(tmp_path, changed_env, 2)]
    assert standbys.take([spec(0), spec(1)]) == {}


def test_a_dead_standby_is_never_taken(tmp_path: Path) -> None:
    standbys = Standbys(tmp_path)
    blueprint = Blueprint.of(spec(0))
    standbys.ready["j1"] = [standby(tmp_path, blueprint, 1), standby(tmp_path, blueprint, 2, code=1)]
    assert standbys.take([spec(0), spec(1)]) == {}
    assert len(standbys.take([spec(0)])) == 1


@pytest.mark.slow
def test_a_standby_starts_idle_and_nicer_and_gets_the_agents_priority_back_when_it_becomes_a_rank(tmp_path: Path) -> None:
    """Every thread of the standby and of its children: a nice value is per thread."""
    standbys = Standbys(tmp_path)
    if not standbys.lower_by:
        pytest.skip("this user may not give a process its priority back (RLIMIT_NICE below the agent's nice)")
    script = ("import threading, time; threading.Thread(target=time.sleep, args=(60,), daemon=True).start(); "
              "time.sleep(60)")
    standbys.want_spares(Blueprint.make("j1", [sys.executable, "-c", script], None, {}), 1)
    assert standbys.refill("j1") == 1
    [waiting] = standbys.ready["j1"]
    base = os.getpriority(os.PRIO_PROCESS, 0)

    def nices() -> list[tuple[int, int]]:
        procs = [waiting.wrapper, *waiting.wrapper.children(recursive=True)]
        return [(os.getpriority(os.PRIO_PROCESS, t.id), os.sched_getscheduler(t.id)) for p in procs for t in p.threads()]

    try:
        # the wrapper (one thread) and the script (two): all started nicer, SCHED_IDLE
        wait_for(lambda: len(nices()) >= 3, 10, "the script's threads")
        assert set(nices()) == {(min(19, base + STANDBY_NICE), os.SCHED_IDLE)}
        restore_priority(waiting)
        assert set(nices()) == {(base, os.sched_getscheduler(0))}
    finally:
        standbys.close()
