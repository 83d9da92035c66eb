"""`device()`: the torch device and process-group backend for this rank's assignment."""

from __future__ import annotations

import datetime
import signal
from typing import NamedTuple

import torch

from agents.runtime.env import Assignment, AssignmentError, assignment

_BACKENDS = {"ascend": "hccl", "nvidia": "nccl", "cpu": "gloo", "sim-ascend": "gloo", "sim-nvidia": "gloo"}


class Placement(NamedTuple):
    device: torch.device
    backend: str
    accelerator: str


def _torch_npu_available() -> bool:
    try:
        import torch_npu  # noqa: F401
    except ImportError:
        return False
    return True


def on_host(accelerator: str | None) -> bool:
    """Does a rank assigned `accelerator` train on the host CPU (cpu, the sim backends)?
    None (not known): assume not."""
    return accelerator in _BACKENDS and accelerator not in ("ascend", "nvidia")


def device(assigned: Assignment | None = None) -> Placement:
    """The device and backend for this rank. Raises AssignmentError, naming the package
    or the problem, when the assignment cannot be honoured here."""
    a = assigned or assignment()
    accelerator = a.accelerator
    if accelerator is None:  # plain torchrun: use what this machine has
        accelerator = "ascend" if _torch_npu_available() else "nvidia" if torch.cuda.is_available() else "cpu"
    if accelerator == "ascend":
        try:
            import torch_npu  # noqa: F401
        except ImportError as exc:
            raise AssignmentError(
                "this rank was assigned an Ascend NPU (TRAINGUARD_ACCELERATOR=ascend) but torch_npu "
                f"cannot be imported ({exc}); install the torch-npu build that matches this node's "
                "CANN toolkit and torch version (pip install torch-npu)"
            ) from None
        return Placement(torch.device("npu", a.local_rank), "hccl", accelerator)
    if accelerator == "nvidia":
        if not torch.cuda.is_available():
            raise AssignmentError(
                "this rank was assigned an Nvidia GPU (TRAINGUARD_ACCELERATOR=nvidia) but torch sees no "
                f"CUDA device (torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'}); "
                "install a CUDA build of torch or check the driver and CUDA_VISIBLE_DEVICES"
            )
        return Placement(torch.device("cuda", a.local_rank % max(1, torch.cuda.device_count())), "nccl", accelerator)
    return Placement(torch.device("cpu"), _BACKENDS[accelerator], accelerator)


def init_distributed(timeout: datetime.timedelta = datetime.timedelta(minutes=10)) -> Placement:
    """device(), plus the default process group when WORLD_SIZE > 1 (env:// rendezvous,
    as torchrun and the trainguard launcher set it up)."""
    from agents.runtime.warm import waiting

    if waiting():
        # A warm standby that did not wait for its rank would train on its own: refuse.
        raise RuntimeError("this process is a trainguard warm standby: call agents.runtime.standby() before "
                           "init_distributed() (or remove warm_standby from the job file)")
    a = assignment()
    placement = device(a)
    if placement.device.type == "cuda":
        torch.cuda.set_device(placement.device)
    elif placement.device.type == "npu":
        torch.npu.set_device(placement.device)  # type: ignore[attr-defined]
    if a.world_size > 1 and not torch.distributed.is_initialized():
        # The backend's own threads (gloo's I/O loop, NCCL's watchdog) inherit the
        # signal mask of the thread that creates them. Created with SIGTERM and SIGUSR1
        # blocked, they never receive the agent's stop and checkpoint requests: those go
        # to the Python thread that handles them. (Delivered to a gloo thread, a SIGUSR1
        # interrupted its wait and left the process hanging at exit.)
        blocked = {signal.SIGTERM, signal.SIGUSR1, signal.SIGINT}
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
        try:
            torch.distributed.init_process_group(placement.backend, rank=a.rank, world_size=a.world_size,
                                                 timeout=timeout)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    return placement
