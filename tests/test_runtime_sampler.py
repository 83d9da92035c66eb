"""agents.runtime.sampler.ResumableSampler: a global permutation per epoch, consumed one
global step (world_size × batch_size indices) at a time; rank r takes the r-th slice. The
state is (epoch, global position), so it means the same thing at any world size.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.runtime.sampler import ResumableSampler


def ranks(dataset_len: int, batch: int, world: int, seed: int = 0) -> list[ResumableSampler]:
    return [ResumableSampler(dataset_len, batch, rank, world, seed) for rank in range(world)]


def take(sampler: ResumableSampler, steps: int) -> list[list[int]]:
    return [sampler.next_batch() for _ in range(steps)]


def test_the_same_seed_gives_the_same_batches() -> None:
    a, b = ResumableSampler(50, 4, seed=3), ResumableSampler(50, 4, seed=3)
    assert take(a, 40) == take(b, 40)  # several epochs


def test_another_seed_gives_another_order() -> None:
    assert take(ResumableSampler(50, 4, seed=3), 12) != take(ResumableSampler(50, 4, seed=4), 12)


def test_each_epoch_is_a_new_order() -> None:
    s = ResumableSampler(12, 4, seed=0)
    first, second = take(s, 3), take(s, 3)
    assert sorted(sum(first, [])) == sorted(sum(second, [])) == list(range(12))
    assert first != second


def test_ranks_of_one_step_split_the_global_batch() -> None:
    world, batch = 3, 4
    per_rank = [take(s, 10) for s in ranks(100, batch, world, seed=9)]
    global_batches = take(ResumableSampler(100, world * batch, seed=9), 10)
    for step in range(10):
        slices = [per_rank[r][step] for r in range(world)]
        assert all(len(piece) == batch for piece in slices)
        assert len(set().union(*map(set, slices))) == world * batch  # disjoint
        assert sum(slices, []) == global_batches[step]  # rank r takes the r-th slice, in order


def test_an_epoch_never_repeats_an_index() -> None:
    seen = sum(take(ResumableSampler(60, 5, seed=2), 12), [])
    assert sorted(seen) == list(range(60))


def test_epoch_rollover_drops_the_ragged_tail() -> None:
    s = ResumableSampler(10, 3, seed=5)  # 3 full steps of 3 per epoch; one index left over
    whole = ResumableSampler(10, 10, seed=5)  # same seed, one step per epoch: each epoch's order
    epoch0, epoch1 = whole.next_batch(), whole.next_batch()
    assert sorted(epoch0) == sorted(epoch1) == list(range(10)) and epoch0 != epoch1
    assert take(s, 3) == [epoch0[0:3], epoch0[3:6], epoch0[6:9]]
    assert (s.epoch, s.position) == (0, 9)
    assert s.next_batch() == epoch1[0:3]  # epoch0[9] is never served
    assert (s.epoch, s.position) == (1, 3)


def test_two_ranks_roll_over_together() -> None:
    r0, r1 = ranks(10, 2, 2, seed=1)  # 2 steps of 4 per epoch; 2 left over
    for _ in range(5):
        a, b = r0.next_batch(), r1.next_batch()
        assert r0.state_dict() == r1.state_dict()
        assert not set(a) & set(b)


def test_state_dict_resumes_the_same_sequence() -> None:
    original = ResumableSampler(37, 4, rank=1, world_size=2, seed=8)
    take(original, 7)
    state = original.state_dict()
    assert state == {"epoch": 1, "position": 24, "seed": 8, "dataset_len": 37}
    resumed = ResumableSampler(37, 4, rank=1, world_size=2, seed=8)
    resumed.load_state_dict(state)
    assert take(resumed, 20) == take(original, 20)


def test_state_dict_is_a_snapshot() -> None:
    s = ResumableSampler(20, 2, seed=0)
    state = s.state_dict()
    take(s, 3)
    assert state["position"] == 0


def test_world_size_two_resumes_at_world_size_one_at_the_same_global_position() -> None:
    r0, r1 = ranks(50, 3, 2, seed=4)
    for _ in range(6):
        r0.next_batch(), r1.next_batch()
    state = r0.state_dict()
    assert state == r1.state_dict()  # every rank saves the same global position

    # One rank with the same global batch continues exactly where the two left off, across
    # an epoch boundary (8 steps of 6 per epoch here).
    single = ResumableSampler(50, 6, seed=4)
    single.load_state_dict(state)
    for _ in range(10):
        assert single.next_batch() == r0.next_batch() + r1.next_batch()

    # With the per-rank batch kept, one rank serves the same indices in twice the steps
    # (within the epoch: the ragged tail depends on the step size).
    r0, r1 = ranks(50, 3, 2, seed=4)
    for _ in range(2):
        r0.next_batch(), r1.next_batch()
    small = ResumableSampler(50, 3, seed=4)
    small.load_state_dict(r0.state_dict())
    for _ in range(3):
        assert small.next_batch() + small.next_batch() == r0.next_batch() + r1.next_batch()


@pytest.mark.parametrize(
    "other",
    [dict(dataset_len=41, seed=8), dict(dataset_len=40, seed=9)],
    ids=["dataset_len", "seed"],
)
def test_a_state_for_other_data_is_refused(other: dict[str, int]) -> None:
    state = ResumableSampler(40, 4, seed=8).state_dict()
    s = ResumableSampler(other["dataset_len"], 4, seed=other["seed"])
    with pytest.raises(ValueError, match="sampler state"):
        s.load_state_dict(state)
    assert (s.epoch, s.position) == (0, 0)  # left as it was


@pytest.mark.parametrize("dataset_len,batch,world", [(7, 4, 2), (0, 1, 1), (3, 4, 1)])
def test_a_dataset_smaller_than_one_step_is_refused(dataset_len: int, batch: int, world: int) -> None:
    with pytest.raises(ValueError, match="cannot fill one step"):
        ResumableSampler(dataset_len, batch, 0, world)


def test_a_dataset_of_exactly_one_step_works() -> None:
    r0, r1 = ranks(8, 4, 2)
    for _ in range(3):
        assert sorted(r0.next_batch() + r1.next_batch()) == list(range(8))


def test_the_global_random_stream_is_untouched() -> None:
    random.seed(1)
    expected = random.random()
    random.seed(1)
    take(ResumableSampler(30, 3, seed=2), 25)
    assert random.random() == expected


# --- properties ----------------------------------------------------------------------------


@st.composite
def layouts(draw: st.DrawFn) -> tuple[int, int, int, int, int]:
    batch = draw(st.integers(1, 6))
    world = draw(st.integers(1, 4))
    dataset_len = draw(st.integers(batch * world, batch * world * 6 + 5))
    steps = draw(st.integers(0, 30))
    seed = draw(st.integers(0, 2**32))
    return dataset_len, batch, world, steps, seed


@settings(max_examples=150, deadline=None)
@given(layouts(), st.integers(1, 12))
def test_resuming_at_any_step_gives_the_same_batches(layout: tuple[int, int, int, int, int], more: int) -> None:
    dataset_len, batch, world, steps, seed = layout
    for rank in range(world):
        original = ResumableSampler(dataset_len, batch, rank, world, seed)
        take(original, steps)
        resumed = ResumableSampler(dataset_len, batch, rank, world, seed)
        resumed.load_state_dict(original.state_dict())
        assert take(resumed, more) == take(original, more)


@settings(max_examples=150, deadline=None)
@given(layouts(), st.integers(1, 12))
def test_any_world_resumes_as_one_rank_with_the_global_batch(layout: tuple[int, int, int, int, int], more: int) -> None:
    dataset_len, batch, world, steps, seed = layout
    samplers = ranks(dataset_len, batch, world, seed)
    for s in samplers:
        take(s, steps)
    single = ResumableSampler(dataset_len, batch * world, 0, 1, seed)
    single.load_state_dict(samplers[0].state_dict())
    for _ in range(more):
        pieces = [s.next_batch() for s in samplers]
        assert single.next_batch() == sum(pieces, [])
        assert len(set(sum(pieces, []))) == batch * world
