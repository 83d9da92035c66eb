"""Pure: ranks.json round trips and refuses damage; the wrapper's status file parses or
says it is not one."""

from __future__ import annotations

import pytest

from agents import rankstate
from agents.rankstate import AttemptRecord, RankRecord, RankState, RankStateError
from agents.rankwrap import StatusError, encode_status, parse_status, pid_path, read_pid, read_status


def record(**kw) -> RankRecord:
    defaults = dict(job="j1", attempt=2, rank=3, local_rank=1, world_size=8, local_world_size=4, wrapper_pid=100,
                    wrapper_created=1700000000.25, pid=101, created=1700000000.5, log_path="/w/logs/j1/attempt-2/rank-3.log",
                    status_path="/w/logs/j1/attempt-2/rank-3.status", chips=(2, 3), argv=("python", "train.py"),
                    stop_requested=True, hang_limits=(120.0, 600.0, 300.0))
    defaults.update(kw)
    return RankRecord(**defaults)


def test_ranks_json_round_trips():
    state = RankState([record(), record(job="j2", attempt=0, rank=0, hang_limits=None, chips=())],
                      {"j1": AttemptRecord(2, 29500, {3: 101}), "j2": AttemptRecord(1, 0, {})})
    back = rankstate.loads(rankstate.dumps(state))
    assert back == state


def test_ranks_json_saves_atomically_and_loads_empty_when_absent(tmp_path):
    path = tmp_path / "ranks.json"
    assert rankstate.load(path) == RankState()
    state = RankState([record()], {"j1": AttemptRecord(2, 29500, {3: 101})})
    rankstate.save(path, state)
    assert rankstate.load(path) == state
    assert [p.name for p in tmp_path.iterdir()] == ["ranks.json"], "no temp file left"


def test_only_the_newest_jobs_attempts_are_remembered():
    attempts = {f"j{i}": AttemptRecord(1, 0, {}) for i in range(rankstate.MAX_JOBS_REMEMBERED + 5)}
    back = rankstate.loads(rankstate.dumps(RankState([], attempts)))
    assert len(back.attempts) == rankstate.MAX_JOBS_REMEMBERED and "j0" not in back.attempts


@pytest.mark.parametrize("text", ["", "{", "[]", '{"format": 2, "ranks": []}', '{"format": 1}',
                                  '{"format": 1, "ranks": [{"job": "j1"}]}',
                                  '{"format": 1, "ranks": [], "attempts": {"j": {"attempt": "x"}}}'])
def test_damaged_ranks_json_is_refused_not_half_trusted(text):
    with pytest.raises(RankStateError):
        rankstate.loads(text)


def test_wrapper_status_parses():
    assert parse_status(encode_status(42, 0)) == (42, 0)
    assert parse_status(encode_status(42, -9)) == (42, -9)
    assert parse_status('{"pid": 7, "returncode": 3}') == (7, 3)


@pytest.mark.parametrize("text", ["", "nope", "[1]", '{"pid": 0, "returncode": 0}', '{"pid": 5}',
                                  '{"pid": 5, "returncode": true}', '{"pid": 5, "returncode": 999}',
                                  '{"pid": "5", "returncode": 0}'])
def test_a_damaged_status_is_no_status(text, tmp_path):
    with pytest.raises(StatusError):
        parse_status(text)
    status = tmp_path / "rank-0.status"
    status.write_text(text)
    assert read_status(status) is None


def test_status_and_pid_files_absent_say_nothing(tmp_path):
    status = tmp_path / "rank-0.status"
    assert read_status(status) is None and read_pid(status) is None
    pid_path(status).write_text("1234\n")
    assert read_pid(status) == 1234
    pid_path(status).write_text("-3\n")
    assert read_pid(status) is None


def test_the_rank_wrapper_names_the_agent_as_the_ranks_one_reader():
    """PR_SET_PTRACER(agent) in the rank before exec (Yama ptrace_scope=1 lets only
    ancestors read a process; py-spy is the agent's child). Without Yama the call fails
    harmlessly; it must never stop the rank from starting."""
    import os
    import sys

    from agents.rankwrap import reader_declaration

    declare = reader_declaration(os.getpid())
    if sys.platform.startswith("linux"):
        assert callable(declare)
        declare()  # EINVAL without Yama, accepted with it: never raises
    assert reader_declaration(1) is None  # init is never a reader to declare
