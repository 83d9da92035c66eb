"""The CLI as a user meets it: help, clear errors, exit codes."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from supervisor.cli.localcluster import free_tcp_endpoint
from tests.conftest import trainguard

# Every test runs the CLI in a child process.
pytestmark = pytest.mark.slow


@pytest.mark.parametrize("command", ["", "daemon", "agent", "status", "inject", "demo"])
@pytest.mark.timeout(30)
def test_every_command_has_help_naming_its_environment_variables(command):
    result = trainguard(*([command] if command else []), "--help")
    assert result.returncode == 0, result.stderr
    assert "Usage:" in result.stdout
    if command in ("daemon", "agent", "status"):
        assert "TRAINGUARD_" in result.stdout


@pytest.mark.timeout(30)
def test_status_without_a_daemon_says_where_it_looked():
    endpoint = free_tcp_endpoint()
    result = trainguard("status", "--ctl", endpoint, "--timeout", "1s")
    assert result.returncode == 1
    assert f"no answer from the trainguard daemon at {endpoint}" in result.stderr
    assert "TRAINGUARD_CTL" in result.stderr


@pytest.mark.timeout(30)
def test_status_reads_the_endpoint_from_the_environment():
    endpoint = free_tcp_endpoint()
    env = {**os.environ, "TRAINGUARD_CTL": endpoint}
    result = trainguard("status", "--timeout", "500ms", env=env)
    assert result.returncode == 1 and endpoint in result.stderr


@pytest.mark.timeout(30)
def test_bad_duration_is_a_usage_error():
    result = trainguard("status", "--timeout", "soon")
    assert result.returncode == 2
    assert "expected a duration such as" in result.stderr


@pytest.mark.timeout(30)
def test_daemon_refuses_heartbeat_interval_not_below_timeout(tmp_path):
    result = trainguard(
        "daemon", "--state-dir", str(tmp_path), "--heartbeat-timeout", "2s", "--heartbeat-interval", "5s"
    )
    assert result.returncode == 2
    assert "--heartbeat-interval" in result.stderr and "below --heartbeat-timeout" in result.stderr


@pytest.mark.timeout(30)
def test_second_daemon_on_the_same_state_dir_is_refused(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    with open(state / "daemon.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        lock.write("4242")
        lock.flush()
        result = trainguard(
            "daemon", "--state-dir", str(state), "--bind", free_tcp_endpoint(), "--ctl", free_tcp_endpoint()
        )
    assert result.returncode == 1
    assert "another trainguard daemon (pid 4242)" in result.stderr


@pytest.mark.timeout(30)
def test_daemon_on_a_busy_port_names_the_endpoint(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        endpoint = f"tcp://127.0.0.1:{taken.getsockname()[1]}"
        result = trainguard("daemon", "--insecure", "--state-dir", str(tmp_path), "--bind", endpoint,
                            "--ctl", free_tcp_endpoint())
    assert result.returncode == 1
    assert f"cannot bind the agent endpoint {endpoint}" in result.stderr


@pytest.mark.timeout(30)
def test_daemon_with_an_unusable_state_dir_says_so(tmp_path):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    result = trainguard("daemon", "--state-dir", str(not_a_dir / "state"))
    assert result.returncode == 1
    assert "cannot use state dir" in result.stderr


@pytest.mark.timeout(30)
def test_agent_with_an_unwritable_work_dir_says_so(tmp_path):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    result = trainguard(
        "agent", "--accelerator", "sim-ascend", "--node-id", "n1", "--work-dir", str(not_a_dir / "w")
    )
    assert result.returncode == 1
    assert "work dir" in result.stderr and "not writable" in result.stderr


@pytest.mark.timeout(30)
def test_agent_rejects_a_node_id_the_protocol_would_refuse():
    result = trainguard("agent", "--accelerator", "cpu", "--node-id", "bad name!")
    assert result.returncode == 2
    assert "--node-id" in result.stderr


@pytest.mark.parametrize("option, value, bound", [
    ("--count", str(10**23), "1<=x<=1000000"),
    ("--count", "1000001", "1<=x<=1000000"),
    ("--chip", "4096", "0<=x<=4095"),
])
def test_inject_numbers_beyond_their_bounds_are_usage_errors(option, value, bound):
    # No daemon needed: click refuses them before any request is made.
    result = trainguard("inject", "--ctl", "ipc:///nonexistent/ctl.sock", "--timeout", "1", "n1", "ecc", option, value)
    assert result.returncode == 2, result.stderr
    assert f"Invalid value for '{option}'" in result.stderr and bound in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_inject_errors_are_specific(make_cluster):
    cluster = make_cluster()
    cluster.start_daemon()
    cluster.start_agent("sim1", "sim-ascend", 2)
    cluster.start_agent("cpu1", "cpu", 0)
    cluster.wait_nodes("up", ["sim1", "cpu1"], timeout=30)
    cases = [
        (["nope", "critical"], "unknown node 'nope'; known nodes: cpu1, sim1"),
        (["cpu1", "critical"], "faults can only be injected into sim-ascend / sim-nvidia nodes"),
        (["sim1", "critical", "--chip", "7"], "has chips 0..1, not 7"),
    ]
    for args, message in cases:
        result = trainguard("inject", "--ctl", cluster.ctl, *args)
        assert result.returncode == 1, args
        assert message in result.stderr, (args, result.stderr)
    bad_fault = trainguard("inject", "--ctl", cluster.ctl, "sim1", "explode")
    assert bad_fault.returncode == 2 and "'explode' is not one of" in bad_fault.stderr
    status = json.loads(trainguard("status", "--ctl", cluster.ctl, "--json").stdout)
    cpu = next(n for n in status["nodes"] if n["node"] == "cpu1")
    assert cpu["chips"] == [] and cpu["health"] == "ok"


@pytest.mark.timeout(300)
def test_the_demo_survives_its_faults_fails_over_and_says_what_happened(tmp_path):
    summary_path = tmp_path / "summary.json"
    result = trainguard("demo", "--dir", str(tmp_path / "demo"), "--summary-json", str(summary_path), timeout=280)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads(summary_path.read_text())
    assert summary["state"] == "succeeded" and summary["final_pool"] == "nvidia"
    assert summary["steps_completed"] == summary["target_steps"] > 0
    assert [f["signal"] for f in summary["faults"]] == ["crash", "hang", "chip_error"] + ["interconnect_timeout"] * 3
    for fault in summary["faults"]:
        assert fault["injected_at"] <= fault["detected_at"], fault
        assert fault["node"].startswith("ascend-") and fault["rule"] and fault["action"] in ("restart", "failover")
    assert [f["action"] for f in summary["faults"]][-1] == "failover"
    assert len(summary["recoveries"]) == 6 and all(0 < r["recovery_s"] < 60 for r in summary["recoveries"])
    (failover,) = summary["failovers"]
    assert (failover["from_pool"], failover["to_pool"], failover["rule"]) == ("ascend", "nvidia", "ascend-unstable")
    assert 0 < summary["ettr"] <= 1 and summary["steps_redone"] >= 0
    assert summary["loss_matches_reference"] is True
    assert summary["world_size"] == 2 and "agents.examples.train_gpt" in summary["training_argv"]
    assert Path(summary["metrics_path"]).exists()
    assert "per-step losses identical to a fault-free run of the same seed: yes" in result.stdout


@pytest.mark.timeout(180)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_demo_leaves_no_process_and_no_stray_file(tmp_path, sig):
    import psutil

    cwd = tmp_path / "cwd"
    cwd.mkdir()
    demo_dir = tmp_path / "demo"
    proc = subprocess.Popen([sys.executable, "-m", "supervisor", "demo", "--dir", str(demo_dir)], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    # Interrupted once the job trains and the first fault is about to go in: the demo
    # says so on its output ("inject … at step N"), which is read as it comes (a pipe
    # left unread could also stall the demo). The test's timeout bounds the wait.
    head = []
    assert proc.stdout is not None
    for line in proc.stdout:
        head.append(line)
        if line.startswith(b"inject "):
            break
    else:
        pytest.fail(f"the demo ended before it trained: {b''.join(head).decode(errors='replace')[-2000:]}")
    seen = {child.pid: child for child in psutil.Process(proc.pid).children(recursive=True)}
    assert seen, "the demo runs its cluster in child processes"
    proc.send_signal(sig)
    out = b"".join(head) + proc.communicate(timeout=60)[0]
    assert proc.returncode != 0 and b"interrupted" in out
    for child in psutil.Process(os.getpid()).children(recursive=True):
        seen.pop(child.pid, None)  # not ours to judge
    alive = [p for p in seen.values() if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not alive, f"left behind: {[(p.pid, p.cmdline()[:4]) for p in alive]}"
    assert list(cwd.iterdir()) == [], "the demo wrote outside its directory"


@pytest.mark.timeout(30)
def test_logscan_prints_one_finding_per_line_or_traceback(tmp_path):
    log = tmp_path / "rank1.log"
    log.write_text(
        "step 1 loss 3.2\n"
        "[rank1]: Traceback (most recent call last):\n"
        '[rank1]:   File "train.py", line 9, in <module>\n'
        "[rank1]:     x = y / 0\n"
        "[rank1]: ZeroDivisionError: division by zero\n"
        "EI0002: The wait execution of the Notify register times out.\n"
    )
    result = trainguard("logscan", str(log), "--json")
    assert result.returncode == 0, result.stderr
    findings = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(f["line"], f["signal"]) for f in findings] == [(2, "crash"), (6, "interconnect_timeout")]
    assert findings[0]["pattern"] == "python-traceback-unrecognised" and "ZeroDivisionError" in findings[0]["evidence"]
    assert findings[1]["evidence"] == "EI0002: The wait execution of the Notify register times out."


@pytest.mark.timeout(30)
def test_parse_reads_a_saved_tool_output_like_the_agent():
    fixture = Path(__file__).resolve().parent / "fixtures" / "tools" / "npu-smi-info-atlas800-9010-24.1.RC2-warning.txt"
    result = trainguard("parse", "--format", "npu-smi", str(fixture), "--json")
    assert result.returncode == 0, result.stderr
    chips = json.loads(result.stdout)
    assert [c["index"] for c in chips if c["health"] == "warning"] == [3, 7]
    human = trainguard("parse", "--format", "npu-smi", str(fixture))
    assert "chip   3  warning" in human.stdout


@pytest.mark.timeout(30)
def test_parse_shows_power_and_use_of_rows_pasted_without_a_header():
    fixture = Path(__file__).resolve().parent / "fixtures" / "tools" / "npu-smi-info-headerless-a3-excerpt.txt"
    chips = json.loads(trainguard("parse", "--format", "npu-smi", str(fixture), "--json").stdout)
    assert [(c["index"], c["power_w"], c["utilisation_pct"], c["hbm_used_mb"]) for c in chips[:2]] == [
        (1, None, 0.0, 61879), (2, 156.5, 0.0, 3126)]
    human = trainguard("parse", "--format", "npu-smi", str(fixture)).stdout
    assert "chip   2  ok        42.0°C  156.5 W  use 0%  3126/65536 MB" in human


@pytest.mark.timeout(30)
def test_parse_says_why_it_cannot_read_an_output(tmp_path):
    bad = tmp_path / "out.txt"
    bad.write_text("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.\n")
    result = trainguard("parse", "--format", "nvidia-smi", str(bad))
    assert result.returncode == 1 and str(bad) in result.stderr


def test_the_daemon_refuses_a_garbage_state_db_naming_the_file_and_what_to_do(tmp_path):
    from supervisor.cli.localcluster import free_tcp_endpoint

    state = tmp_path / "state"
    state.mkdir()
    (state / "state.db").write_bytes(b"garbage, not SQLite\n" * 300)
    result = trainguard("daemon", "--state-dir", str(state), "--insecure",
                        "--bind", free_tcp_endpoint(), "--ctl", free_tcp_endpoint())
    assert result.returncode == 1, result.stderr
    assert f"Error: the state database {state / 'state.db'} is damaged or not an SQLite database" in result.stderr
    assert "Move it aside" in result.stderr and "rebuilds its node table as agents re-register" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("value", [
    {"nodes": [{"node": "n1", "chips": [{"index": 0, "temperature_c": 41.5}], "host": None, "running": [], "e": {}}],
     "summary": {"states": {"up": 1}}, "z": True, "a": -0.0},
    {"big": 1e16, "small": 1.5e-7, "int": 2**70, "exp_in_text": "x1e5"},  # json writes 1e+16, msgspec 1e16
    {"reason": "clipped…", "host": "ünïcode"},  # json escapes what is beyond ASCII
])
def test_status_json_is_the_text_json_dumps_writes(value: dict) -> None:
    import json

    from supervisor.cli.main import pretty_json

    assert pretty_json(value) == json.dumps(value, indent=2, sort_keys=True)
