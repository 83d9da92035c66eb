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
    [cli]     ctl (for every command that asks the daemon)
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from supervisor.shared.defaults import DEFAULT_CONFIG_PATH
from supervisor.shared.safefile import CONFIG_LIMIT, FileRefused, read_bounded_text
from supervisor.shared.settings import SETTINGS

DEFAULT_PATH = Path(DEFAULT_CONFIG_PATH)


#: The commands that take `--ctl` from the [cli] section; click's default_map is keyed by
#: command, nested for groups.
CTL_COMMANDS = (("status",), ("inject",), ("events",), ("node", "forget"), ("node", "drain"), ("node", "undrain"),
                ("job", "submit"), ("job", "list"), ("job", "show"), ("job", "stop"), ("job", "failover"),
                ("job", "report"), ("policy", "show"))


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
                for path in CTL_COMMANDS:
                    target = out
                    for part in path:
                        target = target.setdefault(part, {})
                    target[key] = value
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
