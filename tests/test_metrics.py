"""Prometheus metrics scraped over HTTP from a real daemon."""

from __future__ import annotations

import re
import socket
import urllib.request

import pytest

from supervisor.cli.localcluster import wait_for
from tests.conftest import trainguard

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sample(text: str, name: str, **labels: str) -> float | None:
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        m = re.match(rf"^{re.escape(name)}(?:\{{(.*)\}})? (\S+)$", line)
        if m and ",".join(sorted((m.group(1) or "").split(","))) == want:
            return float(m.group(2))
    return None


def test_metrics_reflect_nodes_chips_and_an_injected_fault(make_cluster):
    port = free_port()
    cluster = make_cluster()
    cluster.start_daemon("--metrics-bind", f"127.0.0.1:{port}")
    cluster.start_agent("n1", "sim-ascend", 4)
    cluster.wait_nodes("up", ["n1"], timeout=30)

    def scrape() -> str:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()

    wait_for(lambda: sample(scrape(), "trainguard_chips", health="ok") == 4, 10, "4 ok chips in the metrics")
    assert sample(scrape(), "trainguard_nodes", state="up") == 1
    assert trainguard("inject", "--ctl", cluster.ctl, "n1", "chip_error", "--chip", "2").returncode == 0
    text = wait_for(lambda: (t := scrape()) and sample(t, "trainguard_chips", health="critical") == 1 and t, 10,
                    "the critical chip in the metrics")
    assert sample(text, "trainguard_signals_total", signal="chip_error", pool="ascend") == 1
    assert sample(text, "trainguard_detection_latency_seconds_count", signal="chip_error") == 1
    for declared in ("trainguard_bad_frames_total", "trainguard_refused_peers_total", "trainguard_policy_reloads_total",
                     "trainguard_jobs", "trainguard_job_restarts_total", "trainguard_job_failovers_total"):
        assert f"# TYPE {declared.removesuffix('_total')}" in text, declared


def test_a_busy_metrics_port_refuses_to_start_with_a_clear_error(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = trainguard("daemon", "--insecure", "--state-dir", str(tmp_path), "--bind", f"ipc://{tmp_path}/a.sock",
                            "--ctl", f"ipc://{tmp_path}/c.sock", "--metrics-bind", f"127.0.0.1:{port}")
    assert result.returncode == 1 and f"cannot serve metrics on 127.0.0.1:{port}" in result.stderr
