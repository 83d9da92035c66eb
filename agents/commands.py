"""What the agent does when the daemon asks: one handler per command type.

Commands arrive decoded and validated (`supervisor.shared.protocol`: `InjectArgs`, and
the job commands `StartRanksArgs`, `StopRanksArgs`,
`CheckpointArgs`), so nothing here re-parses a dict. A handler either returns the
Result's detail or raises `Refused` with a sentence for the operator; anything else it
raises is a bug, which the agent logs as `agent.handler_failed` and reports as a refusal.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path
from typing import Any, Callable

import structlog

from agents.launcher import RankSpec
from agents.monitor import RankMonitor
from agents.probes.base import ChipProbe
from agents.probes.sim import SimHardware, SimProbe
from agents.rankstate import AttemptRecord
from agents.standby import Blueprint, Standbys
from agents.watchers.hang import HangLimits
from supervisor.shared.paths import PathEscape, inside
from supervisor.shared.protocol import (
    MAX_RANKS_PER_NODE,
    AnyCommandArgs,
    CheckpointArgs,
    InjectArgs,
    KeepStandbysArgs,
    StartRanksArgs,
    StopRanksArgs,
)
from supervisor.shared.vocab import Accelerator, Fault

log = structlog.get_logger()


class Refused(Exception):
    """The command cannot be carried out; the message says why, for the operator."""


class CommandHandlers:
    def __init__(self, node: str, accelerator: Accelerator, chips: int, work_dir: Path, probe_interval: float,
                 monitor: RankMonitor, chip_probe: ChipProbe, standbys: Standbys | None = None) -> None:
        self.node = node
        self.accelerator = accelerator
        self.chips = chips
        self.work_dir = work_dir
        self.probe_interval = probe_interval
        self.monitor = monitor
        self.chip_probe = chip_probe
        self.standbys = standbys if standbys is not None else Standbys(work_dir / "logs")
        self._handlers: dict[type, Callable[[Any], dict[str, Any]]] = {
            InjectArgs: self.inject,
            StartRanksArgs: self.start_ranks,
            StopRanksArgs: self.stop_ranks,
            CheckpointArgs: self.checkpoint,
            KeepStandbysArgs: self.keep_standbys,
        }
        #: Jobs that set the node's probe interval (their policy's detect section).
        self._probe_intervals: dict[str, float] = {}

    def execute(self, args: AnyCommandArgs) -> dict[str, Any]:
        handler = self._handlers.get(type(args))
        if handler is None:
            raise Refused(f"this agent does not handle {args.kind!r} commands")
        return handler(args)

    # --- training ranks --------------------------------------------------------------

    # --- job attempts (the daemon's jobs) -----------------------------------------------

    def start_ranks(self, args: StartRanksArgs) -> dict[str, Any]:
        """Start this node's ranks of one attempt. Idempotent by (job, attempt); an older
        attempt's ranks still here are SIGKILLed first; a newer one known means this
        command is stale."""
        known = self.monitor.launcher.attempts.get(args.job)
        newest = max([known.attempt if known else 0, *self.monitor.attempts_running(args.job)])
        if newest > args.attempt:
            raise Refused(f"stale command: node {self.node} already runs attempt {newest} of job {args.job!r}, "
                          f"not attempt {args.attempt}")
        if known is not None and known.attempt == args.attempt:
            return self._attempt_detail(args, known, already=True)
        if args.cwd is not None and not Path(args.cwd).is_dir():
            raise Refused(f"working directory {args.cwd!r} does not exist on node {self.node}")
        if len(args.ranks) > (min(self.chips, MAX_RANKS_PER_NODE) if self.chips else MAX_RANKS_PER_NODE):
            raise Refused(f"node {self.node} cannot run {len(args.ranks)} ranks of a job")
        bad = sorted({c for a in args.ranks for c in a.chips if c >= self.chips})
        if bad:
            raise Refused(f"node {self.node} has {self.chips} chips; chips {bad} do not exist here")
        try:
            logs = inside(self.work_dir / "logs", args.job, f"attempt-{args.attempt}")
        except PathEscape as exc:
            raise Refused(str(exc)) from None
        killed = self.monitor.kill_older(args.job, args.attempt)
        port = args.master_port or _free_port()
        limits = self._limits(args)
        specs = [
            RankSpec(job=args.job, rank=a.rank, local_rank=a.local_rank, world_size=args.world_size,
                     local_world_size=args.local_world_size, argv=tuple(args.argv), master_addr=args.master_addr,
                     master_port=port, accelerator=self.accelerator, chips=tuple(a.chips), node=self.node,
                     heartbeat=self.monitor.heartbeat_endpoint, ckpt_dir=args.ckpt_dir, cwd=args.cwd,
                     env={**args.env, **self._sim_env()}, attempt=args.attempt,
                     hang_limits=(limits.train, limits.checkpoint, limits.eval) if limits else None)
            for a in args.ranks
        ]
        # A restart of a job with warm standbys hands them their ranks: no cold start.
        warm = self.standbys.take(specs) if args.standby else {}
        try:
            processes = self.monitor.launch_many(specs, time.monotonic(), warm)
        except OSError as exc:
            self.monitor.request_stop(args.job, 0.0, args.attempt)  # no half-started attempt left behind
            raise Refused(f"cannot start {args.argv[0]!r} on node {self.node}: {exc.strerror or exc}") from exc
        record = AttemptRecord(args.attempt, port, {p.spec.rank: p.pid for p in processes})
        self.monitor.launcher.note_attempt(args.job, record)
        if args.probe_interval is not None:
            self._probe_intervals[args.job] = args.probe_interval
        else:
            self._probe_intervals.pop(args.job, None)
        if args.standby:
            self.standbys.want(specs[0], len(specs))  # started once this attempt trains
        else:
            self.standbys.retire(args.job)
        log.info("job.attempt_started", job=args.job, attempt=args.attempt, ranks=[a.rank for a in args.ranks],
                 master_port=port, killed_older=killed, logs=str(logs), warm=len(warm))
        return {**self._attempt_detail(args, record, already=False), "killed_older": killed, "logs": str(logs)}

    def _attempt_detail(self, args: StartRanksArgs, record: AttemptRecord, already: bool) -> dict[str, Any]:
        # Free-form maps on the wire have string keys: pids are keyed by str(rank).
        return {"node": self.node, "job": args.job, "attempt": record.attempt,
                "pids": {str(r): p for r, p in sorted(record.pids.items())}, "master_port": record.master_port,
                "already": already}

    def _limits(self, args: StartRanksArgs) -> HangLimits | None:
        given = (args.hang_timeout, args.checkpoint_hang_timeout, args.eval_hang_timeout)
        if all(v is None for v in given):
            return None
        own = self.monitor.hang.limits
        return HangLimits(train=own.train if args.hang_timeout is None else args.hang_timeout,
                          checkpoint=own.checkpoint if args.checkpoint_hang_timeout is None
                          else args.checkpoint_hang_timeout,
                          eval=own.eval if args.eval_hang_timeout is None else args.eval_hang_timeout)

    def stop_ranks(self, args: StopRanksArgs) -> dict[str, Any]:
        """SIGTERM now, SIGKILL after the grace (in the loop); answers at once. Nothing to
        stop is no error: the daemon resends after its own restart."""
        asked = self.monitor.request_stop(args.job, args.grace, args.attempt)
        retired = self.standbys.retire(args.job) if args.final else 0
        return {"node": self.node, "job": args.job, "attempt": args.attempt, "ranks_asked": asked,
                "standbys_ended": retired}

    def keep_standbys(self, args: KeepStandbysArgs) -> dict[str, Any]:
        """Standbys for a job whose ranks run elsewhere: this node is where a restart or
        a failover would take it. Built as `start_ranks` builds a rank's blueprint, so
        that its ranks take them."""
        if self.monitor.attempts_running(args.job) or (args.job in self.standbys.wanted
                                                        and args.job not in self.standbys.spares):
            # The job's ranks run (or ran) here: their own standbys are kept already.
            return {"node": self.node, "job": args.job, "standbys": "own"}
        if args.count == 0:
            ended = self.standbys.retire(args.job)
            log.info("standby.spares_released", job=args.job, ended=ended)
            return {"node": self.node, "job": args.job, "standbys_ended": ended}
        if args.cwd is not None and not Path(args.cwd).is_dir():
            raise Refused(f"working directory {args.cwd!r} does not exist on node {self.node}")
        count = min(args.count, self.chips or MAX_RANKS_PER_NODE)
        blueprint = Blueprint.make(args.job, args.argv, args.cwd, {**args.env, **self._sim_env()}, args.ckpt_dir,
                                   self.accelerator.value)
        if self.standbys.wanted.get(args.job) != (blueprint, count):
            log.info("standby.spares_wanted", job=args.job, count=count)
        self.standbys.want_spares(blueprint, count)
        return {"node": self.node, "job": args.job, "standbys": count}

    def checkpoint(self, args: CheckpointArgs) -> dict[str, Any]:
        """SIGUSR1 to the attempt's rank processes; the ranks agree on the step."""
        signalled = self.monitor.signal_ranks(args.job, args.attempt, signal.SIGUSR1)
        return {"node": self.node, "job": args.job, "attempt": args.attempt, "ranks_signalled": signalled}

    def probe_interval_now(self) -> float:
        """The node's probe interval: the shortest a running job asked for, else its own."""
        running = {r.job for r in self.monitor.running()}
        for job in [j for j in self._probe_intervals if j not in running]:
            del self._probe_intervals[job]
        return min(self._probe_intervals.values(), default=self.probe_interval)

    # --- simulated faults --------------------------------------------------------------

    def inject(self, args: InjectArgs) -> dict[str, Any]:
        if not isinstance(self.chip_probe, SimProbe):
            raise Refused(f"node {self.node} is not simulated ({self.accelerator.value})")
        hardware: SimHardware = self.chip_probe.hardware
        if args.chip >= hardware.chips:
            raise Refused(f"node {self.node} has chips 0..{hardware.chips - 1}, not {args.chip}")
        if args.fault.needs_rank:
            return self._act_out_on_rank(args.fault, args.chip)
        if args.fault in (Fault.HANG, Fault.INTERCONNECT_TIMEOUT) and not any(
            args.chip in p.spec.chips for p in self.monitor.launcher.ranks.values()
        ):
            raise Refused(f"no training rank runs on chip {args.chip} of node {self.node} to act out {args.fault.value}")
        try:
            state = hardware.apply(args.fault, args.chip, args.count)
        except ValueError as exc:
            raise Refused(str(exc)) from None
        return {"node": self.node, "fault": args.fault.value, "chip": args.chip, "chip_state": state,
                "probe_interval_s": self.probe_interval}

    def _act_out_on_rank(self, fault: Fault, chip: int) -> dict[str, Any]:
        """A crash: SIGKILL the rank on that chip, as a dying process would end."""
        for (job, rank), process in self.monitor.launcher.ranks.items():
            if chip in process.spec.chips:
                os.kill(process.pid, signal.SIGKILL)
                return {"node": self.node, "fault": fault.value, "chip": chip, "job": job, "rank": rank,
                        "pid": process.pid}
        raise Refused(f"no training rank runs on chip {chip} of node {self.node}")

    def _sim_env(self) -> dict[str, str]:
        """Sim ranks learn where their simulated chips are, to act out injected faults."""
        if isinstance(self.chip_probe, SimProbe):
            return {"TRAINGUARD_SIM_CHIPS": str(self.chip_probe.hardware.path)}
        return {}


def _free_port() -> int:
    """A TCP port free on every address of this host (the other nodes connect to it)."""
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]
