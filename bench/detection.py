"""Detection latency: from a fault to its signal at the daemon, per signal, with the
intervals used.

    .venv/bin/python bench/detection.py [--trials N] [--json PATH]

One daemon and two simulated Ascend nodes (real processes, the README's intervals
below). Faults, timed from the moment they happen to the daemon's log line:

- chip_error (probe): a chip of a node turns critical (`trainguard inject`, a chip with
  no rank); the agent's probe reads it → `chip.health_changed` at the daemon.
  Goal: ≤ one probe interval + 0.5 s.
- fault line: a rank prints an HCCL timeout line (its own clock notes when) → the log
  scanner → `signal.interconnect_timeout`. Goal: ≤ 0.5 s.
- crash: a rank is SIGKILLed → `signal.crash`.
- hang: a rank stops stepping (it stops calling heartbeat()) → `signal.hang` (the
  hang timeout, then its stacks are dumped and the nodes' views joined).
- node lost: a node's agent is SIGKILLed → `node.lost`. Goal: ≤ heartbeat_timeout + 1 s.

JSON: `{"intervals": {...}, "signals": {SIGNAL: {"median_s", "p90_s", "max_s", "goal_s",
"trials"}}}`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from supervisor.cli.client import request  # noqa: E402
from supervisor.cli.localcluster import LocalCluster, wait_for  # noqa: E402
from supervisor.policy.shipped import shipped_policy_dir  # noqa: E402

PROBE_INTERVAL = 1.0
HEARTBEAT_INTERVAL = 1.0
HEARTBEAT_TIMEOUT = 5.0
HANG_TIMEOUT = 3.0
LINE = ("EI0002: The wait execution of the Notify register times out. Reason: The Notify register has not received "
        "the Notify record from remote rank [1].")

#: A rank without torch: steps (heartbeats) every 50 ms; on a trigger file it prints the
#: HCCL line (noting the time first), or stops stepping (noting the time of its last step).
RANK = textwrap.dedent('''
    import os, sys, time
    from pathlib import Path
    from agents.runtime import heartbeat
    here = Path(sys.argv[1]); rank = os.environ["RANK"]
    step, last = 0, time.time()
    while True:
        step += 1
        for trigger in sorted(here.glob(f"rank{rank}-*.line")):
            noted = Path(str(trigger) + ".at")
            if not noted.exists():  # each line once, whichever process of the rank sees it
                noted.write_text(repr(time.time()))
                print(sys.argv[2], flush=True)
        if (here / f"rank{rank}.hang").exists():
            (here / f"rank{rank}.hang.at").write_text(repr(last))
            while True:
                time.sleep(1)
        heartbeat(step)
        last = time.time()
        time.sleep(0.05)
''')


def daemon_events(cluster: LocalCluster, name: str, after: float, **match: Any) -> list[tuple[float, dict[str, Any]]]:
    """The daemon's log lines of `name` after `after` (wall), with their time."""
    out = []
    for e in cluster.events("daemon"):
        if e.get("event") != name or any(e.get(k) != v for k, v in match.items()):
            continue
        at = datetime.datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00")).timestamp()
        if at > after:
            out.append((at, e))
    return out


def first_after(cluster: LocalCluster, name: str, after: float, limit: float = 60.0, **match: Any) -> float:
    at, _ = wait_for(lambda: next(iter(daemon_events(cluster, name, after, **match)), None), limit, name, 0.02)
    return at


def summary(times: list[float], goal: float | None) -> dict[str, Any]:
    times = sorted(times)
    return {"median_s": round(statistics.median(times), 3), "p90_s": round(times[min(len(times) - 1, int(0.9 * len(times)))], 3),
            "max_s": round(times[-1], 3), "goal_s": goal, "met": None if goal is None else times[-1] <= goal,
            "trials": [round(t, 3) for t in times]}


