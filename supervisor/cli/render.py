"""Human renderings of daemon answers (rich tables). The JSON forms are the interface;
these are for eyes, and may change."""

from __future__ import annotations

import sys
import time
from collections import Counter
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from supervisor.shared.durations import format_duration


def make_console() -> Console:
    """A terminal gets rich's own sizing; a pipe or file gets long unwrapped lines, so
    that grep and log collectors see one line per item."""
    if sys.stdout.isatty():
        return Console()
    return Console(width=200, soft_wrap=True)


_STYLE = {
    "ok": "green",
    "up": "green",
    "warning": "yellow",
    "pending": "yellow",
    "unknown": "magenta",
    "alarm": "red",
    "critical": "bold red",
    "lost": "bold red",
    "left": "dim",
    "running": "green",
    "succeeded": "bold green",
    "starting": "yellow",
    "restarting": "yellow",
    "failing_over": "bold magenta",
    "stopping": "yellow",
    "failed": "bold red",
    "stopped": "dim",
    "restart": "yellow",
    "exclude": "yellow",
    "failover": "bold magenta",
    "fail": "bold red",
    "stop": "red",
}


def _styled(word: str) -> str:
    style = _STYLE.get(word)
    return f"[{style}]{word}[/]" if style else word


def _chips(chips: list[dict[str, Any]]) -> str:
    if not chips:
        return "-"
    counts = Counter(c["health"] for c in chips)
    summary = ", ".join(f"{n} {_styled(h)}" for h, n in sorted(counts.items(), key=lambda kv: kv[0] != "ok"))
    bad = [c for c in chips if c["health"] != "ok"]
    details = "; ".join(f"#{c['index']} {c['health']}" + (f" ({c['reason']})" if c.get("reason") else "") for c in bad[:3])
    if len(bad) > 3:
        details += f"; +{len(bad) - 3} more"
    readings = _readings(chips)
    return summary + (f"\n{readings}" if readings else "") + (f"\n[dim]{details}[/]" if details else "")


def _readings(chips: list[dict[str, Any]]) -> str:
    """Busiest chip's use and the node's chip power, as far as the probes read them."""
    utils = [c["utilisation_pct"] for c in chips if c.get("utilisation_pct") is not None]
    power = [c["power_w"] for c in chips if c.get("power_w") is not None]
    parts = []
    if utils:
        parts.append(f"use max {max(utils):.0f}%")
    if power:
        parts.append(f"{sum(power):.0f} W")
    return "[dim]" + " · ".join(parts) + "[/]" if parts else ""


def _host(host: dict[str, Any] | None) -> str:
    if not host:
        return "-"
    text = _styled(host["health"])
    if host.get("disk_free_bytes") is not None and host.get("disk_total_bytes"):
        text += f" (disk {host['disk_free_bytes'] / host['disk_total_bytes']:.0%} free)"
    if host.get("reason"):
        text += f"\n[dim]{host['reason']}[/]"
    return text


