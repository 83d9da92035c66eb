"""agents.runtime.checkpoint: atomic, verified, asynchronous checkpoints, in process.

Tiny real objects (nn.Linear + AdamW + LambdaLR + ResumableSampler) and Checkpointers
built with explicit Assignments, so nothing depends on the environment. Several ranks of
one job are several Checkpointers on the same directory. Waits poll with deadlines.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import hashlib
import io
import json
import os
import random
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import torch
import torch.nn as nn
import xxhash
from torch.optim.lr_scheduler import LambdaLR

from agents.runtime import checkpoint, progress, tensorfile
from agents.runtime.checkpoint import Checkpointer, CheckpointError, Restored, verify
from agents.runtime.env import Assignment, AssignmentError
from agents.runtime.sampler import ResumableSampler
from supervisor.cli.localcluster import wait_for
from tests.jobsupport import json_events as events

try:
    import numpy
except ImportError:  # the runtime treats numpy as optional; so do these tests
    numpy = None

PAGE = 4096


# --- helpers -------------------------------------------------------------------------


def assigned(rank: int = 0, world_size: int = 1, accelerator: str | None = "cpu") -> Assignment:
    return Assignment(
        accelerator=accelerator,
        rank=rank,
        local_rank=rank,
        world_size=world_size,
        local_world_size=world_size,
        heartbeat=None,
        ckpt_dir=None,
        job=None,
        node=None,
    )


def _decay(step: int) -> float:
    return 1.0 / (1 + step)


@dataclass
class Run:
    """One rank's training state."""

    model: nn.Linear
    optimizer: torch.optim.AdamW
    scheduler: LambdaLR
    sampler: ResumableSampler

    def parts(self) -> dict[str, Any]:
        return {"model": self.model, "optimizer": self.optimizer, "scheduler": self.scheduler, "sampler": self.sampler}

    def train(self, steps: int) -> None:
        for _ in range(steps):
            rows = self.sampler.next_batch()
            x = torch.randn(len(rows), self.model.in_features)
            loss = self.model(x).pow(2).mean()
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            self.scheduler.step()


def make_run(seed: int, width: int = 8, out: int = 4, rank: int = 0, world: int = 1, batch: int = 4) -> Run:
    torch.manual_seed(seed)
    model = nn.Linear(width, out)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    return Run(model, optimizer, LambdaLR(optimizer, _decay), ResumableSampler(48, batch, rank, world, seed=7))


def draws() -> tuple[Any, ...]:
    """The next value of every RNG stream a checkpoint restores."""
    return (
        random.random(),
        torch.rand(4).tolist(),
        numpy.random.rand(3).tolist() if numpy is not None else None,
    )


