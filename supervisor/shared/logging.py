"""structlog setup shared by every trainguard process.

One event per line on stdout, unbuffered, so journald (or a test) sees it at once. JSON by
default — the machine interface; `--log-format console` renders the same events for a
human. The event name is the `event` key and is a stable dotted name (`node.lost`);
context such as `node` or `component` is bound once with `structlog.contextvars`.
"""

from __future__ import annotations

import logging as std_logging
import sys
from typing import Any

import msgspec
import structlog

_json = msgspec.json.Encoder()


def _dumps(event_dict: dict[str, Any], **_: Any) -> str:
    # msgspec writes enums, bytes and the like without a custom default; fall back to
    # repr for anything exotic so that logging never raises.
    try:
        return _json.encode(event_dict).decode()
    except (TypeError, msgspec.EncodeError):
        return _json.encode({k: v if isinstance(v, (str, int, float, bool, type(None), list, dict)) else repr(v) for k, v in event_dict.items()}).decode()


_LEADING = ("timestamp", "level", "event", "node", "chip", "job", "rank")


def _leading_keys_first(_: Any, __: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """Put when / how bad / what / where first, so a raw line reads left to right."""
    ordered = {k: event_dict.pop(k) for k in _LEADING if k in event_dict}
    ordered.update(event_dict)
    return ordered


def configure(fmt: str = "json", level: str = "info") -> None:
    if fmt not in ("json", "console"):
        raise ValueError(f"log format must be json or console, not {fmt!r}")
    renderer: Any
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer(serializer=_dumps)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stdout.isatty())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            *([_leading_keys_first] if fmt == "json" else []),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            std_logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.WriteLoggerFactory(file=sys.stdout),
        cache_logger_on_first_use=False,
    )
