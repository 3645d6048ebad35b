"""CAM fusion across the levels of a class hierarchy (paper section 3.5, Eq. 6).

For one class in one image, ``M = M0 + mean_i(M_i) - M0'``: the map of the level-0 model, plus the mean of the
maps of the groups holding the class at every group level, minus ``M0'``, "the CAM of the rest classes".
[`fuse`][hiercam.fuse] is Eq. 6 on maps the caller has already matched up;
[`fuse_hierarchy`][hiercam.fuse_hierarchy] does the matching from a [`ClassHierarchy`][hiercam.ClassHierarchy]
and builds ``M0'``; [`rest_maps`][hiercam.rest_maps] builds the same ``M0'`` for a caller of ``fuse``.

The paper does not define ``M0'``. Our default reading (``rest_reduction="max"``) is the pixel-wise maximum of
the base maps of the *other classes present in the image*. In an independent re-implementation of the paper on
real data it was the best of the readings tried on validation data, and without any ``M0'`` term the
localisation gain disappeared; on FashionScenes the readings are compared in ``docs/benchmarks.md``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from hiercam._validation import (
    all_finite,
    check_binary,
    check_choice,
    check_finite,
    check_tensor,
    format_shape,
    is_real,
    should_check,
    type_name,
)
from hiercam.hierarchy import ClassHierarchy
from hiercam.maps import NormalizeMode, normalize_maps

__all__ = ["fuse", "fuse_hierarchy", "rest_maps", "RestReduction"]

#: How [`fuse_hierarchy`][hiercam.fuse_hierarchy] builds ``M0'`` from the other present classes' base maps.
RestReduction = Literal["max", "mean"]


def fuse(
    base: Tensor,
    levels: Sequence[Tensor] | Tensor,
    rest: Tensor | None = None,
    *,
    clamp: bool = True,
    normalize: NormalizeMode | None = "max",
    weights: tuple[float, float, float] = (1.0, 1.0, 1.0),
) -> Tensor:
    """Fuse maps with the paper's Eq. 6: ``M = M0 + mean_i(M_i) - M0'``.

    ``weights = (a, b, c)`` generalises it to ``M = a M0 + b mean_i(M_i) - c M0'`` (the paper: all 1).

    The maps are used as given (rescale them first if their scales differ, e.g. with
    [`normalize_maps`][hiercam.normalize_maps]); [`fuse_hierarchy`][hiercam.fuse_hierarchy] does that for you.
    NaN or infinite values in any input raise a ``ValueError`` naming it (one ``aminmax`` pass per input), and
    so does a sum that overflows the dtype: a non-finite map is never returned from finite input. These are
    value checks, skipped after [`hiercam.set_checks(False)`][hiercam.set_checks].

    Args:
        base: ``M0``, maps of any shape ``(..., H, W)``, floating point, any device.
        levels: the ``M_i``: a non-empty sequence of maps shaped like ``base``, or one tensor
            ``(L, ..., H, W)`` with the level dimension first.
        rest: ``M0'``, shaped like ``base``; ``None`` leaves the term out.
        clamp: set negative values of the sum to 0 (before ``normalize``).
        normalize: rescale each fused map with [`normalize_maps`][hiercam.normalize_maps] (``"max"``: peak 1,
            an all-zero map stays all zero), ``"minmax"``, or ``None`` to keep the raw sum.
        weights: ``(a, b, c)``, non-negative, in ``a M0 + b mean_i(M_i) - c M0'`` (the paper: all 1; not in
            the paper otherwise).

    Returns:
        The fused maps, shaped like ``base``, same dtype and device; differentiable.

    Raises:
        TypeError: an input is not a floating-point tensor, or ``levels`` is not a tensor or a sequence of
            tensors.
        ValueError: shapes, dtypes or devices differ, ``levels`` is empty, an input holds NaN or infinite
            values, the sum overflows the dtype, or ``normalize`` is unknown.

    Examples:
        >>> import torch
        >>> base = torch.tensor([[0.8, 0.2], [0.0, 0.4]])
        >>> levels = [torch.tensor([[1.0, 0.6], [0.2, 0.0]]), torch.tensor([[0.6, 0.2], [0.0, 0.0]])]
        >>> rest = torch.tensor([[0.0, 0.0], [0.5, 0.5]])
        >>> fuse(base, levels, rest, normalize=None)
        tensor([[1.6000, 0.6000],
                [0.0000, 0.0000]])
        >>> fuse(base, levels, rest)
        tensor([[1.0000, 0.3750],
                [0.0000, 0.0000]])
    """
    check_tensor(base, "base", floating=True)
    if base.ndim < 2:
        raise ValueError(f"`base` must have shape (..., H, W), got {format_shape(base.shape)}")
    stacked = _stack_levels(levels, base)
    if rest is not None:
        check_tensor(rest, "rest", floating=True)
        _check_like(rest, base, "rest", "base")
    check_choice(normalize, "normalize", ("max", "minmax", None))
    weights = _check_weights(weights)
    check_finite(base, "base")
    if isinstance(levels, Tensor):
        check_finite(levels, "levels")
    else:
        for index, level in enumerate(levels):
            check_finite(level, f"levels[{index}]")
    if rest is not None:
        check_finite(rest, "rest")
    return _fuse(base, stacked, rest, clamp=clamp, normalize=normalize, weights=weights)


def _fuse(
    base: Tensor,
    stacked: Tensor,
    rest: Tensor | None,
    *,
    clamp: bool,
    normalize: NormalizeMode | None,
    weights: tuple[float, float, float],
) -> Tensor:
    """Eq. 6 on checked, finite inputs; refuses a sum that overflows the dtype."""
    a, b, c = weights
    fused = a * base + b * stacked.mean(dim=0)
    if rest is not None:
        fused = fused - c * rest
    if should_check() and not all_finite(fused):
        raise ValueError(
            f"the fused sum a M0 + b mean(M_i) - c M0' overflows {fused.dtype} with these maps and "
            "`weights`; rescale the maps first (normalize_maps) or fuse in float64"
        )
    if clamp:
        fused = fused.clamp_min(0)
    return normalize_maps(fused, normalize, validate_args=False)


def fuse_hierarchy(
    base_maps: Tensor,
    level_maps: Sequence[Tensor],
    hierarchy: ClassHierarchy,
    labels: Tensor | None = None,
    *,
    rest_reduction: RestReduction | None = "max",
    clamp: bool = True,
    normalize: NormalizeMode | None = "max",
    normalize_inputs: NormalizeMode | None = "max",
    weights: tuple[float, float, float] = (1.0, 1.0, 1.0),
) -> Tensor:
    """Fuse the CAMs of a level-0 model and of the group-level models into one map per class (Eq. 6).

    For class ``k`` at group level ``l``, the map of the group holding ``k``
    (``hierarchy.assignments(l)[k]``) is taken from ``level_maps[l - 1]``; the maps of the ``L`` group levels
    are averaged and added to the base map of ``k``, and ``M0'`` is subtracted.

    **Our reading of** ``M0'``. The paper calls ``M0'`` "the CAM of the rest classes" without defining it.
    ``rest_reduction`` chooses the reading, always from the (input-normalised) base maps of the *other*
    classes present in the image according to ``labels`` (ground truth when evaluating, or predictions):

    * ``"max"`` (default): their pixel-wise maximum (the best reading on validation data in an independent
      re-implementation on real data; the readings on FashionScenes are in ``docs/benchmarks.md``).
    * ``"mean"``: their pixel-wise mean.
    * ``None``: no ``M0'`` term; ``labels`` is not used and may be ``None``.

    When no other class is present, ``M0'`` is zero. Report the ``rest_reduction`` you used with every figure.

    **Absent classes.** Maps are computed for all ``K`` classes. For a class that is absent from ``labels``,
    every present class is an "other" class, so its ``M0'`` is the max (or mean) over all present classes.
    Absent classes are not zeroed: with predicted labels, a class the classifier missed keeps a usable map;
    [`maps_to_masks`][hiercam.maps_to_masks] ignores absent classes anyway.

    **Non-finite input.** NaN or infinite values in ``base_maps`` or ``level_maps`` raise a ``ValueError``
    naming the tensor, before any work (as in [`fuse`][hiercam.fuse]): one ``aminmax`` pass over each input
    and one over the fused sum, a few percent of the cost of the fusion (value checks, skipped after
    [`hiercam.set_checks(False)`][hiercam.set_checks], as is the 0/1 check of ``labels``).

    Args:
        base_maps: CAMs ``(B, K, H, W)`` of the level-0 model, floating point, any device.
        level_maps: one tensor ``(B, N_l, H, W)`` per group level ``l = 1..L`` (``L = hierarchy.num_levels -
            1``), in level order, with ``N_l = hierarchy.num_groups(l)``; same dtype and device as
            ``base_maps``.
        hierarchy: the class hierarchy the level models were trained on.
        labels: multi-hot ``(B, K)`` image labels (0/1, any dtype); required unless ``rest_reduction=None``.
        rest_reduction: ``"max"``, ``"mean"`` or ``None``, see above.
        clamp: set negative fused values to 0.
        normalize: rescaling of the fused maps (see [`fuse`][hiercam.fuse]).
        normalize_inputs: rescaling of every input map before fusing, so that maps of different models are on
            one scale (``"max"`` is a no-op on maps that are already max-normalised); ``None`` uses them as
            given.
        weights: ``(a, b, c)`` in ``a M0 + b mean_i(M_i) - c M0'`` (the paper: ``(1, 1, 1)``), see
            [`fuse`][hiercam.fuse].

    Returns:
        Fused maps ``(B, K, H, W)``, same dtype and device as ``base_maps``; differentiable.

    Raises:
        TypeError: wrong argument types.
        ValueError: shapes disagree with each other or with ``hierarchy``, the number of levels is wrong,
            ``labels`` is missing or not 0/1, a map holds NaN or infinite values, or a mode is unknown.

    Examples:
        >>> import torch
        >>> from hiercam import ClassHierarchy
        >>> h = ClassHierarchy([[0, 0, 1]])  # classes 0 and 1 form group 0, class 2 is group 1
        >>> base = torch.rand(2, 3, 8, 8)
        >>> fused = fuse_hierarchy(base, [torch.rand(2, 2, 8, 8)], h, torch.tensor([[1, 0, 1], [0, 1, 0]]))
        >>> fused.shape
        torch.Size([2, 3, 8, 8])
        >>> float(fused.amax())
        1.0
    """
    check_tensor(base_maps, "base_maps", dims="B, K, H, W", floating=True)
    if not isinstance(hierarchy, ClassHierarchy):
        raise TypeError(f"`hierarchy` must be a ClassHierarchy, got {type_name(hierarchy)}")
    batch, num_classes = base_maps.shape[:2]
    if num_classes != hierarchy.num_classes:
        raise ValueError(
            f"`base_maps` must have shape (B, {hierarchy.num_classes}, H, W) for this hierarchy, "
            f"got {format_shape(base_maps.shape)}"
        )
    _check_level_maps(level_maps, hierarchy, base_maps)
    check_choice(rest_reduction, "rest_reduction", ("max", "mean", None))
    check_choice(normalize_inputs, "normalize_inputs", ("max", "minmax", None))
    check_choice(normalize, "normalize", ("max", "minmax", None))
    weights = _check_weights(weights)
    present: Tensor | None = None
    if labels is not None or rest_reduction is not None:
        if labels is None:
            raise ValueError(
                f"`labels` (B, K) is required with rest_reduction={rest_reduction!r}: M0' is built from the "
                "other classes present in each image; pass ground-truth or predicted labels, or "
                "rest_reduction=None"
            )
        check_tensor(labels, "labels", dims="B, K")
        if labels.shape != (batch, num_classes):
            raise ValueError(
                f"`labels` must have shape ({batch}, {num_classes}), got {format_shape(labels.shape)}"
            )
        check_binary(labels, "labels")
        present = labels.to(device=base_maps.device, dtype=torch.bool)
    check_finite(base_maps, "base_maps")
    for index, maps in enumerate(level_maps):
        check_finite(maps, f"level_maps[{index}]")

    base = normalize_maps(base_maps, normalize_inputs, validate_args=False)  # checked above
    gathered = torch.stack(
        [
            normalize_maps(maps, normalize_inputs, validate_args=False)[
                :, hierarchy.assignments(level).to(maps.device)
            ]
            for level, maps in enumerate(level_maps, start=1)
        ]
    )
    rest = None  # M0'
    if rest_reduction is not None and present is not None:
        rest = _rest_maps(base, present, rest_reduction)
    return _fuse(base, gathered, rest, clamp=clamp, normalize=normalize, weights=weights)


def rest_maps(base_maps: Tensor, labels: Tensor, reduction: RestReduction = "max") -> Tensor:
    """``M0'`` of Eq. 6 for every (image, class): the other present classes' base maps, reduced per pixel.

    The ``M0'`` that [`fuse_hierarchy`][hiercam.fuse_hierarchy] builds, for a caller of
    [`fuse`][hiercam.fuse] whose level maps do not come from a [`ClassHierarchy`][hiercam.ClassHierarchy]
    (e.g. Eq. 6 over another model's class maps). For class ``k`` of image ``b``, the pixel-wise maximum
    (``"max"``) or mean (``"mean"``) of ``base_maps[b, j]`` over the classes ``j != k`` with
    ``labels[b, j] = 1``; zero where no other class is present. A class absent from ``labels`` gets the
    reduction over every present class. The maps are used as given: rescale them first (e.g. with
    [`normalize_maps`][hiercam.normalize_maps]) to match what ``fuse_hierarchy`` does with its default
    ``normalize_inputs="max"``. Value checks (finite maps, 0/1 labels) are skipped after
    [`hiercam.set_checks(False)`][hiercam.set_checks].

    Args:
        base_maps: CAMs ``(B, K, H, W)`` of the level-0 model, floating point, any device.
        labels: multi-hot ``(B, K)`` image labels (0/1, any dtype, any device): ground truth when evaluating,
            predictions at inference.
        reduction: ``"max"`` (the default reading of ``fuse_hierarchy``) or ``"mean"``.

    Returns:
        ``M0'`` ``(B, K, H, W)``, same dtype and device as ``base_maps``; differentiable.

    Raises:
        TypeError: ``base_maps`` or ``labels`` is not a tensor, or ``base_maps`` is not floating point.
        ValueError: the shapes disagree, ``labels`` is not 0/1, ``base_maps`` holds NaN or infinite values, or
            ``reduction`` is unknown.

    Examples:
        >>> import torch
        >>> base = torch.tensor([0.2, 0.9, 0.5], dtype=torch.float64).view(1, 3, 1, 1)  # (B, K, H, W)
        >>> labels = torch.tensor([[1, 1, 0]])  # classes 0 and 1 are present
        >>> rest_maps(base, labels).flatten().tolist()  # 0: the map of 1; 1: that of 0; 2 (absent): their max
        [0.9, 0.2, 0.9]
        >>> fuse(base, [base], rest_maps(base, labels)).shape  # Eq. 6 with level maps of your own
        torch.Size([1, 3, 1, 1])
    """
    check_tensor(base_maps, "base_maps", dims="B, K, H, W", floating=True)
    check_tensor(labels, "labels", dims="B, K")
    if labels.shape != base_maps.shape[:2]:
        raise ValueError(
            f"`labels` must have shape {format_shape(base_maps.shape[:2])} (that of `base_maps` (B, K, H, W) "
            f"without H, W), got {format_shape(labels.shape)}"
        )
    check_choice(reduction, "reduction", ("max", "mean"))
    check_binary(labels, "labels")
    check_finite(base_maps, "base_maps")
    return _rest_maps(base_maps, labels.to(device=base_maps.device, dtype=torch.bool), reduction)


def _check_weights(weights: tuple[float, float, float]) -> tuple[float, float, float]:
    if not isinstance(weights, (tuple, list)) or len(weights) != 3:
        raise TypeError(f"`weights` must be three numbers (a, b, c), got {weights!r}")
    for value in weights:
        if not is_real(value) or not math.isfinite(float(value)) or float(value) < 0:
            raise ValueError(f"`weights` must be three finite numbers >= 0, got {tuple(weights)}")
    return float(weights[0]), float(weights[1]), float(weights[2])


def _rest_maps(base: Tensor, present: Tensor, reduction: RestReduction) -> Tensor:
    """``M0'`` for every (image, class): max or mean of the base maps of the other present classes.

    ``base`` is ``(B, K, H, W)``, ``present`` a bool ``(B, K)``. Zero where no other class is present.
    """
    mask = present[:, :, None, None]
    if reduction == "mean":
        total = (base * mask).sum(dim=1, keepdim=True)
        others = total - base * mask  # drop the class itself when it is present
        count = present.sum(dim=1, keepdim=True) - present.long()  # (B, K): other present classes
        count = count[:, :, None, None]
        return torch.where(count > 0, others / count.clamp_min(1), torch.zeros_like(base))
    # "max": the maximum over j != k is the top value, unless k itself holds it, then the second value.
    if base.shape[1] == 1:
        return torch.zeros_like(base)
    masked = torch.where(mask, base, torch.full_like(base, -torch.inf))
    top = masked.topk(2, dim=1)
    first, second = top.values[:, :1], top.values[:, 1:2]
    classes = torch.arange(base.shape[1], device=base.device)[None, :, None, None]
    own_is_top = top.indices[:, :1] == classes
    best_other = torch.where(own_is_top, second, first)
    return torch.where(torch.isfinite(best_other), best_other, torch.zeros_like(best_other))


def _stack_levels(levels: Sequence[Tensor] | Tensor, base: Tensor) -> Tensor:
    """Stack ``levels`` into ``(L, ...)`` after checking every map against ``base``."""
    if isinstance(levels, Tensor):
        check_tensor(levels, "levels", floating=True)
        if levels.shape[1:] != base.shape or levels.shape[0] == 0:
            raise ValueError(
                "`levels` as a tensor must have shape (L, *base.shape) with L >= 1, "
                f"got {format_shape(levels.shape)} for `base` {format_shape(base.shape)}"
            )
        _check_like(levels[0], base, "levels", "base")
        return levels
    given: object = levels
    if not isinstance(given, (list, tuple)):
        raise TypeError(f"`levels` must be a tensor or a sequence of tensors, got {type_name(levels)}")
    if len(levels) == 0:
        raise ValueError("`levels` must hold at least one map (Eq. 6 averages over the group levels)")
    for index, level in enumerate(levels):
        check_tensor(level, f"levels[{index}]", floating=True)
        _check_like(level, base, f"levels[{index}]", "base")
    return torch.stack(list(levels))


def _check_like(value: Tensor, reference: Tensor, name: str, reference_name: str) -> None:
    """Same shape, dtype and device as ``reference``."""
    if value.shape != reference.shape:
        raise ValueError(
            f"`{name}` must have the shape of `{reference_name}` {format_shape(reference.shape)}, "
            f"got {format_shape(value.shape)}"
        )
    if value.dtype != reference.dtype:
        raise ValueError(
            f"`{name}` must have the dtype of `{reference_name}` ({reference.dtype}), got {value.dtype}"
        )
    if value.device != reference.device:
        raise ValueError(
            f"`{name}` must be on the device of `{reference_name}` ({reference.device}), got {value.device}"
        )


def _check_level_maps(level_maps: Sequence[Tensor], hierarchy: ClassHierarchy, base_maps: Tensor) -> None:
    given: object = level_maps
    if not isinstance(given, (list, tuple)):
        raise TypeError(
            f"`level_maps` must be a list with one (B, N_l, H, W) tensor per group level, "
            f"got {type_name(level_maps)}"
        )
    expected = hierarchy.num_levels - 1
    if len(level_maps) != expected:
        raise ValueError(
            f"`level_maps` must hold one tensor per group level of the hierarchy ({expected}, levels "
            f"1..{expected}), got {len(level_maps)}"
        )
    batch, _, height, width = base_maps.shape
    for level, cams in enumerate(level_maps, start=1):
        name = f"level_maps[{level - 1}]"
        check_tensor(cams, name, dims="B, N, H, W", floating=True)
        groups = hierarchy.num_groups(level)
        if cams.shape != (batch, groups, height, width):
            raise ValueError(
                f"`{name}` (level {level}) must have shape ({batch}, {groups}, {height}, {width}), "
                f"got {format_shape(cams.shape)}"
            )
        if cams.dtype != base_maps.dtype or cams.device != base_maps.device:
            raise ValueError(
                f"`{name}` must have the dtype and device of `base_maps` ({base_maps.dtype}, "
                f"{base_maps.device}), got ({cams.dtype}, {cams.device})"
            )
