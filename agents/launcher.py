"""Starting and stopping the training ranks of a job on this node.

Each rank runs under a tiny wrapper (`agents.rankwrap`) in a session (and process group)
of its own, with a torchrun-compatible environment plus trainguard's assignment (see
agents/runtime/env.py). The wrapper records the rank's pid and, when it ends, its exit
status in a file, so an agent restarted while its ranks run can adopt them (`adopt`) and
still learn how each one exits; every start and exit is persisted in `ranks.json`
(agents/rankstate.py). Signals meant for the rank itself (SIGUSR1, crash injection,
py-spy, CPU accounting) go to the rank's pid, never the wrapper's. Its stdout and stderr
go, line by line, to `<log_dir>/<job>/rank-<N>.log` (a job attempt's ranks:
`<log_dir>/<job>/attempt-<A>/rank-<N>.log`) and to a callback, so the log scanner sees
every line as it is printed. Stopping is graceful: SIGTERM (which the runtime
turns into "take a final checkpoint, then stop"), a grace period, then SIGKILL of the
rank's whole process group and of any descendant that left it — no orphan survives to
hold a chip. A rank that exits when no stop was asked for is a `crash`, reported with its
exit code or the name of the signal that killed it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Protocol

import psutil
import structlog

from agents import rankstate, rankwrap
from agents.rankstate import AttemptRecord, RankRecord, RankState
from supervisor.shared.paths import inside
from supervisor.shared.vocab import Accelerator

log = structlog.get_logger()

#: How each accelerator names the chips a process may see.
VISIBLE_DEVICES = {
    Accelerator.ASCEND: "ASCEND_RT_VISIBLE_DEVICES",
    Accelerator.SIM_ASCEND: "ASCEND_RT_VISIBLE_DEVICES",
    Accelerator.NVIDIA: "CUDA_VISIBLE_DEVICES",
    Accelerator.SIM_NVIDIA: "CUDA_VISIBLE_DEVICES",
}


@dataclass(frozen=True)
class RankSpec:
    """The blueprint of one rank: what to run and what it is told."""

    job: str
    rank: int
    local_rank: int
    world_size: int
    local_world_size: int
    argv: tuple[str, ...]
    master_addr: str
    master_port: int
    accelerator: Accelerator
    chips: tuple[int, ...] = ()
    node: str = ""
    heartbeat: str | None = None
    ckpt_dir: str | None = None
    cwd: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    attempt: int = 0  # 0: a `launch`; a job's attempts count from 1
    #: The job's hang limits (train, checkpoint, eval) when it has its own.
    hang_limits: tuple[float, float, float] | None = None

    def log_parts(self) -> tuple[str, ...]:
        """The rank's log file, under the launcher's log dir."""
        name = f"rank-{self.rank}.log"
        return (self.job, f"attempt-{self.attempt}", name) if self.attempt else (self.job, name)

    def environment(self, base: Mapping[str, str]) -> dict[str, str]:
        env = dict(base)
        env.update(self.env)
        env.update(
            RANK=str(self.rank),
            LOCAL_RANK=str(self.local_rank),
            WORLD_SIZE=str(self.world_size),
            LOCAL_WORLD_SIZE=str(self.local_world_size),
            MASTER_ADDR=self.master_addr,
            MASTER_PORT=str(self.master_port),
            TRAINGUARD_ACCELERATOR=self.accelerator.value,
            TRAINGUARD_JOB=self.job,
            TRAINGUARD_NODE=self.node,
            TRAINGUARD_ATTEMPT=str(self.attempt),
            PYTHONUNBUFFERED="1",  # lines reach the scanner as they are printed
        )
        if self.heartbeat:
            env["TRAINGUARD_HEARTBEAT"] = self.heartbeat
        if self.ckpt_dir:
            env["TRAINGUARD_CKPT_DIR"] = self.ckpt_dir
        if self.accelerator in VISIBLE_DEVICES:
            env[VISIBLE_DEVICES[self.accelerator]] = ",".join(str(c) for c in self.chips)
        return env


@dataclass(frozen=True)
class RankExit:
    """How a rank ended. `crash` unless a stop was asked for or it exited 0. `returncode`
    is None when nobody could see it end (it died while the agent was down and its
    wrapper was killed too)."""

    job: str
    rank: int
    pid: int
    returncode: int | None
    requested: bool  # a stop had been asked for
    observed_at: float  # wall clock
    attempt: int = 0
    log_path: str = ""

    @property
    def signal_name(self) -> str | None:
        if self.returncode is not None and self.returncode < 0:
            try:
                return signal.Signals(-self.returncode).name
            except ValueError:
                return f"signal {-self.returncode}"
        return None

    @property
    def crash(self) -> bool:
        return not self.requested and self.returncode != 0

    def describe(self) -> str:
        if self.returncode is None:
            how = "exited while the agent was down; no exit status recorded"
        elif self.signal_name:
            how = f"was killed by {self.signal_name}"
        else:
            how = f"exited with code {self.returncode}"
        return f"rank {self.rank} of job {self.job} {how}" + (" (stop requested)" if self.requested else "")


LineCallback = Callable[[RankSpec, str], None]


class WarmProcess(Protocol):
    """What the launcher needs of a warm standby (agents/standby.py)."""

    popen: subprocess.Popen[bytes]
    wrapper: psutil.Process
    assign_path: Path
    status_path: Path

#: How long a start waits for the wrapper to say the rank's pid.
PID_WAIT = 10.0
#: An adopted rank whose stop was asked before the agent restarted is SIGKILLed after this.
ADOPTED_STOP_GRACE = 30.0


@dataclass
class RankProcess:
    spec: RankSpec
    wrapper: psutil.Process  # the rank's wrapper: its process group leader
    popen: subprocess.Popen[bytes] | None  # None: adopted from an agent before this one
    log_path: Path
    status_path: Path
    reader: threading.Thread | None = None
    rank: psutil.Process | None = None  # the rank itself, once the wrapper has said
    stop_requested: bool = False
    kill_at: float | None = None  # monotonic deadline of a requested stop
    warm: bool = False  # a warm standby given this rank, not a process started for it
    # Every descendant seen, as psutil handles: they check the process's start time
    # before signalling, so a recycled pid is never hit.
    descendants: dict[int, psutil.Process] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        """The rank's own pid (the wrapper's until the wrapper has said)."""
        return self.rank.pid if self.rank is not None else self.wrapper.pid

    @property
    def wrapper_pid(self) -> int:
        return self.wrapper.pid

    @property
    def adopted(self) -> bool:
        return self.popen is None

    def alive(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        try:
            return self.wrapper.is_running() and self.wrapper.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    def resolve(self) -> bool:
        """Learn the rank's pid from the wrapper's pid file; True once known."""
        if self.rank is not None:
            return True
        pid = rankwrap.read_pid(self.status_path)
        if pid is None:
            return False
        try:
            rank = psutil.Process(pid)
            if rank.ppid() != self.wrapper.pid:
                return False
        except psutil.Error:
            return False
        self.rank = rank
        return True

    def returncode(self) -> int | None:
        """How the rank ended, once it has: the wrapper's record, else the wrapper's own
        end (it was killed with its group), else unknown."""
        status = rankwrap.read_status(self.status_path)
        if status is not None:
            return status[1]
        if self.popen is not None:
            return self.popen.returncode
        return None

    def record(self) -> RankRecord:
        s = self.spec
        return RankRecord(
            job=s.job, attempt=s.attempt, rank=s.rank, local_rank=s.local_rank, world_size=s.world_size,
            local_world_size=s.local_world_size, wrapper_pid=self.wrapper.pid,
            wrapper_created=_created(self.wrapper), pid=self.rank.pid if self.rank else 0,
            created=_created(self.rank) if self.rank else 0.0, log_path=str(self.log_path),
            status_path=str(self.status_path), chips=tuple(s.chips), argv=tuple(s.argv),
            stop_requested=self.stop_requested, hang_limits=s.hang_limits,
        )


class Launcher:
    def __init__(self, log_dir: Path, on_line: LineCallback | None = None, state_path: Path | None = None,
                 on_wake: Callable[[], None] | None = None) -> None:
        self.log_dir = log_dir
        self.on_line = on_line
        #: Called (from the tailing threads) when a rank printed lines or ended, so the
        #: agent's loop looks now rather than at its next timeout.
        self.on_wake = on_wake
        self.state_path = state_path
        self.ranks: dict[tuple[str, int], RankProcess] = {}
        #: The last attempt started on this node, per job (persisted with the ranks).
        self.attempts: dict[str, AttemptRecord] = {}

    def start(self, spec: RankSpec) -> RankProcess:
        return self.start_many([spec])[0]

    def start_many(self, specs: list[RankSpec], standbys: Mapping[int, WarmProcess] | None = None) -> list[RankProcess]:
        """Start ranks (each under its wrapper; a rank with a warm standby in `standbys`
        is that standby, given its rank), then wait until every wrapper has said its
        rank's pid, so what is reported and signalled is the rank itself. Raises
        OSError when a rank cannot be started (those started before stay: the caller
        stops them)."""
        started = []
        standbys = standbys or {}
        try:
            for spec in specs:
                warm = standbys.get(spec.rank)
                started.append(self._spawn(spec) if warm is None else self.assign(spec, warm))
        finally:
            deadline = time.monotonic() + PID_WAIT
            for process in started:
                while not process.resolve() and process.alive() and time.monotonic() < deadline:
                    time.sleep(0.005)
                process.resolve()  # a rank that ended at once may still have said
            self.save()
        return started

    def _spawn(self, spec: RankSpec) -> RankProcess:
        key = (spec.job, spec.rank)
        if key in self.ranks and self.ranks[key].alive():
            return self.ranks[key]  # idempotent: a repeated launch command starts nothing
        log_path = inside(self.log_dir, *spec.log_parts())
        log_path.parent.mkdir(parents=True, exist_ok=True)
        status_path = log_path.with_suffix(".status")
        for stale in (status_path, rankwrap.pid_path(status_path)):
            stale.unlink(missing_ok=True)
        # The rank writes its log file itself (not a pipe to us): if the agent dies or is
        # restarted, the rank's next print must not die of SIGPIPE. We tail the file.
        with open(log_path, "ab") as out:
            start = out.tell()
            popen = subprocess.Popen(
                [sys.executable, "-m", "agents.rankwrap", str(status_path), "--", *spec.argv],
                env=spec.environment(os.environ),
                cwd=spec.cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: signals reach all it spawns
            )
        process = RankProcess(spec, psutil.Process(popen.pid), popen, log_path, status_path)
        self._follow(process, start)
        self.ranks[key] = process
        return process

    def assign(self, spec: RankSpec, warm: WarmProcess) -> RankProcess:
        """A warm standby becomes this rank: its assignment (the environment a rank is
        started with, and its log) is written where it waits, atomically; it takes it
        within milliseconds (agents/runtime/warm.py). Raises OSError if it cannot be written."""
        log_path = inside(self.log_dir, *spec.log_parts())
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as out:
            start = out.tell()
        assignment = {"env": spec.environment({}), "log": str(log_path), "job": spec.job, "rank": spec.rank,
                      "attempt": spec.attempt}
        rankwrap.write_atomic(warm.assign_path, json.dumps(assignment))
        process = RankProcess(spec, warm.wrapper, warm.popen, log_path, warm.status_path, warm=True)
        process.resolve()
        self._follow(process, start)
        self.ranks[(spec.job, spec.rank)] = process
        return process

    def _follow(self, process: RankProcess, start: int) -> None:
        process.reader = threading.Thread(target=self._tail, args=(process, start),
                                          name=f"rank-{process.spec.job}-{process.spec.rank}", daemon=True)
        process.reader.start()

    def _tail(self, process: RankProcess, start: int) -> None:
        """Hand each complete line the rank writes to its log to the callback, until the
        rank has exited and everything it wrote has been read."""
        spec = process.spec
        pending = b""
        with open(process.log_path, "rb") as log_file:
            log_file.seek(start)
            while True:
                chunk = log_file.read(65536)
                if chunk:
                    pending += chunk
                    *lines, pending = pending.split(b"\n")
                    for raw in lines:
                        self._deliver(spec, raw)
                    if len(pending) > 1_000_000:  # a "line" without end: deliver what we have
                        self._deliver(spec, pending)
                        pending = b""
                    if lines:
                        self._wake()
                    continue
                if not process.alive():
                    if pending:
                        self._deliver(spec, pending)
                    self._wake()
                    return
                time.sleep(0.02)

    def _wake(self) -> None:
        if self.on_wake is not None:
            try:
                self.on_wake()
            except Exception:
                pass

    def _deliver(self, spec: RankSpec, raw: bytes) -> None:
        if self.on_line is not None:
            try:
                self.on_line(spec, raw.decode("utf-8", errors="replace").rstrip("\r"))
            except Exception:
                pass  # a scanner bug must not stop the tailing

    # --- adoption --------------------------------------------------------------------

    def adopt(self, state: RankState, spec_for: Callable[[RankRecord], RankSpec]) -> list[RankExit]:
        """Take over the ranks a previous agent left running (their wrapper still alive:
        pid and create time match); return the exits of those that ended meanwhile,
        from their wrappers' status files."""
        self.attempts.update(state.attempts)
        exits = []
        for record in state.ranks:
            spec = spec_for(record)
            log_path, status_path = Path(record.log_path), Path(record.status_path)
            wrapper = _same_process(record.wrapper_pid, record.wrapper_created)
            if wrapper is None:
                status = rankwrap.read_status(status_path)
                exits.append(RankExit(record.job, record.rank, record.pid or record.wrapper_pid,
                                      status[1] if status else None, record.stop_requested, time.time(),
                                      record.attempt, record.log_path))
                continue
            process = RankProcess(spec, wrapper, None, log_path, status_path,
                                  rank=_same_process(record.pid, record.created) if record.pid else None,
                                  stop_requested=record.stop_requested)
            process.resolve()
            if process.stop_requested:
                # The stop's deadline died with the previous agent: give it a fresh grace.
                process.kill_at = time.monotonic() + ADOPTED_STOP_GRACE
            try:
                start = log_path.stat().st_size  # tail from now: what came before was scanned
            except OSError:
                start = 0
            process.descendants.update(_descendants(wrapper.pid))
            self.ranks[(record.job, record.rank)] = process
            self._follow(process, start)
        self.save()
        return exits

    def note_attempt(self, job: str, attempt: AttemptRecord) -> None:
        self.attempts.pop(job, None)
        self.attempts[job] = attempt  # newest last: the oldest are forgotten first
        self.save()

    def save(self) -> None:
        """Persist the node's ranks (atomic); a failure is logged, never raised: the
        ranks run whether or not the file could be written."""
        if self.state_path is None:
            return
        try:
            rankstate.save(self.state_path, RankState([p.record() for p in self.ranks.values()], dict(self.attempts)))
        except (OSError, psutil.Error) as exc:
            log.error("agent.ranks_state_unwritable", path=str(self.state_path), error=str(exc),
                      effect="an agent restarted now could not adopt these ranks")

    # --- stopping --------------------------------------------------------------------

    def _matches(self, job: str, attempt: int | None, process: RankProcess) -> bool:
        return process.spec.job == job and (attempt is None or process.spec.attempt == attempt)

    def request_stop(self, job: str, grace: float, attempt: int | None = None) -> int:
        """SIGTERM every rank of `job` (of one attempt, when given) now; `poll()` SIGKILLs
        what is left after `grace` seconds. Returns how many ranks were asked.
        Non-blocking, for the agent's loop."""
        deadline = time.monotonic() + grace
        asked = 0
        for process in self.ranks.values():
            if self._matches(job, attempt, process) and not process.stop_requested:
                process.stop_requested = True
                process.kill_at = deadline
                process.descendants.update(_descendants(process.wrapper_pid))
                _signal_group(process.wrapper_pid, signal.SIGTERM)
                asked += 1
        if asked:
            self.save()
        return asked

    def signal_ranks(self, job: str, attempt: int | None, sig: signal.Signals) -> int:
        """Send `sig` to the rank processes themselves (not their wrappers or groups)."""
        sent = 0
        for process in self.ranks.values():
            if self._matches(job, attempt, process) and process.resolve() and process.rank is not None:
                try:
                    process.rank.send_signal(sig)  # psutil: never a recycled pid
                    sent += 1
                except psutil.Error:
                    pass
        return sent

    def kill_now(self, job: str, below_attempt: int, timeout: float = 10.0) -> int:
        """SIGKILL (group and every descendant) the ranks of `job` of attempts older than
        `below_attempt`, and wait until they are gone; `poll()` then reports them (as
        requested exits). Returns how many were killed."""
        doomed = [p for p in self.ranks.values() if p.spec.job == job and p.spec.attempt < below_attempt]
        for process in doomed:
            process.stop_requested = True
            process.descendants.update(_descendants(process.wrapper_pid))
            _kill_all(process)
        deadline = time.monotonic() + timeout
        for process in doomed:
            while process.alive() and time.monotonic() < deadline:
                time.sleep(0.01)
        return len(doomed)

    def poll(self) -> list[RankExit]:
        """Ranks that have exited since the last poll (non-blocking); ranks whose stop
        grace period has run out are SIGKILLed here."""
        exits = []
        for key, process in list(self.ranks.items()):
            if process.alive():
                process.resolve()
                process.descendants.update(_descendants(process.wrapper_pid))
                if process.kill_at is not None and time.monotonic() >= process.kill_at:
                    _kill_all(process)
                continue
            del self.ranks[key]
            _kill_all(process)  # children a dead rank left behind
            if process.reader is not None:
                # Its last lines (the fault that ended it, usually): the reader finishes
                # on its own, within its 20 ms nap and a read; 0.5 s for a loaded node.
                process.reader.join(timeout=0.5)
            exits.append(
                RankExit(process.spec.job, process.spec.rank, process.pid, process.returncode(),
                         process.stop_requested, time.time(), process.spec.attempt, str(process.log_path))
            )
        if exits:
            self.save()
        return exits

    def stop(self, job: str, grace: float = 30.0) -> list[RankExit]:
        """SIGTERM every rank of `job`; SIGKILL what is left after `grace` seconds,
        including any descendant that left the rank's process group."""
        targets = [p for (j, _), p in self.ranks.items() if j == job]
        self.request_stop(job, grace)
        deadline = time.monotonic() + grace
        for process in targets:
            while process.alive() and time.monotonic() < deadline:
                time.sleep(0.01)
        for process in targets:
            _kill_all(process)
            if process.popen is not None:
                process.popen.wait()
            else:
                while process.alive():
                    time.sleep(0.01)
        return [e for e in self.poll() if e.job == job]


def _created(process: psutil.Process) -> float:
    return float(process.create_time())


def _same_process(pid: int, created: float) -> psutil.Process | None:
    """The process `pid` if it is still the one created at `created` (not a recycled pid)."""
    try:
        process = psutil.Process(pid)
        if abs(process.create_time() - created) > 0.05 or process.status() == psutil.STATUS_ZOMBIE:
            return None
        return process
    except psutil.Error:
        return None


def _descendants(pid: int) -> dict[int, psutil.Process]:
    try:
        return {c.pid: c for c in psutil.Process(pid).children(recursive=True)}
    except psutil.Error:
        return {}


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)  # the wrapper is its group's leader (start_new_session)
    except ProcessLookupError:
        pass


def _kill_all(process: RankProcess) -> None:
    """SIGKILL the rank's process group and every descendant ever seen, wherever it went."""
    _signal_group(process.wrapper_pid, signal.SIGKILL)
    for child in {**process.descendants, **_descendants(process.wrapper_pid)}.values():
        try:
            child.send_signal(signal.SIGKILL)  # no-op if the pid now belongs to another process
        except psutil.Error:
            pass
