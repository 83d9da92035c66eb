"""The CLI's `--json` text: exactly what `json.dumps(value, indent=2, sort_keys=True)`
writes, made by msgspec in an eighth of the time (0.68 s -> 0.09 s for a status of 5,000
eight-chip nodes).

msgspec's text differs from json's in two ways, both mended where they occur: a float
that Python writes with an exponent (below 1e-4 or from 1e16 on: `1e-05`, `1e+16`)
msgspec writes as `0.00001` or `1e16`; json escapes DEL and every character beyond ASCII
(`\\u007f`, `\\u00fc`), msgspec writes them as they are (UTF-8).
"""

from __future__ import annotations

import json
import re
from typing import Any

import msgspec

#: Every digit becomes 0 and E becomes e, so that one `find` finds a digit before an e.
_DIGITS = bytes.maketrans(b"123456789E", b"000000000e")
_NUMBER_CHARS = frozenset(b"0123456789.eE+-")
#: What comes before a number in compact JSON (or nothing, at the start) ...
_BEFORE_NUMBER = frozenset(b":,[")
#: ... and after it (or nothing, at the end).
_AFTER_NUMBER = frozenset(b",]}")
#: A line of indented JSON holding one number: `  "key": 1e16,` or `  1e16`. Keys and
#: strings are matched as JSON strings, so a string that holds such text never matches.
_NUMBER_LINE = re.compile(rb' *(?:"(?:[^"\\]|\\.)*": )?(-?[0-9][0-9.eE+-]*),?')
#: What json.dumps escapes that msgspec writes as it is (inside strings only).
_ESCAPED = re.compile(r"[^\x00-\x7e]+")
#: Past this many places to look at (a few µs each), json writes it all. Most are digits
#: before an e in strings: a job id such as `scale-af8e53` is in each of the job's
#: running ranks, 8,000 times in a status of 10,000 nodes (with a bound of 1,000 that
#: status took 2 s, json's time, instead of 0.2).
_MAX_SUSPECTS = 200_000


def dumps(value: Any) -> bytes:
    """`json.dumps(value, indent=2, sort_keys=True)`, as bytes, for JSON-safe data:
    dicts with string keys, lists, tuples, strings, finite floats, ints, bools, None, and
    msgspec structs (written as the dicts of their fields) of such."""
    compact = msgspec.json.encode(value, order="sorted")
    text = msgspec.json.format(compact, indent=2)
    if _may_hold_an_exponent_float(compact):
        mended = _floats_as_python_writes_them(text)
        if mended is None:
            return _json_dumps(value)
        text = mended
    if not compact.isascii() or b"\x7f" in compact:
        text = _ESCAPED.sub(lambda m: json.dumps(m.group())[1:-1], text.decode()).encode()
    return text


def _json_dumps(value: Any) -> bytes:
    return json.dumps(msgspec.to_builtins(value), indent=2, sort_keys=True).encode()


def _suspects(text: bytes) -> list[int]:
    """Where a float Python would write with an exponent could be: a digit before an e,
    or `0.0000`. Most are in strings (hex ids); at most _MAX_SUSPECTS + 1."""
    found: list[int] = []
    digits = text.translate(_DIGITS)
    for mapped, needle in ((digits, b"0e"), (text, b"0.0000")):
        at = mapped.find(needle)
        while at >= 0 and len(found) <= _MAX_SUSPECTS:
            found.append(at)
            at = mapped.find(needle, at + 1)
    return found


def _may_hold_an_exponent_float(compact: bytes) -> bool:
    """False when no number of the compact text is one msgspec writes otherwise than
    Python: every suspect lies in a run that is not a number token (it is part of a
    string). A suspect that may be a number (or a string that looks like one) says
    True, and the exact pass decides."""
    suspects = _suspects(compact)
    if len(suspects) > _MAX_SUSPECTS:
        return True
    size = len(compact)
    for at in suspects:
        start = at
        while start > 0 and compact[start - 1] in _NUMBER_CHARS:
            start -= 1
        if start > 0 and compact[start - 1] not in _BEFORE_NUMBER:
            continue  # inside a string: what comes before a number is never there
        end = at
        while end < size and compact[end] in _NUMBER_CHARS:
            end += 1
        if end == size or compact[end] in _AFTER_NUMBER:
            return True
    return False


def _floats_as_python_writes_them(text: bytes) -> bytes | None:
    """Every float of indented JSON text as `repr` writes it (json.dumps's way), line by
    line: a line that holds a number holds nothing else. None when there are too many
    places to look at (the caller lets json write it all)."""
    suspects = _suspects(text)
    if len(suspects) > _MAX_SUSPECTS:
        return None
    lines: dict[int, int] = {}
    for at in suspects:
        start = text.rfind(b"\n", 0, at) + 1
        if start not in lines:
            end = text.find(b"\n", at)
            lines[start] = len(text) if end < 0 else end
    parts: list[bytes] = []
    done = 0
    for start, end in sorted(lines.items()):
        match = _NUMBER_LINE.fullmatch(text, start, end)
        if match is None:
            continue
        number = match.group(1)
        if b"." not in number and b"e" not in number:
            continue  # an int: written alike
        parts += [text[done:match.start(1)], repr(float(number)).encode()]
        done = match.end(1)
    parts.append(text[done:])
    return b"".join(parts)
