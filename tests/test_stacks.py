"""Reading where a stuck rank is from its py-spy dump (`agents/watchers/stacks.py`), on
dumps py-spy 0.4 took of real gloo ranks (tests/fixtures/stacks)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agents.watchers.stacks import FRAME_CHARS, parse_dump, read_stack

pytestmark = pytest.mark.timeout(10)

STACKS = Path(__file__).parent / "fixtures" / "stacks"


@pytest.mark.parametrize("name", ["all-reduce-waiting.txt", "ddp-forward-waiting.txt",
                                  "ddp-forward-waiting-native.txt"])
def test_a_rank_waiting_for_its_peers_is_in_a_collective(name: str) -> None:
    assert read_stack((STACKS / name).read_text()).where == "collective"


@pytest.mark.parametrize("name", ["sleeping.txt", "sleeping-native.txt"])
def test_a_rank_stuck_in_its_own_code_is_elsewhere(name: str) -> None:
    reading = read_stack((STACKS / name).read_text())
    assert reading.where == "elsewhere"
    assert reading.summary.startswith("MainThread (idle): ")


def test_the_summary_is_the_innermost_python_frames_and_native_frames_are_read() -> None:
    text = (STACKS / "ddp-forward-waiting-native.txt").read_text()
    [main] = parse_dump(text)
    assert main.name == "MainThread" and main.status == "idle"
    assert main.frames[0].function == "pthread_cond_wait"  # the unsymbolised address is dropped
    assert any(f.function == "c10d::Work::wait" and f.native for f in main.frames)
    summary = read_stack(text).summary
    assert summary.startswith("MainThread (idle): DistributedDataParallel._pre_forward "
                              "(torch/nn/parallel/distributed.py:1775) <- DistributedDataParallel.forward")
    assert all(len(str(f)) <= FRAME_CHARS for f in main.frames)  # pybind11's kilobyte names are cut


def test_backward_without_native_frames_cannot_tell_computing_from_waiting() -> None:
    text = ('Thread 7 (active+gil): "MainThread"\n'
            "    _engine_run_backward (torch/autograd/graph.py:829)\n"
            "    backward (torch/autograd/__init__.py:354)\n"
            "    backward (torch/_tensor.py:626)\n"
            "    main (train.py:40)\n")
    reading = read_stack(text)
    assert reading.where == "unknown" and "DDP" in reading.summary


def test_the_main_thread_decides_and_other_threads_are_parsed() -> None:
    text = ('Thread 0x7F01 (idle): "Thread-1 (loader)"\n'
            "    wait (threading.py:320)\n"
            "        Arguments:\n"
            "            self: <Condition at 0x7f>\n"
            'Thread 0x7F00 (idle): "MainThread"\n'
            "    barrier (torch/distributed/distributed_c10d.py:4100)\n"
            "    main (train.py:10)\n")
    threads = parse_dump(text)
    assert [t.name for t in threads] == ["Thread-1 (loader)", "MainThread"]
    assert [f.function for f in threads[0].frames] == ["wait"]  # the locals py-spy indents are skipped
    assert read_stack(text).where == "collective"


@pytest.mark.parametrize("text", ["", "Error: Permission Denied\n", "Thread 1 (idle): \"MainThread\"\n"])
def test_no_usable_dump_is_unknown(text: str) -> None:
    assert read_stack(text).where == "unknown"


def test_a_rank_importing_torch_distributed_is_starting_up_not_waiting() -> None:
    """Seen on a 4-rank job starting on a loaded machine: the imports of torch.distributed
    run its functions too; that is startup, not a collective."""
    text = ('Thread 23551 (active+gil): "MainThread"\n'
            "    _get_pointwise_ops_from_tag (torch/distributed/tensor/_ops/_pointwise_ops.py:566)\n"
            "    <module> (torch/distributed/tensor/_ops/_pointwise_ops.py:574)\n"
            "    _call_with_frames_removed (<frozen importlib._bootstrap>:241)\n"
            "    _find_and_load (<frozen importlib._bootstrap>:1176)\n"
            "    <module> (train_gpt.py:20)\n")
    reading = read_stack(text)
    assert reading.where == "elsewhere" and reading.summary.endswith("(importing modules: starting up)")
