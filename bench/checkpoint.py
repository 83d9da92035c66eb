"""How long does a checkpoint stall the training loop, and how fast does one load?

    .venv/bin/python bench/checkpoint.py                 # 100 MB and 1 GB states (a few minutes)
    .venv/bin/python bench/checkpoint.py --quick         # 100 MB, 1 repeat: smoke check
    .venv/bin/python bench/checkpoint.py --sizes 100,1000 --repeat 3 --dir /mnt/ckpt

The training state is a stack of square nn.Linear layers plus AdamW, after one optimizer
step (so AdamW holds exp_avg and exp_avg_sq: state bytes = 3 x parameter bytes, fp32).
MB means 10^6 bytes throughout.

Save, per state size, the methods run side by side, rotating their order in every
repeat so that they share the machine's noise, after one untimed warm-up round; medians
of --repeat runs (default 5) are reported, with the range for the two stalls compared:

  (a) Checkpointer.save(): the stall is the time until save() returns (copy of every
      tensor into the Checkpointer's host buffers, which the first save allocates and
      later saves reuse; the write continues in a background thread). Its "total" is
      the time until wait() returns: the files streamed from those buffers with their
      checksum computed on the way, over the pruned checkpoint's state file (kept as a
      spare) from the third save on, fsync, manifest, atomic rename (pruning the previous checkpoint
      goes on after wait() returns, and is waited for off the clock). wait() is
      called at once, with the loop idle, so the total is the write's own cost, not
      slowed by a training loop competing for the CPUs.
  (b) torch.save({"model", "optimizer"}) to an open file, then flush + fsync: a plain
      synchronous checkpoint that is durable when it returns. The stall is all of it.
  (c) the same torch.save without fsync, for reference: what a loop that does not
      care about durability pays (the kernel writes the dirty pages back later; the
      benchmark fsyncs them outside the timing so the next measurement starts clean).
  (d) copying every tensor into host buffers allocated once and reused, for reference:
      the floor for the stall of any snapshot-then-write design.
  (e) a plain sequential write of as many bytes as the Checkpointer's files hold, from
      one reused 16 MiB buffer, into a new file in the same directory, then fsync: the
      disk's sequential write bandwidth as the page cache and fsync deliver it.
  Each measurement is followed, off the clock, by os.sync(): the files a method removed
  (a pruned checkpoint, its own file) are trimmed at the next journal commit when the
  file system is mounted with `discard`, which must not land on the next method.

  ratio = (b) / (a): how many times shorter the loop stalls with the Checkpointer.
  write bandwidth = bytes / (total - stall) for (a), bytes / time for (e); their ratio
  says how close the background write comes to the disk. Both the ratio of the medians
  and that of the best runs are reported: where the disk's speed swings in bursts (a VM's
  disk does, by 5x), the best run is each writer's speed with the disk out of the way.

Load: Checkpointer.load_latest() (every file read once and checksummed piece by piece
as it is read, the model's weights straight into the model's tensors, the rest into
host memory, then load_state_dict) into a freshly built model (its memory written, as
building a model does; not timed) and optimizer, two ways:
  - "load_latest": the rest into fresh memory, as a process started cold loads;
  - "load_latest, prepared": into memory `checkpoint.prepare_load()` first touched
    beforehand (not timed), as a warm standby does while it waits for its rank.
Both against the floor of reading the same files' bytes with plain Python reads of
16 MiB chunks into one reused buffer. ratio = load / read. For reference, the same reads
into fresh memory the size of the files ("read into fresh memory"): what any load that
keeps the bytes in memory it has not touched before pays before it does anything else.
"warm" means the files are in the page cache. "cold" is measured only when the page
cache can be emptied: as root through /proc/sys/vm/drop_caches, otherwise per file with
posix_fadvise(POSIX_FADV_DONTNEED), which any user may do for clean pages; mincore()
confirms the pages are gone. Cold is the guest's cache only: on a virtual machine the
host may still cache the disk image.

Memory: the live state, the reused buffers of (d) and the Checkpointer's host copy (3x)
while saving; all are freed before the loads (a fresh model + the loaded state). Disk:
two checkpoints' state files (keep=1 commits the new one before pruning the old one,
whose state file it keeps as the spare that the next save writes over); the plain
torch.save file is removed after each measurement. Everything written goes into a
fresh directory (under /tmp, or under --dir) that is removed at the end.

Raw timings, sizes and machine details go to bench/out/checkpoint.json (git-ignored).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import io
import json
import math
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # the repo's agents/, even if the editable install points elsewhere

import torch  # noqa: E402

from agents.runtime import checkpoint, tensorfile  # noqa: E402
from agents.runtime.checkpoint import MANIFEST, STATE_FILE, Checkpointer, verify  # noqa: E402
from agents.runtime.env import Assignment  # noqa: E402

MB = 1_000_000
CHUNK = 16 * 1024 * 1024  # plain-read chunk size
LAYERS = 4  # square Linear layers per model
SOLO = Assignment(  # one rank on CPU, nothing from the environment
    accelerator="cpu", rank=0, local_rank=0, world_size=1, local_world_size=1,
    heartbeat=None, ckpt_dir=None, job=None, node=None,
)


def log(msg: str) -> None:
    print(msg, flush=True)


# --- the training state -----------------------------------------------------------------


def width_for(target_mb: float) -> int:
    """Width d of LAYERS Linear(d, d) layers whose params + AdamW state is ~target_mb.
    Per layer: d*d + d parameters, 3 fp32 copies of each (param, exp_avg, exp_avg_sq)."""
    params = target_mb * MB / (3 * 4)
    d = (-1 + math.sqrt(1 + 4 * params / LAYERS)) / 2
    return max(8, round(d / 8) * 8)


def make_model(d: int, init: bool) -> torch.nn.Module:
    if init:
        return torch.nn.Sequential(*[torch.nn.Linear(d, d) for _ in range(LAYERS)])
    # A "fresh process" model for loading: allocated, not initialised (that is not what
    # is being measured, and load_state_dict overwrites every value anyway).
    return torch.nn.Sequential(*[torch.nn.utils.skip_init(torch.nn.Linear, d, d) for _ in range(LAYERS)])


def build_state(d: int) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """A model + AdamW after one step, so the optimizer state exists (2x the params)."""
    model = make_model(d, init=True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for p in model.parameters():  # fake gradients: cheaper than a forward/backward
        p.grad = torch.randn_like(p).mul_(1e-3)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return model, opt


def state_bytes(model: torch.nn.Module, opt: torch.optim.Optimizer) -> dict[str, int]:
    def nbytes(t: torch.Tensor) -> int:
        return t.numel() * t.element_size()

    model_b = sum(nbytes(t) for t in model.state_dict().values())
    opt_b = sum(nbytes(v) for s in opt.state.values() for v in s.values() if isinstance(v, torch.Tensor))
    return {"model": model_b, "optimizer": opt_b, "total": model_b + opt_b}


def fingerprint(model: torch.nn.Module, opt: torch.optim.Optimizer) -> list[torch.Tensor]:
    """The first 256 values of every tensor: enough to tell a real restore from none."""
    out = [t.detach().flatten()[:256].clone() for t in model.state_dict().values()]
    for s in opt.state_dict()["state"].values():
        out += [v.flatten()[:256].clone() for v in s.values() if isinstance(v, torch.Tensor)]
    return out


# --- page cache ------------------------------------------------------------------------


def _libc() -> Any:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    return libc


def resident_fraction(files: list[Path]) -> float | None:
    """Fraction of the files' pages in the page cache (mincore), or None if unknown."""
    try:
        libc, page = _libc(), os.sysconf("SC_PAGE_SIZE")
        total = cached = 0
        for path in files:
            size = path.stat().st_size
            if size == 0:
                continue
            fd = os.open(path, os.O_RDONLY)
            try:
                addr = libc.mmap(None, size, 1, 1, fd, 0)  # PROT_READ, MAP_SHARED
            finally:
                os.close(fd)
            if addr in (None, ctypes.c_void_p(-1).value):
                return None
            pages = (size + page - 1) // page
            vec = (ctypes.c_ubyte * pages)()
            ok = libc.mincore(addr, size, vec) == 0
            libc.munmap(addr, size)
            if not ok:
                return None
            total += pages
            cached += sum(v & 1 for v in vec)
        return cached / total if total else None
    except (OSError, AttributeError, ValueError):
        return None


