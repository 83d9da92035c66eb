"""A job's timeline as a PNG: loss over wall time, the pool and the state as bands, faults
and decisions as marks. matplotlib is an optional extra (`pip install 'trainguard[plot]'`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

_STATE_COLOURS = {"running": "#d9f2d9", "starting": "#fff2cc", "restarting": "#ffe0b3", "failing_over": "#f2d9f2",
                  "stopping": "#eeeeee", "pending": "#ffd6d6"}
_POOL_COLOURS = {"ascend": "#c0392b", "nvidia": "#27ae60"}


class PlotUnavailable(Exception):
    pass


def plot_timeline(job: dict[str, Any], events: list[dict[str, Any]], metrics: Path | None, out: Path) -> Path:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise PlotUnavailable("drawing needs matplotlib: pip install 'trainguard[plot]'") from exc
    events = sorted(events, key=lambda e: e.get("ts", 0.0))
    t0 = job.get("submitted_at") or (events[0]["ts"] if events else 0.0)
    end = job.get("ended_at") or (events[-1]["ts"] if events else t0 + 1)
    fig, (ax, bands) = plt.subplots(2, 1, figsize=(11, 5.5), sharex=True, gridspec_kw={"height_ratios": [4, 1]})
    if metrics is not None and metrics.exists():
        points = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
        ax.plot([p["time"] - t0 for p in points], [p["loss"] for p in points], ".", markersize=2, color="#2c3e50")
    ax.set_ylabel("loss")
    ax.set_title(f"job {job['id']}: {job['state']} on {job['pool']} · restarts {job['restarts']} · "
                 f"failovers {len(job['failovers'])} · ETTR {job.get('ettr')}")
    # State and pool bands.
    changes = [e for e in events if e.get("event") == "job.state_changed"]
    for i, change in enumerate(changes):
        start = change["ts"] - t0
        stop = (changes[i + 1]["ts"] if i + 1 < len(changes) else end) - t0
        colour = _STATE_COLOURS.get(change.get("state", ""), "#ffffff")
        ax.axvspan(start, stop, color=colour, alpha=0.6, lw=0)
        bands.broken_barh([(start, stop - start)], (0, 1), color=_POOL_COLOURS.get(change.get("pool", ""), "#999999"))
    for event in events:
        x = float(event.get("observed_at") or event["ts"]) - t0  # when the fault was seen, not decided
        if event.get("event") == "job.incident":
            ax.axvline(x, color="#c0392b", lw=1, ls="--")
            ax.annotate(str(event.get("signal")), (x, 1), xycoords=("data", "axes fraction"), rotation=90,
                        va="top", ha="right", fontsize=7, color="#c0392b")
        elif event.get("event") == "policy.decision" and event.get("action") not in (None, "none"):
            ax.axvline(x, color="#8e44ad", lw=0.8, ls=":")
    bands.set_yticks([0.5], ["pool"])
    bands.set_xlabel("seconds since submit")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in _POOL_COLOURS.values()]
    bands.legend(handles, list(_POOL_COLOURS), loc="upper right", fontsize=7, ncol=2)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
