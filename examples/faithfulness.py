"""Evaluate CAMs every way the literature does: faithfulness to the model and weakly-supervised localisation.

Grad-CAM maps of a small classifier are scored with deletion / insertion (RISE), Average Drop / Increase in
Confidence (Grad-CAM++), ROAD (MoRF / LeRF with noisy linear imputation), MaxBoxAccV2 and PxAP (Choe et al.),
for every present class of every image, next to random maps of the same smoothness as a floor. A faithful map
has a lower deletion, a higher insertion, a lower Average Drop and a lower MoRF score than random maps.

A small classifier is trained on the bundled FashionScenes data first; any classifier works.

Run: python examples/faithfulness.py [--quick]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

import hiercam
from hiercam import FashionScenes, collate_scenes


def evaluate(model: nn.Module, loader: DataLoader, random: bool) -> dict[str, float]:
    """Every metric over the whole loader, streamed: ``update`` per batch, ``compute`` at the end."""
    deletion = hiercam.DeletionInsertion(
        model, steps=16, score="sigmoid", batch_size=256
    )  # multi-label model
    confidence = hiercam.ConfidenceChange(model, score="sigmoid", batch_size=256)
    road = hiercam.ROAD(
        model, percentages=[20, 50, 80], score="sigmoid", generator=torch.Generator().manual_seed(0)
    )
    boxes, pixels = hiercam.MaxBoxAcc(), hiercam.PxAP()
    with hiercam.GradCAM(model) as cam:
        for batch in loader:
            images, labels = batch["image"], batch["labels"]  # labels (B, K): the classes scored
            maps = cam(images, labels)  # (B, K, H, W) at the image size
            if random:  # a floor: smooth random maps, as coarse as a CAM
                coarse = torch.rand(*maps.shape[:2], 8, 8)
                maps = F.interpolate(coarse, size=maps.shape[2:], mode="bilinear", align_corners=False)
            deletion.update(maps, labels, images=images)
            confidence.update(maps, labels, images=images)
            road.update(maps, labels, images=images)
            boxes.update(maps, labels, boxes=batch["boxes"])  # rows (class, x1, y1, x2, y2)
            pixels.update(maps, labels, masks=batch["mask"])  # 0 background, k + 1 class k
    areas, drops, removed = deletion.compute(), confidence.compute(), road.compute()
    return {
        "deletion": float(areas.deletion),
        "insertion": float(areas.insertion),
        "average drop": float(drops.average_drop),
        "increase": float(drops.increase),
        "ROAD MoRF": float(removed.morf.mean()),
        "ROAD LeRF": float(removed.lerf.mean()),
        "MaxBoxAccV2": float(boxes.compute().value),
        "PxAP": float(pixels.compute()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny data and one epoch (a smoke test)")
    args = parser.parse_args()
    scenes, epochs, tested = (256, 1, 8) if args.quick else (4000, 8, 64)
    torch.manual_seed(0)

    train = DataLoader(
        FashionScenes("train", num_scenes=scenes, image_size=64), 32, shuffle=True, collate_fn=collate_scenes
    )
    test = DataLoader(FashionScenes("test", num_scenes=tested, image_size=64), 16, collate_fn=collate_scenes)
    backbone = hiercam.SmallConvNet(width=16)
    model = nn.Sequential(
        backbone, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(backbone.out_channels, 10)
    )
    hiercam.fit(model, train, epochs=epochs, lr=3e-3, progress=False)

    ours, floor = evaluate(model, test, random=False), evaluate(model, test, random=True)
    print(f"{tested} test scenes, every present class: Grad-CAM against random maps")
    print(f"{'metric':<14} | {'Grad-CAM':>8} | {'random':>8} | better")
    for name, higher_is_better in [
        ("deletion", False),
        ("insertion", True),
        ("average drop", False),
        ("increase", True),
        ("ROAD MoRF", False),
        ("ROAD LeRF", True),
        ("MaxBoxAccV2", True),
        ("PxAP", True),
    ]:
        better = (ours[name] > floor[name]) == higher_is_better
        print(f"{name:<14} | {ours[name]:8.3f} | {floor[name]:8.3f} | {'Grad-CAM' if better else 'random'}")


if __name__ == "__main__":
    main()
