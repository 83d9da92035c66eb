"""Durations as operators write them: `500ms`, `15s`, `5m`, `1h`, `1h30m`, or plain seconds."""

from __future__ import annotations

import math
import re

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")


def parse_duration(text: str | int | float) -> float:
    """Seconds in `text`; raises ValueError naming what is allowed. Negative is an error."""
    if isinstance(text, bool):
        raise ValueError(f"expected a duration such as 30s, 5m or 1h, got {text!r}")
    if isinstance(text, (int, float)):
        seconds = float(text)
    else:
        value = text.strip()
        try:
            seconds = float(value)
        except ValueError:
            if value.startswith("-"):
                raise ValueError(f"a duration must be zero or positive, got {text!r}") from None
            parts = _PART.findall(value)
            if not parts or "".join(n + u for n, u in parts) != value:
                raise ValueError(
                    f"expected a duration such as 500ms, 30s, 5m, 1h or 1h30m, got {text!r}"
                ) from None
            seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if not math.isfinite(seconds):
        raise ValueError(f"a duration must be finite, got {text!r}")
    if seconds < 0:
        raise ValueError(f"a duration must be zero or positive, got {text!r}")
    return seconds


def format_duration(seconds: float) -> str:
    """Short human form for tables and log messages: 0.4s, 12s, 3m05s, 2h10m."""
    if seconds < 10:
        return f"{seconds:.1f}s"
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"


def format_window(seconds: float) -> str:
    """The form an operator would have written in a policy: 30s, 5m, 1h, 1.5h."""
    if seconds >= 3600:
        return f"{seconds / 3600:.4g}h"
    if seconds >= 60:
        return f"{seconds / 60:.4g}m"
    return f"{seconds:.4g}s"
