"""Hot reload in a running daemon: a valid edit takes effect, a broken one is refused."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from supervisor.cli.client import request
from supervisor.cli.localcluster import wait_for
from supervisor.policy.shipped import shipped_policy_dir
from tests.conftest import trainguard

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]

DEFAULT = shipped_policy_dir() / "default.yaml"


def editor_save(path: Path, text: str) -> None:
    """Save the way vim and most editors do: write a temp file, then rename it over."""
    tmp = path.with_name(f".{path.name}.swp")
    tmp.write_text(text)
    os.replace(tmp, path)


def test_policy_edits_apply_without_restart_and_broken_ones_are_refused(make_cluster, tmp_path):
    policies = tmp_path / "policies"
    policies.mkdir()
    shutil.copy(DEFAULT, policies / "default.yaml")
    original = (policies / "default.yaml").read_text()
    sha_original = hashlib.sha256(original.encode()).hexdigest()

    cluster = make_cluster()
    daemon = cluster.start_daemon("--policy-dir", str(policies))
    shown = wait_for(lambda: request(cluster.ctl, "policies", timeout=1), 20, "the daemon to serve policies")
    assert [(p["name"], p["sha256"]) for p in shown["policies"]] == [("default", sha_original)]
    assert cluster.status()["daemon"]["policies"] == ["default"]

    # 1. A valid edit, saved editor-style, is swapped in.
    edited = original.replace("max_restarts: 10", "max_restarts: 5")
    editor_save(policies / "default.yaml", edited)
    sha_edited = hashlib.sha256(edited.encode()).hexdigest()
    loaded = wait_for(
        lambda: cluster.find_events("daemon", "policy.loaded", sha256=sha_edited), 10, "the edit to be loaded"
    )
    assert loaded[0]["previous_sha256"] == sha_original and loaded[0]["policy"] == "default"

    # 2. A broken edit is refused with file:line errors, and the edited policy stays.
    broken = edited.replace("  within: 1h                      # ... within this window", "  withn: 1h")
    assert broken != edited
    editor_save(policies / "default.yaml", broken)
    rejected = wait_for(lambda: cluster.find_events("daemon", "policy.rejected"), 10, "the broken edit to be refused")
    assert rejected[0]["level"] == "error" and rejected[0]["kept"] == "default"
    assert any(":" in e and "unknown key 'withn'; did you mean 'within'?" in e for e in rejected[0]["errors"])
    result = trainguard("policy", "show", "--ctl", cluster.ctl, "--json")
    shown = json.loads(result.stdout)
    assert [(p["name"], p["sha256"]) for p in shown["policies"]] == [("default", sha_edited)]
    assert shown["rejected"][0]["file"].endswith("default.yaml")

    # 3. A new policy file dropped into the directory appears; deleting it removes it.
    extra = policies / "night.yaml"
    extra.write_text(original.replace("name: default", "name: night"))
    wait_for(lambda: cluster.find_events("daemon", "policy.loaded", policy="night"), 10, "night to load")
    extra.unlink()
    wait_for(lambda: cluster.find_events("daemon", "policy.removed", policy="night"), 10, "night to go")
    # The broken file was refused once, not again each time the daemon read it.
    assert len(cluster.find_events("daemon", "policy.rejected")) == 1
    assert daemon.alive()


def test_hostile_files_dropped_into_the_policy_dir_are_refused_and_the_daemon_keeps_serving(make_cluster, tmp_path):
    import signal
    import time

    from supervisor.shared import keys

    policies = tmp_path / "policies"
    policies.mkdir()
    shutil.copy(DEFAULT, policies / "default.yaml")
    _, secret = keys.generate(tmp_path / "keys", "daemon")
    secret_text = next(line for line in secret.read_text().splitlines() if "secret-key" in line).split('"')[1]

    cluster = make_cluster()
    daemon = cluster.start_daemon("--policy-dir", str(policies))
    wait_for(lambda: request(cluster.ctl, "policies", timeout=1), 20, "the daemon to serve policies")

    os.mkfifo(policies / "fifo.yaml")
    (policies / "zero.yaml").symlink_to("/dev/zero")
    (policies / "key.yaml").symlink_to(secret)
    with open(policies / "big.yaml", "wb") as f:
        f.truncate(20 * 1024 * 1024)
    rejected = wait_for(
        lambda: (lambda found: found if len(found) == 4 else None)(cluster.find_events("daemon", "policy.rejected")),
        10, "the four files to be refused",
    )
    reasons = {Path(e["file"]).name: e["errors"] for e in rejected}
    assert "a FIFO (named pipe)" in reasons["fifo.yaml"][0]
    assert "a character device" in reasons["zero.yaml"][0]
    assert "may hold at most 1 MiB" in reasons["big.yaml"][0]
    assert "looks like a secret key file" in reasons["key.yaml"][0]
    for _ in range(5):  # the loop is not stuck: status answers promptly
        started = time.monotonic()
        cluster.status(timeout=1.0)
        assert time.monotonic() - started < 0.5
    shown = request(cluster.ctl, "policies", timeout=1)
    assert [p["name"] for p in shown["policies"]] == ["default"]
    assert secret_text not in json.dumps(shown)
    assert secret_text not in (cluster.root / "logs" / "daemon.log").read_text()
    # SIGTERM still stops it (a FIFO once blocked the loop for good).
    os.kill(daemon.pid, signal.SIGTERM)
    wait_for(lambda: not daemon.alive(), 10, "the daemon to exit on SIGTERM")
