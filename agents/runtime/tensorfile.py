"""The checkpoint file: a pickled structure whose tensors are raw bytes, snapshotted into
reused host buffers, written and read with a running checksum.

    offset  0   b"TGCKPT\\x00\\x02"             magic, then the file layout's version
            8   u64 little-endian              length of the table
           16   table (JSON)                   {"objects": n, "tensors": [{"dtype", "shape",
                                                "stride", "offset", "param", "grad"}, ...]}
                the structure, pickled (n bytes); each tensor in it is a persistent id:
                its index in the table
                each tensor's bytes, in table order, 64-byte aligned (zero padding)

Why not torch.save: it serialises on the thread that calls it, first touches a fresh
copy of every tensor, and writes through a zip writer; reading back needs torch.load's
copy before load_state_dict's. Here the training loop only copies tensors into host
buffers it reuses save after save (`HostBuffers`); the writer thread streams those
buffers' bytes to the file; the reader reads the file straight into the tensors the
state will live in: the model's own (named in the table), memory a warm standby
prepared (`Landing`), or fresh tensors that the optimizer keeps.

The checksum is computed over every byte as it is written and as it is read, so the
data crosses memory once each way: XXH3-128 of the XXH3-128 digests of each MiB of the
file (`PieceDigest`), so that a load reads and checks pieces on several threads, each
hashed right after it is read, while in the CPU's cache (one stream would leave the
hash on one core, after the bytes had gone out to memory). It guards against torn,
truncated and bit-rotted files, not against an attacker (who could write a pickle
anyway): a non-cryptographic hash is enough, and at ~30 GB/s on one core it costs a few
percent of a write or a read, where sha256 (2 GB/s here) cost more than the read itself.
A 128-bit digest misses a random corruption with probability 2^-128; CRC-32 (zlib,
7 GB/s) would miss one in 2^32. Files of manifest format 2 carry XXH3-128 of the whole
file (`LEGACY_CHECKSUM`) and are read on one thread.

Reusing the buffers is what makes the stall short: on the 2-core VM this was measured on,
first touching fresh memory costs 0.4-0.9 s per GB (page faults, the host backing guest
memory), copying into memory already touched 0.03-0.08 s. (Huge pages, madvised, were
tried: faster for memory a process recycles, 2-4x slower for a fresh process's first
touch here, so not used.) Buffers for tensors on an accelerator are pinned, so their
copies are DMA and run asynchronously.
"""

from __future__ import annotations

import ctypes
import io
import json
import math
import os
import pickle
import struct
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
import xxhash

MAGIC = b"TGCKPT\x00\x02"
CHECKSUM = "xxh3_128_per_mib"  # the manifest's key for a file's digest (PieceDigest)
LEGACY_CHECKSUM = "xxh3_128"  # of the whole file in one stream: files of manifest format 2
PIECE = 1 << 20  # the checksum's piece: read and hashed while in the CPU's cache
READERS = 4  # threads a load reads and checksums with, at most (one per CPU available)
ALIGN = 64
CHUNK = 8 << 20  # checksum and write / read in pieces that stay in the CPU's cache
TOUCH = 64 << 20  # a landing is touched in pieces this big, asking between them whether to stop
_HEAD = struct.Struct("<8sQ")


class Damaged(Exception):
    """The file is not what its manifest says (truncated, corrupted, not ours)."""


Spec = tuple[torch.dtype, tuple[int, ...], tuple[int, ...], bool]  # dtype, shape, stride, pinned


@dataclass
class Snapshot:
    """One file's content, ready for the writer: its table, the pickled structure, and
    the host buffers holding its tensors (in table order)."""

    table: dict[str, Any]
    objects: bytes
    tensors: list[torch.Tensor] = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        return sum(_nbytes(t) for t in self.tensors)


