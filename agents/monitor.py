"""The agent's eyes on the ranks it runs: exits, progress and output become signals.

`RankMonitor` owns the launcher and the socket the ranks' `heartbeat()` sends to. Its
`tick()` gathers what happened since the last one — ranks that exited (crash), log lines
the scanner classified (interconnect_timeout, chip_error, oom, network, crash, user_error;
an unrecognised traceback is a crash whose fields carry `unrecognised` and the failure
`fingerprint` the job layer compares across attempts), ranks
whose step stopped advancing (hang) — and returns them as `Observation`s carrying the
evidence and the time they were observed. Beside the signals, it reports the ranks'
lifecycle as `RankEvent`s (`rank.started`, `rank.exited` — for every rank, crashed or
not — and `rank.checkpoint_saved` when rank 0's runtime prints that it committed one).
The agent turns those into events for the daemon; nothing here decides what to do about
them.
"""

from __future__ import annotations

import json
import math
import os
import queue
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, NamedTuple

import psutil
import zmq

from agents.launcher import Launcher, RankExit, RankProcess, RankSpec, WarmProcess
from agents.rankstate import RankRecord, RankState
from agents.runtime.progress import decode_progress
from agents.stackdump import Dump, StackDumps
from agents.watchers.hang import HangLimits, HangWatcher, QuietReading, QuietWatcher
from agents.watchers.logscan import Catalog, LogScanner, fingerprint
from agents.watchers.stacks import StackReading, read_stack
from supervisor.shared.vocab import Accelerator, Signal

#: The stacks of one `hang.observed`, bounded for the wire (a frame holds 256 KiB): each
#: rank's up to STACK_CHARS, ranks outside a collective (the likely culprits) first.
STACK_CHARS = 8 * 1024
STACKS_BUDGET = 96 * 1024


@dataclass(frozen=True)
class Observation:
    signal: Signal
    job: str
    rank: int | None
    evidence: str
    observed_at: float  # wall clock
    source: str  # launcher / logscan / hang
    fields: dict[str, Any] = field(default_factory=dict)
    chip: int | None = None  # the rank's (first) chip
    attempt: int | None = None  # the job's attempt the rank belongs to (None: a launch)


@dataclass(frozen=True)
class RankEvent:
    """A rank's lifecycle: `rank.started`, `rank.exited`, `rank.checkpoint_saved`."""

    name: str
    job: str
    rank: int | None  # None: about the job's ranks on this node (`hang.observed`)
    attempt: int | None
    observed_at: float  # wall clock
    evidence: str = ""
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Stall:
    """A job seen stalled, while its ranks' stacks are being dumped."""

    how: str  # "heartbeat" or "quiet"
    summary: str
    observed_at: float  # wall clock
    attempt: int | None
    steps: dict[int, tuple[int, str, float]]  # rank -> (step, phase, stalled for), from heartbeats
    cpu: dict[int, float] | None = None  # rank -> CPU seconds over the quiet checks
    fields: dict[str, Any] = field(default_factory=dict)


class RankStatus(NamedTuple):
    """One rank alive, as heartbeats and registrations report it."""

    job: str
    rank: int
    pid: int
    step: int | None
    attempt: int  # 0: a launch
    loss: float | None


def _attempt(spec_attempt: int) -> int | None:
    return spec_attempt or None


