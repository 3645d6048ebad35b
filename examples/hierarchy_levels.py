"""Build a class hierarchy from a trained classifier, then train one model per level of the hierarchy.

The class vectors are the rows of the classifier's last linear layer (paper section 3.2); hierarchical K-means
groups them level by level (section 3.3). Each level is a multi-label problem of its own: its labels are the
class labels mapped to groups, so a level model trains with hiercam.fit and a labels_transform.

Any classifier works: torchvision and timm models, a TwoBranchNet (the mean of its two heads), your own module
(the last nn.Linear), an nn.Linear or a (K, D) weight tensor; `hiercam hierarchy CHECKPOINT --levels ...` does
the grouping from a saved checkpoint.

Run: python examples/hierarchy_levels.py [--quick] [--out hierarchy.json]
"""

from __future__ import annotations

import argparse
import functools

import torch
from sklearn.metrics import adjusted_rand_score
from torch import nn
from torch.utils.data import DataLoader

import hiercam
from hiercam import FashionScenes, collate_scenes


def classifier(num_outputs: int) -> nn.Module:
    backbone = hiercam.SmallConvNet(width=16)
    return nn.Sequential(
        backbone, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(backbone.out_channels, num_outputs)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny data and one epoch (a smoke test)")
    parser.add_argument("--out", default="hierarchy.json", help="where to save the hierarchy")
    args = parser.parse_args()
    scenes, epochs = (256, 1) if args.quick else (4000, 8)
    torch.manual_seed(0)

    train = FashionScenes("train", num_scenes=scenes, image_size=64)
    val = FashionScenes("val", num_scenes=scenes // 4, image_size=64)
    train_loader = DataLoader(train, batch_size=32, shuffle=True, collate_fn=collate_scenes)
    val_loader = DataLoader(val, batch_size=128, collate_fn=collate_scenes)

    # 1. The base classifier, on the K = 10 classes.
    base = classifier(10)
    history = hiercam.fit(base, train_loader, epochs=epochs, lr=3e-3, val_loader=val_loader, progress=False)
    print(f"base classifier: val mAP {history['val_map'][-1]:.3f}")

    # 2. Class vectors (K, D), their distances (K, K), and the hierarchy 10 -> 4 -> 2 groups.
    vectors = hiercam.class_embeddings(base)
    distances = hiercam.class_distances(vectors)
    names = FashionScenes.classes
    nearest = distances.fill_diagonal_(float("inf")).argmin(dim=1)
    print("nearest class:", ", ".join(f"{names[k]} -> {names[int(j)]}" for k, j in enumerate(nearest)))
    hierarchy = hiercam.group_classes(base, levels=(4, 2), class_names=names)
    print(hierarchy)  # the tree, with group sizes

    # How close to the garment hierarchy (1.0 = the same partition), and how often each group is present in
    # the training labels: a group present in almost every scene gives a level model little to learn.
    natural = FashionScenes.natural_hierarchy()
    labels = torch.stack([train[i]["labels"] for i in range(len(train))])  # (N, K)
    for level in range(1, hierarchy.num_levels):
        ari = adjusted_rand_score(natural.assignments(level), hierarchy.assignments(level))
        presence = hierarchy.remap_labels(labels, level).mean(dim=0)  # (N_level,)
        print(
            f"level {level}: adjusted Rand index vs the garment hierarchy {ari:.2f}; "
            f"groups present in {', '.join(f'{p:.0%}' for p in presence.tolist())} of the training scenes"
        )
    hierarchy.save(args.out)  # plain JSON; ClassHierarchy.load reads it back
    assert hiercam.ClassHierarchy.load(args.out) == hierarchy

    # 3. One model per group level, trained on the group labels.
    for level in range(1, hierarchy.num_levels):
        model = classifier(hierarchy.num_groups(level))
        to_groups = functools.partial(hierarchy.remap_labels, level=level)  # (B, K) -> (B, N_level)
        history = hiercam.fit(
            model,
            train_loader,
            epochs=epochs,
            lr=3e-3,
            val_loader=val_loader,
            labels_transform=to_groups,
            progress=False,
        )
        print(
            f"level {level} model, {hierarchy.num_groups(level)} groups: val mAP {history['val_map'][-1]:.3f}"
        )


if __name__ == "__main__":
    main()
