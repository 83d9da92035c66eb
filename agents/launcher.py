"""Starting and stopping the training ranks of a job on this node.

Each rank runs in a session (and process group) of its own, with a torchrun-compatible
environment plus trainguard's assignment (see agents/runtime/env.py). Its stdout and
stderr go, line by line, to `<log_dir>/<job>/rank-<N>.log` and to a callback, so the log
scanner sees every line as it is printed. Stopping is graceful: SIGTERM (which the runtime
turns into "take a final checkpoint, then stop"), a grace period, then SIGKILL of the
rank's whole process group and of any descendant that left it — no orphan survives to
hold a chip. A rank that exits when no stop was asked for is a `crash`, reported with its
exit code or the name of the signal that killed it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import psutil

from supervisor.shared.paths import inside
from supervisor.shared.vocab import Accelerator

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
    """How a rank ended. `crash` unless a stop was asked for or it exited 0."""

    job: str
    rank: int
    pid: int
    returncode: int
    requested: bool  # a stop had been asked for
    observed_at: float  # wall clock

    @property
    def signal_name(self) -> str | None:
        if self.returncode < 0:
            try:
                return signal.Signals(-self.returncode).name
            except ValueError:
                return f"signal {-self.returncode}"
        return None

    @property
    def crash(self) -> bool:
        return not self.requested and self.returncode != 0

    def describe(self) -> str:
        how = f"was killed by {self.signal_name}" if self.signal_name else f"exited with code {self.returncode}"
        return f"rank {self.rank} of job {self.job} {how}" + (" (stop requested)" if self.requested else "")


LineCallback = Callable[[RankSpec, str], None]


@dataclass
class RankProcess:
    spec: RankSpec
    popen: subprocess.Popen[bytes]
    log_path: Path
    reader: threading.Thread
    stop_requested: bool = False
    kill_at: float | None = None  # monotonic deadline of a requested stop
    # Every descendant seen, as psutil handles: they check the process's start time
    # before signalling, so a recycled pid is never hit.
    descendants: dict[int, psutil.Process] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.popen.pid


class Launcher:
    def __init__(self, log_dir: Path, on_line: LineCallback | None = None) -> None:
        self.log_dir = log_dir
        self.on_line = on_line
        self.ranks: dict[tuple[str, int], RankProcess] = {}

    def start(self, spec: RankSpec) -> RankProcess:
        key = (spec.job, spec.rank)
        if key in self.ranks and self.ranks[key].popen.poll() is None:
            return self.ranks[key]  # idempotent: a repeated launch command starts nothing
        log_path = inside(self.log_dir, spec.job, f"rank-{spec.rank}.log")
        log_path.parent.mkdir(parents=True, exist_ok=True)
        # The rank writes its log file itself (not a pipe to us): if the agent dies or is
        # restarted, the rank's next print must not die of SIGPIPE. We tail the file.
        with open(log_path, "ab") as log:
            start = log.tell()
            popen = subprocess.Popen(
                list(spec.argv),
                env=spec.environment(os.environ),
                cwd=spec.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: signals reach all it spawns
            )
        reader = threading.Thread(
            target=self._tail, args=(spec, popen, log_path, start), name=f"rank-{spec.job}-{spec.rank}", daemon=True
        )
        process = RankProcess(spec, popen, log_path, reader)
        self.ranks[key] = process
        reader.start()
        return process

    def _tail(self, spec: RankSpec, popen: subprocess.Popen[bytes], log_path: Path, start: int) -> None:
        """Hand each complete line the rank writes to its log to the callback, until the
        rank has exited and everything it wrote has been read."""
        pending = b""
        with open(log_path, "rb") as log:
            log.seek(start)
            while True:
                chunk = log.read(65536)
                if chunk:
                    pending += chunk
                    *lines, pending = pending.split(b"\n")
                    for raw in lines:
                        self._deliver(spec, raw)
                    if len(pending) > 1_000_000:  # a "line" without end: deliver what we have
                        self._deliver(spec, pending)
                        pending = b""
                    continue
                if popen.poll() is not None:
                    if pending:
                        self._deliver(spec, pending)
                    return
                time.sleep(0.02)

    def _deliver(self, spec: RankSpec, raw: bytes) -> None:
        if self.on_line is not None:
            try:
                self.on_line(spec, raw.decode("utf-8", errors="replace").rstrip("\r"))
            except Exception:
                pass  # a scanner bug must not stop the tailing

    def request_stop(self, job: str, grace: float) -> int:
        """SIGTERM every rank of `job` now; `poll()` SIGKILLs what is left after `grace`
        seconds. Returns how many ranks were asked. Non-blocking, for the agent's loop."""
        deadline = time.monotonic() + grace
        asked = 0
        for (j, _), process in self.ranks.items():
            if j == job and not process.stop_requested:
                process.stop_requested = True
                process.kill_at = deadline
                process.descendants.update(_descendants(process.pid))
                _signal_group(process.pid, signal.SIGTERM)
                asked += 1
        return asked

    def poll(self) -> list[RankExit]:
        """Ranks that have exited since the last poll (non-blocking); ranks whose stop
        grace period has run out are SIGKILLed here."""
        exits = []
        for key, process in list(self.ranks.items()):
            if process.popen.poll() is None:
                process.descendants.update(_descendants(process.pid))
                if process.kill_at is not None and time.monotonic() >= process.kill_at:
                    _kill_all(process)
                continue
            del self.ranks[key]
            _kill_all(process)  # children a dead rank left behind
            process.reader.join(timeout=0.2)  # its last lines; the reader finishes on its own
            exits.append(
                RankExit(process.spec.job, process.spec.rank, process.pid, process.popen.returncode,
                         process.stop_requested, time.time())
            )
        return exits

    def stop(self, job: str, grace: float = 30.0) -> list[RankExit]:
        """SIGTERM every rank of `job`; SIGKILL what is left after `grace` seconds,
        including any descendant that left the rank's process group."""
        targets = [p for (j, _), p in self.ranks.items() if j == job]
        self.request_stop(job, grace)
        deadline = time.monotonic() + grace
        for process in targets:
            try:
                process.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for process in targets:
            _kill_all(process)
            process.popen.wait()
        return [e for e in self.poll() if e.job == job]


def _descendants(pid: int) -> dict[int, psutil.Process]:
    try:
        return {c.pid: c for c in psutil.Process(pid).children(recursive=True)}
    except psutil.Error:
        return {}


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)  # the rank is its group's leader (start_new_session)
    except ProcessLookupError:
        pass


def _kill_all(process: RankProcess) -> None:
    """SIGKILL the rank's process group and every descendant ever seen, wherever it went."""
    _signal_group(process.pid, signal.SIGKILL)
    for child in {**process.descendants, **_descendants(process.pid)}.values():
        try:
            child.send_signal(signal.SIGKILL)  # no-op if the pid now belongs to another process
        except psutil.Error:
            pass
