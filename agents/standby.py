"""The warm standbys an agent keeps for its jobs (`warm_standby: true`).

A standby is the job's own command, started under the rank wrapper like a rank but
without a rank: it imports torch, builds what does not depend on the rank, and waits in
`agents.runtime.standby()` (see agents/runtime/warm.py). When the job restarts on this
node, `take` hands the waiting standbys to the launcher, which gives each one its rank
(`Launcher.assign`) instead of starting a process; new standbys are started once the new
attempt trains (`wanted` / `refill`), not while it starts, so they never slow a restart.
A node that runs none of the job's ranks keeps standbys too when the daemon names it as
where a restart or a failover would go (`keep_standbys`, `spares`).

Standbys of a job end when it leaves the node (`retire`: a final stop), when the agent
stops, and on their own when the agent that started them is gone.
"""

from __future__ import annotations

import itertools
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import structlog

from agents import rankwrap
from agents.launcher import RankSpec
from supervisor.shared.paths import inside

log = structlog.get_logger()

#: A standby that has not said it waits within this is given up on (its log says why).
READY_LIMIT = 600.0
#: Standbys start under SCHED_IDLE, and this much nicer than the agent (what `ps` and
#: `top` show): their start (torch's import, the model) takes only the CPU the ranks
#: leave. A lower nice alone is not enough: ranks in a collective sleep and wake many
#: times a step, and each wakeup waited for a niced standby's slice (the steps after a
#: restart ran at twice their time); a SCHED_IDLE task yields at once. The standby given
#: a rank is put back to the agent's own policy and priority.
STANDBY_NICE = 10
#: Standbys of a job that end before they wait, after which the job gets no more: its
#: script does not run as a standby (it fails, or never calls standby()).
MAX_FAILURES = 2


@dataclass(frozen=True)
class Blueprint:
    """What a standby must match to stand in for a rank: the same command, directory
    and job environment (the rank's own variables come with the assignment). It is told
    the job's checkpoint directory, to prepare the memory the load will read into."""

    job: str
    argv: tuple[str, ...]
    cwd: str | None
    env: tuple[tuple[str, str], ...]
    ckpt_dir: str | None = None
    accelerator: str | None = None  # this node's: whether the model will be on the host

    @classmethod
    def of(cls, spec: RankSpec) -> Blueprint:
        return cls.make(spec.job, spec.argv, spec.cwd, spec.env, spec.ckpt_dir, spec.accelerator.value)

    @classmethod
    def make(cls, job: str, argv: Sequence[str], cwd: str | None, env: Mapping[str, str],
             ckpt_dir: str | None = None, accelerator: str | None = None) -> Blueprint:
        return cls(job, tuple(argv), cwd, tuple(sorted(env.items())), ckpt_dir, accelerator)


@dataclass
class Standby:
    blueprint: Blueprint
    popen: subprocess.Popen[bytes]
    wrapper: psutil.Process
    assign_path: Path
    status_path: Path
    log_path: Path
    started_at: float  # monotonic
    ready_logged: bool = False

    @property
    def ready(self) -> bool:
        return self.assign_path.with_name(self.assign_path.name + ".ready").exists()

    def alive(self) -> bool:
        return self.popen.poll() is None


