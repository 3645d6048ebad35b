"""Add hiercam's orthogonal loss to your own two-branch (or multi-head) model and training loop.

The model below is yours: hiercam only provides the loss. It trains the same model twice on the bundled
FashionScenes data, without and with the loss, and measures on validation scenes how much the two branches'
features overlap (their cosine similarity), how well the mean logits classify (mAP), and how alike the two
branches' class activation maps are (Pearson correlation): orthogonal features do not by themselves give
different maps, so measure the maps too.

Run: python examples/orthogonal_loss.py [--quick]
"""

from __future__ import annotations

import argparse

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

import hiercam


class TwoHeadNet(nn.Module):
    """A shared stem, then two branches with their own convolutions and classifiers."""

    def __init__(self, num_classes: int, width: int = 16) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.BatchNorm2d(cout), nn.ReLU()
            )

        self.stem = nn.Sequential(block(3, width), block(width, 2 * width))
        self.branch1 = block(2 * width, 4 * width)
        self.branch2 = block(2 * width, 4 * width)
        self.fc1 = nn.Linear(4 * width, num_classes)
        self.fc2 = nn.Linear(4 * width, num_classes)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Logits ``(B, K)`` of each branch, and each branch's feature maps ``(B, C, h, w)``."""
        shared = self.stem(x)
        f1, f2 = self.branch1(shared), self.branch2(shared)  # (B, C, h, w) each: what the loss compares
        return self.fc1(f1.mean(dim=(2, 3))), self.fc2(f2.mean(dim=(2, 3))), f1, f2


def train(weight: float, train_loader: DataLoader, epochs: int, seed: int = 0) -> TwoHeadNet:
    torch.manual_seed(seed)
    model = TwoHeadNet(num_classes=10)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    bce = nn.BCEWithLogitsLoss()
    # Scale-free: per-image cosine of the two feature maps, averaged over the batch. With the paper's raw
    # sum (reduction="sum", unit_norm=False) the weight depends on batch size, feature size and backbone.
    orthogonal = hiercam.OrthogonalLoss(weight=weight, reduction="batchmean", unit_norm=True)
    model.train()
    for _ in range(epochs):
        for batch in train_loader:
            images, labels = batch["image"], batch["labels"]
            logits1, logits2, f1, f2 = model(images)
            loss = bce(logits1, labels) + bce(logits2, labels) + orthogonal(f1, f2)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


def branch_cams(fc: nn.Linear, features: Tensor) -> Tensor:
    """CAMs of every class from one branch: class weights applied to its features, ReLU: (B, K, h, w)."""
    return torch.einsum("kc,bchw->bkhw", fc.weight, features).relu()


@torch.no_grad()
def measure(model: TwoHeadNet, loader: DataLoader) -> tuple[float, float, float]:
    overlaps, scores, labels, correlations = [], [], [], []
    for batch in loader:
        logits1, logits2, f1, f2 = model(batch["image"])
        overlaps.append(hiercam.orthogonal_loss(f1, f2, reduction="none", unit_norm=True))  # (B,)
        scores.append((logits1 + logits2) / 2)
        labels.append(batch["labels"])
        # Pearson r between the two branches' maps of every (image, present class) pair
        present = batch["labels"].bool()
        cam1 = branch_cams(model.fc1, f1)[present].flatten(1)
        cam2 = branch_cams(model.fc2, f2)[present].flatten(1)
        cam1, cam2 = cam1 - cam1.mean(1, keepdim=True), cam2 - cam2.mean(1, keepdim=True)
        correlations.append((cam1 * cam2).sum(1) / (cam1.norm(dim=1) * cam2.norm(dim=1)).clamp_min(1e-12))
    overlap = torch.cat(overlaps).mean().item()
    mean_ap = hiercam.mean_average_precision(torch.cat(scores), torch.cat(labels)).item()
    return overlap, mean_ap, torch.cat(correlations).mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny data and one epoch (a smoke test)")
    parser.add_argument("--weight", type=float, default=1.0, help="weight of the orthogonal loss")
    args = parser.parse_args()
    scenes, epochs, size = (256, 1, 48) if args.quick else (3000, 4, 64)

    train_set = hiercam.FashionScenes("train", num_scenes=scenes, image_size=size)
    val_set = hiercam.FashionScenes("val", num_scenes=scenes // 4, image_size=size)
    collate = hiercam.collate_scenes
    train_loader = DataLoader(train_set, batch_size=32, shuffle=True, collate_fn=collate)
    val_loader = DataLoader(val_set, batch_size=128, collate_fn=collate)

    print("orthogonal loss weight | feature cosine | val mAP | CAM correlation")
    for weight in (0.0, args.weight):
        overlap, mean_ap, correlation = measure(train(weight, train_loader, epochs), val_loader)
        print(f"{weight:>22g} | {overlap:14.3f} | {mean_ap:7.3f} | {correlation:15.3f}")


if __name__ == "__main__":
    main()
