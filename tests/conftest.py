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


# --- `slow` means "starts a process" ------------------------------------------------------
# `make test PYTEST_ARGS="-m 'not slow'"` must stay pure and in-process, so a test that
# starts a process (subprocess, fork, exec) without the `slow` mark fails, naming what it
# started. An audit hook sees every start without replacing anything the test uses.

_PROCESS_EVENTS = frozenset({"subprocess.Popen", "os.fork", "os.forkpty", "os.posix_spawn", "os.exec", "os.spawn", "os.system"})
_started: list[str] | None = None  # collecting while a test without the mark runs


def _audit(event: str, args: tuple) -> None:
    if _started is not None and event in _PROCESS_EVENTS:
        _started.append(f"{event} {args[0]!r}"[:200] if args else event)


sys.addaudithook(_audit)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item):
    global _started
    _started = None if item.get_closest_marker("slow") else []
    return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    result = yield
    if _started:
        pytest.fail(f"{item.nodeid} starts a process but is not marked slow: {_started[0]}", pytrace=False)
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None):
    global _started
    try:
        return (yield)
    finally:
        _started = None
