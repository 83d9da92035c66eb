"""One hang, one culprit (`supervisor/core/hangs.py`): the evidence in order — stacks,
then steps, then CPU — and a plain "cannot tell" when the ranks look alike."""

from __future__ import annotations

import pytest

from supervisor.core.hangs import CULPRIT_STACK_CHARS, HangJoin, SeenRank, evidence, name_culprit
from supervisor.shared.protocol import HangRank

pytestmark = pytest.mark.timeout(10)


def seen(node: str, rank: int, where: str = "unknown", step: int | None = None, cpu: float | None = None,
         stack: str = "") -> SeenRank:
    return SeenRank(node, HangRank(rank=rank, pid=100 + rank, step=step, where=where,  # type: ignore[arg-type]
                                   summary=f"MainThread (idle): f{rank} (x.py:1)", stack=stack, cpu_s=cpu))


def test_the_one_rank_outside_a_collective_is_the_culprit_whatever_the_steps() -> None:
    ranks = [seen("n1", 0, "collective", 9), seen("n1", 1, "collective", 9), seen("n2", 2, "elsewhere", 9),
             seen("n2", 3, "collective", 8)]
    verdict = name_culprit(ranks, 4)
    assert (verdict.culprit.node, verdict.culprit.view.rank, verdict.by) == ("n2", 2, "stack")  # type: ignore[union-attr]
    assert "rank 2 on n2 is the culprit: its stack is outside any collective while 3 other ranks wait" in verdict.reason


def test_without_stacks_the_rank_behind_is_the_culprit() -> None:
    verdict = name_culprit([seen("n1", 0, step=325), seen("n2", 1, step=324)], 2)
    assert (verdict.culprit.view.rank, verdict.by) == (1, "step")  # type: ignore[union-attr]
    assert "at step 324, behind the others (at step 325)" in verdict.reason


def test_two_ranks_outside_are_told_apart_by_step_and_only_among_themselves() -> None:
    ranks = [seen("n1", 0, "elsewhere", 10), seen("n1", 1, "elsewhere", 11), seen("n2", 2, "collective", 10)]
    verdict = name_culprit(ranks, 3)
    assert (verdict.culprit.view.rank, verdict.by) == (0, "step")  # type: ignore[union-attr]


def test_without_stacks_or_steps_the_one_idle_rank_among_busy_ones_is_the_culprit() -> None:
    verdict = name_culprit([seen("n1", 0, cpu=0.0), seen("n1", 1, cpu=2.5), seen("n1", 2, cpu=1.9)], 3)
    assert (verdict.culprit.view.rank, verdict.by) == (0, "cpu")  # type: ignore[union-attr]


@pytest.mark.parametrize("ranks", [
    [seen("n1", 0, "elsewhere", 5), seen("n2", 1, "elsewhere", 5)],
    [seen("n1", 0, "collective", 5), seen("n2", 1, "collective", 5)],
    [seen("n1", 0, cpu=0.0), seen("n1", 1, cpu=0.0)],
    [seen("n1", 0, step=4), seen("n1", 1, step=4), seen("n1", 2, step=5)],  # two behind: no one rank
])
def test_ranks_that_look_alike_name_no_one_and_say_so(ranks: list[SeenRank]) -> None:
    verdict = name_culprit(ranks, len(ranks))
    assert verdict.culprit is None and verdict.by == "none"
    assert "look alike" in verdict.reason and "no rank is named" in verdict.reason


def test_a_single_reported_rank_of_a_larger_job_is_not_guessed_but_a_one_rank_job_is() -> None:
    assert name_culprit([seen("n1", 0, "elsewhere", 5)], 2).culprit is None
    assert "nothing to compare" in name_culprit([seen("n1", 0, "elsewhere", 5)], 2).reason
    assert name_culprit([seen("n1", 0, step=5)], 1).by == "only_rank"


def test_evidence_is_the_verdict_the_culprits_stack_and_a_bounded_line_per_other_rank() -> None:
    ranks = [seen("n1", 0, "collective", 9, stack="x" * 50), seen("n2", 1, "elsewhere", 8, stack="S" * 20_000)]
    verdict = name_culprit(ranks, 2)
    text = evidence(verdict, ranks, ["n2: py-spy slow"])
    lines = text.splitlines()
    assert lines[0] == verdict.reason
    assert lines[1].startswith("--- rank 1 on n2 (pid 101): step 8 (train), outside any collective")
    assert lines[2] == "S" * CULPRIT_STACK_CHARS
    assert lines[3] == "--- the other ranks:"
    assert lines[4].startswith("rank 0 on n1 (pid 100): step 9 (train), inside a collective") and "x" * 50 not in text
    assert lines[5] == "note: n2: py-spy slow"


def test_a_join_completes_when_every_node_reported_or_its_window_ends() -> None:
    join = HangJoin(attempt=3, opened_at=100.0, expected=frozenset({"n1", "n2"}), window=4.0)
    join.add("n2", [seen("n2", 1, "elsewhere", 8).view], None, "heartbeat")
    assert not join.complete(103.9)
    assert join.complete(104.0)
    verdict, text, notes = join.verdict(2)
    assert verdict.culprit is None and "no view from n1 within 4s" in notes[-1] and notes[-1] in text
    join.add("n1", [seen("n1", 0, "collective", 9).view], "py-spy is not installed", "heartbeat")
    assert join.complete(100.5)
    verdict, _, notes = join.verdict(2)
    assert verdict.culprit.node == "n2" and notes == ["n1: py-spy is not installed"]  # type: ignore[union-attr]
