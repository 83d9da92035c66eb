"""Chaos: a long run of the example training under trainguard with faults of every kind
at random (seeded) times, then the same schedule under torchrun for the faults it can
survive; ETTR, steps redone, and whether the losses match a fault-free run bit for bit.

    .venv/bin/python bench/chaos.py [--minutes M] [--seed S] [--json PATH]

trainguard runs the job (agents/examples/train_gpt.py, 2 ranks, warm standbys) on two
simulated Ascend nodes with an Nvidia node to fail over to, under the shipped default
policy (detection shortened: hang 3 s, probes 1 s, node lost after 5 s). Faults come
one every `--mean` seconds on average (exponential gaps, at least 20 s apart): a rank
SIGKILLed, a hang, a chip error, an HCCL timeout line, a node dying (its agent and
ranks killed; it comes back empty 10 s later). After M minutes the job is stopped
(its final checkpoint) and a fault-free torchrun run of the same seed trains the same
number of steps; every step's loss must be identical.

ETTR, the same for both: the time the kept steps took (each step's last run) ÷ wall time
from the start to the last step; trainguard's own `job show` ETTR is reported beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import recovery as rb  # noqa: E402  (bench/recovery.py: the trainer, sim chips, the CLI)

from supervisor.cli.client import request  # noqa: E402
from supervisor.cli.localcluster import LocalCluster, wait_for  # noqa: E402
from supervisor.policy.shipped import shipped_policy_dir  # noqa: E402

KINDS = ("crash", "hang", "chip_error", "interconnect_timeout", "node_lost")
TORCHRUN_KINDS = ("crash", "hang", "chip_error", "interconnect_timeout")  # one node: no node to lose
EVERY = 25  # steps between checkpoints


def schedule(minutes: float, mean: float, seed: int) -> list[tuple[float, str]]:
    """(seconds from the start, fault kind), seeded: the same for both supervisors."""
    rng = random.Random(seed)
    out, t = [], 30.0  # the first after the job has trained a little
    kinds: list[str] = []
    while True:
        t += max(20.0, rng.expovariate(1.0 / mean))
        if t > minutes * 60 - 20:
            return out
        if not kinds:  # every kind once per round, in a random order
            kinds = rng.sample(KINDS, len(KINDS))
        out.append((round(t, 1), kinds.pop()))


def ettr_of(metrics: Path, started: float) -> dict[str, Any]:
    """ETTR from the trainer's own lines: the time its kept steps took (each step's last
    run, timed from the line before it in the same process; a process's first step at
    the median) over the wall time from `started` to the last step. Lost: the start,
    every recovery, and the steps redone after one."""
    rows = rb.lines(metrics)
    took: dict[int, float | None] = {}
    for before, row in zip([None, *rows], rows):
        same = before is not None and before["pid"] == row["pid"] and row["step"] == before["step"] + 1
        took[row["step"]] = row["time"] - before["time"] if same else None  # type: ignore[index]
    known = [t for t in took.values() if t is not None]
    step_s = statistics.median(known) if known else 0.0
    kept_s = sum(t if t is not None else step_s for t in took.values())
    wall = (rows[-1]["time"] - started) if rows else 0.0
    return {"steps_kept": len(took), "steps_done": len(rows), "steps_redone": len(rows) - len(took),
            "median_step_s": round(step_s, 4), "kept_s": round(kept_s, 1), "wall_s": round(wall, 1),
            "ettr": round(kept_s / wall, 4) if wall else None}


def per_fault(metrics: Path, started: float, faults: list[dict[str, Any]]) -> None:
    """Add to each fault what it cost: `down_s`, from the last step before it to the
    first step of a new process after it (every restart until the next fault, failed
    ones included), and `redone`, the steps done again."""
    rows = rb.lines(metrics)
    changes = [(a["time"] - started, b["time"] - a["time"], a["step"] - b["step"] + 1)
               for a, b in zip(rows, rows[1:]) if a["pid"] != b["pid"]]
    ends = [f["at_s"] for f in faults[1:]] + [float("inf")]
    for fault, end in zip(faults, ends):
        # The last step before a fault is at most a step (and the injection's own
        # bookkeeping) earlier than the fault.
        mine = [c for c in changes if fault["at_s"] - 2.0 <= c[0] < end - 2.0]
        fault["down_s"] = round(sum(c[1] for c in mine), 2) if mine else None
        fault["redone"] = sum(c[2] for c in mine) if mine else None


def policy(directory: Path) -> Path:
    directory.mkdir(parents=True)
    text = (shipped_policy_dir() / "default.yaml").read_text()
    text = text.replace("hang_timeout: 300s", "hang_timeout: 3s").replace("probe_interval: 5s", "probe_interval: 1s")
    text = text.replace("heartbeat_timeout: 15s", "heartbeat_timeout: 5s").replace("every: 10m", "every: off")
    text = text.replace("max_restarts: 10 ", "max_restarts: 1000 ")
    (directory / "default.yaml").write_text(text)
    return directory


# --- trainguard -------------------------------------------------------------------------


def run_trainguard(root: Path, plan: list[tuple[float, str]], minutes: float) -> dict[str, Any]:
    root.mkdir(parents=True)
    cluster = LocalCluster(root / "cluster", heartbeat_timeout=5.0, heartbeat_interval=1.0, probe_interval=1.0)
    metrics = root / "metrics.jsonl"
    nodes = {"ascend-0": "sim-ascend", "ascend-1": "sim-ascend", "nvidia-0": "sim-nvidia"}
    done: list[dict[str, Any]] = []
    try:
        cluster.start_daemon("--policy-dir", str(policy(root / "policies")))
        for node, kind in nodes.items():
            cluster.start_agent(node, kind, 2)
        cluster.wait_nodes("up", list(nodes), timeout=60)
        argv = [sys.executable, *rb.trainer(10**7, metrics)]
        argv[argv.index("--checkpoint-every") + 1] = str(EVERY)
        spec = {"name": "chaos", "command": argv, "workdir": str(root), "checkpoint_dir": str(root / "ckpt"),
                "policy": "default", "warm_standby": True,
                "pools": {"ascend": {"nodes": 1, "ranks_per_node": 2}, "nvidia": {"nodes": 1, "ranks_per_node": 2}}}
        (root / "job.yaml").write_text(json.dumps(spec))
        started = time.time()
        out = subprocess.run([sys.executable, "-m", "supervisor", "job", "submit", "--ctl", cluster.ctl, "--json",
                              str(root / "job.yaml")], capture_output=True, text=True, check=True)
        job = json.loads(out.stdout)["job"]

        def show() -> dict[str, Any]:
            return request(cluster.ctl, "job_show", {"job": job}, timeout=5)

        for at, kind in plan:
            time.sleep(max(0.0, started + at - time.time()))
            j = wait_for(lambda: (j := show())["state"] == "running" and j, 120, "the job to run")
            node = j["nodes"][0]
            done.append({"at_s": round(time.time() - started, 1), "kind": kind, "node": node, "attempt": j["attempt"]})
            print(f"  {done[-1]['at_s']:7.1f}s {kind} on {node} (attempt {j['attempt']}, pool {j['pool']})", flush=True)
            if kind == "crash":
                os.kill(rb._trainguard_rank_pid(root / "cluster" / "nodes" / node / "ranks.json", job,
                                                random.Random(at).choice([0, 1])), signal.SIGKILL)
            elif kind == "node_lost":
                _kill_node(cluster, node)
                wait_for(lambda: (k := show())["attempt"] > j["attempt"] or k["state"] != "running", 120,
                         "the node to be lost")
                time.sleep(10)  # the node comes back, empty, and back in its pool
                cluster.start_agent(node, nodes[node], 2)
                cluster.wait_nodes("up", [node], timeout=60)
                rb._cli(cluster, ["node", "undrain"], node)
            else:
                rb.inject(cluster, node, kind)
                rb.clear_when_acted_on(cluster, show, j["attempt"], node)
                wait_for(lambda: show()["attempt"] > j["attempt"], 120, "the restart")
                rb._cli(cluster, ["node", "undrain"], node)  # (a chip error excluded it)
        time.sleep(max(0.0, started + minutes * 60 - time.time()))
        final = wait_for(lambda: (j := show())["state"] == "running" and j, 120, "the job to run")
        result = {"pool_at_end": final["pool"], "attempts": final["attempt"], "failovers": len(final["failovers"]),
                  "trainguard_ettr": final["ettr"], "faults": done}
        result.update(ettr_of(metrics, started))
        per_fault(metrics, started, done)
        result["first_step_s"] = round(rb.lines(metrics)[0]["time"] - started, 2)
        subprocess.run([sys.executable, "-m", "supervisor", "job", "stop", "--ctl", cluster.ctl, job],
                       capture_output=True, text=True, check=False)
        wait_for(lambda: show()["state"] in ("stopped", "failed", "succeeded"), 120, "the job to stop")
    finally:
        cluster.stop_all(grace=3.0)
        rb.stop_processes_in(root)
    return result


def _kill_node(cluster: LocalCluster, node: str) -> None:
    """A node dies: its agent and every process under it, at once."""
    pid = cluster.procs[node].pid
    try:
        family = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        family = []
    for p in family:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.Error:
            pass
    cluster.procs[node].popen.wait(timeout=10)  # type: ignore[union-attr]


# --- torchrun -----------------------------------------------------------------------------


def run_torchrun(root: Path, plan: list[tuple[float, str]], minutes: float) -> dict[str, Any]:
    root.mkdir(parents=True)
    metrics = root / "metrics.jsonl"
    chips = rb.SimChips(root / "chips.json")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINGUARD_")}
    env.update(TRAINGUARD_SIM_CHIPS=str(chips.path), TRAINGUARD_ACCELERATOR="sim-ascend",
               ASCEND_RT_VISIBLE_DEVICES="0,1", PYTHONUNBUFFERED="1")
    argv = rb.trainer(10**7, metrics, root / "ckpt", rb.TORCHRUN_PG_TIMEOUT)
    argv[argv.index("--checkpoint-every") + 1] = str(EVERY)
    log = open(root / "torchrun.log", "w")
    started = time.time()
    proc = subprocess.Popen([str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc-per-node=2",
                             "--max-restarts=1000", *argv], env=env, cwd=str(root), stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    done = []
    try:
        for at, kind in plan:
            if kind not in TORCHRUN_KINDS:
                continue
            time.sleep(max(0.0, started + at - time.time()))
            victim = rb.rank_pid(proc.pid, lambda e: e.get("RANK") == "1")
            if victim is None:
                continue  # between restarts: this fault finds nothing to hit
            done.append({"at_s": round(time.time() - started, 1), "kind": kind})
            print(f"  {done[-1]['at_s']:7.1f}s {kind} (torchrun)", flush=True)
            if kind == "crash":
                os.kill(victim, signal.SIGKILL)
            else:
                chips.set(kind)
                wait_for(lambda: not psutil.pid_exists(victim) or rb._zombie(victim), 120, "the rank to end", 0.02)
                chips.set(None)
        time.sleep(max(0.0, started + minutes * 60 - time.time()))
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        rb.stop_processes_in(root)
        log.close()
    per_fault(metrics, started, done)
    rows = rb.lines(metrics)
    return {"faults": done, "restarts": rb._restarts(root / "torchrun.log"), **ettr_of(metrics, started),
            "first_step_s": round(rows[0]["time"] - started, 2) if rows else None}


# --- the reference ------------------------------------------------------------------------


def reference(root: Path, steps: int) -> dict[int, float]:
    root.mkdir(parents=True)
    metrics = root / "metrics.jsonl"
    argv = [*rb.trainer(10**7, metrics, root / "ckpt"), "--stop-at", str(steps)]  # the chaos run's schedule
    argv[argv.index("--checkpoint-every") + 1] = "0"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINGUARD_")}
    subprocess.run([str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc-per-node=2", *argv],
                   env=env, cwd=str(root), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return {r["step"]: r["loss"] for r in rb.lines(metrics)}


def main(argv: list[str] | None = None) -> int:
    rb.stop_cleanly_on_sigterm()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--mean", type=float, default=120.0, help="mean seconds between faults")
    p.add_argument("--systems", default="trainguard,torchrun")
    p.add_argument("--json", type=Path, default=REPO / "bench" / "out" / "chaos.json")
    p.add_argument("--keep", type=Path, default=None, help="work here and keep the logs")
    args = p.parse_args(argv)
    plan = schedule(args.minutes, args.mean, args.seed)
    print(f"schedule (seed {args.seed}): " + ", ".join(f"{k}@{t:.0f}s" for t, k in plan), flush=True)
    result: dict[str, Any] = {"minutes": args.minutes, "seed": args.seed, "mean_s": args.mean,
                              "schedule": [{"at_s": t, "kind": k} for t, k in plan]}
    systems = args.systems.split(",")
    with tempfile.TemporaryDirectory(prefix="tg-chaos-") as tmp:
        root = Path(tmp) if args.keep is None else args.keep
        if "trainguard" in systems:
            tg = run_trainguard(root / "trainguard", plan, args.minutes)
            got = {r["step"]: r["loss"] for r in rb.lines(root / "trainguard" / "metrics.jsonl")}
            steps = max(got)
            print(f"  reference: a fault-free run of {steps} steps", flush=True)
            ref = reference(root / "reference", steps)
            tg["losses_identical"] = all(got.get(s) == ref.get(s) for s in range(1, steps + 1))
            tg["steps_compared"] = steps
            result["trainguard"] = tg
        if "torchrun" in systems:
            result["torchrun"] = run_torchrun(root / "torchrun", plan, args.minutes)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(table(result))
    print(f"\nJSON: {args.json}")
    return 0


def table(result: dict[str, Any]) -> str:
    rows = ["| | faults | ETTR | steps kept | steps redone | ends on | losses identical to fault-free |",
            "|---|---|---|---|---|---|---|"]
    tg, tr = result.get("trainguard"), result.get("torchrun")
    if tg:
        rows.append(f"| trainguard | {len(tg['faults'])} | {tg['ettr']} (its own: {tg['trainguard_ettr']}) | "
                    f"{tg['steps_kept']} | {tg['steps_redone']} | {tg['pool_at_end']} ({tg['failovers']} failover) | "
                    f"{'yes' if tg['losses_identical'] else 'NO'} ({tg['steps_compared']} steps) |")
    if tr:
        rows.append(f"| torchrun --max-restarts | {len(tr['faults'])} (no node loss) | {tr['ettr']} | "
                    f"{tr['steps_kept']} | {tr['steps_redone']} | the same node | — |")
    # What each fault cost: the time without a step, and the steps done again.
    rows += ["", "| fault (at) | trainguard: no step for / steps redone | torchrun: no step for / steps redone |",
             "|---|---:|---:|"]
    torchrun_faults = list((tr or {}).get("faults", []))

    def cost(f: dict[str, Any] | None) -> str:
        if f is None:
            return "—"
        return "not recovered" if f.get("down_s") is None else f"{f['down_s']:.2f} s / {f['redone']}"

    start = [f"{(s or {}).get('first_step_s', '—')} s" for s in (tg, tr)]
    rows.append(f"| start (submit → first step) | {start[0] if tg else '—'} | {start[1] if tr else '—'} |")
    for f in (tg or {}).get("faults", []) or torchrun_faults:
        other = next((t for t in torchrun_faults if t["kind"] == f["kind"] and abs(t["at_s"] - f["at_s"]) < 20), None)
        rows.append(f"| {f['kind']} ({f['at_s']:.0f} s) | {cost(f) if tg else '—'} | "
                    f"{cost(other) if tr else '—'} |")
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