class HostBuffers:
    """Host memory for snapshots: allocated by the first save, reused by every later save
    whose tensors have the same dtype, shape and strides (a training run's do). Between
    `begin()` and `end()` one save takes buffers; what it did not take is freed. The
    caller must not begin a save while the previous one's writer still reads them."""

    def __init__(self) -> None:
        self._held: list[tuple[Spec, torch.Tensor]] = []
        self._free: dict[Spec, list[torch.Tensor]] = {}
        #: Bytes this save had to allocate (0 once the shapes are stable).
        self.new_bytes = 0

    def begin(self) -> None:
        free: dict[Spec, list[torch.Tensor]] = {}
        for spec, buf in self._held:
            free.setdefault(spec, []).append(buf)
        self._free, self._held, self.new_bytes = free, [], 0

    def take(self, spec: Spec) -> torch.Tensor:
        free = self._free.get(spec)
        if free:
            buf = free.pop()
        else:
            buf = host_tensor(*spec)
            self.new_bytes += _nbytes(buf)
        self._held.append((spec, buf))
        return buf

    def end(self) -> None:
        self._free = {}

    def release(self) -> None:
        self._held, self._free = [], {}

    @property
    def nbytes(self) -> int:
        return sum(_nbytes(b) for _, b in self._held)


class Landing:
    """Memory a load reads into, allocated and first touched before the load is needed.

    A fresh process has no memory for the optimizer's state yet, and first touching
    fresh pages costs more than reading the checkpoint into them (0.4-0.9 s per GB on the
    VM this was measured on, against 0.06 s to read into memory already touched). A warm
    standby pays that while it waits (`prepare`, from the newest checkpoint's table: a
    run's tensors keep their shapes from checkpoint to checkpoint), so the load after a
    restart only reads. `read` takes a tensor of the same dtype, shape and strides from
    here, or allocates one when there is none."""

    def __init__(self) -> None:
        self._free: dict[tuple[torch.dtype, tuple[int, ...], tuple[int, ...]], list[torch.Tensor]] = {}
        self._named: dict[str, torch.Tensor] = {}
        #: Bytes prepared and not yet taken.
        self.nbytes = 0
        #: A read wrote into an adopted tensor: its old values are gone, even if the
        #: file then failed its checksum.
        self.overwrote = False
        #: Bytes reads took from here: prepared memory, and adopted (live) tensors.
        self.took_prepared = 0
        self.took_live = 0

    def adopt(self, named: Mapping[str, torch.Tensor]) -> None:
        """Live tensors a read may write straight into, by the name the file gives a tensor
        (the model's own parameters and buffers, whose values the load replaces anyway:
        load_state_dict then finds them in place and copies nothing). Only CPU tensors
        laid out densely qualify; the others are loaded into landing or fresh memory."""
        for name, t in named.items():
            if t.device.type == "cpu" and _plain(t) and _dense_stride(t) == tuple(t.stride()):
                self._named[name] = t.detach()

    def prepare(self, specs: list[tuple[torch.dtype, tuple[int, ...], tuple[int, ...]]],
                stop: Callable[[], bool] = lambda: False) -> bool:
        """Allocate and touch a tensor per spec; `stop` is asked between pieces of
        TOUCH bytes (a standby given its rank stops preparing). True when all were."""
        for dtype, shape, stride in specs:
            buf = torch.empty_strided(shape, stride, dtype=dtype)
            n = _nbytes(buf)
            for at in range(0, n, TOUCH):
                if stop():
                    return False
                ctypes.memset(buf.data_ptr() + at, 0, min(TOUCH, n - at))
            self._free.setdefault((dtype, shape, stride), []).append(buf)
            self.nbytes += n
        return True

    def take(self, dtype: torch.dtype, shape: tuple[int, ...], stride: tuple[int, ...],
             name: str | None = None) -> torch.Tensor | None:
        if name is not None and (live := self._named.pop(name, None)) is not None:
            if (live.dtype, tuple(live.shape), tuple(live.stride())) == (dtype, shape, stride):
                self.overwrote = True
                self.took_live += _nbytes(live)
                return live
        free = self._free.get((dtype, shape, stride))
        if not free:
            return None
        buf = free.pop()
        self.nbytes -= _nbytes(buf)
        self.took_prepared += _nbytes(buf)
        return buf