def print_status(status: dict[str, Any], console: Console | None = None) -> None:
    console = console or make_console()
    d = status["daemon"]
    console.print(
        f"trainguard daemon {d['version']} · up {format_duration(d['uptime_s'])} · "
        f"heartbeat timeout {d['heartbeat_timeout_s']:g}s · "
        f"started {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(d['started_at']))}"
    )
    states = status["summary"]["states"]
    console.print(
        f"nodes: {status['summary']['nodes']} ("
        + ", ".join(f"{n} {_styled(s)}" for s, n in states.items() if n)
        + ")"
    )
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("NODE", "STATE", "HEALTH", "ACCELERATOR", "CHIPS", "HOST", "LAST HEARTBEAT"):
        table.add_column(column)
    for n in status["nodes"]:
        table.add_row(
            n["node"],
            _styled(n["state"]),
            _styled(n["health"]),
            n["accelerator"],
            _chips(n["chips"]),
            _host(n["host"]),
            f"{format_duration(n['last_heartbeat_age_s'])} ago",
        )
    if status["nodes"]:
        console.print(table)
    for n in status["nodes"]:
        by_job: dict[str, list[dict[str, Any]]] = {}
        for r in n["running"]:
            by_job.setdefault(r["job"], []).append(r)
        for job, ranks in sorted(by_job.items()):
            steps = ", ".join(f"rank {r['rank']} step {r['step'] if r['step'] is not None else '?'}" for r in ranks)
            console.print(f"ranks on {n['node']}: job {job}: {steps}", highlight=False)
    jobs = status["jobs"]
    if jobs:
        print_jobs(jobs, console)
    else:
        console.print("jobs: none running")


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def print_jobs(jobs: list[dict[str, Any]], console: Console | None = None) -> None:
    console = console or make_console()
    if not jobs:
        console.print("no jobs")
        return
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("JOB", "STATE", "POOL", "NODES", "ATTEMPT", "STEP", "LOSS", "CKPT", "RESTARTS", "FAILOVERS", "ETTR"):
        table.add_column(column)
    for j in jobs:
        table.add_row(escape(j["id"]), _styled(j["state"]), escape(j["pool"]), escape(",".join(j["nodes"]) or "-"),
                      str(j["attempt"]), _fmt(j["step"]), _fmt(j["loss"]), _fmt(j["last_checkpoint_step"]),
                      str(j["restarts"]), str(len(j["failovers"])), _fmt(j["ettr"], 3))
    console.print(table)
    for j in jobs:
        if j["state"] == "pending" and j.get("waiting_for"):
            console.print(f"  {escape(j['id'])} waits: {escape(j['waiting_for'])}", highlight=False)


def print_job(j: dict[str, Any], console: Console | None = None) -> None:
    console = console or make_console()
    console.print(f"[bold]{escape(j['id'])}[/] {_styled(j['state'])} on pool {escape(j['pool'])}"
                  f" · attempt {j['attempt']} · world size {_fmt(j['world_size'])} · policy {escape(j['policy'])}")
    console.print(f"step {_fmt(j['step'])} · loss {_fmt(j['loss'])} · last checkpoint {_fmt(j['last_checkpoint_step'])}"
                  f" · restarts {j['restarts']} · ETTR {_fmt(j['ettr'], 3)}", highlight=False)
    if j["nodes"]:
        console.print(f"nodes: {escape(', '.join(j['nodes']))}" + (f" · rendezvous {escape(j['master'])}" if j["master"] else "")
                      + (f" · warm spares on {escape(', '.join(j['spare_nodes']))}" if j.get("spare_nodes") else ""))
    if j.get("waiting_for"):
        console.print(f"waiting for: {escape(j['waiting_for'])}")
    if j.get("reason"):
        console.print(f"reason: {escape(j['reason'])}")
    for f in j["failovers"]:
        console.print(f"failover {escape(f['from_pool'])} → {escape(f['to_pool'])} at step {_fmt(f['step'])} "
                      f"(rule {escape(f['rule'])})", highlight=False)
    if j["decisions"]:
        console.print("[bold]decisions[/] (newest last):")
        for d in j["decisions"][-20:]:
            when = time.strftime("%H:%M:%S", time.localtime(d.get("at", 0)))
            blocked = " [dim](blocked)[/]" if d.get("blocked") else ""
            console.print(f"  {when} {_styled(d['action'])}{blocked} rule {escape(str(d.get('rule')))}: "
                          f"{escape(str(d.get('reason', '')))}", highlight=False)


def event_line(event: dict[str, Any]) -> str:
    """One stored event as a line for a human (no markup: printed with click)."""
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(event.get("ts", 0)))
    keys = ("job", "node", "rank", "chip", "attempt", "state", "previous", "signal", "rule", "action", "pool",
            "reason", "summary", "evidence")
    fields = " ".join(f"{k}={str(event[k]).splitlines()[-1][:160] if event[k] else event[k]!r}"
                      for k in keys if k in event and event[k] not in (None, ""))
    return f"{when}  {event.get('event', '?'):<24} {fields}"


_ACTION_STYLE = {"failover": "bold magenta", "fail": "bold red", "stop": "red", "restart": "yellow",
                 "exclude": "yellow", "alert": "cyan", "checkpoint": "cyan", "none": "dim"}


