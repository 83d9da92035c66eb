"""The configuration file: one TOML file (default /etc/trainguard/trainguard.toml).

Precedence, lowest first: built-in defaults < the file < TRAINGUARD_* environment
variables < command-line flags. The file is checked strictly before anything starts:
unknown sections and keys, wrong types and bad durations are refused with
`file:line: what is wrong and what is allowed` (systemd shows that line when a service
fails to start). The values reach click as its `default_map`, which click itself ranks
below environment variables and flags — the precedence above, with no code of ours.

    [log]     format = "json" | "console"; level = "info"
    [daemon]  bind, ctl, state_dir, policy_dir, heartbeat_timeout, heartbeat_interval
    [agent]   daemon, node_id, accelerator, chips, work_dir, probe_interval, hang_timeout
    [cli]     ctl (for status, inject, launch, stop, policy show)
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from supervisor.shared.durations import parse_duration
from supervisor.shared.protocol import DEFAULT_AGENT_ENDPOINT, DEFAULT_CTL_ENDPOINT, NODE_ID_PATTERN
from supervisor.shared.safefile import CONFIG_LIMIT, FileRefused, read_bounded_text

DEFAULT_PATH = Path("/etc/trainguard/trainguard.toml")
ACCELERATORS = ("ascend", "nvidia", "cpu", "sim-ascend", "sim-nvidia")


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
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 4095:
        raise ValueError(f"expected a whole number from 0 to 4095, got {value!r}")
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


SETTINGS: dict[str, dict[str, Setting]] = {
    "log": {
        "format": Setting(_choice("json", "console"), "json", "TRAINGUARD_LOG_FORMAT", "log renderer"),
        "level": Setting(_choice("debug", "info", "warning", "error"), "info", "TRAINGUARD_LOG_LEVEL", "log level"),
    },
    "daemon": {
        "bind": Setting(_text, DEFAULT_AGENT_ENDPOINT, "TRAINGUARD_BIND", "endpoint agents connect to"),
        "ctl": Setting(_text, DEFAULT_CTL_ENDPOINT, "TRAINGUARD_CTL", "control endpoint"),
        "state_dir": Setting(_text, "/var/lib/trainguard", "TRAINGUARD_STATE_DIR", "SQLite state"),
        "policy_dir": Setting(_text, None, "TRAINGUARD_POLICY_DIR", "policy YAML directory"),
        "heartbeat_timeout": Setting(_duration, "15s", "TRAINGUARD_HEARTBEAT_TIMEOUT", "silence before a node is lost"),
        "heartbeat_interval": Setting(_duration, "2s", "TRAINGUARD_HEARTBEAT_INTERVAL", "agents' heartbeat period"),
        "metrics_bind": Setting(_text, "off", "TRAINGUARD_METRICS_BIND", "Prometheus HOST:PORT, or off"),
        "keys_dir": Setting(_text, "/etc/trainguard/keys", "TRAINGUARD_KEYS_DIR", "CurveZMQ keys and allow-lists"),
    },
    "agent": {
        "daemon": Setting(_text, DEFAULT_AGENT_ENDPOINT, "TRAINGUARD_DAEMON", "the daemon's agent endpoint"),
        "node_id": Setting(_node_id, None, "TRAINGUARD_NODE_ID", "this node's name (default: short hostname)"),
        "accelerator": Setting(_choice(*ACCELERATORS), None, "TRAINGUARD_ACCELERATOR", "what the node trains on"),
        "chips": Setting(_count, 8, "TRAINGUARD_CHIPS", "number of chips"),
        "work_dir": Setting(_text, "/var/lib/trainguard/agent", "TRAINGUARD_WORK_DIR", "logs, checkpoints, sim chips"),
        "probe_interval": Setting(_duration, "5s", "TRAINGUARD_PROBE_INTERVAL", "chip and host probe period"),
        "hang_timeout": Setting(_duration, "300s", "TRAINGUARD_HANG_TIMEOUT", "no step progress before a hang"),
        "keys_dir": Setting(_text, "/etc/trainguard/keys", "TRAINGUARD_KEYS_DIR", "agent key pair and daemon.key"),
    },
    "cli": {
        "ctl": Setting(_text, DEFAULT_CTL_ENDPOINT, "TRAINGUARD_CTL", "control endpoint the CLI asks"),
    },
}

#: Which click commands read which section: click's default_map is keyed by command.
_CLI_COMMANDS = ("status", "inject", "launch", "stop")


class ConfigError(Exception):
    """A configuration file that cannot be used; the message has one `file:line:` per problem."""


@dataclass(frozen=True)
class Config:
    path: Path | None
    values: dict[tuple[str, str], Any]  # (section, key) -> value, only what the file sets
    lines: dict[tuple[str, str], int]

    def default_map(self) -> dict[str, Any]:
        """The file's values as click's default_map (below env vars and flags)."""
        out: dict[str, Any] = {}
        for (section, key), value in self.values.items():
            if section == "daemon":
                out.setdefault("daemon", {})[key] = value
            elif section == "agent":
                out.setdefault("agent", {})[key] = value
            elif section == "cli":
                for command in _CLI_COMMANDS:
                    out.setdefault(command, {})[key] = value
                out.setdefault("policy", {}).setdefault("show", {})[key] = value
            elif section == "log":
                out[f"log_{key}"] = value
        return out

    def effective(self, env: dict[str, str] | None = None) -> list[dict[str, Any]]:
        """Every setting with its value and where it came from (env, file:line, default)."""
        env = dict(os.environ) if env is None else env
        rows = []
        for section, settings in SETTINGS.items():
            for key, setting in settings.items():
                if setting.env and env.get(setting.env):
                    value, source = env[setting.env], f"environment {setting.env}"
                elif (section, key) in self.values:
                    value, source = self.values[(section, key)], f"{self.path}:{self.lines[(section, key)]}"
                else:
                    value, source = setting.default, "default"
                rows.append({"setting": f"{section}.{key}", "value": value, "source": source, "env": setting.env})
        return rows


def load(path: Path | None, explicit: bool) -> Config:
    """Read and check the file. A missing default file is no configuration; a missing
    file that was asked for is an error."""
    if path is None or (not explicit and not path.exists()):
        return Config(None, {}, {})
    try:
        text = read_bounded_text(path, CONFIG_LIMIT, "a configuration file")
    except FileRefused as exc:
        raise ConfigError(f"{path}:0: {exc.reason}") from None
    except OSError as exc:
        raise ConfigError(f"{path}:0: cannot read the configuration: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"\(at line (\d+)", str(exc))
        raise ConfigError(f"{path}:{m.group(1) if m else 0}: not valid TOML: {exc}") from None
    problems: list[tuple[int, str]] = []
    values: dict[tuple[str, str], Any] = {}
    lines: dict[tuple[str, str], int] = {}
    for section, table in data.items():
        if section not in SETTINGS:
            problems.append((_line_of(text, section, None), _unknown("section", section, list(SETTINGS))))
            continue
        if not isinstance(table, dict):
            problems.append((_line_of(text, None, section), f"{section} must be a [{section}] table"))
            continue
        for key, value in table.items():
            line = _line_of(text, section, key)
            setting = SETTINGS[section].get(key)
            if setting is None:
                problems.append((line, _unknown(f"key in [{section}]", key, list(SETTINGS[section]))))
                continue
            try:
                values[(section, key)] = setting.check(value)
                lines[(section, key)] = line
            except ValueError as exc:
                problems.append((line, f"{section}.{key}: {exc}"))
    if problems:
        raise ConfigError("\n".join(f"{path}:{line}: {message}" for line, message in sorted(problems)))
    return Config(path, values, lines)


def _unknown(what: str, name: str, allowed: list[str]) -> str:
    close = difflib.get_close_matches(name, allowed, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"unknown {what} {name!r}; {hint}allowed: {', '.join(allowed)}"


def _line_of(text: str, section: str | None, key: str | None) -> int:
    """The line a section header or a key (inside its section) is on; tomllib does not
    say, so find it. 0 when it cannot be found (an inline table, say)."""
    current = None
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        header = re.match(r"^\[\s*([^\]]+?)\s*\]", line)
        if header:
            current = header.group(1).strip().strip('"')
            if key is None and current == section:
                return number
            continue
        if key is not None and current == section and re.match(rf'^"?{re.escape(key)}"?\s*=', line):
            return number
        if section is None and key is not None and re.match(rf'^"?{re.escape(key)}"?\s*=', line):
            return number
    return 0
