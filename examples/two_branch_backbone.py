"""Wrap a torchvision or timm classifier with TwoBranchNet and train it with your own loop.

TwoBranchNet cuts the classifier into its feature extractor and builds two branches from it, each with its own
parameters and linear classifier; TwoBranchLoss is the paper's Eq. 5 (two BCE terms plus the orthogonal loss).
The loop below is an ordinary PyTorch loop (AMP on CUDA, any optimizer); hiercam.fit would do the same.
Afterwards GradCAM explains the net branch by branch and returns the mean of the two branches' maps.

Backbones are built without pretrained weights here, so nothing is downloaded; in real use pass
weights="DEFAULT" (torchvision) or pretrained=True (timm) and normalise the images as the weights expect.

Run: python examples/two_branch_backbone.py [--quick] [--backbone resnet18 | mobilenet_v3_small | timm:<name>]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn
from torch.utils.data import DataLoader

import hiercam


def make_backbone(name: str) -> nn.Module:
    if name.startswith("timm:"):
        import timm  # optional: pip install hiercam[timm]

        return timm.create_model(name.removeprefix("timm:"), pretrained=False)
    import torchvision

    return torchvision.models.get_model(name, weights=None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet18", help="a torchvision model name or timm:<name>")
    parser.add_argument("--quick", action="store_true", help="a few steps on tiny data (a smoke test)")
    args = parser.parse_args()
    scenes, epochs, size = (48, 1, 64) if args.quick else (2000, 3, 96)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)

    net = hiercam.TwoBranchNet(make_backbone(args.backbone), num_classes=10).to(device)
    print(f"{args.backbone}: two branches of {net.num_features} channels")
    # The paper's loss is weight=1e-4 with a raw sum, whose scale depends on batch, feature size and backbone;
    # the scale-free form below (mean cosine of the two feature maps) is easier to choose the weight for.
    criterion = hiercam.TwoBranchLoss(weight=0.1, reduction="batchmean", unit_norm=True)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler(enabled=device.type == "cuda")

    collate = hiercam.collate_scenes
    train_set = hiercam.FashionScenes("train", num_scenes=scenes, image_size=size)
    val_set = hiercam.FashionScenes("val", num_scenes=max(scenes // 4, 16), image_size=size)
    train_loader = DataLoader(train_set, batch_size=16, shuffle=True, collate_fn=collate)
    val_loader = DataLoader(val_set, batch_size=64, collate_fn=collate)

    for epoch in range(1, epochs + 1):
        net.train()
        start = time.perf_counter()
        for batch in train_loader:
            images, labels = batch["image"].to(device), batch["labels"].to(device)
            with torch.autocast(device.type, enabled=device.type == "cuda"):
                output = net(images)  # TwoBranchOutput(logits (2, B, K), features, mean_logits (B, K))
                parts = criterion(output, labels)  # TwoBranchLossOutput(total, classification_1, ...)
            optimizer.zero_grad()
            scaler.scale(parts.total).backward()
            scaler.step(optimizer)
            scaler.update()
        net.eval()
        metric = hiercam.MeanAveragePrecision()
        with torch.no_grad():
            for batch in val_loader:
                metric.update(net(batch["image"].to(device)).mean_logits, batch["labels"].to(device))
        logged = ", ".join(f"{name} {value.item():.4f}" for name, value in parts._asdict().items())
        print(
            f"epoch {epoch}: last batch {logged}; val mAP {metric.compute().item():.3f} "
            f"({time.perf_counter() - start:.1f} s)"
        )

    # CAMs of a TwoBranchNet: each branch explained with its own features and logits, then averaged.
    batch = collate([val_set[i] for i in range(4)])
    with hiercam.GradCAM(net) as cam:  # the extractor is released (stored tensors dropped) on exit
        maps = cam(batch["image"].to(device))  # (4, 10, H, W), the mean of the two branches' maps
        branch_maps = cam.branch_maps  # (2, 4, 10, H, W)
        print(f"{cam!r}: maps {tuple(maps.shape)}, per branch {tuple(branch_maps.shape)}")
    # The two branches' maps of the classes present, compared: 1.0 would mean identical maps.
    present = batch["labels"].bool().to(device)
    first, second = (m[present].flatten(1) for m in branch_maps)
    print(
        f"cosine of the two branches' maps of present classes: "
        f"{nn.functional.cosine_similarity(first, second).mean().item():.3f}"
    )


if __name__ == "__main__":
    main()
