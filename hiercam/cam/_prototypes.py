"""Kernels of prototype CAMs (LPCAM): argument checks, K-means on local features, prototype selection, maps.

Shared by [`prototype_cam`][hiercam.cam.prototype.prototype_cam] and
[`PrototypeCAM`][hiercam.cam.prototype.PrototypeCAM], so that the function and the class agree by
construction.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from numbers import Integral
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from hiercam._validation import (
    check_binary,
    check_finite,
    check_tensor,
    format_shape,
    is_real,
    should_check,
    type_name,
)
from hiercam.maps import NormalizeMode, normalize_maps

__all__ = [
    "check_batch",
    "check_context_classes",
    "check_labels",
    "check_prototypes",
    "check_score_range",
    "cluster_points",
    "direction_weights",
    "maps_from_weights",
    "select_prototypes",
]


def check_batch(features: Any, maps: Any, labels: Any, num_classes: int, channels: int) -> None:
    """``features (B, C, h, w)``, ``maps (B, K, h, w)`` in ``[0, 1]`` and ``labels (B, K)`` 0/1 agree."""
    check_features(features, channels)
    check_tensor(maps, "maps", dims="B, K, h, w", floating=True)
    batch, _, height, width = features.shape
    expected = (batch, num_classes, height, width)
    if tuple(maps.shape) != expected:
        raise ValueError(
            f"`maps` must have shape (B, K, h, w) = {expected} (the CAMs of the images of `features` at "
            f"the feature resolution; resize them with hiercam.maps.resize_maps), "
            f"got {format_shape(maps.shape)}"
        )
    check_finite(maps, "maps")
    if maps.numel() and should_check(maps) and not bool(((maps >= 0) & (maps <= 1)).all()):
        raise ValueError(
            "`maps` must be normalised to [0, 1] (e.g. with hiercam.normalize_maps), got values outside"
        )
    check_labels(labels, batch, num_classes)


def check_features(features: Any, channels: int) -> None:
    """``features`` is a finite floating-point ``(B, C, h, w)`` tensor with ``C = channels``."""
    check_tensor(features, "features", dims="B, C, h, w", floating=True)
    if features.shape[1] != channels:
        raise ValueError(
            f"`features` must have C = {channels} channels (the columns of `classifier_weight`), "
            f"got shape {format_shape(features.shape)}"
        )
    check_finite(features, "features")


def check_labels(labels: Any, batch: int, num_classes: int) -> None:
    """``labels`` is a ``(B, K)`` tensor of 0/1 values (or bools)."""
    check_tensor(labels, "labels", dims="B, K")
    if tuple(labels.shape) != (batch, num_classes):
        raise ValueError(
            f"`labels` must have shape (B, K) = {(batch, num_classes)}, got {format_shape(labels.shape)}"
        )
    if labels.is_complex():
        raise TypeError(f"`labels` must hold 0/1 values or bools, got dtype {labels.dtype}")
    check_binary(labels, "labels")


def check_score_range(value: Any) -> tuple[float, float]:
    """``context_score``: a pair ``(low, high)`` with ``0 <= low < high <= 1``."""
    if not isinstance(value, Sequence) or isinstance(value, str) or len(value) != 2:
        raise TypeError(f"`context_score` must be a pair (low, high) of floats, got {value!r}")
    if not all(is_real(v) for v in value):
        raise TypeError(f"`context_score` must be a pair (low, high) of floats, got {value!r}")
    low, high = float(value[0]), float(value[1])
    if not 0.0 <= low < high <= 1.0:
        raise ValueError(f"`context_score` must satisfy 0 <= low < high <= 1, got {value!r}")
    return low, high


def check_context_classes(value: Any, num_classes: int) -> tuple[tuple[int, ...], ...] | None:
    """``None``, or ``K`` sequences of distinct class indices in ``0..K-1``, none holding its own class."""
    if value is None:
        return None
    if not isinstance(value, Sequence) or isinstance(value, str):
        raise TypeError(
            f"`context_classes` must be None or a sequence of K sequences, got {type_name(value)}"
        )
    if len(value) != num_classes:
        raise ValueError(
            f"`context_classes` must hold one sequence per class (K = {num_classes}), got {len(value)}"
        )
    result = []
    for cls, others in enumerate(value):
        if not isinstance(others, Sequence) or isinstance(others, str):
            raise TypeError(f"`context_classes[{cls}]` must be a sequence of ints, got {type_name(others)}")
        if any(isinstance(o, (bool, np.bool_)) or not isinstance(o, Integral) for o in others):
            raise TypeError(f"`context_classes[{cls}]` must hold ints, got {list(others)!r}")
        indices = tuple(int(o) for o in others)
        if any(not 0 <= o < num_classes for o in indices):
            raise ValueError(
                f"`context_classes[{cls}]` must hold classes 0..{num_classes - 1}, got {indices}"
            )
        if cls in indices:
            raise ValueError(f"`context_classes[{cls}]` must not hold class {cls} itself, got {indices}")
        if len(set(indices)) != len(indices):
            raise ValueError(f"`context_classes[{cls}]` must not repeat a class, got {indices}")
        result.append(indices)
    return tuple(result)


def check_prototypes(value: Any, name: str, num_classes: int | None, channels: int) -> list[Tensor]:
    """``K`` finite floating-point tensors ``(N_k, C)`` (``N_k`` may be 0)."""
    if isinstance(value, Tensor) or not isinstance(value, Sequence):
        raise TypeError(f"`{name}` must be a sequence of K tensors (N_k, C), got {type_name(value)}")
    if num_classes is not None and len(value) != num_classes:
        raise ValueError(f"`{name}` must hold K = {num_classes} tensors (one per class), got {len(value)}")
    for cls, protos in enumerate(value):
        check_tensor(protos, f"{name}[{cls}]", dims="N, C", floating=True)
        if protos.shape[1] != channels:
            raise ValueError(
                f"`{name}[{cls}]` must have shape (N, C) with C = {channels}, "
                f"got {format_shape(protos.shape)}"
            )
        check_finite(protos, f"{name}[{cls}]")
    return list(value)


def cluster_points(points: Tensor, num_clusters: int, n_init: int, seed: int) -> Tensor:
    """Cosine K-means centres ``(N', C)`` of ``points (n, C)``, ``N' <= num_clusters`` (empty for ``n = 0``).

    The points are L2-normalised and clustered by scikit-learn's Euclidean ``KMeans`` (for unit vectors
    ``|a - b|^2 = 2 - 2 cos(a, b)``); each centre is the mean of the *raw* points of its cluster, as
    kmeans_pytorch's cosine K-means returns it. Clusters that come out empty (fewer distinct points than
    ``num_clusters``) are dropped; centres are ordered by their first point.
    """
    if points.shape[0] == 0:
        return points.new_zeros(0, points.shape[1])
    from sklearn.cluster import KMeans  # imported here: scikit-learn is slow to import
    from sklearn.exceptions import ConvergenceWarning

    unit = F.normalize(points.double(), dim=1).numpy()
    count = min(num_clusters, points.shape[0])
    with warnings.catch_warnings():  # fewer distinct points than clusters: the empty ones are dropped below
        warnings.simplefilter("ignore", ConvergenceWarning)
        assigned = KMeans(n_clusters=count, n_init=n_init, random_state=seed).fit_predict(unit)
    _, first = np.unique(assigned, return_index=True)
    order = assigned[np.sort(first)]  # clusters in order of their first point: canonical, seed-free order
    labels = torch.from_numpy(assigned)
    return torch.stack([points[labels == int(c)].double().mean(dim=0) for c in order]).to(points.dtype)


def select_prototypes(
    centers: Tensor, cls: int, weight: Tensor, bias: Tensor | None, low: float, high: float | None
) -> Tensor:
    """The centres whose classifier softmax score of class ``cls`` is in ``(low, high)``, ``(N_sel, C)``.

    ``high=None`` is the class-prototype rule: score ``> low``; if no centre passes, the centres within
    ``1e-6`` of the best score are kept (LPCAM's MS COCO script), so a class with centres always has one.
    """
    if centers.shape[0] == 0:
        return centers
    logits = centers.double() @ weight.double().T
    if bias is not None:
        logits = logits + bias.double()
    score = torch.softmax(logits, dim=1)[:, cls]
    if high is not None:
        return centers[(score > low) & (score < high)]
    keep = score > low
    if not bool(keep.any()):
        keep = score >= score.max() - 1e-6
    return centers[keep]


def direction_weights(class_prototypes: Sequence[Tensor], context_prototypes: Sequence[Tensor]) -> Tensor:
    """``(K, C)``: the mean unit class prototype minus the mean unit context prototype of each class.

    A class without class prototypes gets a zero row (its maps are zero); a class without context
    prototypes gets its mean unit class prototype.
    """
    channels = class_prototypes[0].shape[1]
    dtype = torch.promote_types(class_prototypes[0].dtype, torch.float32)
    rows = []
    for own, context in zip(class_prototypes, context_prototypes, strict=True):
        row = own.new_zeros(channels, dtype=dtype)
        if own.shape[0]:
            row = F.normalize(own.to(dtype), dim=1).mean(dim=0)
            if context.shape[0]:
                row = row - F.normalize(context.to(row), dim=1).mean(dim=0)
        rows.append(row)
    return torch.stack(rows)


def maps_from_weights(
    features: Tensor, weights: Tensor, labels: Tensor | None, normalize: NormalizeMode | None
) -> Tensor:
    """``(B, K, h, w)``: ``ReLU(unit(features) . weights_k)``, normalised, zero where ``labels`` is 0."""
    unit = F.normalize(features, dim=1)
    maps = torch.einsum("bchw,kc->bkhw", unit, weights.to(device=features.device, dtype=features.dtype))
    maps = normalize_maps(maps.clamp_min(0), normalize, validate_args=False)
    if labels is not None:
        maps = maps * labels.to(device=maps.device, dtype=maps.dtype)[:, :, None, None]
    return maps
