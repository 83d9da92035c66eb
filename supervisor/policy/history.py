"""Reading a recorded event history (JSON lines) back as signals, for `policy explain`.

Accepts what trainguard itself writes: the daemon's JSON log (lines with `event`,
`timestamp` as ISO 8601, and `signal` on the events that are faults) and plain signal
records (`signal`, `at` or `ts` in Unix seconds, `job`, `pool`, `node`, `chip`, `rank`,
`severity`, `evidence`). Lines without a `signal` are skipped: a daemon log holds many
events that are not faults. A line that is not JSON, or names an unknown signal, is an
error with its line number: a replay that silently drops part of an incident would
explain the wrong night.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Iterable

from supervisor.policy.engine import SignalEvent
from supervisor.policy.loader import Problem
from supervisor.policy.schema import Policy
from supervisor.shared.vocab import Severity, Signal


@dataclass(frozen=True)
class History:
    events: list[SignalEvent]
    skipped: int  # lines that carried no signal
    problems: list[Problem]


def read_history(lines: Iterable[str], path: str, policy: Policy) -> History:
    events: list[SignalEvent] = []
    problems: list[Problem] = []
    skipped = 0
    for number, line in enumerate(lines, start=1):
        line = line.strip()
        if not line:
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(Problem(path, number, f"not JSON ({exc.msg})"))
            continue
        if not isinstance(record, dict) or "signal" not in record or record["signal"] is None:
            skipped += 1
            continue
        try:
            events.append(_event(record, policy))
        except ValueError as exc:
            problems.append(Problem(path, number, str(exc)))
    events.sort(key=lambda e: e.at)  # stable: same-time signals keep file order
    return History(events, skipped, problems)


def _event(record: dict[str, Any], policy: Policy) -> SignalEvent:
    try:
        signal = Signal(record["signal"])
    except ValueError:
        allowed = ", ".join(s.value for s in Signal)
        raise ValueError(f"unknown signal {record['signal']!r}; allowed: {allowed}") from None
    severity = None
    if record.get("severity") is not None:
        try:
            severity = Severity(record["severity"])
        except ValueError:
            raise ValueError(f"unknown severity {record['severity']!r}; allowed: warning, error, critical") from None
    pool = record.get("pool") or policy.pool_for_accelerator(record.get("accelerator"))
    chip, rank = record.get("chip"), record.get("rank")
    return SignalEvent(
        signal=signal,
        at=_time(record),
        job=str(record.get("job") or ""),
        pool=pool,
        node=record.get("node"),
        chip=int(chip) if isinstance(chip, (int, float)) else None,
        rank=int(rank) if isinstance(rank, (int, float)) else None,
        severity=severity,
        evidence=str(record.get("evidence") or ""),
        id=str(record.get("event_id") or record.get("id") or ""),
    )


def _time(record: dict[str, Any]) -> float:
    for key in ("observed_at", "at", "ts", "timestamp"):
        value = record.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
            except ValueError:
                raise ValueError(f"{key} {value!r} is not an ISO 8601 time") from None
    raise ValueError("no time: give observed_at, at or ts (Unix seconds) or timestamp (ISO 8601)")
