"""Do the two branches' features decorrelate under the orthogonal loss, and do their CAMs?

A small synthetic multi-label task (K coloured shapes pasted on noise), a tiny two-conv backbone, the same
seeds and steps for every setting. For each setting and seed, on held-out images:

* overlap: mean over images of ``sum(f1 * f2) / (|f1| |f2|)`` of the two branches' feature maps;
* accuracy: per-label accuracy of the mean logits (threshold 0), and mAP (scikit-learn);
* channel cosine: cosine similarity between the two branches' mean activation per channel (vectors of length
  C); near 0 when each channel index is active in only one branch (the loss pairs channel c with channel c);
* CAM r: mean Pearson correlation between the two branches' class activation maps (closed form: class weights
  applied to the features, ReLU) over (image, present class) pairs where both maps vary.

Usage: python benchmarks/decorrelation.py [--steps 300] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from sklearn.metrics import average_precision_score
from torch import Tensor, nn

from hiercam import TwoBranchLoss, TwoBranchNet, orthogonal_loss

K = 4
SIZE = 24
PATCH = 6


def patterns() -> Tensor:
    """K distinct 3 x PATCH x PATCH patterns (colour and shape differ between classes)."""
    p = torch.zeros(K, 3, PATCH, PATCH)
    p[0, 0] = 1.0  # red square
    p[1, 1, PATCH // 2 - 1 : PATCH // 2 + 1, :] = 1.0  # green bar
    p[1, 1, :, PATCH // 2 - 1 : PATCH // 2 + 1] = 1.0  # ... cross
    p[2, 2, :, : PATCH // 2] = 1.0  # blue half
    p[3, 0] = torch.eye(PATCH)  # red-green diagonal
    p[3, 1] = torch.eye(PATCH).flip(0)
    return p


def make_data(n: int, seed: int) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = 0.3 * torch.randn(n, 3, SIZE, SIZE, generator=g)
    y = (torch.rand(n, K, generator=g) < 0.4).float()
    shapes = patterns()
    for i in range(n):
        for k in range(K):
            if y[i, k]:
                r, c = torch.randint(0, SIZE - PATCH + 1, (2,), generator=g).tolist()
                x[i, :, r : r + PATCH, c : c + PATCH] += 1.5 * shapes[k]
    return x, y


def tiny_backbone() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU()
    )


def train(loss_fn: TwoBranchLoss, seed: int, steps: int, data: tuple[Tensor, Tensor]) -> TwoBranchNet:
    torch.manual_seed(seed)
    net = TwoBranchNet(tiny_backbone, K)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    x, y = data
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (32,), generator=g)
        opt.zero_grad()
        loss_fn(net(x[idx]), y[idx]).total.backward()
        opt.step()
    return net.eval()


def cam_correlation(net: TwoBranchNet, x: Tensor, y: Tensor) -> tuple[float, int, int]:
    with torch.no_grad():
        out = net(x)
        cams = [
            torch.relu(torch.einsum("kc,bchw->bkhw", branch.classifier.weight, f)).flatten(2)
            for branch, f in zip(net.branches, out.features, strict=True)
        ]
    rs, skipped = [], 0
    for b, k in y.nonzero().tolist():
        m1, m2 = cams[0][b, k], cams[1][b, k]
        if m1.std() == 0 or m2.std() == 0:
            skipped += 1
            continue
        rs.append(float(torch.corrcoef(torch.stack([m1, m2]))[0, 1]))
    return statistics.fmean(rs), len(rs), skipped


def evaluate(net: TwoBranchNet, x: Tensor, y: Tensor) -> dict[str, float]:
    with torch.no_grad():
        out = net(x)
    overlap = orthogonal_loss(*out.features, reduction="none", unit_norm=True).mean()
    accuracy = ((out.mean_logits > 0).float() == y).float().mean()
    mean_ap = average_precision_score(y.numpy(), out.mean_logits.numpy(), average="macro")
    cam_r, pairs, skipped = cam_correlation(net, x, y)
    channels = [f.mean(dim=(0, 2, 3)) for f in out.features]
    return {
        "overlap": float(overlap),
        "channel_cos": float(torch.nn.functional.cosine_similarity(*channels, dim=0)),
        "accuracy": float(accuracy),
        "mAP": float(mean_ap),
        "cam_r": cam_r,
        "pairs": pairs,
        "skipped": skipped,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    train_data = make_data(2048, seed=1000)
    x_test, y_test = make_data(512, seed=2000)
    settings = {
        "weight=0": TwoBranchLoss(0.0),
        "sum, weight=1e-4 (paper)": TwoBranchLoss(1e-4),
        "batchmean, weight=1e-2": TwoBranchLoss(1e-2, reduction="batchmean"),
        "unit_norm, batchmean, weight=0.1": TwoBranchLoss(0.1, reduction="batchmean", unit_norm=True),
        "unit_norm, batchmean, weight=1": TwoBranchLoss(1.0, reduction="batchmean", unit_norm=True),
    }
    print(
        f"{len(train_data[0])} training / {len(x_test)} held-out images, {args.steps} steps, batch 32, "
        f"seeds {args.seeds}"
    )
    columns = ("overlap", "channel_cos", "accuracy", "mAP", "cam_r")
    print(f"{'setting':32s} " + " ".join(f"{c:>20s}" for c in columns))
    for name, loss_fn in settings.items():
        start = time.perf_counter()
        rows = [evaluate(train(loss_fn, seed, args.steps, train_data), x_test, y_test) for seed in args.seeds]
        cells = []
        for key in columns:
            values = [row[key] for row in rows]
            cells.append(f"{statistics.fmean(values):.3f} [{min(values):.3f},{max(values):.3f}]")
        print(f"{name:32s} " + " ".join(f"{c:>20s}" for c in cells), f"({time.perf_counter() - start:.0f} s)")
        print("    per seed:", [{k: round(v, 3) for k, v in row.items()} for row in rows])


if __name__ == "__main__":
    main()
