"""One real trainguard daemon against N simulated agents heartbeating at 1 Hz.

The daemon runs as a subprocess, as an operator starts it (`python -m supervisor daemon`,
tcp agent endpoint, ipc control socket, the shipped default policy, its descriptor limit
raised as the unit's LimitNOFILE does). A load generator — `--workers` processes, each
holding its share of the N DEALER sockets on one epoll loop — registers every node as a
real agent does (8 simulated Ascend chips with health and readings, host status) and then
heartbeats each node once a second, spread evenly over the second. A job is submitted with
`trainguard job submit` onto a share of the nodes (`--job-nodes`, 8 ranks each): the
generator answers its start_ranks commands as an agent would (Result, master port),
reports a `rank.started` event per rank and from then on carries the ranks, with a step
that advances every heartbeat, in those nodes' heartbeats. Chip readings change every
fifth heartbeat (a probe every 5 s, the default policy's probe_interval).

Once the job runs, a steady window of `--seconds` is measured:

- daemon CPU per acknowledged heartbeat (psutil on the daemon pid: its loop and libzmq's
  I/O thread together), and its CPU share of one core;
- handling latency: a heartbeat sent by the generator until the daemon's ack is received
  there (p50 / p99), so it includes both processes' queues on this machine;
- the daemon's RSS; heartbeats the generator meant to send vs sent vs acknowledged, and
  how late its own schedule ran (a generator that cannot keep up is said, not hidden);
- node.lost events for nodes the generator kept heartbeating (false node_lost), over
  the whole run, from the daemon's JSON log;
- `trainguard status --json` and `trainguard job show --json` as a user runs them (a new
  CLI process, interpreter start included), three times in the window; the output is
  checked, and the same status request made in-process, after the window (the
  benchmark's own parsing is not load on the daemon's host that a user adds).

    .venv/bin/python bench/scale.py [--agents 1000,5000,10000] [--seconds 30] [--json bench/out/scale.json]

The generator and the daemon share this machine's cores: read the generator's own CPU
next to the daemon's, and the achieved heartbeat rate next to the intended one.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import random
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import zmq

from supervisor.cli.client import ClientError, request, status_all
from supervisor.cli.localcluster import LocalCluster, free_tcp_endpoint, raise_own_descriptor_limit
from supervisor.policy.shipped import shipped_policy_dir
from supervisor.shared.protocol import (
    Ack,
    ChipStatus,
    Command,
    Event,
    Heartbeat,
    HostStatus,
    Register,
    Result,
    RunningRank,
    StartRanksArgs,
    decode,
    encode,
    new_id,
)
from supervisor.shared.vocab import Accelerator, Health

MB = 1024 * 1024
CHIPS = 8
INTERVAL = 1.0
#: Readings change every this many heartbeats (a probe every 5 s).
PROBE_EVERY = 5
JOB = "scale"


# --- the generator (one worker process) -----------------------------------------------


def _chips(rng: random.Random) -> tuple[ChipStatus, ...]:
    return tuple(
        ChipStatus(index=c, health=Health.OK, temperature_c=round(rng.uniform(38, 72), 1),
                   memory_used_mb=rng.randrange(20_000, 60_000), memory_total_mb=65_536,
                   power_w=round(rng.uniform(150, 350), 1), utilisation_pct=round(rng.uniform(0, 100), 1),
                   hbm_used_mb=rng.randrange(20_000, 60_000), hbm_total_mb=65_536, ddr_used_mb=1024,
                   ddr_total_mb=32_768, link="up")
        for c in range(CHIPS)
    )


def _host(rng: random.Random) -> HostStatus:
    return HostStatus(health=Health.OK, mem_used_pct=round(rng.uniform(20, 60), 1), disk_free_bytes=10**12,
                      disk_total_bytes=2 * 10**12, load1=round(rng.uniform(1, 30), 2))


class _Node:
    __slots__ = ("name", "instance", "sock", "seq", "chips", "host", "ranks", "attempt", "registered")

    def __init__(self, name: str, sock: zmq.Socket, rng: random.Random) -> None:
        self.name = name
        self.instance = new_id()
        self.sock = sock
        self.seq = 0
        self.chips = _chips(rng)
        self.host = _host(rng)
        self.ranks: tuple[int, ...] = ()
        self.attempt = 0
        self.registered = False


class Generator:
    """`count` simulated agents on one epoll loop. Controlled over stdin/stdout by the
    main process with JSON lines: it says {"registered": n}; it is told {"window": [t0,
    t1]} (monotonic times, shared by the processes of one machine) and {"stop": true},
    and answers the last with its measurements."""

    def __init__(self, endpoint: str, first: int, count: int, seed: int, register_rate: float = 500.0) -> None:
        self.register_rate = register_rate
        self.rng = random.Random(seed)
        self.ctx = zmq.Context()
        self.ctx.set(zmq.MAX_SOCKETS, count + 64)
        self.nodes: list[_Node] = []
        self.by_fd: dict[int, _Node] = {}
        self.epoll = select.epoll()
        for i in range(first, first + count):
            sock = self.ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SNDHWM, 1000)
            sock.connect(endpoint)
            node = _Node(f"sim-{i:05d}", sock, self.rng)
            self.nodes.append(node)
            fd = sock.getsockopt(zmq.FD)
            self.by_fd[fd] = node
            self.epoll.register(fd, select.EPOLLIN)
        self.in_flight: dict[str, float] = {}  # heartbeat id -> monotonic time sent
        self.window = (float("inf"), float("inf"))
        self.latencies: list[float] = []
        self.stats = collections.Counter()
        self.max_slip = 0.0
        self.cpu_at_start: float | None = None
        self.cpu_at_end: float | None = None
        self.registered = 0
        self.started = time.monotonic()

    # messages ------------------------------------------------------------------

    def _register(self, node: _Node) -> None:
        node.sock.send(encode(Register(
            id=new_id(), ts=time.time(), node=node.name, accelerator=Accelerator.SIM_ASCEND, chips=node.chips,
            host=node.host, agent_version="bench", agent_instance=node.instance, hostname=node.name,
            pid=os.getpid(), running=self._running(node), address="127.0.0.1")))

    def _running(self, node: _Node) -> tuple[RunningRank, ...]:
        if not node.ranks:
            return ()
        step = int(time.monotonic() - self.started) + 1
        return tuple(RunningRank(job=JOB_ID[0], rank=r, pid=100_000 + r, step=step, attempt=node.attempt,
                                 loss=round(5.0 / step, 4)) for r in node.ranks)

    def _heartbeat(self, node: _Node, now: float) -> None:
        node.seq += 1
        if node.seq % PROBE_EVERY == 0:
            node.chips = _chips(self.rng)
            node.host = _host(self.rng)
        hb = Heartbeat(id=new_id(), ts=time.time(), node=node.name, seq=node.seq, agent_instance=node.instance,
                       chips=node.chips, host=node.host, running=self._running(node))
        try:
            node.sock.send(encode(hb), zmq.NOBLOCK)
        except zmq.Again:
            self._count("send_blocked", now)
            return
        self.in_flight[hb.id] = now
        self._count("sent", now)

    def _count(self, what: str, now: float) -> None:
        if self.window[0] <= now < self.window[1]:
            self.stats[what] += 1

    def _on_frame(self, node: _Node, frame: bytes, now: float) -> None:
        msg = decode(frame)
        if isinstance(msg, Ack):
            sent = self.in_flight.pop(msg.ref, None)
            if not msg.ok:
                self._count(f"nack_{msg.error}", now)
                self.stats[f"nack_{msg.error}_total"] += 1
                if msg.error == "unregistered":
                    node.registered = False
                    self._register(node)
                return
            if sent is not None:
                if self.window[0] <= sent < self.window[1]:
                    self.latencies.append(now - sent)
                    self.stats["acked"] += 1
            elif not node.registered:
                node.registered = True
                self.registered += 1
        elif isinstance(msg, Command):
            self.stats[f"command_{msg.kind}"] += 1
            detail: dict[str, Any] = {"node": node.name}
            if isinstance(msg.args, StartRanksArgs):
                JOB_ID[0] = msg.args.job
                node.ranks = tuple(r.rank for r in msg.args.ranks)
                node.attempt = msg.args.attempt
                detail.update(job=msg.args.job, attempt=msg.args.attempt, master_port=msg.args.master_port or 29500,
                              pids={str(r): 100_000 + r for r in node.ranks}, already=False)
            elif msg.kind == "stop_ranks":
                node.ranks = ()
            node.sock.send(encode(Result(id=new_id(), ts=time.time(), node=node.name, ref=msg.id, ok=True,
                                         detail=detail)))
            if isinstance(msg.args, StartRanksArgs):
                for r in node.ranks:
                    node.sock.send(encode(Event(
                        id=new_id(), ts=time.time(), node=node.name, name="rank.started", observed_at=time.time(),
                        job=msg.args.job, rank=r, attempt=msg.args.attempt, fields={"pid": 100_000 + r})))

    def _drain(self, node: _Node, now: float) -> None:
        sock = node.sock
        # ZMQ_FD is edge-triggered: read until EVENTS says nothing is left.
        while sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            self._on_frame(node, sock.recv(zmq.NOBLOCK), now)

    def _control(self) -> None:
        line = sys.stdin.readline()
        if not line:
            raise SystemExit(0)
        order = json.loads(line)
        if "window" in order:
            self.window = tuple(order["window"])
            self.stats.clear()
            self.latencies.clear()
            self.max_slip = 0.0
        if order.get("stop"):
            raise StopIteration

    # the loop ------------------------------------------------------------------

    def run(self) -> None:
        self.epoll.register(sys.stdin.fileno(), select.EPOLLIN)
        count = len(self.nodes)
        # Registrations paced (--register-rate), as agents starting over some seconds;
        # a node heartbeats from its first turn in the schedule after its register is
        # acknowledged, as an agent does (registering them all before any heartbeat
        # left the first silent for longer than heartbeat_timeout at 10,000 agents).
        began = time.monotonic()
        to_register = 0
        reported = False
        base = began + 0.5
        cycle, pointer = 0, 0
        proc = psutil.Process()
        try:
            while True:
                now = time.monotonic()
                while to_register < count and began + to_register / self.register_rate <= now:
                    node = self.nodes[to_register]
                    self._register(node)
                    # Also arms the edge-triggered ZMQ_FD: libzmq signals it for a reply
                    # only after a read found the socket empty.
                    self._drain(node, now)
                    to_register += 1
                if not reported and self.registered == count:
                    print(json.dumps({"registered": count}), flush=True)
                    reported = True
                if self.cpu_at_start is None and now >= self.window[0]:
                    t = proc.cpu_times()
                    self.cpu_at_start = t.user + t.system
                if self.cpu_at_end is None and now >= self.window[1]:
                    t = proc.cpu_times()
                    self.cpu_at_end = t.user + t.system
                # Every node due by now, in schedule order; lateness is measured, not hidden.
                while True:
                    due = base + cycle * INTERVAL + pointer * INTERVAL / count
                    if due > now:
                        break
                    node = self.nodes[pointer]
                    if node.registered:
                        if self.window[0] <= due < self.window[1]:
                            self.stats["intended"] += 1
                            self.max_slip = max(self.max_slip, now - due)
                        self._heartbeat(node, now)
                        self._drain(node, now)
                    pointer += 1
                    if pointer == count:
                        pointer, cycle = 0, cycle + 1
                if to_register < count:
                    due = min(due, began + to_register / self.register_rate)
                self._wait(max(0.0, min(0.01, due - time.monotonic())))
        except StopIteration:
            pass
        end_cpu = self.cpu_at_end if self.cpu_at_end is not None else sum(proc.cpu_times()[:2])
        print(json.dumps({"stats": dict(self.stats), "latencies": self.latencies, "max_slip": self.max_slip,
                          "cpu_s": end_cpu - (self.cpu_at_start or end_cpu)}), flush=True)

    def _wait(self, timeout: float) -> None:
        for fd, _ in self.epoll.poll(timeout):
            if fd == sys.stdin.fileno():
                self._control()
                continue
            node = self.by_fd[fd]
            self._drain(node, time.monotonic())


JOB_ID = [JOB]  # the job's id, learned from its first start_ranks command


def worker_main(args: argparse.Namespace) -> int:
    raise_own_descriptor_limit(args.count + 1024)
    Generator(args.endpoint, args.first, args.count, seed=args.first, register_rate=args.register_rate).run()
    return 0


# --- the run (main process) -----------------------------------------------------------


def _cli(cluster: LocalCluster, *argv: str, timeout: float = 60) -> tuple[float, subprocess.CompletedProcess[bytes]]:
    started = time.monotonic()
    try:
        done = subprocess.run([sys.executable, "-m", "supervisor", *argv, "--ctl", cluster.ctl, "--timeout", "30s"],
                              capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        done = subprocess.CompletedProcess([], 124, b"", b"timed out")
    return time.monotonic() - started, done


def _ask(what: Any, *args: Any, **kw: Any) -> Any:
    """A control request of the bench's own; None when the daemon does not answer."""
    try:
        return what(*args, **kw)
    except ClientError:
        return None


