"""Reading a file someone else wrote, without letting it hang, flood or fool the reader.

The daemon reads policy files from a directory operators (and their config management)
write into; agents read the fault catalog; the CLI reads the TOML configuration. Any of
those paths can be a FIFO (an open for reading blocks until a writer comes), a device
(`/dev/zero` never ends), a huge file, or a symlink to a file that must never be shown
(the daemon's secret key). So:

- only a regular file is read. A symlink is followed (config management links files into
  place) but its target must be a regular file too; a FIFO, device, socket or directory
  is refused from `stat`, before it is opened, and again from `fstat` after a
  non-blocking open (the path may have been swapped in between);
- at most `limit` bytes: the size is checked before reading and the read itself stops at
  `limit + 1` bytes, so a file that grows while it is read is refused as well;
- text means UTF-8 without NUL or other control characters (tab, newline and carriage
  return aside), and nothing that looks like key material. A file that is not text is
  refused by what it is, never by quoting it: the refusal holds no byte of its content.

Every refusal is a `FileRefused` (an `OSError`, so callers that already report "cannot
read" report this too) whose message says what the file is and what is allowed.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from pathlib import Path

#: Default limits. A policy or a catalog of a few hundred rules is a few tens of KiB.
POLICY_LIMIT = 1024 * 1024
CATALOG_LIMIT = 1024 * 1024
CONFIG_LIMIT = 256 * 1024

# C0 controls and DEL, except tab, newline and carriage return; C1 controls too.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\x80-\x9f]")
# Key material that is also valid text: a CurveZMQ secret certificate (pyzmq / czmq), a
# PEM private key, an OpenSSH private key.
_SECRET = re.compile(r"^\s*secret-key\s*=|-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----", re.MULTILINE)


class FileRefused(OSError):
    """A file that is not read: not a regular file, too large, or not text."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(errno.EINVAL, reason, str(path))
        self.path = str(path)
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISDIR(mode):
        return "a directory"
    return "not a regular file"


def _size(n: int) -> str:
    return f"{n // (1024 * 1024)} MiB" if n % (1024 * 1024) == 0 else f"{n // 1024} KiB" if n % 1024 == 0 else f"{n} bytes"


def read_bounded(path: str | Path, limit: int, what: str) -> bytes:
    """The bytes of `path`, a regular file of at most `limit` bytes (`what` names it in
    refusals: "a policy file"). Raises FileRefused, or OSError when it cannot be opened."""
    path = str(path)
    st = os.stat(path)  # follows a symlink: what matters is what it points to
    if not stat.S_ISREG(st.st_mode):
        raise FileRefused(path, f"refused: it is {_kind(st.st_mode)}; {what} must be a regular file (or a symlink to one)")
    if st.st_size > limit:
        raise FileRefused(path, f"refused: {st.st_size} bytes; {what} may hold at most {_size(limit)}")
    # Non-blocking: if the path became a FIFO since the stat, the open still returns at once.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise FileRefused(path, f"refused: it is {_kind(st.st_mode)}; {what} must be a regular file (or a symlink to one)")
        chunks: list[bytes] = []
        left = limit + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1024 * 1024))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > limit:
        raise FileRefused(path, f"refused: it grew past {_size(limit)} while read; {what} may hold at most {_size(limit)}")
    return data


def text_problem(data: bytes) -> str | None:
    """Why `data` is not text that may be quoted back to a person; None when it is."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"not UTF-8 text ({exc.reason} at byte {exc.start})"
    bad = _CONTROL.search(text)
    if bad is not None:
        name = "NUL" if bad.group() == "\x00" else f"U+{ord(bad.group()):04X}"
        return f"binary, not text (control character {name} at character {bad.start()})"
    if _SECRET.search(text):
        return "it looks like a secret key file (never read as anything else, never quoted)"
    return None


def check_text(data: bytes, path: str | Path, what: str) -> str:
    """`data` as text, or FileRefused saying (without quoting it) why it is not."""
    problem = text_problem(data)
    if problem is not None:
        raise FileRefused(path, f"refused: not {what}: {problem}")
    return data.decode("utf-8")


def read_bounded_text(path: str | Path, limit: int, what: str) -> str:
    """`read_bounded`, then `check_text`: UTF-8 text that is safe to quote."""
    return check_text(read_bounded(path, limit, what), path, what)
