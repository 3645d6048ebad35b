"""Helper of test_two_branch_distributed.py: train a TwoBranchNet under DistributedDataParallel.

Run as a script (``python ddp_two_branch_worker.py OUT_DIR``), it spawns two CPU processes (gloo backend) that
train the same net on their halves of each batch and save their final weights to OUT_DIR. The test imports the
same ``build_net`` / ``batch`` / ``CONFIGS`` to train the single-process reference on the whole batches.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from hiercam import TwoBranchLoss, TwoBranchNet

WORLD_SIZE = 2
STEPS = 3
BATCH = 8  # global batch; each rank gets BATCH // WORLD_SIZE
LR = 0.1
# name -> (reduction, lam); "sum" is not batch-size invariant, see test_two_branch_distributed.py
CONFIGS = {"batchmean": ("batchmean", 1e-2), "sum": ("sum", 1e-3)}


def tiny_backbone() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.Conv2d(6, 8, 3, stride=2), nn.ReLU())


def build_net() -> TwoBranchNet:
    torch.manual_seed(0)
    return TwoBranchNet(tiny_backbone, num_classes=3)


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    x = torch.randn(BATCH, 3, 12, 12, generator=g)
    y = (torch.rand(BATCH, 3, generator=g) < 0.5).float()
    return x, y


def train(net: nn.Module, loss_fn: TwoBranchLoss, shard: tuple[int, int] | None) -> None:
    """SGD steps on each batch, or on part ``rank`` of ``world`` of it when ``shard = (rank, world)``."""
    optimizer = torch.optim.SGD(net.parameters(), lr=LR)
    for step in range(STEPS):
        x, y = batch(step)
        if shard is not None:
            rank, world = shard
            x, y = x.chunk(world)[rank], y.chunk(world)[rank]
        optimizer.zero_grad()
        loss_fn(net(x), y).total.backward()
        optimizer.step()


def _worker(rank: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{Path(out_dir) / 'store'}", rank=rank, world_size=WORLD_SIZE
    )
    try:
        for name, (reduction, lam) in CONFIGS.items():
            net = build_net()
            ddp = DistributedDataParallel(net, find_unused_parameters=False)
            train(ddp, TwoBranchLoss(weight=lam, reduction=reduction), (rank, WORLD_SIZE))
            torch.save(net.state_dict(), Path(out_dir) / f"{name}_rank{rank}.pt")
        # Both ranks leave their last collective before either tears the group down: destroying a gloo group
        # while the other rank's transport threads are still busy has aborted a process at exit ("terminate
        # called without an active exception") on a loaded 2-core machine.
        dist.barrier()
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    mp.spawn(_worker, args=(sys.argv[1],), nprocs=WORLD_SIZE, join=True)
