"""Time from a fault to the first completed training step after recovery: trainguard
against torchrun's elastic agent (`--max-restarts`), on the same example trainer, in
one run, plus the cold floor (fresh processes resuming from a checkpoint).

    .venv/bin/python bench/recovery.py [--trials N] [--faults crash,hang,...] [--json PATH]

The trainer is agents/examples/train_gpt.py at 2.4M parameters (3 layers, width 256; a
28 MB checkpoint), 2 ranks on gloo, a checkpoint every 20 steps. Faults, on rank 1:

- crash: SIGKILL of the rank's process;
- hang: the rank stops stepping (the simulated chip's `hang`): trainguard's hang timeout
  is 3 s here; torchrun only notices when the process group's timeout (30 s here, 10 min
  by default) fails the peer's collective;
- chip_error / interconnect_timeout: the rank prints the vendor's error line and fails
  (a simulated chip's fault, acted out by the runtime under both supervisors).

A trial waits until training is past a checkpoint, injects the fault, and reads the
trainer's metrics (one line per step from rank 0, with its pid) for the first step by a
new process. `first_attempt_ok`: that first restart trained (torchrun's may fail and
restart again; trainguard's job attempt went up by exactly one). JSON:
`{"trainguard": {FAULT: {"median_s", "p90_s", "first_attempt_ok", "trials"}},
"torchrun": {...}, "floor": {"median_s", ...}}`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from supervisor.cli.client import request  # noqa: E402
from supervisor.cli.localcluster import LocalCluster, wait_for  # noqa: E402
from supervisor.policy.shipped import shipped_policy_dir  # noqa: E402

FAULTS = ("crash", "hang", "chip_error", "interconnect_timeout")
MODEL = ["--layers", "3", "--width", "256", "--seed", "7", "--data-bytes", "2000000"]
EVERY = 20
HANG_TIMEOUT = 3.0
TORCHRUN_PG_TIMEOUT = 30.0
#: Longest a trial may take to recover before it counts as not recovered.
RECOVERY_LIMIT = 120.0


def trainer(steps: int, metrics: Path, ckpt: Path | None = None, pg_timeout: float | None = None) -> list[str]:
    argv = ["-m", "agents.examples.train_gpt", *MODEL, "--steps", str(steps), "--checkpoint-every", str(EVERY),
            "--metrics", str(metrics)]
    if ckpt is not None:
        argv += ["--ckpt-dir", str(ckpt)]
    if pg_timeout is not None:
        argv += ["--pg-timeout", str(pg_timeout)]
    return argv


# --- reading progress -------------------------------------------------------------------


def lines(metrics: Path) -> list[dict[str, Any]]:
    try:
        text = metrics.read_text()
    except OSError:
        return []
    out = []
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass  # a line being written
    return out


def past_checkpoint(metrics: Path, margin: int = 5) -> dict[str, Any] | None:
    """The last line, once training is `margin` steps past a checkpoint step."""
    seen = lines(metrics)
    if not seen:
        return None
    last = seen[-1]
    return last if last["step"] % EVERY >= margin and last["step"] > EVERY else None


def first_new_step(metrics: Path, after: float, old_pids: set[int]) -> dict[str, Any] | None:
    return next((r for r in lines(metrics) if r.get("time", 0) > after and r.get("pid") not in old_pids), None)


def summarise(times: list[float | None], first_ok: list[bool]) -> dict[str, Any]:
    done = sorted(t for t in times if t is not None)
    return {
        "median_s": round(statistics.median(done), 3) if done else None,
        "p90_s": round(done[min(len(done) - 1, int(0.9 * len(done)))], 3) if done else None,
        "first_attempt_ok": f"{sum(first_ok)}/{len(first_ok)}",
        "recovered": f"{len(done)}/{len(times)}",
        "trials": [round(t, 3) if t is not None else None for t in times],
    }


def rank_pid(root: int, match: Callable[[dict[str, str]], bool]) -> int | None:
    """The training rank among `root`'s descendants whose environment matches (never a
    rank of anyone else's run on this machine; never a trainguard rank wrapper)."""
    try:
        candidates = psutil.Process(root).children(recursive=True)
    except psutil.Error:
        return None
    for process in candidates:
        try:
            cmd = " ".join(process.cmdline())
            if "agents.examples.train_gpt" in cmd and "agents.rankwrap" not in cmd and match(process.environ()):
                return process.pid
        except psutil.Error:
            continue
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- simulated chips for torchrun -------------------------------------------------------