def _fadvise_out(files: list[Path]) -> None:
    for path in files:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _drop_caches(files: list[Path]) -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def cold_cache_method(probe: Path) -> tuple[str | None, Callable[[list[Path]], None] | None, str]:
    """How (if at all) this process can empty the page cache of given files. Each way is
    tried on a cached 8 MiB probe file and trusted only if mincore() then finds it gone (a
    write to drop_caches can succeed in a container and do nothing)."""
    with open(probe, "wb") as f:
        f.write(os.urandom(8 << 20))
        f.flush()
        os.fsync(f.fileno())
    notes = []
    try:
        for name, evict in (("drop_caches", _drop_caches), ("fadvise", _fadvise_out)):
            with open(probe, "rb") as f:
                f.read()  # cache it
            try:
                evict([probe])
            except (OSError, AttributeError) as exc:
                notes.append(f"{name} failed ({exc})")
                continue
            left = resident_fraction([probe])
            if left is not None and left < 0.05:
                how = {"drop_caches": "echo 3 > /proc/sys/vm/drop_caches (as root)",
                       "fadvise": "posix_fadvise(POSIX_FADV_DONTNEED) per file"}[name]
                return name, evict, "; ".join(notes + [f"cold = evicted with {how}, confirmed with mincore"])
            notes.append(f"{name} left {left if left is None else f'{left:.0%}'} of the probe cached")
        return None, None, "; ".join(notes + ["warm cache only"])
    finally:
        probe.unlink(missing_ok=True)


