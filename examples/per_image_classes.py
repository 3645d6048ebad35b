"""One class per image: the map of each image's predicted class, as pytorch-grad-cam users compute it.

A `(B,)` integer tensor of classes means "class i for image i" and gives one map per image, `(B, 1, H, W)`;
a list keeps meaning "these classes for every image". A small classifier is trained on the bundled
FashionScenes data first; any trained classifier will do.

Run: python examples/per_image_classes.py [--quick]
"""

from __future__ import annotations

import argparse

import torch
from torch import nn
from torch.utils.data import DataLoader

import hiercam


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny data and one epoch (a smoke test)")
    args = parser.parse_args()
    scenes, epochs = (256, 1) if args.quick else (4000, 6)
    torch.manual_seed(0)

    backbone = hiercam.SmallConvNet(width=16)
    model = nn.Sequential(
        backbone, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(backbone.out_channels, 10)
    )
    train = hiercam.FashionScenes("train", num_scenes=scenes, image_size=80)
    loader = DataLoader(train, batch_size=32, shuffle=True, collate_fn=hiercam.collate_scenes)
    hiercam.fit(model, loader, epochs=epochs, lr=3e-3, progress=False)

    test = hiercam.FashionScenes("test", num_scenes=4, image_size=80)
    images = hiercam.collate_scenes([test[i] for i in range(len(test))])["image"]  # (4, 3, 80, 80)
    with hiercam.GradCAM(model) as cam:
        top = model.eval()(images).argmax(dim=1)  # (4,): each image's top class
        maps = cam(images, top)  # (4, 1, 80, 80): image i explained for class top[i]
        print(f"top classes {top.tolist()} -> maps {tuple(maps.shape)}")

        # the same maps as the matching slices of the all-class call, or as targets, one per image
        every = cam(images)  # (4, 10, 80, 80)
        same = torch.allclose(maps, every[torch.arange(len(top)), top][:, None], atol=1e-5)
        print(f"per-image maps == slices of the all-class maps: {same}")
        by_target = cam(images, targets=[hiercam.ClassifierOutputTarget(int(k)) for k in top])
        print(f"per-image maps == ClassifierOutputTarget maps: {torch.allclose(maps, by_target, atol=1e-5)}")

        # a list means the same classes for every image
        print(f"classes [2, 5] -> maps {tuple(cam(images, [2, 5]).shape)}")
        print(cam)


if __name__ == "__main__":
    main()