class SimChips:
    """The sim chip file the runtime reads (TRAINGUARD_SIM_CHIPS): for torchrun, written
    here; under trainguard, the agents keep their own and `trainguard inject` sets it."""

    def __init__(self, path: Path, chips: int = 2) -> None:
        self.path, self.chips = path, chips
        self.set(None)

    def set(self, act: str | None, chip: int = 1) -> None:
        chips = [{"index": i, **({"act": act} if act and i == chip else {})} for i in range(self.chips)]
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"chips": chips}))
        os.replace(tmp, self.path)


# --- torchrun -----------------------------------------------------------------------------


def run_torchrun(root: Path, faults: list[str], trials: int) -> dict[str, Any]:
    root.mkdir(parents=True)
    metrics, ckpt = root / "metrics.jsonl", root / "ckpt"
    chips = SimChips(root / "chips.json")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINGUARD_")}
    env.update(TRAINGUARD_SIM_CHIPS=str(chips.path), TRAINGUARD_ACCELERATOR="sim-ascend",
               ASCEND_RT_VISIBLE_DEVICES="0,1", PYTHONUNBUFFERED="1")
    torchrun = Path(sys.executable).with_name("torchrun")
    log = open(root / "torchrun.log", "w")
    proc = subprocess.Popen([str(torchrun), "--standalone", "--nproc-per-node=2",
                             f"--max-restarts={len(faults) * trials * 3 + 5}",
                             *trainer(10**7, metrics, ckpt, TORCHRUN_PG_TIMEOUT)],
                            env=env, cwd=str(root), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    results: dict[str, Any] = {}
    try:
        for fault in faults:
            times: list[float | None] = []
            first_ok: list[bool] = []
            for _ in range(trials):
                wait_for(lambda: past_checkpoint(metrics), 180, "torchrun's training past a checkpoint", 0.05)
                old = {r["pid"] for r in lines(metrics)}
                victim = rank_pid(proc.pid, lambda e: e.get("RANK") == "1")
                restarts_before = _restarts(root / "torchrun.log")
                t0 = time.time()
                if fault == "crash":
                    os.kill(victim, signal.SIGKILL)  # type: ignore[arg-type]
                else:
                    chips.set(fault)
                    # The fault must hit the running rank only: clear it once that rank is gone.
                    wait_for(lambda: not psutil.pid_exists(victim) or _zombie(victim), RECOVERY_LIMIT,  # type: ignore[arg-type]
                             "the faulty rank to end", 0.01)
                    chips.set(None)
                try:
                    row = wait_for(lambda: first_new_step(metrics, t0, old), RECOVERY_LIMIT, "a new step", 0.01)
                    times.append(row["time"] - t0)
                except AssertionError:
                    times.append(None)
                # Recovered, by one restart: a restart that never trains again is not a success.
                first_ok.append(times[-1] is not None and _restarts(root / "torchrun.log") - restarts_before == 1)
                print(f"  torchrun {fault}: {times[-1] if times[-1] is None else round(times[-1], 2)} s", flush=True)
            results[fault] = summarise(times, first_ok)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        stop_processes_in(root)
        log.close()
    return results


def stop_processes_in(root: Path) -> list[int]:
    """SIGKILL every process working in `root` (its cwd there): what a killed torchrun
    leaves behind (it starts each worker in a session of its own, so killing its process
    group misses them), and ranks of a job whose cluster was stopped mid-start. A bench
    that leaves ranks training skews every measurement after it. Returns the pids."""
    marker = str(root.resolve())
    killed = []
    for process in psutil.process_iter(["pid", "cwd"]):
        cwd = process.info.get("cwd") or ""
        if process.pid != os.getpid() and (cwd == marker or cwd.startswith(marker + os.sep)):
            try:
                process.kill()  # psutil checks the pid is still the process it saw
                killed.append(process.pid)
            except psutil.Error:
                pass
    psutil.wait_procs([p for p in psutil.process_iter() if p.pid in killed], timeout=5)
    return killed


def _restarts(log: Path) -> int:
    """torchrun's worker-group restarts so far (one log line each)."""
    try:
        return len(re.findall(r"failed \(exitcode", log.read_text()))
    except OSError:
        return 0


def _zombie(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True


# --- the floor ----------------------------------------------------------------------------


def run_floor(root: Path, trials: int) -> dict[str, Any]:
    """Fresh processes (no supervisor): spawn → import torch → process group → model →
    load the checkpoint → one step, timed to that step's metrics line."""
    root.mkdir(parents=True)
    metrics, ckpt = root / "metrics.jsonl", root / "ckpt"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINGUARD_")}
    _pair(env, trainer(EVERY, metrics, ckpt), root).wait()  # a checkpoint to resume from
    times = []
    for i in range(trials):
        target = EVERY + i + 1
        t0 = time.time()
        _pair(env, trainer(target, metrics, ckpt), root, checkpoint_every_zero=True).wait()
        row = next(r for r in lines(metrics) if r["step"] == target and r["time"] > t0)
        times.append(row["time"] - t0)
        print(f"  floor: {times[-1]:.2f} s", flush=True)
    return {"median_s": round(statistics.median(times), 3), "trials": [round(t, 3) for t in times]}


def _pair(env: dict[str, str], argv: list[str], cwd: Path, checkpoint_every_zero: bool = False) -> subprocess.Popen:
    """Two ranks as plain processes; returns rank 0 (rank 1 ends with it)."""
    if checkpoint_every_zero:
        argv = [a if a != str(EVERY) or argv[i - 1] != "--checkpoint-every" else "0" for i, a in enumerate(argv)]
    port = free_port()
    procs = []
    for rank in (0, 1):
        e = dict(env, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                 MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        procs.append(subprocess.Popen([sys.executable, *argv], env=e, cwd=str(cwd), stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL))
    for p in procs[1:]:
        p.wait()
    return procs[0]


# --- trainguard ---------------------------------------------------------------------------


def bench_policy(directory: Path) -> Path:
    """The shipped default, with every fault a restart (no failover: this measures the
    restart), a 3 s hang timeout and probes every 500 ms."""
    directory.mkdir(parents=True)
    text = (shipped_policy_dir() / "default.yaml").read_text()
    text = re.sub(r"  - name: ascend-unstable\n(.*\n)*?    then: \{action: failover, to: nvidia\}\n\n", "", text)
    text = re.sub(r"  - name: bad-node\n(.*\n)*?    then: .*\n\n", "", text)
    text = text.replace("hang_timeout: 300s", f"hang_timeout: {HANG_TIMEOUT:g}s")
    text = text.replace("probe_interval: 5s", "probe_interval: 500ms")
    text = text.replace("every: 10m", "every: off")
    text = text.replace("max_restarts: 10 ", "max_restarts: 1000 ")
    assert "ascend-unstable" not in text and "max_restarts: 1000" in text, "the shipped policy changed: update the bench"
    (directory / "default.yaml").write_text(text)
    return directory


def run_trainguard(root: Path, faults: list[str], trials: int, warm: bool = True) -> dict[str, Any]:
    root.mkdir(parents=True)
    cluster = LocalCluster(root / "cluster", heartbeat_timeout=5.0, heartbeat_interval=0.5, probe_interval=0.5)
    metrics = root / "metrics.jsonl"
    results: dict[str, Any] = {}
    nodes = ["ascend-0", "ascend-1"]
    try:
        cluster.start_daemon("--policy-dir", str(bench_policy(root / "policies")))
        for node in nodes:
            cluster.start_agent(node, "sim-ascend", 2)
        cluster.wait_nodes("up", nodes, timeout=60)
        spec = {"name": "bench", "command": [sys.executable, *trainer(10**7, metrics)], "workdir": str(root),
                "checkpoint_dir": str(root / "ckpt"), "policy": "default",
                "pools": {"ascend": {"nodes": 1, "ranks_per_node": 2}}, "warm_standby": warm}
        (root / "job.yaml").write_text(json.dumps(spec))
        submitted = subprocess.run([sys.executable, "-m", "supervisor", "job", "submit", "--ctl", cluster.ctl,
                                    "--json", str(root / "job.yaml")], capture_output=True, text=True, check=True)
        job = json.loads(submitted.stdout)["job"]

        def show() -> dict[str, Any]:
            return request(cluster.ctl, "job_show", {"job": job}, timeout=5)

        for fault in faults:
            times: list[float | None] = []
            first_ok: list[bool] = []
            for _ in range(trials):
                wait_for(lambda: show()["state"] == "running" and past_checkpoint(metrics), 180,
                         "trainguard's job past a checkpoint", 0.05)
                if warm:  # the standbys on the job's node are up (they start once the attempt trains)
                    # Those on the job's node: the job's warm spares elsewhere are ready long
                    # before the standbys a restart on this node takes.
                    wait_for(lambda: cluster.ready_standbys(show()["nodes"][0]) >= 2, 120, "the warm standbys", 0.05)
                before = show()
                node = before["nodes"][0]
                old = {r["pid"] for r in lines(metrics)}
                t0 = time.time()
                if fault == "crash":
                    victim = _trainguard_rank_pid(root / "cluster" / "nodes" / node / "ranks.json", job, 1)
                    os.kill(victim, signal.SIGKILL)  # type: ignore[arg-type]
                else:
                    inject(cluster, node, fault)
                    clear_when_acted_on(cluster, show, before["attempt"], node)
                try:
                    row = wait_for(lambda: first_new_step(metrics, t0, old), RECOVERY_LIMIT, "a new step", 0.01)
                    times.append(row["time"] - t0)
                except AssertionError:
                    times.append(None)
                first_ok.append(times[-1] is not None and show()["attempt"] == before["attempt"] + 1)
                if fault != "crash":  # its node back in the pool (a chip error excluded it)
                    _cli(cluster, ["node", "undrain"], node)
                print(f"  trainguard {fault}: {times[-1] if times[-1] is None else round(times[-1], 2)} s", flush=True)
            results[fault] = summarise(times, first_ok)
    finally:
        cluster.stop_all(grace=3.0)
        stop_processes_in(root)
    return results


def inject(cluster: LocalCluster, node: str, fault: str, chip: int = 1) -> None:
    """In-process (milliseconds), not through the CLI (a Python start)."""
    request(cluster.ctl, "inject", {"node": node, "fault": fault, "chip": chip}, timeout=10)


def clear_when_acted_on(cluster: LocalCluster, show: Callable[[], dict[str, Any]], attempt: int, node: str) -> None:
    """A transient fault: gone once trainguard decided on it (the attempt is ending), so
    that the restarted rank on that chip — a warm standby steps within a second — does
    not meet it again."""
    wait_for(lambda: (j := show())["attempt"] > attempt or j["state"] != "running", RECOVERY_LIMIT,
             "the fault to be acted on", 0.01)
    inject(cluster, node, "ok")


def _trainguard_rank_pid(ranks_json: Path, job: str, rank: int) -> int:
    """The rank's pid as its agent recorded it (a warm standby's environment in /proc
    is the one it started with, not its rank's)."""
    for r in json.loads(ranks_json.read_text())["ranks"]:
        if r["job"] == job and r["rank"] == rank and r["pid"]:
            return int(r["pid"])
    raise RuntimeError(f"rank {rank} of {job} is not in {ranks_json}")


def _cli(cluster: LocalCluster, command: list[str], *args: str) -> None:
    """`trainguard COMMAND --ctl CTL ARGS...`, as an operator would type it."""
    subprocess.run([sys.executable, "-m", "supervisor", *command, "--ctl", cluster.ctl, *args],
                   capture_output=True, text=True, check=True)


# --- main ---------------------------------------------------------------------------------


def table(result: dict[str, Any]) -> str:
    rows = ["| fault | trainguard median (p90) | first attempt ok | torchrun median (p90) | first attempt ok "
            "| trainguard ÷ torchrun |", "|---|---|---|---|---|---|"]

    def cell(r: dict[str, Any] | None) -> tuple[str, str]:
        if not r:
            return "—", "—"
        if r["median_s"] is None:
            return f"not recovered in {RECOVERY_LIMIT:.0f} s", r["first_attempt_ok"]
        return f"{r['median_s']:.2f} s ({r['p90_s']:.2f})", r["first_attempt_ok"]

    for fault in result["faults"]:
        tg, tr = result["trainguard"].get(fault), result["torchrun"].get(fault)
        ratio = (f"{tg['median_s'] / tr['median_s']:.2f}" if tg and tr and tg["median_s"] and tr["median_s"]
                 else "—")
        rows.append(f"| {fault} | {' | '.join(cell(tg))} | {' | '.join(cell(tr))} | {ratio} |")
    floor = result.get("floor")
    if floor:
        rows.append(f"| cold floor (fresh processes: import torch, process group, model, load, one step) "
                    f"| {floor['median_s']:.2f} s | | | | |")
    return "\n".join(rows)


def stop_cleanly_on_sigterm() -> None:
    """A SIGTERM (kill, timeout) unwinds like Ctrl-C: the clusters, ranks and torchrun
    this bench started are stopped by its `finally`s instead of being left training."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def main(argv: list[str] | None = None) -> int:
    stop_cleanly_on_sigterm()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=5)
    p.add_argument("--faults", default=",".join(FAULTS))
    p.add_argument("--systems", default="trainguard,torchrun,floor")
    p.add_argument("--json", type=Path, default=REPO / "bench" / "out" / "recovery.json")
    p.add_argument("--keep", type=Path, default=None, help="work here and keep the logs (default: a temp dir)")
    args = p.parse_args(argv)
    faults = [f for f in args.faults.split(",") if f]
    unknown = set(faults) - set(FAULTS)
    if unknown:
        p.error(f"unknown faults {sorted(unknown)}; known: {', '.join(FAULTS)}")
    systems = args.systems.split(",")
    result: dict[str, Any] = {"faults": faults, "trials": args.trials, "trainguard": {}, "torchrun": {},
                              "machine": {"cpus": os.cpu_count(), "python": platform.python_version()}}
    with tempfile.TemporaryDirectory(prefix="tg-recovery-") as tmp:
        root = Path(tmp) if args.keep is None else args.keep
        def save() -> None:  # after each system: a long run cut short keeps what it measured
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(result, indent=2))

        if "floor" in systems:
            result["floor"] = run_floor(root / "floor", args.trials)
            save()
        if "trainguard" in systems:
            result["trainguard"] = run_trainguard(root / "trainguard", faults, args.trials)
            save()
        if "trainguard-cold" in systems:  # the same, without warm standbys
            result["trainguard_cold"] = run_trainguard(root / "trainguard-cold", faults, args.trials, warm=False)
        if "torchrun" in systems:
            result["torchrun"] = run_torchrun(root / "torchrun", faults, args.trials)
    import torch

    result["machine"]["torch"] = torch.__version__
    save()
    print(table(result))
    print(f"\nJSON: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
