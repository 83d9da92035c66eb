"""The supervisor daemon: sockets, timers and the store around the pure `Cluster`.

One thread, one zmq Poller over two ROUTER sockets (agents, control clients). Each turn:
wait for a frame or the next deadline → decode → hand to `Cluster` → send what it returns,
log and queue for the store what changed. No thread per node; a heartbeat costs a decode,
a dict lookup and an ack, so the loop scales with message rate, not cluster size. Every
step of a turn is guarded: a bug in one handler is logged (`daemon.handler_failed`) and
counted, and the loop goes on.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import resource
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import structlog
import zmq
from zmq.utils.monitor import parse_monitor_message  # imported now: at EMFILE, a lazy import fails

from supervisor.core.badframes import BadFrameCounter
from supervisor.core.cluster import Cluster, ClusterConfig, Outcome, ToNode, ToPeer
from supervisor.core.nodes import NodeChange
from supervisor.daemon import zap
from supervisor.daemon.metrics import DaemonMetrics
from supervisor.daemon.policywatch import DirectoryWatcher
from supervisor.daemon.store import Store, StoreError
from supervisor.policy.directory import Change, PolicyDirectory
from supervisor.shared import __version__
from supervisor.shared import keys as keyfiles
from supervisor.shared.clock import Instant, system_now
from supervisor.shared.defaults import DEFAULT_HEARTBEAT_INTERVAL, DEFAULT_HEARTBEAT_TIMEOUT, DEFAULT_KEYS_DIR
from supervisor.shared.protocol import Ack, CtlRequest, HeartbeatDecoder, ProtocolError, decode, encode, new_id
from supervisor.shared.sdnotify import Notifier
from supervisor.shared.vocab import Accelerator

log = structlog.get_logger()

#: Frames larger than this make libzmq drop the connection before we ever see them.
_ZMQ_MAX_MSG = 4 * 1024 * 1024
#: How many frames one socket may hand in before the other gets a turn ...
_BATCH = 512
#: ... and control requests per turn.
_CTL_BATCH = 8
#: How often what waits for the store is written. A flush also writes the readings and
#: last heartbeat times that are due (_SAVE_HEARTBEATS_EVERY), a share of the nodes each:
#: at 10,000 nodes a flush a second wrote up to 2,000 records in one go, a pause of the
#: loop of ~60 ms every second; four a second still held it 10-20 ms each (a few hundred
#: records) on a loaded machine; eight a second write an eighth each.
_FLUSH_EVERY = 0.125
#: How often the rest of the periodic work runs (metrics, allow-lists, descriptors): each
#: chore on a turn of its own, never with a flush. Run together after a flush they held
#: the loop for ~45 ms once a second at 10,000 nodes, the largest share of the p99
#: heartbeat latency (bench/scale.py, timers around each step).
_HOUSEKEEPING_EVERY = 1.0
#: A node's last heartbeat time and readings reach the store within this; a change of
#: state or health at the next flush. After a SIGKILL a restarted daemon shows a node's
#: last heartbeat up to this much older than it was (its nodes re-register anyway).
_SAVE_HEARTBEATS_EVERY = 10.0
_MAX_UNSAVED_EVENTS = 100_000
#: A connection that has not completed its ZMTP/CURVE handshake by then is dropped.
_HANDSHAKE_MS = 5_000
#: While the loop is behind its agents (frames left unread after a batch), it says so at
#: most this often (`daemon.overloaded`).
_OVERLOAD_LOG_EVERY = 10.0
#: How often libzmq pings each control connection to find dead TCP peers (one silent
#: for three of these is dropped).
_ZMQ_PING_MS = 10_000
#: Agent connections are not pinged by libzmq: the kernel finds their dead peers (a
#: powered-off node sends no RST) with TCP keepalive, probing a connection idle for
#: _KEEPALIVE_IDLE_S every _KEEPALIVE_INTVL_S, _KEEPALIVE_CNT times (30 s in all), and
#: drops one whose sent data stays unacknowledged for _TCP_MAXRT_MS. libzmq's pings
#: (every 10 s) were two messages per connection on its one I/O thread, and connections
#: made together ping together: at 10,000 agents every 10 s a burst of 10,000 pings and
#: pongs held the heartbeats behind it for up to 1.5 s (bench/scale.py: p99 1.49 s with
#: them, 84 ms without, back to back). A live agent heartbeats, so keepalive never
#: probes it: nothing to do for anyone. Which nodes are alive is heartbeat_timeout's
#: business, not this; this only reaps connections.
_KEEPALIVE_IDLE_S = 10
_KEEPALIVE_INTVL_S = 5
_KEEPALIVE_CNT = 4
_TCP_MAXRT_MS = 30_000
#: The listen backlog of the endpoints (see `_bind`).
_LISTEN_BACKLOG = 4096
#: Longest the poll waits, so a stop request is noticed promptly.
_POLL_CAP = 0.25
#: After a turn that handled some agent frames but not a full batch, the loop waits
#: this long before it polls again, so that the next turn handles what gathered
#: meanwhile rather than the one frame that woke it. A turn (the poll, waking libzmq's
#: I/O thread for the acks, the deadlines) costs ~130 µs besides its frames, and a
#: heartbeat ~17 µs (a real Daemon on loopback tcp): at 10,000 heartbeats a second, one
#: or a few per turn kept the loop's thread at ~100 % of a core (bench/scale.py). Adds at
#: most this to a heartbeat's ack; a full batch (a backlog) or a control request does not
#: wait.
_COALESCE = 0.005
#: A turn that started this much later than the poll allowed means the daemon itself
#: was stopped (SIGSTOP, a frozen VM, heavy swapping), not that the nodes went quiet.
_STALL_SLACK = 2.0
#: Warn when fewer than this share of the descriptor limit is left ...
_FD_LOW = 0.1
#: ... and call it over when more than this share is free again: a flood refills what
#: the handshake deadline frees within moments, and the control listener must not reopen
#: into that (see `_pause_ipc_control`).
_FD_OK = 0.5
#: When this many descriptors have closed since the most in use, the memory of their
#: connections is handed back to the system (`_release_freed_memory`).
_FD_RELEASE = 1_000


class DaemonError(Exception):
    """A reason the daemon cannot start, written for the operator."""


@dataclass(frozen=True)
class DaemonConfig:
    bind: str
    ctl: str
    state_dir: Path
    policy_dir: Path | None = None
    heartbeat_timeout: float = DEFAULT_HEARTBEAT_TIMEOUT
    heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL
    command_timeout: float = 10.0
    metrics: tuple[str, int] | None = None  # (host, port) of the Prometheus endpoint
    keys_dir: Path | None = None  # CurveZMQ keys (see supervisor/shared/keys.py); required unless insecure
    insecure: bool = False


class Daemon:
    def __init__(self, config: DaemonConfig) -> None:
        self.config = config
        self._stop = False
        self._ctx = zmq.Context.instance()
        self._pending_events: list[tuple[float, str, dict[str, Any]]] = []
        self._pending_jobs: dict[str, Any] = {}
        self._store_failing = False
        self._events_lost = 0
        self._fd_warned = False
        self._ctl_paused = False
        self._fd_high = 0
        #: Outcomes of the batch of frames being handled, waiting for its one commit.
        self._held: list[Outcome] | None = None
        #: Decodes agent frames; a heartbeat's chips and host when their bytes changed.
        self._heartbeats = HeartbeatDecoder()
        #: Monotonic time the agent queue was last found empty (`_backlog`).
        self._agents_empty_at = time.monotonic()
        #: Agent frames the last turn handled, and whether it left none waiting (_COALESCE).
        self._agent_frames = 0
        self._caught_up = True
        #: Monotonic time of the next housekeeping (_periodic), and its chores still to
        #: run, one a turn.
        self._next_housekeeping = 0.0
        self._chores: list[Callable[[Notifier], None]] = []
        #: While behind: (backlog began, last logged, most nodes deferred), else None.
        self._overload: tuple[float, float, int] | None = None
        self.metrics = DaemonMetrics()
        self._sockets: list[zmq.Socket] = []
        self._ipc_paths: list[Path] = []
        self._made_state_dir = not config.state_dir.exists()
        self._lock_file = self._take_lock(config.state_dir)
        try:
            self._open_endpoints(config)
            try:
                self.store = Store(config.state_dir / "state.db")
                restored = self.store.load_nodes()  # an unreadable row is logged, not dropped in silence
            except StoreError as exc:
                raise DaemonError(str(exc)) from exc
        except BaseException:
            self._abandon()
            raise
        now = system_now()
        self.cluster = Cluster(
            ClusterConfig(config.heartbeat_timeout, config.heartbeat_interval, config.command_timeout),
            instance=new_id(),
            started=now,
        )
        self._record(self.cluster.nodes.restore(restored, now), now)
        self.cluster.event_log = self.store.query_events
        self.watcher: DirectoryWatcher | None = None
        if config.policy_dir is not None:
            directory = config.policy_dir.resolve()
            self.cluster.policies = PolicyDirectory(directory)
            self._policy_changes(self.cluster.policies.load_all(now.wall), now)
            self.watcher = DirectoryWatcher(directory)
        # Jobs after the policies they run under; their ranks are adopted as the agents
        # re-register with what they run.
        try:
            jobs = self.store.load_jobs()
        except StoreError as exc:
            self._abandon_after_store()
            raise DaemonError(str(exc)) from exc
        restored_jobs = self.cluster.jobs.restore(jobs, now)
        self._record(restored_jobs.changes, now)
        self.metrics.observe_nodes(self.cluster.nodes)

    # --- setup ---------------------------------------------------------------------

    def _open_endpoints(self, config: DaemonConfig) -> None:
        """Keys, the ZAP handler, both ROUTER sockets and the metrics port: everything
        that can be refused (a missing key, an address in use) before any state is made."""
        _raise_descriptor_limit()
        self._curve: tuple[bytes, bytes] | None = None
        self.allow: dict[str, zap.AllowList] = {}
        self.refusals = BadFrameCounter()  # the same once-per-peer-per-minute logging
        if not config.insecure:
            keys = config.keys_dir or Path(DEFAULT_KEYS_DIR)
            try:
                self._curve = keyfiles.load_pair(keys, "daemon")
            except keyfiles.KeyError_ as exc:
                raise DaemonError(f"{exc}; or pass --insecure on a test cluster") from exc
            self.allow = {zap.AGENTS_DOMAIN: zap.AllowList(keys / "agents"),
                          zap.ADMINS_DOMAIN: zap.AllowList(keys / "admins")}
            # The ZAP handler must be bound before any CURVE socket can take a handshake.
            self._zap = self._ctx.socket(zmq.REP)
            self._sockets.append(self._zap)
            self._zap.setsockopt(zmq.LINGER, 0)
            self._zap.bind("inproc://zeromq.zap.01")
        self.agents = self._bind(zmq.ROUTER, config.bind, "agent", zap.AGENTS_DOMAIN, pings=False)
        # A send to a connection that is gone raises instead of vanishing. Routing ids are
        # libzmq's own (random, per connection): a node's route is the connection it
        # registered from, bound to its key, never an id a peer chose (no ROUTER_HANDOVER).
        self.agents.setsockopt(zmq.ROUTER_MANDATORY, 1)
        # ipc control sockets are guarded by file permissions; tcp ones by CURVE admin keys.
        self.ctl = self._bind(zmq.ROUTER, config.ctl, "control",
                              zap.ADMINS_DOMAIN if config.ctl.startswith("tcp://") else None)
        # A peer without CURVE fails the handshake before ZAP is asked: only a socket
        # monitor sees it. domain of each monitored socket, by monitor socket.
        self._monitors: dict[zmq.Socket, tuple[zmq.Socket, str]] = {}
        if self._curve is not None:
            # Not HANDSHAKE_FAILED_AUTH: those are ZAP's refusals, already logged with the peer.
            failures = zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
            for sock, domain in ((self.agents, zap.AGENTS_DOMAIN), (self.ctl, zap.ADMINS_DOMAIN)):
                if sock.getsockopt(zmq.CURVE_SERVER):
                    self._monitors[sock.get_monitor_socket(failures)] = (sock, domain)
        if config.metrics is not None:
            host, port = config.metrics
            try:
                self.metrics.serve(host, port)
            except OSError as exc:
                raise DaemonError(f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}") from exc

    def _abandon_after_store(self) -> None:
        self.store.close()
        self._abandon()

    def _abandon(self) -> None:
        """Undo a start that was refused: no socket file, lock or state directory left."""
        for monitor in getattr(self, "_monitors", {}):
            monitor.close(linger=0)
        for sock in self._sockets:
            sock.close(linger=0)
        self._remove_ipc_files()
        lock_path = Path(self._lock_file.name)
        self._lock_file.close()
        lock_path.unlink(missing_ok=True)
        if self._made_state_dir:
            shutil.rmtree(self.config.state_dir, ignore_errors=True)

    def _remove_ipc_files(self) -> None:
        for path in self._ipc_paths:
            path.unlink(missing_ok=True)

    @staticmethod
    def _take_lock(state_dir: Path) -> Any:
        try:
            state_dir.mkdir(parents=True, exist_ok=True)
            lock = open(state_dir / "daemon.lock", "a+")
        except OSError as exc:
            raise DaemonError(f"cannot use state dir {state_dir}: {exc.strerror}") from exc
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "unknown"
            lock.close()
            raise DaemonError(
                f"another trainguard daemon (pid {holder}) is using state dir {state_dir}"
            ) from None
        lock.truncate(0)
        lock.write(str(os.getpid()))
        lock.flush()
        return lock

    def _bind(self, kind: int, endpoint: str, what: str, zap_domain: str | None = None,
              pings: bool = True) -> zmq.Socket:
        sock = self._ctx.socket(kind)
        if self._curve is not None and zap_domain is not None:
            sock.setsockopt(zmq.CURVE_SERVER, 1)
            sock.setsockopt(zmq.CURVE_SECRETKEY, self._curve[1])
            sock.setsockopt(zmq.ZAP_DOMAIN, zap_domain.encode())
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, _ZMQ_MAX_MSG)
        sock.setsockopt(zmq.SNDHWM, 10_000)
        sock.setsockopt(zmq.RCVHWM, 10_000)
        # Dead TCP peers (a powered-off node sends no RST) are found by libzmq's pings
        # or, on the agent socket, by the kernel (see _KEEPALIVE_IDLE_S).
        if pings:
            sock.setsockopt(zmq.HEARTBEAT_IVL, _ZMQ_PING_MS)
            sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 3 * _ZMQ_PING_MS)
        else:
            sock.setsockopt(zmq.TCP_KEEPALIVE, 1)
            sock.setsockopt(zmq.TCP_KEEPALIVE_IDLE, _KEEPALIVE_IDLE_S)
            sock.setsockopt(zmq.TCP_KEEPALIVE_INTVL, _KEEPALIVE_INTVL_S)
            sock.setsockopt(zmq.TCP_KEEPALIVE_CNT, _KEEPALIVE_CNT)
            sock.setsockopt(zmq.TCP_MAXRT, _TCP_MAXRT_MS)
        # A connection that has not finished its handshake within this is dropped, so
        # idle unauthenticated connections cannot pile up and eat descriptors.
        sock.setsockopt(zmq.HANDSHAKE_IVL, _HANDSHAKE_MS)
        # Connections waiting to be accepted (the kernel caps it at net.core.somaxconn).
        # libzmq's default of 100 drops the SYNs of a burst, and each dropped connect is
        # retried by TCP 1, 3, 7, 15... s later: 10,000 agents connecting at once (a daemon
        # restart) took over a minute to all be accepted (bench/scale.py).
        sock.setsockopt(zmq.BACKLOG, _LISTEN_BACKLOG)
        try:
            sock.bind(endpoint)
        except zmq.ZMQError as exc:
            sock.close()
            raise DaemonError(f"cannot bind the {what} endpoint {endpoint}: {exc}") from exc
        self._sockets.append(sock)
        if endpoint.startswith("ipc://"):
            path = Path(endpoint[len("ipc://"):])
            self._ipc_paths.append(path)
            # The owner and the service group (operators' CLI) may connect; nobody else.
            os.chmod(path, 0o660)
        return sock

    # --- main loop -----------------------------------------------------------------

    def request_stop(self, *_: Any) -> None:
        self._stop = True

    def run(self) -> None:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        poller = zmq.Poller()
        poller.register(self.agents, zmq.POLLIN)
        poller.register(self.ctl, zmq.POLLIN)
        if self._curve is not None:
            poller.register(self._zap, zmq.POLLIN)
            for monitor in self._monitors:
                poller.register(monitor, zmq.POLLIN)
            self._refresh_allow_lists()
        else:
            log.warning("auth.insecure", effect="agents and control clients are not authenticated: "
                        "anyone who can reach the endpoints can register nodes and send commands",
                        bind=self.config.bind, ctl=self.config.ctl)
        log.info(
            "daemon.started",
            version=__version__,
            instance=self.cluster.instance,
            bind=self.config.bind,
            ctl=self.config.ctl,
            state_dir=str(self.config.state_dir),
            nodes_known=len(self.cluster.nodes),
            heartbeat_timeout_s=self.config.heartbeat_timeout,
            heartbeat_interval_s=self.config.heartbeat_interval,
            descriptor_limit=resource.getrlimit(resource.RLIMIT_NOFILE)[0],
            pid=os.getpid(),
        )
        if self.watcher is not None:
            self.watcher.start()
        notify = Notifier()
        notify.ready(self._status_line())
        self._next_flush = time.monotonic() + _FLUSH_EVERY
        self._next_housekeeping = time.monotonic() + _HOUSEKEEPING_EVERY
        self._last_poll = time.monotonic()
        try:
            while not self._stop:
                if self._turn(poller):
                    # Only a turn that polled the sockets and ran the deadlines pings the
                    # watchdog: a wedged loop stops pinging and systemd restarts us.
                    notify.watchdog(time.monotonic())
                self._background(notify)
        finally:
            notify.stopping(f"stopping; {self._status_line()}")
            notify.close()
            log.info("daemon.stopping", instance=self.cluster.instance)
            self._final_flush()
            self.close()

    def _turn(self, poller: zmq.Poller) -> bool:
        """One turn: poll, handle what arrived, run the deadlines. True when it got round."""
        before = system_now()
        # Housekeeping chores waiting (one a turn, `_background`): look at the sockets and
        # come straight back for the next.
        wake = before.mono if self._chores else self._next_flush
        if (deadline := self.cluster.next_deadline()) is not None:
            wake = min(wake, deadline)
        timeout = max(0.0, min(_POLL_CAP, wake - before.mono))
        pause = 0.0
        if 0 < self._agent_frames < _BATCH and self._caught_up:
            # The last turn handled a few agent frames, not a full batch, and left none
            # waiting: let the next ones gather before looking (see _COALESCE). Never
            # while frames wait: a daemon behind its agents must not slow down. A
            # control request ends the wait: each page of a `status` would otherwise
            # wait it out.
            pause = min(_COALESCE, timeout)
            self.ctl.poll(int(pause * 1000))
        ready = dict(poller.poll(int((timeout - pause) * 1000) + 1))
        after = system_now()
        # Measured from the end of the previous poll, so a pause anywhere in the turn (in
        # the poll, or while handling what it returned) counts.
        gap = after.mono - self._last_poll - timeout
        self._last_poll = after.mono
        if gap > _STALL_SLACK:
            # Before anything else this turn: the nodes must not pay for our pause.
            self._guarded("stall", lambda: self._apply(self.cluster.on_stall(gap, after), after))
        if self._curve is not None and self._zap in ready:
            self._drain(self._zap, self._on_zap)
        for monitor, (_, domain) in self._monitors.items():
            if monitor in ready:
                self._drain(monitor, lambda frames, d=domain: self._on_monitor(frames, d))
        self._agent_frames = 0
        if self.agents in ready:
            self._agent_frames = self._drain(self.agents, self._on_agent_frames, receive=_recv_routed)
        # A control request that came in while the agents' batch was handled is answered
        # now, not after the next batch: `status` of 10,000 nodes is 10 requests, each
        # otherwise waiting up to two batches of a busy daemon. A few per turn, so that
        # control traffic cannot hold the heartbeats up (a page is ~10 ms of loop).
        if self.ctl in ready or self.ctl.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            self._drain(self.ctl, self._on_ctl_frames, _CTL_BATCH, _recv_routed)
        now = system_now()
        if now.mono - after.mono > _STALL_SLACK:
            # Stopped while handling what the poll returned (a SIGSTOP between two polls):
            # said here, before the deadlines run, or this turn's tick would blame the
            # nodes for it; the next turn measures from here.
            paused = now.mono - after.mono
            self._guarded("stall", lambda: self._apply(self.cluster.on_stall(paused, now), now))
            self._last_poll = now.mono
        backlog_since = self._backlog(now.mono)
        self._caught_up = backlog_since is None
        ok = self._guarded("tick", lambda: self._apply(self.cluster.tick(now, backlog_since), now))
        if backlog_since is not None or self._overload is not None:
            self._guarded("overload", self._report_overload, backlog_since, now.mono)
        if self.watcher is not None:
            self._guarded("policy_reload", self._reload_policies, now)
        return ok

    def _backlog(self, mono: float) -> float | None:
        """The monotonic time the agent queue was last found empty, while frames are still
        waiting in it after this turn's batch; None when it is empty now. A heartbeat in
        our own queue is not a node's silence (`NodeTable.expire`)."""
        if self.agents.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            return self._agents_empty_at
        self._agents_empty_at = mono
        return None

    def _report_overload(self, backlog_since: float | None, mono: float) -> None:
        """Say, at most every _OVERLOAD_LOG_EVERY, that the loop is behind its agents and
        how many nodes it is not declaring lost for that; and when it has caught up."""
        deferred = self.cluster.nodes.deferred
        if backlog_since is None:
            assert self._overload is not None
            began, _, most = self._overload
            self._overload = None
            if mono - began >= _OVERLOAD_LOG_EVERY or most:
                log.info("daemon.overload_cleared", lasted_s=round(mono - began, 3), most_nodes_deferred=most)
            return
        if self._overload is None:
            self._overload = (backlog_since, -float("inf"), 0)
        began, logged, most = self._overload
        most = max(most, deferred)
        if mono - logged >= _OVERLOAD_LOG_EVERY and (deferred or mono - began >= _OVERLOAD_LOG_EVERY):
            log.warning("daemon.overloaded", backlog_s=round(mono - backlog_since, 3), nodes_deferred=deferred,
                        nodes=len(self.cluster.nodes), heartbeat_timeout_s=self.config.heartbeat_timeout,
                        action="agent frames wait unread in the daemon's queue: a node is not declared lost while "
                        "its heartbeat may be among them, for at most one more heartbeat_timeout")
            logged = mono
        self._overload = (began, logged, most)

    def _background(self, notify: Notifier) -> None:
        """After a turn, one piece of the periodic work at most: the flush when it is due,
        else the next housekeeping chore, so that no turn holds the heartbeats behind both."""
        if time.monotonic() >= self._next_flush:
            self._guarded("flush", self._periodic)
        elif self._chores:
            self._guarded("housekeeping", self._chores.pop(0), notify)

    def _periodic(self) -> None:
        """The flush; and when housekeeping is due, its chores queued for the next turns."""
        now = time.monotonic()
        self._next_flush = now + _FLUSH_EVERY
        self._flush()
        if now < self._next_housekeeping or self._chores:
            return
        self._next_housekeeping = now + _HOUSEKEEPING_EVERY
        self._chores = [self._observe, self._check_descriptors_chore, self._report_status]

    def _observe(self, notify: Notifier) -> None:
        self._heartbeats.limit = 2 * len(self.cluster.nodes) + 1024
        self.metrics.observe_nodes(self.cluster.nodes)
        self.metrics.observe_jobs(self.cluster.jobs, time.time())

    def _check_descriptors_chore(self, notify: Notifier) -> None:
        self._refresh_allow_lists()
        self._check_descriptors()

    def _report_status(self, notify: Notifier) -> None:
        notify.status(self._status_line())

    def _guarded(self, step: str, fn: Callable[..., Any], *args: Any) -> bool:
        """Run one step of a turn; a failure is logged with its traceback and counted,
        never the end of the loop."""
        try:
            fn(*args)
            return True
        except Exception:
            self.metrics.handler_failures.labels(step).inc()
            log.exception("daemon.handler_failed", step=step)
            return False

    def _reload_policies(self, now: Instant) -> None:
        assert self.watcher is not None and self.cluster.policies is not None
        for path, outcome in self.watcher.loaded(now.mono):  # read off the loop
            try:
                self._policy_changes(self.cluster.policies.apply(path, outcome(), now.wall), now)
            except Exception:  # a loader bug must not take the daemon down
                log.exception("policy.reload_failed", file=str(path), action="the policy in force is unchanged")

    def _check_descriptors(self) -> None:
        """Say so while there is still time: at the limit, libzmq stops accepting tcp
        connections (registered agents stay served, new ones wait in the backlog)."""
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        try:
            used = _open_descriptors()
        except OSError as exc:
            if exc.errno not in (errno.EMFILE, errno.ENFILE):
                return  # cannot tell: say nothing rather than "ok"
            used = soft  # listing them takes a descriptor, and none is left: the limit
        self._fd_high = max(self._fd_high, used)
        if self._fd_high - used >= _FD_RELEASE:
            log.info("daemon.memory_released", descriptors_closed=self._fd_high - used, used=used)
            self._fd_high = used
            _release_freed_memory()
        if soft == resource.RLIM_INFINITY:
            low = False
        else:
            low = used > soft * (1 - (_FD_OK if self._fd_warned else _FD_LOW))
        self._pause_ipc_control(low)
        if low and not self._fd_warned:
            log.warning("daemon.descriptors_low", used=used, limit=soft,
                        control="paused" if self._ctl_paused else "served",
                        action="raise LimitNOFILE in the unit; look for a peer opening connections without "
                        "authenticating (auth.refused)")
        elif not low and self._fd_warned:
            log.info("daemon.descriptors_ok", used=used, limit=soft,
                     control="paused" if self._ctl_paused else "served")
        self._fd_warned = low

    def _pause_ipc_control(self, pause: bool) -> None:
        """Close an ipc control listener while descriptors run short, open it again after.
        libzmq (4.3.5, and its master) aborts the whole process when accept() on an ipc
        listener fails with EMFILE (ipc_listener.cpp asserts; the tcp listener just skips
        the connection), so one `trainguard status` while a flood holds every descriptor
        would kill the daemon. Meanwhile the CLI gets no answer (read-only verbs retry);
        unbinding also closes the control connections that listener accepted. A flood
        that reaches the limit between two checks (1 s apart) still leaves that window."""
        if pause == self._ctl_paused or not self.config.ctl.startswith("ipc://"):
            return
        try:
            if pause:
                self.ctl.unbind(self.config.ctl)
            else:
                self.ctl.bind(self.config.ctl)
                os.chmod(self.config.ctl[len("ipc://"):], 0o660)
        except (zmq.ZMQError, OSError) as exc:
            log.error("daemon.control_pause_failed", pause=pause, error=str(exc))
            return
        self._ctl_paused = pause

    # --- authentication ------------------------------------------------------------

    def _refresh_allow_lists(self) -> None:
        for domain, allowed in self.allow.items():
            if allowed.refresh():
                log.info("auth.keys_loaded", domain=domain, directory=str(allowed.directory),
                         keys=sorted(allowed.keys.values()), problems=allowed.problems)

    def _key_refusal(self, frame: zmq.Frame, node: str) -> str | None:
        """A CURVE peer speaks for the node its key is allow-listed as (keys/agents/NODE.key),
        and only while that key is still allow-listed: removing a key cuts the node off
        without a restart, and one node's key cannot register as another node. Returns
        why not, or None when it may."""
        try:
            key_name = frame.get("User-Id")
        except (zmq.ZMQError, KeyError):
            key_name = None
        allowed = set(self.allow[zap.AGENTS_DOMAIN].keys.values())
        if key_name == f"{node}.key" and key_name in allowed:
            return None
        if key_name not in allowed:
            return f"key {key_name!r} is no longer in the allow-list"
        return f"key {key_name!r} may only speak for node {key_name.removesuffix('.key')!r}, not {node!r}"

    def _on_zap(self, frames: list[zmq.Frame]) -> None:
        decision = zap.decide([f.bytes for f in frames], self.allow)
        if decision is None:
            self._zap.send_multipart([zap.ZAP_VERSION, frames[1].bytes if len(frames) > 1 else b"", b"400",
                                      b"malformed ZAP request", b"", b""])
            return
        self._zap.send_multipart(zap.reply(decision))
        if not decision.allowed:
            self._refused(decision.address or "unknown", decision.mechanism, decision.domain, decision.reason)

    def _on_monitor(self, frames: list[zmq.Frame], domain: str) -> None:
        event = parse_monitor_message([f.bytes for f in frames])
        endpoint = event.get("endpoint", b"")
        local = endpoint.decode(errors="replace") if isinstance(endpoint, bytes) else str(endpoint)
        # libzmq reports the listening endpoint, not the peer, for a failed handshake.
        self._refused(f"unknown (on {local})", "none", domain,
                      "handshake failed: the peer does not speak CURVE with this daemon's key "
                      "(plain-text socket, no key, or the wrong daemon key)")

    def _refused(self, peer: str, mechanism: str, domain: str, reason: str) -> None:
        self.metrics.refused_peers.labels(mechanism).inc()
        # One line per peer and reason per minute: a node retrying with a bad key every few
        # seconds is one line, two different problems from one address are two.
        report = self.refusals.record(f"{peer} {reason}", domain, reason, time.monotonic())
        if report is not None:
            log.warning("auth.refused", peer=peer, domain=domain, mechanism=mechanism, reason=reason,
                        suppressed_since_last=report.suppressed)

    def _status_line(self) -> str:
        states = self.cluster.nodes.census()[1]  # counted once per change, not every second
        line = f"serving {states['up']} nodes up, {states['lost']} lost, {states['pending']} pending"
        if self._store_failing:
            line += "; STATE DB NOT WRITABLE (see store.write_failed)"
        return line

    def close(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()
        for monitor, (sock, _) in self._monitors.items():
            sock.disable_monitor()
            monitor.close(linger=0)
        for sock in self._sockets:
            sock.close(linger=0)
        self._remove_ipc_files()
        self.store.close()
        self._lock_file.close()

    def _drain(self, sock: zmq.Socket, handler: Any, batch: int = _BATCH,
               receive: Callable[[zmq.Socket], list[Any]] | None = None) -> int:
        """Up to `batch` frames of one socket (read with `receive`, by default as a list of
        zmq.Frame); returns how many. What they change is committed once, after the batch,
        and only then are their replies sent: a transaction per register was the loop's
        main cost when thousands of agents registered at once."""
        self._held = []
        handled = 0
        try:
            for handled in range(batch):
                try:
                    frames = receive(sock) if receive is not None else sock.recv_multipart(_NOBLOCK, copy=False)
                except zmq.Again:
                    return handled
                self._guarded("message", handler, frames)
            return batch
        finally:
            held, self._held = self._held, None
            if held:
                self._guarded("commit", self._release, held)

    # --- agent frames --------------------------------------------------------------

    def _peer(self, frames: list[zmq.Frame]) -> str:
        """Who sent a delivery, for a log line: asked of the transport only when one is
        written (a socket option read per frame was ~2 µs of every heartbeat)."""
        return _peer_name(frames[-1], self.cluster.node_of_route(frames[0]))

    def _decode(self, frames: list[zmq.Frame], where: str, now: Instant) -> tuple[bytes, Any] | None:
        """(identity, message) of a ROUTER delivery, or None after counting it bad."""
        if len(frames) != 2:
            self._bad_frame(self._peer(frames), "malformed", f"{len(frames) - 1} frames on the {where} socket, expected 1",
                            now)
            return None
        try:
            if where == "agent":
                return frames[0], self._heartbeats.decode(frames[1].buffer)
            return frames[0], decode(frames[1].buffer)
        except ProtocolError as exc:
            self._bad_frame(self._peer(frames), exc.reason, exc.detail, now)
            return None

    def _on_agent_frames(self, frames: list[zmq.Frame]) -> None:
        now = system_now()
        if (decoded := self._decode(frames, "agent", now)) is None:
            return
        identity, msg = decoded
        node = getattr(msg, "node", None)
        if node is None:
            return self._bad_frame(self._peer(frames), "unexpected", f"{type(msg).__name__} on the agent socket", now)
        if self._curve is not None and (refusal := self._key_refusal(frames[-1], node)) is not None:
            self._refused(self._peer(frames), "CURVE", zap.AGENTS_DOMAIN, refusal)
            # Tell the agent, so that it says "not authorised" rather than "daemon unreachable".
            self._send_agent(identity, Ack(id=new_id(), ts=now.wall, ref=msg.id, ok=False, error="not_authorised",
                                           detail={"reason": refusal}))
            return None
        try:
            outcome = self.cluster.on_agent_message(msg, identity, now)
        except ProtocolError as exc:
            return self._bad_frame(self._peer(frames), exc.reason, exc.detail, now)
        self._apply(outcome, now)

    def _on_ctl_frames(self, frames: list[zmq.Frame]) -> None:
        now = system_now()
        if (decoded := self._decode(frames, "control", now)) is None:
            return
        identity, msg = decoded
        if not isinstance(msg, CtlRequest):
            return self._bad_frame(self._peer(frames), "unexpected", f"{type(msg).__name__} on the control socket", now)
        self._apply(self.cluster.on_ctl_request(identity, msg, now), now)

    def _bad_frame(self, peer: str, reason: str, detail: str, now: Instant) -> None:
        self.metrics.bad_frames.labels(reason).inc()
        report = self.cluster.bad_frames.record(peer, reason, detail, now.mono)
        if report is not None:
            log.warning(
                "protocol.bad_frame",
                peer=report.peer,
                reason=report.reason,
                detail=report.detail,
                suppressed_since_last=report.suppressed,
                total_from_peer=report.total_from_peer,
                total=self.cluster.bad_frames.total,
            )

    # --- acting on outcomes --------------------------------------------------------

    def _send_agent(self, route: bytes, message: Any) -> str | None:
        """Hand a message to one agent connection; the error when it cannot be."""
        try:
            # Two sends rather than send_multipart: its flag arithmetic on pyzmq's enums
            # was half the cost of a send (1.3 of 2.8 µs, 10,000 acks a second).
            self.agents.send(route, _NOBLOCK_MORE)
            self.agents.send(encode(message), _NOBLOCK)
            return None
        except zmq.ZMQError as exc:
            # EHOSTUNREACH: not connected (ROUTER_MANDATORY); EAGAIN: its queue is full.
            return exc.strerror

    def _apply(self, outcome: Outcome, now: Instant) -> None:
        self._record(outcome.changes, now)
        self._pending_jobs.update(outcome.jobs)
        if self._held is not None and (self._held or outcome.changes or outcome.jobs):
            # Within a batch of agent frames, one commit for all of them (`_drain`);
            # what comes after a held outcome waits too, so replies keep their order.
            self._held.append(outcome)
            return
        committed = True
        if outcome.changes or outcome.jobs:
            # A state change is saved before anyone is told of it, so a daemon killed
            # right after cannot have announced something it then forgets. Heartbeat-
            # only updates (last seen, readings) wait for the periodic flush.
            committed = self._flush()
        self._send(outcome, now, committed)

    def _release(self, held: list[Outcome]) -> None:
        """Commit once what a batch of frames changed, then send their replies."""
        now = system_now()
        committed = self._flush()
        for outcome in held:
            self._send(outcome, now, committed)

    def _send(self, outcome: Outcome, now: Instant, committed: bool) -> None:
        if outcome.jobs and not committed:
            # A job transition that is not in the store must not be acted on: a daemon
            # killed now would not know it had started (or stopped) those ranks. The
            # job's tick sends the commands again once the store can be written.
            held = [s for s in outcome.sends if isinstance(s, ToNode)]
            if held:
                log.error("job.not_acted", jobs=sorted(outcome.jobs), commands_held=len(held),
                          reason="the state database cannot be written (store.write_failed); "
                          "commands for these jobs are held until it can")
            outcome.sends = [s for s in outcome.sends if not isinstance(s, ToNode)]
        for send in outcome.sends:
            if isinstance(send, ToPeer):
                self._send_agent(send.route, send.message)
            elif isinstance(send, ToNode):
                route = self.cluster.route_of(send.node)
                error = "not connected" if route is None else self._send_agent(route, send.message)
                if error is not None:
                    self._apply(self.cluster.on_send_failed(send, error, now), now)
            else:
                try:
                    self.ctl.send(send.client, _NOBLOCK_MORE)
                    self.ctl.send(encode(send.message), _NOBLOCK)
                except zmq.ZMQError:
                    pass  # the CLI went away; nothing to tell it

    def _record(self, changes: list[NodeChange], now: Instant) -> None:
        for change in changes:
            # The record's own node wins over anything in its fields.
            fields = dict(change.fields) if change.node == "*" else {**change.fields, "node": change.node}
            fields.pop("event", None)
            level = "warning" if change.event in _WARN_EVENTS or change.event.startswith("signal.") else "info"
            getattr(log, level)(change.event, **fields)
            signal_ = fields.get("signal")
            if isinstance(signal_, str):
                pool = _pool_of(fields.get("accelerator"))
                self.metrics.signals.labels(signal_, pool).inc()
                if "detection_latency_s" in fields and "clock_skew_s" not in fields:
                    self.metrics.detection_latency.labels(signal_).observe(fields["detection_latency_s"])
            self._queue_event(now.wall, change.event, fields)

    def _policy_changes(self, changes: list[Change], now: Instant) -> None:
        for change in changes:
            self.metrics.policy_reloads.labels(change.event.split(".", 1)[1]).inc()
            level = "error" if change.event == "policy.rejected" else "info"
            getattr(log, level)(change.event, **change.fields)
            self._queue_event(now.wall, change.event, dict(change.fields))

    def _queue_event(self, ts: float, name: str, fields: dict[str, Any]) -> None:
        """Keep an event for the store; while the store is failing, at most
        _MAX_UNSAVED_EVENTS wait in memory, and what does not fit is counted and said."""
        if len(self._pending_events) < _MAX_UNSAVED_EVENTS:
            self._pending_events.append((ts, name, fields))
            return
        self._events_lost += 1
        if self._events_lost in (1, 100) or self._events_lost % 10_000 == 0:
            log.error("store.events_lost", lost_total=self._events_lost,
                      reason=f"the state database has not been writable while {_MAX_UNSAVED_EVENTS} events waited; "
                      "newer events are logged but not stored")

    def _flush(self, everything: bool = False) -> bool:
        table = self.cluster.nodes
        # Changes are written at once; a heartbeat's readings and time at most every
        # _SAVE_HEARTBEATS_EVERY per node, and no more than twice a flush's share of the
        # nodes per flush. One row update per node and second was 50 µs of the loop per
        # heartbeat at 10,000 nodes (bench/scale.py).
        refreshed, heard = table.due_saves(
            float("inf") if everything else time.monotonic(), _SAVE_HEARTBEATS_EVERY,
            len(table) if everything else max(250, int(2 * len(table) * _FLUSH_EVERY / _SAVE_HEARTBEATS_EVERY)))
        dirty = [r for n in {*table.dirty, *refreshed} if (r := table.get(n)) is not None]
        seen = [(n, r.last_seen) for n in heard if n not in table.dirty and (r := table.get(n)) is not None]
        try:
            self.store.save(dirty, self._pending_events, seen, table.forgotten, self._pending_jobs.values())
        except StoreError as exc:
            if not self._store_failing:
                log.error(
                    "store.write_failed",
                    error=str(exc),
                    unsaved_events=len(self._pending_events),
                    action="serving from memory; retrying every second",
                )
            self._store_failing = True
            return False
        if self._store_failing:
            log.info("store.write_recovered", saved_events=len(self._pending_events))
            self._store_failing = False
        table.saved([*table.dirty, *refreshed, *heard])
        table.dirty.clear()
        table.forgotten.clear()
        self._pending_events = []
        self._pending_jobs = {}
        return True

    def _final_flush(self) -> None:
        """The last write before exiting; if the store still cannot be written, say
        exactly what is being lost, since nothing will retry it."""
        try:
            saved = self._flush(everything=True)
        except Exception:
            log.exception("daemon.handler_failed", step="final_flush")
            saved = False
        if not saved:
            log.error("store.unsaved_at_exit", unsaved_events=len(self._pending_events),
                      unsaved_nodes=sorted(self.cluster.nodes.dirty)[:100],
                      events_lost_before=self._events_lost, database=str(self.store.path),
                      effect="these events are in this log only; the node table is rebuilt when agents re-register")


_WARN_EVENTS = {"node.lost", "chip.health_changed", "daemon.stalled", "job.incident", "job.failover_started",
                "job.failed", "job.waiting", "job.ranks_unaccounted", "job.checkpoint_timeout", "node.drained"}


def _pool_of(accelerator: Any) -> str:
    try:
        return Accelerator(accelerator).family
    except ValueError:
        return "unknown"


def _raise_descriptor_limit() -> None:
    """Use the hard limit the service was given (LimitNOFILE): every agent connection is a
    descriptor, and the default soft limit of 1024 is far too few for a large cluster."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20), hard))
        except (ValueError, OSError):
            pass


def _open_descriptors() -> int:
    """How many descriptors this process has open. Linux 6.2 and later give the count as
    the size of /proc/self/fd, in microseconds and without a descriptor; older kernels say
    0 there, and the directory is listed: 9 ms of the loop every second at 10,000 agent
    connections (bench/scale.py), one of the three parts of a once-a-second stall."""
    size = os.stat("/proc/self/fd").st_size
    if size > 0:
        return size
    return len(os.listdir("/proc/self/fd"))


def _release_freed_memory() -> None:
    """Return to the system what libzmq freed when many connections closed. glibc keeps
    those chunks in the I/O thread's malloc arena: measured, 5,000 idle connections took
    18 MB that were still held 30 s after the last was dropped (MALLOC_ARENA_MAX=1 or
    MALLOC_TRIM_THRESHOLD_ did not change that); malloc_trim(0) returns the free pages.
    Without glibc (no malloc_trim) this does nothing."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return
    trim(0)


#: Flags as plain ints: pyzmq's enum arithmetic costs a microsecond a message.
_NOBLOCK = int(zmq.NOBLOCK)
_NOBLOCK_MORE = int(zmq.NOBLOCK | zmq.SNDMORE)
_RCVMORE = int(zmq.RCVMORE)


def _recv_routed(sock: zmq.Socket) -> list[Any]:
    """One delivery of a ROUTER socket: [the peer's routing id (bytes), its frames
    (zmq.Frame)...]; raises zmq.Again when none is waiting. recv_multipart did the same in
    4.3 µs, this in 2.3 (bench/scale.py's 10,000 heartbeats a second): two frames read
    directly, then more only if the peer sent more (a multipart message arrives whole)."""
    parts: list[Any] = [sock.recv(_NOBLOCK), sock.recv(_NOBLOCK, copy=False)]
    while sock.getsockopt(_RCVMORE):
        parts.append(sock.recv(_NOBLOCK, copy=False))
    return parts


def _peer_name(frame: zmq.Frame, node: str | None) -> str:
    """Who sent a frame, for logs and for rate-limiting them: the peer's address when the
    transport knows it (tcp over ZMTP 3), else the node it is, when its connection is a
    registered node's. Anything else shares one bucket: libzmq reads a raw byte stream
    that is not ZMTP 3 as a legacy ZMTP 1.0 peer with a random identity, so keying on
    those would give every garbage connection its own log line."""
    try:
        address = frame.get("Peer-Address")
    except (zmq.ZMQError, AttributeError, KeyError):
        address = None
    if address:
        return address
    if node is not None:
        return f"node:{node}"
    return "unidentified"
