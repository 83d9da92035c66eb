"""Where a stuck rank is, read from its py-spy dump. Pure: text in, a reading out.

When one rank of a data-parallel job stops, every other rank soon waits for it in the
next collective. Their stacks say so (a frame of torch.distributed, of DDP, or a native
c10d / gloo / NCCL / HCCL frame); the culprit's does not: it is in a data loader, a
sleep, a kernel, a deadlock of its own. `read_stack` turns one dump into that verdict
(`collective`, `elsewhere`, or `unknown` when the dump cannot say) plus a one-line
summary of where the main thread is; the daemon compares the ranks' readings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: A frame in any of these files is a rank waiting on its peers.
_COLLECTIVE_FILES = (
    "torch/distributed/",
    "torch/nn/parallel/distributed.py",
    "torch_npu/distributed/",
    "deepspeed/comm/",
    "megatron/core/distributed/",
    "megatron/core/parallel_state.py",
)
#: Native frames (py-spy --native) of the collective libraries.
_COLLECTIVE_NATIVE = re.compile(r"c10d::|gloo::|\bnccl|Nccl|\bhccl|Hccl|HcclComm|ProcessGroup")
#: Autograd's backward: under DDP the gradient all-reduce is waited for in here, so
#: without native frames a rank in backward could be computing or waiting.
_BACKWARD = ("torch/autograd/", "_engine_run_backward", "run_backward")
#: A rank importing modules is starting up (torch.distributed's own modules included),
#: not waiting for its peers.
_IMPORTING = ("importlib._bootstrap", "_find_and_load")

_THREAD = re.compile(r'^Thread (\S+) \(([^)]*)\)(?::\s*"(.*)")?\s*$')
_FRAME = re.compile(r"^\s{4}(\S.*?)(?: \(([^()]*)\))?\s*$")
#: One frame line in a summary or in evidence: pybind11 template names run to kilobytes.
FRAME_CHARS = 160


@dataclass(frozen=True)
class Frame:
    function: str
    where: str  # "path/file.py:123", or the library of a native frame

    def __str__(self) -> str:
        text = f"{self.function} ({self.where})" if self.where else self.function
        return text if len(text) <= FRAME_CHARS else text[: FRAME_CHARS - 1] + "…"

    @property
    def native(self) -> bool:
        return not re.search(r"\.py[xi]?:\d+$", self.where)


@dataclass(frozen=True)
class Thread:
    name: str
    status: str  # py-spy's: idle, active, active+gil, ...
    frames: tuple[Frame, ...]  # innermost first


@dataclass(frozen=True)
class StackReading:
    where: str  # "collective", "elsewhere" or "unknown"
    summary: str  # one line: the main thread's innermost frames


def parse_dump(text: str) -> list[Thread]:
    """The threads of one `py-spy dump` (text as py-spy prints it; other lines skipped)."""
    threads: list[Thread] = []
    name = status = None
    frames: list[Frame] = []
    for line in text.splitlines():
        head = _THREAD.match(line)
        if head:
            if name is not None:
                threads.append(Thread(name, status or "", tuple(frames)))
            name, status, frames = head.group(3) or head.group(1), head.group(2), []
            continue
        if name is None or not line.startswith("    ") or line.startswith("        "):
            continue  # headers, and the arguments / locals py-spy can indent under a frame
        frame = _FRAME.match(line)
        if frame:
            function, where = frame.group(1), frame.group(2) or ""
            if not function.startswith("0x"):  # an unsymbolised address says nothing
                frames.append(Frame(function, where))
    if name is not None:
        threads.append(Thread(name, status or "", tuple(frames)))
    return threads


def _in_collective(frame: Frame) -> bool:
    if frame.native:
        return bool(_COLLECTIVE_NATIVE.search(frame.function))
    if frame.function == "<module>":
        return False  # a module of torch.distributed being imported
    path = frame.where.replace("\\", "/")
    return any(marker in path for marker in _COLLECTIVE_FILES)


def _importing(thread: Thread) -> bool:
    return any(any(m in f.where or m == f.function for m in _IMPORTING) for f in thread.frames)


def _main(threads: list[Thread]) -> Thread | None:
    return next((t for t in threads if t.name == "MainThread"), threads[0] if threads else None)


def summarise(thread: Thread, frames: int = 3) -> str:
    """`MainThread (idle): a (f.py:1) <- b (g.py:2) <- c (h.py:3)`, Python frames first."""
    python = [f for f in thread.frames if not f.native] or list(thread.frames)
    chain = " <- ".join(str(f) for f in python[:frames]) or "no frames"
    return f"{thread.name} ({thread.status}): {chain}"


def read_stack(text: str) -> StackReading:
    """Is this rank waiting in a collective? From its main thread (the training loop)."""
    threads = parse_dump(text)
    main = _main(threads)
    if main is None or not main.frames:
        return StackReading("unknown", "no Python stack in the dump")
    summary = summarise(main)
    if _importing(main):
        return StackReading("elsewhere", summary + " (importing modules: starting up)")
    if any(_in_collective(f) for f in main.frames):
        return StackReading("collective", summary)
    has_native = any(f.native for f in main.frames)
    if not has_native and any(any(m in f.where or m == f.function for m in _BACKWARD) for f in main.frames):
        return StackReading("unknown", summary + " (in backward: computing, or waiting for DDP's all-reduce)")
    return StackReading("elsewhere", summary)
