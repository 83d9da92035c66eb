"""The node agent: a DEALER socket to the daemon, probes on a timer, commands in.

One thread and one poll loop. Each turn: read probes when due (→ events for what changed),
register / heartbeat / resend events as `DaemonLink` and `Outbox` say, then wait for a
frame or the next timer. The daemon being away never stops the loop: probes keep running,
events pile up in the outbox, and the agent registers again as soon as it can.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from collections import OrderedDict, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
import zmq

from agents.launcher import RankSpec
from agents.link import Backoff, DaemonLink, Outbox
from agents.monitor import Observation, RankMonitor
from agents.probes import chip_probe_for
from agents.probes.base import ChipProbe, HostProbe, chip_changes
from agents.probes.host import PsutilHostProbe
from agents.probes.parsers import XidEvent
from agents.probes.sim import SimHardware, SimProbe
from agents.probes.vendor import KernelLogWatcher
from agents.watchers.hang import HangLimits
from agents.watchers.logscan import CatalogError, load_catalog
from supervisor.shared import __version__, keys
from supervisor.shared.protocol import (
    Ack,
    ChipStatus,
    Command,
    CommandKind,
    Event,
    Heartbeat,
    HostStatus,
    Message,
    ProtocolError,
    Register,
    Result,
    RunningRank,
    decode,
    encode,
    new_id,
)
from supervisor.shared.sdnotify import Notifier
from supervisor.shared.vocab import Accelerator, Fault, Health, Signal

log = structlog.get_logger()


@dataclass(frozen=True)
class AgentConfig:
    daemon: str
    node_id: str
    accelerator: Accelerator
    chips: int
    work_dir: Path
    probe_interval: float = 5.0
    hang_timeout: float = 300.0
    keys_dir: Path | None = None  # None: no CurveZMQ (--insecure)


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
        self.chip_probe = chip_probe or chip_probe_for(config.accelerator, config.chips, config.work_dir)
        try:
            catalog = load_catalog()
        except (CatalogError, OSError) as exc:
            raise AgentError(f"cannot load the log pattern catalog: {exc}") from exc
        progress = config.work_dir / "progress.sock"
        # AF_UNIX paths are short (107 bytes); a deep work dir gets a loopback port instead.
        endpoint = f"ipc://{progress}" if len(str(progress)) < 100 else "tcp://127.0.0.1:*"
        self.monitor = RankMonitor(config.work_dir / "logs", endpoint, HangLimits(train=config.hang_timeout), catalog)
        self.host_probe = host_probe or PsutilHostProbe(config.work_dir)
        self.instance = new_id()
        self.link = DaemonLink(Backoff())
        self.outbox = Outbox()
        self._seq = 0
        self._stop = False
        self._results: OrderedDict[str, Result] = OrderedDict()
        self._chips: tuple[ChipStatus, ...] = ()
        self._host: HostStatus | None = None
        self._next_probe = 0.0
        self._probe_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="probe")
        # Xid lines only exist on Nvidia nodes; the watcher runs in the probe thread.
        self.kernel_log = KernelLogWatcher() if config.accelerator is Accelerator.NVIDIA else None
        self._pending_xids: deque[tuple[XidEvent, float]] = deque()  # probe thread → loop
        self._kernel_log_problem: str | None = None
        self._probing: Future[tuple[tuple[ChipStatus, ...], HostStatus, float]] | None = None
        self._probing_since = 0.0
        self._dropped_logged = 0
        self._probe_stuck = False
        self._ctx = zmq.Context.instance()
        self._reconnect_at: float | None = None
        self._auth_failures = 0
        self.sock = self._connect()
        # libzmq does not retry a CURVE handshake the daemon refused: watch for that
        # and reconnect ourselves, so that allow-listing this node's key later works.
        self._sock_monitor = self.sock.get_monitor_socket(_HANDSHAKE_FAILURES) if config.keys_dir else None

    def _replace_socket(self) -> None:
        if self._sock_monitor is not None:
            self.sock.disable_monitor()
            self._sock_monitor.close(linger=0)
        self.sock.close(linger=0)
        self.sock = self._connect()
        self._sock_monitor = self.sock.get_monitor_socket(_HANDSHAKE_FAILURES)

    def _on_handshake_failure(self, now: float) -> None:
        from zmq.utils.monitor import recv_monitor_message

        while self._sock_monitor is not None and self._sock_monitor.poll(0):
            recv_monitor_message(self._sock_monitor)
            self._auth_failures += 1
            if self._auth_failures == 1 or self._auth_failures % 60 == 0:
                log.error(
                    "agent.auth_refused",
                    daemon=self.config.daemon,
                    attempts=self._auth_failures,
                    reason="the daemon refused this node's key (not in its agents/ allow-list) or its "
                    "daemon.key does not match the daemon",
                    action="copy keys/agent.key to the daemon's keys/agents/; retrying every 5s",
                )
            self._reconnect_at = now + 5.0

    def _connect(self) -> zmq.Socket:
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
        sock.setsockopt(zmq.ROUTING_ID, self.config.node_id.encode())
        sock.setsockopt(zmq.LINGER, 0)
        # Queue only on a live connection: a heartbeat that cannot go now is stale later.
        sock.setsockopt(zmq.IMMEDIATE, 1)
        sock.setsockopt(zmq.SNDHWM, 1_000)
        sock.setsockopt(zmq.RECONNECT_IVL, 200)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 2_000)
        sock.setsockopt(zmq.HEARTBEAT_IVL, 2_000)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 6_000)
        sock.setsockopt(zmq.MAXMSGSIZE, 4 * 1024 * 1024)
        try:
            sock.connect(self.config.daemon)
        except zmq.ZMQError as exc:
            sock.close()
            raise AgentError(f"cannot connect to daemon endpoint {self.config.daemon}: {exc}") from exc
        return sock

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
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        if self._sock_monitor is not None:
            poller.register(self._sock_monitor, zmq.POLLIN)
        # One read before registering, so the daemon learns the chips at once; nothing
        # needs heartbeating yet, so waiting for a slow tool here costs nothing.
        self._apply_probe(*self._read_probes())
        self._next_probe = time.monotonic() + self.config.probe_interval
        notify = Notifier()
        notify.ready(self._status_line())
        try:
            while not self._stop:
                now = time.monotonic()
                if now >= self._next_probe:
                    self._probe(now)
                self._watch_ranks(now)
                self._talk(now)
                wake = min(self._next_probe, self.link.next_wakeup(), self.outbox.next_due() or float("inf"))
                timeout_ms = max(0, min(250, int((wake - time.monotonic()) * 1000) + 1))
                ready = dict(poller.poll(timeout_ms))
                if self.sock in ready:
                    self._drain()
                if self._sock_monitor is not None and self._sock_monitor in ready:
                    self._on_handshake_failure(time.monotonic())
                if self._reconnect_at is not None and time.monotonic() >= self._reconnect_at:
                    self._reconnect_at = None
                    poller.unregister(self.sock)
                    if self._sock_monitor is not None:
                        poller.unregister(self._sock_monitor)
                    self._replace_socket()
                    poller.register(self.sock, zmq.POLLIN)
                    poller.register(self._sock_monitor, zmq.POLLIN)
                notify.status(self._status_line())
                notify.watchdog(time.monotonic())
                self._note_drops()
        finally:
            notify.stopping()
            notify.close()
            running = sorted({job for job, *_ in self.monitor.running()})
            log.info("agent.stopping", unsent_events=len(self.outbox), jobs_left_running=running)
            self.monitor.close()
            self._probe_pool.shutdown(wait=False, cancel_futures=True)
            self.sock.close(linger=0)

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
        return f"{where}; {len(self._chips)} chips; {ranks} ranks running{queued}"

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
        if self.link.register_due(now):
            msg = Register(
                id=new_id(),
                ts=time.time(),
                node=self.config.node_id,
                accelerator=self.config.accelerator,
                chips=self._chips,
                host=self._host or HostStatus(health=Health.UNKNOWN, reason="not probed yet"),
                agent_version=__version__,
                agent_instance=self.instance,
                hostname=socket.gethostname(),
                pid=os.getpid(),
                running=self._running(),
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
                    chips=self._chips,
                    host=self._host or HostStatus(health=Health.UNKNOWN),
                    running=self._running(),
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
                log.warning("protocol.bad_frame", peer=self.config.daemon, reason=exc.reason, detail=exc.detail)
                continue
            now = time.monotonic()
            if isinstance(msg, Ack):
                self._on_ack(msg, now)
            elif isinstance(msg, Command):
                self.link.last_heard = now
                self._on_command(msg)

    def _on_ack(self, ack: Ack, now: float) -> None:
        outage = None if self.link.lost_at is None else now - self.link.lost_at
        attempts = self.link.register_attempts
        result = self.link.on_ack(ack, now)
        if result == "registered":
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
                detail = self._execute(cmd)
                result = Result(id=new_id(), ts=time.time(), node=self.config.node_id, ref=cmd.id, ok=True, detail=detail)
            except (ValueError, OSError) as exc:
                result = Result(id=new_id(), ts=time.time(), node=self.config.node_id, ref=cmd.id, ok=False, error=str(exc))
            log.info("agent.command", command=cmd.kind.value, command_id=cmd.id, args=cmd.args, ok=result.ok, error=result.error)
            self._results[cmd.id] = result
            while len(self._results) > 256:
                self._results.popitem(last=False)
        self._send(result)

    def _execute(self, cmd: Command) -> dict[str, Any]:
        if cmd.kind is CommandKind.LAUNCH:
            return self._launch(cmd.args)
        if cmd.kind is CommandKind.STOP:
            job = str(cmd.args["job"])
            asked = self.monitor.request_stop(job, float(cmd.args.get("grace", 30.0)))
            if not asked:
                raise ValueError(f"no rank of job {job!r} runs on node {self.config.node_id}")
            return {"node": self.config.node_id, "job": job, "ranks_asked": asked}
        if cmd.kind is CommandKind.INJECT:
            if not isinstance(self.chip_probe, SimProbe):
                raise ValueError(f"node {self.config.node_id} is not simulated ({self.config.accelerator.value})")
            hardware: SimHardware = self.chip_probe.hardware
            fault = Fault(cmd.args["fault"])
            chip = int(cmd.args.get("chip", 0))
            if fault.needs_rank:
                return self._act_out_on_rank(fault, chip)
            if fault in (Fault.HANG, Fault.INTERCONNECT_TIMEOUT) and not any(
                chip in p.spec.chips for p in self.monitor.launcher.ranks.values()
            ):
                raise ValueError(f"no training rank runs on chip {chip} of node {self.config.node_id} to act out {fault.value}")
            state = hardware.apply(fault, chip, int(cmd.args.get("count", 1)))
            return {"node": self.config.node_id, "fault": fault.value, "chip": chip, "chip_state": state,
                    "probe_interval_s": self.config.probe_interval}
        raise ValueError(f"this agent does not handle {cmd.kind.value!r} commands yet")

    # --- training ranks ------------------------------------------------------------

    def _launch(self, args: dict[str, Any]) -> dict[str, Any]:
        """Start a single-node job: `nproc` ranks of `argv`, rank i on chip i."""
        job, nproc = str(args["job"]), int(args.get("nproc", 1))
        argv = [str(a) for a in args["argv"]]
        if not argv or nproc < 1:
            raise ValueError("launch needs a command and at least one rank")
        if self.config.chips and nproc > self.config.chips:
            raise ValueError(f"node {self.config.node_id} has {self.config.chips} chips, not {nproc}")
        port = int(args.get("master_port") or 0) or _free_port()
        ckpt_dir = args.get("ckpt_dir") or str(self.config.work_dir / "checkpoints" / job)
        now = time.monotonic()
        try:
            self._start_ranks(job, nproc, argv, port, ckpt_dir, args, now)
        except OSError as exc:
            self.monitor.request_stop(job, grace=0.0)  # no half-started job left behind
            raise ValueError(f"cannot start {argv[0]!r}: {exc.strerror or exc}") from exc
        log.info("job.ranks_started", job=job, ranks=nproc, argv=argv, ckpt_dir=ckpt_dir,
                 logs=str(self.config.work_dir / "logs" / job))
        return {"node": self.config.node_id, "job": job, "ranks": nproc, "ckpt_dir": ckpt_dir,
                "pids": [pid for j, _, pid, _ in self.monitor.running() if j == job]}

    def _start_ranks(self, job: str, nproc: int, argv: list[str], port: int, ckpt_dir: str,
                     args: dict[str, Any], now: float) -> None:
        for rank in range(nproc):
            self.monitor.launch(
                RankSpec(
                    job=job, rank=rank, local_rank=rank, world_size=nproc, local_world_size=nproc,
                    argv=tuple(argv), master_addr="127.0.0.1", master_port=port,
                    accelerator=self.config.accelerator, chips=(rank,) if self.config.chips else (),
                    node=self.config.node_id, heartbeat=self.monitor.heartbeat_endpoint, ckpt_dir=ckpt_dir,
                    cwd=args.get("cwd"), env={**{str(k): str(v) for k, v in (args.get("env") or {}).items()},
                                              **self._sim_env()},
                ),
                now,
            )

    def _sim_env(self) -> dict[str, str]:
        """Sim ranks learn where their simulated chips are, to act out injected faults."""
        if isinstance(self.chip_probe, SimProbe):
            return {"TRAINGUARD_SIM_CHIPS": str(self.chip_probe.hardware.path)}
        return {}

    def _act_out_on_rank(self, fault: Fault, chip: int) -> dict[str, Any]:
        """A crash: SIGKILL the rank on that chip, as a dying process would end."""
        for (job, rank), process in self.monitor.launcher.ranks.items():
            if chip in process.spec.chips:
                os.kill(process.pid, signal.SIGKILL)
                return {"node": self.config.node_id, "fault": fault.value, "chip": chip, "job": job, "rank": rank,
                        "pid": process.pid}
        raise ValueError(f"no training rank runs on chip {chip} of node {self.config.node_id}")

    def _running(self) -> tuple[RunningRank, ...]:
        return tuple(RunningRank(job=j, rank=r, pid=p, step=s) for j, r, p, s in self.monitor.running())

    def _watch_ranks(self, now: float) -> None:
        for o in self.monitor.tick(now):
            self._report(o)

    def _report(self, o: Observation) -> None:
        """One observation: logged here, and queued for the daemon as an event."""
        name = f"signal.{o.signal.value}"
        log.warning(name, job=o.job or None, rank=o.rank, chip=o.chip, evidence=o.evidence, source=o.source, **o.fields)
        self.outbox.add(
            Event(id=new_id(), ts=time.time(), node=self.config.node_id, name=name, observed_at=o.observed_at,
                  signal=o.signal, chip=o.chip, job=o.job or None, rank=o.rank, evidence=o.evidence[:16_000],
                  fields={"source": o.source, **o.fields})
        )

    # --- probes --------------------------------------------------------------------

    def _probe(self, now: float) -> None:
        """Start a probe read in the worker thread (vendor tools can take seconds, or
        hang until their timeout: the loop must keep heartbeating meanwhile); apply the
        result of the previous one when it is there."""
        if self._probing is not None:
            if not self._probing.done():
                self._next_probe = now + 0.05
                stuck_for = now - self._probing_since
                if stuck_for > _PROBE_STUCK_AFTER and not self._probe_stuck:
                    # A blind probe must not look healthy: the chips become unknown until it returns.
                    self._probe_stuck = True
                    log.error("probe.stuck", probe=self.chip_probe.name, stuck_for_s=round(stuck_for, 1),
                              effect="chips reported unknown until the probe returns")
                    reason = f"probe {self.chip_probe.name} stuck for over {_PROBE_STUCK_AFTER:g}s"
                    self._apply_probe(
                        tuple(ChipStatus(index=c.index, health=Health.UNKNOWN, reason=reason) for c in self._chips),
                        self._host or HostStatus(health=Health.UNKNOWN, reason=reason), time.time())
                return
            self._probe_stuck = False
            chips, host, observed_at = self._probing.result()
            self._probing = None
            self._apply_probe(chips, host, observed_at)
            self._next_probe = now + self.config.probe_interval
            return
        self._probing = self._probe_pool.submit(self._read_probes)
        self._probing_since = now
        self._next_probe = now + 0.05

    def _read_probes(self) -> tuple[tuple[ChipStatus, ...], HostStatus, float]:
        observed_at = time.time()
        if self.kernel_log is not None:
            for xid in self.kernel_log.new_events():
                self._pending_xids.append((xid, time.time()))
        try:
            chips = self.chip_probe.read()
        except Exception as exc:  # a probe bug must not kill the agent, nor look healthy
            log.exception("probe.failed", probe=self.chip_probe.name)
            chips = tuple(ChipStatus(index=c.index, health=Health.UNKNOWN, reason=f"probe failed: {exc!r}") for c in self._chips)
        try:
            host = self.host_probe.read()
        except Exception as exc:
            log.exception("probe.failed", probe="host")
            host = HostStatus(health=Health.UNKNOWN, reason=f"probe failed: {exc!r}")
        return chips, host, observed_at

    def _apply_probe(self, chips: tuple[ChipStatus, ...], host: HostStatus, observed_at: float) -> None:
        blind = self.kernel_log.problem if self.kernel_log is not None else None
        if blind != self._kernel_log_problem:
            if blind:
                log.warning("probe.kernel_log_unreadable", problem=blind,
                            effect="Xid errors in the kernel log are not seen until this is fixed")
            else:
                log.info("probe.kernel_log_readable")
            self._kernel_log_problem = blind
        while self._pending_xids:
            xid, seen_at = self._pending_xids.popleft()
            self._report(Observation(
                Signal.CHIP_ERROR, "", None,
                f"kernel log: NVRM Xid {xid.xid} on {xid.pci_bus_id or 'an unnamed GPU'}: {xid.message}"[:2000],
                seen_at, "dmesg",
                {"xid": xid.xid, "pci_bus_id": xid.pci_bus_id, "health": xid.health.value},
            ))
        first = not self._chips and self._host is None
        if not first:
            for change in chip_changes(self._chips, chips):
                self._chip_changed(change.before, change.after, observed_at)
            if self._host is not None and host.health is not self._host.health:
                log.warning("host.health_changed", previous=self._host.health.value, health=host.health.value, evidence=host.reason)
        self._chips, self._host = chips, host
        # The no-heartbeat hang check rides on the probe interval (it needs chip use).
        utilisation = {c.index: c.utilisation_pct for c in chips}  # AI Core % / GPU %, None if unread
        for o in self.monitor.check_quiet(utilisation, self.config.probe_interval):
            self._report(o)

    def _chip_changed(self, before: ChipStatus | None, after: ChipStatus | None, observed_at: float) -> None:
        if after is None:
            return
        previous = before.health if before else None
        signal_ = _SIGNAL_FOR_HEALTH.get(after.health)
        evidence = f"chip {after.index} health {after.health.value}" + (f": {after.reason}" if after.reason else "")
        fields = {
            "previous": previous.value if previous else None,
            "health": after.health.value,
            "error_codes": list(after.error_codes),
            "ecc_uncorrectable": after.ecc_uncorrectable,
            "probe": self.chip_probe.name,
        }
        worse = previous is None or after.health.rank > previous.rank
        (log.warning if worse else log.info)("chip.health_changed", chip=after.index, evidence=evidence, **fields)
        self.outbox.add(
            Event(
                id=new_id(),
                ts=time.time(),
                node=self.config.node_id,
                name="chip.health_changed",
                observed_at=observed_at,
                signal=signal_,
                chip=after.index,
                evidence=evidence,
                fields={**fields, "status": after},
            )
        )


#: A probe read in flight longer than this is stuck (tools time out at 10 s each).
_PROBE_STUCK_AFTER = 60.0

_HANDSHAKE_FAILURES = (zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                       | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)

_SIGNAL_FOR_HEALTH = {
    Health.WARNING: Signal.CHIP_DEGRADED,
    Health.ALARM: Signal.CHIP_ERROR,
    Health.CRITICAL: Signal.CHIP_ERROR,
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
