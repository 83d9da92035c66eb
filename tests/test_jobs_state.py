"""The job record and its state machine (`supervisor/core/jobs.py`): the transition
table, ETTR with literal progress samples, the `job show --json` view, and the record's
round trip through the store's encoding."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from supervisor.core.jobs import (
    TRANSITIONS,
    Attempt,
    Failover,
    IllegalTransition,
    JobRecord,
    JobState,
    NodeAttempt,
    ettr,
    job_view,
    kept_seconds,
)
from supervisor.core.jobspec import JobSpec, PoolShape
from supervisor.shared.protocol import RankAssignment

SPEC = JobSpec(name="gpt", command=("python", "train.py"), workdir="/w", checkpoint_dir="/ck",
               pools={"ascend": PoolShape(nodes=1, ranks_per_node=1)})
T0 = 1_700_000_000.0


def record(**kw) -> JobRecord:
    return JobRecord(id="gpt-abc123", spec=SPEC, pool="ascend", **kw)


def attempt(number: int, progress: list[tuple[int, float]], resumed_from: int | None = None) -> Attempt:
    return Attempt(number=number, pool="ascend", world_size=1, master_addr="a1", master_port=29500,
                   nodes=[NodeAttempt(node="a1", address="a1", ranks=(RankAssignment(rank=0, local_rank=0, chips=(0,)),))],
                   progress=progress, resumed_from=resumed_from)


# --- the transition table ----------------------------------------------------------------------


def test_the_table_names_every_state_and_ended_states_are_final() -> None:
    assert set(TRANSITIONS) == set(JobState)
    for state in JobState:
        assert TRANSITIONS[state] <= set(JobState)
        assert (TRANSITIONS[state] == frozenset()) == state.ended


def test_the_lifecycle_of_the_docstring_is_allowed() -> None:
    rec = record()
    path = [JobState.STARTING, JobState.RUNNING, JobState.RESTARTING, JobState.PENDING, JobState.STARTING,
            JobState.RUNNING, JobState.FAILING_OVER, JobState.PENDING, JobState.STARTING, JobState.RUNNING,
            JobState.STOPPING, JobState.STOPPED]
    for i, state in enumerate(path):
        fields = rec.transition(state, T0 + i, reason="why" if state is JobState.STOPPED else None)
        assert fields["state"] == state.value
    assert rec.ended_at == T0 + len(path) - 1 and rec.reason == "why"
    assert rec.state_since == T0 + len(path) - 1


@pytest.mark.parametrize(("start", "to"), [
    (JobState.PENDING, JobState.RUNNING),
    (JobState.RUNNING, JobState.PENDING),
    (JobState.RESTARTING, JobState.RUNNING),
    (JobState.STOPPING, JobState.RUNNING),
    (JobState.STOPPED, JobState.PENDING),
    (JobState.SUCCEEDED, JobState.FAILED),
    (JobState.FAILED, JobState.STOPPED),
])
def test_illegal_transitions_raise_and_change_nothing(start: JobState, to: JobState) -> None:
    rec = record(state=start, state_since=T0)
    with pytest.raises(IllegalTransition):
        rec.transition(to, T0 + 1)
    assert rec.state is start and rec.state_since == T0


@given(st.lists(st.sampled_from(list(JobState)), max_size=40))
def test_whatever_is_asked_the_record_only_moves_along_the_table(wanted: list[JobState]) -> None:
    rec = record()
    for i, new in enumerate(wanted):
        before = rec.state
        try:
            rec.transition(new, T0 + i)
        except IllegalTransition:
            assert new not in TRANSITIONS[before] and rec.state is before
        else:
            assert new in TRANSITIONS[before] and rec.state is new
        if rec.state.ended:
            assert rec.ended_at is not None


def test_nodes_only_while_ranks_may_be_alive() -> None:
    rec = record(attempt=1, attempts=[attempt(1, [])], state=JobState.RUNNING)
    assert rec.nodes() == ["a1"]
    rec.state = JobState.PENDING
    assert rec.nodes() == []
    rec.attempt = 2  # a new attempt is being placed: the old one is not "current"
    assert rec.current is None


# --- ETTR ---------------------------------------------------------------------------------------


def test_fault_free_run_has_ettr_of_about_one() -> None:
    samples = [(s, T0 + 10 * s) for s in range(101)]
    rec = record(attempt=1, attempts=[attempt(1, samples, resumed_from=0)], first_started_at=T0)
    assert kept_seconds(rec, T0 + 1000) == 1000.0
    assert ettr(rec, T0 + 1000) == 1.0
    assert ettr(rec, T0 + 1010) == pytest.approx(1000 / 1010, abs=1e-4)


def test_a_restart_that_redoes_steps_costs_the_redone_and_the_down_time() -> None:
    # attempt 1: steps 0..60 at 10 s each (t 0..600); crash; checkpoint was at step 50,
    # so steps 51..60 (100 s) are lost. Attempt 2 starts at t=650 resuming from 50 and
    # runs steps 51..100 (t 660..1150).
    first = attempt(1, [(s, T0 + 10 * s) for s in range(61)], resumed_from=0)
    second = attempt(2, [(s, T0 + 650 + 10 * (s - 50)) for s in range(51, 101)], resumed_from=50)
    rec = record(attempt=2, attempts=[first, second], first_started_at=T0)
    # kept: attempt 1's steps 1..50 (500 s) + attempt 2's steps 51..100 (500 s), each at
    # its attempt's measured 10 s a step
    assert kept_seconds(rec, T0 + 1150) == pytest.approx(500 + 500)
    assert ettr(rec, T0 + 1150) == pytest.approx(1000 / 1150, abs=1e-4)
    assert ettr(rec, T0 + 1150) < 1.0


def test_kept_interpolates_between_thinned_samples() -> None:
    first = attempt(1, [(0, T0), (100, T0 + 1000)], resumed_from=0)
    second = attempt(2, [(25, T0 + 2000), (30, T0 + 2050)], resumed_from=25)
    rec = record(attempt=2, attempts=[first, second], first_started_at=T0)
    assert kept_seconds(rec, T0 + 2050) == pytest.approx(250 + 50)


def test_a_restart_without_a_checkpoint_keeps_nothing_of_the_first_attempt() -> None:
    first = attempt(1, [(0, T0), (10, T0 + 100)], resumed_from=0)
    second = attempt(2, [(0, T0 + 200), (10, T0 + 300)], resumed_from=0)
    rec = record(attempt=2, attempts=[first, second], first_started_at=T0)
    assert kept_seconds(rec, T0 + 300) == pytest.approx(100)


def test_ettr_before_the_first_start_is_none() -> None:
    assert ettr(record(), T0) is None
    assert ettr(record(first_started_at=T0), T0) is None


# --- the view and the store's round trip --------------------------------------------------------


def test_job_view_and_round_trip() -> None:
    rec = record(attempt=1, attempts=[attempt(1, [(0, T0), (10, T0 + 100)], resumed_from=0)], state=JobState.RUNNING,
                 first_started_at=T0, step=10, failovers=[Failover(from_pool="nvidia", to_pool="ascend", at=T0 - 5,
                                                                     step=3, rule="operator")],
                 decisions=[{"action": "restart", "at": T0 - 50, "counts": ({"observed": 1},)}])
    view = job_view(rec, T0 + 100)
    assert view["state"] == "running" and view["nodes"] == ["a1"] and view["master"] == "a1:29500"
    assert view["ettr"] == 1.0 and view["waiting_for"] is None and view["world_size"] == 1
    assert view["failovers"][0]["rule"] == "operator"
    back = msgspec.json.decode(msgspec.json.encode(rec), type=JobRecord)
    assert back.state is JobState.RUNNING and back.attempts[0].nodes[0].ranks[0].chips == (0,)
    assert job_view(back, T0 + 100) == msgspec.json.decode(msgspec.json.encode(view))