def host_tensor(dtype: torch.dtype, shape: tuple[int, ...], stride: tuple[int, ...], pinned: bool = False) -> torch.Tensor:
    """An uninitialised CPU tensor, pinned when asked and possible."""
    if pinned:
        try:
            return torch.empty_strided(shape, stride, dtype=dtype, pin_memory=True)
        except RuntimeError:  # no accelerator runtime to pin with: plain memory
            pass
    return torch.empty_strided(shape, stride, dtype=dtype)


# --- snapshot: on the training loop ----------------------------------------------------------


def snapshot(obj: Any, buffers: HostBuffers, names: Mapping[int, str] | None = None) -> Snapshot:
    """Pickle `obj` with every dense tensor in it copied into a host buffer (one copy per
    storage view, however often it appears). Waits for device copies to land. `names`
    (by `id()` of a tensor in `obj`) go into the table: a load may read a named tensor
    straight into the live tensor of that name (`Landing.adopt`)."""
    out = io.BytesIO()
    pickler = _SnapshotPickler(out, buffers, names or {})
    pickler.dump(obj)
    for device in pickler.devices:
        _synchronize(device)
    table = {"objects": out.tell(), "tensors": pickler.table}
    return Snapshot(table, out.getvalue(), pickler.tensors)


class _SnapshotPickler(pickle.Pickler):
    def __init__(self, file: io.BytesIO, buffers: HostBuffers, names: Mapping[int, str]) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.buffers = buffers
        self.names = names
        self.table: list[dict[str, Any]] = []
        self.tensors: list[torch.Tensor] = []
        self.devices: set[torch.device] = set()
        self._seen: dict[tuple[Any, ...], int] = {}
        self._offset = 0

    def persistent_id(self, obj: Any) -> int | None:
        if not isinstance(obj, torch.Tensor) or not _plain(obj):
            return None  # pickled as usual (tensors of other kinds: see reducer_override)
        key = (obj.device, obj.data_ptr(), obj.dtype, tuple(obj.shape), tuple(obj.stride()), type(obj))
        index = self._seen.get(key)
        if index is not None:
            return index
        pinned = obj.device.type != "cpu"
        stride = _dense_stride(obj)
        buf = self.buffers.take((obj.dtype, tuple(obj.shape), stride, pinned))
        with torch.no_grad():
            buf.copy_(obj.detach(), non_blocking=pinned)
        if pinned:
            self.devices.add(obj.device)
        index = len(self.tensors)
        self.tensors.append(buf)
        entry = {
            "dtype": str(obj.dtype).removeprefix("torch."),
            "shape": list(obj.shape),
            "stride": list(stride),
            "offset": self._offset,
            "param": isinstance(obj, torch.nn.Parameter),
            "grad": obj.requires_grad and obj.is_leaf,
        }
        if id(obj) in self.names:
            entry["name"] = self.names[id(obj)]
        self.table.append(entry)
        self._offset = _align(self._offset + _nbytes(buf))
        self._seen[key] = index
        return index

    def reducer_override(self, obj: Any) -> Any:
        # Sparse, quantized, nested or subclassed tensors (rare in a checkpoint): torch's own
        # serialisation of a CPU copy, on the loop. Device tensors must not be pickled as is.
        if isinstance(obj, torch.Tensor) and not _plain(obj):
            held = io.BytesIO()
            torch.save(obj.detach().to("cpu", copy=True), held)
            return _torch_loads, (held.getvalue(),)
        return NotImplemented


def _torch_loads(data: bytes) -> Any:
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)


def _plain(t: torch.Tensor) -> bool:
    return (
        type(t) in (torch.Tensor, torch.nn.Parameter)
        and t.layout == torch.strided
        and not t.is_quantized
        and not t.is_nested
        and t.device.type != "meta"
    )


def _dense_stride(t: torch.Tensor) -> tuple[int, ...]:
    """`t`'s strides if they describe a dense, non-overlapping layout (contiguous or a
    permutation of it, like channels_last), else the contiguous strides."""
    shape, stride = tuple(t.shape), tuple(t.stride())
    if t.is_contiguous() or t.numel() == 0:
        return _contiguous(shape)
    expected = 1
    for dim in sorted((d for d in range(len(shape)) if shape[d] != 1), key=lambda d: stride[d]):
        if stride[dim] != expected:
            return _contiguous(shape)
        expected *= shape[dim]
    return stride


