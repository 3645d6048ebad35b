"""FashionScenes baseline: epoch time of the default backbone, val mAP of a small model, hierarchy found.

Trains ``SmallConvNet + global average pooling + linear`` with :func:`hiercam.fit` on FashionScenes; prints:

1. the time to draw the scenes of one epoch and the time of one training epoch (scenes drawn in the loader),
   per backbone width, side by side;
2. for each classifier weight decay (an L2 penalty on the linear layer only; the backbone has none), the
   validation mAP after every epoch, and the class hierarchy that :func:`hiercam.group_classes` finds in the
   trained class vectors at levels (4, 2), compared with the natural garment hierarchy
   (:meth:`FashionScenes.natural_hierarchy`) by exact partition match and adjusted Rand index.

Only the train and val splits are used. Example::

    .venv/bin/python benchmarks/fashion_scenes_baseline.py --threads 2 --epochs 6
"""

from __future__ import annotations

import argparse
import time

import torch
from sklearn.metrics import adjusted_rand_score
from torch import nn
from torch.utils.data import DataLoader

from hiercam import FashionScenes, MeanAveragePrecision, SmallConvNet, collate_scenes, fit, group_classes


def classifier(width: int, seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    backbone = SmallConvNet(width=width)
    return nn.Sequential(
        backbone, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(backbone.out_channels, 10)
    )


def loaders(args: argparse.Namespace) -> tuple[DataLoader, DataLoader]:
    train = FashionScenes("train", num_scenes=args.train, image_size=args.size, seed=args.seed)
    val = FashionScenes("val", num_scenes=args.val, image_size=args.size, seed=args.seed)
    collate = collate_scenes
    return (
        DataLoader(train, batch_size=args.batch, shuffle=True, collate_fn=collate, num_workers=args.workers),
        DataLoader(val, batch_size=128, collate_fn=collate, num_workers=args.workers),
    )


def evaluate_per_class(model: nn.Module, loader: DataLoader) -> list[float]:
    model.eval()
    metric = MeanAveragePrecision()
    with torch.no_grad():
        for batch in loader:
            metric.update(model(batch["image"]), batch["labels"])
    return metric.per_class().tolist()


def partition(groups: list[list[int]]) -> set[frozenset[int]]:
    return {frozenset(g) for g in groups}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--widths", type=int, nargs="+", default=[8, 16, 24])
    parser.add_argument("--width", type=int, default=16, help="backbone width of the training runs")
    parser.add_argument("--train", type=int, default=4000)
    parser.add_argument("--val", type=int, default=1000)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--weight-decays", type=float, nargs="+", default=[0.0, 1e-2, 1e-1])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-timing", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{args.train} train scenes of {args.size}px"
    )

    train_loader, val_loader = loaders(args)
    if not args.skip_timing:
        start = time.perf_counter()
        for _ in train_loader:
            pass
        drawing = time.perf_counter() - start
        print(f"drawing {args.train} scenes (workers={args.workers}): {drawing:.1f} s")
        for width in args.widths:
            model = classifier(width, args.seed)
            history = fit(model, train_loader, epochs=1, lr=args.lr, scheduler=None, progress=False)
            seconds = history["seconds"][0]
            print(
                f"width {width:3d} ({model[0].out_channels} channels, "
                f"{sum(p.numel() for p in model.parameters()) / 1e3:.0f}k parameters): one epoch "
                f"{seconds:.1f} s, of which drawing ~{drawing:.1f} s"
            )

    natural = FashionScenes.natural_hierarchy()
    for decay in args.weight_decays:
        model = classifier(args.width, args.seed)
        head = model[3]
        backbone_params = [p for name, p in model.named_parameters() if not name.startswith("3.")]
        optimizer = torch.optim.Adam(
            [{"params": backbone_params}, {"params": head.parameters(), "weight_decay": decay}], lr=args.lr
        )
        history = fit(
            model,
            train_loader,
            epochs=args.epochs,
            optimizer=optimizer,
            val_loader=val_loader,
            progress=False,
        )
        maps = " ".join(f"{v:.3f}" for v in history["val_map"])
        print(f"\nclassifier weight decay {decay:g}: val mAP per epoch {maps}")
        print(f"  epoch seconds {' '.join(f'{s:.1f}' for s in history['seconds'])}")
        per_class = evaluate_per_class(model, val_loader)
        print(
            "  val AP per class: "
            + ", ".join(f"{n} {ap:.2f}" for n, ap in zip(FashionScenes.classes, per_class, strict=True))
        )
        for unit_norm in (False, True):
            hierarchy = group_classes(
                model, levels=(4, 2), class_names=FashionScenes.classes, unit_norm=unit_norm
            )
            print(f"  group_classes(levels=(4, 2), unit_norm={unit_norm}):")
            print("    " + str(hierarchy).replace("\n", "\n    "))
            for level in (1, 2):
                found = hierarchy.assignments(level).tolist()
                truth = natural.assignments(level).tolist()
                same = partition(hierarchy.groups(level)) == partition(natural.groups(level))
                print(
                    f"    level {level}: natural hierarchy recovered: {same}, "
                    f"adjusted Rand index {adjusted_rand_score(truth, found):.2f}"
                )


if __name__ == "__main__":
    main()
