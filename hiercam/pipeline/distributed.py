"""The pipeline under ``torchrun``: this process's place in the run, sharding and gathering.

``torchrun --nproc_per_node=N -m hiercam run CONFIG`` starts N processes with ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK`` set; ``init_distributed`` joins them into a process group (NCCL on CUDA, gloo on the CPU).
Training uses ``DistributedDataParallel``; evaluation shards the images over the processes and sums the
metrics' states; only rank 0 writes files and logs. The collectives live in ``hiercam._distributed``, shared
with the metrics and ``fit``; this module only records a run's ranks for the stages.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

import hiercam._distributed as _distributed

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
        if _distributed.world_size() > 1:
            return cls(_distributed.rank(), _distributed.world_size(), _distributed.local_rank())
        return cls()

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes files and logs."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait for every process (a no-op for one process)."""
        if self.world > 1:
            _distributed.barrier()

    def shard(self, count: int) -> list[int]:
        """This process's share of ``count`` items: ``rank, rank + world, ...`` (no padding, no repeats)."""
        return list(range(self.rank, count, self.world))

    def gather_rows(self, local: Tensor, count: int) -> Tensor:
        """Every process's ``shard`` rows of a ``(count, ...)`` tensor, back in their original order."""
        return local if self.world == 1 else _distributed.gather_rows(local, count)


def init_distributed() -> Distributed:
    """Join the process group ``torchrun`` describes in the environment (no-op without ``WORLD_SIZE`` > 1)."""
    _distributed.init_distributed()
    return Distributed.current()
