"""Shared fixtures: real daemons and agents as child processes (supervisor.cli.localcluster)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from supervisor.cli.localcluster import LocalCluster


@pytest.fixture
def make_cluster(tmp_path: Path) -> Iterator:
    """Build LocalClusters with test-sized timeouts; everything is stopped at teardown."""
    clusters: list[LocalCluster] = []

    def make(**kw) -> LocalCluster:
        kw.setdefault("heartbeat_timeout", 3.0)
        kw.setdefault("heartbeat_interval", 0.3)
        kw.setdefault("probe_interval", 0.5)
        cluster = LocalCluster(tmp_path / f"c{len(clusters)}", **kw)
        clusters.append(cluster)
        return cluster

    yield make
    for cluster in clusters:
        cluster.stop_all(grace=3.0)


def trainguard(*args: str, timeout: float = 30, env: dict | None = None) -> subprocess.CompletedProcess[str]:
    """Run the CLI as a user would, in a child process."""
    return subprocess.run(
        [sys.executable, "-m", "supervisor", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        stdin=subprocess.DEVNULL,
    )
