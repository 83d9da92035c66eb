"""Paths built from names that came from outside (job and node names) stay inside the
directory they were meant for: a name such as `../../etc` or `/tmp/x` never escapes."""

from __future__ import annotations

import os
from pathlib import Path


class PathEscape(ValueError):
    """A name that would put a path outside its directory."""


def inside(base: Path, *parts: str) -> Path:
    """`base / parts...`, refusing any part that is absolute, empty, `.`/`..`, or holds a
    separator or NUL, and checking the result (symlinks resolved) is under `base`."""
    for part in parts:
        if not part or part in (".", "..") or "/" in part or "\0" in part or os.sep in part:
            raise PathEscape(f"{part!r} cannot be used as a file name under {base}")
    path = base.joinpath(*parts)
    root = base.resolve()
    resolved = path.resolve()
    if resolved != root and root not in resolved.parents:
        raise PathEscape(f"{path} would be outside {base}")
    return path
