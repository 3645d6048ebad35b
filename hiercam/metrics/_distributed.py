"""Summing metric states across processes with ``torch.distributed``."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["sync_sum", "sync_cat", "world_size"]


def world_size() -> int:
    """Processes in the initialised process group (1 outside distributed runs)."""
    if dist.is_available() and dist.is_initialized():
        return int(dist.get_world_size())
    return 1


def sync_sum(state: Tensor) -> Tensor:
    """Sum ``state`` over all processes when a process group of more than one process is initialised.

    Returns a new tensor (the caller's state is left as it is) or ``state`` itself outside distributed runs.
    Every process must call it, as with any collective.
    """
    if world_size() < 2:
        return state
    total = state.clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total


def sync_cat(state: Tensor) -> Tensor:
    """Concatenate ``state (N_r, ...)`` of every process along dim 0, in rank order (``N_r`` may differ).

    Returns ``state`` itself outside distributed runs. Every process must call it.
    """
    if world_size() < 2:
        return state
    pieces: list[object] = [None] * world_size()
    dist.all_gather_object(pieces, state.detach().cpu())
    return torch.cat([piece for piece in pieces if isinstance(piece, Tensor)]).to(state.device)