def policy(directory: Path) -> Path:
    directory.mkdir(parents=True)
    text = (shipped_policy_dir() / "default.yaml").read_text()
    text = text.replace("hang_timeout: 300s", f"hang_timeout: {HANG_TIMEOUT:g}s")
    text = text.replace("probe_interval: 5s", f"probe_interval: {PROBE_INTERVAL:g}s")
    text = text.replace("heartbeat_timeout: 15s", f"heartbeat_timeout: {HEARTBEAT_TIMEOUT:g}s")
    text = text.replace("every: 10m", "every: off").replace("max_restarts: 10 ", "max_restarts: 1000 ")
    (directory / "default.yaml").write_text(text)
    return directory


def run(root: Path, trials: int) -> dict[str, Any]:
    cluster = LocalCluster(root / "cluster", heartbeat_timeout=HEARTBEAT_TIMEOUT,
                           heartbeat_interval=HEARTBEAT_INTERVAL, probe_interval=PROBE_INTERVAL)
    nodes = ["ascend-0", "ascend-1"]
    here = root / "triggers"
    here.mkdir(parents=True)
    (root / "rank.py").write_text(RANK)
    results: dict[str, Any] = {}
    try:
        cluster.start_daemon("--policy-dir", str(policy(root / "policies")))
        for node in nodes:
            cluster.start_agent(node, "sim-ascend", 2)
        cluster.wait_nodes("up", nodes, timeout=60)

        def submit() -> str:
            spec = {"name": "detect", "command": [sys.executable, str(root / "rank.py"), str(here), LINE],
                    "workdir": str(root), "checkpoint_dir": str(root / "ckpt"), "policy": "default",
                    "pools": {"ascend": {"nodes": 1, "ranks_per_node": 1}}}
            (root / "job.yaml").write_text(json.dumps(spec))
            done = subprocess.run([sys.executable, "-m", "supervisor", "job", "submit", "--ctl", cluster.ctl, "--json",
                                   str(root / "job.yaml")], capture_output=True, text=True, check=True)
            return json.loads(done.stdout)["job"]

        job = submit()

        def show() -> dict[str, Any]:
            return request(cluster.ctl, "job_show", {"job": job}, timeout=5)

        def running(attempt_above: int = 0) -> dict[str, Any]:
            return wait_for(lambda: (j := show())["state"] == "running" and j["attempt"] > attempt_above and
                            (j.get("attempt_step") or 0) > 3 and j, 120, "the job to run")

        # chip_error, read by the probe: a chip no rank uses (chip 1 of the job's node).
        times = []
        for _ in range(trials):
            node = running()["nodes"][0]
            t0 = time.time()
            cli(cluster, ["inject"], node, "chip_error", "--chip", "1")
            times.append(first_after(cluster, "chip.health_changed", t0, node=node, chip=1) - t0)
            cli(cluster, ["inject"], node, "ok", "--chip", "1")
            first_after(cluster, "chip.health_changed", t0 + times[-1] + 0.001, node=node, chip=1)
        results["chip_error (probe)"] = summary(times, PROBE_INTERVAL + 0.5)
        print(f"  chip_error: {results['chip_error (probe)']['trials']}", flush=True)

        # A fault line in the rank's log: the rank notes when it printed it.
        times = []
        for i in range(trials):
            running()
            trigger = here / f"rank0-{i}.line"
            trigger.touch()
            printed = float(wait_for(lambda: (Path(str(trigger) + ".at")).exists() and
                                     Path(str(trigger) + ".at").read_text(), 30, "the line"))
            times.append(first_after(cluster, "signal.interconnect_timeout", printed - 0.001, job=job) - printed)
        results["interconnect_timeout (log line)"] = summary(times, 0.5)
        print(f"  log line: {results['interconnect_timeout (log line)']['trials']}", flush=True)

        # A crash: SIGKILL of the rank.
        times = []
        for _ in range(trials):
            j = running()
            pid = rank_pid(root / "cluster" / "nodes" / j["nodes"][0] / "ranks.json", job)
            t0 = time.time()
            os.kill(pid, signal.SIGKILL)
            times.append(first_after(cluster, "signal.crash", t0, job=job) - t0)
            running(j["attempt"])
        results["crash (rank killed)"] = summary(times, None)
        print(f"  crash: {results['crash (rank killed)']['trials']}", flush=True)

        # A hang: the rank stops stepping; timed from its last step.
        times = []
        for _ in range(trials):
            j = running()
            (here / "rank0.hang").touch()
            last = float(wait_for(lambda: (here / "rank0.hang.at").exists() and (here / "rank0.hang.at").read_text(),
                                  30, "the hang"))
            times.append(first_after(cluster, "signal.hang", last, job=job) - last)
            (here / "rank0.hang").unlink()
            (here / "rank0.hang.at").unlink()
            running(j["attempt"])
        results["hang (stops stepping)"] = summary(times, HANG_TIMEOUT + 2.0)
        print(f"  hang: {results['hang (stops stepping)']['trials']}", flush=True)

        # Node lost: the agent is SIGKILLed (its heartbeats stop).
        times = []
        for _ in range(trials):
            t0 = time.time()
            cluster.kill("ascend-1", signal.SIGKILL)
            times.append(first_after(cluster, "node.lost", t0, node="ascend-1") - t0)
            cluster.start_agent("ascend-1", "sim-ascend", 2)
            cluster.wait_nodes("up", ["ascend-1"], timeout=60)
        results["node_lost (agent killed)"] = summary(times, HEARTBEAT_TIMEOUT + 1.0)
        print(f"  node lost: {results['node_lost (agent killed)']['trials']}", flush=True)
    finally:
        cluster.stop_all(grace=3.0)
    return results


