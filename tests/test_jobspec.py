"""The job file (`supervisor/core/jobspec.py`): strict, every problem at once, by line."""

from __future__ import annotations

from pathlib import Path

import pytest

from supervisor.core.jobspec import JobSpec, JobSpecError, PoolShape, load_jobspec

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "gpt-job.yaml"

GOOD = b"""\
name: gpt
command: [python, -m, train, --steps, 3000]
workdir: /w
checkpoint_dir: /ck
pools:
  ascend: {nodes: 2, ranks_per_node: 1}
  nvidia: {nodes: 1, ranks_per_node: 2}
env:
  ascend: {HCCL_CONNECT_TIMEOUT: "120"}
"""


def problems(data: bytes) -> list[str]:
    with pytest.raises(JobSpecError) as err:
        load_jobspec(data, "job.yaml")
    return [str(p) for p in err.value.problems]


def test_the_example_job_file_loads() -> None:
    spec = load_jobspec(EXAMPLE.read_bytes(), str(EXAMPLE))
    assert spec.name == "gpt" and spec.policy == "default"
    assert spec.pools == {"ascend": PoolShape(nodes=2, ranks_per_node=1), "nvidia": PoolShape(nodes=1, ranks_per_node=2)}
    assert spec.env == {"ascend": {"HCCL_CONNECT_TIMEOUT": "120"}}
    assert spec.command[:3] == ("python", "-m", "agents.examples.train_gpt")


def test_a_good_file() -> None:
    spec = load_jobspec(GOOD, "job.yaml")
    assert spec == JobSpec(name="gpt", command=("python", "-m", "train", "--steps", "3000"), workdir="/w",
                           checkpoint_dir="/ck", policy="default",
                           pools={"ascend": PoolShape(nodes=2, ranks_per_node=1),
                                  "nvidia": PoolShape(nodes=1, ranks_per_node=2)},
                           env={"ascend": {"HCCL_CONNECT_TIMEOUT": "120"}})
    assert spec.pools["nvidia"].world_size == 2


def test_unknown_and_missing_keys() -> None:
    found = problems(b"name: gpt\ncommand: [python]\nworkdir: /w\npolcy: default\n")
    assert any(p.startswith("job.yaml:4:") and "polcy" in p for p in found), found
    assert any("checkpoint_dir" in p for p in found) and any("pools" in p for p in found), found


def test_every_problem_is_reported_at_once_by_line() -> None:
    data = b"""\
name: GPT!
command: []
workdir: /w
checkpoint_dir: /ck
pools:
  ascend: {nodes: 0, ranks_per_node: 1}
  nvidia: {nodes: 1, ranks_per_node: 2, gpus: 8}
env:
  tpu: {X: "1"}
  nvidia: {"1BAD": "x", OK: [3]}
"""
    found = problems(data)
    lines = [int(p.split(":")[1]) for p in found]
    assert lines == sorted(lines)
    joined = "\n".join(found)
    assert "job.yaml:1:" in joined and "name 'GPT!'" in joined
    assert "job.yaml:2:" in joined and "command must be a non-empty list" in joined
    assert "job.yaml:6:" in joined and "nodes must be ≥ 1" in joined
    assert "job.yaml:7:" in joined and "gpus" in joined
    assert any(p.startswith("job.yaml:9:") and "tpu" in p for p in found), found
    assert any(p.startswith("job.yaml:10:") and "'1BAD' is not a variable name" in p for p in found), found
    assert any(p.startswith("job.yaml:10:") and "quote numbers" in p for p in found), found


def test_env_for_an_undeclared_pool() -> None:
    found = problems(GOOD.replace(b"  ascend: {HCCL", b"  tpu: {HCCL"))
    assert len(found) == 1 and found[0].startswith("job.yaml:9:") and "tpu" in found[0]


def test_env_of_a_pool_with_a_bad_shape_is_not_called_undeclared() -> None:
    """A pool whose shape is wrong is still declared: its env is not a second problem."""
    found = problems(GOOD.replace(b"ascend: {nodes: 2,", b"ascend: {nodes: 0,"))
    assert len(found) == 1 and found[0].startswith("job.yaml:6:"), found


@pytest.mark.parametrize("bad", [
    b"pools: {}\n", b"pools: [ascend]\n", b"pools:\n  ascend: {nodes: 1}\n",
    b"pools:\n  ascend: {nodes: 1, ranks_per_node: 257}\n", b"pools:\n  ascend: {nodes: 100001, ranks_per_node: 1}\n",
    b"pools:\n  ascend: {nodes: true, ranks_per_node: 1}\n", b"pools:\n  'bad pool': {nodes: 1, ranks_per_node: 1}\n",
])
def test_bad_pools(bad: bytes) -> None:
    head = GOOD.split(b"pools:")[0]
    found = problems(head + bad)
    assert found and all(p.startswith("job.yaml:") for p in found)


@pytest.mark.parametrize("data", [b"", b"just a string\n", b"- a\n- list\n", b"\x00\x01binary"])
def test_not_a_job_file(data: bytes) -> None:
    assert problems(data)


def test_warm_standby_is_off_unless_asked_and_must_be_a_boolean() -> None:
    assert load_jobspec(GOOD, "job.yaml").warm_standby is False
    assert load_jobspec(GOOD + b"warm_standby: true\n", "job.yaml").warm_standby is True
    [problem] = problems(GOOD + b"warm_standby: yes please\n")
    assert "warm_standby must be true or false" in problem
