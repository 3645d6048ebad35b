"""Agreement of seven gradient methods with pytorch-grad-cam's own classes, on random-init models.

The methods: EigenGradCAM, GradCAMElementWise, ShapleyCAM, FinerCAM, FullGrad, GuidedBackprop, GuidedGradCAM.

Prints one row per method and model: the largest absolute difference and Pearson's r between hiercam's
min-max normalised maps and pytorch-grad-cam's (for GuidedBackprop: the raw input gradients, with the
difference relative to their largest value). Run: ``python benchmarks/peer_gradient_methods.py`` (CPU, about
15 s). ``tests/test_cam_peer_gradient_methods.py`` asserts the same agreement on smaller inputs.

EigenGradCAM is compared with pytorch-grad-cam's projection oriented as hiercam orients it
(``principal_component_maps``: pytorch-grad-cam keeps LAPACK's arbitrary sign, issue #315).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable

import numpy as np
import torch
from pytorch_grad_cam import (
    EigenGradCAM as PeerEigenGradCAM,
)
from pytorch_grad_cam import (
    FinerCAM as PeerFinerCAM,
)
from pytorch_grad_cam import (
    FullGrad as PeerFullGrad,
)
from pytorch_grad_cam import (
    GradCAM as PeerGradCAM,
)
from pytorch_grad_cam import (
    GradCAMElementWise as PeerGradCAMElementWise,
)
from pytorch_grad_cam import (
    GuidedBackpropReLUModel,
)
from pytorch_grad_cam import (
    ShapleyCAM as PeerShapleyCAM,
)
from pytorch_grad_cam import eigen_grad_cam as peer_eigen_grad_cam
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn
from torchvision import models

import hiercam

CLASSES = [1, 4]


def small_cnn() -> nn.Module:
    """A small CNN: ReLU modules before the target layer ``"4"``, GELU after it (a non-zero Hessian)."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(inplace=True),
        nn.Conv2d(8, 12, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(12, 16, 3, padding=1),
        nn.GELU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 6),
    )


MODELS: dict[str, tuple[Callable[[], nn.Module], str, int]] = {
    # name: (factory, target layer, input size)
    "small_cnn": (small_cnn, "4", 32),
    "resnet18": (lambda: models.resnet18(num_classes=6), "layer3", 64),
    "mobilenet_v3_small": (lambda: models.mobilenet_v3_small(num_classes=6), "features.9", 64),
}


def oriented_projection(batch: np.ndarray) -> np.ndarray:
    """pytorch-grad-cam's ``get_2d_projection`` with each map's sign chosen as hiercam chooses it."""
    projections = _PEER_PROJECTION(batch)
    for i, values in enumerate(batch):
        total = np.nan_to_num(values).sum(axis=0)
        if float((projections[i] * (total - total.mean())).sum()) < 0:
            projections[i] = -projections[i]
    return projections


_PEER_PROJECTION = peer_eigen_grad_cam.get_2d_projection


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


def peer_maps(peer: Callable[..., np.ndarray], images: torch.Tensor, **kwargs: object) -> torch.Tensor:
    """pytorch-grad-cam's maps of ``CLASSES``, one call per class, as ``(B, K', H, W)``."""
    return torch.stack(
        [
            torch.from_numpy(peer(images, targets=[ClassifierOutputTarget(k)] * len(images), **kwargs))
            for k in CLASSES
        ],
        dim=1,
    )


def rows_for(name: str) -> list[tuple[str, str, float, float]]:
    factory, layer_name, size = MODELS[name]
    torch.manual_seed(0)
    model = factory().eval()
    images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    layer = model.get_submodule(layer_name)
    rows = []

    def add(method: str, ours: torch.Tensor, theirs: torch.Tensor, relative: bool = False) -> None:
        scale = float(theirs.abs().max()) if relative else 1.0
        rows.append((method, name, float((ours - theirs).abs().max()) / scale, pearson(ours, theirs)))

    pairs: list[tuple[type[hiercam.BaseCAM], type]] = [
        (hiercam.GradCAMElementWise, PeerGradCAMElementWise),
        (hiercam.EigenGradCAM, PeerEigenGradCAM),
    ]
    if name != "mobilenet_v3_small":  # torch has no second derivative of Hardsigmoid: both refuse
        pairs.append((hiercam.ShapleyCAM, PeerShapleyCAM))
    for ours_type, peer_type in pairs:
        ours = ours_type(model, layer_name)(images, CLASSES, normalize="minmax")
        peer_eigen_grad_cam.get_2d_projection = oriented_projection
        try:
            with peer_type(model, [layer]) as peer:
                theirs = peer_maps(peer, images)
        finally:
            peer_eigen_grad_cam.get_2d_projection = _PEER_PROJECTION
        add(ours_type.__name__, ours, theirs)

    ours = hiercam.FinerCAM(model, layer_name)(images, CLASSES, normalize="minmax")
    with PeerFinerCAM(model, [layer]) as peer:
        theirs = torch.stack([torch.from_numpy(peer(images, target_idx=k)) for k in CLASSES], dim=1)
    add("FinerCAM", ours, theirs)

    ours = hiercam.FullGrad(model)(images, CLASSES, normalize="minmax")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peer = PeerFullGrad(model, [])
        theirs = peer_maps(peer, images)
    add("FullGrad", ours, theirs)

    cam = hiercam.GuidedBackprop(model)
    cam(images, CLASSES)
    assert cam.gradients is not None
    guided_theirs = guided_backprop_peer(model, images)
    add("GuidedBackprop", cam.gradients, guided_theirs, relative=True)

    guided_cam = hiercam.GuidedGradCAM(model, layer_name)
    guided_cam(images, CLASSES)
    assert guided_cam.guided is not None
    with PeerGradCAM(model, [layer]) as peer:
        grad_cam = peer_maps(peer, images)
    add("GuidedGradCAM", guided_cam.guided, grad_cam[:, :, None] * guided_theirs, relative=True)
    return rows


def guided_backprop_peer(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """pytorch-grad-cam's guided backpropagation ``(B, K', C, H, W)``: one image and one class per call.

    It replaces the model's ReLUs (and puts back new non-in-place ones): it runs on a copy.
    """
    peer = GuidedBackpropReLUModel(copy.deepcopy(model), device="cpu")
    return torch.stack(
        [
            torch.stack(
                [torch.from_numpy(peer(images[i : i + 1].clone(), k)).permute(2, 0, 1) for k in CLASSES]
            )
            for i in range(len(images))
        ]
    )


def main() -> None:
    torch.set_num_threads(1)
    print("| method | model | max abs diff | Pearson r |")
    print("| --- | --- | --- | --- |")
    for name in MODELS:
        for method, model, diff, r in rows_for(name):
            print(f"| {method} | {model} | {diff:.1e} | {r:.6f} |")
    print("(GuidedBackprop, GuidedGradCAM: difference relative to the largest absolute value)")


if __name__ == "__main__":
    main()
