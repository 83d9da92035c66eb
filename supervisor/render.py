"""Human renderings of daemon answers (rich tables). The JSON forms are the interface;
these are for eyes, and may change."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from rich.console import Console
from rich.table import Table

from supervisor.durations import format_duration

_STYLE = {
    "ok": "green",
    "up": "green",
    "warning": "yellow",
    "pending": "yellow",
    "unknown": "magenta",
    "alarm": "red",
    "critical": "bold red",
    "lost": "bold red",
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
    return summary + (f"\n[dim]{details}[/]" if details else "")


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
    console = console or Console()
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
    jobs = status["jobs"]
    console.print(f"jobs: {len(jobs) if jobs else 'none'}")
