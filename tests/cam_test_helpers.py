"""Helpers shared by the CAM tests: small random-init CNNs, Pearson's r, a layer's activation, and
pytorch-grad-cam's principal-axis projection with hiercam's sign (the corrected EigenCAM oracle).

Importable from any test file (``tests/conftest.py`` puts this folder on ``sys.path``).
"""

from __future__ import annotations

import numpy as np
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


def oriented_projection(batch: np.ndarray) -> np.ndarray:
    """pytorch-grad-cam's ``get_2d_projection``, each map's sign chosen as hiercam chooses it.

    pytorch-grad-cam keeps LAPACK's arbitrary sign of the principal axis (its issue #315), which changes with
    the LAPACK build; hiercam orients each map to correlate non-negatively with the centred sum over channels
    ([`principal_component_maps`][hiercam.principal_component_maps]; where that correlation is rounding noise,
    the entry of largest magnitude made positive). Patched over the peer's module-level
    name (``monkeypatch.setattr(pytorch_grad_cam.eigen_cam, "get_2d_projection", oriented_projection)``), it
    makes the peer an oracle for every image rather than for those whose sign happens to agree.
    """
    from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection

    projections = get_2d_projection(batch)
    for i, values in enumerate(batch):
        positions = values.reshape(len(values), -1).T.astype(np.float64)  # (hw, C)
        centred = positions - positions.mean(axis=0)
        p = projections[i].astype(np.float64).ravel()
        direction = float(p @ centred.sum(axis=1))
        bound = np.linalg.norm(p) * np.sqrt(centred.shape[1]) * np.linalg.norm(centred)
        if abs(direction) > np.finfo(projections.dtype).eps ** 0.5 * bound:
            flip = direction < 0
        else:  # no correlation to speak of (LayerNorm outputs): the entry of largest magnitude made positive
            flip = p[np.abs(p).argmax()] < 0
        if flip:
            projections[i] = -projections[i]
    return projections
