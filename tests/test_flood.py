"""Running out of descriptors, in process: the daemon says so even when it cannot list its
descriptors, closes an ipc control listener until half the limit is free again (libzmq
aborts on an ipc accept that fails with EMFILE), and the allow-lists are not read as
empty. The flood itself, with real processes: test_flood_e2e."""

from __future__ import annotations

import errno
import os
import resource
import socket
import stat
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from supervisor.cli.localcluster import WaitTimeout, free_tcp_endpoint, wait_for
from supervisor.daemon import loop, zap
from supervisor.daemon.loop import Daemon, DaemonConfig
from supervisor.shared import keys

pytestmark = pytest.mark.timeout(20)

EMFILE = OSError(errno.EMFILE, "Too many open files")


def _connects(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX) as s:
        try:
            s.connect(str(path))
            return True
        except (ConnectionRefusedError, FileNotFoundError):
            return False


def _becomes(path: Path, listening: bool) -> bool:
    """libzmq closes and opens listeners on its I/O thread: wait (bounded) for the state."""
    try:
        return wait_for(lambda: _connects(path) == listening, 2, f"{path} listening={listening}", interval=0.01)
    except WaitTimeout:
        return False


def test_descriptors_run_out_is_reported_and_the_ipc_control_listener_closed_until_half_are_free(
        tmp_path, monkeypatch):
    ctl = tmp_path / "ctl.sock"
    daemon = Daemon(DaemonConfig(bind=free_tcp_endpoint(), ctl=f"ipc://{ctl}", state_dir=tmp_path / "state",
                                 insecure=True))
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    listing: list = [EMFILE]

    def open_descriptors() -> int:
        if isinstance(listing[0], OSError):
            raise listing[0]
        return listing[0]

    monkeypatch.setattr(loop, "_open_descriptors", open_descriptors)
    try:
        assert _becomes(ctl, listening=True)
        with capture_logs() as logs:
            daemon._check_descriptors()  # listing them needs a descriptor: none left
            assert _becomes(ctl, listening=False)
            listing[0] = int(limit * 0.7)  # freed some, but a flood refills them at once
            daemon._check_descriptors()
            assert _becomes(ctl, listening=False)
            listing[0] = int(limit * 0.4)
            daemon._check_descriptors()
        assert [(e["event"], e["used"], e["control"]) for e in logs if e["event"].startswith("daemon.descr")] == [
            ("daemon.descriptors_low", limit, "paused"),
            ("daemon.descriptors_ok", int(limit * 0.4), "served"),
        ]
        assert _becomes(ctl, listening=True)
        assert stat.S_IMODE(ctl.stat().st_mode) == 0o660
        # Any other failure to list them says nothing: never "ok" on no evidence.
        listing[0] = OSError(errno.EACCES, "Permission denied")
        with capture_logs() as logs:
            daemon._check_descriptors()
        assert logs == [] and _becomes(ctl, listening=True)
    finally:
        daemon.close()


def test_running_out_of_descriptors_does_not_empty_the_allow_list(tmp_path, monkeypatch):
    agents = tmp_path / "agents"
    agents.mkdir()
    public, _ = keys.generate(tmp_path / "k", "n1")
    (agents / "n1.key").write_bytes(public.read_bytes())
    allow = zap.AllowList(agents)
    assert allow.refresh() and sorted(allow.keys.values()) == ["n1.key"]
    os.utime(agents / "n1.key", (1, 1))  # a change, so the next refresh reads again

    real_open = os.open
    monkeypatch.setattr(os, "open", lambda *a, **k: (_ for _ in ()).throw(EMFILE))
    assert not allow.refresh()  # cannot open the key: the list in force stays
    assert sorted(allow.keys.values()) == ["n1.key"]
    monkeypatch.setattr(Path, "glob", lambda *a, **k: (_ for _ in ()).throw(EMFILE))
    assert not allow.refresh()  # cannot list the directory: the same
    assert sorted(allow.keys.values()) == ["n1.key"] and allow.problems == []

    monkeypatch.undo()
    assert os.open is real_open
    assert allow.refresh() and sorted(allow.keys.values()) == ["n1.key"]  # read once it can
    (agents / "n1.key").unlink()
    assert allow.refresh() and allow.keys == {}  # a key really removed is still removed


def test_open_descriptors_are_counted_without_listing_them_where_the_kernel_says_how_many(monkeypatch):
    """Regression: listing /proc/self/fd took 9 ms of the loop every second at 10,000
    agent connections. The count is the directory's size (Linux 6.2+), or the listing."""
    before = loop._open_descriptors()
    opened = [os.open(os.devnull, os.O_RDONLY) for _ in range(50)]
    try:
        assert loop._open_descriptors() == before + 50
        listed = len(os.listdir("/proc/self/fd")) - 1  # less the one the listing holds
        assert loop._open_descriptors() in (listed, listed + 1)  # + 1: listed here too (before 6.2)
        # A kernel that says 0 there (before 6.2): the directory is listed.
        real_stat = os.stat
        monkeypatch.setattr(loop.os, "stat", lambda path: os.stat_result((0,) * 10) if path == "/proc/self/fd"
                            else real_stat(path))
        assert loop._open_descriptors() == listed + 1
    finally:
        for fd in opened:
            os.close(fd)


def test_memory_is_handed_back_once_a_thousand_descriptors_have_closed(tmp_path, monkeypatch):
    daemon = Daemon(DaemonConfig(bind=free_tcp_endpoint(), ctl=free_tcp_endpoint(), state_dir=tmp_path / "state",
                                 insecure=True))
    released: list[int] = []
    counts = iter([20, 3_000, 2_500, 1_900, 1_950, 900])
    monkeypatch.setattr(loop, "_open_descriptors", lambda: next(counts))
    monkeypatch.setattr(loop, "_release_freed_memory", lambda: released.append(1))
    try:
        with capture_logs() as logs:
            for _ in range(6):
                daemon._check_descriptors()
        # 3,000 -> 1,900: released once; 1,950 -> 900 is another thousand closed.
        assert [(e["descriptors_closed"], e["used"]) for e in logs if e["event"] == "daemon.memory_released"] == [
            (1_100, 1_900), (1_050, 900)]
        assert len(released) == 2
    finally:
        daemon.close()
    loop._release_freed_memory()  # the real one: harmless to call at any time
