"""Grad-CAM of a segmentation model: pick its output with `output=`, explain a class over a region.

torchvision's segmentation models return a dict `{"out": (B, K, H, W)}`. `output="out"` selects the scores,
and a `SemanticSegmentationTarget(k, mask)` per image explains "the logits of class k summed over the mask"
(here: the pixels the model assigns to k), as in pytorch-grad-cam's segmentation tutorial. The model has
random weights so that the example runs offline in seconds; load your trained weights instead.

Run: python examples/segmentation_cams.py [--quick]
"""

from __future__ import annotations

import argparse

import torch
from torchvision.models.segmentation import deeplabv3_mobilenet_v3_large

import hiercam


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="(the example is already quick)")
    parser.parse_args()
    torch.manual_seed(0)
    model = deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=4).eval()
    images = torch.randn(2, 3, 96, 96)

    with torch.no_grad():
        predicted = model(images)["out"].argmax(dim=1)  # (2, 96, 96) label map
    category = int(predicted.flatten().mode().values)  # the class the model assigns most pixels to
    targets = [
        hiercam.SemanticSegmentationTarget(category, (labels == category).float()) for labels in predicted
    ]

    with hiercam.GradCAM(model, "backbone.16", output="out") as cam:  # the backbone's last block
        maps = cam(images, targets=targets)  # (2, 1, 96, 96): one map per image
        print(cam)
    print(f"class {category} covers {[int(m.sum()) for m in (predicted == category)]} pixels")
    print(f"maps {tuple(maps.shape)}, peak {maps.amax().item():.1f}")

    # `output` also takes an index (models returning tuples) or a callable; a missing key is a clear error
    try:
        hiercam.GradCAM(model, "backbone.16", output="logits")(images, targets=targets)
    except ValueError as error:
        print(f"output='logits': {error}")


if __name__ == "__main__":
    main()