@dataclass
class Standbys:
    log_dir: Path
    #: Standbys per job, and how many each job wants (its ranks on this node).
    ready: dict[str, list[Standby]] = field(default_factory=dict)
    wanted: dict[str, tuple[Blueprint, int]] = field(default_factory=dict)
    #: Jobs wanted here as spares: none of their ranks run here, but a restart or a
    #: failover would move them here (`keep_standbys`); refilled at once.
    spares: set[str] = field(default_factory=set)
    failures: dict[str, int] = field(default_factory=dict)
    _ids: itertools.count = field(default_factory=lambda: itertools.count(1))
    #: How much nicer standbys start (0: not at all, when this agent could not put a
    #: rank back to its own priority afterwards).
    lower_by: int = field(default_factory=lambda: STANDBY_NICE if may_restore_priority() else 0)

    def want(self, spec: RankSpec, count: int) -> None:
        """Keep `count` standbys of this job, like `spec`, from the next `refill` on."""
        self.wanted[spec.job] = (Blueprint.of(spec), count)
        self.spares.discard(spec.job)  # its ranks run here now

    def want_spares(self, blueprint: Blueprint, count: int) -> None:
        """Keep `count` standbys of a job that runs elsewhere but may move here."""
        self.wanted[blueprint.job] = (blueprint, count)
        self.spares.add(blueprint.job)

    def refill(self, job: str) -> int:
        """Start the standbys `job` still lacks; returns how many were started."""
        if job not in self.wanted or self.failures.get(job, 0) >= MAX_FAILURES:
            return 0
        blueprint, count = self.wanted[job]
        have = [s for s in self.ready.get(job, []) if s.alive() and s.blueprint == blueprint]
        started = 0
        for _ in range(count - len(have)):
            try:
                have.append(self._spawn(blueprint))
                started += 1
            except OSError as exc:
                log.warning("standby.start_failed", job=job, error=str(exc),
                            effect="the job's next restart starts its ranks cold")
                break
        self.ready[job] = have
        return started

    def take(self, specs: list[RankSpec]) -> dict[int, Standby]:
        """Standbys for these ranks ({rank: standby}), all or none: a restart is as fast
        as its slowest rank, and a mix buys nothing."""
        if not specs:
            return {}
        blueprint = Blueprint.of(specs[0])
        pool = [s for s in self.ready.get(blueprint.job, []) if s.alive() and s.blueprint == blueprint]
        if len(pool) < len(specs) or any(Blueprint.of(s) != blueprint for s in specs):
            return {}
        taken = dict(zip((s.rank for s in specs), pool))
        self.ready[blueprint.job] = [s for s in pool if s not in taken.values()]
        if self.lower_by:
            for standby in taken.values():
                restore_priority(standby)
        return taken

    def retire(self, job: str) -> int:
        """The job left this node: end its standbys."""
        self.wanted.pop(job, None)
        self.spares.discard(job)
        self.failures.pop(job, None)
        gone = self.ready.pop(job, [])
        for standby in gone:
            _end(standby)
        return len(gone)

    def poll(self) -> None:
        """Reap standbys that ended (log why), note those now waiting, give up on those
        that never got there."""
        now = time.monotonic()
        for job, standbys in list(self.ready.items()):
            keep = []
            for s in standbys:
                if not s.alive():
                    if not s.ready_logged:
                        self.failures[job] = self.failures.get(job, 0) + 1
                    given_up = self.failures.get(job, 0) >= MAX_FAILURES
                    log.warning("standby.exited", job=job, code=s.popen.returncode, log=str(s.log_path),
                                effect="no more standbys for this job: its restarts start cold; read the log"
                                if given_up else "another is started")
                    continue
                if not s.ready_logged and s.ready:
                    s.ready_logged = True
                    log.info("standby.ready", job=job, pid=s.popen.pid, after_s=round(now - s.started_at, 2))
                elif not s.ready_logged and now - s.started_at > READY_LIMIT:
                    log.warning("standby.never_ready", job=job, log=str(s.log_path),
                                effect="ended: does the script call agents.runtime.standby()?")
                    _end(s)
                    continue
                keep.append(s)
            self.ready[job] = keep

    def close(self) -> None:
        for job in list(self.ready):
            self.retire(job)

    def _spawn(self, blueprint: Blueprint) -> Standby:
        n = next(self._ids)
        base = inside(self.log_dir, blueprint.job, "standby")
        base.mkdir(parents=True, exist_ok=True)
        log_path, status_path = base / f"standby-{n}.log", base / f"standby-{n}.status"
        assign_path = base / f"standby-{n}.assign"
        for stale in (status_path, rankwrap.pid_path(status_path), assign_path,
                      assign_path.with_name(assign_path.name + ".ready")):
            stale.unlink(missing_ok=True)
        env = dict(os.environ)
        env.update(dict(blueprint.env))
        for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
            env.pop(key, None)
        env.update(TRAINGUARD_STANDBY=str(assign_path), TRAINGUARD_AGENT_PID=str(os.getpid()), PYTHONUNBUFFERED="1")
        if blueprint.ckpt_dir:
            env["TRAINGUARD_CKPT_DIR"] = blueprint.ckpt_dir
        if blueprint.accelerator:
            env["TRAINGUARD_ACCELERATOR"] = blueprint.accelerator
        with open(log_path, "ab") as out:
            popen = subprocess.Popen([sys.executable, "-m", "agents.rankwrap", str(status_path), "--", *blueprint.argv],
                                     env=env, cwd=blueprint.cwd, stdin=subprocess.DEVNULL, stdout=out,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        if self.lower_by:
            try:  # lowering is always allowed; a few ms at the agent's priority first
                os.setpriority(os.PRIO_PROCESS, popen.pid, min(19, os.getpriority(os.PRIO_PROCESS, 0) + self.lower_by))
                os.sched_setscheduler(popen.pid, os.SCHED_IDLE, os.sched_param(0))
            except OSError:
                pass
        log.info("standby.started", job=blueprint.job, pid=popen.pid, log=str(log_path),
                 nice=os.getpriority(os.PRIO_PROCESS, 0) + self.lower_by if self.lower_by else None)
        return Standby(blueprint, popen, psutil.Process(popen.pid), assign_path, status_path, log_path,
                       time.monotonic())


def may_restore_priority() -> bool:
    """Whether this process may give a nicer child its own priority back: as root, or
    with an RLIMIT_NICE that reaches its nice value (the agent's systemd unit sets
    LimitNICE=+0). Linux checks the child's limit, which it inherits from us."""
    if os.geteuid() == 0:
        return True
    try:
        soft, _ = resource.getrlimit(resource.RLIMIT_NICE)
        return soft == resource.RLIM_INFINITY or soft >= 20 - os.getpriority(os.PRIO_PROCESS, 0)
    except (OSError, ValueError):
        return False


def restore_priority(standby: Standby) -> None:
    """The standby becomes a rank: every thread of it and of its children back to the
    agent's scheduling policy and priority (on Linux both are per thread). Leaving
    SCHED_IDLE is allowed within RLIMIT_NICE, like lowering the nice value."""
    nice = os.getpriority(os.PRIO_PROCESS, 0)
    policy = os.sched_getscheduler(0)
    try:
        processes = [standby.wrapper, *standby.wrapper.children(recursive=True)]
        tids = [t.id for p in processes for t in p.threads()]
    except (psutil.Error, AttributeError) as exc:
        log.warning("standby.priority_not_restored", pid=standby.popen.pid, error=str(exc),
                    effect="the rank runs at the standby's lower CPU priority")
        return
    for tid in tids:
        try:
            os.sched_setscheduler(tid, policy, os.sched_param(0))
            os.setpriority(os.PRIO_PROCESS, tid, nice)
        except ProcessLookupError:
            pass  # a thread that ended meanwhile
        except OSError as exc:
            log.warning("standby.priority_not_restored", pid=standby.popen.pid, tid=tid, error=str(exc),
                        effect="the rank runs at the standby's lower CPU priority")
            return


def _end(standby: Standby) -> None:
    try:
        os.killpg(standby.popen.pid, signal.SIGKILL)
    except OSError:
        pass
    try:
        standby.popen.wait(timeout=2.0)
    except subprocess.TimeoutExpired:
        pass
