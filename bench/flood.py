"""What a flood of idle TCP connections costs a real trainguard daemon, and what it keeps.

A daemon subprocess (tcp agent endpoint, ipc control socket, its descriptor limit set
above the flood as the unit's LimitNOFILE does) with one registered agent; then this
process opens N raw connections to the agent endpoint that never send a byte (paced, so
the daemon's listen backlog does not overflow). We sample the daemon's RSS (psutil)
before, during (peak) and after every connection was dropped by the handshake deadline,
ask `status` over the control socket while the connections are held, and check that the
agent stayed up. The daemon and this process share the machine's cores.

    .venv/bin/python bench/flood.py [--connections 5000] [--after 30] [--json bench/out/flood.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import psutil

from supervisor.cli.client import ClientError, request
from supervisor.cli.localcluster import IdleFlood, LocalCluster, free_tcp_endpoint, raise_own_descriptor_limit

MB = 1024 * 1024


def run(connections: int, after: float, per_second: float, env: dict[str, str]) -> dict:
    with tempfile.TemporaryDirectory(prefix="tg-flood-") as tmp:
        cluster = LocalCluster(Path(tmp), heartbeat_timeout=3.0, heartbeat_interval=0.3)
        cluster.bind = free_tcp_endpoint()
        limit = min(resource.getrlimit(resource.RLIMIT_NOFILE)[1], 2 * connections + 1024)
        try:
            cluster.start_daemon(descriptor_limit=limit, env=env)
            cluster.start_agent("n1", "sim-ascend", 1)
            cluster.wait_nodes("up", ["n1"], timeout=30)
            daemon = psutil.Process(cluster.procs["daemon"].pid)
            time.sleep(1.0)  # let the daemon settle before the baseline
            before = daemon.memory_info().rss
            peak, peak_fds = before, daemon.num_fds()
            flood = IdleFlood(cluster.bind, connections, per_second=per_second)
            opened_s = time.monotonic() - flood.started
            asked = time.monotonic()
            try:
                request(cluster.ctl, "status", timeout=5)
                status_ms: float | None = (time.monotonic() - asked) * 1000
            except ClientError:
                status_ms = None
            held_when_asked = flood.poll()
            deadline = time.monotonic() + 120
            while flood.poll(0.1) and time.monotonic() < deadline:
                peak = max(peak, daemon.memory_info().rss)
                peak_fds = max(peak_fds, daemon.num_fds())
            all_dropped_s = (flood.all_dropped_at - flood.started) if flood.all_dropped_at else None
            flood.close()
            at_drop = daemon.memory_info().rss
            end = time.monotonic() + after
            while time.monotonic() < end:  # sampled, so a later release would be seen
                time.sleep(min(1.0, max(0.0, end - time.monotonic())))
            rss_after = daemon.memory_info().rss
            events = cluster.events("daemon")
            return {
                "connections": connections,
                "descriptor_limit": limit,
                "env": env,
                "opened_in_s": round(opened_s, 2),
                "dropped_by_daemon": flood.dropped,
                "never_connected": flood.failed,
                "all_dropped_after_s": round(all_dropped_s, 2) if all_dropped_s is not None else None,
                "peak_descriptors": peak_fds,
                "rss_before_mb": round(before / MB, 1),
                "rss_peak_mb": round(peak / MB, 1),
                "rss_at_drop_mb": round(at_drop / MB, 1),
                "rss_after_mb": round(rss_after / MB, 1),
                "after_s": after,
                "status_during_flood": status_ms is not None,
                "status_latency_ms": round(status_ms, 1) if status_ms is not None else None,
                "held_when_status_answered": held_when_asked,
                "agent_up_throughout": cluster.node("n1")["state"] == "up"
                and not any(e.get("event") == "node.lost" for e in events),
                "descriptors_low_logged": any(e.get("event") == "daemon.descriptors_low" for e in events),
                "daemon_alive": cluster.procs["daemon"].alive(),
            }
        finally:
            cluster.stop_all()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--connections", type=int, default=5000)
    p.add_argument("--after", type=float, default=30.0, help="seconds to wait after the last drop")
    p.add_argument("--per-second", type=float, default=2000.0, help="connections opened per second")
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                   help="environment for the daemon (e.g. MALLOC_ARENA_MAX=1), repeatable")
    p.add_argument("--json", default="bench/out/flood.json")
    args = p.parse_args()
    raise_own_descriptor_limit(args.connections + 1024)
    env = dict(item.split("=", 1) for item in args.env)
    r = run(args.connections, args.after, args.per_second, env)

    print(f"Machine: {os.cpu_count()} CPUs, {platform.python_implementation()} {platform.python_version()}; "
          f"daemon descriptor limit {r['descriptor_limit']}{'; env ' + str(env) if env else ''}\n")
    print("| idle connections | RSS before | peak RSS | RSS after all dropped | "
          f"RSS {r['after_s']:g} s later | all dropped after | status during flood | agent up |")
    print("|---:|---:|---:|---:|---:|---:|---|---|")
    status = (f"yes, {r['status_latency_ms']:.0f} ms ({r['held_when_status_answered']} held)"
              if r["status_during_flood"] else "no")
    dropped = f"{r['all_dropped_after_s']:.1f} s" if r["all_dropped_after_s"] is not None else "not all"
    print(f"| {r['connections']:,} | {r['rss_before_mb']:.0f} MB | {r['rss_peak_mb']:.0f} MB | "
          f"{r['rss_at_drop_mb']:.0f} MB | {r['rss_after_mb']:.0f} MB | {dropped} | {status} | "
          f"{'yes' if r['agent_up_throughout'] else 'NO'} |")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(r, indent=2))
    print(f"\nRaw numbers: {args.json}")
    ok = r["daemon_alive"] and r["agent_up_throughout"] and r["dropped_by_daemon"] == r["connections"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
