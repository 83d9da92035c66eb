"""The shipped systemd units: they verify, and their exposure stays low."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)

UNITS = Path(__file__).resolve().parent.parent / "systemd"
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")
TRAINGUARD = Path(sys.executable).with_name("trainguard")


def installed_copy(tmp_path: Path, name: str) -> Path:
    """The unit as it would be installed, pointing at this checkout's trainguard (verify
    checks that ExecStart exists)."""
    unit = tmp_path / name
    unit.write_text((UNITS / name).read_text().replace("/opt/trainguard/bin/trainguard", str(TRAINGUARD)))
    return unit


@pytest.mark.parametrize("name", ["trainguard-daemon.service", "trainguard-agent.service"])
def test_units_are_notify_services_with_a_watchdog_and_restart(name):
    text = (UNITS / name).read_text()
    for line in ("Type=notify", "NotifyAccess=main", "Restart=on-failure", "NoNewPrivileges=yes",
                 "ProtectSystem=strict", "PrivateTmp=yes", "StateDirectory=", "RuntimeDirectory=", "LogsDirectory="):
        assert re.search(rf"^{re.escape(line)}", text, re.M), f"{name} lacks {line}"
    assert re.search(r"^WatchdogSec=\d+s$", text, re.M)


@pytest.mark.slow
@needs_analyze
def test_units_pass_systemd_analyze_verify(tmp_path):
    units = [installed_copy(tmp_path, n) for n in ("trainguard-daemon.service", "trainguard-agent.service")]
    result = subprocess.run([ANALYZE, "verify", *map(str, units)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "trainguard" not in result.stderr, result.stderr  # no warnings about our units


@pytest.mark.slow
@needs_analyze
@pytest.mark.parametrize("name, ceiling", [("trainguard-daemon.service", 2.0), ("trainguard-agent.service", 4.0)])
def test_exposure_stays_low(tmp_path, name, ceiling):
    unit = installed_copy(tmp_path, name)
    result = subprocess.run([ANALYZE, "security", "--offline=yes", str(unit)], capture_output=True, text=True)
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout[-2000:] + result.stderr
    assert float(match.group(1)) <= ceiling, f"{name} exposure {match.group(1)} > {ceiling}"


def test_sysusers_and_tmpfiles_are_shipped():
    assert "u trainguard" in (UNITS / "trainguard.sysusers").read_text()
    tmpfiles = (UNITS / "trainguard.tmpfiles").read_text()
    assert "d /etc/trainguard/keys       0750 root trainguard" in tmpfiles


def test_the_agent_may_read_its_own_ranks_stacks_and_no_more():
    """py-spy needs ptrace and process_vm_readv; no capability is granted, so it reads
    only processes of the agent's user that allow it (the rank wrapper names the agent)."""
    text = (UNITS / "trainguard-agent.service").read_text()
    filters = [line.split("=", 1)[1].split() for line in text.splitlines() if line.startswith("SystemCallFilter=")]
    assert ["ptrace", "process_vm_readv"] in filters
    assert "CapabilityBoundingSet=\n" in text and "AmbientCapabilities=\n" in text
    settings = [line for line in text.splitlines() if not line.startswith("#")]
    assert not [line for line in settings if "CAP_SYS_PTRACE" in line]


def test_the_agent_may_give_a_standby_that_becomes_a_rank_its_priority_back():
    """Standbys start nicer (agents/standby.py); putting one back to nice 0 needs an
    RLIMIT_NICE that reaches 0, not a capability."""
    text = (UNITS / "trainguard-agent.service").read_text()
    assert "LimitNICE=+0\n" in text
