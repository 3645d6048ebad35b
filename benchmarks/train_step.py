"""One TwoBranchNet training step vs one single-backbone step (ResNet-18, CPU).

Time: both models are built in one process and their steps run interleaved (ABBA order, after one warm-up
step each), so that machine load affects both alike; medians are printed with the ratio (two backbones do
twice the work, so about 2.0x is the floor).

Memory: each variant runs in a fresh subprocess. After building the model, optimiser and batch it reads
its resident set size (``VmRSS``), resets the peak counter (``/proc/self/clear_refs``), runs two training
steps and reads the peak resident set size (``VmHWM``). The difference is what the steps add at their peak
(activations, gradients, SGD momentum buffers, allocator caches); the peak includes Python, torch and the
weights. RSS counts the pages actually touched, which is what the machine must provide. (``ru_maxrss``
would be wrong here: Linux keeps it across ``exec``, so a child reports its parent's peak.) Linux only.

Usage: python benchmarks/train_step.py [--reps 5] [--threads 2] [--batch 16] [--size 224] [--classes 20]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet18

from hiercam import TwoBranchLoss, TwoBranchNet


def make_step(kind: str, args: argparse.Namespace) -> tuple[Callable[[], None], int]:
    """A closure running one SGD step of ``kind`` ("single" or "two_branch"), and its parameter count."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, args.size, args.size, generator=g)
    y = (torch.rand(args.batch, args.classes, generator=g) < 0.2).float()
    torch.manual_seed(0)
    if kind == "single":
        model: nn.Module = resnet18(num_classes=args.classes)

        def loss_of() -> torch.Tensor:
            return F.binary_cross_entropy_with_logits(model(x), y)

    else:
        model = TwoBranchNet(resnet18(), args.classes)
        criterion = TwoBranchLoss()

        def loss_of() -> torch.Tensor:
            return criterion(model(x), y).total

    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_of().backward()
        optimizer.step()

    return step, sum(p.numel() for p in model.parameters())


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not found in /proc/self/status")


def memory_child(kind: str, args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    step, _ = make_step(kind, args)
    before = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    if _status_kib("VmHWM") > before + 1024:
        raise RuntimeError("could not reset the peak RSS counter (VmHWM)")
    for _ in range(2):
        step()
    print(json.dumps({"before_kib": before, "peak_kib": _status_kib("VmHWM")}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--memory-child", choices=["single", "two_branch"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args.memory_child, args)
        return

    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, ResNet-18, batch {args.batch}, "
        f"{args.size}x{args.size}, {args.classes} classes, SGD, {args.reps} interleaved repetitions"
    )
    steps = {kind: make_step(kind, args) for kind in ("single", "two_branch")}
    times: dict[str, list[float]] = {kind: [] for kind in steps}
    for step, _ in steps.values():
        step()  # warm-up
    for rep in range(args.reps):
        order = ["single", "two_branch"] if rep % 2 == 0 else ["two_branch", "single"]
        for kind in order:
            start = time.perf_counter()
            steps[kind][0]()
            times[kind].append(time.perf_counter() - start)
    medians = {kind: statistics.median(values) for kind, values in times.items()}
    for kind, values in times.items():
        runs = ", ".join(f"{v:.3f}" for v in values)
        print(
            f"  {kind:10s} {steps[kind][1] / 1e6:5.1f} M params  median {medians[kind]:.3f} s  "
            f"min {min(values):.3f} s  ({runs})"
        )
    ratio = medians["two_branch"] / medians["single"]
    best = min(times["two_branch"]) / min(times["single"])
    print(
        f"  step-time ratio two_branch / single: {ratio:.2f}x of medians, {best:.2f}x of minima (floor 2.0x)"
    )

    print("resident memory (VmRSS / VmHWM), fresh subprocess per variant, 2 steps:")
    for kind in ("single", "two_branch"):
        command = [sys.executable, __file__, "--memory-child", kind]
        command += ["--threads", str(args.threads), "--batch", str(args.batch)]
        command += ["--size", str(args.size), "--classes", str(args.classes)]
        report = json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout)
        before, peak = report["before_kib"] / 1024, report["peak_kib"] / 1024
        added = peak - before
        print(f"  {kind:10s} after build {before:6.0f} MiB  peak {peak:6.0f} MiB  steps add {added:6.0f} MiB")


if __name__ == "__main__":
    main()
