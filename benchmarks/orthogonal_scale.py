"""How large is the paper's orthogonal term at the first step of fine-tuning a real ImageNet backbone?

Two branches copied from the ImageNet MobileNetV2 in ../shared/models (both start from the same weights, as in
the paper), 20 fresh classes, batch 16 of 224 x 224 crops of the photos in ../shared/images (with a little
noise so that no two inputs are equal), random multi-hot targets. Prints the two BCE terms, ``lam * L_o`` with
the paper's ``lam = 1e-4``, their ratio, and the ratio of their gradient norms, for the paper's raw ``"sum"``
and for ``"batchmean"``. Needs ../shared (the real model and photos); exits with a message otherwise.

Run: ``python benchmarks/orthogonal_scale.py``
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from PIL import Image
from torchvision.models import mobilenet_v2
from torchvision.transforms.functional import center_crop, pil_to_tensor, resize

import hiercam

SHARED = Path(__file__).resolve().parents[2] / "shared"


def main() -> None:
    weights = SHARED / "models" / "mobilenet_v2_imagenet.pth"
    if not weights.is_file():
        sys.exit(f"{weights} not found: this measurement needs the real ImageNet MobileNetV2")
    torch.manual_seed(0)
    model = mobilenet_v2()
    model.load_state_dict(torch.load(weights, weights_only=True))
    net = hiercam.TwoBranchNet(model, num_classes=20).eval()  # folded BatchNorm: keep it in eval mode
    photos = sorted((SHARED / "images").glob("*.png")) + sorted((SHARED / "images").glob("*.jpg"))
    crops = []
    for path in photos:
        with Image.open(path) as photo:
            image = pil_to_tensor(photo.convert("RGB"))
        crops.append(center_crop(resize(image, 224, antialias=True), 224).float() / 127.5 - 1)
    images = torch.stack([crops[i % len(crops)] for i in range(16)])
    images = images + 0.05 * torch.randn_like(images)
    targets = (torch.rand(16, 20) < 0.15).float()
    for reduction in ("sum", "batchmean"):
        parts = hiercam.TwoBranchLoss(weight=1e-4, reduction=reduction)(net(images), targets)
        classification = parts.classification_1 + parts.classification_2
        orthogonal = 1e-4 * parts.orthogonal
        norms = []
        for term in (classification, orthogonal):
            net.zero_grad()
            term.backward(retain_graph=True)
            norms.append(torch.cat([p.grad.flatten() for p in net.parameters() if p.grad is not None]).norm())
        print(
            f"{reduction:9s}: BCE terms {classification.item():.3f}, lam * L_o {orthogonal.item():.1f} "
            f"({orthogonal.item() / classification.item():.0f}x), gradient norms {norms[1] / norms[0]:.0f}x"
        )


if __name__ == "__main__":
    main()
