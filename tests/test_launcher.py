"""The launcher with real processes and signals: environment, logs, crashes, stops."""

from __future__ import annotations

import json
import os
import signal
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from agents.launcher import Launcher, RankExit, RankSpec
from supervisor.cli.localcluster import wait_for
from supervisor.shared.vocab import Accelerator

# Every test here starts real rank processes.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]


def spec(tmp_path: Path, code: str, rank: int = 0, **kw) -> RankSpec:
    script = tmp_path / f"rank{rank}.py"
    script.write_text(textwrap.dedent(code))
    defaults = dict(job="j1", rank=rank, local_rank=rank, world_size=2, local_world_size=2,
                    argv=(sys.executable, str(script)), master_addr="127.0.0.1", master_port=29999,
                    accelerator=Accelerator.SIM_ASCEND, chips=(rank,), node="n1",
                    heartbeat="ipc:///tmp/hb.sock", ckpt_dir=str(tmp_path / "ckpt"))
    defaults.update(kw)
    return RankSpec(**defaults)


def wait_exit(launcher: Launcher, timeout: float = 20) -> RankExit:
    found: list[RankExit] = []
    wait_for(lambda: found.extend(launcher.poll()) or found, timeout, "the rank to exit")
    return found[0]


def test_ranks_get_a_torchrun_environment_and_the_trainguard_assignment(tmp_path):
    launcher = Launcher(tmp_path / "logs")
    launcher.start(spec(tmp_path, """
        import json, os
        keys = ["RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                "TRAINGUARD_ACCELERATOR", "TRAINGUARD_HEARTBEAT", "TRAINGUARD_CKPT_DIR", "TRAINGUARD_JOB",
                "TRAINGUARD_NODE", "ASCEND_RT_VISIBLE_DEVICES"]
        print(json.dumps({k: os.environ.get(k) for k in keys}))
        print(json.dumps({"group_led_by_parent": os.getpgid(0) == os.getppid() != os.getpid()}))
    """, rank=1, chips=(4, 5)))
    exit = wait_exit(launcher)
    assert exit.returncode == 0 and not exit.crash
    env, group = [json.loads(line) for line in (tmp_path / "logs" / "j1" / "rank-1.log").read_text().splitlines()]
    assert env == {
        "RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2",
        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29999", "TRAINGUARD_ACCELERATOR": "sim-ascend",
        "TRAINGUARD_HEARTBEAT": "ipc:///tmp/hb.sock", "TRAINGUARD_CKPT_DIR": str(tmp_path / "ckpt"),
        "TRAINGUARD_JOB": "j1", "TRAINGUARD_NODE": "n1", "ASCEND_RT_VISIBLE_DEVICES": "4,5",
    }
    assert group == {"group_led_by_parent": True}, "each rank's wrapper leads a process group of its own"


def test_nvidia_ranks_see_their_chips_through_cuda_visible_devices(tmp_path):
    launcher = Launcher(tmp_path / "logs")
    launcher.start(spec(tmp_path, "import os; print(os.environ.get('CUDA_VISIBLE_DEVICES'))",
                        accelerator=Accelerator.NVIDIA, chips=(2, 3)))
    wait_exit(launcher)
    assert (tmp_path / "logs" / "j1" / "rank-0.log").read_text().strip() == "2,3"


def test_output_is_logged_and_scanned_line_by_line_while_the_rank_runs(tmp_path):
    seen: list[tuple[int, str]] = []
    launcher = Launcher(tmp_path / "logs", on_line=lambda s, line: seen.append((s.rank, line)))
    marker = tmp_path / "go"
    launcher.start(spec(tmp_path, f"""
        import sys, time, pathlib
        print("step 1 loss 5.0")
        print("EI0002: The wait execution of the Notify register times out.", file=sys.stderr)
        while not pathlib.Path({str(marker)!r}).exists():
            time.sleep(0.01)
    """))
    wait_for(lambda: len(seen) == 2, 20, "both lines while the rank still runs")
    assert seen == [(0, "step 1 loss 5.0"), (0, "EI0002: The wait execution of the Notify register times out.")]
    marker.touch()
    wait_exit(launcher)
    assert "EI0002" in (tmp_path / "logs" / "j1" / "rank-0.log").read_text()


def test_a_sigkilled_rank_is_a_crash_named_by_its_signal(tmp_path):
    launcher = Launcher(tmp_path / "logs")
    process = launcher.start(spec(tmp_path, "import time\nwhile True: time.sleep(0.1)"))
    os.kill(process.pid, signal.SIGKILL)
    exit = wait_exit(launcher)
    assert exit.crash and exit.signal_name == "SIGKILL" and exit.returncode == -9
    assert exit.describe() == "rank 0 of job j1 was killed by SIGKILL"


def test_a_nonzero_exit_is_a_crash_with_its_code(tmp_path):
    launcher = Launcher(tmp_path / "logs")
    launcher.start(spec(tmp_path, "raise SystemExit(3)"))
    exit = wait_exit(launcher)
    assert exit.crash and exit.returncode == 3 and exit.signal_name is None
    assert exit.describe() == "rank 0 of job j1 exited with code 3"


