"""Speed of the CAM quality metrics on a VOC-val-sized set (1,449 images of 224 x 224, 21 labels).

``mean_iou_from_masks`` (one batch's confusion matrix and IoU) is timed against torchmetrics'
``MulticlassJaccardIndex.update`` (same ignore_index=255, macro average: the same figure), interleaved batch
by batch in one run so that both see the same machine load, with torchmetrics' input validation on (its
default) and off. Then ``MeanIoU(thresholds=...)`` (maps in, 10
thresholds at once) and ``LocalizationError`` are timed on maps of the same set. Label maps are stored as
uint8 and converted to int64 before the clock starts.

Usage: python benchmarks/metrics_speed.py [--images 1449] [--batch 1 16] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassJaccardIndex

from hiercam.metrics import LocalizationError, MeanIoU, mean_iou_from_masks

NUM_CLASSES = 21  # VOC: background + 20 classes
SIZE = 224


def label_maps(images: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Blocky random label maps (uint8) with 255 on ~5% of the target pixels, like VOC's boundaries."""
    coarse = torch.randint(0, NUM_CLASSES, (images, 2, 14, 14), generator=generator, dtype=torch.uint8)
    maps = coarse.repeat_interleave(16, dim=2).repeat_interleave(16, dim=3)
    target, pred = maps[:, 0].contiguous(), maps[:, 1].contiguous()
    target[torch.rand(target.shape, generator=generator) < 0.05] = 255
    return pred, target


def cam_batch(
    batch: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Smooth CAMs (7 x 7 upsampled), 1-3 present classes per image, 1-2 boxes per present class."""
    cams = F.interpolate(
        torch.rand(batch, NUM_CLASSES - 1, 7, 7, generator=generator) ** 2,
        size=(SIZE, SIZE),
        mode="bilinear",
        align_corners=False,
    )
    labels = torch.zeros(batch, NUM_CLASSES - 1, dtype=torch.long)
    boxes = []
    for b in range(batch):
        present = torch.randperm(NUM_CLASSES - 1, generator=generator)[: int(torch.randint(1, 4, (1,)))]
        labels[b, present] = 1
        rows = []
        for cls in present.tolist():
            for _ in range(int(torch.randint(1, 3, (1,)))):
                x1, y1 = torch.randint(0, SIZE - 32, (2,), generator=generator).tolist()
                w, h = torch.randint(16, 160, (2,), generator=generator).tolist()
                rows.append([cls, x1, y1, min(SIZE, x1 + w), min(SIZE, y1 + h)])
        boxes.append(torch.tensor(rows, dtype=torch.float32))
    return cams, labels, boxes


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def miou_pass(
    pred8: torch.Tensor, target8: torch.Tensor, batch: int, validate: bool
) -> tuple[float, float, float]:
    """One interleaved pass: total seconds in hiercam and torchmetrics update, and |mIoU difference|."""

    def ours(pred: torch.Tensor, target: torch.Tensor) -> None:
        mean_iou_from_masks(pred, target, NUM_CLASSES, ignore_index=255)

    theirs = MulticlassJaccardIndex(NUM_CLASSES, ignore_index=255, average="macro", validate_args=validate)
    t_ours = t_theirs = 0.0
    for step, start in enumerate(range(0, len(pred8), batch)):
        pred = pred8[start : start + batch].long()
        target = target8[start : start + batch].long()
        if step % 2:  # alternate who goes first
            t_theirs += timed(lambda p=pred, t=target: theirs.update(p, t))
            t_ours += timed(lambda p=pred, t=target: ours(p, t))
        else:
            t_ours += timed(lambda p=pred, t=target: ours(p, t))
            t_theirs += timed(lambda p=pred, t=target: theirs.update(p, t))
    whole = mean_iou_from_masks(pred8.long(), target8.long(), NUM_CLASSES, ignore_index=255)
    return t_ours, t_theirs, abs(float(whole.miou) - float(theirs.compute()))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=1449)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    generator = torch.Generator().manual_seed(0)
    pred8, target8 = label_maps(args.images, generator)
    print(
        f"{args.images} label maps of {SIZE}x{SIZE}, {NUM_CLASSES} labels, ignore_index=255; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; median of {args.repeats} passes"
    )
    print("\nmean_iou_from_masks vs torchmetrics MulticlassJaccardIndex.update (total seconds per pass)")
    header = ("batch", "tm validate", "hiercam s", "torchmetrics s", "ratio", "|dmIoU|")
    print("{:>5} {:>11} {:>10} {:>15} {:>6} {:>8}".format(*header))
    for batch in args.batch:
        for validate in (True, False):
            runs = [miou_pass(pred8, target8, batch, validate) for _ in range(args.repeats)]
            ours = statistics.median(r[0] for r in runs)
            theirs = statistics.median(r[1] for r in runs)
            print(
                f"{batch:>5} {validate!s:>11} {ours:>10.3f} {theirs:>15.3f} {ours / theirs:>6.2f} "
                f"{max(r[2] for r in runs):>8.1e}"
            )
    print("(ratio = hiercam / torchmetrics: below 1 means hiercam is faster)")

    batch = 16
    sweep = MeanIoU(NUM_CLASSES, thresholds=[0.05 * i for i in range(1, 11)])
    single = MeanIoU(NUM_CLASSES, thresholds=0.15)
    localization = LocalizationError()
    t_sweep = t_single = t_loc = 0.0
    cam_generator = torch.Generator().manual_seed(1)
    for start in range(0, args.images, batch):
        stop = min(args.images, start + batch)
        cams, labels, boxes = cam_batch(stop - start, cam_generator)
        target = target8[start:stop].long()
        t_single += timed(lambda c=cams, t=target, lb=labels: single.update(c, lb, masks=t))
        t_sweep += timed(lambda c=cams, t=target, lb=labels: sweep.update(c, lb, masks=t))
        t_loc += timed(lambda c=cams, lb=labels, bx=boxes: localization.update(c, lb, boxes=bx))
    trials = int(localization.counts[0, 1])
    print(f"\nCAMs (B, 20, {SIZE}, {SIZE}) in batches of {batch}, one pass:")
    print(f"  MeanIoU(thresholds=0.15).update          {t_single:7.2f} s")
    print(f"  MeanIoU(thresholds=10 values).update     {t_sweep:7.2f} s")
    print(
        f"  LocalizationError.update ('largest')     {t_loc:7.2f} s for {trials} (image, class) trials "
        f"({1000 * t_loc / trials:.2f} ms each); error {float(localization.compute()):.1%}"
    )


if __name__ == "__main__":
    main()
