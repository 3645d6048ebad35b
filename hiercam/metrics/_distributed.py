"""Summing metric states across processes with ``torch.distributed``."""

from __future__ import annotations

import torch.distributed as dist
from torch import Tensor

__all__ = ["sync_sum"]


def sync_sum(state: Tensor) -> Tensor:
    """Sum ``state`` over all processes when a process group of more than one process is initialised.

    Returns a new tensor (the caller's state is left as it is) or ``state`` itself outside distributed runs.
    Every process must call it, as with any collective.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return state
    total = state.clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total
