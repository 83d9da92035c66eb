"""supervisor.policy.history (reading a recorded history) and .explain (replaying it)."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from supervisor.policy.engine import SignalEvent
from supervisor.policy.explain import DEFAULT_JOB, explain
from supervisor.policy.history import read_history
from supervisor.policy.loader import Problem, load_bytes, load_file
from supervisor.policy.shipped import shipped_policy_dir
from supervisor.shared.vocab import Action, Severity, Signal

POLICIES = shipped_policy_dir()
DEFAULT = load_file(POLICIES / "default.yaml")
PATIENT = load_file(POLICIES / "patient-ascend.yaml")
SIGNALS = "crash, hang, interconnect_timeout, chip_error, chip_degraded, oom, network, node_lost, straggler, no_capacity, user_error"


def lines(*records: Any) -> list[str]:
    """JSON lines; a str is taken as a raw line."""
    return [r if isinstance(r, str) else json.dumps(r) for r in records]


def utc(*args: int) -> float:
    return datetime(*args, tzinfo=timezone.utc).timestamp()  # type: ignore[misc]


# --- read_history -----------------------------------------------------------------


def test_signal_record_with_every_field() -> None:
    record = {"signal": "chip_error", "at": 100.5, "job": "train-1", "pool": "nvidia", "node": "n1",
              "chip": 2, "rank": 3, "severity": "warning", "evidence": "ECC x3", "id": "s-1"}

    history = read_history(lines(record), "h.jsonl", DEFAULT)

    assert history.problems == []
    assert history.skipped == 0
    assert history.events == [
        SignalEvent(Signal.CHIP_ERROR, 100.5, job="train-1", pool="nvidia", node="n1", chip=2, rank=3,
                    severity=Severity.WARNING, evidence="ECC x3", id="s-1"),
    ]


def test_signal_record_with_only_signal_and_ts() -> None:
    history = read_history(lines({"signal": "crash", "ts": 7}), "h.jsonl", DEFAULT)
    assert history.events == [SignalEvent(Signal.CRASH, 7.0)]
    assert history.events[0].pool is None


def test_daemon_log_line_with_iso_timestamp_and_accelerator() -> None:
    line = {"timestamp": "2024-05-01T12:00:00.500000Z", "level": "warning", "event": "chip.health_changed",
            "node": "n1", "chip": 0, "signal": "chip_error", "accelerator": "sim-ascend", "event_id": "e-9",
            "job": "train-1", "rank": 0, "evidence": "critical"}

    (event,) = read_history(lines(line), "daemon.log", DEFAULT).events

    assert event.at == utc(2024, 5, 1, 12, 0, 0, 500000)
    assert event.pool == "ascend"  # sim-ascend is an ascend node
    assert (event.signal, event.node, event.chip, event.rank, event.job) == (Signal.CHIP_ERROR, "n1", 0, 0, "train-1")
    assert event.id == "e-9"
    assert event.evidence == "critical"


def test_iso_timestamp_with_an_offset() -> None:
    (event,) = read_history(lines({"signal": "hang", "timestamp": "2024-05-01T14:00:00+02:00"}), "h", DEFAULT).events
    assert event.at == utc(2024, 5, 1, 12, 0, 0)


def test_observed_at_wins_over_the_log_timestamp() -> None:
    # The daemon logs when it heard of a fault; the agent's observed_at is when it happened.
    line = {"timestamp": "2024-05-01T12:00:05Z", "observed_at": utc(2024, 5, 1, 12, 0, 0), "signal": "hang"}
    (event,) = read_history(lines(line), "h", DEFAULT).events
    assert event.at == utc(2024, 5, 1, 12, 0, 0)


def test_pool_from_accelerator() -> None:
    records = [
        {"signal": "crash", "at": 1, "accelerator": "ascend"},
        {"signal": "crash", "at": 2, "accelerator": "sim-nvidia"},
        {"signal": "crash", "at": 3, "accelerator": "cpu"},  # default.yaml has no cpu pool
        {"signal": "crash", "at": 4, "accelerator": "sim-ascend", "pool": "nvidia"},  # an explicit pool wins
    ]
    events = read_history(lines(*records), "h", DEFAULT).events
    assert [e.pool for e in events] == ["ascend", "nvidia", None, "nvidia"]


def test_pool_from_accelerator_is_none_when_two_pools_share_it() -> None:
    p = load_bytes(b"""version: 1
pools:
  big: {accelerator: nvidia}
  small: {accelerator: nvidia}
rules:
  - {name: r, when: {signal: crash}, then: {action: restart}}
