"""Evaluate CAMs with mIoU and localisation error, choosing the background threshold on validation data.

The paper scores CAMs at a fixed background threshold of 0.15 (mIoU, Eq. 7) and counts the boxes of the
largest CAM region that miss the object (localisation error, Eq. 8). The best threshold depends on the model,
so choose it on validation data, in one pass over every candidate (MeanIoU(thresholds=...)), and report the
test figures at that threshold next to those at 0.15. Never choose it on test.

A small classifier is trained on the bundled FashionScenes data first; any classifier works.

Run: python examples/evaluate_cams.py [--quick]
"""

from __future__ import annotations

import argparse

import torch
from torch import nn
from torch.utils.data import DataLoader

import hiercam
from hiercam import FashionScenes, collate_scenes

THRESHOLDS = [0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.6, 0.7]


def score(model: nn.Module, loader: DataLoader) -> tuple[list[float], list[float]]:
    """The mIoU and the localisation error (fractions in [0, 1]) at every threshold, over the whole loader."""
    miou = hiercam.MeanIoU(num_classes=11, thresholds=THRESHOLDS)  # 10 classes + background (label 0)
    loc = hiercam.LocalizationError(thresholds=THRESHOLDS, iou=0.5)  # one metric, every threshold
    with hiercam.GradCAM(model) as cam:
        for batch in loader:
            labels = batch["labels"]  # (B, K) ground-truth image labels: which classes to score (IRN)
            maps = cam(batch["image"], labels)  # (B, K, H, W) at the masks' resolution
            miou.update(maps, labels, masks=batch["mask"])  # masks (B, H, W): 0 background, k + 1 class k
            loc.update(maps, labels, boxes=batch["boxes"])  # boxes: B tensors of (class, x1, y1, x2, y2)
    return miou.compute().miou.tolist(), loc.compute().tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny data and one epoch (a smoke test)")
    args = parser.parse_args()
    scenes, epochs = (256, 1) if args.quick else (4000, 8)
    torch.manual_seed(0)

    collate = collate_scenes
    train = DataLoader(
        FashionScenes("train", num_scenes=scenes, image_size=64), 32, shuffle=True, collate_fn=collate
    )
    val = DataLoader(FashionScenes("val", num_scenes=scenes // 4, image_size=64), 64, collate_fn=collate)
    test = DataLoader(FashionScenes("test", num_scenes=scenes // 4, image_size=64), 64, collate_fn=collate)
    backbone = hiercam.SmallConvNet(width=16)
    model = nn.Sequential(
        backbone, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(backbone.out_channels, 10)
    )
    hiercam.fit(model, train, epochs=epochs, lr=3e-3, progress=False)

    val_miou, val_loc = score(model, val)
    print("threshold | val mIoU | val loc. error")
    for t, m, e in zip(THRESHOLDS, val_miou, val_loc, strict=True):
        print(f"{t:9.2f} | {100 * m:8.1f} | {100 * e:14.1f}")  # percent at display only
    best = max(range(len(THRESHOLDS)), key=lambda i: val_miou[i])  # chosen on validation only
    paper = THRESHOLDS.index(0.15)

    test_miou, test_loc = score(model, test)
    print(
        f"test at the paper's threshold 0.15: mIoU {test_miou[paper]:.1%}, loc. error {test_loc[paper]:.1%}"
    )
    t_best = THRESHOLDS[best]
    print(
        f"test at t* = {t_best} (best val mIoU): mIoU {test_miou[best]:.1%}, loc. error {test_loc[best]:.1%}"
    )

    # The functional forms give the same figures for one batch (the classes count the same way).
    batch = collate([test.dataset[i] for i in range(8)])
    with hiercam.GradCAM(model) as cam:
        maps = cam(batch["image"], batch["labels"])
    labels = batch["labels"]
    result = hiercam.mean_iou(maps, labels, masks=batch["mask"], thresholds=0.15)  # MeanIoUResult(miou, ...)
    error = hiercam.localization_error(maps, labels, boxes=batch["boxes"], thresholds=0.15)
    print(f"8 test scenes at 0.15: mIoU {result.miou.item():.1%}, loc. error {error.item():.1%}")


if __name__ == "__main__":
    main()
