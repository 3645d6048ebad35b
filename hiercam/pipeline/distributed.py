"""The pipeline under ``torchrun``: process ranks, sharding, gathering. One process is the plain case.

``torchrun --nproc_per_node=N -m hiercam run CONFIG`` starts N processes with ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK`` set; ``init_distributed`` joins them into a process group (NCCL on CUDA, gloo on the CPU).
Training uses ``DistributedDataParallel``; evaluation shards the images over the processes and sums the
metrics' states; only rank 0 writes files and logs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["Distributed", "init_distributed"]


@dataclass(frozen=True)
class Distributed:
    """This process's place in the run: ``rank`` of ``world`` processes, ``local_rank`` on its machine."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def current(cls) -> Distributed:
        """The initialised process group's view, or a single process."""
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            local = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
            return cls(dist.get_rank(), dist.get_world_size(), local)
        return cls()

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes files and logs."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait for every process (a no-op for one process)."""
        if self.world > 1:
            dist.barrier()

    def shard(self, count: int) -> list[int]:
        """This process's share of ``count`` items: ``rank, rank + world, ...`` (no padding, no repeats)."""
        return list(range(self.rank, count, self.world))

    def gather_rows(self, local: Tensor, count: int) -> Tensor:
        """Every process's ``shard`` rows of a ``(count, ...)`` tensor, back in their original order."""
        if self.world == 1:
            return local
        pieces: list[Any] = [None] * self.world
        dist.all_gather_object(pieces, local.cpu())
        out = torch.empty((count, *local.shape[1:]), dtype=local.dtype)
        for rank, piece in enumerate(pieces):
            out[rank :: self.world] = piece
        return out


def init_distributed() -> Distributed:
    """Join the process group ``torchrun`` describes in the environment (no-op without ``WORLD_SIZE`` > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if cuda else "gloo")
    return Distributed.current()
