"""Every setting, said once: its default, environment variable, help and check.

The configuration file (`supervisor.cli.config`), `config show`, and the click options of
`trainguard daemon`, `trainguard agent` and the CLI commands are all built from
`SETTINGS`, so a default or a variable name cannot differ between them. Precedence,
lowest first: these defaults < the file < TRAINGUARD_* variables < flags.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import click

from supervisor.shared import defaults as d
from supervisor.shared.durations import format_window, parse_duration
from supervisor.shared.protocol import MAX_CHIPS, NODE_ID_PATTERN
from supervisor.shared.vocab import Accelerator

LOG_FORMATS = ("json", "console")
LOG_LEVELS = ("debug", "info", "warning", "error")


class Duration(click.ParamType):
    """A duration option: 15s, 500ms, 5m, 1h, or plain seconds."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, float):
            return value
        try:
            return parse_duration(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


DURATION = Duration()


def _duration(value: Any) -> str:
    parse_duration(value)  # raises ValueError naming what is allowed
    return str(value)


def _choice(*options: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if value not in options:
            raise ValueError(f"{value!r} is not allowed; allowed: {', '.join(options)}")
        return value

    return check


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected a non-empty string, got {value!r}")
    return value


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < MAX_CHIPS:
        raise ValueError(f"expected a whole number from 0 to {MAX_CHIPS - 1}, got {value!r}")
    return value


def _node_id(value: Any) -> str:
    if not isinstance(value, str) or not re.match(NODE_ID_PATTERN, value):
        raise ValueError(f"{value!r}: use letters, digits, '.', '_' and '-', at most 63")
    return value


@dataclass(frozen=True)
class Setting:
    check: Callable[[Any], Any]
    default: Any
    env: str | None
    help: str
    #: The click parameter type of its option (text when None).
    type: Any = None


_ACCELERATORS = tuple(a.value for a in Accelerator)
_DIR = click.Path(file_okay=False, path_type=Path)

SETTINGS: dict[str, dict[str, Setting]] = {
    "log": {
        "format": Setting(_choice(*LOG_FORMATS), "json", "TRAINGUARD_LOG_FORMAT",
                          "json: one JSON object per line (for journald and machines); console: for humans.",
                          click.Choice(LOG_FORMATS)),
        "level": Setting(_choice(*LOG_LEVELS), "info", "TRAINGUARD_LOG_LEVEL", "Log level.", click.Choice(LOG_LEVELS)),
    },
    "daemon": {
        "bind": Setting(_text, d.DEFAULT_AGENT_ENDPOINT, "TRAINGUARD_BIND",
                        "Endpoint agents connect to. Use tcp://0.0.0.0:7755 to accept other hosts."),
        "ctl": Setting(_text, d.DEFAULT_CTL_ENDPOINT, "TRAINGUARD_CTL",
                       "The daemon's control endpoint (tcp://HOST:PORT or ipc://PATH)."),
        "state_dir": Setting(_text, d.DEFAULT_STATE_DIR, "TRAINGUARD_STATE_DIR",
                             "Where the SQLite state (nodes, jobs, events) lives. One daemon per directory.", _DIR),
        "policy_dir": Setting(_text, None, "TRAINGUARD_POLICY_DIR",
                              "Directory of policy YAML files; watched, and reloaded on change (docs/policies.md).",
                              click.Path(file_okay=False, exists=True, path_type=Path)),
        "heartbeat_timeout": Setting(_duration, format_window(d.DEFAULT_HEARTBEAT_TIMEOUT), "TRAINGUARD_HEARTBEAT_TIMEOUT",
                                     "A node that sends no heartbeat for this long is marked lost.", DURATION),
        "heartbeat_interval": Setting(_duration, format_window(d.DEFAULT_HEARTBEAT_INTERVAL),
                                      "TRAINGUARD_HEARTBEAT_INTERVAL",
                                      "How often agents heartbeat; told to each agent when it registers.", DURATION),
        "metrics_bind": Setting(_text, "off", "TRAINGUARD_METRICS_BIND",
                                "HOST:PORT to serve Prometheus metrics on (e.g. 0.0.0.0:9755), or off."),
        "keys_dir": Setting(_text, d.DEFAULT_KEYS_DIR, "TRAINGUARD_KEYS_DIR",
                            "CurveZMQ keys: daemon.key_secret, agents/*.key and admins/*.key allow-lists "
                            "(README: Security).", _DIR),
    },
    "agent": {
        "daemon": Setting(_text, d.DEFAULT_AGENT_ENDPOINT, "TRAINGUARD_DAEMON",
                          "The daemon's agent endpoint (tcp://HOST:PORT or ipc://PATH)."),
        "node_id": Setting(_node_id, None, "TRAINGUARD_NODE_ID",
                           "This node's name in the cluster: letters, digits, '.', '_', '-'; at most 63 "
                           "[default: the short hostname]."),
        "accelerator": Setting(_choice(*_ACCELERATORS), None, "TRAINGUARD_ACCELERATOR",
                               "What this node trains on; sim-* train on the CPU and report simulated chips.",
                               click.Choice(_ACCELERATORS)),
        "address": Setting(_text, None, "TRAINGUARD_ADDRESS",
                           "Where other nodes reach this node's ranks (MASTER_ADDR when it hosts rank 0) "
                           "[default: the hostname]."),
        "chips": Setting(_count, 8, "TRAINGUARD_CHIPS", "Number of chips (simulated ones for sim-*).",
                         click.IntRange(min=0, max=MAX_CHIPS - 1)),
        "work_dir": Setting(_text, d.DEFAULT_AGENT_WORK_DIR, "TRAINGUARD_WORK_DIR",
                            "Where the agent keeps rank logs, checkpoints and simulated chips.", _DIR),
        "probe_interval": Setting(_duration, format_window(d.DEFAULT_PROBE_INTERVAL), "TRAINGUARD_PROBE_INTERVAL",
                                  "How often chip and host health are read.", DURATION),
        "hang_timeout": Setting(_duration, format_window(d.DEFAULT_HANG_TIMEOUT), "TRAINGUARD_HANG_TIMEOUT",
                                "A rank whose step does not advance for this long (training phase) is hung.", DURATION),
        "keys_dir": Setting(_text, d.DEFAULT_KEYS_DIR, "TRAINGUARD_KEYS_DIR",
                            "agent.key_secret (this node's pair) and daemon.key (the daemon's public key).", _DIR),
    },
    "cli": {
        "ctl": Setting(_text, d.DEFAULT_CTL_ENDPOINT, "TRAINGUARD_CTL",
                       "The daemon's control endpoint (tcp://HOST:PORT or ipc://PATH)."),
    },
}


def option(section: str, key: str, **overrides: Any) -> Callable[[Any], Any]:
    """The click option for one setting: `--key-name`, its variable, default and help."""
    setting = SETTINGS[section][key]
    kwargs: dict[str, Any] = {
        "envvar": setting.env,
        "show_envvar": setting.env is not None,
        "default": setting.default,
        "show_default": setting.default is not None,
        "help": setting.help,
    }
    if setting.type is not None:
        kwargs["type"] = setting.type
    kwargs.update(overrides)
    return click.option(f"--{key.replace('_', '-')}", **kwargs)
