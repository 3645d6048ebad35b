"""Compute the CAMs of all classes for a batch in one pass, and lay them over the images.

A small classifier is trained on the bundled FashionScenes data first (any trained classifier will do: a
torchvision or timm model, your own module). GradCAM then gives the maps of every class from one forward pass
and one batched gradient; the picture shows, for each image, the maps of the classes it contains.

Run: python examples/all_class_cams.py [--quick] [--out cams.png]
"""

from __future__ import annotations

import argparse

import torch
from matplotlib.figure import Figure  # pip install hiercam[viz]
from torch import nn
from torch.utils.data import DataLoader

import hiercam
from hiercam.viz import overlay


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny data and one epoch (a smoke test)")
    parser.add_argument("--out", default="cams.png", help="where to save the picture")
    args = parser.parse_args()
    scenes, epochs = (256, 1) if args.quick else (4000, 6)
    torch.manual_seed(0)

    # 1. A trained multi-label classifier: backbone -> global average pool -> linear.
    backbone = hiercam.SmallConvNet(width=16)
    model = nn.Sequential(
        backbone, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(backbone.out_channels, 10)
    )
    train = hiercam.FashionScenes("train", num_scenes=scenes, image_size=80)
    loader = DataLoader(train, batch_size=32, shuffle=True, collate_fn=hiercam.collate_scenes)
    hiercam.fit(model, loader, epochs=epochs, lr=3e-3, progress=False)

    # 2. All-class CAMs of a batch: one forward pass, one batched gradient.
    test = hiercam.FashionScenes("test", num_scenes=6, image_size=80)
    batch = hiercam.collate_scenes([test[i] for i in range(len(test))])
    images, labels = batch["image"], batch["labels"]  # (6, 3, 80, 80), (6, 10)
    with hiercam.GradCAM(model) as cam:  # target layer: the last feature map, chosen on the first call
        maps = cam(images)  # (6, 10, 80, 80): every class, each map max-normalised to peak 1
        predicted = cam.logits.sigmoid() > 0.5  # (6, 10): logits of the same forward pass
        present_maps = cam(images, labels)  # (6, 10, 80, 80): maps of absent classes are zeros
        print(cam)  # the chosen layer, and whether the closed form (no backward) was verified
    print(f"maps {tuple(maps.shape)}; predicted classes per image: {predicted.sum(1).tolist()}")

    # How much of each present class's map falls on its garment (1.0 = all of it), from the exact masks.
    on_garment = []
    for b, k in labels.nonzero().tolist():
        heat = present_maps[b, k]
        on_garment.append((heat * (batch["mask"][b] == k + 1)).sum() / heat.sum().clamp_min(1e-12))
    garment_share = torch.stack(on_garment).mean().item()
    garment_area = (batch["mask"] > 0).float().mean().item()
    print(
        f"share of each present class's map on its garment: {garment_share:.2f} (mean over "
        f"{len(on_garment)} garments; the garments cover {garment_area:.2f} of the pixels)"
    )

    # 3. Overlays: one row per image, the image then the map of each class it contains.
    names = hiercam.FashionScenes.classes
    columns = 1 + int(labels.sum(1).max())
    figure = Figure(figsize=(1.6 * columns, 1.6 * len(images)), layout="constrained")
    for b in range(len(images)):
        ax = figure.add_subplot(len(images), columns, b * columns + 1)
        ax.imshow(images[b].permute(1, 2, 0).numpy())
        ax.set_axis_off()
        for j, k in enumerate(labels[b].nonzero().flatten().tolist()):
            ax = figure.add_subplot(len(images), columns, b * columns + 2 + j)
            ax.imshow(overlay(images[b], present_maps[b, k]))
            ax.set_title(names[k], fontsize=8)
            ax.set_axis_off()
    figure.savefig(args.out, dpi=80)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
