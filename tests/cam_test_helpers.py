"""Helpers shared by the CAM tests: small random-init CNNs, Pearson's r and a layer's activation.

Importable from any test file (``tests/conftest.py`` puts this folder on ``sys.path``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def small_net(num_classes: int = 4) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(6, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, num_classes),
    ).eval()


def pearson(a: Tensor, b: Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


def activation_of(model: nn.Module, layer: str, images: Tensor) -> Tensor:
    store: dict[str, Tensor] = {}
    handle = model.get_submodule(layer).register_forward_hook(lambda _m, _i, o: store.__setitem__("a", o))
    try:
        with torch.no_grad():
            model(images)
    finally:
        handle.remove()
    return store["a"]


def full_res_net(num_classes: int = 4) -> nn.Module:
    """Target layer "3" keeps the input's resolution: no upsampling of ScoreCAM's masks."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(6, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, num_classes),
    ).eval()


def strided_net(num_classes: int = 4) -> nn.Module:
    """Target layer "3" at a quarter of the input's resolution (ScoreCAM upsamples its masks)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(6, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, num_classes),
    ).eval()
