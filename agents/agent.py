"""The node agent: a DEALER socket to the daemon, probes on a timer, commands in.

One thread and one poll loop. Each turn: read probes when due (→ events for what changed),
watch the ranks, register / heartbeat / resend events as `DaemonLink` and `Outbox` say,
then wait for a frame or the next timer. The daemon being away never stops the loop:
probes keep running, events pile up in the outbox, and the agent registers again as soon
as it can. Every step of a turn is guarded: one that raises is logged as
`agent.handler_failed` with its traceback, counted (the count rides on heartbeats into
the daemon's metrics), and the loop goes on.

The pieces: `health.NodeHealth` (probes → chip events), `monitor.RankMonitor` (ranks →
signals and rank events), `commands.CommandHandlers` (typed commands → results), `link`
(when to talk). At start, the ranks a previous agent left running (`ranks.json`) are
adopted, and those that ended meanwhile reported.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import structlog
import zmq
from zmq.utils.monitor import recv_monitor_message

from agents.commands import CommandHandlers, Refused
from agents.health import NodeHealth
from agents.link import Backoff, DaemonLink, Outbox
from agents.monitor import Observation, RankEvent, RankMonitor
from agents.probes import chip_probe_for
from agents.probes.base import ChipProbe, HostProbe
from agents.probes.host import PsutilHostProbe
from agents.probes.vendor import KernelLogWatcher
from agents.rankstate import RankStateError
from agents.rankstate import load as load_ranks
from agents.watchers.hang import HangLimits
from agents.watchers.logscan import CatalogError, load_catalog
from supervisor.shared import __version__, keys
from supervisor.shared.defaults import DEFAULT_HANG_TIMEOUT, DEFAULT_PROBE_INTERVAL
from supervisor.shared.protocol import (
    Ack,
    Command,
    Event,
    Goodbye,
    Heartbeat,
    HostStatus,
    Message,
    ProtocolError,
    Register,
    Result,
    RunningRank,
    command_ref,
    decode,
    encode,
    new_id,
)
from supervisor.shared.sdnotify import Notifier
from supervisor.shared.vocab import Accelerator, Health

log = structlog.get_logger()


@dataclass(frozen=True)
class AgentConfig:
    daemon: str
    node_id: str
    accelerator: Accelerator
    chips: int
    work_dir: Path
    probe_interval: float = DEFAULT_PROBE_INTERVAL
    hang_timeout: float = DEFAULT_HANG_TIMEOUT
    keys_dir: Path | None = None  # None: no CurveZMQ (--insecure)
    address: str | None = None  # where other nodes reach this node's ranks (MASTER_ADDR)


class AgentError(Exception):
    """A reason the agent cannot start, written for the operator."""


class Agent:
    def __init__(self, config: AgentConfig, chip_probe: ChipProbe | None = None, host_probe: HostProbe | None = None) -> None:
        self.config = config
        try:
            config.work_dir.mkdir(parents=True, exist_ok=True)
            probe_test = config.work_dir / ".trainguard-write-test"
            probe_test.write_bytes(b"")
            probe_test.unlink()
        except OSError as exc:
            raise AgentError(f"work dir {config.work_dir} is not writable: {exc.strerror or exc}") from exc
        chip_probe = chip_probe or chip_probe_for(config.accelerator, config.chips, config.work_dir)
        try:
            catalog = load_catalog()
        except (CatalogError, OSError) as exc:
            raise AgentError(f"cannot load the log pattern catalog: {exc}") from exc
        endpoint = progress_endpoint(config.work_dir)
        self.monitor = RankMonitor(config.work_dir / "logs", endpoint, HangLimits(train=config.hang_timeout), catalog,
                                   state_path=config.work_dir / "ranks.json")
        self.instance = new_id()
        self.link = DaemonLink(Backoff())
        self.outbox = Outbox()
        # Xid lines only exist on Nvidia nodes; the watcher runs in the probe thread.
        kernel_log = KernelLogWatcher() if config.accelerator is Accelerator.NVIDIA else None
        self.health = NodeHealth(config.node_id, chip_probe, host_probe or PsutilHostProbe(config.work_dir), kernel_log,
                                 self.monitor, config.probe_interval, self.outbox.add, self._report)
        self.commands = CommandHandlers(config.node_id, config.accelerator, config.chips, config.work_dir,
                                        config.probe_interval, self.monitor, chip_probe)
        self._adopt()
        #: Loop steps that raised, by step: logged, counted, sent on heartbeats.
        self.handler_failures: Counter[str] = Counter()
        self._seq = 0
        self._stop = False
        self._results: OrderedDict[str, Result] = OrderedDict()
        self._dropped_logged = 0
        self._ctx = zmq.Context.instance()
        self._reconnect_at: float | None = None
        self._auth_failures = 0
        # libzmq does not retry a handshake the daemon refused: watch for that and
        # reconnect ourselves, so that allow-listing this node's key later works, and so
        # that an agent without a key facing a secure daemon says so.
        self.sock, self._sock_monitor = self._connect()
        self._poller = self._make_poller()

    @property
    def chip_probe(self) -> ChipProbe:
        return self.health.chip_probe

    def _replace_socket(self) -> None:
        self.sock.disable_monitor()
        self._sock_monitor.close(linger=0)
        self.sock.close(linger=0)
        self.sock, self._sock_monitor = self._connect()
        self._poller = self._make_poller()

    def _on_handshake_failure(self, now: float) -> None:
        while self._sock_monitor.poll(0):
            event = recv_monitor_message(self._sock_monitor)
            reason = ("the daemon refused this node's key (not in its agents/ allow-list) or its daemon.key does "
                      "not match the daemon" if self.config.keys_dir is not None else
                      "this agent runs without keys (--insecure) and the daemon requires CurveZMQ authentication")
            self._auth_refused(now, reason, f"handshake failed ({_event_name(event.get('event'))})")

    def _auth_refused(self, now: float, reason: str, how: str) -> None:
        self._auth_failures += 1
        if self._auth_failures == 1 or self._auth_failures % 60 == 0:
            action = ("copy keys/agent.key to the daemon's keys/agents/NODE.key; retrying every 5s"
                      if self.config.keys_dir is not None else
                      "give this agent a key pair and the daemon's public key (README: Security); retrying every 5s")
            log.error("agent.auth_refused", daemon=self.config.daemon, attempts=self._auth_failures, how=how,
                      reason=reason, action=action)
        self._reconnect_at = now + 5.0

    def _connect(self) -> tuple[zmq.Socket, zmq.Socket]:
        """The DEALER socket and its handshake-failure monitor, attached before connecting
        (a handshake refused at once would otherwise go unseen)."""
        sock = self._ctx.socket(zmq.DEALER)
        if self.config.keys_dir is not None:
            try:
                public, secret = keys.load_pair(self.config.keys_dir, "agent")
                server = keys.load_public(self.config.keys_dir / "daemon.key")
            except keys.KeyError_ as exc:
                sock.close()
                raise AgentError(f"{exc}; or pass --insecure on a test cluster") from exc
            sock.setsockopt(zmq.CURVE_PUBLICKEY, public)
            sock.setsockopt(zmq.CURVE_SECRETKEY, secret)
            sock.setsockopt(zmq.CURVE_SERVERKEY, server)
        # No ROUTING_ID: the daemon knows this node by the key it authenticated with and
        # the connection it registered from, never by a name a peer picks for itself.
        sock.setsockopt(zmq.LINGER, 0)
        # Queue only on a live connection: a heartbeat that cannot go now is stale later.
        sock.setsockopt(zmq.IMMEDIATE, 1)
        sock.setsockopt(zmq.SNDHWM, 1_000)
        sock.setsockopt(zmq.RECONNECT_IVL, 200)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 2_000)
        sock.setsockopt(zmq.HEARTBEAT_IVL, 2_000)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 6_000)
        sock.setsockopt(zmq.MAXMSGSIZE, 4 * 1024 * 1024)
        monitor = sock.get_monitor_socket(_HANDSHAKE_FAILURES)
        try:
            sock.connect(self.config.daemon)
        except zmq.ZMQError as exc:
            sock.disable_monitor()
            monitor.close(linger=0)
            sock.close()
            raise AgentError(f"cannot connect to daemon endpoint {self.config.daemon}: {exc}") from exc
        return sock, monitor

    # --- main loop -----------------------------------------------------------------

    def request_stop(self, *_: Any) -> None:
        self._stop = True

    def run(self) -> None:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        structlog.contextvars.bind_contextvars(node=self.config.node_id)
        if self.config.keys_dir is None:
            log.warning("auth.insecure", effect="talking to the daemon without CurveZMQ: no authentication, no encryption")
        log.info(
            "agent.started",
            version=__version__,
            instance=self.instance,
            daemon=self.config.daemon,
            accelerator=self.config.accelerator.value,
            chips=self.config.chips,
            chip_probe=self.chip_probe.name,
            work_dir=str(self.config.work_dir),
            pid=os.getpid(),
        )
        self._guarded("probe", self.health.first_read, time.monotonic())
        notify = Notifier()
        notify.ready(self._status_line())
        try:
            while not self._stop:
                if self._turn():
                    # Only a turn that polled the socket pings the watchdog.
                    notify.watchdog(time.monotonic())
                self._guarded("status", lambda: notify.status(self._status_line()))
        finally:
            notify.stopping()
            notify.close()
            self._say_goodbye()
            running = sorted({job for job, *_ in self.monitor.running()})
            log.info("agent.stopping", unsent_events=len(self.outbox), jobs_left_running=running)
            self.commands.standbys.close()
            self.monitor.close()
            self.health.close()
            self.sock.close(linger=0)

    def _turn(self) -> bool:
        now = time.monotonic()
        self._guarded("probe", self.health.due, now)
        self._guarded("ranks", self._watch_ranks, now)
        self._guarded("talk", self._talk, now)
        wake = min(self.health.next_probe, self.link.next_wakeup(), self.outbox.next_due() or float("inf"))
        timeout_ms = max(0, min(250, int((wake - time.monotonic()) * 1000) + 1))
        try:
            ready = dict(self._poller.poll(timeout_ms))
        except zmq.ZMQError:
            log.exception("agent.handler_failed", step="poll")
            self.handler_failures["poll"] += 1
            return False
        if self.monitor.wake_fd in ready:
            self.monitor.drain_wake()  # a rank printed or ended: the next turn looks at once
        if self.sock in ready:
            self._guarded("receive", self._drain)
        if self._sock_monitor in ready:
            self._guarded("handshake", self._on_handshake_failure, time.monotonic())
        if self._reconnect_at is not None and time.monotonic() >= self._reconnect_at:
            self._reconnect_at = None
            self._guarded("reconnect", self._replace_socket)
        self._guarded("drops", self._note_drops)
        return True

    def _make_poller(self) -> zmq.Poller:
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        poller.register(self._sock_monitor, zmq.POLLIN)
        poller.register(self.monitor.wake_fd, zmq.POLLIN)
        return poller

    def _guarded(self, step: str, fn: Callable[..., Any], *args: Any) -> bool:
        """One step of a turn; a failure is logged with its traceback, counted, and the
        loop goes on (a bug in one handler must not take a node's agent down)."""
        try:
            fn(*args)
            return True
        except Exception:
            self.handler_failures[step] += 1
            log.exception("agent.handler_failed", step=step, failures=self.handler_failures[step])
            return False

    def _say_goodbye(self) -> None:
        """A clean stop tells the daemon, so the node is `left`, not `lost`."""
        if not self.link.registered:
            return
        try:
            self.sock.send(encode(Goodbye(id=new_id(), ts=time.time(), node=self.config.node_id,
                                          agent_instance=self.instance, reason="agent stopped (SIGTERM)")), zmq.NOBLOCK)
            # LINGER is 0: give the frame a moment on the wire before the socket closes.
            self.sock.setsockopt(zmq.LINGER, 500)
        except zmq.ZMQError:
            pass

    def _note_drops(self) -> None:
        if self.outbox.dropped != self._dropped_logged:
            log.error("agent.events_dropped", dropped_total=self.outbox.dropped,
                      reason=f"the outbox holds at most {self.outbox.capacity} unacknowledged events and the "
                      "daemon has been away; the oldest were dropped")
            self._dropped_logged = self.outbox.dropped

    def _status_line(self) -> str:
        ranks = len(self.monitor.running())
        if self.link.registered:
            where = f"registered with {self.config.daemon}"
        else:
            where = f"not registered with {self.config.daemon} (trying)"
        queued = f", {len(self.outbox)} events queued" if len(self.outbox) else ""
        return f"{where}; {len(self.health.chips)} chips; {ranks} ranks running{queued}"

    def _talk(self, now: float) -> None:
        silent = self.link.check_silence(now)
        if silent is not None:
            log.warning(
                "agent.daemon_unreachable",
                silent_for_s=round(silent, 1),
                daemon=self.config.daemon,
                action="training continues; registering again with backoff",
            )
            self.outbox.unsend_all()
        host = self.health.host or HostStatus(health=Health.UNKNOWN, reason="not probed yet")
        if self.link.register_due(now):
            msg = Register(
                id=new_id(),
                ts=time.time(),
                node=self.config.node_id,
                accelerator=self.config.accelerator,
                chips=self.health.chips,
                host=host,
                agent_version=__version__,
                agent_instance=self.instance,
                hostname=socket.gethostname()[:256],
                pid=os.getpid(),
                running=self._running(),
                address=(self.config.address or socket.gethostname())[:256],
            )
            self.link.register_sent(msg.id, now, self._send(msg))
        if self.link.heartbeat_due(now):
            self._seq += 1
            self._send(
                Heartbeat(
                    id=new_id(),
                    ts=time.time(),
                    node=self.config.node_id,
                    seq=self._seq,
                    agent_instance=self.instance,
                    chips=self.health.chips,
                    host=host,
                    running=self._running(),
                    handler_failures=sum(self.handler_failures.values()),
                )
            )
            self.link.heartbeat_sent(now)
        if self.link.registered:
            for event in self.outbox.due(now):
                if not self._send(event):
                    break
                self.outbox.mark_sent(event.id, now)

    def _send(self, msg: Message) -> bool:
        try:
            self.sock.send(encode(msg), zmq.NOBLOCK)
            return True
        except zmq.Again:
            return False  # no live connection (IMMEDIATE) or queue full: caller retries

    def _drain(self) -> None:
        while True:
            try:
                frame = self.sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                msg = decode(frame)
            except ProtocolError as exc:
                ref = command_ref(frame)
                if ref is not None:  # a command we cannot read: refuse it, naming the field
                    self._answer(ref, Result(id=new_id(), ts=time.time(), node=self.config.node_id, ref=ref, ok=False,
                                             error=f"malformed command: {exc.detail}"))
                log.warning("protocol.bad_frame", peer=self.config.daemon, reason=exc.reason, detail=exc.detail)
                continue
            now = time.monotonic()
            if isinstance(msg, Ack):
                self._on_ack(msg, now)
            elif isinstance(msg, Command):
                self.link.last_heard = now
                self._on_command(msg)

    def _on_ack(self, ack: Ack, now: float) -> None:
        if not ack.ok and ack.error == "not_authorised":
            self.link.last_heard = now
            self._auth_refused(now, str(ack.detail.get("reason") or "the daemon refused this node's key"),
                               "the daemon refused a message")
            return
        outage = None if self.link.lost_at is None else now - self.link.lost_at
        attempts = self.link.register_attempts
        result = self.link.on_ack(ack, now)
        if result == "registered":
            self._auth_failures = 0
            log.info(
                "agent.registered",
                daemon_instance=self.link.daemon_instance,
                heartbeat_interval_s=self.link.heartbeat_interval,
                attempts=attempts,
                outage_s=round(outage, 2) if outage is not None else None,
                unsent_events=len(self.outbox),
            )
            self.link.lost_at = None
        elif result == "unregistered":
            log.warning(
                "agent.reregistering",
                reason="the daemon does not know this agent (it restarted or declared the node lost)",
            )
            self.outbox.unsend_all()
        elif ack.ok:
            self.outbox.acked(ack.ref)

    # --- commands ------------------------------------------------------------------

    def _on_command(self, cmd: Command) -> None:
        result = self._results.get(cmd.id)
        if result is None:  # a repeated id gets the first answer, not a second action
            try:
                detail = self.commands.execute(cmd.args)
                result = Result(id=new_id(), ts=time.time(), node=self.config.node_id, ref=cmd.id, ok=True, detail=detail)
            except Refused as exc:
                result = Result(id=new_id(), ts=time.time(), node=self.config.node_id, ref=cmd.id, ok=False,
                                error=str(exc)[:4000])
            except Exception as exc:  # a bug in a handler: refuse, say so, keep going
                self.handler_failures["command"] += 1
                log.exception("agent.handler_failed", step="command", command=cmd.kind, command_id=cmd.id)
                result = Result(id=new_id(), ts=time.time(), node=self.config.node_id, ref=cmd.id, ok=False,
                                error=f"the agent failed to carry out {cmd.kind!r}: {type(exc).__name__}: {exc}"[:4000])
            log.info("agent.command", command=cmd.kind, command_id=cmd.id, ok=result.ok, error=result.error)
        self._answer(cmd.id, result)

    def _answer(self, ref: str, result: Result) -> None:
        self._results[ref] = result
        while len(self._results) > 256:
            self._results.popitem(last=False)
        self._send(result)

    # --- training ranks ------------------------------------------------------------

    def _adopt(self) -> None:
        """Take over the ranks the previous agent on this node left running."""
        path = self.config.work_dir / "ranks.json"
        try:
            state = load_ranks(path)
        except RankStateError as exc:
            kept = path.with_name("ranks.json.damaged")
            path.replace(kept)
            log.error("agent.ranks_state_damaged", path=str(path), kept_as=str(kept), error=str(exc),
                      effect="ranks a previous agent started are not adopted; they keep running unwatched",
                      action="find them with `ps` (their command line starts with `-m agents.rankwrap`)")
            return
        if not state.ranks:
            self.monitor.launcher.attempts.update(state.attempts)
            return
        adopted = self.monitor.adopt(state, self.config.accelerator, time.monotonic())
        log.info("agent.ranks_adopted", adopted=[(p.spec.job, p.spec.attempt, p.spec.rank, p.pid) for p in adopted],
                 ended_meanwhile=len(state.ranks) - len(adopted))

    def _running(self) -> tuple[RunningRank, ...]:
        return tuple(RunningRank(job=r.job, rank=r.rank, pid=r.pid, step=r.step, attempt=r.attempt, loss=r.loss)
                     for r in self.monitor.running())

    def _watch_ranks(self, now: float) -> None:
        for o in self.monitor.tick(now):
            self._report(o)
        for e in self.monitor.events():
            self._rank_event(e)
        self._keep_standbys()
        interval = self.commands.probe_interval_now()
        if interval != self.health.probe_interval:
            log.info("agent.probe_interval", probe_interval_s=interval, was_s=self.health.probe_interval)
            self.health.probe_interval = interval
            self.health.next_probe = min(self.health.next_probe, now + interval)

    def _keep_standbys(self) -> None:
        """Start a job's missing warm standbys once all its ranks here have stepped (not
        while they start: a standby's import would slow them), a spare node's at once
        (the daemon asks once the job trains), and reap ended ones."""
        standbys = self.commands.standbys
        standbys.poll()
        if not standbys.wanted:
            return
        running: dict[str, list[int | None]] = {}
        for r in self.monitor.running():
            running.setdefault(r.job, []).append(r.step)
        for job in list(standbys.wanted):
            steps = running.get(job)
            if (steps and all(s for s in steps)) or (not steps and job in standbys.spares):
                standbys.refill(job)

    def _rank_event(self, e: RankEvent) -> None:
        """A rank's lifecycle event: logged here, queued for the daemon."""
        # A stalled job is a warning: on-call reads it while the daemon names the culprit.
        level = log.warning if e.name == "hang.observed" else log.info
        level(e.name, job=e.job, rank=e.rank, attempt=e.attempt, evidence=e.evidence,
              **({k: v for k, v in e.fields.items() if k != "ranks"} if e.name == "hang.observed" else e.fields))
        self.outbox.add(
            Event(id=new_id(), ts=time.time(), node=self.config.node_id, name=e.name, observed_at=e.observed_at,
                  job=e.job, rank=e.rank, attempt=e.attempt, evidence=e.evidence[:16_000], fields=dict(e.fields))
        )

    def _report(self, o: Observation) -> None:
        """One observation: logged here, and queued for the daemon as an event."""
        name = f"signal.{o.signal.value}"
        log.warning(name, job=o.job or None, rank=o.rank, chip=o.chip, evidence=o.evidence, source=o.source, **o.fields)
        self.outbox.add(
            Event(id=new_id(), ts=time.time(), node=self.config.node_id, name=name, observed_at=o.observed_at,
                  signal=o.signal, chip=o.chip, job=o.job or None, rank=o.rank, evidence=o.evidence[:16_000],
                  fields={"source": o.source, **o.fields}, attempt=o.attempt)
        )


def progress_endpoint(work_dir: Path) -> str:
    """Where the ranks' heartbeat() reaches this agent: an ipc socket whose path is the
    same after an agent restart, so that ranks it adopts keep reporting. AF_UNIX paths
    are short (107 bytes): a deep work dir gets a private short directory instead, named
    by a hash of the work dir (never a random port, which a restarted agent would lose)."""
    path = work_dir / "progress.sock"
    if len(str(path)) < 100:
        return f"ipc://{path}"
    import hashlib
    import tempfile

    private = Path(tempfile.gettempdir()) / f"trainguard-{os.getuid()}"
    private.mkdir(mode=0o700, exist_ok=True)
    st = private.lstat()
    if st.st_uid != os.getuid() or st.st_mode & 0o077 or not private.is_dir() or private.is_symlink():
        # Someone else's directory in a shared /tmp: never put our socket there.
        raise AgentError(f"{private} is not a private directory of this user; give a shorter --work-dir")
    digest = hashlib.sha256(str(work_dir.resolve()).encode()).hexdigest()[:16]
    return f"ipc://{private / f'progress-{digest}.sock'}"


_HANDSHAKE_FAILURES = (zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                       | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)


def _event_name(event: Any) -> str:
    names = {zmq.EVENT_HANDSHAKE_FAILED_AUTH: "refused by the daemon's authentication",
             zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "security mechanisms do not match",
             zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "no detail"}
    return names.get(event, str(event))