def plain_read(files: list[Path]) -> int:
    """Read every byte of the files, in big chunks, into one reused buffer."""
    buf = memoryview(bytearray(CHUNK))
    n = 0
    for path in files:
        with open(path, "rb", buffering=0) as f:
            while k := f.readinto(buf):
                n += k
    return n


def read_fresh(files: list[Path]) -> int:
    """Read every byte of the files into fresh memory of their size (kept until all are
    read), in big chunks."""
    held, n = [], 0
    for path in files:
        data = torch.empty(path.stat().st_size, dtype=torch.uint8)
        view = memoryview(data.numpy()) if data.numel() else memoryview(bytearray(0))
        with open(path, "rb", buffering=0) as f:
            while n_read := f.readinto(view[: CHUNK]):
                view = view[n_read:]
                n += n_read
        held.append(data)
    return n


def plain_write(path: Path, nbytes: int) -> dict[str, Any]:
    """Write nbytes from one reused 16 MiB buffer into a new file, fsync it: the disk's
    sequential write bandwidth, as the page cache and fsync deliver it."""
    path.unlink(missing_ok=True)
    buf = memoryview(os.urandom(CHUNK))
    t0 = time.perf_counter()
    with open(path, "wb", buffering=0) as f:
        left = nbytes
        while left:
            left -= f.write(buf[: min(left, CHUNK)])
        os.fsync(f.fileno())
    took = time.perf_counter() - t0
    path.unlink()
    return {"stall_s": took, "bytes": nbytes, "mb_per_s": nbytes / MB / took}


# --- measurements ----------------------------------------------------------------------


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    gc.collect()  # not inside the timing: freed copies of the last run are gone first
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def events_in(text: str) -> list[dict[str, Any]]:
    """The runtime's JSON log lines (emit() writes them to stderr; captured here)."""
    found = []
    for line in text.splitlines():
        with contextlib.suppress(ValueError):
            found.append(json.loads(line))
    return found


