"""Replaying a signal history through a policy (`trainguard policy explain`). Pure."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Mapping

from supervisor.policy.engine import Decision, JobPolicy, SignalEvent
from supervisor.policy.schema import Policy

#: The job name for signals that name none (a node-level log, say).
DEFAULT_JOB = "job"


@dataclass
class Report:
    decisions: list[Decision]
    jobs: dict[str, JobPolicy]
    first_at: float | None

    def summary(self) -> dict[str, Any]:
        actions = Counter(d.action.value for d in self.decisions if not d.blocked)
        return {
            "decisions": len(self.decisions),
            "actions": dict(sorted(actions.items())),
            "blocked": sum(d.blocked for d in self.decisions),
            "jobs": {name: {"pool": job.pool, "finished": job.finished} for name, job in sorted(self.jobs.items())},
        }


def explain(
    policy: Policy,
    events: list[SignalEvent],
    pool_health: Mapping[str, int] | None = None,
    start_pool: str | None = None,
) -> Report:
    """Feed `events` (in time order) to one JobPolicy per job; collect every decision.
    Failback is checked at each signal's time, as the daemon's timer would."""
    jobs: dict[str, JobPolicy] = {}
    decisions: list[Decision] = []
    for event in events:
        name = event.job or DEFAULT_JOB
        job = jobs.get(name)
        if job is None:
            job = jobs[name] = JobPolicy(policy, name, start_pool or policy.preferred_pool)
        decisions.extend(job.on_tick(pool_health, event.at))
        decisions.extend(job.on_signal(event, pool_health, event.at))
    return Report(decisions, jobs, events[0].at if events else None)
