"""Cost per call of hiercam's value checks: each function timed with the checks on and off, side by side.

Value checks (finite maps and images, 0/1 labels, the negative-feature warning...) read tensor values into a
Python ``bool``; ``hiercam.set_checks(False)`` skips them, shape and type checks stay on. For each function
the script prints the median time per call with the checks on and off (interleaved repeat by repeat, in
alternating order, so both see the same machine load) and the number of host reads per call (tensor values
turned into Python objects: ``bool``, ``int``, ``float``, ``item``, ``tolist``; copies to the host;
outputs whose shape depends on the values), counted with ``hiercam._host_reads.HostReads``.

On the CPU the difference is small (a check is one reduction, a few percent of the call, and a read costs
nothing more). The point is the GPU: each host read waits for every kernel queued before it (a host
synchronisation), so the host cannot run ahead of the device; the read counts show how many of those
the switch removes. Run with ``--device cuda`` to time that.

Usage: python benchmarks/checks_cost.py [--threads 1] [--repeats 10] [--number 5] [--device cpu]
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
import warnings
from collections.abc import Callable

import torch

import hiercam
from hiercam import (
    GradCAM,
    MeanIoU,
    SmallConvNet,
    TwoBranchLoss,
    TwoBranchNet,
    TwoBranchOutput,
    mean_iou,
    normalize_maps,
)
from hiercam._host_reads import host_reads


def cases(device: torch.device) -> dict[str, Callable[[], object]]:
    """One call of each function on inputs of a realistic size (VOC-like: K = 20 classes)."""
    generator = torch.Generator().manual_seed(0)

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator).to(device)

    maps = rand(8, 20, 112, 112)
    labels = (rand(8, 20) < 0.15).long()
    masks = torch.randint(0, 21, (8, 112, 112), generator=generator).to(device)
    metric = MeanIoU(num_classes=21, thresholds=[0.1, 0.15, 0.2]).to(device)

    logits = torch.randn(2, 32, 20, generator=generator).to(device)
    features = (torch.randn(32, 512, 7, 7, generator=generator).to(device),) * 2
    output = TwoBranchOutput(logits, features, logits.mean(0))
    loss = TwoBranchLoss(weight=1e-4)  # rectify=None: the negative-feature warning is checked (and warns)
    loss_labels = (rand(32, 20) < 0.15).float()

    torch.manual_seed(0)
    backbone = functools.partial(SmallConvNet, width=8, norm="group")
    net = TwoBranchNet(backbone, num_classes=20).to(device).eval()
    cam = GradCAM(net)
    images = rand(4, 3, 96, 96)
    cam(images)  # the first call chooses the layer and verifies the closed form

    return {
        "normalize_maps (8, 20, 112, 112)": lambda: normalize_maps(maps),
        "mean_iou (8, 20, 112, 112), 1 threshold": lambda: mean_iou(maps, labels, masks=masks),
        "MeanIoU.update, 3 thresholds": lambda: metric.update(maps, labels, masks=masks),
        "TwoBranchLoss (32, 512, 7, 7)": lambda: loss(output, loss_labels),
        "GradCAM TwoBranchNet (4, 3, 96, 96)": lambda: cam(images),
    }


def per_call(call: Callable[[], object], number: int, device: torch.device) -> float:
    """Seconds per call over ``number`` calls (the device's queue drained at both ends)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(number):
        call()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / number


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    parser.add_argument("--repeats", type=int, default=10, help="timings per setting; the median is shown")
    parser.add_argument("--number", type=int, default=5, help="calls per timing")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    warnings.simplefilter("ignore", UserWarning)  # the negative-feature warning of the loss, every call
    print(
        f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} thread(s), hiercam "
        f"{hiercam.__version__}; median of {args.repeats} x {args.number} calls"
    )
    header = f"{'call':<42} {'on ms':>9} {'off ms':>9} {'saved':>7} {'reads on':>9} {'reads off':>10}"
    print(header)
    print("-" * len(header))
    for name, call in cases(device).items():
        for enabled in (True, False):  # warm-up
            with hiercam.checks(enabled):
                call()
        times: dict[bool, list[float]] = {True: [], False: []}
        for repeat in range(args.repeats):
            # on-off, then off-on: the first setting of a pair can be faster (allocator, caches)
            for enabled in (True, False) if repeat % 2 == 0 else (False, True):
                with hiercam.checks(enabled):
                    times[enabled].append(per_call(call, args.number, device))
        reads = {}
        for enabled in (True, False):
            with hiercam.checks(enabled):
                reads[enabled] = host_reads(call)
        on, off = (statistics.median(times[e]) * 1e3 for e in (True, False))
        print(
            f"{name:<42} {on:>9.3f} {off:>9.3f} {(on - off) / on:>7.1%} {reads[True]:>9d} {reads[False]:>10d}"
        )


if __name__ == "__main__":
    main()
