"""A trainguard cluster on one machine: a daemon and agents as real child processes.

Used by `trainguard demo` and by the end-to-end tests, so both exercise exactly what an
operator runs. Every process writes its JSON log to `<dir>/logs/<name>.log` (appending
across restarts); `wait_for` polls a condition against a deadline instead of sleeping.
"""

from __future__ import annotations

import errno
import json
import os
import resource
import selectors
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TypeVar

from supervisor.cli.client import ClientError, request

T = TypeVar("T")

# AF_UNIX paths are limited to 107 bytes on Linux.
_IPC_PATH_LIMIT = 100


class WaitTimeout(AssertionError):
    pass


def wait_for(condition: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll `condition` until it returns something truthy; fail after `timeout` saying `what`."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            value = condition()
            if value:
                return value
        except (ClientError, OSError, KeyError, ValueError) as exc:
            last_error = exc
        if time.monotonic() >= deadline:
            suffix = f" (last error: {last_error})" if last_error else ""
            raise WaitTimeout(f"timed out after {timeout:g}s waiting for {what}{suffix}")
        time.sleep(interval)


def free_tcp_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


@dataclass
class Proc:
    name: str
    argv: list[str]
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None


@dataclass
class LocalCluster:
    root: Path
    heartbeat_timeout: float = 3.0
    heartbeat_interval: float = 0.5
    probe_interval: float = 0.5
    transport: str = "ipc"
    log_format: str = "json"
    #: None: --insecure (tests and the demo); a path: CurveZMQ with the keys there.
    keys_dir: Path | None = None
    procs: dict[str, Proc] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "logs").mkdir(exist_ok=True)
        if self.transport == "ipc" and len(str(self.root / "agents.sock")) + 6 > _IPC_PATH_LIMIT:
            self.transport = "tcp"
        if self.transport == "ipc":
            self.bind = f"ipc://{self.root / 'agents.sock'}"
            self.ctl = f"ipc://{self.root / 'ctl.sock'}"
        else:
            self.bind, self.ctl = free_tcp_endpoint(), free_tcp_endpoint()

    # --- processes -----------------------------------------------------------------

    def _spawn(self, name: str, args: list[str], env: dict[str, str] | None = None,
               descriptor_limit: int | None = None) -> Proc:
        log_path = self.root / "logs" / f"{name}.log"
        argv = [sys.executable, "-m", "supervisor", "--log-format", self.log_format, *args]
        proc = Proc(name, argv, log_path)
        limit = None
        if descriptor_limit is not None:
            # Soft and hard both: the daemon raises its soft limit to the hard one (as it
            # does to a unit's LimitNOFILE), so this is the limit it will really have.
            def limit() -> None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (descriptor_limit, descriptor_limit))
        with open(log_path, "ab") as log:
            proc.popen = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                env={**os.environ, **env} if env else None, preexec_fn=limit,
            )
        self.procs[name] = proc
        return proc

    def start_daemon(self, *extra: str, env: dict[str, str] | None = None,
                     descriptor_limit: int | None = None) -> Proc:
        return self._spawn(
            "daemon",
            [
                "daemon",
                "--bind", self.bind,
                "--ctl", self.ctl,
                "--state-dir", str(self.root / "state"),
                "--heartbeat-timeout", f"{self.heartbeat_timeout}s",
                "--heartbeat-interval", f"{self.heartbeat_interval}s",
                *(["--keys-dir", str(self.keys_dir)] if self.keys_dir else ["--insecure"]),
                *extra,
            ],
            env,
            descriptor_limit,
        )

    def start_agent(self, node: str, accelerator: str = "sim-ascend", chips: int = 4, *extra: str,
                    env: dict[str, str] | None = None) -> Proc:
        return self._spawn(
            node,
            [
                "agent",
                "--daemon", self.bind,
                "--node-id", node,
                "--accelerator", accelerator,
                "--chips", str(chips),
                "--address", "127.0.0.1",
                "--work-dir", str(self.root / "nodes" / node),
                "--probe-interval", f"{self.probe_interval}s",
                *(["--keys-dir", str(self.keys_dir)] if self.keys_dir else ["--insecure"]),
                *extra,
            ],
            env,
        )

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs[name]
        if proc.alive():
            os.kill(proc.pid, sig)
            proc.popen.wait(timeout=10)  # type: ignore[union-attr]

    def stop_all(self, grace: float = 5.0) -> None:
        """Stop everything this cluster started, training ranks included: they outlive
        their agent by design (KillMode=process), but on this throwaway local cluster
        nothing may keep running after the demo or a test. The daemon and agents are
        frozen first (SIGSTOP), so no rank can be started while the ranks are collected;
        ranks that an agent SIGKILLed earlier left orphaned are found by the simulated
        chips they were told about (their environment points into this cluster's root)."""
        import psutil

        alive = [proc for proc in self.procs.values() if proc.alive()]
        for proc in alive:
            os.kill(proc.pid, signal.SIGSTOP)
        ranks: dict[int, psutil.Process] = {}
        for proc in alive:
            try:
                ranks.update((c.pid, c) for c in psutil.Process(proc.pid).children(recursive=True))
            except psutil.Error:
                pass
        ranks.update(_processes_of(self.root))
        for rank in ranks.values():
            try:
                rank.kill()  # psutil checks the process is still the one it saw
            except psutil.Error:
                pass
        for proc in alive:
            os.kill(proc.pid, signal.SIGTERM)
            os.kill(proc.pid, signal.SIGCONT)
        deadline = time.monotonic() + grace
        for proc in self.procs.values():
            if proc.popen is None:
                continue
            try:
                proc.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.popen.kill()
                proc.popen.wait()
        # An agent woken with SIGTERM may still have carried out a command it had queued
        # (a start): a last sweep for anything of this cluster's.
        for rank in _processes_of(self.root).values():
            try:
                rank.kill()
            except psutil.Error:
                pass

    # --- looking at it -------------------------------------------------------------

    def status(self, timeout: float = 2.0) -> dict[str, Any]:
        return request(self.ctl, "status", timeout=timeout)

    def node(self, name: str, timeout: float = 2.0) -> dict[str, Any] | None:
        for n in self.status(timeout)["nodes"]:
            if n["node"] == name:
                return n
        return None

    def wait_nodes(self, state: str, names: list[str], timeout: float) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            status = self.status()
            states = {n["node"]: n["state"] for n in status["nodes"]}
            return status if all(states.get(name) == state for name in names) else None

        return wait_for(check, timeout, f"nodes {', '.join(names)} to be {state}")

    def events(self, name: str) -> list[dict[str, Any]]:
        """The JSON log lines `name` has written so far (non-JSON lines skipped)."""
        out = []
        path = self.root / "logs" / f"{name}.log"
        if not path.exists():
            return out
        for line in path.read_text(errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out

    def find_events(self, name: str, event: str, **match: Any) -> list[dict[str, Any]]:
        return [
            e for e in self.events(name)
            if e.get("event") == event and all(e.get(k) == v for k, v in match.items())
        ]

    def ready_standbys(self, node: str) -> int:
        """Warm standbys waiting on `node` for a rank: those that wrote their `.ready`
        marker beside the assignment file the agent gives them (`agents/runtime/warm.py`)
        and have not been given one yet."""
        markers = (self.root / "nodes" / node / "logs").glob("*/standby/*.assign.ready")
        return sum(1 for m in markers if not m.with_name(m.name.removesuffix(".ready")).exists())


class IdleFlood:
    """`count` raw TCP connections to `endpoint` that never send a byte: what a peer that
    opens connections and never authenticates looks like to the daemon. Connections are
    opened without blocking, `per_second` at most (a burst much larger than the daemon's
    listen backlog leaves the client believing in connections whose final ACK the
    server's kernel dropped); `poll` reads and discards what the daemon sends (its ZMTP
    greeting) and notes each connection the daemon closes. The caller's descriptor limit
    must allow `count` more descriptors (see `raise_own_descriptor_limit`)."""

    def __init__(self, endpoint: str, count: int, per_second: float | None = None) -> None:
        host, port = endpoint.removeprefix("tcp://").rsplit(":", 1)
        self.count = count
        self.started = time.monotonic()
        self.dropped = 0  # closed by the daemon: EOF or reset
        self.failed = 0  # never connected (refused, timed out)
        self.all_dropped_at: float | None = None
        self.first_dropped_at: float | None = None
        self._selector = selectors.DefaultSelector()
        self._opening = True
        for i in range(count):
            if per_second is not None:
                # Pacing, not waiting for a condition: drain replies until this one is due.
                while (due := self.started + i / per_second - time.monotonic()) > 0:
                    self.poll(due)
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            code = sock.connect_ex((host, int(port)))
            if code not in (0, errno.EINPROGRESS):
                sock.close()
                self.failed += 1
                continue
            self._selector.register(sock, selectors.EVENT_READ)
        self._opening = False

    @property
    def open(self) -> int:
        return len(self._selector.get_map())

    def poll(self, timeout: float = 0.0) -> int:
        """Take in what arrived within `timeout` seconds; returns how many are still open."""
        for key, _ in self._selector.select(timeout):
            sock = key.fileobj
            try:
                if sock.recv(4096):  # type: ignore[union-attr]
                    continue
                self.dropped += 1
            except (BlockingIOError, InterruptedError):
                continue
            except (ConnectionResetError, BrokenPipeError):
                self.dropped += 1
            except OSError:
                self.failed += 1
            self._selector.unregister(sock)
            sock.close()  # type: ignore[union-attr]
        if self.dropped and self.first_dropped_at is None:
            self.first_dropped_at = time.monotonic()
        if not self.open and not self._opening and self.all_dropped_at is None:
            self.all_dropped_at = time.monotonic()
        return self.open

    def close(self) -> None:
        for key in list(self._selector.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        self._selector.close()


def raise_own_descriptor_limit(needed: int) -> None:
    """Let this process hold `needed` descriptors, up to its hard limit (a test or a
    benchmark that opens thousands of connections)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed if hard == resource.RLIM_INFINITY else min(needed, hard), hard))


def _processes_of(root: Path) -> dict[int, Any]:
    """Processes whose trainguard environment points into `root` (ranks of this cluster)."""
    import psutil

    marker = str(root.resolve())
    found = {}
    for process in psutil.process_iter(["pid"]):
        try:
            env = process.environ()
        except (psutil.Error, OSError):
            continue
        if any(env.get(key, "").startswith(marker) for key in ("TRAINGUARD_SIM_CHIPS", "TRAINGUARD_CKPT_DIR")):
            found[process.pid] = process
    return found
