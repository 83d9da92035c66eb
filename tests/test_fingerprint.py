"""supervisor.shared.fingerprint: the value the job layer compares across attempts."""

from __future__ import annotations

import pytest

from supervisor.shared.fingerprint import MAX_FINGERPRINT, exception_line, failure_fingerprint, normalise

pytestmark = pytest.mark.timeout(10)


def test_the_exception_line_is_the_last_one_naming_an_exception_without_its_rank_prefix() -> None:
    evidence = ("[rank1]: Traceback (most recent call last):\n"
                "[rank1]: RuntimeError: first\n"
                "[rank1]: torch.distributed.DistBackendError: second 3")
    assert exception_line(evidence) == "torch.distributed.DistBackendError: second 3"
    assert exception_line("Traceback (most recent call last):\n  File \"x.py\", line 1") is None


@pytest.mark.parametrize(("a", "b", "same"), [
    ("ValueError: batch 17 of 0x7f3a22 failed", "ValueError: batch 18 of 0x7f4b00 failed", True),
    ("ValueError: shapes (2, 3) and (4, 5)", "ValueError: shapes (20, 30)  and (40, 50)", True),
    ("ValueError: bad batch", "KeyError: 'bad batch'", False),
    ("KeyError: 'labels'", "KeyError: 'input_ids'", False),
])
def test_numbers_and_addresses_do_not_make_failures_different(a: str, b: str, same: bool) -> None:
    assert (failure_fingerprint(a) == failure_fingerprint(b)) is same


def test_the_step_is_part_of_the_fingerprint_and_the_length_is_bounded() -> None:
    assert failure_fingerprint("AssertionError", step=7) == "AssertionError @ step 7"
    assert failure_fingerprint("ValueError: x", step=7) != failure_fingerprint("ValueError: x", step=8)
    assert len(failure_fingerprint("ValueError: " + "a" * 10_000) or "") == MAX_FINGERPRINT
    assert failure_fingerprint("NCCL WARN NET/IB : Got async event : port error") is None
    assert normalise("at  0xdeadbeef,  step -12.5e3") == "at <addr>, step #"
