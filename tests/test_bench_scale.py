"""bench/scale.py runs end to end (small: 50 agents for a few seconds), so it does not
rot: a real daemon, simulated agents, a job whose ranks they run, status --json."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

ROOT = Path(__file__).resolve().parent.parent


def test_scale_bench_measures_fifty_agents_with_a_running_job(tmp_path: Path) -> None:
    out = tmp_path / "scale.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "scale.py"), "--agents", "50", "--seconds", "3", "--workers", "1",
         "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=170)
    assert done.returncode == 0, done.stdout + done.stderr
    [row] = json.loads(out.read_text())
    assert {"agents", "cpu_us_per_heartbeat", "p50_ms", "p99_ms", "rss_mb", "false_node_lost"} <= set(row)
    assert row["agents"] == 50 and row["false_node_lost"] == 0
    assert row["heartbeats_acked_per_s"] > 25  # ~50 intended; a loaded machine may lag a little
    assert row["job_state_at_end"] == "running" and row["job_ranks"] == 40
    assert row["status_s"] is not None and row["nodes_up_at_end"] == 50
    assert "| 50 |" in done.stdout
