"""`trainguard job report`: what happened to a job and what it cost. Pure: the job (as
`job show` has it) and its stored events in, a report out.

In the spirit of the interruption tables large training runs publish: the effective
training time ratio, the time lost by root cause, detection and recovery per incident,
steps redone. Time lost to an incident is its downtime (from the fault to the job
training again), split into the part charged to its cause (until the policy decided)
and restart overhead (from the decision to training again), plus the time of the steps
redone after it (from the checkpoint it resumed from to the step it had reached), at
the job's mean step time.
"""

from __future__ import annotations

from typing import Any

#: Root-cause categories, as the report groups signals.
CATEGORY = {
    "crash": "crash", "oom": "crash", "user_error": "crash", "network": "crash",
    "hang": "hang",
    "chip_error": "chip", "chip_degraded": "chip",
    "interconnect_timeout": "interconnect",
    "node_lost": "node_lost",
    "no_capacity": "no_capacity",
}
CATEGORIES = ("crash", "hang", "chip", "interconnect", "node_lost", "no_capacity", "checkpoint", "restart_overhead")


def job_report(job: dict[str, Any], events: list[dict[str, Any]], now: float) -> dict[str, Any]:
    events = sorted(events, key=lambda e: e.get("ts", 0.0))
    start = job.get("first_started_at")
    end = job.get("ended_at") or now
    wall = (end - start) if start else 0.0
    step_s = _mean_step_seconds(job, wall)
    incidents = []
    lost = {c: 0.0 for c in CATEGORIES}
    redone_total = 0
    for i, incident in enumerate(e for e in events if e.get("event") == "job.incident"):
        at = float(incident.get("observed_at") or incident["ts"])
        decided = _first_after(events, "policy.decision", incident["ts"], lambda e: e.get("action") != "none")
        running = _first_after(events, "job.state_changed", incident["ts"], lambda e: e.get("state") == "running")
        recovered_at = running["ts"] if running else None
        category = CATEGORY.get(str(incident.get("signal")), "crash")
        decided_at = decided["ts"] if decided else incident["ts"]
        to_decision = max(0.0, decided_at - at)
        overhead = max(0.0, recovered_at - decided_at) if recovered_at else 0.0
        step, ckpt = incident.get("step"), incident.get("last_checkpoint_step")
        redone = max(0, step - ckpt) if isinstance(step, int) and isinstance(ckpt, int) else 0
        redone_total += redone
        lost[category] += to_decision + redone * step_s
        lost["restart_overhead"] += overhead
        incidents.append({
            "n": i + 1, "signal": incident.get("signal"), "category": category, "node": incident.get("node"),
            "rank": incident.get("rank"), "observed_at": at, "detected_s": round(max(0.0, incident["ts"] - at), 3),
            "decided_s": round(to_decision, 3), "rule": decided.get("rule") if decided else None,
            "action": decided.get("action") if decided else None,
            "recovery_s": round(recovered_at - at, 3) if recovered_at else None, "steps_redone": redone,
            "summary": incident.get("summary"),
        })
    for checkpoint_wait in (e for e in events if e.get("event") == "job.failover_started" and e.get("checkpoint_first")):
        stop = _first_after(events, "job.state_changed", checkpoint_wait["ts"], lambda e: e.get("state") == "pending")
        if stop:
            lost["checkpoint"] += max(0.0, stop["ts"] - checkpoint_wait["ts"])
    total_lost = sum(lost.values())
    return {
        "job": job["id"], "state": job["state"], "pool": job["pool"], "step": job["step"],
        "wall_s": round(wall, 3), "ettr": job.get("ettr"), "mean_step_s": round(step_s, 4),
        "restarts": job["restarts"], "failovers": job["failovers"], "steps_redone": redone_total,
        "lost_s": {k: round(v, 3) for k, v in lost.items()}, "lost_total_s": round(total_lost, 3),
        "incidents": incidents,
    }


def _mean_step_seconds(job: dict[str, Any], wall: float) -> float:
    step = job.get("step") or 0
    ettr = job.get("ettr") or 0.0
    return (wall * ettr / step) if step and wall > 0 else 0.0


def _first_after(events: list[dict[str, Any]], name: str, ts: float, when: Any) -> dict[str, Any] | None:
    return next((e for e in events if e.get("event") == name and e.get("ts", 0) >= ts and when(e)), None)