def save_checkpointer(ck: Checkpointer, step: int, model: torch.nn.Module, opt: torch.optim.Optimizer) -> dict[str, Any]:
    captured = io.StringIO()
    gc.collect()
    with contextlib.redirect_stderr(captured):
        t0 = time.perf_counter()
        ck.save(step, model=model, optimizer=opt)
        t1 = time.perf_counter()  # the loop would go on training from here
        error = ck.wait()
        t2 = time.perf_counter()
        ck.wait(pruned=True)  # the older checkpoint's removal, off the clock, before the next method
    if error is not None:
        raise RuntimeError(f"Checkpointer failed to write step {step}: {error!r}")
    saved = [e for e in events_in(captured.getvalue()) if e.get("event") == "runtime.checkpoint_saved"]
    nbytes = saved[-1].get("bytes") if saved else None
    return {
        "stall_s": t1 - t0,
        "total_s": t2 - t0,
        # the background write's bandwidth, until wait() returned
        "write_mb_per_s": nbytes / MB / (t2 - t1) if nbytes else None,
        "last_stall_s": ck.last_stall,  # the Checkpointer's own measure of the copy
        "write_s": saved[-1].get("write_s") if saved else None,  # background thread, its own clock
        "data_s": saved[-1].get("data_s") if saved else None,  # of which the files, written and fsynced
        "bytes": saved[-1].get("bytes") if saved else None,
    }


def save_plain(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, fsync: bool) -> dict[str, Any]:
    path.unlink(missing_ok=True)  # a new file each time, as the Checkpointer writes one

    def write() -> None:
        with open(path, "wb") as f:
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, f)
            if fsync:
                f.flush()
                os.fsync(f.fileno())

    stall, _ = timed(write)
    out: dict[str, Any] = {"stall_s": stall, "bytes": path.stat().st_size}
    if not fsync:  # write back outside the timing, so the next measurement starts clean
        t0 = time.perf_counter()
        with open(path, "rb+") as f:
            os.fsync(f.fileno())
        out["deferred_fsync_s"] = time.perf_counter() - t0
    path.unlink()
    return out