def _job_file(root: Path, nodes: int) -> Path:
    path = root / "job.yaml"
    path.write_text(json.dumps({
        "name": JOB, "command": ["python", "train.py"], "workdir": str(root), "checkpoint_dir": str(root / "ckpt"),
        "policy": "default", "pools": {"ascend": {"nodes": nodes, "ranks_per_node": CHIPS}},
    }))
    return path


def run(agents: int, seconds: float, workers: int, job_nodes: int, heartbeat_timeout: float,
        register_rate: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="tg-scale-") as tmp:
        root = Path(tmp)
        policies = root / "policies"
        policies.mkdir()
        shutil.copy(shipped_policy_dir() / "default.yaml", policies / "default.yaml")
        cluster = LocalCluster(root, heartbeat_timeout=heartbeat_timeout, heartbeat_interval=INTERVAL)
        cluster.bind = free_tcp_endpoint()
        gens: list[subprocess.Popen[str]] = []
        try:
            cluster.start_daemon("--policy-dir", str(policies), descriptor_limit=agents + 2048)
            request(cluster.ctl, "ping", timeout=30)
            daemon = psutil.Process(cluster.procs["daemon"].pid)
            share = -(-agents // workers)
            for w in range(workers):
                first, count = w * share, min(share, agents - w * share)
                if count <= 0:
                    break
                gens.append(subprocess.Popen(
                    [sys.executable, __file__, "--worker", "--endpoint", cluster.bind, "--first", str(first),
                     "--count", str(count), "--register-rate", str(register_rate / workers)],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
            # A daemon that cannot keep up never sees every node registered: measure it
            # anyway after a while (the row says how many were up).
            t0 = time.monotonic()
            waiting = {g.stdout.fileno(): g for g in gens}  # type: ignore[union-attr]
            while waiting and time.monotonic() - t0 < 30 + agents / register_rate * 3:
                for fd in select.select(list(waiting), [], [], 1.0)[0]:
                    if not waiting.pop(fd).stdout.readline():  # type: ignore[union-attr]
                        raise SystemExit("a generator worker died while registering its nodes")
            registered_s = time.monotonic() - t0 if not waiting else None

            submit_s, done = _cli(cluster, "job", "submit", str(_job_file(root, job_nodes)), "--json")
            if done.returncode != 0:
                raise SystemExit(f"job submit failed: {done.stdout.decode(errors='replace')}"
                                 f"{done.stderr.decode(errors='replace')}")
            job_id = json.loads(done.stdout)["job"]
            t0 = time.monotonic()
            while True:
                state = (_ask(request, cluster.ctl, "job_show", {"job": job_id}, timeout=30) or {}).get("state")
                if state == "running":
                    break
                if time.monotonic() - t0 > 120:
                    break  # measured as it is; the row says the job's state
                time.sleep(0.5)
            running_s = time.monotonic() - t0 if state == "running" else None

            time.sleep(2.0)  # let the start's burst (events, job record writes) pass
            start = time.monotonic() + 0.2
            end = start + seconds
            for g in gens:
                g.stdin.write(json.dumps({"window": [start, end]}) + "\n")  # type: ignore[union-attr]
                g.stdin.flush()  # type: ignore[union-attr]
            while time.monotonic() < start:
                time.sleep(0.01)
            cpu0 = sum(daemon.cpu_times()[:2])
            load = os.getloadavg()[0]  # what else ran on the machine meanwhile
            rss_peak = daemon.memory_info().rss
            status_cli, status_inproc, show_cli = [], [], []
            printed: list[tuple[float, subprocess.CompletedProcess[bytes]]] = []
            # Control traffic spread over the window: status --json and job show, as users
            # run them. What they print is checked after the window: parsing 48 MB of JSON
            # here took the benchmark ~0.45 s of CPU each time, on the cores the daemon
            # and the generator share, which is load no user adds.
            asks = [start + seconds * f for f in (0.2, 0.5, 0.8)]
            while time.monotonic() < end:
                rss_peak = max(rss_peak, daemon.memory_info().rss)
                if asks and time.monotonic() >= asks[0]:
                    asks.pop(0)
                    printed.append(_cli(cluster, "status", "--json"))
                    took, shown = _cli(cluster, "job", "show", job_id, "--json")
                    if shown.returncode == 0:
                        show_cli.append(took)
                    continue
                time.sleep(min(0.5, max(0.0, end - time.monotonic())))
            cpu1 = sum(daemon.cpu_times()[:2])
            rss = daemon.memory_info().rss
            for took, done in printed:
                if done.returncode == 0 and len(json.loads(done.stdout)["nodes"]) == agents:
                    status_cli.append(took)
            # The same status request made from this process, for the daemon's share of
            # it without the CLI's: after the window, for the same reason.
            for _ in range(3):
                t = time.monotonic()
                if len((_ask(status_all, cluster.ctl, timeout=30) or {}).get("nodes", ())) == agents:
                    status_inproc.append(time.monotonic() - t)
            outs = []
            for g in gens:
                g.stdin.write(json.dumps({"stop": True}) + "\n")  # type: ignore[union-attr]
                g.stdin.flush()  # type: ignore[union-attr]
            for g in gens:
                while "stats" not in (out := json.loads(g.stdout.readline())):  # type: ignore[union-attr]
                    pass  # its late "registered" line
                outs.append(out)
            state = (_ask(request, cluster.ctl, "job_show", {"job": job_id}, timeout=30) or {}).get("state")
            status = _ask(status_all, cluster.ctl, timeout=60)
            events = cluster.events("daemon")
        finally:
            for g in gens:
                if g.poll() is None:
                    g.kill()
                g.wait()
            cluster.stop_all()

    stats: collections.Counter[str] = collections.Counter()
    latencies: list[float] = []
    for o in outs:
        stats.update(o["stats"])
        latencies.extend(o["latencies"])
    latencies.sort()
    acked = stats["acked"]
    daemon_cpu = cpu1 - cpu0
    lost = [e for e in events if e.get("event") == "node.lost"]
    quantile = (lambda q: 1000 * latencies[min(len(latencies) - 1, int(len(latencies) * q))] if latencies else None)
    return {
        "agents": agents,
        "cpu_us_per_heartbeat": round(1e6 * daemon_cpu / acked, 1) if acked else None,
        "p50_ms": round(quantile(0.5), 2) if latencies else None,
        "p99_ms": round(quantile(0.99), 2) if latencies else None,
        "rss_mb": round(rss / MB, 1),
        "false_node_lost": len(lost),
        "status_s": round(statistics.median(status_cli), 3) if status_cli else None,
        "status_inprocess_s": round(statistics.median(status_inproc), 3) if status_inproc else None,
        "job_show_s": round(statistics.median(show_cli), 3) if show_cli else None,
        "daemon_cpu_pct": round(100 * daemon_cpu / seconds, 1),
        "heartbeats_intended_per_s": round(stats["intended"] / seconds, 1),
        "heartbeats_sent_per_s": round(stats["sent"] / seconds, 1),
        "heartbeats_acked_per_s": round(acked / seconds, 1),
        "p999_ms": round(quantile(0.999), 2) if latencies else None,
        "max_ms": round(1000 * latencies[-1], 2) if latencies else None,
        "generator_cpu_pct": round(100 * sum(o["cpu_s"] for o in outs) / seconds, 1),
        "machine_cpus": os.cpu_count(),
        "generator_workers": len(outs),
        "generator_max_slip_ms": round(1000 * max(o["max_slip"] for o in outs), 1),
        "rss_peak_mb": round(rss_peak / MB, 1),
        "job_nodes": job_nodes,
        "job_ranks": job_nodes * CHIPS,
        "job_state_at_end": state,
        "nodes_up_at_end": status["summary"]["states"]["up"] if status else None,
        "node_lost_total": len(lost),
        "daemon_stalled": sum(e.get("event") == "daemon.stalled" for e in events),
        "handler_failures": sum(e.get("event") == "daemon.handler_failed" for e in events),
        "nacks": {k: v for k, v in stats.items() if k.startswith("nack_")},
        "send_blocked": stats["send_blocked"],
        "registered_in_s": round(registered_s, 2) if registered_s is not None else None,
        "register_rate": register_rate,
        "job_submit_cli_s": round(submit_s, 3),
        "job_running_after_s": round(running_s, 2) if running_s is not None else None,
        "seconds": seconds,
        "heartbeat_timeout_s": heartbeat_timeout,
        "load_average_1m": round(load, 2),
    }


def _exit_on_sigterm(*_: Any) -> None:
    raise SystemExit(143)  # so the daemon (its own session) and the workers are stopped


def main() -> int:
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--agents", default="1000,5000,10000", help="comma-separated simulated agent counts")
    p.add_argument("--seconds", type=float, default=30.0, help="steady window measured per count")
    p.add_argument("--workers", type=int, default=2, help="generator processes")
    p.add_argument("--job-nodes", type=float, default=0.1,
                   help="nodes of the job: a share of the agents (below 1) or a count (default 0.1)")
    p.add_argument("--heartbeat-timeout", type=float, default=5.0,
                   help="the daemon's heartbeat_timeout in seconds (default 5: stricter than the shipped 15)")
    p.add_argument("--register-rate", type=float, default=1000.0,
                   help="agents registering per second, all workers together (default 1000)")
    p.add_argument("--json", default="bench/out/scale.json")
    # A generator worker (started by the main process).
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--endpoint", help=argparse.SUPPRESS)
    p.add_argument("--first", type=int, help=argparse.SUPPRESS)
    p.add_argument("--count", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker_main(args)
    rows = []
    for n in (int(x) for x in args.agents.split(",")):
        job_nodes = max(1, int(n * args.job_nodes) if args.job_nodes < 1 else min(n, int(args.job_nodes)))
        row = run(n, args.seconds, args.workers, job_nodes, args.heartbeat_timeout, args.register_rate)
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(rows, indent=2))

    print(f"\nMachine: {os.cpu_count()} CPUs, {platform.python_implementation()} {platform.python_version()}; "
          f"{args.seconds:g} s steady window, heartbeats at {1 / INTERVAL:g} Hz, heartbeat_timeout "
          f"{args.heartbeat_timeout:g} s, {args.workers} generator processes, loopback tcp; 1-minute load average "
          f"at each window's start: {', '.join(str(r['load_average_1m']) for r in rows)}\n")
    print("| agents | job ranks | heartbeats/s intended / acked | daemon CPU per heartbeat | daemon CPU | "
          "p50 / p99 latency | daemon RSS | false node_lost | `status --json` (CLI / request) | generator CPU |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        status = (f"{r['status_s']:.2f} s / {r['status_inprocess_s']:.2f} s"
                  if r["status_s"] is not None and r["status_inprocess_s"] is not None else "failed")
        p50 = f"{r['p50_ms']:.1f} / {r['p99_ms']:.1f} ms" if r["p50_ms"] is not None else "none acked"
        cpu = f"{r['cpu_us_per_heartbeat']:.0f} µs" if r["cpu_us_per_heartbeat"] is not None else "-"
        print(f"| {r['agents']:,} | {r['job_ranks']:,} | {r['heartbeats_intended_per_s']:,.0f} / "
              f"{r['heartbeats_acked_per_s']:,.0f} | {cpu} | {r['daemon_cpu_pct']:.0f} % | {p50} | "
              f"{r['rss_mb']:.0f} MB | {r['false_node_lost']} | {status} | {r['generator_cpu_pct']:.0f} % |")
    print(f"\nRaw numbers: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
