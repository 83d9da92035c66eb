"""py-spy dumps of a stalled job's ranks, taken in the background.

The agent's loop must keep heartbeating while a job hangs, and a rank stuck in a driver
call can make py-spy slow or stick too. So `StackDumps.start` only starts one `py-spy
dump` per rank (output to an unlinked temporary file: no pipe to fill), and later
`poll` calls collect them: each is bounded in time (`timeout`, then SIGKILL) and in size
(`max_bytes` read). `--native` first, for the c10d / gloo / NCCL frames that tell a rank
waiting in a collective from one computing; plain Python frames when that fails.

When py-spy cannot read a rank, the result says why: not installed, no permission (the
kernel's ptrace rules; see `ptrace_note`), the rank gone, or no answer in time.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

#: Reading more of one dump than this is pointless: the evidence keeps a few kilobytes.
MAX_DUMP_BYTES = 64 * 1024
DEFAULT_TIMEOUT = 4.0


def find_pyspy() -> str | None:
    """py-spy beside this Python (a venv's bin, which systemd's PATH lacks), else on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("py-spy")


def ptrace_note() -> str:
    """What the kernel allows, for an evidence line when a dump is refused."""
    try:
        scope = Path("/proc/sys/kernel/yama/ptrace_scope").read_text().strip()
    except OSError:
        return "reading another process's memory needs the same user and ptrace permission"
    meaning = {
        "0": "any process of the same user may be read",
        "1": "only a rank's declared reader may read it: the agent that started it (its rank wrapper says so) — "
             "not an agent restarted since, which adopted it",
        "2": "only a process with CAP_SYS_PTRACE may read it",
        "3": "no process may read it",
    }.get(scope, "unknown setting")
    return f"kernel.yama.ptrace_scope={scope}: {meaning}"


@dataclass(frozen=True)
class Dump:
    rank: int
    pid: int
    text: str  # py-spy's dump ("" when there is none)
    error: str | None = None  # why there is no dump


@dataclass
class _Running:
    rank: int
    pid: int
    argvs: list[list[str]]  # the attempts still to make after this one
    process: subprocess.Popen[bytes]
    output: IO[bytes]
    deadline: float


@dataclass
class _Collection:
    key: str
    running: list[_Running] = field(default_factory=list)
    done: list[Dump] = field(default_factory=list)


class StackDumps:
    def __init__(self, timeout: float = DEFAULT_TIMEOUT, pyspy: str | None = None) -> None:
        self.timeout = timeout
        self.pyspy = pyspy if pyspy is not None else find_pyspy()
        self._collections: dict[str, _Collection] = {}

    def pending(self, key: str) -> bool:
        return key in self._collections

    def start(self, key: str, pids: dict[int, int], now: float) -> None:
        """Start dumping `pids` ({rank: pid}) under `key`; a key already being collected
        is left alone."""
        if key in self._collections:
            return
        collection = _Collection(key)
        self._collections[key] = collection
        for rank, pid in sorted(pids.items()):
            if self.pyspy is None:
                collection.done.append(Dump(rank, pid, "", "py-spy is not installed on this node "
                                                            "(pip install py-spy)"))
                continue
            argvs = [[self.pyspy, "dump", "--native", "--pid", str(pid)], [self.pyspy, "dump", "--pid", str(pid)]]
            started = self._spawn(rank, pid, argvs, now + self.timeout)
            if isinstance(started, Dump):
                collection.done.append(started)
            else:
                collection.running.append(started)

    def _spawn(self, rank: int, pid: int, argvs: list[list[str]], deadline: float) -> _Running | Dump:
        argv, rest = argvs[0], argvs[1:]
        output = tempfile.TemporaryFile()
        try:
            process = subprocess.Popen(argv, stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       start_new_session=True)
        except OSError as exc:
            output.close()
            return Dump(rank, pid, "", f"py-spy could not start: {exc.strerror or exc}")
        return _Running(rank, pid, rest, process, output, deadline)

    def poll(self, now: float) -> dict[str, list[Dump]]:
        """The collections whose every dump ended (or timed out), by key."""
        finished: dict[str, list[Dump]] = {}
        for key, collection in list(self._collections.items()):
            still: list[_Running] = []
            for run in collection.running:
                result = self._check(run, now)
                if result is None:
                    still.append(run)
                elif isinstance(result, _Running):
                    still.append(result)
                else:
                    collection.done.append(result)
            collection.running = still
            if not still:
                del self._collections[key]
                finished[key] = sorted(collection.done, key=lambda d: d.rank)
        return finished

    def _check(self, run: _Running, now: float) -> Dump | _Running | None:
        code = run.process.poll()
        if code is None:
            if now < run.deadline:
                return None
            _kill(run.process)
            run.output.close()
            return Dump(run.rank, run.pid, "", f"py-spy did not answer within {self.timeout:.0f}s "
                                                "(a rank stuck in the driver can stall it too)")
        run.output.seek(0)
        text = run.output.read(MAX_DUMP_BYTES).decode("utf-8", "replace")
        run.output.close()
        if code == 0 and "Thread" in text:
            return Dump(run.rank, run.pid, text)
        if run.argvs and now < run.deadline:  # --native failed: try Python frames alone
            return self._spawn(run.rank, run.pid, run.argvs, run.deadline)
        return Dump(run.rank, run.pid, "", _why(text, code))

    def close(self) -> None:
        for collection in self._collections.values():
            for run in collection.running:
                _kill(run.process)
                run.output.close()
        self._collections.clear()


def _kill(process: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except OSError:
        pass
    try:
        process.wait(timeout=1.0)
    except subprocess.TimeoutExpired:
        pass


def _why(text: str, code: int) -> str:
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")[:200]
    lowered = text.lower()
    if "permission" in lowered or "not permitted" in lowered:
        return f"py-spy may not read the rank ({first}); {ptrace_note()}"
    if "no such process" in lowered or "failed to find python" in lowered:
        return f"py-spy found no Python process there ({first})"
    return f"py-spy failed (exit {code}): {first or 'no output'}"


def wait_all(dumps: StackDumps, key: str, limit: float) -> list[Dump]:
    """Poll until `key` is collected (for tools and tests; the agent polls from its loop)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        done = dumps.poll(time.monotonic())
        if key in done:
            return done[key]
        time.sleep(0.02)
    raise TimeoutError(f"stack dumps of {key} not collected within {limit}s")
