"""Strict checking of operator-written YAML, with line numbers: the shared base of the
policy loader and the log-pattern catalog loader.

A file is composed into YAML nodes (which know their lines) and checked node by node,
collecting every problem instead of stopping at the first, each as `path:line: what is
wrong and what is allowed`. Unknown keys are errors with a did-you-mean, duplicate keys
are errors (YAML would silently keep the last one). A file that is not text is refused
without being quoted, and what a document may cost to walk is bounded (aliases expanded).
Imports nothing of ours but durations and safefile, so both the daemon and the agents
can use it.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence, TypeVar

import yaml

from supervisor.shared.durations import parse_duration
from supervisor.shared.safefile import text_problem

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


#: Bounds on what a document may make its checker walk: nodes counted as if every alias
#: were expanded ("billion laughs" is a few lines of anchors and aliases), and nesting.
MAX_NODES = 20_000
MAX_DEPTH = 64
#: At most this many problems are listed; the rest are counted.
MAX_PROBLEMS = 50


def compose(data: bytes, path: str, what: str) -> yaml.Node:
    """The YAML node tree of `data`; raises YamlProblems for text that is not UTF-8
    (or holds control characters or key material), not YAML, empty, a single plain value,
    or larger or deeper than MAX_NODES / MAX_DEPTH once aliases are expanded (`what` says
    what the file should have held). A file that is not text is never quoted."""
    problem = text_problem(data)
    if problem is not None:
        raise YamlProblems([Problem(path, 0, problem)])
    text = data.decode("utf-8")
    try:
        root = yaml.compose(text, Loader=_BoundedLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise YamlProblems([Problem(path, mark.line + 1 if mark else 0, f"not valid YAML: {exc.problem or exc}")]) from None
    except yaml.YAMLError as exc:
        raise YamlProblems([Problem(path, 0, f"not valid YAML: {exc}")]) from None
    except _TooManyNodes as exc:
        raise _too_many(path, exc.line) from None
    except RecursionError:
        raise YamlProblems([Problem(path, 0, f"nested more than {MAX_DEPTH} levels deep; {what}")]) from None
    if root is None:
        raise YamlProblems([Problem(path, 1, f"the file is empty; {what}")])
    if isinstance(root, yaml.ScalarNode):
        # Not quoted: a file that is one plain value is not what was asked for (a key
        # file, a README, a symlink to the wrong place), and its text is nobody's business.
        raise YamlProblems([Problem(path, 1, f"the file holds a single value, not a mapping of keys; {what}")])
    _check_size(root, path)
    return root


class _TooManyNodes(Exception):
    def __init__(self, line: int) -> None:
        self.line = line


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader's composer, stopped once MAX_NODES nodes (aliases included) are
    composed: a document of a million tiny values is refused in a fraction of the time
    composing it would take."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.composed = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        self.composed += 1
        if self.composed > MAX_NODES:
            raise _TooManyNodes(self.peek_event().start_mark.line + 1)
        return super().compose_node(parent, index)


def _too_many(path: str, line: int) -> YamlProblems:
    return YamlProblems([Problem(path, line, (
        f"more than {MAX_NODES} values (aliases counted as the values they repeat); refused: "
        "no policy or catalog is that large, and anchors that multiply are a way to exhaust memory"))])


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _check_size(root: yaml.Node, path: str) -> None:
    """Refuse a node graph that is recursive, or too large or too deep once aliases are
    expanded. Iterative, and each distinct node is visited once: cheap on any input."""
    size: dict[int, int] = {}
    height: dict[int, int] = {}
    ancestors: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            ancestors.discard(key)
            children = _children(node)
            size[key] = 1 + sum(size[id(c)] for c in children)
            height[key] = 1 + max((height[id(c)] for c in children), default=0)
            if size[key] > MAX_NODES:
                raise _too_many(path, node.start_mark.line + 1)
            if height[key] > MAX_DEPTH:
                raise YamlProblems([Problem(path, node.start_mark.line + 1, f"nested more than {MAX_DEPTH} levels deep")])
            continue
        if key in size:
            continue
        if key in ancestors:
            raise YamlProblems([Problem(path, node.start_mark.line + 1, "an alias refers to a value that contains it (a loop)")])
        ancestors.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in _children(node) if id(c) not in size)


class Unusable:
    """What `scalar()` returns where no single plain value is: a mapping, a list, or a
    value whose explicit tag does not construct."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def __repr__(self) -> str:
        return self.kind


#: A quoted value is cut to this many characters: a problem is a line, not a copy of the file.
QUOTE_LIMIT = 80


def quote(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= QUOTE_LIMIT else f"{text[:QUOTE_LIMIT]}... ({len(text)} characters)"


def kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    return quote(node.value)


def show(value: Any) -> str:
    return value.kind if isinstance(value, Unusable) else quote(value)


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
        """The problems by line; past MAX_PROBLEMS, one more line counts the rest."""
        ordered = sorted(self.problems, key=lambda p: p.line)
        if len(ordered) <= MAX_PROBLEMS:
            return ordered
        rest = len(ordered) - MAX_PROBLEMS
        return [*ordered[:MAX_PROBLEMS], Problem(self.path, ordered[MAX_PROBLEMS].line, f"... and {rest} more problems")]

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
                return Unusable(f"{quote(node.value)} tagged {node.tag[:QUOTE_LIMIT]}")
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
