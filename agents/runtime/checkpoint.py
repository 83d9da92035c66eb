"""`Checkpointer`: complete, device-agnostic, atomic, verified, asynchronous checkpoints.

Layout of one checkpoint directory:

    step-00000100/
        manifest.json      format, step, world size, accelerator, size + checksum of each file
        state.ckpt         rank 0: model, optimizer, scheduler, AMP scaler, sampler, extras
        rank-0.ckpt ...    every rank: its RNG states (Python, NumPy, torch CPU and device)
    .spare-state.ckpt      the state file of the last checkpoint pruned, written over by
                           the next save (removed by close())

Every tensor is copied to CPU memory before it is written, so a checkpoint written on an
Ascend NPU loads on an Nvidia GPU. `save` returns once that copy is made, into host
buffers allocated by the first save and reused by the next ones (pinned for accelerator
tensors; `tensorfile` has the file format); a background thread streams them into
`.step-00000100.tmp/`, checksumming as it writes, fsyncs, and marks the rank done; rank 0
waits for every rank's mark, writes the manifest, renames the directory into place
(atomic) and prunes old checkpoints. A checkpoint without a manifest, or whose files do
not match it, is never loaded: `load_latest` checks every byte as it reads it, skips a
damaged checkpoint with a warning and takes the one before. A failed write (disk full)
removes its temp directory and leaves the previous checkpoint as it was; training goes
on, and the failure is logged and kept in `last_error`. Checkpoints of FORMAT 1
(torch.save files and sha256, written before version 2) still load.

Ranks must share the checkpoint directory (one node, or a shared filesystem).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import hashlib
import json
import math
import os
import random
import re
import shutil
import signal
import stat
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import psutil
import torch

from agents.runtime import tensorfile
from agents.runtime.env import Assignment, AssignmentError, assignment, emit
from agents.runtime.progress import heartbeat
from agents.runtime.tensorfile import Damaged

FORMAT = 3
# 1: torch.save files, sha256 (before the host buffers); 2: these files, XXH3-128 of the
# whole file in one stream (before the per-piece checksum that loads read in parallel).
FORMATS_LOADED = (1, 2, 3)
# Each format's checksum: the manifest's key for it, and what tensorfile calls it.
_CHECKSUMS = {1: "sha256", 2: tensorfile.LEGACY_CHECKSUM, 3: tensorfile.CHECKSUM}
MANIFEST = "manifest.json"
STATE_FILE = "state.ckpt"
_STATE_FILES = {1: "state.pt", 2: STATE_FILE, 3: STATE_FILE}
# A pruned checkpoint's state file, kept for the next save to write over in place rather
# than allocate a new file: measured here at 1 GB, 0.25-0.4 s against 0.4-2.3 s for a
# new file (page-cache memory first touched again, blocks allocated and later discarded).
# The disk holds what a save holds at its peak anyway: the newest checkpoints plus one.
SPARE = ".spare-" + STATE_FILE
_WEIGHTS = "model."  # the tensor names of the model's state_dict in a state file
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
        recycle: bool = True,
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
        # Set by the writer once the save in flight is committed or has failed.
        self._settled = threading.Event()
        # Host memory for snapshots, reused save after save (released by close()).
        self._buffers = tensorfile.HostBuffers()
        # Whether a save may write over the state file of a pruned checkpoint (SPARE):
        # only where every reader of it is on this machine, and not when told not to.
        self._recycle = recycle and _filesystem_type(self.directory) in _LOCAL_FILESYSTEMS
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
        Waits first for the previous save to finish (one write in flight at a time).

        The snapshot pickles the state with every tensor copied into this Checkpointer's
        host buffers (the same buffers each save). A state that cannot be snapshotted
        (an object pickle refuses) is reported like a failed write: training goes on."""
        self._join()
        started = time.monotonic()
        heartbeat(step, phase="checkpoint")
        self.requested = False
        try:
            self._buffers.begin()
            main = None
            if self.rank == 0:
                weights = _unwrap(model).state_dict()
                main = tensorfile.snapshot({
                    "format": FORMAT,
                    "step": step,
                    "model": weights,
                    "optimizer": optimizer.state_dict() if optimizer is not None else None,
                    "scheduler": scheduler.state_dict() if scheduler is not None else None,
                    "scaler": scaler.state_dict() if scaler is not None else None,
                    "sampler": sampler.state_dict() if sampler is not None else None,
                    "extra": extra or {},
                }, self._buffers, names={id(t): f"{_WEIGHTS}{k}" for k, t in weights.items()})
            mine = tensorfile.snapshot(
                {"format": FORMAT, "step": step, "rank": self.rank, "rng": capture_rng()}, self._buffers
            )
            self._buffers.end()
        except Exception as exc:
            self._buffers.end()
            self.last_stall = time.monotonic() - started
            self._failed(step, exc)
            heartbeat(step, phase="train")
            return
        self.last_stall = time.monotonic() - started
        self._settled = threading.Event()
        self._thread = threading.Thread(
            target=self._write, args=(step, main, mine, self.last_stall, self._buffers.new_bytes),
            name=f"checkpoint-{step}",
        )
        self._thread.start()
        # The snapshot is taken and the write goes on in the background: the loop trains
        # again, and is judged by the train limit again (a rank that stops right after a
        # save must not hide behind the much longer checkpoint limit).
        heartbeat(step, phase="train")

    def wait(self, pruned: bool = False) -> BaseException | None:
        """Block until the save in flight (if any) is committed, or has failed; return its
        error, if any. Removing older checkpoints may still go on (the next save, load
        or close waits for it), unless `pruned`."""
        if pruned:
            self._join()
        elif self._thread is not None:
            self._settled.wait()
        return self.last_error

    def close(self) -> BaseException | None:
        """Wait for the last write and free the host buffers and the spare file."""
        self._join()
        self._buffers.release()
        if self.rank == 0:
            with contextlib.suppress(OSError):
                (self.directory / SPARE).unlink(missing_ok=True)
        return self.last_error

    def _join(self) -> None:
        """Wait for the background thread to end, pruning included."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _write(
        self, step: int, main: tensorfile.Snapshot | None, mine: tensorfile.Snapshot, stall: float, new_bytes: int
    ) -> None:
        started = time.monotonic()
        tmp = self.directory / f".step-{step:08d}.tmp"
        written: list[Path] = []
        committed = False
        try:
            tmp.mkdir(exist_ok=True)
            files = {}
            recycled = False
            if main is not None:
                written.append(tmp / STATE_FILE)
                spare = self._take_spare(tmp / STATE_FILE)
                recycled = spare is not None
                files[STATE_FILE] = tensorfile.write(tmp / STATE_FILE, main, over=spare)
            name = f"rank-{self.rank}.ckpt"
            written.append(tmp / name)
            files[name] = tensorfile.write(tmp / name, mine)
            data_s = time.monotonic() - started
            written.append(tmp / f"rank-{self.rank}.done")
            # A mark is read by rank 0 of this run and removed before the commit; the files
            # it vouches for are fsynced already, and a crash clears the temp dir: it needs
            # no fsync of its own (one fewer journal commit per rank and checkpoint).
            _write_json(tmp / f"rank-{self.rank}.done", {"files": files}, durable=False)
            if self.rank == 0:
                final = self._commit(step, tmp)
                nbytes = sum(f.stat().st_size for f in final.iterdir())
                write_s = time.monotonic() - started
                emit(
                    "runtime.checkpoint_saved",
                    step=step,
                    path=str(final),
                    bytes=nbytes,
                    stall_s=round(stall, 4),
                    write_s=round(write_s, 3),
                    # rank 0's own files: written, checksummed and fsynced (before the commit)
                    data_s=round(data_s, 3),
                    mb_per_s=round(sum(m["bytes"] for m in files.values()) / 1e6 / max(data_s, 1e-9), 1),
                    checksum=tensorfile.CHECKSUM,
                    # the state file written over a pruned checkpoint's (SPARE)
                    recycled=recycled,
                    # host memory this save had to allocate: 0 once the buffers are reused
                    new_buffer_bytes=new_bytes,
                )
                committed = True
            self.last_error = None
        except BaseException as exc:
            self.last_error = exc
            if self.rank == 0:
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                for path in written:
                    path.unlink(missing_ok=True)
            self._failed(step, exc)
        finally:
            self._settled.set()
        if committed:
            # After wait() returns: the new checkpoint is durable, older ones are only
            # housekeeping (removing a 1 GB file takes ~0.2 s here).
            self._prune(step)

    def _failed(self, step: int, exc: BaseException) -> None:
        self.last_error = exc
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
        _fsync_dir(tmp)  # the files' names are durable before the directory's new name is
        final = self.directory / f"step-{step:08d}"
        if final.exists():  # the same step saved again (a final save after a resume)
            old = self.directory / f".step-{step:08d}.old"
            os.rename(final, old)
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, final)
        _fsync_dir(self.directory)
        return final

    def _prune(self, newest: int) -> None:
        # Among the checkpoints up to the one just committed. One of a later step is left
        # from a run that went further and was not resumed from: it failed to verify (or
        # its format is newer than this version). Keeping the highest steps would delete
        # the checkpoint just written and keep that one.
        committed = [(step, path) for step, path in self.committed() if step <= newest]
        for _, path in committed[: -self.keep]:
            self._keep_spare(path / STATE_FILE)
            shutil.rmtree(path, ignore_errors=True)
        for entry in self.directory.iterdir():  # abandoned temp dirs of older steps
            m = _TEMP.match(entry.name)
            if m and int(m.group(1)) < newest:
                shutil.rmtree(entry, ignore_errors=True)

    def _keep_spare(self, state: Path) -> None:
        """Keep a pruned checkpoint's state file as the spare (replacing an older one),
        unless something else has it (`_open_unshared`): then it is removed with its
        checkpoint, and whoever holds it keeps what it read."""
        if not self._recycle:
            return
        fd = _open_unshared(state, os.O_RDONLY)
        if fd is None:
            return
        os.close(fd)
        try:
            os.replace(state, self.directory / SPARE)
        except OSError:
            pass  # nothing to recycle: the next save writes a new file

    def _take_spare(self, target: Path) -> int | None:
        """Move the spare to `target` and return a descriptor to write over it with; None
        when there is none, or when it is shared after all (checked again, on the
        descriptor written through: it may have changed since the prune). A shared one
        loses only this name; nothing is written through it."""
        if not self._recycle:
            return None
        try:
            os.rename(self.directory / SPARE, target)
        except OSError:
            return None
        fd = _open_unshared(target, os.O_RDWR)
        if fd is not None:
            return fd
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target, ignore_errors=True)
        else:
            target.unlink(missing_ok=True)
        return None

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
        return _committed(self.directory)

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
        self._join()
        started = time.monotonic()
        # Verifying and loading a large checkpoint takes a while: say so, so that the
        # hang watcher gives this rank the checkpoint phase's limit, not the train one.
        heartbeat(0, phase="checkpoint")
        if self.rank == 0:
            self._clear_leftovers()
        # The model's own tensors take its weights as they are read (no copy after), the
        # rest goes into memory a standby prepared (prepare_load) or fresh memory.
        landing = _take_landing() or tensorfile.Landing()
        weights = {f"{_WEIGHTS}{k}": t for k, t in _unwrap(model).state_dict().items()}
        skipped = []
        for step, path in reversed(self.committed()):
            landing.adopt(weights)
            try:
                manifest, main, mine = _read_checkpoint(path, self.rank, landing)
            except Damaged as exc:
                emit("runtime.checkpoint_skipped", step=step, path=str(path), reason=str(exc),
                     action="trying the previous checkpoint")
                skipped.append(f"step {step}: {exc}")
                continue
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
            exact = manifest["world_size"] == self.world_size and mine is not None
            if exact:
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
                load_s=round(time.monotonic() - started, 3),
                # bytes read straight into the model's tensors / into memory a standby
                # prepared while it waited (the rest went into fresh memory)
                into_model_bytes=landing.took_live,
                into_prepared_bytes=landing.took_prepared,
            )
            return Restored(step, path, manifest["world_size"], manifest["accelerator"], exact, main["extra"])
        if landing.overwrote:
            # Starting afresh from weights a damaged file half overwrote would train garbage,
            # and its checkpoints would bury the damaged ones: stop and say so.
            raise CheckpointError(
                f"no checkpoint in {self.directory} verifies ({'; '.join(skipped)}), and reading them "
                "overwrote this model's weights: restore a good checkpoint there, or move these away "
                "to start the run from scratch")
        return None


# Memory the next `load_latest` in this process reads into: a warm standby's, first
# touched while it waited (`prepare_load`). Taken by that load; one process, one landing.
_landing: tensorfile.Landing | None = None
# Why prepare_load did nothing, when a standby should try again later / has its rank.
NOTHING_YET = "no checkpoint yet"
STOPPED = "stopped"


def prepare_load(directory: str | Path, stop: Callable[[], bool] = lambda: False,
                 weights: bool = True) -> dict[str, Any]:
    """First touch, ahead of the load, the memory the newest checkpoint in `directory`
    would be read into (its state file's tensors; the small per-rank files are read into
    fresh memory). A warm standby calls this while it waits, so that a restart's load
    only reads. `weights` False: not for the model's weights, which a model on the host
    takes in its own tensors (memory prepared and left unused costs its freeing).
    Returns what it did: `{"prepared": bytes, "seconds", "from": path}`, or
    `{"skipped": why}` (no checkpoint yet, a damaged or format-1 one, more than half of
    the host's available memory, `stop` said to stop, or a landing prepared already)."""
    global _landing
    if _landing is not None:
        return {"skipped": "prepared already"}
    started = time.monotonic()
    for _step, path in reversed(_committed(Path(directory))):
        try:
            manifest = _manifest(path)
            if manifest["format"] == 1:
                return {"skipped": f"checkpoint {path.name} is of format {manifest['format']}"}
            specs = [(dtype, shape, stride) for dtype, shape, stride, name in tensorfile.tensor_specs(path / STATE_FILE)
                     if weights or not (name or "").startswith(_WEIGHTS)]
        except (Damaged, OSError):
            continue  # the load will skip it too (and say why); look at the one before
        need = sum(math.prod(shape) * dtype.itemsize for dtype, shape, _ in specs)
        available = psutil.virtual_memory().available
        if need > available // 2:
            return {"skipped": f"{need / 1e9:.2f} GB to prepare with {available / 1e9:.2f} GB available "
                               "(more than half): the load will read into fresh memory"}
        landing = tensorfile.Landing()
        if not landing.prepare(specs, stop):
            return {"skipped": STOPPED}
        _landing = landing
        return {"prepared": landing.nbytes, "seconds": round(time.monotonic() - started, 3), "from": str(path)}
    return {"skipped": NOTHING_YET}


def _take_landing() -> tensorfile.Landing | None:
    global _landing
    landing, _landing = _landing, None
    return landing


def verify(path: Path) -> str | None:
    """Why the checkpoint at `path` must not be loaded, or None when it verifies (every
    file's size and checksum)."""
    try:
        manifest = _manifest(path)
        for name, meta in manifest["files"].items():
            _check_file(path / name, meta, manifest["format"])
    except Damaged as exc:
        return str(exc)
    return None


def _committed(directory: Path) -> list[tuple[int, Path]]:
    found = []
    try:
        entries = list(directory.iterdir())
    except FileNotFoundError:
        return []
    for entry in entries:
        m = _COMMITTED.match(entry.name)
        if m and entry.is_dir():
            found.append((int(m.group(1)), entry))
    return sorted(found)


def _manifest(path: Path) -> dict[str, Any]:
    """The manifest of the checkpoint at `path`, with every file it lists present and of
    the size it says (cheap: no file is read); `Damaged` says what is wrong."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except FileNotFoundError:
        raise Damaged("no manifest (the write did not finish)") from None
    except (OSError, ValueError) as exc:
        raise Damaged(f"unreadable manifest: {exc}") from None
    version = manifest.get("format") if isinstance(manifest, dict) else "?"
    if version not in FORMATS_LOADED:
        raise Damaged(f"manifest format {version!r}: this trainguard loads formats "
                      f"{', '.join(map(str, FORMATS_LOADED))} (written by a newer version?)")
    files = manifest.get("files")
    if not isinstance(files, dict) or not all(isinstance(m, dict) for m in files.values()):
        raise Damaged("unreadable manifest: no table of files")
    if _STATE_FILES[version] not in files:
        raise Damaged(f"manifest lists no {_STATE_FILES[version]}")
    for name, meta in files.items():
        try:
            size = (path / name).stat().st_size
        except FileNotFoundError:
            raise Damaged(f"{name} is missing") from None
        if size != meta.get("bytes"):
            raise Damaged(f"{name} is {size} bytes, the manifest says {meta.get('bytes')} (truncated?)")
    return manifest


def _check_file(file: Path, meta: dict[str, Any], version: int) -> None:
    """Read `file` through its checksum; `Damaged` if it does not match."""
    try:
        got = _sha256(file) if version == 1 else tensorfile.checksum(file, _CHECKSUMS[version])
    except OSError as exc:
        raise Damaged(f"{file.name} is unreadable: {exc}") from None
    if got != meta.get(_CHECKSUMS[version]):
        raise Damaged(f"{file.name} does not match its checksum (corrupted)")


def _read_checkpoint(path: Path, rank: int, landing: tensorfile.Landing | None = None,
                     ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any] | None]:
    """(manifest, rank 0's state, this rank's own state or None) of a checkpoint that
    verifies; `Damaged` otherwise. Every file is checked, so that all ranks take the same
    checkpoint; the large state file is checked as it is read into memory (one pass),
    and unpickled only once its checksum matched."""
    manifest = _manifest(path)
    version, files = manifest["format"], manifest["files"]
    state, own = _STATE_FILES[version], f"rank-{rank}.{'pt' if version == 1 else 'ckpt'}"
    for name, meta in sorted(files.items()):
        if name != state:
            _check_file(path / name, meta, version)
    if version == 1:
        _check_file(path / state, files[state], version)
        main = torch.load(path / state, map_location="cpu", weights_only=False)
        mine = torch.load(path / own, map_location="cpu", weights_only=False) if own in files else None
        return manifest, main, mine
    kind = _CHECKSUMS[version]
    try:
        main = tensorfile.read(path / state, files[state]["bytes"], files[state].get(kind), landing, kind)
        mine = None
        if own in files:
            mine = tensorfile.read(path / own, files[own]["bytes"], files[own].get(kind), kind=kind)
    except OSError as exc:
        raise Damaged(f"unreadable: {exc}") from None
    return manifest, main, mine


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


def _detected_accelerator() -> str:
    try:
        from agents.runtime.placement import device

        return device().accelerator
    except AssignmentError:
        return "unknown"


# --- files ---------------------------------------------------------------------------


def _write_json(path: Path, data: dict[str, Any], durable: bool = True) -> None:
    """Write `data` to `path` whole or not at all (rename), fsynced unless not `durable`."""
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.flush()
        if durable:
            os.fsync(f.fileno())
    os.rename(tmp, path)


def _sha256(path: Path) -> str:  # FORMAT 1
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 * 1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def _open_unshared(path: Path, mode: int) -> int | None:
    """A descriptor (`mode`: O_RDONLY or O_RDWR) of `path` when it is a plain file with no
    other name that no other descriptor has open, else None: only such a file may be
    written over in place. A second name (a `cp -al` or `rsync --link-dest` snapshot of
    the checkpoints) or a reader still copying the pruned checkpoint (an uploader) would
    see it change under them, where removing it leaves them the old bytes. Open
    descriptors are found with a write lease, which the kernel grants only when no other
    one is open (taken and given back at once); where it is not to be had (a file
    another user owns, leases off, not Linux), None. Opened without following a link and
    without blocking (a FIFO left there must not hang the writer), and checked on the
    descriptor that is then written through."""
    try:
        fd = os.open(path, mode | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
            raise OSError("not a plain file of one name")
        # Were the lease broken in the microseconds it is held, the kernel would signal
        # this process: SIGURG, ignored unless handled, rather than SIGIO, which ends it.
        fcntl.fcntl(fd, fcntl.F_SETSIG, signal.SIGURG)
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_WRLCK)
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
        return fd
    except (OSError, AttributeError):  # AttributeError: an fcntl without leases
        os.close(fd)
        return None


#: Filesystems (statfs f_type) whose files only this machine's processes can have open,
#: so that a lease sees every reader. On a shared filesystem (NFS, CephFS, Lustre, GPFS,
#: FUSE mounts) a reader on another node may hold a pruned checkpoint's file; the kernel
#: grants the lease without seeing it, so nothing there is recycled.
_LOCAL_FILESYSTEMS = {0xEF53: "ext2/3/4", 0x58465342: "xfs", 0x9123683E: "btrfs", 0x01021994: "tmpfs",
                      0xF2F52010: "f2fs"}


def _filesystem_type(path: Path) -> int | None:
    """statfs(2)'s f_type of the filesystem holding `path` (the first field of struct
    statfs on Linux); None where it cannot be had."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        buf = ctypes.create_string_buffer(256)  # larger than struct statfs on any Linux
        if libc.statfs(os.fsencode(path), buf) != 0:
            return None
        return ctypes.c_ulong.from_buffer(buf).value & 0xFFFFFFFF
    except (OSError, AttributeError):
        return None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _env_keep(default: int) -> int:
    value = os.environ.get("TRAINGUARD_CKPT_KEEP", "")
    return int(value) if value.isdigit() and int(value) >= 1 else default
