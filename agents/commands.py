"""What the agent does when the daemon asks: one handler per command type.

Commands arrive decoded and validated (`supervisor.shared.protocol`: `LaunchArgs`,
`StopArgs`, `InjectArgs`), so nothing here re-parses a dict. A handler either returns the
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
from supervisor.shared.paths import PathEscape, inside
from supervisor.shared.protocol import MAX_RANKS_PER_NODE, AnyCommandArgs, InjectArgs, LaunchArgs, StopArgs
from supervisor.shared.vocab import Accelerator, Fault

log = structlog.get_logger()


class Refused(Exception):
    """The command cannot be carried out; the message says why, for the operator."""


class CommandHandlers:
    def __init__(self, node: str, accelerator: Accelerator, chips: int, work_dir: Path, probe_interval: float,
                 monitor: RankMonitor, chip_probe: ChipProbe) -> None:
        self.node = node
        self.accelerator = accelerator
        self.chips = chips
        self.work_dir = work_dir
        self.probe_interval = probe_interval
        self.monitor = monitor
        self.chip_probe = chip_probe
        self._handlers: dict[type, Callable[[Any], dict[str, Any]]] = {
            LaunchArgs: self.launch,
            StopArgs: self.stop,
            InjectArgs: self.inject,
        }

    def execute(self, args: AnyCommandArgs) -> dict[str, Any]:
        handler = self._handlers.get(type(args))
        if handler is None:
            raise Refused(f"this agent does not handle {args.kind!r} commands")
        return handler(args)

    # --- training ranks --------------------------------------------------------------

    def launch(self, args: LaunchArgs) -> dict[str, Any]:
        """Start a single-node job: `nproc` ranks of `argv`, rank i on chip i."""
        limit = min(self.chips, MAX_RANKS_PER_NODE) if self.chips else MAX_RANKS_PER_NODE
        if args.nproc > limit:
            raise Refused(f"node {self.node} can run at most {limit} ranks of a job, not {args.nproc}")
        if any(j == args.job for j, *_ in self.monitor.running()):
            raise Refused(f"job {args.job!r} already runs on node {self.node}")
        if args.cwd is not None and not Path(args.cwd).is_dir():
            raise Refused(f"working directory {args.cwd!r} does not exist on node {self.node}")
        try:
            # The job name is validated at decode; this is the second line of defence for
            # paths built from it: they stay under the work dir.
            inside(self.work_dir / "logs", args.job)
            default_ckpt = inside(self.work_dir / "checkpoints", args.job)
        except PathEscape as exc:
            raise Refused(str(exc)) from None
        ckpt_dir = args.ckpt_dir or str(default_ckpt)
        port = args.master_port or _free_port()
        now = time.monotonic()
        try:
            for rank in range(args.nproc):
                self.monitor.launch(self._spec(args, rank, port, ckpt_dir), now)
        except OSError as exc:
            self.monitor.request_stop(args.job, grace=0.0)  # no half-started job left behind
            raise Refused(f"cannot start {args.argv[0]!r} on node {self.node}: {exc.strerror or exc}") from exc
        log.info("job.ranks_started", job=args.job, ranks=args.nproc, argv=list(args.argv), ckpt_dir=ckpt_dir,
                 logs=str(self.work_dir / "logs" / args.job))
        return {"node": self.node, "job": args.job, "ranks": args.nproc, "ckpt_dir": ckpt_dir,
                "pids": [pid for j, _, pid, _ in self.monitor.running() if j == args.job]}

    def _spec(self, args: LaunchArgs, rank: int, port: int, ckpt_dir: str) -> RankSpec:
        return RankSpec(
            job=args.job, rank=rank, local_rank=rank, world_size=args.nproc, local_world_size=args.nproc,
            argv=tuple(args.argv), master_addr="127.0.0.1", master_port=port,
            accelerator=self.accelerator, chips=(rank,) if self.chips else (),
            node=self.node, heartbeat=self.monitor.heartbeat_endpoint, ckpt_dir=ckpt_dir,
            cwd=args.cwd, env={**args.env, **self._sim_env()},
        )

    def stop(self, args: StopArgs) -> dict[str, Any]:
        asked = self.monitor.request_stop(args.job, args.grace)
        if not asked:
            raise Refused(f"no rank of job {args.job!r} runs on node {self.node}")
        return {"node": self.node, "job": args.job, "ranks_asked": asked}

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
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