def scramble_rng(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    if numpy is not None:
        numpy.random.seed(seed)


def wait_until(condition: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.005)


def same_tensors(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def chain(exc: BaseException | None) -> Iterator[BaseException]:
    while exc is not None:
        yield exc
        exc = exc.__cause__ or exc.__context__


def per_mib(data: bytes) -> str:
    """The file checksum, by its definition: XXH3-128 of the XXH3-128 digests of each MiB."""
    mib = 1 << 20
    return xxhash.xxh3_128(b"".join(xxhash.xxh3_128(data[at:at + mib]).digest()
                                    for at in range(0, len(data), mib))).hexdigest()


def step_dir(root: Path, step: int) -> Path:
    return root / f"step-{step:08d}"


def read_state(final: Path, name: str = "state.ckpt") -> Any:
    """A committed checkpoint's file, read and checked as load_latest reads it."""
    meta = json.loads((final / "manifest.json").read_text())["files"][name]
    return tensorfile.read(final / name, meta["bytes"], meta["xxh3_128_per_mib"])


@pytest.fixture(autouse=True)
def no_agent(monkeypatch: pytest.MonkeyPatch) -> None:
    """save() sends a heartbeat: make sure it goes nowhere."""
    monkeypatch.delenv("TRAINGUARD_HEARTBEAT", raising=False)
    progress.reset()


# --- a complete save and an exact restore ----------------------------------------------


def test_save_writes_a_committed_verified_directory(tmp_path: Path) -> None:
    run = make_run(1)
    run.train(2)
    ckpt = Checkpointer(tmp_path, assigned=assigned())
    ckpt.save(5, **run.parts())
    assert ckpt.wait() is None
    assert ckpt.last_error is None

    final = step_dir(tmp_path, 5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000005"]
    assert sorted(p.name for p in final.iterdir()) == ["manifest.json", "rank-0.ckpt", "state.ckpt"]
    manifest = json.loads((final / "manifest.json").read_text())
    assert manifest["format"] == checkpoint.FORMAT
    assert manifest["step"] == 5
    assert manifest["world_size"] == 1
    assert manifest["accelerator"] == "cpu"
    assert sorted(manifest["files"]) == ["rank-0.ckpt", "state.ckpt"]
    for name, meta in manifest["files"].items():
        data = (final / name).read_bytes()
        assert meta == {"xxh3_128_per_mib": per_mib(data), "bytes": len(data)}
    assert verify(final) is None
    assert ckpt.committed() == [(5, final)]


def test_load_latest_restores_everything_into_fresh_objects(tmp_path: Path) -> None:
    scramble_rng(11)
    run = make_run(1)
    run.train(3)
    writer = Checkpointer(tmp_path, assigned=assigned())
    writer.save(5, **run.parts(), extra={"tokens": 1234, "ema": torch.ones(2)})
    assert writer.wait() is None

    # What the original run would do next.
    expected_next = draws()
    expected_batch = run.sampler.next_batch()
    model_state = {k: v.clone() for k, v in run.model.state_dict().items()}
    opt_state = run.optimizer.state_dict()
    lr = run.scheduler.get_last_lr()

    scramble_rng(99)  # a new process: other seeds, other weights
    fresh = make_run(2)
    assert not same_tensors(fresh.model.state_dict(), model_state)
    restored = Checkpointer(tmp_path, assigned=assigned()).load_latest(**fresh.parts())  # as after a restart

    assert isinstance(restored, Restored)
    assert (restored.step, restored.exact, restored.world_size, restored.accelerator) == (5, True, 1, "cpu")
    assert restored.path == step_dir(tmp_path, 5)
    assert restored.extra["tokens"] == 1234 and torch.equal(restored.extra["ema"], torch.ones(2))
    assert draws() == expected_next
    assert fresh.sampler.next_batch() == expected_batch
    assert same_tensors(fresh.model.state_dict(), model_state)
    assert fresh.scheduler.get_last_lr() == lr
    got = fresh.optimizer.state_dict()
    assert got["param_groups"] == opt_state["param_groups"]
    for key, state in opt_state["state"].items():
        assert same_tensors(got["state"][key], state)


def test_rng_restore_covers_numpy_when_installed(tmp_path: Path) -> None:
    if numpy is None:
        pytest.skip("numpy is not installed")
    ckpt = Checkpointer(tmp_path, assigned=assigned())
    numpy.random.seed(5)
    ckpt.save(1, model=nn.Linear(2, 2))
    assert ckpt.wait() is None
    expected = numpy.random.rand(5).tolist()
    numpy.random.seed(6)
    ckpt.load_latest(model=nn.Linear(2, 2))
    assert numpy.random.rand(5).tolist() == expected


def test_load_latest_with_no_checkpoint_returns_none(tmp_path: Path) -> None:
    assert Checkpointer(tmp_path / "new", assigned=assigned()).load_latest(model=nn.Linear(2, 2)) is None


def test_saving_the_same_step_again_replaces_it(tmp_path: Path) -> None:
    ckpt = Checkpointer(tmp_path, assigned=assigned())
    model = nn.Linear(2, 2)
    ckpt.save(4, model=model, extra={"n": 1})
    assert ckpt.wait() is None
    ckpt.save(4, model=model, extra={"n": 2})
    assert ckpt.wait() is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000004"]
    assert ckpt.load_latest(model=nn.Linear(2, 2)).extra == {"n": 2}


def test_constructor_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="keep"):
        Checkpointer(tmp_path, keep=0, assigned=assigned())
    with pytest.raises(AssignmentError, match="TRAINGUARD_CKPT_DIR"):
        Checkpointer(None, assigned=assigned())


# --- asynchronous, snapshotting, one write at a time ------------------------------------


def test_save_is_asynchronous_snapshots_and_serialises(
    tmp_path: Path, capfd, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The background writer notes each state file it starts, with the steps committed at
    # that moment, and is held inside step 1's until the gate opens.
    gate = threading.Event()
    log: list[tuple[str, int, list[int]]] = []
    real_write = tensorfile.write

    def held_write(path: Path, snap: tensorfile.Snapshot, over: int | None = None) -> dict[str, Any]:
        if path.name == "state.ckpt":
            step = int(path.parent.name.split("-")[1].split(".")[0])
            log.append(("write", step, [s for s, _ in ckpt.committed()]))
            if step == 1:
                assert gate.wait(20), "the test never opened the gate"
        return real_write(path, snap, over)

    monkeypatch.setattr(tensorfile, "write", held_write)
    run = make_run(3)
    run.train(1)
    at_save = {k: v.clone() for k, v in run.model.state_dict().items()}
    ckpt = Checkpointer(tmp_path, assigned=assigned())
    ckpt.save(1, **run.parts())
    # save() returned while the writer is still held at the gate, inside step 1's state file.
    wait_for(lambda: log, 20, "the writer to reach step 1's state file")
    assert log == [("write", 1, [])]
    assert ckpt.committed() == []
    assert 0 < ckpt.last_stall < 5

    # Training goes on and changes the live tensors in place.
    with torch.no_grad():
        for p in run.model.parameters():
            p.add_(100.0)
    run.train(1)
    after = {k: v.clone() for k, v in run.model.state_dict().items()}

    second = threading.Thread(target=lambda: ckpt.save(2, **run.parts()))
    second.start()
    second.join(0.3)
    assert second.is_alive(), "the second save did not wait for the first"
    assert len(log) == 1
    gate.set()
    second.join(20)
    assert not second.is_alive()
    assert ckpt.wait() is None

    assert log == [("write", 1, []), ("write", 2, [1])]  # step 2 was written after step 1 was committed
    assert [s for s, _ in ckpt.committed()] == [1, 2]
    assert same_tensors(read_state(step_dir(tmp_path, 1))["model"], at_save)
    assert same_tensors(read_state(step_dir(tmp_path, 2))["model"], after)
    saved = events(capfd.readouterr().err, "runtime.checkpoint_saved")
    assert [e["step"] for e in saved] == [1, 2]
    assert all(e["stall_s"] >= 0 and e["bytes"] > 0 for e in saved)


# --- host buffers, the file format, integrity ----------------------------------------------


def test_later_saves_reuse_the_host_buffers(tmp_path: Path, capfd) -> None:
    run = make_run(1, width=64, out=64)
    run.train(1)
    ckpt = Checkpointer(tmp_path, keep=3, assigned=assigned())
    expected = []
    for step in (1, 2, 3):
        run.train(1)
        ckpt.save(step, **run.parts())
        assert ckpt.wait() is None
        expected.append({k: v.clone() for k, v in run.model.state_dict().items()})

    saved = events(capfd.readouterr().err, "runtime.checkpoint_saved")
    # model (64x64 + 64) and AdamW's two moments: 3 copies, float32
    assert saved[0]["new_buffer_bytes"] >= 3 * (64 * 64 + 64) * 4
    assert [e["new_buffer_bytes"] for e in saved[1:]] == [0, 0]
    assert all(e["checksum"] == "xxh3_128_per_mib" and e["mb_per_s"] > 0 for e in saved)
    # Each file holds its own step's values: a reused buffer never carries a later step
    # into an earlier checkpoint.
    for step, values in zip((1, 2, 3), expected):
        assert same_tensors(read_state(step_dir(tmp_path, step))["model"], values)
    assert ckpt.close() is None


def test_host_buffers_are_kept_by_shape_and_the_unused_ones_freed() -> None:
    pool = tensorfile.HostBuffers()
    square = (torch.float32, (4, 4), (4, 1), False)
    short = (torch.bfloat16, (3,), (1,), False)
    pool.begin()
    a, b = pool.take(square), pool.take(short)
    pool.end()
    assert pool.new_bytes == 4 * 4 * 4 + 3 * 2
    pool.begin()
    assert pool.take(square) is a  # the same memory, not a copy of it
    pool.end()
    assert pool.new_bytes == 0
    pool.begin()  # the last save took no bf16 buffer: it was freed, a new one is made
    again = pool.take(short)
    pool.end()
    assert again is not b and pool.new_bytes == 6 and (again.dtype, again.shape) == (torch.bfloat16, (3,))


class _Unpickled:
    """An `extra` value that notes every time it is unpickled."""

    seen: list[int] = []

    def __init__(self, step: int) -> None:
        self.step = step

    def __reduce__(self) -> tuple:
        return (_note_unpickled, (self.step,))


def _note_unpickled(step: int) -> int:
    _Unpickled.seen.append(step)
    return step


@pytest.mark.parametrize("where", ["magic", "table length", "table", "objects", "tensor bytes", "last byte"])
def test_a_byte_changed_anywhere_is_caught_before_anything_is_unpickled(tmp_path: Path, capfd, where: str) -> None:
    ckpt = Checkpointer(tmp_path, assigned=assigned())
    model = nn.Linear(32, 32)
    for step in (1, 2):
        with torch.no_grad():
            model.weight.fill_(step)
        ckpt.save(step, model=model, extra={"who": _Unpickled(step)})
        assert ckpt.wait() is None
    state = step_dir(tmp_path, 2) / "state.ckpt"
    data = bytearray(state.read_bytes())
    table_len = int.from_bytes(data[8:16], "little")
    table = json.loads(data[16:16 + table_len])
    at = {
        "magic": 0,
        "table length": 9,
        "table": 16 + table_len // 2,
        "objects": 16 + table_len + table["objects"] // 2,
        "tensor bytes": len(data) - 32 * 4 - 32 * 32 * 4 // 2,
        "last byte": len(data) - 1,
    }[where]
    data[at] ^= 0x01
    state.write_bytes(bytes(data))
    _Unpickled.seen.clear()
    capfd.readouterr()

    fresh = nn.Linear(32, 32)
    restored = Checkpointer(tmp_path, assigned=assigned()).load_latest(model=fresh)

    assert restored is not None and restored.step == 1 and restored.extra == {"who": 1}
    assert torch.all(fresh.weight == 1)
    assert _Unpickled.seen == [1], "the damaged file was unpickled"
    skipped = events(capfd.readouterr().err, "runtime.checkpoint_skipped")
    assert len(skipped) == 1 and skipped[0]["step"] == 2
    assert "state.ckpt" in skipped[0]["reason"] and ("corrupted" in skipped[0]["reason"] or "not a" in skipped[0]["reason"])


def test_tensors_of_every_layout_round_trip(tmp_path: Path) -> None:
    big = torch.randn(3 * tensorfile.CHUNK // 4 // 2)  # 1.5 chunks: written and read in pieces
    base = torch.arange(24, dtype=torch.float32)
    tied = torch.randn(5, 3)
    param = nn.Parameter(torch.randn(2, 2))
    state = {
        "bf16": torch.randn(7, 3).to(torch.bfloat16),
        "channels_last": torch.randn(2, 3, 4, 5).to(memory_format=torch.channels_last),
        "strided_view": base[::2],
        "tied": [tied, tied.detach()],  # two objects, one view (as tied weights in a state_dict)
        "reshaped": tied.view(15),
        "param": param,
        "scalar": torch.tensor(3.5),
        "empty": torch.empty(0, 4),
        "bools": torch.tensor([True, False, True]),
        "sparse": torch.eye(3).to_sparse(),
        "big": big,
        "plain": {"lr": 0.1, "betas": (0.9, 0.99), "name": "adamw"},
    }
    pool = tensorfile.HostBuffers()
    pool.begin()
    snap = tensorfile.snapshot(state, pool)
    pool.end()
    meta = tensorfile.write(tmp_path / "f", snap)
    assert meta["bytes"] == (tmp_path / "f").stat().st_size
    got = tensorfile.read(tmp_path / "f", meta["bytes"], meta["xxh3_128_per_mib"])

    for key in ("bf16", "channels_last", "strided_view", "scalar", "empty", "bools", "big"):
        assert got[key].dtype == state[key].dtype and torch.equal(got[key], state[key]), key
    assert got["channels_last"].stride() == state["channels_last"].stride()
    assert got["tied"][0] is got["tied"][1] and torch.equal(got["tied"][0], tied)
    assert torch.equal(got["reshaped"], tied.view(15))
    assert len(snap.tensors) == 10  # the tied pair shares one buffer; the sparse one is pickled
    assert isinstance(got["param"], nn.Parameter) and got["param"].requires_grad and torch.equal(got["param"], param)
    assert torch.equal(got["sparse"].to_dense(), torch.eye(3))
    assert got["plain"] == state["plain"]


def test_a_state_that_cannot_be_pickled_is_reported_and_training_goes_on(tmp_path: Path, capfd) -> None:
    ckpt = Checkpointer(tmp_path, assigned=assigned())
    model = nn.Linear(2, 2)
    ckpt.save(1, model=model)
    assert ckpt.wait() is None
    capfd.readouterr()

    ckpt.save(2, model=model, extra={"callback": lambda: None})  # returns: no exception in the loop

    assert ckpt.wait() is not None and not ckpt.requested
    failed = events(capfd.readouterr().err, "runtime.checkpoint_failed")
    assert len(failed) == 1 and failed[0]["step"] == 2 and "lambda" in failed[0]["error"]
    assert [s for s, _ in ckpt.committed()] == [1]
    ckpt.save(3, model=model)
    assert ckpt.wait() is None and [s for s, _ in ckpt.committed()] == [1, 3]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_device_tensors_are_copied_into_pinned_buffers(tmp_path: Path) -> None:
    on_device = {"w": torch.randn(256, 256, device="cuda"), "step": torch.tensor(3.0, device="cuda")}
    pool = tensorfile.HostBuffers()
    for _ in range(2):
        pool.begin()
        snap = tensorfile.snapshot(on_device, pool)
        pool.end()
    assert pool.new_bytes == 0 and all(t.device.type == "cpu" and t.is_pinned() for t in snap.tensors)
    meta = tensorfile.write(tmp_path / "f", snap)
    got = tensorfile.read(tmp_path / "f", meta["bytes"], meta["xxh3_128_per_mib"])
    assert torch.equal(got["w"], on_device["w"].cpu()) and got["step"].item() == 3.0


# --- checkpoints written by earlier versions ------------------------------------------------


def write_format_1(root: Path, step: int, run: Run, extra: dict[str, Any]) -> None:
    """A checkpoint as FORMAT 1 wrote it: torch.save files, sha256 in the manifest."""
    final = step_dir(root, step)
    final.mkdir(parents=True)
    torch.save({
        "format": 1, "step": step, "model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(), "scaler": None, "sampler": run.sampler.state_dict(), "extra": extra,
    }, final / "state.pt")
    torch.save({"format": 1, "step": step, "rank": 0, "rng": checkpoint.capture_rng()}, final / "rank-0.pt")
    files = {}
    for name in ("state.pt", "rank-0.pt"):
        data = (final / name).read_bytes()
        files[name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (final / "manifest.json").write_text(json.dumps({
        "format": 1, "step": step, "world_size": 1, "accelerator": "cpu", "torch": torch.__version__,
        "written_at": 0.0, "files": files,
    }))


def test_a_format_1_checkpoint_still_loads_exactly(tmp_path: Path, capfd) -> None:
    scramble_rng(5)
    run = make_run(1)
    run.train(3)
    write_format_1(tmp_path, 3, run, {"tokens": 7})
    expected_next, expected_batch = draws(), run.sampler.next_batch()
    weights = {k: v.clone() for k, v in run.model.state_dict().items()}

    scramble_rng(6)
    fresh = make_run(2)
    ckpt = Checkpointer(tmp_path, assigned=assigned())
    restored = ckpt.load_latest(**fresh.parts())

    assert (restored.step, restored.exact, restored.extra) == (3, True, {"tokens": 7})
    assert same_tensors(fresh.model.state_dict(), weights)
    assert draws() == expected_next and fresh.sampler.next_batch() == expected_batch
    # The next save is of the current format, and is the one loaded from then on.
    ckpt.save(4, **fresh.parts())
    assert ckpt.wait() is None
    assert Checkpointer(tmp_path, assigned=assigned()).load_latest(**make_run(3).parts()).step == 4
    assert json.loads((step_dir(tmp_path, 4) / "manifest.json").read_text())["format"] == checkpoint.FORMAT

    _flip_a_byte(step_dir(tmp_path, 3) / "state.pt")  # a damaged FORMAT 1 file is caught too
    assert "state.pt does not match its checksum" in verify(step_dir(tmp_path, 3))


def test_a_format_2_checkpoint_still_loads_exactly(tmp_path: Path) -> None:
    # Format 2: the same files, with XXH3-128 of each whole file (read in one stream).
    run = make_run(1)
    run.train(3)
    ckpt = Checkpointer(tmp_path, assigned=assigned())
    ckpt.save(3, **run.parts())
    assert ckpt.wait() is None
    manifest_path = step_dir(tmp_path, 3) / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["format"] = 2
    for name, meta in manifest["files"].items():
        data = (step_dir(tmp_path, 3) / name).read_bytes()
        manifest["files"][name] = {"bytes": len(data), "xxh3_128": xxhash.xxh3_128(data).hexdigest()}
    manifest_path.write_text(json.dumps(manifest))
    weights = {k: v.clone() for k, v in run.model.state_dict().items()}

    fresh = make_run(2)
    restored = Checkpointer(tmp_path, assigned=assigned()).load_latest(**fresh.parts())

    assert (restored.step, restored.exact) == (3, True)
    assert same_tensors(fresh.model.state_dict(), weights)
    assert verify(step_dir(tmp_path, 3)) is None
    _flip_a_byte(step_dir(tmp_path, 3) / "rank-0.ckpt")
    assert "rank-0.ckpt does not match its checksum" in verify(step_dir(tmp_path, 3))


def test_the_model_takes_its_weights_in_its_own_tensors(tmp_path: Path) -> None:
    # Read straight into the model's parameters: nothing allocated for them, no copy after.
    run = make_run(1)
    run.train(2)
    ckpt = Checkpointer(tmp_path, assigned=assigned())
    ckpt.save(2, **run.parts())
    assert ckpt.wait() is None
    fresh = make_run(2)
    where = {k: v.data_ptr() for k, v in fresh.model.state_dict().items()}

    assert ckpt.load_latest(**fresh.parts()).step == 2
    assert {k: v.data_ptr() for k, v in fresh.model.state_dict().items()} == where
    assert same_tensors(fresh.model.state_dict(), run.model.state_dict())
    assert fresh.model.weight.requires_grad and isinstance(fresh.model.weight, nn.Parameter)


def test_a_prepared_load_reads_into_the_memory_prepared_for_it(tmp_path: Path) -> None:
    run = make_run(1, width=64, out=32)
    run.train(2)
    ckpt = Checkpointer(tmp_path, assigned=assigned())
    assert checkpoint.prepare_load(tmp_path) == {"skipped": checkpoint.NOTHING_YET}
    ckpt.save(2, **run.parts())
    assert ckpt.wait() is None
    opt_bytes = sum(t.numel() * t.element_size() for s in run.optimizer.state.values() for t in s.values()
                    if isinstance(t, torch.Tensor))

    done = checkpoint.prepare_load(tmp_path, weights=False)
    try:
        assert done["from"] == str(step_dir(tmp_path, 2)) and done["prepared"] >= opt_bytes
        assert done["prepared"] < opt_bytes + 64 * 32 * 4, "the model's weights were prepared too"
        assert checkpoint.prepare_load(tmp_path) == {"skipped": "prepared already"}
        prepared = {t.data_ptr() for free in checkpoint._landing._free.values() for t in free}
        fresh = make_run(2, width=64, out=32)

        assert ckpt.load_latest(**fresh.parts()).step == 2
        state = [t for s in fresh.optimizer.state.values() for t in s.values()
                 if isinstance(t, torch.Tensor) and t.numel() > 1]
        assert state and all(t.data_ptr() in prepared for t in state)
        assert same_tensors(fresh.optimizer.state_dict()["state"][0], run.optimizer.state_dict()["state"][0])
        assert checkpoint._landing is None, "a landing serves one load"
    finally:
        checkpoint._landing = None


def test_preparing_stops_when_asked(tmp_path: Path) -> None:
    ckpt = Checkpointer(tmp_path, assigned=assigned())
    ckpt.save(1, model=nn.Linear(8, 8))
    assert ckpt.wait() is None
    assert checkpoint.prepare_load(tmp_path, stop=lambda: True) == {"skipped": checkpoint.STOPPED}
    assert checkpoint._landing is None


def test_a_large_file_read_on_several_threads_catches_a_late_flipped_byte_and_a_short_file(tmp_path: Path) -> None:
    big = torch.randn(6 * tensorfile.PIECE // 4)  # 6 pieces + the head: read by several threads
    pool = tensorfile.HostBuffers()
    pool.begin()
    snap = tensorfile.snapshot({"big": big, "small": torch.arange(5)}, pool)
    pool.end()
    path = tmp_path / "f"
    meta = tensorfile.write(path, snap)
    assert tensorfile.checksum(path) == meta[tensorfile.CHECKSUM] == per_mib(path.read_bytes())
    got = tensorfile.read(path, meta["bytes"], meta[tensorfile.CHECKSUM])
    assert torch.equal(got["big"], big) and torch.equal(got["small"], torch.arange(5))

    data = bytearray(path.read_bytes())
    data[-tensorfile.PIECE // 2] ^= 0x10
    path.write_bytes(bytes(data))
    with pytest.raises(tensorfile.Damaged, match="does not match its checksum"):
        tensorfile.read(path, meta["bytes"], meta[tensorfile.CHECKSUM])
    path.write_bytes(bytes(data[:-100]))
    with pytest.raises(tensorfile.Damaged, match="ends early"):
        tensorfile.read(path, meta["bytes"], meta[tensorfile.CHECKSUM])


def test_a_checkpoint_of_an_unknown_format_is_refused_by_name(tmp_path: Path, capfd) -> None:
    ckpt = Checkpointer(tmp_path, assigned=assigned())
    for step in (1, 2):
        ckpt.save(step, model=nn.Linear(2, 2))
        assert ckpt.wait() is None
    manifest = step_dir(tmp_path, 2) / "manifest.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "format": 99}))
    capfd.readouterr()

    assert ckpt.load_latest(model=nn.Linear(2, 2)).step == 1
    skipped = events(capfd.readouterr().err, "runtime.checkpoint_skipped")
    assert "format 99" in skipped[0]["reason"] and "newer version" in skipped[0]["reason"]


# --- pruning and abandoned writes --------------------------------------------------------


def test_keep_prunes_old_checkpoints_and_abandoned_temp_dirs(tmp_path: Path) -> None:
    ckpt = Checkpointer(tmp_path / "ckpt", keep=2, assigned=assigned())
    model = nn.Linear(3, 3)
    for step in (1, 2, 3, 4):
        with torch.no_grad():
            model.weight.fill_(step)
        ckpt.save(step, model=model)
        assert ckpt.wait() is None
        assert (tmp_path / "ckpt" / f"step-{step:08d}").is_dir(), "wait() returned before the commit"
    assert ckpt.wait(pruned=True) is None
    assert [s for s, _ in ckpt.committed()] == [3, 4]

    # A crash mid-write of step 6 leaves a complete-looking temp dir (even with a
    # manifest): it must never be loaded.
    other = Checkpointer(tmp_path / "other", assigned=assigned())
    with torch.no_grad():
        model.weight.fill_(6)
    other.save(6, model=model)
    assert other.wait() is None
    os.rename(step_dir(tmp_path / "other", 6), tmp_path / "ckpt" / ".step-00000006.tmp")

    fresh = nn.Linear(3, 3)
    assert ckpt.load_latest(model=fresh).step == 4
    assert torch.all(fresh.weight == 4)

    # A newer temp dir may belong to a save still in flight on another rank: left alone.
    (tmp_path / "ckpt" / ".step-00000009.tmp").mkdir()
    ckpt.save(7, model=model)
    assert ckpt.wait(pruned=True) is None
    left = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert left == [".spare-state.ckpt", ".step-00000009.tmp", "step-00000004", "step-00000007"]


def test_the_next_save_writes_over_the_pruned_state_file(tmp_path: Path, capfd) -> None:
    ckpt = Checkpointer(tmp_path / "ckpt", keep=1, assigned=assigned())
    spare = tmp_path / "ckpt" / checkpoint.SPARE
    small, big = nn.Linear(8, 8), nn.Linear(64, 64)
    inodes = {}
    # The spare is the state file of the checkpoint two saves back: step 3 writes over
    # step 1's (smaller: it grows), step 5 over step 3's (larger: its tail must go).
    for step, model in enumerate((small, small, big, small, small), start=1):
        if spare.exists():
            inodes[step] = spare.stat().st_ino
        ckpt.save(step, model=model)
        assert ckpt.wait(pruned=True) is None
        state = step_dir(tmp_path / "ckpt", step) / "state.ckpt"
        assert verify(step_dir(tmp_path / "ckpt", step)) is None
        if step in inodes:
            assert state.stat().st_ino == inodes[step], "written over in place, not a new file"
        fresh = nn.Linear(model.in_features, model.out_features)
        assert ckpt.load_latest(model=fresh).step == step
        assert same_tensors(fresh.state_dict(), model.state_dict())
    saved = events(capfd.readouterr().err, "runtime.checkpoint_saved")
    assert [e["recycled"] for e in saved] == [False, False, True, True, True]
    assert spare.is_file()

    ckpt.close()
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["step-00000005"], "close() frees the spare"


def _save_thrice(ckpt: Checkpointer, model: nn.Module) -> None:
    for step in (1, 2, 3):
        ckpt.save(step, model=model)
        assert ckpt.wait(pruned=True) is None


def test_nothing_is_recycled_on_a_filesystem_other_nodes_may_read(tmp_path: Path, monkeypatch, capfd) -> None:
    """A reader on another node holding a pruned checkpoint (CephFS, Lustre, NFS) is
    invisible to a lease on this one."""
    monkeypatch.setattr(checkpoint, "_filesystem_type", lambda path: 0xFF534D42)  # CIFS
    ckpt = Checkpointer(tmp_path / "ckpt", keep=1, assigned=assigned())
    _save_thrice(ckpt, nn.Linear(16, 16))
    assert [e["recycled"] for e in events(capfd.readouterr().err, "runtime.checkpoint_saved")] == [False] * 3
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["step-00000003"]


def test_recycling_can_be_turned_off(tmp_path: Path, capfd) -> None:
    ckpt = Checkpointer(tmp_path / "ckpt", keep=1, assigned=assigned(), recycle=False)
    _save_thrice(ckpt, nn.Linear(16, 16))
    assert [e["recycled"] for e in events(capfd.readouterr().err, "runtime.checkpoint_saved")] == [False] * 3
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["step-00000003"]


def test_without_a_lease_nothing_is_recycled_and_saves_go_on(tmp_path: Path, monkeypatch, capfd) -> None:
    real_fcntl = checkpoint.fcntl.fcntl

    def no_leases(fd: int, cmd: int, arg: int = 0) -> int:
        if cmd == checkpoint.fcntl.F_SETLEASE:
            raise OSError(errno.EINVAL, "leases are off")
        return real_fcntl(fd, cmd, arg)

    monkeypatch.setattr(checkpoint.fcntl, "fcntl", no_leases)
    ckpt = Checkpointer(tmp_path / "ckpt", keep=1, assigned=assigned())
    _save_thrice(ckpt, nn.Linear(16, 16))
    assert [e["recycled"] for e in events(capfd.readouterr().err, "runtime.checkpoint_saved")] == [False] * 3
    assert verify(step_dir(tmp_path / "ckpt", 3)) is None


def test_a_spare_opened_after_the_prune_is_not_written_over(tmp_path: Path, capfd) -> None:
    ckpt = Checkpointer(tmp_path / "ckpt", keep=1, assigned=assigned())
    model = nn.Linear(16, 16)
    for step in (1, 2):
        ckpt.save(step, model=model)
        assert ckpt.wait(pruned=True) is None
    spare = tmp_path / "ckpt" / checkpoint.SPARE
    before = spare.read_bytes()
    with open(spare, "rb") as reader:
        with torch.no_grad():
            model.weight.fill_(3)
        ckpt.save(3, model=model)
        assert ckpt.wait(pruned=True) is None
        assert reader.read() == before
    assert [e["recycled"] for e in events(capfd.readouterr().err, "runtime.checkpoint_saved")] == [False] * 3
    assert verify(step_dir(tmp_path / "ckpt", 3)) is None


@pytest.mark.parametrize("shared", ["a second name", "a reader holds it open"])
def test_a_pruned_state_file_that_is_shared_is_never_written_over(tmp_path: Path, capfd, shared: str) -> None:
    """A snapshot of the checkpoints made with hard links, or an uploader still copying
    the pruned one: they must keep the bytes they had, as when the file was removed."""
    ckpt = Checkpointer(tmp_path / "ckpt", keep=1, assigned=assigned())
    model = nn.Linear(32, 32)
    ckpt.save(1, model=model)
    assert ckpt.wait(pruned=True) is None
    first = step_dir(tmp_path / "ckpt", 1) / "state.ckpt"
    original = first.read_bytes()
    with contextlib.ExitStack() as stack:
        if shared == "a second name":
            (tmp_path / "snapshot").mkdir()
            os.link(first, tmp_path / "snapshot" / "state.ckpt")
            holder = tmp_path / "snapshot" / "state.ckpt"
        else:
            reader = stack.enter_context(open(first, "rb"))
        for step in (2, 3):
            with torch.no_grad():
                model.weight.fill_(step)
            ckpt.save(step, model=model)
            assert ckpt.wait(pruned=True) is None
        if shared == "a second name":
            assert holder.read_bytes() == original
        else:
            assert reader.read() == original
    assert [e["recycled"] for e in events(capfd.readouterr().err, "runtime.checkpoint_saved")] == [False, False, False]
    assert verify(step_dir(tmp_path / "ckpt", 3)) is None


@pytest.mark.parametrize("kind", ["symlink", "fifo"])
def test_a_spare_that_is_not_a_plain_file_is_never_written_through(tmp_path: Path, capfd, kind: str) -> None:
    precious = tmp_path / "precious"
    precious.write_bytes(b"not a checkpoint")
    (tmp_path / "ckpt").mkdir()
    if kind == "symlink":
        (tmp_path / "ckpt" / checkpoint.SPARE).symlink_to(precious)
    else:
        os.mkfifo(tmp_path / "ckpt" / checkpoint.SPARE)  # opening one to read would block
    ckpt = Checkpointer(tmp_path / "ckpt", keep=1, assigned=assigned())
    model = nn.Linear(16, 16)
    ckpt.save(1, model=model)
    assert ckpt._settled.wait(10), "the writer hung on the spare"
    assert ckpt.wait(pruned=True) is None
    assert precious.read_bytes() == b"not a checkpoint"
    assert [e["recycled"] for e in events(capfd.readouterr().err, "runtime.checkpoint_saved")] == [False]
    assert (step_dir(tmp_path / "ckpt", 1) / "state.ckpt").is_file()
    assert not (step_dir(tmp_path / "ckpt", 1) / "state.ckpt").is_symlink()
    assert verify(step_dir(tmp_path / "ckpt", 1)) is None


def test_a_run_resumed_below_a_damaged_checkpoint_keeps_what_it_writes(tmp_path: Path, capfd) -> None:
    """Step 200 fails to verify, so the run resumes from 100: pruning to the highest
    steps would delete each checkpoint it writes right after its commit and leave only
    the damaged one."""
    ckpt = Checkpointer(tmp_path, keep=1, assigned=assigned())
    model = nn.Linear(8, 8)
    for step in (100, 200):
        ckpt.save(step, model=model)
        assert ckpt.wait(pruned=True) is None
    os.rename(step_dir(tmp_path, 200), tmp_path / "aside")  # keep=1 pruned 100: put it back
    ckpt.save(100, model=model)
    assert ckpt.wait(pruned=True) is None
    os.rename(tmp_path / "aside", step_dir(tmp_path, 200))
    _flip_a_byte(step_dir(tmp_path, 200) / "state.ckpt")

    resumed = Checkpointer(tmp_path, keep=1, assigned=assigned())
    assert resumed.load_latest(model=nn.Linear(8, 8)).step == 100
    for step in (110, 120):
        resumed.save(step, model=model)
        assert resumed.wait(pruned=True) is None
    assert [s for s, _ in resumed.committed()] == [120, 200], "the newest written is kept; the later, damaged one left"
    assert Checkpointer(tmp_path, assigned=assigned()).load_latest(model=nn.Linear(8, 8)).step == 120


# --- damaged checkpoints are skipped, loudly -----------------------------------------------


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)


DAMAGE: dict[str, tuple[Callable[[Path], None], str]] = {
    "corrupted": (lambda d: _flip_a_byte(d / "state.ckpt"), "state.ckpt does not match its checksum"),
    "truncated": (lambda d: _truncate(d / "state.ckpt"), "truncated"),
    "no manifest": (lambda d: (d / "manifest.json").unlink(), "no manifest"),
    "garbled manifest": (lambda d: (d / "manifest.json").write_text("{not json"), "unreadable manifest"),
    "rank file missing": (lambda d: (d / "rank-0.ckpt").unlink(), "rank-0.ckpt is missing"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_newest_checkpoint_is_skipped(tmp_path: Path, capfd, damage: str) -> None:
    harm, reason = DAMAGE[damage]
    ckpt = Checkpointer(tmp_path, assigned=assigned())
    model = nn.Linear(4, 4)
    for step in (1, 2):
        with torch.no_grad():
            model.weight.fill_(step)
        ckpt.save(step, model=model, extra={"step": step})
        assert ckpt.wait() is None
    harm(step_dir(tmp_path, 2))
    capfd.readouterr()

    fresh = nn.Linear(4, 4)
    restored = Checkpointer(tmp_path, assigned=assigned()).load_latest(model=fresh)

    assert restored is not None and restored.step == 1 and restored.extra == {"step": 1}
    assert torch.all(fresh.weight == 1)
    skipped = events(capfd.readouterr().err, "runtime.checkpoint_skipped")
    assert len(skipped) == 1
    assert skipped[0]["step"] == 2 and skipped[0]["path"] == str(step_dir(tmp_path, 2))
    assert reason in skipped[0]["reason"]


def test_nothing_verifies_returns_none_with_the_model_untouched(tmp_path: Path, capfd) -> None:
    ckpt = Checkpointer(tmp_path, assigned=assigned())
    ckpt.save(1, model=nn.Linear(2, 2))
    assert ckpt.wait() is None
    state = step_dir(tmp_path, 1) / "state.ckpt"
    state.write_bytes(state.read_bytes()[:-8])  # truncated: caught before anything is read
    model = nn.Linear(2, 2)
    before = copy.deepcopy(model.state_dict())

    assert ckpt.load_latest(model=model) is None
    assert len(events(capfd.readouterr().err, "runtime.checkpoint_skipped")) == 1
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_nothing_verifies_after_the_model_was_read_into_raises(tmp_path: Path, capfd) -> None:
    # The weights are read straight into the model's own tensors, so a file that then fails
    # its checksum has overwritten them: starting afresh from those would train garbage.
    ckpt = Checkpointer(tmp_path, assigned=assigned())
    ckpt.save(1, model=nn.Linear(2, 2))
    assert ckpt.wait() is None
    _flip_a_byte(step_dir(tmp_path, 1) / "state.ckpt")

    with pytest.raises(CheckpointError, match="overwrote this model's weights") as info:
        ckpt.load_latest(model=nn.Linear(2, 2))
    assert "step 1: state.ckpt does not match its checksum" in str(info.value)
    assert len(events(capfd.readouterr().err, "runtime.checkpoint_skipped")) == 1


@pytest.mark.parametrize(
    "misfit",
    [
        pytest.param(lambda: make_run(1, width=8, out=5), id="model"),
        pytest.param(lambda: Run(*_other_sampler()), id="sampler"),
    ],
)
def test_a_checkpoint_that_does_not_fit_raises(tmp_path: Path, capfd, misfit: Callable[[], Run]) -> None:
    ckpt = Checkpointer(tmp_path, assigned=assigned())
    run = make_run(1)
    for step in (1, 2):  # an older one exists, and must not be fallen back to silently
        ckpt.save(step, **run.parts())
        assert ckpt.wait() is None
    capfd.readouterr()

    with pytest.raises(CheckpointError, match="does not fit this run") as info:
        ckpt.load_latest(**misfit().parts())
    assert str(step_dir(tmp_path, 2)) in str(info.value)
    assert events(capfd.readouterr().err, "runtime.checkpoint_skipped") == []


def _other_sampler() -> tuple[Any, ...]:
    run = make_run(1)
    return run.model, run.optimizer, run.scheduler, ResumableSampler(100, 4, seed=7)


# --- several ranks, and a change of world size ----------------------------------------------


def test_two_ranks_commit_together_and_load_at_world_size_one(tmp_path: Path, capfd) -> None:
    run0 = make_run(1, rank=0, world=2, batch=3)
    run0.train(3)
    rank1_sampler = ResumableSampler(48, 3, 1, 2, seed=7)
    for _ in range(3):
        rank1_sampler.next_batch()
    rank0 = Checkpointer(tmp_path, commit_timeout=30, assigned=assigned(0, 2))
    rank1 = Checkpointer(tmp_path, commit_timeout=30, assigned=assigned(1, 2))

    rank0.save(5, **run0.parts(), extra={"who": "rank0"})
    wait_until(lambda: (tmp_path / ".step-00000005.tmp" / "rank-0.done").exists(), what="rank 0's mark")
    assert rank0.committed() == []  # rank 0 waits for rank 1
    rank1.save(5, model=run0.model)  # rank 1's model/optimizer are not written: rank 0's are
    assert rank1.wait() is None
    assert rank0.wait() is None

    final = step_dir(tmp_path, 5)
    assert sorted(p.name for p in final.iterdir()) == ["manifest.json", "rank-0.ckpt", "rank-1.ckpt", "state.ckpt"]
    manifest = json.loads((final / "manifest.json").read_text())
    assert manifest["world_size"] == 2 and sorted(manifest["files"]) == ["rank-0.ckpt", "rank-1.ckpt", "state.ckpt"]
    # The global data position, as one rank with the same global batch would continue it.
    expected_batch = run0.sampler.next_batch() + rank1_sampler.next_batch()
    weights = {k: v.clone() for k, v in run0.model.state_dict().items()}
    capfd.readouterr()

    scramble_rng(42)
    untouched = draws()
    single = make_run(2, batch=6)
    scramble_rng(42)
    restored = Checkpointer(tmp_path, assigned=assigned(0, 1)).load_latest(**single.parts())

    assert restored is not None
    assert (restored.step, restored.world_size, restored.exact) == (5, 2, False)
    assert restored.extra == {"who": "rank0"}
    assert same_tensors(single.model.state_dict(), weights)
    assert single.sampler.next_batch() == expected_batch
    assert draws() == untouched  # per-rank streams could not be restored: left alone
    changed = events(capfd.readouterr().err, "runtime.world_size_changed")
    assert len(changed) == 1 and (changed[0]["then"], changed[0]["now"]) == (2, 1)


def test_each_rank_gets_its_own_rng_streams_back(tmp_path: Path) -> None:
    rank0 = Checkpointer(tmp_path, commit_timeout=30, assigned=assigned(0, 2))
    rank1 = Checkpointer(tmp_path, commit_timeout=30, assigned=assigned(1, 2))
    model = nn.Linear(2, 2)
    scramble_rng(100)
    rank0.save(3, model=model)
    expected0 = draws()
    scramble_rng(200)
    rank1.save(3, model=model)
    expected1 = draws()
    assert rank1.wait() is None and rank0.wait() is None

    scramble_rng(0)
    assert Checkpointer(tmp_path, assigned=assigned(1, 2)).load_latest(model=nn.Linear(2, 2)).exact
    assert draws() == expected1
    Checkpointer(tmp_path, assigned=assigned(0, 2)).load_latest(model=nn.Linear(2, 2))
    assert draws() == expected0


def test_commit_times_out_when_a_rank_never_writes(tmp_path: Path, capfd) -> None:
    rank0 = Checkpointer(tmp_path, commit_timeout=0.5, assigned=assigned(0, 2))
    started = time.monotonic()
    rank0.save(3, model=nn.Linear(2, 2))
    error = rank0.wait()

    assert time.monotonic() - started >= 0.5
    assert isinstance(error, CheckpointError) and rank0.last_error is error
    assert "[1]" in str(error)
    assert list(tmp_path.iterdir()) == []  # neither a committed nor a temp dir
    failed = events(capfd.readouterr().err, "runtime.checkpoint_failed")
    assert len(failed) == 1
    assert failed[0]["step"] == 3 and failed[0]["error"].startswith("CheckpointError")


def test_a_mark_left_by_a_crashed_run_does_not_count(tmp_path: Path) -> None:
    # The previous run: rank 1 finished writing step 10, rank 0 was killed before its commit.
    crashed_rank1 = Checkpointer(tmp_path, assigned=assigned(1, 2))
    crashed_rank1.save(10, model=nn.Linear(2, 2))
    assert crashed_rank1.wait() is None
    assert (tmp_path / ".step-00000010.tmp" / "rank-1.done").exists()

    # The restarted run reaches step 10 again; its rank 1 never writes (hung, say).
    rank0 = Checkpointer(tmp_path, commit_timeout=0.5, assigned=assigned(0, 2))
    assert rank0.load_latest(model=nn.Linear(2, 2)) is None
    rank0.save(10, model=nn.Linear(2, 2))
    error = rank0.wait()

    assert rank0.committed() == [], "committed with the crashed run's rank 1 files"
    assert isinstance(error, CheckpointError)


# --- a full disk -------------------------------------------------------------------------------


@contextlib.contextmanager
def tmpfs(where: Path, size: int) -> Iterator[Callable[[int], None]]:
    """A tmpfs of `size` bytes at `where`; yields a function that resizes it."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    where.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                       check=True, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"cannot mount a tmpfs here: {getattr(exc, 'stderr', '') or exc}")

    def resize(new: int) -> None:
        subprocess.run(["mount", "-o", f"remount,size={new}", str(where)],
                       check=True, capture_output=True, text=True, timeout=30)

    try:
        yield resize
    finally:
        subprocess.run(["umount", str(where)], check=False, capture_output=True, timeout=30)


def _pages(size: int) -> int:
    return -(-size // PAGE) * PAGE


@pytest.mark.slow  # mounts a tmpfs (mount(8) in a child process)
def test_a_full_disk_keeps_the_previous_checkpoint(tmp_path: Path, capfd) -> None:
    run = make_run(4, width=64, out=64)
    run.train(1)
    measure = Checkpointer(tmp_path / "measure", assigned=assigned())
    measure.save(1, **run.parts())
    assert measure.wait() is None
    files = {p.name: p.stat().st_size for p in step_dir(tmp_path / "measure", 1).iterdir()}
    one = sum(_pages(s) for s in files.values())
    # Room for one checkpoint (plus its small marker files while it commits), and for
    # only half of the second one's state.ckpt.
    size = one + 2 * PAGE + files["state.ckpt"] // 2 // PAGE * PAGE

    disk = tmp_path / "disk"
    with tmpfs(disk, size) as resize:
        ckpt = Checkpointer(disk, assigned=assigned())
        ckpt.save(1, **run.parts())
        assert ckpt.wait() is None
        run.train(1)
        capfd.readouterr()

        ckpt.save(2, **run.parts())
        error = ckpt.wait()

        assert error is not None and ckpt.last_error is error
        assert any(isinstance(e, OSError) and e.errno == errno.ENOSPC for e in chain(error)), repr(error)
        failed = events(capfd.readouterr().err, "runtime.checkpoint_failed")
        assert len(failed) == 1 and failed[0]["step"] == 2
        assert sorted(p.name for p in disk.iterdir()) == ["step-00000001"]
        assert verify(step_dir(disk, 1)) is None
        assert Checkpointer(disk, assigned=assigned()).load_latest(**make_run(5, width=64, out=64).parts()).step == 1

        resize(4 * one + 4 * PAGE)
        ckpt.save(3, **run.parts())
        assert ckpt.wait() is None and ckpt.last_error is None
        assert [s for s, _ in ckpt.committed()] == [1, 3]
        assert ckpt.load_latest(**make_run(6, width=64, out=64).parts()).step == 3


class _DiskFillsAfter:
    """A binary file whose writes fail with ENOSPC once `room` bytes are written."""

    def __init__(self, path: Any, room: int) -> None:
        self._f = io.open(path, "wb", buffering=0)
        self.room = room

    def write(self, data: Any) -> int:
        size = memoryview(data).nbytes
        if size > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= size
        return self._f.write(data)

    def flush(self) -> None:
        pass

    def fileno(self) -> int:
        return self._f.fileno()

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> "_DiskFillsAfter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def test_a_full_disk_is_reported_as_enospc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd) -> None:
    # Deterministic stand-in for the tmpfs above: state.ckpt's writes fail after 4 KiB.
    real_open = open

    def full_disk_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if mode == "wb" and Path(file).name == "state.ckpt":
            return _DiskFillsAfter(file, PAGE)
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(tensorfile, "open", full_disk_open, raising=False)
    ckpt = Checkpointer(tmp_path, assigned=assigned())
    ckpt.save(1, model=nn.Linear(64, 64))
    error = ckpt.wait()

    assert list(tmp_path.iterdir()) == []
    failed = events(capfd.readouterr().err, "runtime.checkpoint_failed")
    assert isinstance(error, OSError) and error.errno == errno.ENOSPC, repr(error)
    assert "No space left on device" in failed[0]["error"]


# --- requests from outside ------------------------------------------------------------------


def test_due_is_periodic_or_on_request(tmp_path: Path) -> None:
    ckpt = Checkpointer(tmp_path, assigned=assigned())
    assert [s for s in range(1, 13) if ckpt.due(s, every=5)] == [5, 10]
    assert not any(ckpt.due(s) for s in range(1, 13))
    assert not any(ckpt.due(s, every=0) for s in range(1, 13))
    ckpt.request()
    assert ckpt.requested and not ckpt.stop_requested
    assert ckpt.due(3) and ckpt.due(3, every=5)
    ckpt.save(3, model=nn.Linear(2, 2))
    assert not ckpt.requested and not ckpt.due(3, every=5)
    ckpt.request(stop=True)
    ckpt.request()
    assert ckpt.stop_requested  # a later plain request does not cancel the stop
    assert ckpt.wait() is None


def test_signals_request_a_checkpoint_and_a_stop(tmp_path: Path) -> None:
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGUSR1, signal.SIGTERM)}
    try:
        ckpt = Checkpointer(tmp_path, assigned=assigned())
        ckpt.install_signal_handlers()

        os.kill(os.getpid(), signal.SIGUSR1)
        wait_until(lambda: ckpt.requested, what="SIGUSR1 to be handled")
        assert not ckpt.stop_requested
        assert ckpt.due(7, every=100)
        ckpt.save(7, model=nn.Linear(2, 2))
        assert ckpt.wait() is None and not ckpt.requested

        os.kill(os.getpid(), signal.SIGTERM)
        wait_until(lambda: ckpt.stop_requested, what="SIGTERM to be handled")
        assert ckpt.requested
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