def rank_pid(ranks_json: Path, job: str) -> int:
    return next(int(r["pid"]) for r in json.loads(ranks_json.read_text())["ranks"] if r["job"] == job and r["pid"])


def cli(cluster: LocalCluster, command: list[str], *args: str) -> None:
    subprocess.run([sys.executable, "-m", "supervisor", *command, "--ctl", cluster.ctl, *args], capture_output=True,
                   text=True, check=True)


def table(result: dict[str, Any]) -> str:
    rows = ["| signal | median | p90 | max | goal | met |", "|---|---|---|---|---|---|"]
    for name, r in result["signals"].items():
        goal = f"≤ {r['goal_s']:.1f} s" if r["goal_s"] is not None else "—"
        met = {True: "yes", False: "no", None: "—"}[r["met"]]
        rows.append(f"| {name} | {r['median_s']:.2f} s | {r['p90_s']:.2f} s | {r['max_s']:.2f} s | {goal} | {met} |")
    i = result["intervals"]
    rows.append(f"\nIntervals: probe {i['probe_interval_s']:g} s, heartbeat {i['heartbeat_interval_s']:g} s, "
                f"heartbeat timeout {i['heartbeat_timeout_s']:g} s, hang timeout {i['hang_timeout_s']:g} s; "
                f"{result['trials']} trials each.")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind: the cluster's `finally` stops it
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=5)
    p.add_argument("--json", type=Path, default=REPO / "bench" / "out" / "detection.json")
    p.add_argument("--keep", type=Path, default=None, help="work here and keep the logs (default: a temp dir)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tg-detection-") as tmp:
        signals = run(Path(tmp) if args.keep is None else args.keep, args.trials)
    result = {"trials": args.trials, "signals": signals,
              "intervals": {"probe_interval_s": PROBE_INTERVAL, "heartbeat_interval_s": HEARTBEAT_INTERVAL,
                            "heartbeat_timeout_s": HEARTBEAT_TIMEOUT, "hang_timeout_s": HANG_TIMEOUT}}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(table(result))
    print(f"\nJSON: {args.json}")
    return 0



if __name__ == "__main__":
    sys.exit(main())
