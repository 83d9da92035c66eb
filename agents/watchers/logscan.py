"""The log scanner: a training rank's output lines in, `Finding`s (signals with evidence) out.

The catalog (agents/watchers/faults.yaml) is an ordered list of named regexes; the first
whose regex matches a line decides that line's signal. A Python traceback is one finding,
not one per line: it is collected to its end (chained tracebacks included) and takes the
signal of the earliest catalog pattern that matches any of its lines. A traceback that no
pattern matches is a `crash` named `python-traceback-unrecognised`: trainguard restarts it
within the policy's budget, and only a recognised programming error (a `user_error`
pattern) or a failure that repeats identically after a restart (`failure_fingerprint`)
stops a job. Output of several ranks interleaved by torchrun (`[rank0]: ...`, `[rank1]: ...`)
is kept apart by that prefix, so each rank's traceback stays whole.

Pure: no clock, no files except `load_catalog`; the agent owns the pipes and feeds lines.
Memory is bounded: a traceback keeps only its header, best-matching line and last line
(each clipped), is cut off after `MAX_TRACEBACK_LINES`, and at most `MAX_OPEN_TRACEBACKS`
are open at once.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Iterable, Sequence

import yaml

from supervisor.shared.fingerprint import failure_fingerprint
from supervisor.shared.safefile import CATALOG_LIMIT, FileRefused, read_bounded
from supervisor.shared.vocab import Severity, Signal, default_severity
from supervisor.shared.yamlcheck import Checker, Problem, YamlProblems, compose
from supervisor.shared.yamlcheck import kind as _kind
from supervisor.shared.yamlcheck import show as _show

CATALOG_VERSION = 1
#: The pattern name of a traceback that no catalog pattern matched: a `crash`, whose
#: evidence says it was not recognised (never a `user_error` by default).
TRACEBACK_PATTERN = "python-traceback-unrecognised"
#: The pattern name of an exception line that no pattern matched, outside any traceback
#: (a traceback printed without its standard header, e.g. by `rich`, ends in one).
EXCEPTION_PATTERN = "python-exception-unrecognised"
#: The signal of an unrecognised traceback or exception line.
TRACEBACK_SIGNAL = Signal.CRASH
UNRECOGNISED_PATTERNS = (TRACEBACK_PATTERN, EXCEPTION_PATTERN)
#: The signals a log line can carry (the rest come from the launcher, probes and daemon).
#: `crash` is for recognised faults that name no chip, link or memory cause (a full disk,
#: a failing CANN operator): restarted within budget, never blamed on the user.
LOG_SIGNALS = (Signal.INTERCONNECT_TIMEOUT, Signal.CHIP_ERROR, Signal.OOM, Signal.NETWORK, Signal.CRASH,
               Signal.USER_ERROR)
VENDORS = ("ascend", "nvidia", "any")
#: Every key of a pattern; an entry has `examples` (one or more real lines) or, the older
#: spelling, one `example`, not both.
PATTERN_KEYS = ("name", "signal", "regex", "severity", "vendor", "source", "examples")
_REQUIRED_KEYS = PATTERN_KEYS[:-1]
_ALLOWED_KEYS = (*PATTERN_KEYS, "example")
_EXAMPLE_KEYS = ("line", "source")
ENV_PATTERNS = "TRAINGUARD_PATTERNS"

MAX_EVIDENCE_BYTES = 2048
MAX_TRACEBACK_LINES = 500
MAX_OPEN_TRACEBACKS = 256
#: Regexes only see this much of a line: fault messages are short, and a regex with `.*`
#: on a megabyte-long line (a printed tensor) would cost quadratic time.
MAX_MATCH_CHARS = 16384

_NAME = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*\Z")
# Prefixes that launchers put before every line of a rank's output: torchrun's
# `[rank1]: ` / `[default0]:` and Ray's `(RayTrainWorker pid=8464, ip=10.0.0.1) `. One space
# after the colon belongs to the prefix, so a frame line keeps its indentation.
_PREFIX = re.compile(r"\[[A-Za-z_]*\d+\]: ?|\((?:[\w.-]+ )?pid=\d+(?:, ip=[\w.:]+)?\) ")
_MAX_PREFIXES = 4
_HEADER = "Traceback (most recent call last):"
# `KeyError: 'a'`, `torch.distributed.DistBackendError: ...`, a bare `AssertionError`: the
# last line of a Python traceback, which is all that some formatters leave at the margin.
_EXCEPTION_LINE = re.compile(r"(?:[A-Za-z_]\w*\.)*[A-Z]\w*(?:Error|Exception)(?::\s.*)?\Z")
_CHAIN_LINES = frozenset({
    "During handling of the above exception, another exception occurred:",
    "The above exception was the direct cause of the following exception:",
})


# --- the catalog -------------------------------------------------------------------


@dataclass(frozen=True)
class Pattern:
    """One catalog entry; `line` is where it starts in the catalog file. `examples` are
    real log lines the regex must match, each copied from its entry in `example_sources`
    (the pattern's `source` unless the example names its own)."""

    name: str
    signal: Signal
    regex: re.Pattern[str]
    severity: Severity
    vendor: str
    source: str
    examples: tuple[str, ...]
    line: int = 0
    example_sources: tuple[str, ...] = ()

    @property
    def example(self) -> str:
        """The first example line."""
        return self.examples[0]


@dataclass(frozen=True)
class Catalog:
    """The ordered fault patterns: the first whose regex matches a line decides it."""

    patterns: tuple[Pattern, ...]
    source: str = "<memory>"
    sha256: str = ""

    def match(self, line: str) -> Pattern | None:
        """The pattern that decides `line` (a raw log line; a rank prefix is ignored)."""
        index = self._first(split_prefix(line)[1])
        return None if index is None else self.patterns[index]

    def _first(self, text: str, below: int | None = None) -> int | None:
        text = text[:MAX_MATCH_CHARS]
        for index, pattern in enumerate(self.patterns[:below]):
            if pattern.regex.search(text):
                return index
        return None


class CatalogError(YamlProblems):
    """A pattern catalog that cannot be used; `problems` lists every reason."""


def shipped_catalog_path() -> Path:
    """The catalog installed with trainguard (package data: agents/watchers/faults.yaml)."""
    return Path(str(files("agents.watchers") / "faults.yaml"))


def default_catalog_path() -> Path:
    """$TRAINGUARD_PATTERNS when set (an operator's extended catalog), else the shipped one."""
    configured = os.environ.get(ENV_PATTERNS)
    if configured:
        return Path(configured)
    shipped = shipped_catalog_path()
    if shipped.is_file():
        return shipped
    raise FileNotFoundError(f"no pattern catalog: {shipped} does not exist (reinstall trainguard) "
                            f"and ${ENV_PATTERNS} is not set")


def load_catalog(path: str | Path | None = None) -> Catalog:
    """Load and check a catalog file (the shipped one by default)."""
    path = Path(path) if path is not None else default_catalog_path()
    try:
        data = read_bounded(path, CATALOG_LIMIT, "a fault catalog")
    except FileRefused as exc:
        raise CatalogError([Problem(str(path), 0, exc.reason)]) from None
    except OSError as exc:
        raise CatalogError([Problem(str(path), 0, f"cannot read: {exc.strerror or exc}")]) from None
    return load_catalog_bytes(data, str(path))


def load_catalog_bytes(data: bytes, path: str) -> Catalog:
    """Check catalog YAML; every problem is reported at once, as `path:line: message`."""
    try:
        root = compose(data, path, "a catalog needs version and patterns")
    except YamlProblems as exc:
        raise CatalogError(exc.problems) from None
    checker = _Checker(path)
    patterns = checker.catalog(root)
    if checker.problems or patterns is None:
        raise CatalogError(checker.sorted_problems())
    return Catalog(patterns=patterns, source=path, sha256=hashlib.sha256(data).hexdigest())


class _Checker(Checker):
    def mapping(self, node: yaml.Node, where: str, allowed: Sequence[str], required: Sequence[str] | None = None) -> dict[str, yaml.Node] | None:  # type: ignore[override]
        """Every key of a catalog mapping is required."""
        return super().mapping(node, where, allowed, allowed if required is None else required)

    def catalog(self, root: yaml.Node) -> tuple[Pattern, ...] | None:
        top = self.mapping(root, "catalog", ("version", "patterns"))
        if top is None:
            return None
        if "version" in top:
            version = self.scalar(top["version"])
            if isinstance(version, bool) or version != CATALOG_VERSION:
                self.error(top["version"], f"version must be {CATALOG_VERSION} (the catalog format this trainguard reads), got {_show(version)}")
        if "patterns" not in top:
            return None
        node = top["patterns"]
        if not isinstance(node, yaml.SequenceNode) or not node.value:
            got = "an empty list" if isinstance(node, yaml.SequenceNode) else _kind(node)
            self.error(node, f"patterns must be a non-empty list of patterns ({', '.join(PATTERN_KEYS)}), got {got}")
            return None
        patterns: list[Pattern] = []
        first_seen: dict[str, int] = {}
        for index, entry in enumerate(node.value):
            pattern = self.pattern(entry, index, first_seen)
            if pattern is not None:
                patterns.append(pattern)
        if len(patterns) != len(node.value):
            return None
        # An example decided by an earlier pattern means its own entry can never fire:
        # the catalog's order is wrong or the earlier regex is too broad.
        catalog = Catalog(tuple(patterns))
        for pattern, entry in zip(patterns, node.value):
            for number, example in enumerate(pattern.examples):
                winner = catalog.match(example)
                if winner is not pattern and winner is not None:
                    which = "its example" if len(pattern.examples) == 1 else f"its example #{number + 1}"
                    self.error(
                        _example_node(entry, number),
                        f"pattern {pattern.name!r}: {which} is matched first by the earlier pattern "
                        f"{winner.name!r} (line {winner.line}, signal {winner.signal.value}); move this entry "
                        f"above it or narrow that regex",
                    )
        return tuple(patterns)

    def pattern(self, node: yaml.Node, index: int, first_seen: dict[str, int]) -> Pattern | None:
        # Name the entry in every message about it, even one about its keys.
        named = _scalar_value(node, "name")
        where = f"pattern {named!r}" if named else f"pattern #{index + 1}"
        values = self.mapping(node, where, _ALLOWED_KEYS, _REQUIRED_KEYS)
        if values is None:
            return None
        both = "example" in values and "examples" in values
        if both:
            self.error(values["example"], f"{where}: give `examples` (a list) or one `example`, not both")
        if "example" not in values and "examples" not in values:
            self.error(node, f"{where}: missing required key 'examples' (at least one real log line the regex "
                             f"matches, copied from `source`)")
        name = self.str_(values["name"], f"{where} name") if "name" in values else None
        ok = name is not None
        if name is not None:
            name_line = values["name"].start_mark.line + 1
            if not _NAME.match(name):
                self.error(values["name"], f"{where}: a name is kebab-case (lower-case letters, digits, single '-')")
                ok = False
            elif name in UNRECOGNISED_PATTERNS:
                self.error(values["name"], f"{where}: the name is reserved for tracebacks that no pattern matches")
                ok = False
            elif name in first_seen:
                self.error(values["name"], f"{where}: the name is used twice (first at line {first_seen[name]}); names must be unique")
                ok = False
            else:
                first_seen[name] = name_line
        signal = severity = vendor = source = regex = None
        examples: list[tuple[str, str | None, yaml.Node]] | None = None
        if "signal" in values:
            signal = self.choice(values["signal"], f"{where} signal", tuple(s.value for s in LOG_SIGNALS))
        if "severity" in values:
            severity = self.choice(values["severity"], f"{where} severity", tuple(s.value for s in Severity))
        if "vendor" in values:
            vendor = self.choice(values["vendor"], f"{where} vendor", VENDORS)
        if "source" in values:
            source = self.str_(values["source"], f"{where} source")
        if both:
            pass  # reported above
        elif "example" in values:
            examples = self.examples_([values["example"]], where, f"{where} example")
        elif "examples" in values:
            seq = values["examples"]
            if not isinstance(seq, yaml.SequenceNode) or not seq.value:
                got = "an empty list" if isinstance(seq, yaml.SequenceNode) else _kind(seq)
                self.error(seq, f"{where} examples must be a non-empty list of real log lines, got {got}")
            else:
                examples = self.examples_(seq.value, where, f"{where} examples")
        if "regex" in values:
            text = self.str_(values["regex"], f"{where} regex")
            if text is not None:
                try:
                    regex = re.compile(text)
                except re.error as exc:
                    self.error(values["regex"], f"{where} regex does not compile: {exc}")
                else:
                    if regex.search(""):
                        self.error(values["regex"], f"{where} regex matches the empty string, so it would match every line")
                        regex = None
        if regex is not None and examples is not None:
            for line, _, example_node in examples:
                if not regex.search(split_prefix(line)[1][:MAX_MATCH_CHARS]):
                    self.error(example_node, f"{where}: the example is not matched by the pattern's own regex")
                    ok = False
        if not ok or examples is None or None in (signal, severity, vendor, source, regex):
            return None
        return Pattern(
            name=name, signal=Signal(signal), regex=regex, severity=Severity(severity),  # type: ignore[arg-type]
            vendor=vendor, source=source, examples=tuple(line for line, _, _ in examples),  # type: ignore[arg-type]
            line=node.start_mark.line + 1,
            example_sources=tuple(own or source for _, own, _ in examples),  # type: ignore[misc]
        )

    def examples_(self, nodes: list[yaml.Node], where: str, what: str) -> list[tuple[str, str | None, yaml.Node]] | None:
        """(line, its own source or None, node) per example; None when any is unusable.
        An example is a string, or a mapping {line, source} for a line read elsewhere."""
        out: list[tuple[str, str | None, yaml.Node]] = []
        ok = True
        for item in nodes:
            own: str | None = None
            line_node = item
            if isinstance(item, yaml.MappingNode):
                fields = self.mapping(item, what, _EXAMPLE_KEYS, _EXAMPLE_KEYS)
                if fields is None or len(fields) != len(_EXAMPLE_KEYS):
                    ok = False
                    continue
                own = self.str_(fields["source"], f"{what} source")
                line_node = fields["line"]
                if own is None:
                    ok = False
            line = self.str_(line_node, what)
            if line is not None and "\n" in line:
                self.error(line_node, f"{what} must be one log line")
                line = None
            if line is None:
                ok = False
                continue
            out.append((line, own, line_node))
        return out if ok else None


def _scalar_value(node: yaml.Node, key: str) -> str | None:
    if not isinstance(node, yaml.MappingNode):
        return None
    for k, v in node.value:
        if isinstance(k, yaml.ScalarNode) and k.value == key and isinstance(v, yaml.ScalarNode) and v.value:
            return v.value
    return None


def _value_node(mapping: yaml.MappingNode, key: str) -> yaml.Node:
    return next(v for k, v in mapping.value if isinstance(k, yaml.ScalarNode) and k.value == key)


def _example_node(mapping: yaml.MappingNode, number: int) -> yaml.Node:
    """The node of the entry's example #number (for a message that points at it)."""
    if any(isinstance(k, yaml.ScalarNode) and k.value == "example" for k, _ in mapping.value):
        return _value_node(mapping, "example")
    item = _value_node(mapping, "examples").value[number]
    return _value_node(item, "line") if isinstance(item, yaml.MappingNode) else item


# --- the scanner -------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    """One fault seen in a log: it starts at (1-based) `line` and spans `lines` lines of
    the stream (for a traceback interleaved with other ranks' output, those lines too).
    `evidence` is the matching line, or a traceback's header, the line that decided its
    signal and its last line (the exception); at most `MAX_EVIDENCE_BYTES` of UTF-8."""

    line: int
    signal: Signal
    pattern: str
    severity: Severity
    evidence: str
    lines: int = 1


def split_prefix(line: str) -> tuple[str, str]:
    """(prefix, text): the launcher's rank prefix(es) at the start of `line`, and the rest.
    The prefix, without its trailing space, identifies the stream a line belongs to."""
    pos = 0
    keys: list[str] = []
    for _ in range(_MAX_PREFIXES):
        found = _PREFIX.match(line, pos)
        if found is None:
            break
        keys.append(found.group(0).rstrip(" "))
        pos = found.end()
    return "".join(keys), line[pos:]


_FRAMES, _AFTER_EXCEPTION, _CHAINED = "frames", "after-exception", "chained"


class _Traceback:
    """What one open traceback keeps: a constant amount, whatever its length."""

    __slots__ = ("start", "header", "state", "count", "end", "tail", "exception", "best", "best_line")

    def __init__(self, start: int, header: str) -> None:
        self.start = start
        self.header = header
        self.state = _FRAMES
        self.count = 1  # lines of this stream taken in, blank ones included
        self.end = start  # the last non-blank line that belongs to it
        self.tail: tuple[int, str] = (start, header)  # that line
        self.exception: tuple[int, str] | None = None  # the latest exception line
        self.best: int | None = None  # index of the earliest catalog pattern matched
        self.best_line: tuple[int, str] = (0, "")


class LogScanner:
    """Fed one line at a time; returns findings as soon as they are complete.

    A line outside a traceback that a catalog pattern matches is a finding at once. A
    traceback is complete when a line of its stream shows it has ended (neither its
    frames, nor a chaining line and the traceback that follows it), when it reaches
    `max_traceback_lines`, or at `flush()`, which the caller owes at end of stream.
    """

    def __init__(self, catalog: Catalog, *, max_traceback_lines: int = MAX_TRACEBACK_LINES) -> None:
        if max_traceback_lines < 2:
            raise ValueError("max_traceback_lines must be at least 2 (a header and an exception)")
        self.catalog = catalog
        self.max_traceback_lines = max_traceback_lines
        self.line_no = 0
        self._open: dict[str, _Traceback] = {}  # by stream prefix, oldest first

    def feed(self, line: str) -> list[Finding]:
        """Take the next line of the stream (a trailing newline is ignored); return the
        findings it completes, in order of the line each starts at."""
        self.line_no += 1
        number = self.line_no
        line = line.rstrip("\r\n")
        prefix, text = split_prefix(line)
        found: list[Finding] = []
        open_tb = self._open.get(prefix)
        if open_tb is not None:
            if self._take(open_tb, number, line, text):
                if open_tb.count >= self.max_traceback_lines:
                    found.append(self._close(prefix))
                return found
            found.append(self._close(prefix))
        if text.rstrip() == _HEADER:
            if len(self._open) >= MAX_OPEN_TRACEBACKS:
                found.append(self._close(next(iter(self._open))))
            self._open[prefix] = tb = _Traceback(number, _clip(line))
            self._note(tb, number, line, text)
        else:
            index = self.catalog._first(text)
            if index is not None:
                pattern = self.catalog.patterns[index]
                found.append(Finding(number, pattern.signal, pattern.name, pattern.severity, _clip(line), 1))
            elif _EXCEPTION_LINE.match(text[:MAX_MATCH_CHARS].rstrip()):
                found.append(Finding(number, TRACEBACK_SIGNAL, EXCEPTION_PATTERN, Severity.WARNING, _clip(line), 1))
        found.sort(key=lambda f: f.line)
        return found

    def flush(self) -> list[Finding]:
        """End of stream: every open traceback becomes a finding, as far as it got."""
        found = [self._close(prefix) for prefix in list(self._open)]
        return sorted(found, key=lambda f: f.line)

    def _take(self, tb: _Traceback, number: int, line: str, text: str) -> bool:
        """Whether the open traceback `tb` takes in this line of its stream."""
        blank = not text.strip()
        stripped = text.rstrip()
        if tb.state == _FRAMES:
            if stripped == _HEADER:
                return False  # a new traceback: this one was cut short
            if not blank and text[0] not in " \t" and stripped not in _CHAIN_LINES:
                tb.exception = (number, _clip(line))
                tb.state = _AFTER_EXCEPTION
        elif blank:
            pass  # Python puts a blank line either side of a chaining line
        elif tb.state == _AFTER_EXCEPTION and stripped in _CHAIN_LINES:
            tb.state = _CHAINED
        elif tb.state == _CHAINED and stripped == _HEADER:
            tb.state = _FRAMES
        else:
            return False
        tb.count += 1
        if not blank:
            self._note(tb, number, line, text)
        return True

    def _note(self, tb: _Traceback, number: int, line: str, text: str) -> None:
        """A non-blank line of the traceback: it may match an earlier catalog pattern than
        any line before it (catalog order decides, not line order)."""
        tb.end = number
        tb.tail = (number, _clip(line))
        index = self.catalog._first(text, below=tb.best)
        if index is not None:
            tb.best = index
            tb.best_line = (number, tb.tail[1])

    def _close(self, prefix: str) -> Finding:
        tb = self._open.pop(prefix)
        pieces = {tb.start: tb.header}
        if tb.best is not None:
            pattern = self.catalog.patterns[tb.best]
            signal, name, severity = pattern.signal, pattern.name, pattern.severity
            pieces[tb.best_line[0]] = tb.best_line[1]
        else:
            signal, name, severity = TRACEBACK_SIGNAL, TRACEBACK_PATTERN, default_severity(TRACEBACK_SIGNAL)
        last = tb.exception if tb.state != _FRAMES and tb.exception is not None else tb.tail
        pieces[last[0]] = last[1]
        evidence = _join_clipped([pieces[n] for n in sorted(pieces)], MAX_EVIDENCE_BYTES)
        return Finding(tb.start, signal, name, severity, evidence, tb.end - tb.start + 1)


def scan_lines(lines: Iterable[str], catalog: Catalog) -> list[Finding]:
    """Every finding in a finished log, in order of the line each starts at."""
    scanner = LogScanner(catalog)
    found: list[Finding] = []
    for line in lines:
        found.extend(scanner.feed(line))
    found.extend(scanner.flush())
    return sorted(found, key=lambda f: f.line)


# --- evidence ----------------------------------------------------------------------

_ELLIPSIS = "…"


def _size(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def _clip(text: str, limit: int = MAX_EVIDENCE_BYTES) -> str:
    """`text`, cut to at most `limit` bytes of UTF-8 (an ellipsis marks the cut)."""
    if len(text) * 4 <= limit:
        return text
    data = text.encode("utf-8", "surrogatepass")
    if len(data) <= limit:
        return text
    if limit < _size(_ELLIPSIS):
        return data[:limit].decode("utf-8", "ignore")
    return data[: limit - _size(_ELLIPSIS)].decode("utf-8", "ignore") + _ELLIPSIS


def _join_clipped(pieces: list[str], limit: int) -> str:
    """The pieces joined by newlines, each clipped so that the whole fits in `limit`
    bytes; short pieces stay whole and leave their share to the long ones."""
    budget = limit - (len(pieces) - 1)
    shares: dict[int, int] = {}
    for left, index in enumerate(sorted(range(len(pieces)), key=lambda i: _size(pieces[i]))):
        share = min(_size(pieces[index]), budget // (len(pieces) - left))
        shares[index] = share
        budget -= share
    return "\n".join(_clip(piece, shares[i]) for i, piece in enumerate(pieces))


# --- reading findings --------------------------------------------------------------


def specificity(finding: Finding, catalog: Catalog) -> int:
    """The finding's pattern position in `catalog` (lower is more specific); an
    unrecognised traceback (or a pattern the catalog no longer has) ranks last."""
    for index, pattern in enumerate(catalog.patterns):
        if pattern.name == finding.pattern:
            return index
    return len(catalog.patterns)


def most_specific(findings: Sequence[Finding], catalog: Catalog) -> Finding | None:
    """The finding that best names the cause of a failed log: the one whose pattern comes
    first in the catalog (catalog order is specificity order: a vendor error code before
    the wrapper line that reports it, every infrastructure pattern before the user_error
    ones), the earliest in the log among equals. None when there are no findings."""
    if not findings:
        return None
    return min(findings, key=lambda f: (specificity(f, catalog), f.line))


def fingerprint(finding: Finding, step: int | None = None) -> str | None:
    """The failure fingerprint of an unrecognised traceback (see
    `supervisor.shared.fingerprint`): the job layer compares it across attempts, and an
    identical repeat is a deterministic failure. None for a recognised pattern, whose
    repeats mean the fault is still there, not that the program is wrong."""
    if finding.pattern not in UNRECOGNISED_PATTERNS:
        return None
    return failure_fingerprint(finding.evidence, step)