def print_explain(policy: Any, report: Any, events_name: str, skipped: int, console: Console | None = None) -> None:
    """The decisions of a `policy explain` replay, one block per decision."""
    console = console or make_console()
    console.print(
        f"policy [bold]{policy.name}[/] ({policy.source}, sha256 {policy.sha256[:12]}) · "
        f"{sum(1 for _ in report.decisions)} decisions for the signals in {events_name}"
        + (f" · {skipped} lines without a signal skipped" if skipped else "")
    )
    first = report.first_at or 0.0
    for d in report.decisions:
        when = f"+{format_duration(d.at - first)}"
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(d.at)) if d.at > 1e9 else ""
        action = d.action.value + (" BLOCKED" if d.blocked else "")
        style = "bold red" if d.blocked else _ACTION_STYLE.get(d.action.value, "")
        target = f" → {d.to_pool}" if d.to_pool else ""
        rule = f" [dim]rule {d.rule}" + (f" (line {_rule_line(policy, d.rule)})" if _rule_line(policy, d.rule) else "") + "[/]" if d.rule else ""
        console.print(f"{when:>9} {stamp}  job {d.job}  [{style}]{action}{target}[/]{rule}", highlight=False)
        console.print(f"          {d.reason}", highlight=False)
        for e in d.evidence[-3:]:
            where = " ".join(f"{k}={e[k]}" for k in ("pool", "node", "chip", "rank") if k in e)
            text = f" — {e['evidence']}" if e.get("evidence") else ""
            console.print(f"          [dim]· {e['signal']} {where}{text}[/]", highlight=False)
    s = report.summary()
    actions = ", ".join(f"{n} {a}" for a, n in s["actions"].items()) or "none"
    finals = "; ".join(f"{j} ends on {v['pool']}" + (" (finished)" if v["finished"] else "") for j, v in s["jobs"].items())
    console.print(f"summary: {actions}; {s['blocked']} blocked; {finals or 'no jobs'}")


def _rule_line(policy: Any, name: str | None) -> int | None:
    return next((r.line for r in policy.rules if r.name == name), None)


def print_policies(result: dict[str, Any], console: Console | None = None) -> None:
    console = console or make_console()
    console.print(f"policy directory: {result['directory']}")
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("POLICY", "FILE", "SHA256", "PREFERRED", "RULES"):
        table.add_column(column)
    for p in result["policies"]:
        table.add_row(p["name"], p["file"], p["sha256"][:12], p["preferred_pool"],
                      ", ".join(f"{r['name']}→{r['action']}" for r in p["rules"]))
    console.print(table if result["policies"] else "no valid policies loaded")
    for r in result["rejected"]:
        console.print(f"[bold red]refused[/] {r['file']}:")
        for error in r["errors"]:
            console.print(f"  {error}", highlight=False)


def print_report(r: dict[str, Any], console: Console | None = None) -> None:
    console = console or make_console()
    console.print(f"[bold]{escape(r['job'])}[/] {_styled(r['state'])} on {escape(r['pool'])} at step {_fmt(r['step'])}"
                  f" · wall {format_duration(r['wall_s'])} · ETTR {_fmt(r['ettr'], 3)} · restarts {r['restarts']}"
                  f" · failovers {len(r['failovers'])} · steps redone {r['steps_redone']}")
    lost = Table(title="time lost by root cause", box=None, header_style="bold", pad_edge=False)
    lost.add_column("CAUSE")
    lost.add_column("LOST", justify="right")
    lost.add_column("SHARE", justify="right")
    total = r["lost_total_s"] or 1.0
    for cause, seconds in r["lost_s"].items():
        if seconds:
            lost.add_row(cause, format_duration(seconds), f"{100 * seconds / total:.0f}%")
    console.print(lost if r["lost_total_s"] else "no time lost")
    if r["incidents"]:
        table = Table(title="incidents", box=None, header_style="bold", pad_edge=False)
        for column in ("#", "ROOT CAUSE", "NODE", "DETECTED", "RULE", "ACTION", "RECOVERED", "REDONE"):
            table.add_column(column)
        for i in r["incidents"]:
            table.add_row(str(i["n"]), escape(str(i["signal"])), escape(str(i["node"])), f"{i['detected_s']:.1f}s",
                          escape(str(i["rule"])), escape(str(i["action"])),
                          f"{i['recovery_s']:.1f}s" if i["recovery_s"] is not None else "-", str(i["steps_redone"]))
        console.print(table)
