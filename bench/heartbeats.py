"""How many agent heartbeats a real trainguard daemon handles, against the transport's floor.

N simulated agents (real DEALER sockets, one process) register with a real daemon
subprocess and then each keep a window of heartbeats in flight, over loopback tcp. We
count acknowledged heartbeats per second and the ack latency. The floor is the same
client against a bare ROUTER that echoes every frame (no decode, no bookkeeping): what
zmq and loopback cost on this machine. Both run in the same process layout, one after
the other, so the ratio is what to read. The daemon and this client share the machine's
cores; on a 2-core VM that caps both numbers.

    .venv/bin/python bench/heartbeats.py [--agents 100,1000] [--seconds 5] [--out bench/out/heartbeats.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import zmq

from supervisor.cli.client import request
from supervisor.shared.protocol import Heartbeat, HostStatus, Register, decode, encode
from supervisor.shared.vocab import Accelerator, Health

WINDOW = 4  # heartbeats in flight per agent
HOST = HostStatus(health=Health.OK, mem_used_pct=10.0, disk_free_bytes=10**11, disk_total_bytes=2 * 10**11, load1=0.1)

ECHO = """
import sys, zmq
sock = zmq.Context.instance().socket(zmq.ROUTER)
sock.setsockopt(zmq.SNDHWM, 100000); sock.setsockopt(zmq.RCVHWM, 100000)
sock.bind(sys.argv[1])
print("ready", flush=True)
while True:
    sock.send_multipart(sock.recv_multipart())
"""


def free_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def run(endpoint: str, agents: int, seconds: float, register: bool) -> dict[str, float]:
    ctx = zmq.Context.instance()
    socks = []
    for i in range(agents):
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(endpoint)
        socks.append(s)
    poller = zmq.Poller()
    for s in socks:
        poller.register(s, zmq.POLLIN)
    chips = tuple()
    if register:
        for i, s in enumerate(socks):
            s.send(encode(Register(id=f"r{i}", ts=time.time(), node=f"bench-{i}", accelerator=Accelerator.CPU,
                                   chips=chips, host=HOST, agent_version="bench", agent_instance=f"inst-{i}",
                                   hostname="bench", pid=1)))
        pending = set(range(agents))
        deadline = time.monotonic() + 60
        while pending and time.monotonic() < deadline:
            for s, _ in poller.poll(1000):
                decode(s.recv())
                pending.discard(socks.index(s))
        if pending:
            raise SystemExit(f"{len(pending)} simulated agents could not register")
    frames = [encode(Heartbeat(id=f"h{i}", ts=time.time(), node=f"bench-{i}", seq=1, agent_instance=f"inst-{i}",
                               chips=chips, host=HOST)) for i in range(agents)]
    sent_at: dict[int, list[float]] = {i: [] for i in range(agents)}
    index = {s: i for i, s in enumerate(socks)}
    for i, s in enumerate(socks):
        for _ in range(WINDOW):
            sent_at[i].append(time.perf_counter())
            s.send(frames[i])
    acked = 0
    latencies: list[float] = []
    start = time.perf_counter()
    end = start + seconds
    while time.perf_counter() < end:
        for s, _ in poller.poll(100):
            i = index[s]
            while True:
                try:
                    s.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                now = time.perf_counter()
                latencies.append(now - sent_at[i].pop(0))
                acked += 1
                sent_at[i].append(now)
                s.send(frames[i])
    elapsed = time.perf_counter() - start
    for s in socks:
        s.close(linger=0)
    latencies.sort()
    return {
        "acked_per_s": acked / elapsed,
        "p50_ms": 1000 * latencies[len(latencies) // 2] if latencies else float("nan"),
        "p99_ms": 1000 * latencies[int(len(latencies) * 0.99)] if latencies else float("nan"),
        "acked": acked,
        "seconds": elapsed,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--agents", default="100,1000", help="comma-separated agent counts")
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--out", default="bench/out/heartbeats.json")
    args = p.parse_args()
    counts = [int(x) for x in args.agents.split(",")]
    results = []
    for n in counts:
        # the floor: a bare echoing ROUTER
        floor_ep = free_endpoint()
        echo = subprocess.Popen([sys.executable, "-c", ECHO, floor_ep], stdout=subprocess.PIPE, text=True)
        echo.stdout.readline()  # type: ignore[union-attr]
        floor = run(floor_ep, n, args.seconds, register=False)
        echo.kill()
        echo.wait()
        # the daemon
        with tempfile.TemporaryDirectory() as tmp:
            bind, ctl = free_endpoint(), f"ipc://{tmp}/ctl.sock"
            daemon = subprocess.Popen(
                [sys.executable, "-m", "supervisor", "daemon", "--insecure", "--bind", bind, "--ctl", ctl,
                 "--state-dir", tmp, "--heartbeat-timeout", "120s", "--heartbeat-interval", "60s"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                request(ctl, "ping", timeout=20)  # retried until the daemon answers
                ours = run(bind, n, args.seconds, register=True)
            finally:
                daemon.terminate()
                daemon.wait(timeout=30)
        results.append({"agents": n, "floor": floor, "daemon": ours,
                        "ratio": floor["acked_per_s"] / ours["acked_per_s"]})
        print(f"{n} agents: daemon {ours['acked_per_s']:.0f}/s, floor {floor['acked_per_s']:.0f}/s", file=sys.stderr)

    print(f"\nMachine: {os.cpu_count()} CPUs, {platform.python_implementation()} {platform.python_version()}; "
          f"{WINDOW} heartbeats in flight per agent, {args.seconds:g} s per run, loopback tcp\n")
    print("| agents | daemon: acked heartbeats/s | p50 / p99 ack latency | floor (bare ROUTER echo)/s | floor / daemon |")
    print("|---:|---:|---:|---:|---:|")
    for r in results:
        d, f = r["daemon"], r["floor"]
        print(f"| {r['agents']} | {d['acked_per_s']:,.0f} | {d['p50_ms']:.1f} / {d['p99_ms']:.1f} ms | "
              f"{f['acked_per_s']:,.0f} | {r['ratio']:.1f}x |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"window": WINDOW, "seconds": args.seconds, "results": results}, indent=2))
    print(f"\nRaw numbers: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
