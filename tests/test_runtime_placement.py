"""agents.runtime.placement.device() and agents.runtime.env.assignment(): what a rank was
told, and whether this machine can do it. Explicit Assignments and dicts, no real env.
"""

from __future__ import annotations

import sys

import pytest
import torch

from agents.runtime import placement
from agents.runtime.env import ACCELERATORS, Assignment, AssignmentError, assignment
from agents.runtime.placement import Placement, device


def assigned(accelerator: str | None, local_rank: int = 0) -> Assignment:
    return Assignment(
        accelerator=accelerator,
        rank=local_rank,
        local_rank=local_rank,
        world_size=4,
        local_world_size=4,
        heartbeat=None,
        ckpt_dir=None,
        job=None,
        node=None,
    )


@pytest.fixture
def cpu_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """This machine as the tests assume it: no torch_npu, no CUDA (even where there is)."""
    monkeypatch.setitem(sys.modules, "torch_npu", None)  # makes `import torch_npu` fail
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.mark.parametrize("accelerator", ["cpu", "sim-ascend", "sim-nvidia"])
def test_cpu_and_simulated_accelerators_use_cpu_and_gloo(cpu_only: None, accelerator: str) -> None:
    assert device(assigned(accelerator, local_rank=3)) == Placement(torch.device("cpu"), "gloo", accelerator)


def test_ascend_without_torch_npu_says_what_to_install(cpu_only: None) -> None:
    with pytest.raises(AssignmentError) as info:
        device(assigned("ascend"))
    message = str(info.value)
    assert "torch_npu" in message
    assert "TRAINGUARD_ACCELERATOR=ascend" in message


def test_nvidia_without_cuda_names_cuda(cpu_only: None) -> None:
    with pytest.raises(AssignmentError) as info:
        device(assigned("nvidia"))
    message = str(info.value)
    assert "CUDA" in message
    assert "TRAINGUARD_ACCELERATOR=nvidia" in message


def test_nvidia_picks_the_local_rank_modulo_the_visible_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert device(assigned("nvidia", local_rank=3)) == Placement(torch.device("cuda", 1), "nccl", "nvidia")


def test_unassigned_accelerator_is_detected_as_cpu_here(cpu_only: None) -> None:
    assert device(assigned(None)) == Placement(torch.device("cpu"), "gloo", "cpu")


def test_unassigned_accelerator_prefers_cuda_when_present(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch_npu", None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert device(assigned(None)).backend == "nccl"


def test_device_without_an_argument_reads_the_environment(cpu_only: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAINGUARD_ACCELERATOR", "sim-nvidia")
    assert device() == Placement(torch.device("cpu"), "gloo", "sim-nvidia")


def test_init_distributed_alone_makes_no_process_group(cpu_only: None, monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "TRAINGUARD_ACCELERATOR"):
        monkeypatch.delenv(key, raising=False)
    assert placement.init_distributed() == Placement(torch.device("cpu"), "gloo", "cpu")
    assert not torch.distributed.is_initialized()


# --- env.assignment() -----------------------------------------------------------------------


def test_assignment_reads_torchrun_and_trainguard_variables() -> None:
    env = {
        "RANK": "5",
        "LOCAL_RANK": "1",
        "WORLD_SIZE": "8",
        "LOCAL_WORLD_SIZE": "4",
        "TRAINGUARD_ACCELERATOR": "sim-ascend",
        "TRAINGUARD_HEARTBEAT": "ipc:///run/trainguard/hb",
        "TRAINGUARD_CKPT_DIR": "/ckpt/job1",
        "TRAINGUARD_JOB": "job1",
        "TRAINGUARD_NODE": "node-a",
    }
    assert assignment(env) == Assignment(
        accelerator="sim-ascend",
        rank=5,
        local_rank=1,
        world_size=8,
        local_world_size=4,
        heartbeat="ipc:///run/trainguard/hb",
        ckpt_dir="/ckpt/job1",
        job="job1",
        node="node-a",
    )


@pytest.mark.parametrize("env", [{}, {key: "" for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE",
                                                           "TRAINGUARD_ACCELERATOR", "TRAINGUARD_HEARTBEAT",
                                                           "TRAINGUARD_CKPT_DIR", "TRAINGUARD_JOB",
                                                           "TRAINGUARD_NODE")}],
                         ids=["absent", "empty"])
def test_assignment_defaults_outside_any_launcher(env: dict[str, str]) -> None:
    assert assignment(env) == Assignment(None, 0, 0, 1, 1, None, None, None, None)


@pytest.mark.parametrize("accelerator", ACCELERATORS)
def test_every_known_accelerator_is_accepted(accelerator: str) -> None:
    assert assignment({"TRAINGUARD_ACCELERATOR": accelerator}).accelerator == accelerator


@pytest.mark.parametrize("value", ["gpu", "CUDA", "Ascend", "npu"])
def test_an_unknown_accelerator_names_the_variable(value: str) -> None:
    with pytest.raises(AssignmentError) as info:
        assignment({"TRAINGUARD_ACCELERATOR": value})
    assert "TRAINGUARD_ACCELERATOR" in str(info.value) and repr(value) in str(info.value)


@pytest.mark.parametrize("key", ["RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE"])
@pytest.mark.parametrize("value", ["one", "1.5", "0x2"])
def test_a_non_integer_count_names_the_variable(key: str, value: str) -> None:
    with pytest.raises(AssignmentError) as info:
        assignment({key: value})
    assert str(info.value).startswith(f"{key}={value!r}")