class RankMonitor:
    def __init__(self, log_dir: Path, heartbeat_endpoint: str, limits: HangLimits, catalog: Catalog,
                 state_path: Path | None = None) -> None:
        self._lines: queue.SimpleQueue[tuple[str, int, int, str]] = queue.SimpleQueue()
        # Written (a byte) when a rank prints or ends: the agent polls it, so an exit or a
        # fault line is seen within milliseconds, not at the loop's next timeout.
        self.wake_fd, self._wake_w = os.pipe()
        os.set_blocking(self.wake_fd, False)
        os.set_blocking(self._wake_w, False)
        self.launcher = Launcher(log_dir, state_path=state_path,
                                 on_line=lambda spec, line: self._lines.put((spec.job, spec.rank, spec.attempt, line)),
                                 on_wake=self._wake)
        #: Rank lifecycle events not yet handed to the agent (`events()`).
        self._events: list[RankEvent] = []
        #: Observations made outside tick() (exits of killed older attempts), for the next.
        self._pending: list[Observation] = []
        self._loss: dict[tuple[str, int], float] = {}
        self.heartbeat_endpoint = heartbeat_endpoint
        self.hang = HangWatcher(limits)
        self.catalog = catalog
        self._scanners: dict[tuple[str, int], LogScanner] = {}
        self._chips: dict[tuple[str, int], int | None] = {}
        # For scripts that send no heartbeats: output, CPU and chip use per job.
        self.quiet = QuietWatcher()
        self._lines_since: dict[str, int] = {}
        self._cpu_seen: dict[int, float] = {}
        self._heartbeating: set[str] = set()
        self._quiet_cpu: dict[str, dict[int, float]] = {}
        #: Jobs seen stalled whose ranks' stacks are being dumped (in the background).
        self.stacks = StackDumps()
        self._stalls: dict[str, _Stall] = {}
        self._pull = zmq.Context.instance().socket(zmq.PULL)
        self._pull.setsockopt(zmq.LINGER, 0)
        self._pull.setsockopt(zmq.RCVHWM, 10_000)
        self._pull.bind(heartbeat_endpoint)
        # The endpoint actually bound (a tcp://127.0.0.1:* wildcard becomes a real port).
        self.heartbeat_endpoint = self._pull.getsockopt(zmq.LAST_ENDPOINT).decode()
        self.bad_progress = 0

    def close(self) -> None:
        self.stacks.close()
        self._pull.close(linger=0)
        for fd in (self.wake_fd, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"\0")
        except OSError:
            pass  # full (the loop will look anyway) or closed

    def drain_wake(self) -> None:
        try:
            while os.read(self.wake_fd, 4096):
                pass
        except OSError:
            pass

    # --- hands -----------------------------------------------------------------------

    def launch(self, spec: RankSpec, now: float) -> None:
        self.launch_many([spec], now)

    def launch_many(self, specs: list[RankSpec], now: float,
                    standbys: Mapping[int, WarmProcess] | None = None) -> list[RankProcess]:
        """Start ranks (warm standbys, where given); each one's start is a `rank.started`
        event. Raises OSError as the launcher does (the ranks started before the failure
        keep running)."""
        for spec in specs:
            self.hang.set_limits(spec.job, HangLimits(*spec.hang_limits) if spec.hang_limits else None)
        started: list[RankProcess] = []
        try:
            started = self.launcher.start_many(specs, standbys)
        finally:
            for process in self.launcher.ranks.values():
                if process.spec in specs and (process.spec.job, process.spec.rank) not in self._scanners:
                    self._watch(process, now)
                    self._started(process)
        return started

    def _watch(self, process: RankProcess, now: float) -> None:
        spec = process.spec
        self._scanners[(spec.job, spec.rank)] = LogScanner(self.catalog)
        self._chips[(spec.job, spec.rank)] = spec.chips[0] if spec.chips else None
        self.hang.started(spec.job, spec.rank, now)

    def _started(self, process: RankProcess) -> None:
        spec = process.spec
        self._events.append(RankEvent("rank.started", spec.job, spec.rank, _attempt(spec.attempt), time.time(),
                                      f"rank {spec.rank} of job {spec.job} started (pid {process.pid})",
                                      {"pid": process.pid, "log": str(process.log_path), "chips": list(spec.chips),
                                       "local_rank": spec.local_rank, "warm": process.warm}))

    def adopt(self, state: RankState, accelerator: Accelerator, now: float) -> list[RankProcess]:
        """Take over the ranks a previous agent left running; those that ended meanwhile
        are reported at the next tick (from their wrappers' status files)."""

        def spec_for(r: RankRecord) -> RankSpec:
            return RankSpec(job=r.job, rank=r.rank, local_rank=r.local_rank, world_size=r.world_size,
                            local_world_size=r.local_world_size, argv=r.argv, master_addr="", master_port=0,
                            accelerator=accelerator, chips=r.chips, attempt=r.attempt, hang_limits=r.hang_limits)

        exits = self.launcher.adopt(state, spec_for)
        adopted = list(self.launcher.ranks.values())
        for process in adopted:
            if process.spec.hang_limits:
                self.hang.set_limits(process.spec.job, HangLimits(*process.spec.hang_limits))
            self._watch(process, now)
        self._pending += self._exited(exits, down=True)
        return adopted

    def request_stop(self, job: str, grace: float, attempt: int | None = None) -> int:
        """Non-blocking stop for the agent's loop: SIGTERM now, SIGKILL after `grace`
        (in a later tick). The ranks' exits are expected, not crashes."""
        for (j, rank), process in self.launcher.ranks.items():
            if j == job and (attempt is None or process.spec.attempt == attempt):
                self.hang.forget(j, rank)
        return self.launcher.request_stop(job, grace, attempt)

    def signal_ranks(self, job: str, attempt: int | None, sig: signal.Signals) -> int:
        return self.launcher.signal_ranks(job, attempt, sig)

    def kill_older(self, job: str, attempt: int) -> int:
        """SIGKILL the ranks of `job`'s attempts before `attempt` and wait until they are
        gone (never adopted into a newer attempt); their exits come at the next tick."""
        killed = self.launcher.kill_now(job, attempt)
        if killed:
            self._pending += self._exited(self.launcher.poll())
        return killed

    def attempts_running(self, job: str) -> set[int]:
        return {p.spec.attempt for (j, _), p in self.launcher.ranks.items() if j == job}

    def running(self) -> list[RankStatus]:
        """Every rank alive: job, rank, pid, last step, attempt, last loss."""
        return [RankStatus(j, r, p.pid, self.hang.last_step(j, r), p.spec.attempt, self._loss.get((j, r)))
                for (j, r), p in sorted(self.launcher.ranks.items())]

    def events(self) -> list[RankEvent]:
        """The rank lifecycle events since the last call."""
        out, self._events = self._events, []
        return out

    def stop(self, job: str, grace: float) -> list[Observation]:
        """Stop a job's ranks; their exits are expected, so they are not crashes."""
        for (j, rank) in list(self._scanners):
            if j == job:
                self.hang.forget(j, rank)
        self.launcher.stop(job, grace)
        return self._flush_scanners(job)

    # --- eyes ------------------------------------------------------------------------

    def tick(self, now: float) -> list[Observation]:
        """Everything observed since the last tick. `now` is monotonic time."""
        observations: list[Observation] = self._pending
        self._pending = []
        self._drain_progress(now)
        observations += self._drain_lines()
        observations += self._exited(self.launcher.poll())
        for finding in self.hang.check(now):
            if finding.job not in self._stalls:
                self._stall(finding.job, "heartbeat", finding.evidence, now,
                            {"limit_s": finding.limit, "first_rank": finding.rank})
        self._collect(now)
        return observations

    # --- hangs: one view per job and node, with stacks -------------------------------

    def _stall(self, job: str, how: str, summary: str, now: float, fields: dict[str, Any],
               cpu: dict[int, float] | None = None) -> None:
        """A job stopped stepping: hold its other ranks' reports (they wait for the one
        that stopped) and dump every rank's stack in the background; `_collect` sends
        the view once the dumps are in."""
        ranks = {r: p for (j, r), p in self.launcher.ranks.items() if j == job}
        if not ranks:
            return
        self.hang.hold(job)
        attempt = _attempt(next(iter(ranks.values())).spec.attempt)
        self._stalls[job] = _Stall(how, summary, time.time(), attempt,
                                   self.hang.snapshot(job, now) if how == "heartbeat" else {}, cpu, fields)
        self.stacks.start(job, {r: p.pid for r, p in ranks.items()}, now)

    def _collect(self, now: float) -> None:
        for job, dumps in self.stacks.poll(now).items():
            stall = self._stalls.pop(job, None)
            if stall is not None:
                self._events.append(self._view(job, stall, dumps))

    def _view(self, job: str, stall: _Stall, dumps: list[Dump]) -> RankEvent:
        """`hang.observed`: each rank's step, where its stack is and the stack itself."""
        readings = {d.rank: read_stack(d.text) if d.text else StackReading("unknown", f"no stack: {d.error}")
                    for d in dumps}
        order = {"elsewhere": 0, "unknown": 1, "collective": 2}
        budget = STACKS_BUDGET
        stacks: dict[int, str] = {}
        for d in sorted(dumps, key=lambda d: (order[readings[d.rank].where], d.rank)):
            stack = d.text.strip()[:STACK_CHARS]
            if stack and len(stack) <= budget:
                stacks[d.rank] = stack
                budget -= len(stack)
        ranks = []
        lines = [stall.summary]
        for d in dumps:
            step, phase, stalled = stall.steps.get(d.rank, (None, "train", None))
            view: dict[str, Any] = {"rank": d.rank, "pid": d.pid, "step": step, "phase": phase,
                                    "stalled_for_s": round(stalled, 1) if stalled is not None else None,
                                    "where": readings[d.rank].where, "summary": readings[d.rank].summary[:1000],
                                    "stack": stacks.get(d.rank, ""),
                                    "cpu_s": round(stall.cpu[d.rank], 3) if stall.cpu and d.rank in stall.cpu else None}
            ranks.append({k: v for k, v in view.items() if v is not None})
            where = {"collective": "inside a collective", "elsewhere": "outside any collective"}.get(
                view["where"], "position unknown")
            at = f"step {step} ({phase})" if step is not None else "no step"
            cpu = f", cpu {view['cpu_s']:.2f}s" if view.get("cpu_s") is not None else ""
            lines.append(f"rank {d.rank} (pid {d.pid}): {at}{cpu}, {where}: {readings[d.rank].summary[:300]}")
        errors: dict[str, list[int]] = {}
        for d in dumps:
            if d.error:
                errors.setdefault(d.error, []).append(d.rank)
        note = "; ".join(f"rank{'s' if len(r) > 1 else ''} {', '.join(map(str, r))}: {e}" for e, r in errors.items())
        if note:
            lines.append(f"no stack for {note}")
        fields: dict[str, Any] = {"how": stall.how, "ranks": ranks, **stall.fields}
        if note:
            fields["stacks_note"] = note[:2000]
        return RankEvent("hang.observed", job, None, stall.attempt, stall.observed_at, "\n".join(lines)[:16_000],
                         {k: v for k, v in fields.items() if v is not None})

    def _attempt_of(self, job: str, rank: int) -> int | None:
        process = self.launcher.ranks.get((job, rank))
        return _attempt(process.spec.attempt) if process is not None else None

    def _exited(self, exits: list[RankExit], down: bool = False) -> list[Observation]:
        """Each exit: a `rank.exited` event, the scanner's last findings, and a crash
        signal when it was one. `down`: it ended while no agent watched."""
        # First the lines read meanwhile: the launcher's poll joins each exited rank's log
        # reader, which hands over the rank's last lines then, after this tick drained
        # the queue. Their scanners go below; the fault that ended the rank is usually
        # in those lines.
        observations = self._drain_lines() if exits else []
        for exit in exits:
            self.hang.forget(exit.job, exit.rank)
            self._cpu_seen.pop(exit.pid, None)
            self._loss.pop((exit.job, exit.rank), None)
            if not any(j == exit.job for j, _ in self.launcher.ranks):
                self._heartbeating.discard(exit.job)
                self._lines_since.pop(exit.job, None)
                self.quiet.forget(exit.job)
                self._quiet_cpu.pop(exit.job, None)
                self.hang.set_limits(exit.job, None)
            scanner = self._scanners.pop((exit.job, exit.rank), None)
            attempt = _attempt(exit.attempt)
            if scanner is not None:
                observations += [self._finding(exit.job, exit.rank, f, attempt) for f in scanner.flush()]
            chip = self._chips.pop((exit.job, exit.rank), None)
            evidence = exit.describe()
            if down and exit.returncode is not None:
                evidence += " (while the agent was down)"
            fields = {"exit_code": exit.returncode, "signal_name": exit.signal_name, "pid": exit.pid}
            self._events.append(RankEvent("rank.exited", exit.job, exit.rank, attempt, exit.observed_at, evidence,
                                          {**fields, "requested": exit.requested, "log": exit.log_path}))
            if exit.crash:
                observations.append(
                    Observation(Signal.CRASH, exit.job, exit.rank, evidence, exit.observed_at, "launcher",
                                fields, chip, attempt)
                )
        return observations

    def _drain_progress(self, now: float) -> None:
        while True:
            try:
                frame = self._pull.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                msg = decode_progress(frame)
            except ValueError:
                self.bad_progress += 1
                continue
            job = msg.get("job") or next((j for (j, r) in self._scanners if r == msg["rank"]), None)
            if (job, msg["rank"]) in self._scanners:
                self._heartbeating.add(job)
                self.hang.progress(job, msg["rank"], msg["step"], msg["phase"], now - _age(msg.get("ts")))
                loss = (msg.get("metrics") or {}).get("loss")
                # Within the wire's bounds for a reading (a NaN or inf loss is left out).
                if isinstance(loss, (int, float)) and not isinstance(loss, bool) and -1e9 <= loss <= 1e12:
                    self._loss[(job, msg["rank"])] = float(loss)

    def _drain_lines(self) -> list[Observation]:
        out = []
        while True:
            try:
                job, rank, attempt, line = self._lines.get_nowait()
            except queue.Empty:
                return out
            scanner = self._scanners.get((job, rank))
            if scanner is None:
                continue  # a line that came after its rank's exit was reported (a child still printing)
            self._lines_since[job] = self._lines_since.get(job, 0) + 1
            if '"runtime.checkpoint_saved"' in line:
                self._checkpoint_saved(job, rank, _attempt(attempt), line)
            out += [self._finding(job, rank, f, _attempt(attempt)) for f in scanner.feed(line)]

    def check_quiet(self, chip_utilisation: dict[int, float | None], interval: float) -> list[Observation]:
        """The no-heartbeat hang check, once per probe interval: a job whose ranks print
        nothing, use (almost) no CPU and whose chips idle for several checks in a row.
        Jobs that send heartbeats are left to the heartbeat watcher."""
        out = []
        for job in sorted({j for j, _ in self.launcher.ranks}):
            if job in self._heartbeating:
                continue
            cpu = 0.0
            utils: list[float] = []
            per_rank: dict[int, float] = {}
            for (j, rank), process in self.launcher.ranks.items():
                if j != job:
                    continue
                try:
                    times = psutil.Process(process.pid).cpu_times()
                    total = times.user + times.system + times.children_user + times.children_system
                except psutil.Error:
                    continue
                used = max(0.0, total - self._cpu_seen.get(process.pid, 0.0))
                per_rank[rank] = used
                cpu += used
                self._cpu_seen[process.pid] = total
                for chip in process.spec.chips:
                    if chip_utilisation.get(chip) is not None:
                        utils.append(chip_utilisation[chip])  # type: ignore[arg-type]
            reading = QuietReading(self._lines_since.pop(job, 0), cpu, max(utils) if utils else None)
            finding = self.quiet.observe(job, reading, interval)
            # Each rank's CPU over the quiet spell: the one that used none stands out.
            spell = self._quiet_cpu.setdefault(job, {})
            if self.quiet.count(job) == 0:
                spell.clear()
            else:
                for rank, used in per_rank.items():
                    spell[rank] = spell.get(rank, 0.0) + used
            if finding is not None and job not in self._stalls:
                self._stall(job, "quiet", finding.evidence, time.monotonic(),
                            {"quiet_checks": self.quiet.checks}, cpu=dict(spell))
        return out

    def _flush_scanners(self, job: str) -> list[Observation]:
        out = self._drain_lines()
        for (j, rank) in [k for k in self._scanners if k[0] == job]:
            out += [self._finding(j, rank, f) for f in self._scanners.pop((j, rank)).flush()]
        return out

    def _checkpoint_saved(self, job: str, rank: int, attempt: int | None, line: str) -> None:
        """The runtime's `runtime.checkpoint_saved` JSON line (rank 0 commits)."""
        try:
            record = json.loads(line[line.index("{"):])
            step, path = record["step"], record["path"]
        except (ValueError, KeyError, TypeError):
            return  # a line that only mentions it
        if record.get("event") != "runtime.checkpoint_saved" or not isinstance(step, int) or not isinstance(path, str):
            return
        self._events.append(RankEvent("rank.checkpoint_saved", job, rank, attempt, time.time(),
                                      f"rank {rank} of job {job} committed the checkpoint of step {step}",
                                      {"step": step, "path": path[:4096]}))

    def _finding(self, job: str, rank: int, finding: Any, attempt: int | None = None) -> Observation:
        fields: dict[str, Any] = {"pattern": finding.pattern, "line": finding.line, "severity": finding.severity.value}
        failure = fingerprint(finding)
        if failure is not None:
            fields.update(unrecognised=True, fingerprint=failure)
        return Observation(finding.signal, job, rank, finding.evidence, time.time(), "logscan", fields,
                           self._chips.get((job, rank)), attempt if attempt is not None else self._attempt_of(job, rank))


#: The most a progress message's own time may move its step back: the runtime holds a
#: step's message back for at most its heartbeat interval (0.5 s by default).
MAX_PROGRESS_AGE = 2.0


def _age(ts: object) -> float:
    """How long ago a rank reported the step its progress message carries (its wall
    time against ours: the same host), within [0, MAX_PROGRESS_AGE]; 0 for no time."""
    if not isinstance(ts, (int, float)) or isinstance(ts, bool) or not math.isfinite(ts):
        return 0.0
    return min(MAX_PROGRESS_AGE, max(0.0, time.time() - ts))
