"""Strict checking of operator-written YAML, with line numbers: the shared base of the
policy loader and the log-pattern catalog loader.

A file is composed into YAML nodes (which know their lines) and checked node by node,
collecting every problem instead of stopping at the first, each as `path:line: what is
wrong and what is allowed`. Unknown keys are errors with a did-you-mean, duplicate keys
are errors (YAML would silently keep the last one). Imports nothing of ours but
durations, so both the daemon and the agents can use it.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence, TypeVar

import yaml

from supervisor.shared.durations import parse_duration

T = TypeVar("T")


@dataclass(frozen=True)
class Problem:
    path: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


class YamlProblems(Exception):
    """A file that cannot be used; `problems` lists every reason, by line."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


def compose(data: bytes, path: str, what: str) -> yaml.Node:
    """The YAML node tree of `data`; raises YamlProblems for text that is not UTF-8,
    not YAML, or empty (`what` says what the file should have held)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise YamlProblems([Problem(path, 0, f"not UTF-8 text ({exc.reason} at byte {exc.start})")]) from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise YamlProblems([Problem(path, mark.line + 1 if mark else 0, f"not valid YAML: {exc.problem or exc}")]) from None
    except yaml.YAMLError as exc:
        raise YamlProblems([Problem(path, 0, f"not valid YAML: {exc}")]) from None
    if root is None:
        raise YamlProblems([Problem(path, 1, f"the file is empty; {what}")])
    return root


class Unusable:
    """What `scalar()` returns where no single plain value is: a mapping, a list, or a
    value whose explicit tag does not construct."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def __repr__(self) -> str:
        return self.kind


def kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    return repr(node.value)


def show(value: Any) -> str:
    return value.kind if isinstance(value, Unusable) else repr(value)


class Checker:
    """Collects problems while reading nodes; subclasses add the file's own shape."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.problems: list[Problem] = []
        # One per load: a constructor remembers every node it has built.
        self._constructor = yaml.constructor.SafeConstructor()

    def error(self, node: yaml.Node, message: str) -> None:
        self.problems.append(Problem(self.path, node.start_mark.line + 1, message))

    def sorted_problems(self) -> list[Problem]:
        return sorted(self.problems, key=lambda p: p.line)

    def mapping(
        self, node: yaml.Node, where: str, allowed: Sequence[str], required: Sequence[str] = ()
    ) -> dict[str, yaml.Node] | None:
        """The mapping's values by key, after reporting duplicate, unknown and missing keys."""
        if not isinstance(node, yaml.MappingNode):
            self.error(node, f"{where} must be a mapping of keys ({', '.join(allowed)}), got {kind(node)}")
            return None
        out: dict[str, yaml.Node] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if key is None:
                self.error(key_node, f"{where}: keys must be plain words")
                continue
            if key in out:
                self.error(key_node, f"{where}: duplicate key {key!r} (YAML would silently keep only the last)")
                continue
            if key not in allowed:
                close = difflib.get_close_matches(key, list(allowed), n=1, cutoff=0.6)
                hint = f"did you mean {close[0]!r}? " if close else ""
                self.error(key_node, f"{where}: unknown key {key!r}; {hint}allowed: {', '.join(allowed)}")
                continue
            out[key] = value_node
        for key in required:
            if key not in out:
                self.error(node, f"{where}: missing required key {key!r}")
        return out

    def scalar(self, node: yaml.Node) -> Any:
        if isinstance(node, yaml.ScalarNode):
            try:
                return self._constructor.construct_object(node)
            except (yaml.YAMLError, ValueError, TypeError):
                # An explicit tag that does not construct (`!three 3`, `!!int abc`).
                return Unusable(f"{node.value!r} tagged {node.tag}")
        return Unusable(kind(node))

    def int_(self, node: yaml.Node, where: str, minimum: int) -> int | None:
        value = self.scalar(node)
        if isinstance(value, bool) or not isinstance(value, int):
            self.error(node, f"{where} must be a whole number ≥ {minimum}, got {show(value)}")
            return None
        if value < minimum:
            self.error(node, f"{where} must be ≥ {minimum}, got {value}")
            return None
        return value

    def bool_(self, node: yaml.Node, where: str) -> bool | None:
        value = self.scalar(node)
        if not isinstance(value, bool):
            self.error(node, f"{where} must be true or false, got {show(value)}")
            return None
        return value

    def str_(self, node: yaml.Node, where: str) -> str | None:
        value = self.scalar(node)
        if not isinstance(value, str) or not value:
            self.error(node, f"{where} must be a non-empty string, got {show(value)}")
            return None
        return value

    def duration(self, node: yaml.Node, where: str, positive: bool = True) -> float | None:
        value = self.scalar(node)
        if isinstance(value, Unusable) or value is None:
            self.error(node, f"{where} must be a duration such as 30s, 5m or 1h, got {show(value)}")
            return None
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            self.error(node, f"{where}: {exc}")
            return None
        if positive and seconds == 0:
            self.error(node, f"{where} must be longer than zero, got {show(value)}")
            return None
        return seconds

    def choice(self, node: yaml.Node, where: str, options: Mapping[str, T] | Sequence[str]) -> Any:
        """One of `options` (a mapping: word → value returned; a sequence: the word)."""
        table = options if isinstance(options, Mapping) else {o: o for o in options}
        value = self.scalar(node)
        if isinstance(value, str) and value in table:
            return table[value]
        close = difflib.get_close_matches(value, list(table), n=1, cutoff=0.6) if isinstance(value, str) else []
        hint = f"did you mean {close[0]!r}? " if close else ""
        self.error(node, f"{where}: {show(value)} is not allowed; {hint}allowed: {', '.join(table)}")
        return None

    def one_or_list(self, node: yaml.Node, where: str, item: Callable[[yaml.Node, str], T | None]) -> list[T] | None:
        nodes = node.value if isinstance(node, yaml.SequenceNode) else [node]
        if not nodes:
            self.error(node, f"{where} must not be an empty list")
            return None
        items = [item(n, where) for n in nodes]
        return None if any(i is None for i in items) else items  # type: ignore[misc]
