"""`trainguard policy check / explain / show` as an operator runs them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from supervisor.policy.shipped import shipped_policy_dir
from tests.conftest import trainguard

# Every test runs the CLI in a child process.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]

POLICIES = shipped_policy_dir()


def test_every_shipped_policy_passes_check():
    result = trainguard("policy", "check", str(POLICIES))
    assert result.returncode == 0, result.stderr
    for name in ("default.yaml", "patient-ascend.yaml"):
        assert f"ok  {POLICIES / name}" in result.stdout


def test_check_reports_every_problem_with_its_line_and_exits_1(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "version: 1\n"                                                    # 1
        "pools:\n"                                                        # 2
        "  ascend: {accelerator: ascend}\n"                               # 3
        "  nvidia: {accelerator: nvidia}\n"                               # 4
        "rules:\n"                                                        # 5
        "  - name: unstable\n"                                            # 6
        "    when:\n"                                                     # 7
        "      any:\n"                                                    # 8
        "        - {signal: interconnect_timeout, count: 3, withn: 30m}\n"  # 9 typo
        "        - {signal: chip_error, count: three, within: 1h}\n"      # 10 wrong type
        "        - {signal: hang, count: 2, within: -5m}\n"               # 11 negative
        "        - {signal: hccl_timeout}\n"                              # 12 unknown signal
        "    then: {action: failover, to: gpu}\n"                         # 13 undefined pool
    )
    good = POLICIES / "default.yaml"
    result = trainguard("policy", "check", str(good), str(bad))
    assert result.returncode == 1
    assert f"ok  {good}" in result.stdout
    lines = result.stderr.strip().splitlines()
    assert [line.split(":")[1] for line in lines] == ["9", "10", "11", "12", "13"], lines
    assert "unknown key 'withn'; did you mean 'within'?" in lines[0]
    assert "count must be a whole number ≥ 1, got 'three'" in lines[1]
    assert "a duration must be zero or positive, got '-5m'" in lines[2]
    assert "'hccl_timeout' is not allowed" in lines[3] and "interconnect_timeout" in lines[3]
    assert "pool 'gpu' is not defined in pools; defined pools: ascend, nvidia" in lines[4]


def _signals(path: Path, times_s: list[float], signal: str = "interconnect_timeout", pool: str = "ascend") -> Path:
    with path.open("w") as f:
        for i, t in enumerate(times_s):
            f.write(json.dumps({"signal": signal, "at": 1_790_000_000 + t, "pool": pool, "node": f"a{i % 2}",
                                "job": "gpt", "evidence": "EI0002 notify wait timeout"}) + "\n")
    return path


def _explain(events: Path, *extra: str) -> tuple[list[dict], dict]:
    result = trainguard("policy", "explain", str(POLICIES / "default.yaml"), "--events", str(events), "--json", *extra)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    return rows[:-1], rows[-1]["summary"]


def test_three_hccl_timeouts_within_30_minutes_fail_over_to_nvidia(tmp_path):
    decisions, summary = _explain(_signals(tmp_path / "ev.jsonl", [0, 600, 1200]))
    assert [d["action"] for d in decisions] == ["restart", "restart", "failover"]
    failover = decisions[-1]
    assert failover["rule"] == "ascend-unstable" and failover["to_pool"] == "nvidia"
    assert failover["counts"][0]["observed"] == 3 and failover["counts"][0]["threshold"] == 3
    assert len(failover["evidence"]) == 3 and "EI0002" in failover["evidence"][0]["evidence"]
    assert summary["jobs"]["gpt"]["pool"] == "nvidia"


def test_the_same_three_timeouts_over_three_hours_only_restart(tmp_path):
    decisions, summary = _explain(_signals(tmp_path / "ev.jsonl", [0, 5400, 10800]))
    assert [d["action"] for d in decisions] == ["restart", "restart", "restart"]
    assert summary["jobs"]["gpt"]["pool"] == "ascend"


def test_a_failover_into_an_unhealthy_pool_is_blocked_loudly(tmp_path):
    decisions, _ = _explain(_signals(tmp_path / "ev.jsonl", [0, 600, 1200]), "--healthy", "nvidia=0")
    assert [(d["action"], d["blocked"]) for d in decisions][-2:] == [("failover", True), ("restart", False)]
    assert "pool nvidia has 0 healthy nodes" in decisions[-2]["reason"]


def test_explain_reads_a_daemon_log(tmp_path):
    """The daemon's own JSON log replays: pools come from the accelerator field."""
    log = tmp_path / "daemon.log"
    lines = [{"timestamp": "2026-11-28T01:00:00Z", "level": "info", "event": "daemon.started"}]
    for minute in (0, 7, 14):
        lines.append({"timestamp": f"2026-11-28T02:{minute:02d}:00Z", "level": "warning", "event": "node.lost",
                      "node": "a1", "signal": "node_lost", "accelerator": "sim-ascend"})
    log.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    result = trainguard("policy", "explain", str(POLICIES / "default.yaml"), "--events", str(log))
    assert result.returncode == 0, result.stderr
    assert "1 lines without a signal skipped" in result.stdout
    assert "failover → nvidia" in result.stdout and "rule ascend-unstable" in result.stdout


def test_explain_refuses_a_history_with_unreadable_lines(tmp_path):
    events = tmp_path / "ev.jsonl"
    events.write_text('{"signal": "crash", "at": 1}\nnot json\n{"signal": "meltdown", "at": 2}\n')
    result = trainguard("policy", "explain", str(POLICIES / "default.yaml"), "--events", str(events))
    assert result.returncode == 1
    assert f"{events}:2: not JSON" in result.stderr
    assert f"{events}:3: unknown signal 'meltdown'" in result.stderr
    assert "nothing replayed" in result.stderr


def test_show_lists_a_directory_offline(tmp_path):
    result = trainguard("policy", "show", "--dir", str(POLICIES), "--json")
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert [p["name"] for p in shown["policies"]] == ["default", "patient-ascend"]
    assert shown["rejected"] == []
