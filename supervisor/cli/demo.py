"""`trainguard demo`: a daemon and two simulated nodes on this machine, put through faults.

What it shows today: nodes register; an injected chip fault is seen by the node's probe
and reaches the daemon; a node whose agent is SIGKILLed is declared lost within the
heartbeat timeout and recovers when the agent is back; the daemon itself is SIGKILLed and
restarted, reloads its state, and the agents re-register by themselves. Each step waits
on a condition with a deadline and prints how long it took.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from supervisor.cli.localcluster import LocalCluster, WaitTimeout, wait_for
from supervisor.cli.render import make_console, print_status

ASCEND, NVIDIA = "ascend-0", "nvidia-0"
#: The example training script, run as a module so it is found wherever trainguard is installed.
TRAIN_GPT_MODULE = "agents.examples.train_gpt"


def run_demo(work_dir: Path | None) -> int:
    console = make_console()
    temporary = work_dir is None
    root = Path(tempfile.mkdtemp(prefix="trainguard-demo-")) if temporary else work_dir
    cluster = LocalCluster(root, heartbeat_timeout=3.0, heartbeat_interval=0.5, probe_interval=0.5)
    step = _Stepper(console)
    try:
        step("start a daemon and two simulated nodes (4 Ascend chips, 4 Nvidia chips)")
        cluster.start_daemon()
        cluster.start_agent(ASCEND, "sim-ascend", 4)
        cluster.start_agent(NVIDIA, "sim-nvidia", 4)
        print_status(cluster.wait_nodes("up", [ASCEND, NVIDIA], timeout=20), console)
        step.done()

        step(f"inject a chip error into {ASCEND} chip 2 (the sim probe must see it)")
        from supervisor.cli.client import request

        request(cluster.ctl, "inject", {"node": ASCEND, "fault": "chip_error", "chip": 2})
        wait_for(
            lambda: cluster.node(ASCEND)["chips"][2]["health"] == "critical",  # type: ignore[index]
            timeout=10,
            what="the daemon to see chip 2 critical",
        )
        print_status(cluster.status(), console)
        step.done()

        step(f"SIGKILL the agent of {NVIDIA}; the daemon must declare it lost (timeout 3s)")
        cluster.kill(NVIDIA)
        cluster.wait_nodes("lost", [NVIDIA], timeout=cluster.heartbeat_timeout + 5)
        print_status(cluster.status(), console)
        step.done()

        step(f"restart the agent of {NVIDIA}; it must recover")
        cluster.start_agent(NVIDIA, "sim-nvidia", 4)
        cluster.wait_nodes("up", [NVIDIA], timeout=20)
        step.done()

        step("SIGKILL the daemon and start it again; agents must re-register by themselves")
        agent_pids = {n: cluster.procs[n].pid for n in (ASCEND, NVIDIA)}
        cluster.kill("daemon")
        cluster.start_daemon()
        status = cluster.wait_nodes("up", [ASCEND, NVIDIA], timeout=20)
        same = all(cluster.procs[n].pid == pid and cluster.procs[n].alive() for n, pid in agent_pids.items())
        print_status(status, console)
        console.print(f"agents kept running through the daemon restart: {same}")
        step.done()

        _training(cluster, console, step)

        console.rule("what the daemon logged (JSON, one event per line)")
        for event in cluster.events("daemon"):
            if event.get("event", "").startswith(("node.", "chip.", "signal.")):
                keys = ("node", "job", "rank", "chip", "health", "previous", "silent_for_s", "down_for_s", "nodes", "evidence")
                fields = " ".join(f"{k}={event[k]!r}" for k in keys if k in event)
                console.print(f"{event['timestamp'][11:23]}  {event['event']:<20} {fields}", highlight=False, markup=False)
        if temporary:
            console.print("\n(logs removed with the temporary directory; keep them with --dir DIR)")
        else:
            console.print(f"\nlogs: {root / 'logs'}")
        return 0
    except (WaitTimeout, Exception) as exc:
        console.print(f"[bold red]demo failed:[/] {escape(str(exc))}")
        console.print(f"logs: {root / 'logs'}")
        temporary = False  # keep the evidence
        return 1
    finally:
        cluster.stop_all()
        if temporary:
            shutil.rmtree(root, ignore_errors=True)


def _training(cluster: LocalCluster, console: Console, step: "_Stepper") -> None:
    """A real 2-rank training job on the Ascend node: a rank is killed, the daemon hears
    of it with the evidence, and the job, started again, resumes from its checkpoint."""
    import sys

    from supervisor.cli.client import request

    def launch() -> None:
        request(cluster.ctl, "launch", {
            "node": ASCEND, "job": "gpt", "nproc": 2, "cwd": str(cluster.root),
            "argv": [sys.executable, "-m", TRAIN_GPT_MODULE, "--steps", "100000", "--checkpoint-every", "20"],
        }, timeout=10)

    def steps() -> list[int]:
        return [r["step"] or 0 for r in cluster.node(ASCEND)["running"]]  # type: ignore[index]

    step(f"launch a 2-rank GPT training job on {ASCEND} (gloo on the CPU, sim-ascend chips 0 and 1)")
    launch()
    wait_for(lambda: len(steps()) == 2 and min(steps()) >= 45, 180, "both ranks past step 45")
    print_status(cluster.status(), console)
    console.print(f"ranks report their steps through heartbeat(): {steps()}")
    step.done()

    step(f"inject a crash into the rank on {ASCEND} chip 1 (the agent SIGKILLs it)")
    request(cluster.ctl, "inject", {"node": ASCEND, "fault": "crash", "chip": 1})
    wait_for(lambda: len(cluster.find_events("daemon", "signal.crash", job="gpt")) >= 2, 120,
             "the daemon to hear of both ranks ending")
    for e in cluster.find_events("daemon", "signal.crash", job="gpt") + cluster.find_events("daemon", "signal.network", job="gpt"):
        console.print(f"  {e['event']:<15} rank {e['rank']} chip {e.get('chip')}: {e['evidence'].splitlines()[-1][:110]}",
                      highlight=False, markup=False)
    step.done()

    step("start the job again: it resumes from its last checkpoint, losing at most 20 steps")
    wait_for(lambda: not cluster.node(ASCEND)["running"], 30, "the agent to report no ranks running")  # type: ignore[index]
    launch()
    log = cluster.root / "nodes" / ASCEND / "logs" / "gpt" / "rank-0.log"
    resumed = wait_for(lambda: [l for l in log.read_text().splitlines() if '"runtime.resumed"' in l], 120,
                       "rank 0 to resume")
    import json

    console.print(f"  rank 0: {json.loads(resumed[-1])['event']} at step {json.loads(resumed[-1])['step']}", highlight=False)
    request(cluster.ctl, "stop", {"node": ASCEND, "job": "gpt", "grace": 20.0})
    wait_for(lambda: not cluster.node(ASCEND)["running"], 60, "the job to stop")  # type: ignore[index]
    console.print("  stopped with a final checkpoint (SIGTERM → checkpoint → exit)")
    step.done()


class _Stepper:
    def __init__(self, console: Console) -> None:
        self.console = console
        self.n = 0
        self.started = 0.0

    def __call__(self, title: str) -> None:
        self.n += 1
        self.console.rule(f"[bold]{self.n}. {title}")
        self.started = time.monotonic()

    def done(self) -> None:
        self.console.print(f"[green]✓[/] took {time.monotonic() - self.started:.1f}s\n")
