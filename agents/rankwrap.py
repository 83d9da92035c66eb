"""The tiny parent every training rank runs under, so its exit status outlives the agent.

    python -m agents.rankwrap STATUS_FILE -- ARGV...

A restarted agent cannot wait for ranks that are not its children, so the launcher starts
this wrapper instead of the rank: it starts ARGV as its child (in the wrapper's own
process group, which the launcher made a new session), writes the child's pid to
`STATUS_FILE.pid`, waits, and writes how the child ended to STATUS_FILE atomically
(`{"pid": N, "returncode": C}`, C negative for a signal, as subprocess says it). The
wrapper notes and ignores SIGTERM, SIGINT and SIGUSR1 (a signal to the group reaches the
rank; the wrapper only waits); caught, not ignored, so that the rank, after exec, gets
them at their defaults. Standard library only: it starts in a few milliseconds.

Where the kernel restricts ptrace to a process's ancestors (Yama ptrace_scope=1, the
default of most distributions), the agent's py-spy — the agent's child, not the rank's
ancestor — could not read a hung rank's stack. So the rank declares the agent that
started it as its one reader (PR_SET_PTRACER: the agent and its children; nothing wider).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

#: prctl(2) option of the Yama LSM: "this process may be ptraced by PID and its descendants".
PR_SET_PTRACER = 0x59616D61


class StatusError(ValueError):
    """A status file that does not say how a rank ended."""


def pid_path(status: Path) -> Path:
    return status.with_name(status.name + ".pid")


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def encode_status(pid: int, returncode: int) -> str:
    return json.dumps({"pid": pid, "returncode": returncode}) + "\n"


def parse_status(text: str) -> tuple[int, int]:
    """(rank pid, returncode) from a status file's text; StatusError when it is not one."""
    try:
        data: Any = json.loads(text)
    except ValueError as exc:
        raise StatusError(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise StatusError("not a JSON object")
    pid, code = data.get("pid"), data.get("returncode")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        raise StatusError(f"pid {pid!r} is not a process id")
    if not isinstance(code, int) or isinstance(code, bool) or not -128 < code < 256:
        raise StatusError(f"returncode {code!r} is not an exit status")
    return pid, code


def read_status(status: Path) -> tuple[int, int] | None:
    """How the rank ended, or None when the wrapper wrote nothing (it was killed, or the
    rank still runs). A damaged file is None too: never a guess."""
    try:
        return parse_status(status.read_text())
    except (OSError, StatusError):
        return None


def read_pid(status: Path) -> int | None:
    try:
        text = pid_path(status).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() and int(text) > 0 else None


def reader_declaration(agent: int) -> Callable[[], None] | None:
    """A preexec function that makes `agent` (and its children: py-spy) the reader of
    the rank about to be exec'd; None where there is no such thing (not Linux)."""
    if not sys.platform.startswith("linux") or agent <= 1:
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def declare() -> None:
        prctl(PR_SET_PTRACER, agent, 0, 0, 0)  # EINVAL without Yama: nothing to declare then

    return declare


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: python -m agents.rankwrap STATUS_FILE -- ARGV...", file=sys.stderr)
        return 2
    status = Path(argv[0])
    agent = os.getppid()  # the launcher starts this wrapper itself
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
        signal.signal(sig, lambda *_: None)
    try:
        child = subprocess.Popen(argv[2:], preexec_fn=reader_declaration(agent))
    except OSError as exc:
        print(f"trainguard: cannot start {argv[2]!r}: {exc.strerror or exc}", file=sys.stderr, flush=True)
        write_atomic(status, encode_status(os.getpid(), 127))
        return 127
    write_atomic(pid_path(status), f"{child.pid}\n")
    code = child.wait()
    write_atomic(status, encode_status(child.pid, code))
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
