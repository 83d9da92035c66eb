"""`trainguard demo`: the whole product on one machine, in under three minutes.

A daemon, an Ascend pool (two sim-ascend agents) and an Nvidia pool (one sim-nvidia
agent) start as real processes; the example trainer is submitted as a job under the
shipped default policy (its detection timings shortened so a hang shows in seconds, not
minutes, and said so); then a scripted sequence of faults is injected with `trainguard
inject` — a crash, a hang, a chip error, and HCCL timeouts until the policy's failover
threshold is crossed — and the job ends on the Nvidia pool. Every fault is detected by
the production detectors (the injection is acted out where the real fault shows) and
handled by the policy; the demo only watches, through the daemon's control endpoint and
its events. At the end: a summary (each fault with its detection latency, each recovery
with its time, the failover, steps redone, ETTR) and a check of the per-step losses
against a fault-free run of the same seed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from supervisor.cli.client import ClientError, request
from supervisor.cli.localcluster import LocalCluster, WaitTimeout, wait_for
from supervisor.cli.render import make_console
from supervisor.policy.shipped import shipped_policy_dir

ASCEND = ["ascend-0", "ascend-1"]
NVIDIA = "nvidia-0"
#: The example trainer, sized for the demo: ~20 ms a step with 2 ranks here.
TRAIN_MODULE = "agents.examples.train_gpt"
TRAIN_ARGS = ["--layers", "1", "--width", "64", "--data-bytes", "300000", "--seed", "1234"]
STEPS = 900
#: The shipped default policy's detection, shortened for a demo that lasts minutes.
DEMO_DETECT = {"hang_timeout: 300s": "hang_timeout: 4s", "probe_interval: 5s": "probe_interval: 500ms",
               "every: 10m": "every: off", "before_failover_timeout: 120s": "before_failover_timeout: 20s"}


@dataclass
class Fault:
    signal: str
    node: str
    injected_at: float
    detected_at: float | None = None
    rule: str | None = None
    action: str | None = None
    recovered_at: float | None = None
    step: int | None = None

    def as_json(self) -> dict[str, Any]:
        return {"signal": self.signal, "node": self.node, "injected_at": self.injected_at,
                "detected_at": self.detected_at, "detection_s": _delta(self.detected_at, self.injected_at),
                "rule": self.rule, "action": self.action, "step": self.step}


@dataclass
class Run:
    root: Path
    cluster: LocalCluster
    console: Console
    job: str = ""
    faults: list[Fault] = field(default_factory=list)
    started: float = field(default_factory=time.time)

    def show(self) -> dict[str, Any]:
        return request(self.cluster.ctl, "job_show", {"job": self.job}, timeout=5)


def run_demo(work_dir: Path | None, summary_json: Path | None = None, plot: Path | None = None) -> int:
    console = make_console()
    temporary = work_dir is None
    root = Path(tempfile.mkdtemp(prefix="trainguard-demo-")) if temporary else work_dir
    root.mkdir(parents=True, exist_ok=True)
    cluster = LocalCluster(root, heartbeat_timeout=3.0, heartbeat_interval=0.5, probe_interval=0.5)
    run = Run(root, cluster, console)
    # SIGTERM (timeout, a cancelled CI job) must clean up like Ctrl-C: no process left.
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        _start(run)
        _faults(run)
        summary = _finish(run)
        if summary_json is not None:
            summary_json.parent.mkdir(parents=True, exist_ok=True)
            summary_json.write_text(json.dumps(summary, indent=2))
            console.print(f"summary written to {escape(str(summary_json))}")
        if plot is not None:
            from supervisor.cli.timeline import PlotUnavailable, plot_timeline

            events = request(cluster.ctl, "events", {"job": run.job, "limit": 5000}, timeout=5)["events"]
            try:
                plot_timeline(run.show(), events, _metrics_path(run), plot)
                console.print(f"timeline plotted to {escape(str(plot))}")
            except PlotUnavailable as exc:
                console.print(f"[yellow]no plot: {escape(str(exc))}[/]")
        if not temporary:
            console.print(f"logs and state: {escape(str(root))}")
        return 0 if summary["loss_matches_reference"] and summary["final_pool"] == "nvidia" else 1
    except KeyboardInterrupt:
        console.print("[yellow]interrupted: stopping every process the demo started[/]")
        return 130
    except (WaitTimeout, ClientError, OSError, subprocess.SubprocessError) as exc:
        console.print(f"[bold red]demo failed:[/] {escape(str(exc))}")
        console.print(f"logs: {escape(str(root / 'logs'))}")
        temporary = False  # keep the evidence
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
        cluster.stop_all()
        if temporary:
            shutil.rmtree(root, ignore_errors=True)


def _raise_interrupt(*_: Any) -> None:
    raise KeyboardInterrupt


# --- the story ---------------------------------------------------------------------------


def _start(run: Run) -> None:
    console, cluster = run.console, run.cluster
    console.rule("[bold]trainguard demo")
    console.print("A training job on an unstable Ascend pool, kept alive and moved to Nvidia by policy.\n")
    policies = run.root / "policies"
    policies.mkdir(exist_ok=True)
    text = (shipped_policy_dir() / "default.yaml").read_text()
    for old, new in DEMO_DETECT.items():
        text = text.replace(old, new)
    (policies / "default.yaml").write_text(text)
    console.print("policy: the shipped [bold]default[/] (detection shortened for the demo: hang after 4s, "
                  "chips read every 0.5s)")
    cluster.start_daemon("--policy-dir", str(policies))
    for node in ASCEND:
        cluster.start_agent(node, "sim-ascend", 2)
    cluster.start_agent(NVIDIA, "sim-nvidia", 2)
    cluster.wait_nodes("up", [*ASCEND, NVIDIA], timeout=60)
    console.print(f"cluster: daemon + Ascend pool ({', '.join(ASCEND)}) + Nvidia pool ({NVIDIA}), 2 chips each")
    work = run.root / "work"
    work.mkdir(exist_ok=True)
    spec = {
        "name": "gpt", "workdir": str(work), "checkpoint_dir": str(work / "ckpt"), "policy": "default",
        "command": [sys.executable, "-m", TRAIN_MODULE, *TRAIN_ARGS, "--steps", str(STEPS),
                    "--checkpoint-every", "25", "--metrics", str(work / "metrics.jsonl")],
        "pools": {"ascend": {"nodes": 1, "ranks_per_node": 2}, "nvidia": {"nodes": 1, "ranks_per_node": 2}},
        # A standby per rank, torch imported and the model built: restarts skip the cold start.
        "warm_standby": True,
    }
    run.job = request(cluster.ctl, "job_submit", {"spec": spec}, timeout=10)["job"]
    console.print(f"job [bold]{run.job}[/]: {STEPS} steps of a small GPT, 2 ranks (gloo), checkpoint every 25 steps, "
                  "a warm standby per rank\n")
    _wait_progress(run, 30, "the job to train")


def _faults(run: Run) -> None:
    script = [
        ("crash", "the agent SIGKILLs a training rank"),
        ("hang", "a rank stops stepping inside its collective"),
        ("chip_error", "a chip reports critical; the rank on it fails with the vendor's device error"),
        ("interconnect_timeout", "a rank prints HCCL EI0002 and fails"),
        ("interconnect_timeout", "again"),
        ("interconnect_timeout", "a third time: the policy's failover threshold"),
    ]
    for fault, what in script:
        job = run.show()
        node = job["nodes"][0]
        step = job["step"] or 0
        attempt_before = job["attempt"]
        run.console.print(f"[bold]inject[/] {fault} on {node} chip 0 at step {step}: {what}")
        injected = time.time()
        _inject(run, node, fault)
        record = Fault(fault, node, injected, step=step)
        run.faults.append(record)
        incident = wait_for(lambda: _incident_after(run, injected), 90, f"the {fault} to be detected")
        record.detected_at = incident["ts"]
        if fault in ("hang", "interconnect_timeout"):
            _inject(run, node, "ok")  # the fault is over; the next one is a new fault
        decision = wait_for(lambda: _decision_after(run, injected), 30, "the policy's decision")
        record.rule, record.action = decision.get("rule"), decision.get("action")
        run.console.print(f"  detected as [bold]{escape(incident['signal'])}[/] on {escape(str(incident.get('node')))} "
                          f"after {record.detected_at - injected:.1f}s → rule [bold]{escape(str(record.rule))}[/]: "
                          f"{escape(str(record.action))}", highlight=False)
        # Recovered: a new attempt has completed a step past the checkpoint it resumed from.
        job = _watch(run, lambda j: j["state"] == "running" and j["attempt"] > attempt_before
                     and j["attempt_step"] is not None, 120, "the job to train again")
        record.recovered_at = time.time()
        where = f"on {job['pool']} ({', '.join(job['nodes'])})"
        run.console.print(f"  training again {where} after {record.recovered_at - injected:.1f}s, attempt "
                          f"{job['attempt']}, resumed from the checkpoint at step {job['resumed_from']}\n", highlight=False)
        _wait_progress(run, (job["step"] or 0) + 15, "the job to make progress")


def _finish(run: Run) -> dict[str, Any]:
    console = run.console
    done = _watch(run, lambda j: j["state"] in ("succeeded", "failed", "stopped"), 240, "the job to finish")
    console.rule("[bold]summary")
    console.print(f"job {done['id']} {done['state']} on [bold]{done['pool']}[/] at step {done['step']} "
                  f"after {done['restarts']} restarts and {len(done['failovers'])} failover(s)")
    for f in run.faults:
        console.print(f"  {f.signal:<21} on {f.node:<9} detected in {_delta(f.detected_at, f.injected_at):>5.1f}s, "
                      f"training again in {_delta(f.recovered_at, f.injected_at):>5.1f}s  (rule {f.rule}: {f.action})",
                      highlight=False)
    for fo in done["failovers"]:
        console.print(f"  failover {fo['from_pool']} → {fo['to_pool']} at step {fo['step']} (rule {fo['rule']})")
    metrics = _metrics_path(run)
    written = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else []
    redone = len(written) - len({w["step"] for w in written})
    console.print(f"  steps redone after restarts: {redone}; effective training time ratio (ETTR): {done['ettr']}")
    reference = _reference(run)
    got = {w["step"]: w["loss"] for w in written}
    matches = got == reference
    console.print(f"  per-step losses identical to a fault-free run of the same seed: "
                  f"{'[bold green]yes[/]' if matches else '[bold red]NO[/]'} ({len(reference)} steps compared)")
    return {
        "job": done["id"],
        "state": done["state"],
        # The trainer's own record of the steps it completed (the job's step is the
        # last heartbeat, which may be a moment behind).
        "steps_completed": max(got) if got else done["step"],
        "target_steps": STEPS,
        "final_pool": done["pool"],
        "faults": [f.as_json() for f in run.faults],
        "recoveries": [{"signal": f.signal, "recovery_s": _delta(f.recovered_at, f.injected_at)} for f in run.faults],
        "failovers": [{"from_pool": f["from_pool"], "to_pool": f["to_pool"], "step": f["step"], "rule": f["rule"]}
                      for f in done["failovers"]],
        "restarts": done["restarts"],
        "steps_redone": redone,
        "ettr": done["ettr"],
        "loss_matches_reference": matches,
        "training_argv": [sys.executable, "-m", TRAIN_MODULE, *TRAIN_ARGS, "--steps", str(STEPS),
                          "--checkpoint-every", "25"],
        "world_size": 2,
        "metrics_path": str(metrics),
        "wall_s": round(time.time() - run.started, 1),
    }


# --- helpers ------------------------------------------------------------------------------


def _inject(run: Run, node: str, fault: str) -> None:
    request(run.cluster.ctl, "inject", {"node": node, "fault": fault, "chip": 0}, timeout=10)


def _incident_after(run: Run, since: float) -> dict[str, Any] | None:
    events = request(run.cluster.ctl, "events", {"job": run.job, "since": since}, timeout=5)["events"]
    return next((e for e in events if e["event"] == "job.incident"), None)


def _decision_after(run: Run, since: float) -> dict[str, Any] | None:
    events = request(run.cluster.ctl, "events", {"job": run.job, "since": since}, timeout=5)["events"]
    return next((e for e in events if e["event"] == "policy.decision" and e.get("action") != "none"), None)


def _wait_progress(run: Run, step: int, what: str) -> None:
    _watch(run, lambda j: j["state"] == "running" and (j["step"] or 0) >= step, 180, what)


def _watch(run: Run, done: Any, timeout: float, what: str) -> dict[str, Any]:
    """Wait for `done(job)`, showing the job live (a spinner line on a terminal: state,
    pool, nodes, attempt, step, loss) the way a person watching would want it."""
    with run.console.status("") as status:
        def check() -> dict[str, Any] | None:
            j = run.show()
            loss = f"{j['loss']:.3f}" if j["loss"] is not None else "-"
            status.update(f"[bold]{escape(j['state'])}[/] on {escape(j['pool'])} ({escape(', '.join(j['nodes']) or '-')}) "
                          f"· attempt {j['attempt']} · step {j['step'] or 0}/{STEPS} · loss {loss}")
            return j if done(j) else None

        return wait_for(check, timeout, what)


def _metrics_path(run: Run) -> Path:
    return run.root / "work" / "metrics.jsonl"


def _reference(run: Run) -> dict[int, float]:
    """The same trainer and seed, fault-free, under plain torchrun (2 ranks)."""
    out = run.root / "reference"
    out.mkdir(exist_ok=True)
    metrics = out / "metrics.jsonl"
    metrics.unlink(missing_ok=True)
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINGUARD_")}
    run.console.print("  (running the fault-free reference for the comparison…)")
    reference = subprocess.Popen(
        [str(torchrun), "--standalone", "--nproc-per-node=2", "-m", TRAIN_MODULE, *TRAIN_ARGS, "--steps", str(STEPS),
         "--checkpoint-every", "0", "--ckpt-dir", str(out / "ckpt"), "--metrics", str(metrics)],
        cwd=out, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        # Done when every step's loss is written: what the process does after that (its
        # exit) is not the reference's business, and must not keep the demo waiting.
        wait_for(lambda: reference.poll() not in (None, 0) and _raise(f"the reference run failed "
                 f"(exit {reference.returncode})") or _steps_written(metrics) >= STEPS, 300, "the reference run")
    finally:  # finished, interrupted or timed out: its whole process group goes
        if reference.poll() is None:
            os.killpg(reference.pid, signal.SIGKILL)
        reference.wait()
    return {w["step"]: w["loss"] for w in map(json.loads, metrics.read_text().splitlines())}


def _steps_written(metrics: Path) -> int:
    try:
        return len(metrics.read_text().splitlines())
    except FileNotFoundError:
        return 0


def _raise(message: str) -> bool:
    raise subprocess.SubprocessError(message)


def _delta(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(a - b, 3)