def _contiguous(shape: tuple[int, ...]) -> tuple[int, ...]:
    out, n = [], 1
    for size in reversed(shape):
        out.append(n)
        n *= max(size, 1)
    return tuple(reversed(out))


def _synchronize(device: torch.device) -> None:
    accelerator = getattr(torch, "accelerator", None)
    if accelerator is not None and hasattr(accelerator, "synchronize"):
        accelerator.synchronize(device)
    else:
        getattr(torch, device.type).synchronize(device)


# --- checksums ---------------------------------------------------------------------------------


class PieceDigest:
    """The file checksum (`CHECKSUM`): XXH3-128 of the XXH3-128 digests of each PIECE
    bytes of the file, in order (the last piece may be shorter). Fed in any sizes, in
    file order; the reader computes the same digests piece by piece, on several threads."""

    def __init__(self) -> None:
        self._pieces: list[bytes] = []
        self._piece = xxhash.xxh3_128()
        self._filled = 0

    def update(self, data: bytes | memoryview) -> None:
        view = memoryview(data).cast("B")
        while len(view):
            n = min(len(view), PIECE - self._filled)
            self._piece.update(view[:n])
            self._filled += n
            view = view[n:]
            if self._filled == PIECE:
                self._pieces.append(self._piece.digest())
                self._piece.reset()
                self._filled = 0

    def hexdigest(self) -> str:
        last = [self._piece.digest()] if self._filled else []
        return of_pieces(self._pieces + last)


def of_pieces(digests: list[bytes]) -> str:
    return xxhash.xxh3_128(b"".join(digests)).hexdigest()


def _digest(kind: str) -> Any:
    if kind == CHECKSUM:
        return PieceDigest()
    if kind == LEGACY_CHECKSUM:
        return xxhash.xxh3_128()
    raise ValueError(f"unknown checksum {kind!r}")


def checksum(path: Path, kind: str = CHECKSUM) -> str:
    """The checksum of the file at `path`, read in chunks into one reused buffer."""
    digest = _digest(kind)
    buf = memoryview(bytearray(CHUNK))
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            digest.update(buf[:n])
    return digest.hexdigest()


# --- write: on the background thread ----------------------------------------------------------


def write(path: Path, snap: Snapshot, over: int | None = None) -> dict[str, Any]:
    """Write `snap` to `path`, fsync it; return its size and checksum (of the bytes
    written, as they went out).

    `over`: a descriptor, open for writing, of an old file at `path` being recycled
    (taken over: it is closed here): written over in place and cut to the new size, not
    truncated first. Its blocks stay allocated and its pages cached, so the write is a
    copy into memory the kernel already holds: no block allocation, no discard of freed
    blocks, no first touch of new page-cache memory (which on a VM that hands freed
    memory back to its host costs more than the disk)."""
    table = json.dumps(snap.table, separators=(",", ":")).encode()
    digest = PieceDigest()
    written = 0
    with (open(over, "r+b") if over is not None else open(path, "wb")) as f:

        def put(data: bytes | memoryview) -> None:
            nonlocal written
            digest.update(data)
            f.write(data)
            written += len(data)

        put(_HEAD.pack(MAGIC, len(table)))
        put(table)
        put(snap.objects)
        start = _align(written)
        for entry, buf in zip(snap.table["tensors"], snap.tensors):
            put(bytes(start + entry["offset"] - written))  # padding
            data = _bytes_of(buf)
            for at in range(0, len(data), CHUNK):
                put(data[at:at + CHUNK])
        f.flush()
        if over is not None:
            f.truncate(written)  # the old file may have been longer
        os.fsync(f.fileno())
    return {"bytes": written, CHECKSUM: digest.hexdigest()}


# --- read: at load -----------------------------------------------------------------------------


