"""Failure fingerprints: is this failure the same one as last attempt's?

A failure that repeats identically after a restart (same exception, same message up to
numbers and addresses, same step) is deterministic: restarting again is pointless, so the
job layer may treat the repeat as a `user_error`. This module only computes the value to
compare; deciding is the job layer's. Pure: plain strings in, a string out.

Only a failure trainguard could not explain deserves this test. An infrastructure fault
(a chip, a link, a full disk) repeats for infrastructure reasons, so the log scanner's
recognised patterns are compared by their pattern name, never turned into user errors.
"""

from __future__ import annotations

import re

#: Longest fingerprint kept (an exception message can be a whole tensor).
MAX_FINGERPRINT = 512

# `[rank3]: `, `[default0]:`, `(RayTrainWorker pid=8464, ip=10.0.0.1) ` before a line.
_PREFIX = re.compile(r"^(?:\[[A-Za-z_]*\d+\]: ?|\((?:[\w.-]+ )?pid=\d+(?:, ip=[\w.:]+)?\) )+")
# `ValueError: ...`, `torch.OutOfMemoryError: ...`, `KeyError: 'a'`, a bare `StopIteration`.
_EXCEPTION = re.compile(r"^(?P<type>(?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*(?:Error|Exception|Interrupt|Exit|Warning|Iteration|Failure))(?::\s*(?P<message>.*))?$")
_ADDRESS = re.compile(r"0x[0-9a-fA-F]+")
_NUMBER = re.compile(r"(?<![A-Za-z_])[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?")
_SPACE = re.compile(r"\s+")


def exception_line(evidence: str) -> str | None:
    """The last line of `evidence` that names an exception (`Type: message`), without a
    launcher's rank prefix; None when no line does."""
    for raw in reversed(evidence.splitlines()):
        line = _PREFIX.sub("", raw).strip()
        if _EXCEPTION.match(line):
            return line
    return None


def normalise(message: str) -> str:
    """`message` with addresses, numbers and runs of space made uniform, so that
    `batch 17 at 0x7f3a` and `batch 18 at 0x7f4b` compare equal."""
    message = _ADDRESS.sub("<addr>", message)
    message = _NUMBER.sub("#", message)
    return _SPACE.sub(" ", message).strip()


def failure_fingerprint(evidence: str, step: int | None = None) -> str | None:
    """`Type: normalised message` of the exception in `evidence` (a finding's evidence:
    a traceback's header, deciding line and exception), plus `@ step N` when the step the
    rank failed at is known. None when the evidence names no exception: such a failure
    cannot be shown to repeat identically."""
    line = exception_line(evidence)
    if line is None:
        return None
    m = _EXCEPTION.match(line)
    assert m is not None
    kind = m.group("type").rsplit(".", 1)[-1]
    message = normalise(m.group("message") or "")
    text = f"{kind}: {message}" if message else kind
    if step is not None:
        text = f"{text} @ step {step}"
    return text[:MAX_FINGERPRINT]