""", "p.yaml")
    (event,) = read_history(lines({"signal": "crash", "at": 1, "accelerator": "nvidia"}), "h", p).events
    assert event.pool is None


def test_lines_without_a_signal_are_skipped_and_counted() -> None:
    history = read_history(
        lines(
            {"timestamp": "2024-05-01T12:00:00Z", "event": "node.up", "node": "n1"},
            {"signal": None, "event": "job.started", "at": 1},
            "",
            "   ",
            "[1, 2]",
            '"just a string"',
            {"signal": "crash", "at": 5},
        ),
        "h",
        DEFAULT,
    )
    assert history.skipped == 4  # blank lines are not counted
    assert history.problems == []
    assert [e.signal for e in history.events] == [Signal.CRASH]


def test_bad_lines_are_problems_with_their_line_numbers() -> None:
    history = read_history(
        lines(
            {"signal": "crash", "at": 1},
            "{not json",
            {"signal": "meltdown", "at": 2},
            "",
            {"signal": "hang", "timestamp": "yesterday"},
            {"signal": "hang"},
            {"signal": "hang", "at": 3, "severity": "fatal"},
            {"signal": "oom", "at": 4},
        ),
        "night.jsonl",
        DEFAULT,
    )
    assert history.problems == [
        Problem("night.jsonl", 2, "not JSON (Expecting property name enclosed in double quotes)"),
        Problem("night.jsonl", 3, f"unknown signal 'meltdown'; allowed: {SIGNALS}"),
        Problem("night.jsonl", 5, "timestamp 'yesterday' is not an ISO 8601 time"),
        Problem("night.jsonl", 6, "no time: give observed_at, at or ts (Unix seconds) or timestamp (ISO 8601)"),
        Problem("night.jsonl", 7, "unknown severity 'fatal'; allowed: warning, error, critical"),
    ]
    assert str(history.problems[0]) == "night.jsonl:2: not JSON (Expecting property name enclosed in double quotes)"
    assert [e.signal for e in history.events] == [Signal.CRASH, Signal.OOM]


def test_a_boolean_is_not_a_time() -> None:
    history = read_history(lines({"signal": "hang", "at": True}), "h", DEFAULT)
    assert history.events == []
    assert [p.line for p in history.problems] == [1]


def test_events_come_back_sorted_by_time_same_times_in_file_order() -> None:
    history = read_history(
        lines(
            {"signal": "crash", "at": 30, "node": "c"},
            {"signal": "hang", "at": 10, "node": "a"},
            {"signal": "oom", "at": 20, "node": "first"},
            {"signal": "oom", "at": 20, "node": "second"},
            {"signal": "network", "timestamp": "1970-01-01T00:00:15Z", "node": "iso"},
        ),
        "h",
        DEFAULT,
    )
    assert [(e.at, e.node) for e in history.events] == [
        (10, "a"), (15, "iso"), (20, "first"), (20, "second"), (30, "c"),
    ]


def test_reads_a_file_object(tmp_path: Path) -> None:
    path = tmp_path / "h.jsonl"
    path.write_text("\n".join(lines({"signal": "crash", "at": 2}, {"event": "x"}, {"signal": "hang", "at": 1})) + "\n")
    with path.open() as f:
        history = read_history(f, str(path), DEFAULT)
    assert [e.signal for e in history.events] == [Signal.HANG, Signal.CRASH]
    assert history.skipped == 1


# --- explain ----------------------------------------------------------------------


def ev(signal: str, at: float, job: str = "", pool: str | None = "ascend", node: str | None = None) -> SignalEvent:
    return SignalEvent(Signal(signal), at, job=job, pool=pool, node=node)


def test_explain_groups_signals_by_job() -> None:
    # Interleaved: job a sees three ascend timeouts within 30m, job b only one.
    events = [
        ev("interconnect_timeout", 0, "a"),
        ev("interconnect_timeout", 60, "b"),
        ev("interconnect_timeout", 120, "a"),
        ev("interconnect_timeout", 180, "a"),
    ]

    report = explain(DEFAULT, events)

    assert [(d.job, d.action) for d in report.decisions] == [
        ("a", Action.RESTART), ("b", Action.RESTART), ("a", Action.RESTART), ("a", Action.FAILOVER),
    ]
    assert report.jobs["a"].pool == "nvidia"
    assert report.jobs["b"].pool == "ascend"
    assert report.first_at == 0
    assert report.summary() == {
        "decisions": 4,
        "actions": {"failover": 1, "restart": 3},
        "blocked": 0,
        "jobs": {"a": {"pool": "nvidia", "finished": False}, "b": {"pool": "ascend", "finished": False}},
    }


def test_signals_without_a_job_share_the_default_job() -> None:
    report = explain(DEFAULT, [ev("crash", 0), ev("user_error", 1)])
    assert DEFAULT_JOB == "job"
    assert list(report.jobs) == ["job"]
    assert [d.job for d in report.decisions] == ["job", "job"]
    assert report.summary()["jobs"] == {"job": {"pool": "ascend", "finished": True}}


def test_each_job_starts_on_the_preferred_pool() -> None:
    p = load_bytes(b"""version: 1