def bench_size(target_mb: float, repeat: int, work: Path, evict: Callable[[list[Path]], None] | None) -> dict[str, Any]:
    d = width_for(target_mb)
    t0 = time.perf_counter()
    model, opt = build_state(d)
    sizes = state_bytes(model, opt)
    log(f"\n== state ~{target_mb:g} MB: {LAYERS} x Linear({d}, {d}) + AdamW = "
        f"{sizes['model'] / MB:.1f} MB model + {sizes['optimizer'] / MB:.1f} MB optimizer = "
        f"{sizes['total'] / MB:.1f} MB (built in {time.perf_counter() - t0:.1f} s)")

    ckpt_dir = work / f"ckpt-{int(target_mb)}"
    plain = work / f"plain-{int(target_mb)}.pt"
    ck = Checkpointer(ckpt_dir, keep=1, assigned=SOLO)

    step = 0  # of the newest Checkpointer save

    def checkpointer() -> dict[str, Any]:
        nonlocal step
        step += 1
        return save_checkpointer(ck, step, model, opt)

    # The floor for any snapshot-then-write-in-background design: copying every tensor
    # into host buffers allocated once (in the warm-up round) and reused, instead of into
    # fresh memory each time as Checkpointer.save() does. The difference is the cost of
    # allocating and first-touching new memory, which can dominate the stall.
    buffers: list[torch.Tensor] = []

    def copy_reused() -> dict[str, Any]:
        live = list(model.state_dict().values())
        live += [v for st in opt.state.values() for v in st.values() if isinstance(v, torch.Tensor)]
        if not buffers:
            buffers.extend(torch.empty_like(t) for t in live)

        def copy() -> None:
            for buf, t in zip(buffers, live):
                buf.copy_(t)

        stall, _ = timed(copy)
        return {"stall_s": stall}

    ckpt_bytes: list[int] = []  # of the Checkpointer's files, known after its warm-up save

    methods: dict[str, Callable[[], dict[str, Any]]] = {
        "checkpointer": checkpointer,
        "torch_save_fsync": lambda: save_plain(plain, model, opt, fsync=True),
        "torch_save_nofsync": lambda: save_plain(plain, model, opt, fsync=False),
        "copy_reused_buffers": copy_reused,
        "plain_write_fsync": lambda: plain_write(plain, ckpt_bytes[0]),
    }
    names = list(methods)
    # One untimed round first (kept in the JSON): the first write of a new size touches
    # memory and page cache the process has not used yet, which on a VM can cost more
    # than the write itself (the host backs guest memory lazily).
    warmup = {}
    for name in names:
        warmup[name] = methods[name]()
        if name == "checkpointer":
            ckpt_bytes.append(warmup[name]["bytes"])
        log(f"  save  warm-up {name:<18} stall {warmup[name]['stall_s']:.3f} s (not counted)")
    runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    for i in range(repeat):
        order = names[i % len(names):] + names[: i % len(names)]  # rotate: each method takes each slot
        for name in order:
            r = methods[name]()
            runs[name].append(r)
            # Off the clock, let the file system finish what this method left it: with the
            # `discard` mount option, removing a 1 GB file (a pruned checkpoint, the plain
            # write's file) makes the next journal commit trim 1 GB, which would otherwise
            # land on whichever method fsyncs next.
            os.sync()
            extra = f", until wait() {r['total_s']:.3f} s" if "total_s" in r else ""
            extra += f" (files written and fsynced {r['data_s']:.3f} s)" if r.get("data_s") is not None else ""
            extra += f", {r['write_mb_per_s']:,.0f} MB/s written" if r.get("write_mb_per_s") else ""
            extra += f", {r['mb_per_s']:,.0f} MB/s" if "mb_per_s" in r else ""
            log(f"  save  #{i + 1} {name:<20} stall {r['stall_s']:.3f} s{extra}")

    med = {n: statistics.median(r["stall_s"] for r in runs[n]) for n in names}
    save = {
        "warmup": warmup,
        "runs": runs,
        "order": "rotated each repeat",
        "median_stall_s": med,
        "median_checkpointer_total_s": statistics.median(r["total_s"] for r in runs["checkpointer"]),
        "ratio_sync_over_async": med["torch_save_fsync"] / med["checkpointer"],
        "median_checkpointer_write_mb_per_s": statistics.median(r["write_mb_per_s"] for r in runs["checkpointer"]),
        "median_plain_write_mb_per_s": statistics.median(r["mb_per_s"] for r in runs["plain_write_fsync"]),
    }
    save["ratio_write_over_disk"] = save["median_checkpointer_write_mb_per_s"] / save["median_plain_write_mb_per_s"]
    # The best of the repeats too: on a shared or virtual disk the same 1 GB write + fsync
    # takes anywhere from 0.4 to 3 s in bursts that span a few measurements, whichever
    # code writes it, so a median of five can land either side of the other's. The
    # fastest write is what each one can do when the disk lets it, and the disk's
    # bandwidth is the plain write's best.
    save["best_checkpointer_write_mb_per_s"] = max(r["write_mb_per_s"] for r in runs["checkpointer"])
    save["best_plain_write_mb_per_s"] = max(r["mb_per_s"] for r in runs["plain_write_fsync"])
    save["ratio_write_over_disk_best"] = save["best_checkpointer_write_mb_per_s"] / save["best_plain_write_mb_per_s"]

    # --- load: free the live state first (a resumed process has only the fresh one) ----
    expected = fingerprint(model, opt)
    # Drop every reference (the closures above hold model and opt too) so gc frees them.
    methods.clear()
    buffers.clear()
    model = opt = None  # type: ignore[assignment]
    gc.collect()
    step_dir = ck.committed()[-1][1]
    files = sorted(p for p in step_dir.iterdir() if p.is_file())
    nbytes = sum(p.stat().st_size for p in files)
    log(f"  load  checkpoint {step_dir.name}: {', '.join(f'{p.name} {p.stat().st_size / MB:.1f} MB' for p in files)}")

    def load_once(prepared: bool = False) -> dict[str, Any]:
        fresh = make_model(d, init=False)
        with torch.no_grad():
            for p in fresh.parameters():  # built: a process initialises its model before it loads
                p.zero_()
        fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=1e-3)
        if prepared:
            done = checkpoint.prepare_load(ckpt_dir, weights=False)
            if "prepared" not in done:
                raise RuntimeError(f"prepare_load did not prepare: {done}")
        loader = Checkpointer(ckpt_dir, keep=1, assigned=SOLO)
        captured = io.StringIO()
        with contextlib.redirect_stderr(captured):
            took, restored = timed(lambda: loader.load_latest(model=fresh, optimizer=fresh_opt))
        if restored is None or restored.step != step:
            raise RuntimeError(f"load_latest restored {restored!r}, expected step {step}: {captured.getvalue()}")
        got = fingerprint(fresh, fresh_opt)
        if len(got) != len(expected) or not all(torch.equal(a, b) for a, b in zip(got, expected)):
            raise RuntimeError("load_latest restored different values from those saved")
        return {"s": took}

    def read_once() -> dict[str, Any]:
        took, n = timed(lambda: plain_read(files))
        assert n == nbytes
        return {"s": took}

    def read_fresh_once() -> dict[str, Any]:
        took, n = timed(lambda: read_fresh(files))
        assert n == nbytes
        return {"s": took}

    def cold(fn: Callable[[], dict[str, Any]]) -> Callable[[], dict[str, Any]]:
        def run() -> dict[str, Any]:
            evict(files)
            left = resident_fraction(files)
            return {**fn(), "resident_before": left}
        return run

    def load_prepared_once() -> dict[str, Any]:
        return load_once(prepared=True)

    load_methods: dict[str, Callable[[], dict[str, Any]]] = {
        "load_warm": load_once, "load_prepared_warm": load_prepared_once, "read_warm": read_once,
        "read_fresh_warm": read_fresh_once,
    }
    if evict is not None:
        load_methods |= {"load_cold": cold(load_once), "load_prepared_cold": cold(load_prepared_once),
                         "read_cold": cold(read_once)}
    lnames = list(load_methods)
    lruns: dict[str, list[dict[str, Any]]] = {n: [] for n in lnames}
    parts: list[dict[str, float]] = []
    for i in range(repeat):
        order = lnames[i % len(lnames):] + lnames[: i % len(lnames)]
        for name in order:
            if name.endswith("_warm"):
                plain_read(files)  # make sure the cache is warm (a cold run may have emptied it)
                left = resident_fraction(files)
                lruns[name].append({**load_methods[name](), "resident_before": left})
            else:
                lruns[name].append(load_methods[name]())
            log(f"  load  #{i + 1} {name:<20} {lruns[name][-1]['s']:.3f} s")
        # Where load_latest's time goes (warm): verify = the checksum of every file, read
        # into one reused buffer; read = the state file into fresh tensors, checksummed.
        plain_read(files)
        t_verify, problem = timed(lambda: verify(step_dir))
        assert problem is None, problem
        meta = json.loads((step_dir / MANIFEST).read_text())["files"][STATE_FILE]
        t_read, obj = timed(lambda: tensorfile.read(step_dir / STATE_FILE, meta["bytes"], meta[tensorfile.CHECKSUM]))
        del obj
        parts.append({"verify_s": t_verify, "read_state_s": t_read})
        log(f"  load  #{i + 1} parts (warm)           verify {t_verify:.3f} s, read state file {t_read:.3f} s")

    lmed = {n: statistics.median(r["s"] for r in lruns[n]) for n in lnames}
    load: dict[str, Any] = {
        "files": {p.name: p.stat().st_size for p in files},
        "bytes": nbytes,
        "runs": lruns,
        "median_s": lmed,
        "mb_per_s": {n: nbytes / MB / s for n, s in lmed.items()},
        "ratio_load_over_read_warm": lmed["load_warm"] / lmed["read_warm"],
        "ratio_load_prepared_over_read_warm": lmed["load_prepared_warm"] / lmed["read_warm"],
        "ratio_load_over_read_fresh_warm": lmed["load_warm"] / lmed["read_fresh_warm"],
        "parts_warm": parts,
        "median_verify_s": statistics.median(p["verify_s"] for p in parts),
        "median_read_state_s": statistics.median(p["read_state_s"] for p in parts),
    }
    if evict is not None:
        load["ratio_load_over_read_cold"] = lmed["load_cold"] / lmed["read_cold"]
        load["ratio_load_prepared_over_read_cold"] = lmed["load_prepared_cold"] / lmed["read_cold"]

    ck.close()
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    gc.collect()
    return {"target_mb": target_mb, "width": d, "layers": LAYERS, "state_bytes": sizes,
            "repeat": repeat, "save": save, "load": load}


