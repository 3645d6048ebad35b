"""``torch.distributed`` in one place: rank, barrier, and the sum / concatenation of states across processes.

Used by the metrics (state sync), ``fit`` (rank 0 writes, barriers) and the pipeline (sharding, gathering).
Outside an initialised process group of two or more processes every helper is the single-process no-op, so
callers never branch on it. Every collective here must be called by every process, and none raises before its
collective on one process only: a process with no data takes part like the others (an empty state), so no
peer is left blocked.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = [
    "barrier",
    "collective_device",
    "gather_objects",
    "gather_rows",
    "init_distributed",
    "is_main",
    "local_rank",
    "rank",
    "sync_cat",
    "sync_sum",
    "world_size",
]


def world_size() -> int:
    """Processes in the initialised process group (1 outside distributed runs)."""
    if dist.is_available() and dist.is_initialized():
        return int(dist.get_world_size())
    return 1


def rank() -> int:
    """This process's rank (0 outside distributed runs)."""
    if dist.is_available() and dist.is_initialized():
        return int(dist.get_rank())
    return 0


def local_rank() -> int:
    """This process's rank on its machine: ``LOCAL_RANK`` as ``torchrun`` sets it, else ``rank()``."""
    return int(os.environ.get("LOCAL_RANK", rank())) if world_size() > 1 else 0


def is_main() -> bool:
    """Rank 0: the process that writes files and logs (always true outside distributed runs)."""
    return rank() == 0


def barrier() -> None:
    """Wait for every process (a no-op for one process)."""
    if world_size() > 1:
        dist.barrier()


def collective_device() -> torch.device:
    """The device the process group's backend reduces on: this process's GPU for NCCL, else the CPU."""
    if world_size() > 1 and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def sync_sum(state: Tensor) -> Tensor:
    """Sum ``state`` over all processes (all_reduce SUM); ``state`` itself outside distributed runs.

    Returns a new tensor on the device of ``state`` (the caller's state is left as it is). The state must have
    the same shape and dtype on every process, but not the same device: it is reduced on the backend's device
    (``collective_device``), so a process whose state stayed on the CPU (no data) can sum with peers whose
    state followed their data to a GPU.
    """
    if world_size() < 2:
        return state
    total = state.detach().to(collective_device(), copy=True)
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total.to(state.device)


def gather_objects(value: object) -> list[object]:
    """Every process's ``value``, in rank order (``[value]`` outside distributed runs)."""
    if world_size() < 2:
        return [value]
    pieces: list[object] = [None] * world_size()
    dist.all_gather_object(pieces, value)
    return pieces


def sync_cat(state: Tensor | None) -> Tensor | None:
    """Concatenate ``state (N_r, ...)`` of every process along dim 0, in rank order.

    ``N_r`` may differ between processes, and a process with no data passes ``None``: it takes part in the
    gather and contributes nothing. Returns ``None`` when no process has data; ``state`` itself outside
    distributed runs.
    Tensors travel through the CPU and come back on the device of ``state`` (the CPU for a ``None`` state).
    """
    if world_size() < 2:
        return state
    local = None if state is None else state.detach().cpu()
    pieces = [piece for piece in gather_objects(local) if isinstance(piece, Tensor)]
    if not pieces:
        return None
    return torch.cat(pieces).to("cpu" if state is None else state.device)


def gather_rows(local: Tensor, count: int) -> Tensor:
    """Rows of a ``(count, ...)`` tensor sharded as ``rank, rank + world, ...``, back in their order."""
    world = world_size()
    if world == 1:
        return local
    out = torch.empty((count, *local.shape[1:]), dtype=local.dtype)
    for index, piece in enumerate(gather_objects(local.cpu())):
        if isinstance(piece, Tensor):
            out[index::world] = piece
    return out


def init_distributed() -> None:
    """Join the process group ``torchrun`` describes in the environment (no-op without ``WORLD_SIZE`` > 1).

    NCCL on CUDA (each process on the GPU ``LOCAL_RANK``), gloo on the CPU.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if cuda else "gloo")
