"""Fuse the CAMs of a base model and of the level models of a class hierarchy (paper Eq. 6), notebook style.

The cells (``# %%``) run one after the other as a script, or as a notebook in Jupyter (with jupytext), VS Code
or PyCharm. A base classifier and one model per hierarchy level are trained quickly on the bundled
FashionScenes data, their Grad-CAMs computed for validation scenes, and fused with hiercam.fuse_hierarchy;
then the same fusion is done by hand with hiercam.fuse for one class, to show what fuse_hierarchy matches up.

Run: python examples/fuse_cams.py [--quick] [--out fusion.png]
"""

# %% Setup: data, a base classifier, its class hierarchy, one model per group level
import argparse
import functools

import torch
from matplotlib.figure import Figure  # pip install hiercam[viz]
from torch import nn
from torch.utils.data import DataLoader

import hiercam
from hiercam import FashionScenes, collate_scenes
from hiercam.viz import overlay

parser = argparse.ArgumentParser(description="Fuse CAMs across the levels of a class hierarchy.")
parser.add_argument("--quick", action="store_true", help="tiny data and one epoch (a smoke test)")
parser.add_argument("--out", default="fusion.png", help="where to save the picture")
args, _ = parser.parse_known_args()  # known args only: a notebook kernel passes its own
scenes, epochs = (256, 1) if args.quick else (4000, 6)
torch.manual_seed(0)

train = FashionScenes("train", num_scenes=scenes, image_size=64)
loader = DataLoader(train, batch_size=32, shuffle=True, collate_fn=collate_scenes)


def trained_classifier(num_outputs: int, **fit_options: object) -> nn.Module:
    backbone = hiercam.SmallConvNet(width=16)
    model = nn.Sequential(
        backbone, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(backbone.out_channels, num_outputs)
    )
    hiercam.fit(model, loader, epochs=epochs, lr=3e-3, progress=False, **fit_options)  # type: ignore[arg-type]
    return model.eval()


base_model = trained_classifier(10)
hierarchy = hiercam.group_classes(base_model, levels=(4, 2), class_names=FashionScenes.classes)
level_models = [
    trained_classifier(
        hierarchy.num_groups(level), labels_transform=functools.partial(hierarchy.remap_labels, level=level)
    )
    for level in range(1, hierarchy.num_levels)
]
print(hierarchy)

# %% CAMs of every model for a batch of validation scenes
val = FashionScenes("val", num_scenes=64, image_size=64)
batch = collate_scenes([val[i] for i in range(len(val))])
images, labels = batch["image"], batch["labels"]  # (B, 3, 64, 64), (B, K)
with hiercam.GradCAM(base_model) as cam:
    base_maps = cam(images)  # (B, K, 64, 64): M0 of every class
level_maps = []
for model in level_models:
    with hiercam.GradCAM(model) as cam:
        level_maps.append(cam(images))  # (B, N_l, 64, 64): the map of every group of level l
print("base", tuple(base_maps.shape), "levels", [tuple(c.shape) for c in level_maps])

# %% Eq. 6 for every class: M = M0 + mean_l(M_l[group of the class]) - M0'
# M0' ("the CAM of the rest classes", undefined in the paper) is read here as the pixel-wise max of the base
# maps of the other classes present in the image (rest_reduction="max"); labels say which classes are present:
# the ground truth when evaluating, the classifier's predictions at inference.
fused = hiercam.fuse_hierarchy(base_maps, level_maps, hierarchy, labels, rest_reduction="max")  # (B, K, H, W)

# %% The same, by hand, for one class of one image, with hiercam.fuse
b = int((labels.sum(1) >= 2).nonzero()[0])  # an image with at least two classes
k = int(labels[b].nonzero()[0])  # its first class
groups = [hierarchy.group_of(k, level) for level in range(1, hierarchy.num_levels)]
group_maps = [
    cams[b, group] for cams, group in zip(level_maps, groups, strict=True)
]  # M_l of the group holding k
others = labels[b].bool().clone()
others[k] = False
rest = base_maps[b, others].amax(dim=0)  # M0': max of the other present classes' base maps
by_hand = hiercam.fuse(base_maps[b, k], group_maps, rest=rest)  # clamped at 0, max-normalised
print(
    f"image {b}, class {FashionScenes.classes[k]}, groups {groups}: "
    f"fuse_hierarchy == fuse by hand: {torch.allclose(by_hand, fused[b, k], atol=1e-6)}"
)

# %% Picture: the image, M0, each level's group map, M0', and the fused map of that class
panels = [("image", None), ("M0 (base)", base_maps[b, k])]
panels += [(f"level {i + 1} group {g}", m) for i, (g, m) in enumerate(zip(groups, group_maps, strict=True))]
panels += [("M0' (rest, max)", rest), ("fused", fused[b, k])]
figure = Figure(figsize=(1.8 * len(panels), 2.1), layout="constrained")
for i, (title, heat) in enumerate(panels):
    ax = figure.add_subplot(1, len(panels), i + 1)
    ax.imshow(images[b].permute(1, 2, 0).numpy() if heat is None else overlay(images[b], heat))
    ax.set_title(title, fontsize=8)
    ax.set_axis_off()
figure.savefig(args.out, dpi=80)
print(f"wrote {args.out}")
figure  # noqa: B018  (shows the figure in a notebook)

# %% A first look at quality: mIoU at the paper's threshold 0.15, base maps vs fused maps
# (how-to 6 chooses the threshold on validation data and reports on test)
for name, cams in (("base", base_maps), ("fused", fused)):
    # masks (B, 64, 64): 0 background, k + 1 class k; the maps become predicted masks at the threshold
    result = hiercam.mean_iou(cams, labels, masks=batch["mask"], thresholds=0.15)
    print(f"{name:>5}: mIoU@0.15 on {len(val)} validation scenes {100 * result.miou.item():.1f}")