def read(path: Path, size: int, expected: str | None, landing: Landing | None = None,
         kind: str = CHECKSUM) -> Any:
    """The structure stored at `path`, its tensors in host memory taken from `landing`
    where it has them, else fresh. Every byte is checked against `size` and the checksum
    `expected` (of `kind`: `LEGACY_CHECKSUM` for files written before the per-piece one)
    before anything is unpickled; `Damaged` says what is wrong.

    The small head (table, pickled structure) is read first; then the tensors' bytes are
    read straight into their tensors, piece by piece, on up to READERS threads, each
    piece checksummed right after it is read, while it is still in the CPU's cache."""
    with open(path, "rb", buffering=0) as f:
        head = _exactly(f, _HEAD.size, path)
        magic, table_len = _HEAD.unpack(head)
        if magic != MAGIC:
            raise Damaged(f"{path.name} is not a trainguard checkpoint file of this version")
        if table_len > size:
            raise Damaged(f"{path.name}: a table of {table_len} bytes in a file of {size} (corrupted)")
        try:
            table_bytes = _exactly(f, table_len, path)
            table = json.loads(table_bytes)
            specs = _specs(table, size)
            objects = _exactly(f, table["objects"], path)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise Damaged(f"{path.name}: unreadable table ({exc}; corrupted)") from None
        # The whole file as (offset, view) in order: the head, read already, then each
        # tensor's bytes (into the memory it is loaded into), padding between them.
        known = head + table_bytes + objects
        segments: list[tuple[int, memoryview]] = [(0, memoryview(known))]
        at, start = len(known), _align(len(known))
        tensors = []
        for (dtype, shape, stride, offset, _param, _grad, name) in specs:
            begin = start + offset
            if begin < at:
                raise Damaged(f"{path.name}: offsets out of order (corrupted)")
            if begin > at:
                segments.append((at, memoryview(bytearray(begin - at))))
            buf = landing.take(dtype, shape, stride, name) if landing is not None else None
            if buf is None:
                buf = host_tensor(dtype, shape, stride)
            data = _bytes_of(buf)
            if len(data):
                segments.append((begin, data))
            tensors.append(buf)
            at = begin + len(data)
        if at != size:
            raise Damaged(f"{path.name} has bytes its table does not account for (corrupted)")
        fd = f.fileno()
        if kind == CHECKSUM:
            got = _read_pieces(fd, segments, len(known), path)
        else:
            digest = _digest(kind)
            for offset, view in segments:
                if offset >= len(known):
                    _pread_into(fd, view, offset, path)
                digest.update(view)
            got = digest.hexdigest()
        if os.pread(fd, 1, size):
            raise Damaged(f"{path.name} has bytes its table does not account for (corrupted)")
    if got != expected:
        raise Damaged(f"{path.name} does not match its checksum (corrupted)")
    for i, (*_, param, grad, _name) in enumerate(specs):
        if param:
            tensors[i] = torch.nn.Parameter(tensors[i], requires_grad=grad)
        elif grad:
            tensors[i].requires_grad_(True)
    return _Unpickler(io.BytesIO(objects), tensors).load()