# --- machine, report -------------------------------------------------------------------


def filesystem_of(path: Path) -> dict[str, str]:
    """The mount holding `path` (longest mount point that prefixes it)."""
    real, best = str(path.resolve()), {"mount": "?", "type": "?", "device": "?"}
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mounts").read_text().splitlines():
            dev, mnt, fstype = line.split()[:3]
            mnt = mnt.replace("\\040", " ")
            inside = real == mnt or real.startswith(mnt.rstrip("/") + "/")
            if inside and (best["mount"] == "?" or len(mnt) >= len(best["mount"])):
                best = {"mount": mnt, "type": fstype, "device": dev}
    return best


def mem_available() -> int | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return None


def machine(work: Path) -> dict[str, Any]:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_count": os.cpu_count(),
        "cpu": cpu,
        "mem_total_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
        "mem_available_bytes": mem_available(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "dir": str(work),
        "filesystem": filesystem_of(work),
        "disk_free_bytes": shutil.disk_usage(work).free,
    }


def fmt_size(mb: float) -> str:
    return f"{mb / 1000:.2f} GB" if mb >= 1000 else f"{mb:.0f} MB"


def table(results: list[dict[str, Any]], info: dict[str, Any], cache: dict[str, Any]) -> str:
    m = info
    runs = ", ".join(f"{r['repeat']} ({fmt_size(r['target_mb'])})" for r in results)
    lines = [
        f"Machine: {m['nproc']} CPUs ({m['cpu']}), {m['mem_total_bytes'] / 2**30:.0f} GiB RAM, "
        f"torch {m['torch']}, {m['filesystem']['type']} on {m['filesystem']['device']}. "
        f"Medians of {runs} runs per method, "
        f"after one warm-up round; MB = 10^6 bytes.",
        "",
        "Save: how long the training loop stalls per checkpoint",
        "",
        "| state (model + AdamW) | Checkpointer.save() stall (min-max) | torch.save + fsync stall (min-max) "
        "| ratio sync / async "
        "| Checkpointer until wait() returns | torch.save, no fsync (ref.) | copy into reused buffers (ref.) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        s = r["save"]
        med = s["median_stall_s"]

        def spread(name: str) -> str:  # median (min-max): the noise, visible in the table
            xs = [x["stall_s"] for x in s["runs"][name]]
            return f"{med[name]:.3f} s" + (f" ({min(xs):.2f}-{max(xs):.2f})" if len(xs) > 1 else "")

        lines.append(
            f"| {r['state_bytes']['total'] / MB:.1f} MB | {spread('checkpointer')} | {spread('torch_save_fsync')} "
            f"| {s['ratio_sync_over_async']:.1f}x | {s['median_checkpointer_total_s']:.3f} s "
            f"| {med['torch_save_nofsync']:.3f} s | {med['copy_reused_buffers']:.3f} s |"
        )
    lines += ["", "Write: the Checkpointer's background write (until wait() returns) against a plain "
              "sequential write + fsync of as many bytes into the same directory", "",
              "| state | Checkpointer write: median (best) | plain write + fsync: median (best) "
              "| ratio of the medians | ratio of the bests |", "|---|---:|---:|---:|---:|"]
    for r in results:
        s = r["save"]
        lines.append(f"| {r['state_bytes']['total'] / MB:.1f} MB "
                     f"| {s['median_checkpointer_write_mb_per_s']:,.0f} ({s['best_checkpointer_write_mb_per_s']:,.0f}) MB/s "
                     f"| {s['median_plain_write_mb_per_s']:,.0f} ({s['best_plain_write_mb_per_s']:,.0f}) MB/s "
                     f"| {s['ratio_write_over_disk']:.0%} | {s['ratio_write_over_disk_best']:.0%} |")
    cold = cache["method"] is not None
    lines += ["", f"Load: Checkpointer.load_latest() vs plain 16 MiB reads of the same files "
              f"({'warm = in page cache; cold = evicted by ' + cache['method'] if cold else 'warm cache: could not empty the page cache'})",
              ""]
    head = ("| checkpoint files | load_latest, prepared, warm | load_latest, warm | plain read, warm "
            "| ratio load / read, warm: prepared / not | read into fresh memory, warm (ref.) ")
    rule = "|---|---:|---:|---:|---:|---:"
    if cold:
        head += "| load_latest, prepared, cold | load_latest, cold | plain read, cold | ratio, cold: prepared / not "
        rule += "|---:|---:|---:|---:"
    head += "| checksum of every file / read of the state file, warm |"
    rule += "|---:|"
    lines += [head, rule]
    for r in results:
        ld = r["load"]
        med, mbs = ld["median_s"], ld["mb_per_s"]

        def cell(n: str) -> str:
            return f"{med[n]:.3f} s ({mbs[n]:,.0f} MB/s)"

        row = (f"| {ld['bytes'] / MB:.1f} MB | {cell('load_prepared_warm')} | {cell('load_warm')} | {cell('read_warm')} "
               f"| {ld['ratio_load_prepared_over_read_warm']:.1f}x / {ld['ratio_load_over_read_warm']:.1f}x "
               f"| {cell('read_fresh_warm')} ")
        if cold:
            row += (f"| {cell('load_prepared_cold')} | {cell('load_cold')} | {cell('read_cold')} "
                    f"| {ld['ratio_load_prepared_over_read_cold']:.1f}x / {ld['ratio_load_over_read_cold']:.1f}x ")
        row += f"| {ld['median_verify_s']:.3f} s / {ld['median_read_state_s']:.3f} s |"
        lines.append(row)
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="100,1000", help="state sizes in MB, comma-separated (default 100,1000)")
    ap.add_argument("--dir", type=Path, default=None,
                    help="write checkpoints in a new subdirectory of DIR (default: a temp dir under /tmp); "
                         "removed afterwards")
    ap.add_argument("--repeat", type=int, default=None,
                    help="timed runs per method, after one warm-up round (default 5)")
    ap.add_argument("--quick", action="store_true", help="100 MB only, 1 repeat: a smoke check")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "checkpoint.json", help="JSON results")
    args = ap.parse_args()

    sizes = [100.0] if args.quick else [float(s) for s in args.sizes.split(",") if s.strip()]
    if args.quick:
        args.repeat = 1
    if args.repeat is not None and args.repeat < 1:
        ap.error("--repeat must be at least 1")
    if not sizes or any(s <= 0 for s in sizes):
        ap.error("--sizes: positive sizes in MB")

    base = args.dir if args.dir is not None else Path("/tmp")
    base.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="trainguard-bench-ckpt-", dir=base))
    started = time.perf_counter()
    try:
        info = machine(work)
        # Peak: live state + reused buffers + the Checkpointer's copy (3x) in RAM; two
        # checkpoints on disk.
        biggest = max(sizes) * MB
        if info["mem_available_bytes"] is not None and info["mem_available_bytes"] < 3.5 * biggest:
            raise SystemExit(f"not enough free memory for a {max(sizes):g} MB state "
                             f"({info['mem_available_bytes'] / 2**30:.1f} GiB available, need ~{3.5 * biggest / 2**30:.1f})")
        if info["disk_free_bytes"] < 2.5 * biggest:
            raise SystemExit(f"not enough free disk in {work} for a {max(sizes):g} MB state")

        method, evict, why = cold_cache_method(work / "probe")
        cache = {"method": method, "note": why}
        log(f"bench/checkpoint.py: {info['nproc']} CPUs, torch {info['torch']}, "
            f"{info['filesystem']['type']} at {work}; page cache: {why}")

        # Warm-up: the first torch.save / Checkpointer save pays one-off costs (imports,
        # lazy initialisation) that belong to no state size.
        warm_model, warm_opt = build_state(64)
        warm_ck = Checkpointer(work / "warmup", keep=1, assigned=SOLO)
        save_checkpointer(warm_ck, 1, warm_model, warm_opt)
        save_plain(work / "warmup.pt", warm_model, warm_opt, fsync=True)
        shutil.rmtree(work / "warmup")
        del warm_model, warm_opt, warm_ck

        results = []
        for target in sizes:
            repeat = args.repeat or 5
            results.append(bench_size(target, repeat, work, evict))

        total = time.perf_counter() - started
        report = table(results, info, cache)
        peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
        log("\n" + report)
        log(f"\nTotal {total:.0f} s; peak RSS {peak_rss / 2**30:.2f} GiB.")

        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "started_at": time.time() - total,
            "total_s": total,
            "peak_rss_bytes": peak_rss,
            "mb": MB,
            "machine": info,
            "page_cache": cache,
            "results": results,
            "table": report,
        }, indent=1) + "\n")
        log(f"Raw timings: {args.out}")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
