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
buffers' bytes to the file; the reader streams the file into fresh tensors that
load_state_dict (or the optimizer, which keeps them) uses directly.

The checksum is XXH3-128, computed over every byte as it is written and as it is read,
so the data crosses memory once each way. It guards against torn, truncated and
bit-rotted files, not against an attacker (who could write a pickle anyway): a
non-cryptographic hash is enough, and at ~30 GB/s on one core it costs a few percent of
a write or a read, where sha256 (2 GB/s here) cost more than the read itself. A 128-bit
digest misses a random corruption with probability 2^-128; CRC-32 (zlib, 7 GB/s) would
miss one in 2^32.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import xxhash

MAGIC = b"TGCKPT\x00\x02"
CHECKSUM = "xxh3_128"  # the manifest's key for a file's digest
ALIGN = 64
CHUNK = 8 << 20  # checksum and write / read in pieces that stay in the CPU's cache
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


def host_tensor(dtype: torch.dtype, shape: tuple[int, ...], stride: tuple[int, ...], pinned: bool = False) -> torch.Tensor:
    """An uninitialised CPU tensor, pinned when asked and possible."""
    if pinned:
        try:
            return torch.empty_strided(shape, stride, dtype=dtype, pin_memory=True)
        except RuntimeError:  # no accelerator runtime to pin with: plain memory
            pass
    return torch.empty_strided(shape, stride, dtype=dtype)


# --- snapshot: on the training loop ----------------------------------------------------------


def snapshot(obj: Any, buffers: HostBuffers) -> Snapshot:
    """Pickle `obj` with every dense tensor in it copied into a host buffer (one copy per
    storage view, however often it appears). Waits for device copies to land."""
    out = io.BytesIO()
    pickler = _SnapshotPickler(out, buffers)
    pickler.dump(obj)
    for device in pickler.devices:
        _synchronize(device)
    table = {"objects": out.tell(), "tensors": pickler.table}
    return Snapshot(table, out.getvalue(), pickler.tensors)


class _SnapshotPickler(pickle.Pickler):
    def __init__(self, file: io.BytesIO, buffers: HostBuffers) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.buffers = buffers
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
        self.table.append({
            "dtype": str(obj.dtype).removeprefix("torch."),
            "shape": list(obj.shape),
            "stride": list(stride),
            "offset": self._offset,
            "param": isinstance(obj, torch.nn.Parameter),
            "grad": obj.requires_grad and obj.is_leaf,
        })
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


# --- write: on the background thread ----------------------------------------------------------


def write(path: Path, snap: Snapshot) -> dict[str, Any]:
    """Write `snap` to `path`, fsync it; return its size and checksum (of the bytes
    written, as they went out)."""
    table = json.dumps(snap.table, separators=(",", ":")).encode()
    digest = xxhash.xxh3_128()
    written = 0
    with open(path, "wb") as f:

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
        os.fsync(f.fileno())
    return {"bytes": written, CHECKSUM: digest.hexdigest()}


# --- read: at load -----------------------------------------------------------------------------


def read(path: Path, size: int, expected: str) -> Any:
    """The structure stored at `path`, its tensors in fresh host memory. Every byte is
    checked against `size` and the checksum `expected` before anything is unpickled;
    `Damaged` says what is wrong."""
    digest = xxhash.xxh3_128()
    with open(path, "rb", buffering=0) as f:
        head = _read(f, _HEAD.size, digest, path)
        magic, table_len = _HEAD.unpack(head)
        if magic != MAGIC:
            raise Damaged(f"{path.name} is not a trainguard checkpoint file of this version")
        if table_len > size:
            raise Damaged(f"{path.name}: a table of {table_len} bytes in a file of {size} (corrupted)")
        try:
            table = json.loads(_read(f, table_len, digest, path))
            specs = _specs(table, size)
            objects = _read(f, table["objects"], digest, path)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise Damaged(f"{path.name}: unreadable table ({exc}; corrupted)") from None
        at = _HEAD.size + table_len + len(objects)
        start = _align(at)
        tensors = []
        for (dtype, shape, stride, offset, _param, _grad) in specs:
            _read(f, start + offset - at, digest, path)  # padding
            buf = host_tensor(dtype, shape, stride)
            data = _bytes_of(buf)
            for piece in range(0, len(data), CHUNK):
                view = data[piece:piece + CHUNK]
                _fill(f, view, path)
                digest.update(view)
            tensors.append(buf)
            at = start + offset + len(data)
        if at != size or f.read(1):
            raise Damaged(f"{path.name} has bytes its table does not account for (corrupted)")
    if digest.hexdigest() != expected:
        raise Damaged(f"{path.name} does not match its checksum (corrupted)")
    for i, (*_, param, grad) in enumerate(specs):
        if param:
            tensors[i] = torch.nn.Parameter(tensors[i], requires_grad=grad)
        elif grad:
            tensors[i].requires_grad_(True)
    return _Unpickler(io.BytesIO(objects), tensors).load()


def checksum(path: Path) -> str:
    """The checksum of the file at `path`, read in chunks into one reused buffer."""
    digest = xxhash.xxh3_128()
    buf = memoryview(bytearray(CHUNK))
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            digest.update(buf[:n])
    return digest.hexdigest()


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
        specs.append((dtype, shape, stride, offset, bool(entry["param"]), bool(entry["grad"])))
    if not isinstance(table["objects"], int) or not 0 <= table["objects"] <= size:
        raise ValueError("objects length out of range")
    return specs


def _read(f: Any, n: int, digest: Any, path: Path) -> bytes:
    if n < 0:
        raise Damaged(f"{path.name}: offsets out of order (corrupted)")
    data = f.read(n) if n else b""
    while len(data) < n:
        more = f.read(n - len(data))
        if not more:
            raise Damaged(f"{path.name} ends early (truncated)")
        data += more
    digest.update(data)
    return data


def _fill(f: Any, view: memoryview, path: Path) -> None:
    """Read exactly len(view) bytes into `view` (a raw read may return fewer)."""
    got = f.readinto(view)
    while got < len(view):
        n = f.readinto(view[got:])
        if not n:
            raise Damaged(f"{path.name} ends early (truncated)")
        got += n


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