def _read_pieces(fd: int, segments: list[tuple[int, memoryview]], known: int, path: Path) -> str:
    """Fill the segments from offset `known` on, and return the file's checksum: each
    PIECE of the file read, then hashed, by one of a few threads (the reads and xxhash
    release the GIL)."""
    end = segments[-1][0] + len(segments[-1][1])
    pieces: list[list[tuple[int, memoryview]]] = [[] for _ in range(-(-end // PIECE))]
    for offset, view in segments:
        at = offset
        while at < offset + len(view):
            index = at // PIECE
            upto = min(offset + len(view), (index + 1) * PIECE)
            pieces[index].append((at, view[at - offset:upto - offset]))
            at = upto
    digests: list[bytes] = [b""] * len(pieces)
    failed: list[BaseException] = []

    def work(first: int, step: int) -> None:
        try:
            for index in range(first, len(pieces), step):
                if failed:
                    return
                digest = xxhash.xxh3_128()
                for offset, view in pieces[index]:
                    if offset >= known:
                        _pread_into(fd, view, offset, path)
                    digest.update(view)
                digests[index] = digest.digest()
        except BaseException as exc:  # noqa: BLE001 (handed to the caller)
            failed.append(exc)

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    readers = max(1, min(READERS, cpus, len(pieces) // 4))
    threads = [threading.Thread(target=work, args=(k, readers), name=f"checkpoint-read-{k}", daemon=True)
               for k in range(1, readers)]
    for thread in threads:
        thread.start()
    work(0, readers)
    for thread in threads:
        thread.join()
    if failed:
        if isinstance(failed[0], OSError):
            raise Damaged(f"{path.name} is unreadable: {failed[0]}") from None
        raise failed[0]
    return of_pieces(digests)


def _pread_into(fd: int, view: memoryview, offset: int, path: Path) -> None:
    """Read exactly len(view) bytes at `offset` into `view` (a read may return fewer)."""
    got = 0
    while got < len(view):
        n = os.preadv(fd, [view[got:]], offset + got)
        if not n:
            raise Damaged(f"{path.name} ends early (truncated)")
        got += n


def tensor_specs(path: Path) -> list[tuple[torch.dtype, tuple[int, ...], tuple[int, ...], str | None]]:
    """The dtype, shape, strides and name (or None) of each tensor in the file at `path`,
    from its table alone (a few KB read; nothing is verified: use it to size memory,
    never to load)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(_HEAD.size)
        if len(head) < _HEAD.size:
            raise Damaged(f"{path.name} ends early (truncated)")
        magic, table_len = _HEAD.unpack(head)
        if magic != MAGIC or table_len > size:
            raise Damaged(f"{path.name} is not a trainguard checkpoint file of this version")
        try:
            specs = _specs(json.loads(f.read(table_len)), size)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise Damaged(f"{path.name}: unreadable table ({exc}; corrupted)") from None
    return [(dtype, shape, stride, name) for dtype, shape, stride, *_, name in specs]


class _Unpickler(pickle.Unpickler):
    def __init__(self, file: io.BytesIO, tensors: list[torch.Tensor]) -> None:
        super().__init__(file)
        self.tensors = tensors

    def persistent_load(self, pid: Any) -> torch.Tensor:
        if not isinstance(pid, int) or not 0 <= pid < len(self.tensors):
            raise pickle.UnpicklingError(f"no tensor {pid!r} in this file")
        return self.tensors[pid]


def _specs(table: dict[str, Any], size: int) -> list[tuple[Any, ...]]:
    """The table's tensors, checked to lie inside the file (a corrupted table must not
    make the reader allocate terabytes before the checksum fails)."""
    specs, end = [], 0
    for entry in table["tensors"]:
        dtype = getattr(torch, entry["dtype"])
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"not a dtype: {entry['dtype']!r}")
        shape, stride = tuple(int(s) for s in entry["shape"]), tuple(int(s) for s in entry["stride"])
        offset = int(entry["offset"])
        if len(shape) != len(stride) or min((*shape, *stride, 0)) < 0 or offset < end:
            raise ValueError("shape, stride or offset out of order")
        end = offset + math.prod(shape) * _itemsize(dtype)
        if end > size:
            raise ValueError("a tensor beyond the end of the file")
        name = entry.get("name")
        if name is not None and not isinstance(name, str):
            raise ValueError(f"not a tensor name: {name!r}")
        specs.append((dtype, shape, stride, offset, bool(entry["param"]), bool(entry["grad"]), name))
    if not isinstance(table["objects"], int) or not 0 <= table["objects"] <= size:
        raise ValueError("objects length out of range")
    return specs


def _exactly(f: Any, n: int, path: Path) -> bytes:
    if n < 0:
        raise Damaged(f"{path.name}: offsets out of order (corrupted)")
    data = f.read(n) if n else b""
    while len(data) < n:
        more = f.read(n - len(data))
        if not more:
            raise Damaged(f"{path.name} ends early (truncated)")
        data += more
    return data


def _bytes_of(t: torch.Tensor) -> memoryview:
    """The bytes of a dense tensor that starts its storage (a host buffer), as a
    writable memoryview; the caller keeps `t` alive while using it."""
    n = _nbytes(t)
    if n == 0:
        return memoryview(bytearray(0))
    return memoryview((ctypes.c_ubyte * n).from_address(t.data_ptr())).cast("B")


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _itemsize(dtype: torch.dtype) -> int:
    return dtype.itemsize


def _align(n: int) -> int:
    return -(-n // ALIGN) * ALIGN