def test_a_rank_that_honours_sigterm_stops_within_the_grace_period(tmp_path):
    launcher = Launcher(tmp_path / "logs")
    ready = tmp_path / "ready"
    launcher.start(spec(tmp_path, f"""
        import pathlib, signal, sys, time
        signal.signal(signal.SIGTERM, lambda *_: (print("final checkpoint"), sys.exit(0)))
        pathlib.Path({str(ready)!r}).touch()
        while True: time.sleep(0.05)
    """))
    wait_for(ready.exists, 20, "the rank to install its handler")
    started = time.monotonic()
    (exit,) = launcher.stop("j1", grace=10)
    assert time.monotonic() - started < 5
    assert exit.returncode == 0 and exit.requested and not exit.crash
    assert "final checkpoint" in (tmp_path / "logs" / "j1" / "rank-0.log").read_text()


def test_stop_leaves_no_orphan_of_a_rank_that_forks_and_ignores_sigterm(tmp_path):
    pids = tmp_path / "pids"
    launcher = Launcher(tmp_path / "logs")
    launcher.start(spec(tmp_path, f"""
        import os, signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        child = os.fork()
        if child == 0:
            os.setsid()  # even a child that leaves the rank's process group
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            while True: time.sleep(0.1)
        open({str(pids)!r}, "w").write(f"{{os.getpid()}} {{child}}")
        while True: time.sleep(0.1)
    """))
    wait_for(lambda: pids.exists() and len(pids.read_text().split()) == 2, 20, "the rank and its child")
    rank_pid, child_pid = map(int, pids.read_text().split())
    wait_for(lambda: launcher.poll() == [] and child_pid in launcher.ranks[("j1", 0)].descendants, 10,
             "the launcher to have seen the child")
    started = time.monotonic()
    (exit,) = launcher.stop("j1", grace=1.0)
    assert 1.0 <= time.monotonic() - started < 10
    assert exit.requested and exit.signal_name == "SIGKILL"
    for pid in (rank_pid, child_pid):
        wait_for(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE,
                 10, f"pid {pid} to be gone")


def test_a_repeated_start_of_a_running_rank_starts_nothing(tmp_path):
    launcher = Launcher(tmp_path / "logs")
    s = spec(tmp_path, "import time\nwhile True: time.sleep(0.1)")
    first = launcher.start(s)
    assert launcher.start(s) is first
    launcher.stop("j1", grace=0.5)


def test_a_non_blocking_stop_kills_a_rank_that_ignores_sigterm_once_the_grace_has_passed(tmp_path):
    launcher = Launcher(tmp_path / "logs")
    ready = tmp_path / "ready"
    launcher.start(spec(tmp_path, f"""
        import pathlib, signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        pathlib.Path({str(ready)!r}).touch()
        while True: time.sleep(0.1)
    """))
    wait_for(ready.exists, 20, "the rank to ignore SIGTERM")
    started = time.monotonic()
    assert launcher.request_stop("j1", grace=1.0) == 1
    assert time.monotonic() - started < 0.5, "request_stop must not wait"
    exit = wait_exit(launcher, timeout=10)
    assert time.monotonic() - started >= 1.0
    assert exit.requested and exit.signal_name == "SIGKILL" and not exit.crash


def test_a_rank_outlives_its_agent(tmp_path):
    """The rank writes its own log file, so the agent dying (or restarting) does not take
    training down with a broken pipe."""
    rank_script = tmp_path / "rank.py"
    rank_script.write_text("import time\nfor i in range(10_000):\n    print('step', i, flush=True)\n    time.sleep(0.02)\n")
    agent_script = tmp_path / "agent.py"
    agent_script.write_text(textwrap.dedent(f"""
        import os, sys
        from pathlib import Path
        from agents.launcher import Launcher, RankSpec
        from supervisor.shared.vocab import Accelerator
        launcher = Launcher(Path({str(tmp_path / 'logs')!r}))
        p = launcher.start(RankSpec(job="j1", rank=0, local_rank=0, world_size=1, local_world_size=1,
                                    argv=(sys.executable, {str(rank_script)!r}), master_addr="127.0.0.1",
                                    master_port=1, accelerator=Accelerator.CPU))
        Path({str(tmp_path / 'pid')!r}).write_text(str(p.pid))
        os._exit(0)  # the agent dies abruptly
    """))
    subprocess_result = __import__("subprocess").run([sys.executable, str(agent_script)], timeout=30)
    assert subprocess_result.returncode == 0
    pid = int((tmp_path / "pid").read_text())
    log = tmp_path / "logs" / "j1" / "rank-0.log"
    size = lambda: log.stat().st_size if log.exists() else 0  # noqa: E731
    first = size()
    wait_for(lambda: size() > first + 200, 20, "the rank to keep printing after its agent died")
    assert psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    os.kill(pid, signal.SIGKILL)
