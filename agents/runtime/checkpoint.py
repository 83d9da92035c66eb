"""`Checkpointer`: complete, device-agnostic, atomic, verified, asynchronous checkpoints.

Layout of one checkpoint directory:

    step-00000100/
        manifest.json      format, step, world size, accelerator, sha256 + size of each file
        state.pt           rank 0: model, optimizer, scheduler, AMP scaler, sampler, extras
        rank-0.pt ...      every rank: its RNG states (Python, NumPy, torch CPU and device)

Every tensor is copied to CPU memory before it is written, so a checkpoint written on an
Ascend NPU loads on an Nvidia GPU. `save` returns once that copy is made; a background
thread writes the files into `.step-00000100.tmp/`, fsyncs them, and marks the rank done;
rank 0 waits for every rank's mark, writes the manifest, renames the directory into place
(atomic) and prunes old checkpoints. A checkpoint without a manifest, or whose files do
not match it, is never loaded: `load_latest` skips it with a warning and takes the one
before. A failed write (disk full) removes its temp directory and leaves the previous
checkpoint as it was; training goes on, and the failure is logged and kept in
`last_error`.

Ranks must share the checkpoint directory (one node, or a shared filesystem).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import random
import re
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from agents.runtime.env import Assignment, AssignmentError, assignment, emit
from agents.runtime.progress import heartbeat

FORMAT = 1
MANIFEST = "manifest.json"
STATE_FILE = "state.pt"
_COMMITTED = re.compile(r"^step-(\d{8,})$")
_TEMP = re.compile(r"^\.step-(\d{8,})\.tmp$")


class CheckpointError(RuntimeError):
    pass


@dataclass(frozen=True)
class Restored:
    """What `load_latest` restored."""

    step: int
    path: Path
    world_size: int  # of the run that wrote it
    accelerator: str
    exact: bool  # False when the world size changed: RNG streams could not be restored
    extra: dict[str, Any] = field(default_factory=dict)


class Checkpointer:
    def __init__(
        self,
        directory: str | Path | None = None,
        keep: int = 3,
        commit_timeout: float = 600.0,
        assigned: Assignment | None = None,
    ) -> None:
        a = assigned or assignment()
        where = directory or a.ckpt_dir
        if where is None:
            raise AssignmentError("no checkpoint directory: pass one to Checkpointer or set TRAINGUARD_CKPT_DIR")
        # Under a trainguard job the policy's checkpoint.keep decides how many are kept.
        keep = _env_keep(keep)
        if keep < 1:
            raise ValueError(f"keep must be at least 1, got {keep}")
        self.directory = Path(where)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.keep = keep
        self.commit_timeout = commit_timeout
        self.rank, self.world_size = a.rank, a.world_size
        self.accelerator = a.accelerator or _detected_accelerator()
        #: A checkpoint was asked for from outside (SIGUSR1, SIGTERM or request()).
        self.requested = False
        #: The agent asked this rank to stop (SIGTERM): save, then leave the loop.
        self.stop_requested = False
        #: The exception of the last save that failed in the background, if any.
        self.last_error: BaseException | None = None
        #: Seconds the training loop waited in the last save() (the copy to host memory).
        self.last_stall: float = 0.0
        self._thread: threading.Thread | None = None
        # What this rank was asked (by a signal) and has not yet agreed with its peers.
        self._asked = False
        self._asked_stop = False

    # --- requests from outside -----------------------------------------------------

    def install_signal_handlers(self) -> None:
        """SIGUSR1: checkpoint at the next step. SIGTERM: checkpoint, then stop. The
        handlers only note the request; `due()` turns it into one all ranks agree on."""
        signal.signal(signal.SIGUSR1, lambda *_: self.request())
        signal.signal(signal.SIGTERM, lambda *_: self.request(stop=True))

    def request(self, stop: bool = False) -> None:
        self._asked = True
        self._asked_stop = self._asked_stop or stop
        if not _distributed():  # one process: nothing to agree with
            self.requested = True
            self.stop_requested = self.stop_requested or stop

    def due(self, step: int, every: int | None = None) -> bool:
        """Should the loop save after `step`? Every `every` steps, or when asked.

        Under a process group of more than one rank, a request (a signal) reaches the
        ranks at different steps; saving or stopping where each one happens to be would
        tear the checkpoint. So every call does a tiny all_reduce (MAX) of this rank's
        pending requests, and `requested` / `stop_requested` come only from that
        agreement: all ranks save, and stop, at the same step. Every rank must therefore
        call `due()` exactly once per step (the collective has to be matched)."""
        if _distributed():
            asked, asked_stop = self._asked, self._asked_stop
            agreed = _agree(asked, asked_stop)
            if agreed[0]:
                self._asked = False  # taken now; a signal after the snapshot rides along
                self.requested = True
            if agreed[1]:
                self.stop_requested = True
        return self.requested or bool(every and step % every == 0)

    # --- saving --------------------------------------------------------------------

    def save(
        self,
        step: int,
        *,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: Any = None,
        scaler: Any = None,
        sampler: Any = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        """Snapshot the training state to host memory and write it in the background.
        Waits first for the previous save to finish (one write in flight at a time)."""
        self.wait()
        started = time.monotonic()
        heartbeat(step, phase="checkpoint")
        main = None
        if self.rank == 0:
            main = {
                "format": FORMAT,
                "step": step,
                "model": _to_cpu(_unwrap(model).state_dict()),
                "optimizer": _to_cpu(optimizer.state_dict()) if optimizer is not None else None,
                "scheduler": copy.deepcopy(scheduler.state_dict()) if scheduler is not None else None,
                "scaler": _to_cpu(scaler.state_dict()) if scaler is not None else None,
                "sampler": copy.deepcopy(sampler.state_dict()) if sampler is not None else None,
                "extra": _to_cpu(extra or {}),
            }
        mine = {"format": FORMAT, "step": step, "rank": self.rank, "rng": capture_rng()}
        self.requested = False
        self.last_stall = time.monotonic() - started
        self._thread = threading.Thread(
            target=self._write, args=(step, main, mine, self.last_stall), name=f"checkpoint-{step}"
        )
        self._thread.start()
        # The snapshot is taken and the write goes on in the background: the loop trains
        # again, and is judged by the train limit again (a rank that stops right after a
        # save must not hide behind the much longer checkpoint limit).
        heartbeat(step, phase="train")

    def wait(self) -> BaseException | None:
        """Block until the save in flight (if any) is written; return its error, if any."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        return self.last_error

    def close(self) -> BaseException | None:
        return self.wait()

    def _write(self, step: int, main: dict[str, Any] | None, mine: dict[str, Any], stall: float) -> None:
        started = time.monotonic()
        tmp = self.directory / f".step-{step:08d}.tmp"
        written: list[Path] = []
        try:
            tmp.mkdir(exist_ok=True)
            files = {}
            if main is not None:
                files[STATE_FILE] = _write_file(tmp / STATE_FILE, main)
                written.append(tmp / STATE_FILE)
            name = f"rank-{self.rank}.pt"
            files[name] = _write_file(tmp / name, mine)
            written.append(tmp / name)
            _write_json(tmp / f"rank-{self.rank}.done", {"files": files})
            written.append(tmp / f"rank-{self.rank}.done")
            if self.rank == 0:
                final = self._commit(step, tmp)
                emit(
                    "runtime.checkpoint_saved",
                    step=step,
                    path=str(final),
                    bytes=sum(f.stat().st_size for f in final.iterdir()),
                    stall_s=round(stall, 4),
                    write_s=round(time.monotonic() - started, 3),
                )
            self.last_error = None
        except BaseException as exc:
            self.last_error = exc
            if self.rank == 0:
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                for path in written:
                    path.unlink(missing_ok=True)
            emit(
                "runtime.checkpoint_failed",
                step=step,
                rank=self.rank,
                error=f"{type(exc).__name__}: {exc}",
                action="the previous checkpoint is intact; training continues",
            )

    def _commit(self, step: int, tmp: Path) -> Path:
        deadline = time.monotonic() + self.commit_timeout
        marks = [tmp / f"rank-{r}.done" for r in range(self.world_size)]
        while not all(m.exists() for m in marks):
            if time.monotonic() > deadline:
                missing = [r for r, m in enumerate(marks) if not m.exists()]
                raise CheckpointError(f"ranks {missing} did not finish writing step {step} within {self.commit_timeout:g}s")
            time.sleep(0.02)
        files: dict[str, Any] = {}
        for mark in marks:
            files.update(json.loads(mark.read_text())["files"])
        _write_json(
            tmp / MANIFEST,
            {
                "format": FORMAT,
                "step": step,
                "world_size": self.world_size,
                "accelerator": self.accelerator,
                "torch": torch.__version__,
                "written_at": time.time(),
                "files": files,
            },
        )
        for mark in marks:
            mark.unlink()
        final = self.directory / f"step-{step:08d}"
        if final.exists():  # the same step saved again (a final save after a resume)
            old = self.directory / f".step-{step:08d}.old"
            os.rename(final, old)
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, final)
        _fsync_dir(self.directory)
        self._prune(step)
        return final

    def _prune(self, newest: int) -> None:
        committed = self.committed()
        for _, path in committed[: -self.keep]:
            shutil.rmtree(path, ignore_errors=True)
        for entry in self.directory.iterdir():  # abandoned temp dirs of older steps
            m = _TEMP.match(entry.name)
            if m and int(m.group(1)) < newest:
                shutil.rmtree(entry, ignore_errors=True)

    def _clear_leftovers(self) -> None:
        """Remove temp dirs a crashed run left behind, before this run writes any: a
        stale `rank-N.done` mark in one must never count for this run's commit. Safe at
        start: no rank can save before rank 0 has loaded (the first training step needs
        it), so nothing of this run is in flight yet."""
        for entry in self.directory.iterdir():
            if entry.name.endswith(".old"):
                # A re-save of step N died between its two renames: the old step N is
                # the complete one; put it back rather than lose it.
                final = self.directory / entry.name[1:-len(".old")]
                if not final.exists():
                    os.rename(entry, final)
                    continue
            if _TEMP.match(entry.name) or entry.name.endswith(".old"):
                shutil.rmtree(entry, ignore_errors=True)

    # --- loading -------------------------------------------------------------------

    def committed(self) -> list[tuple[int, Path]]:
        """Committed checkpoint directories, oldest first (not yet verified)."""
        found = []
        for entry in self.directory.iterdir():
            m = _COMMITTED.match(entry.name)
            if m and entry.is_dir():
                found.append((int(m.group(1)), entry))
        return sorted(found)

    def load_latest(
        self,
        *,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: Any = None,
        scaler: Any = None,
        sampler: Any = None,
    ) -> Restored | None:
        """Restore the newest checkpoint that verifies; None when there is none. Corrupt,
        partial or truncated ones are skipped with a `runtime.checkpoint_skipped` line."""
        self.wait()
        # Verifying and loading a large checkpoint takes a while: say so, so that the
        # hang watcher gives this rank the checkpoint phase's limit, not the train one.
        heartbeat(0, phase="checkpoint")
        if self.rank == 0:
            self._clear_leftovers()
        for step, path in reversed(self.committed()):
            problem = verify(path)
            if problem is not None:
                emit("runtime.checkpoint_skipped", step=step, path=str(path), reason=problem,
                     action="trying the previous checkpoint")
                continue
            manifest = json.loads((path / MANIFEST).read_text())
            main = torch.load(path / STATE_FILE, map_location="cpu", weights_only=False)
            try:
                _unwrap(model).load_state_dict(main["model"])
                if optimizer is not None and main["optimizer"] is not None:
                    optimizer.load_state_dict(main["optimizer"])
                if scheduler is not None and main["scheduler"] is not None:
                    scheduler.load_state_dict(main["scheduler"])
                if scaler is not None and main["scaler"] is not None:
                    scaler.load_state_dict(main["scaler"])
                if sampler is not None and main["sampler"] is not None:
                    sampler.load_state_dict(main["sampler"])
            except (RuntimeError, ValueError, KeyError) as exc:
                raise CheckpointError(
                    f"checkpoint {path} does not fit this run (a different model, optimizer or data?): {exc}"
                ) from exc
            exact = manifest["world_size"] == self.world_size
            if exact:
                mine = torch.load(path / f"rank-{self.rank}.pt", map_location="cpu", weights_only=False)
                restore_rng(mine["rng"])
            else:
                emit(
                    "runtime.world_size_changed",
                    path=str(path),
                    then=manifest["world_size"],
                    now=self.world_size,
                    effect="model, optimizer, scheduler and data position restored; per-rank random "
                    "streams start afresh, so losses will not repeat the original run bit for bit",
                )
            emit(
                "runtime.resumed",
                step=step,
                path=str(path),
                rank=self.rank,
                world_size_then=manifest["world_size"],
                world_size_now=self.world_size,
                accelerator_then=manifest["accelerator"],
                accelerator_now=self.accelerator,
                exact=exact,
            )
            return Restored(step, path, manifest["world_size"], manifest["accelerator"], exact, main["extra"])
        return None