pools:
  ascend: {accelerator: ascend}
  nvidia: {accelerator: nvidia}
preferred_pool: nvidia
rules:
  - {name: r, when: {signal: crash}, then: {action: restart}}
""", "p.yaml")
    report = explain(p, [ev("crash", 0, "a"), ev("crash", 1, "b")])
    assert {name: job.pool for name, job in report.jobs.items()} == {"a": "nvidia", "b": "nvidia"}
    assert [d.from_pool for d in report.decisions] == ["nvidia", "nvidia"]


def test_start_pool_overrides_the_preferred_pool() -> None:
    events = [ev("interconnect_timeout", t, "a") for t in (0, 1, 2)]
    report = explain(DEFAULT, events, start_pool="nvidia")
    assert report.jobs["a"].pool == "nvidia"
    # Already on nvidia: the failover is blocked and the job restarts where it is.
    assert report.summary() == {
        "decisions": 4,
        "actions": {"restart": 3},
        "blocked": 1,
        "jobs": {"a": {"pool": "nvidia", "finished": False}},
    }
    assert [d.event_name for d in report.decisions].count("policy.blocked") == 1


def test_pool_health_is_passed_to_every_decision() -> None:
    events = [ev("interconnect_timeout", t, "a") for t in (0, 1, 2, 3)]
    report = explain(DEFAULT, events, pool_health={"ascend": 3, "nvidia": 0})
    assert report.summary()["blocked"] == 2
    assert report.summary()["actions"] == {"restart": 4}
    assert all("pool nvidia has 0 healthy nodes" in d.reason for d in report.decisions if d.blocked)


def test_explain_checks_failback_at_each_signals_time() -> None:
    # patient-ascend fails back after 4h of a healthy, quiet ascend pool.
    events = [ev("crash", 0, "a", pool="nvidia"), ev("crash", 4 * 3600, "a", pool="nvidia")]
    report = explain(PATIENT, events, pool_health={"ascend": 2, "nvidia": 2}, start_pool="nvidia")
    assert [(d.rule, d.action, d.from_pool) for d in report.decisions] == [
        ("any-fault", Action.RESTART, "nvidia"),
        ("failback", Action.FAILOVER, "nvidia"),
        ("any-fault", Action.RESTART, "ascend"),
    ]
    assert report.summary()["actions"] == {"failover": 1, "restart": 2}


def test_explain_of_nothing() -> None:
    report = explain(DEFAULT, [])
    assert report.first_at is None
    assert report.summary() == {"decisions": 0, "actions": {}, "blocked": 0, "jobs": {}}


def test_read_then_explain_a_daemon_log() -> None:
    log = lines(
        {"timestamp": "2024-05-01T12:00:00Z", "event": "node.up", "node": "n1", "accelerator": "sim-ascend"},
        {"timestamp": "2024-05-01T12:10:00Z", "event": "rank.timeout", "node": "n1", "job": "llm",
         "signal": "interconnect_timeout", "accelerator": "sim-ascend"},
        {"timestamp": "2024-05-01T12:20:00Z", "event": "rank.timeout", "node": "n2", "job": "llm",
         "signal": "interconnect_timeout", "accelerator": "sim-ascend"},
        {"timestamp": "2024-05-01T12:25:00Z", "event": "rank.straggler", "node": "n3", "job": "llm",
         "signal": "straggler", "accelerator": "sim-nvidia"},
        {"timestamp": "2024-05-01T12:30:00Z", "event": "rank.timeout", "node": "n1", "job": "llm",
         "signal": "interconnect_timeout", "accelerator": "sim-ascend"},
    )
    history = read_history(log, "daemon.log", DEFAULT)
    assert history.skipped == 1 and history.problems == []

    report = explain(DEFAULT, history.events)

    assert [(d.action, d.rule) for d in report.decisions] == [
        (Action.RESTART, "any-fault"), (Action.RESTART, "any-fault"), (Action.ALERT, "degraded"),
        (Action.FAILOVER, "ascend-unstable"),
    ]
    failover = report.decisions[-1]
    assert failover.at == utc(2024, 5, 1, 12, 30)
    assert [e["node"] for e in failover.evidence] == ["n1", "n2", "n1"]
    assert report.summary()["jobs"] == {"llm": {"pool": "nvidia", "finished": False}}