def verify(path: Path) -> str | None:
    """Why the checkpoint at `path` must not be loaded, or None when it verifies."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except FileNotFoundError:
        return "no manifest (the write did not finish)"
    except (OSError, ValueError) as exc:
        return f"unreadable manifest: {exc}"
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        return f"manifest format {manifest.get('format') if isinstance(manifest, dict) else '?'!r}, expected {FORMAT}"
    files = manifest.get("files") or {}
    if STATE_FILE not in files:
        return f"manifest lists no {STATE_FILE}"
    for name, meta in files.items():
        file = path / name
        try:
            size = file.stat().st_size
        except FileNotFoundError:
            return f"{name} is missing"
        if size != meta.get("bytes"):
            return f"{name} is {size} bytes, the manifest says {meta.get('bytes')} (truncated?)"
        if _sha256(file) != meta.get("sha256"):
            return f"{name} does not match its checksum (corrupted)"
    return None


# --- state capture -------------------------------------------------------------------


def capture_rng() -> dict[str, Any]:
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    try:
        import numpy

        state["numpy"] = numpy.random.get_state()
    except ImportError:
        pass
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    npu = getattr(torch, "npu", None)
    if npu is not None and npu.is_available():
        state["npu"] = [s.cpu() for s in npu.get_rng_state_all()]
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "numpy" in state:
        try:
            import numpy

            numpy.random.set_state(state["numpy"])
        except ImportError:
            pass
    # Device streams only restore onto the same kind of device; across accelerator types
    # (Ascend → Nvidia) they start afresh, as they must.
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    npu = getattr(torch, "npu", None)
    if "npu" in state and npu is not None and npu.is_available():
        npu.set_rng_state_all(state["npu"])


def _distributed() -> bool:
    """A process group of more than one rank is up (the requests must be agreed)."""
    dist = torch.distributed
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _agree(asked: bool, asked_stop: bool) -> tuple[bool, bool]:
    """(checkpoint, stop) as any rank asked: an all_reduce MAX of two flags, on the
    device the group's backend needs."""
    dist = torch.distributed
    backend = str(dist.get_backend())
    where = "cpu"
    if backend == "nccl":
        where = f"cuda:{torch.cuda.current_device()}"
    elif backend == "hccl":
        where = f"npu:{torch.npu.current_device()}"  # type: ignore[attr-defined]
    flags = torch.tensor([int(asked), int(asked_stop)], dtype=torch.int32, device=where)
    dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    checkpoint, stop = (bool(v) for v in flags.tolist())
    return checkpoint or stop, stop


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside DistributedDataParallel (or similar) wrappers."""
    return getattr(model, "module", model)


def _to_cpu(obj: Any) -> Any:
    """A deep copy with every tensor copied to CPU memory (so later training steps, which
    change the live tensors in place, cannot change what is being written)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return type(obj)((k, _to_cpu(v)) for k, v in obj.items())
    if isinstance(obj, list):
        return [_to_cpu(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_to_cpu(v) for v in obj)
    return copy.deepcopy(obj)


def _detected_accelerator() -> str:
    try:
        from agents.runtime.placement import device

        return device().accelerator
    except AssignmentError:
        return "unknown"


# --- files ---------------------------------------------------------------------------


def _write_file(path: Path, obj: Any) -> dict[str, Any]:
    with open(path, "wb") as f:
        try:
            torch.save(obj, f)
        except RuntimeError as exc:
            # torch's writer reports a failed write (ENOSPC, EIO) as an opaque "enforce
            # fail ... unexpected pos"; the OSError that caused it is what on-call needs.
            if isinstance(exc.__context__, OSError):
                raise exc.__context__ from exc
            raise
        f.flush()
        os.fsync(f.fileno())
    # The checksum is of the bytes as they are on disk, read back.
    return {"sha256": _sha256(path), "bytes": path.stat().st_size}


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, path)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 * 1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _env_keep(default: int) -> int:
    value = os.environ.get("TRAINGUARD_CKPT_KEEP", "")
    return int(value) if value.isdigit() and int(value) >= 1 else default
