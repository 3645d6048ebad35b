"""The feature orthogonal loss ``L_o`` of Eq. 4 (paper section 3.4.1) and its spatial and CAM modes.

See the ``hiercam.losses`` package docstring for its scale, the modes and distributed training.
"""

from __future__ import annotations

import math
import warnings
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hiercam._validation import (
    check_binary,
    check_choice,
    check_same_shape,
    check_tensor,
    format_shape,
    is_real,
    should_check,
    type_name,
)

__all__ = ["OrthogonalLoss", "OrthogonalMode", "Reduction", "orthogonal_loss"]

Reduction = Literal["sum", "batchmean", "mean", "none"]
OrthogonalMode = Literal["feature", "spatial", "cam"]
"""What the orthogonal loss compares of the two branches: ``"feature"`` (the features, Eq. 4), ``"spatial"``
(the cosine of their channel-pooled maps) or ``"cam"`` (the cosine of their class activation maps); see
[`orthogonal_loss`][hiercam.orthogonal_loss]."""
_REDUCTIONS: tuple[Reduction, ...] = ("sum", "batchmean", "mean", "none")
_MODES: tuple[OrthogonalMode, ...] = ("feature", "spatial", "cam")


def orthogonal_loss(
    f1: Tensor,
    f2: Tensor,
    *,
    reduction: Reduction = "sum",
    unit_norm: bool = False,
    mode: OrthogonalMode = "feature",
    classifier_weights: tuple[Tensor, Tensor] | None = None,
    labels: Tensor | None = None,
    rectify: bool | None = None,
) -> Tensor:
    """Orthogonal loss between two branches: the paper's Eq. 4, or where the maps themselves overlap.

    Per sample ``b`` an overlap ``o_b`` is computed, then reduced over the batch:

    * ``mode="feature"`` (the paper): ``o_b = sum(f1[b] * f2[b])``, the element-wise product summed; with
      ``unit_norm=True`` each sample's flattened features are first divided by their L2 norm, so ``o_b`` is
      the cosine similarity of the two feature maps (the paper does not normalise).
    * ``mode="spatial"``: the cosine between the two branches' channel-pooled maps ``f.mean(channels)``,
      ``(H, W)`` each: the branches are pushed to look at different places. Needs ``(B, C, H, W)`` features.
    * ``mode="cam"``: the mean, over the ground-truth classes ``k`` of the sample (``labels[b, k] = 1``), of
      the cosine between the branches' class activation maps ``ReLU(sum_c W_i[k, c] f_i[c])``, i.e. each
      branch's Grad-CAM in closed form (global average pooling and a linear classifier ``W_i``, the factor
      ``1 / (H W)`` aside); 0 for a sample without a class. Needs ``classifier_weights`` and ``labels``.

    Cosines are in ``[-1, 1]`` (``[0, 1]`` for non-negative maps) and 0 where a map is all zero. Products
    are accumulated in float32 (float64 for float64 inputs), also under ``torch.autocast``.

    Negative features: the paper multiplies post-ReLU (non-negative) features, so its sum is bounded below by
    0 and minimising it makes the branches orthogonal. Features that can be negative (ConvNeXt, ViT and other
    backbones whose last block ends without a ReLU) have no such bound: minimising the sum drives it far
    below 0, which makes the branches *anti-correlated*, not orthogonal (the total loss itself goes negative).
    In ``"feature"`` and ``"spatial"`` modes ``rectify`` says what is multiplied: ``True`` uses ``ReLU(f1)``
    and ``ReLU(f2)`` (the loss is then ``>= 0``, 0 exactly when the positive parts do not overlap); ``False``
    the features as given (anti-correlation is what you want); ``None`` (the default) the features as given,
    with a ``UserWarning`` when either holds a negative value. That check is one min-reduction over each
    feature map and, on an accelerator, one device synchronisation per call; ``True`` or ``False`` skips it,
    and so does [`hiercam.set_checks(False)`][hiercam.set_checks], like the check of ``labels``.
    ``"cam"`` mode's maps are rectified already (``rectify=True`` is refused there, ``None``/``False`` change
    nothing).

    Args:
        f1: features of the first branch, ``(B, C, H, W)`` (or ``(B, D)`` for ``"feature"``).
        f2: features of the second branch, same shape as ``f1``.
        reduction: ``"sum"``: ``sum_b o_b``, the paper's Eq. 4 (grows with the batch and feature size);
            ``"batchmean"``: ``sum_b o_b / B``, so that the weight does not depend on the batch size;
            ``"mean"``: the sum divided by the number of elements ``f1.numel()`` for ``"feature"``, by ``B``
            for the other modes (their ``o_b`` are already per-sample cosines);
            ``"none"``: ``o`` of shape ``(B,)``.
        unit_norm: L2-normalise each sample's flattened features first (``"feature"`` only: the other modes
            are cosines already).
        mode: ``"feature"`` (the paper), ``"spatial"`` or ``"cam"``.
        classifier_weights: for ``"cam"``, the two branches' classifier weights, ``(K, C)`` each.
        labels: for ``"cam"``, multi-hot image labels ``(B, K)`` of 0/1 values.
        rectify: what is multiplied in ``"feature"`` and ``"spatial"`` modes: ``True``: ``ReLU(f1)`` and
            ``ReLU(f2)``; ``False``: the features as given; ``None``: as given, warning on negative features.

    Returns:
        A scalar, or ``(B,)`` for ``reduction="none"``, in float32 (float64 for float64 inputs).

    Raises:
        TypeError: ``f1`` or ``f2`` is not a floating-point tensor, ``unit_norm`` is not a bool or ``rectify``
            not a bool or None.
        ValueError: the shapes differ or do not fit the mode, the batch is empty, ``reduction`` or ``mode`` is
            unknown, ``unit_norm`` with a cosine mode, or ``classifier_weights``/``labels`` missing for
            ``"cam"``, ``labels`` not 0/1, or ``rectify=True`` with ``mode="cam"``.

    Warns:
        UserWarning: ``rectify=None`` in ``"feature"``/``"spatial"`` mode and ``f1`` or ``f2`` holds a
            negative value.

    Examples:
        >>> import torch
        >>> f1 = torch.tensor([[1.0, 2.0, 0.0], [0.0, 1.0, 1.0]])
        >>> f2 = torch.tensor([[3.0, 1.0, 5.0], [2.0, 0.0, 4.0]])
        >>> orthogonal_loss(f1, f2)  # (3 + 2) + (0 + 4)
        tensor(9.)
        >>> orthogonal_loss(f1, f2, reduction="none")
        tensor([5., 4.])
        >>> orthogonal_loss(f1, f2, reduction="batchmean")
        tensor(4.5000)
        >>> orthogonal_loss(-f1, f2, rectify=True)  # ReLU(-f1) is all zero: no overlap
        tensor(0.)
    """
    check_features(f1, f2)
    check_choice(reduction, "reduction", _REDUCTIONS)
    check_choice(mode, "mode", _MODES)
    if not isinstance(unit_norm, bool):
        raise TypeError(f"`unit_norm` must be a bool, got {type_name(unit_norm)}")
    if mode != "feature":
        if unit_norm:
            raise ValueError(f"`unit_norm` applies to mode='feature' only; mode={mode!r} is a cosine already")
        if f1.ndim != 4:
            raise ValueError(
                f"`f1` must have shape (B, C, H, W) for mode={mode!r}, got {format_shape(f1.shape)}"
            )
    _check_rectify(rectify, mode)
    if mode == "cam":
        _check_cam_inputs(f1, classifier_weights, labels)
    elif rectify is None:
        _warn_if_negative(f1, f2)
    elif rectify:
        f1, f2 = f1.relu(), f2.relu()
    dtype = torch.promote_types(torch.promote_types(f1.dtype, f2.dtype), torch.float32)
    with torch.autocast(device_type=f1.device.type, enabled=False):
        if mode == "feature":
            a, b = f1.flatten(1).to(dtype), f2.flatten(1).to(dtype)
            if unit_norm:
                a, b = F.normalize(a, dim=1), F.normalize(b, dim=1)
            per_sample = (a * b).sum(dim=1)
        elif mode == "spatial":
            a, b = f1.to(dtype).mean(dim=1).flatten(1), f2.to(dtype).mean(dim=1).flatten(1)
            per_sample = (F.normalize(a, dim=1) * F.normalize(b, dim=1)).sum(dim=1)
        else:
            per_sample = _cam_cosines(f1.to(dtype), f2.to(dtype), classifier_weights, labels)  # type: ignore[arg-type]
    if reduction == "none":
        return per_sample
    total = per_sample.sum()
    if reduction == "batchmean" or (reduction == "mean" and mode != "feature"):
        return total / f1.shape[0]
    if reduction == "mean":
        return total / f1.numel()
    return total


_NEGATIVE_WARNING = (
    "orthogonal_loss: the features hold negative values (a backbone whose last block ends without a ReLU, "
    "such as ConvNeXt or a ViT); the paper's sum(f1 * f2) assumes non-negative features and has no lower "
    "bound on these: minimising it makes the two branches anti-correlated, not orthogonal. Pass "
    "rectify=True to "
    "multiply ReLU(f1) * ReLU(f2) (bounded below by 0), or rectify=False to keep the raw product and silence "
    "this warning."
)


def _check_rectify(rectify: object, mode: OrthogonalMode) -> None:
    if rectify is not None and not isinstance(rectify, bool):
        raise TypeError(f"`rectify` must be a bool or None, got {type_name(rectify)}")
    if rectify and mode == "cam":
        raise ValueError("`rectify=True` applies to mode='feature' and 'spatial'; mode='cam' maps are ReLU'd")


def _warn_if_negative(f1: Tensor, f2: Tensor) -> None:
    """Warn when either feature map holds a negative value: one min-reduction each, one device sync.

    A value check: skipped when [`hiercam.set_checks`][hiercam.set_checks] switched them off.
    """
    if f1.numel() == 0 or not should_check():
        return
    smallest = torch.minimum(f1.detach().min(), f2.detach().min())
    if bool(smallest < 0):
        warnings.warn(_NEGATIVE_WARNING, UserWarning, stacklevel=3)


def _check_cam_inputs(
    f1: Tensor, classifier_weights: tuple[Tensor, Tensor] | None, labels: Tensor | None
) -> None:
    if classifier_weights is None or labels is None:
        raise ValueError(
            "mode='cam' needs `classifier_weights` (the two classifier weights) and `labels` (B, K)"
        )
    if not isinstance(classifier_weights, (tuple, list)) or len(classifier_weights) != 2:
        raise TypeError(
            f"`classifier_weights` must be a pair of (K, C) tensors, got {type_name(classifier_weights)}"
        )
    batch, channels = f1.shape[:2]
    check_tensor(labels, "labels", dims="B, K")
    for index, weight in enumerate(classifier_weights):
        name = f"classifier_weights[{index}]"
        check_tensor(weight, name, dims="K, C", floating=True)
        if weight.shape != (labels.shape[1], channels):
            raise ValueError(
                f"`{name}` must have shape (K, C) = ({labels.shape[1]}, {channels}) to fit `labels` "
                f"and the features, got {format_shape(weight.shape)}"
            )
    if labels.shape[0] != batch:
        raise ValueError(
            f"`labels` must have {batch} rows like the features, got {format_shape(labels.shape)}"
        )
    check_binary(labels, "labels")


def _cam_cosines(f1: Tensor, f2: Tensor, classifier_weights: tuple[Tensor, Tensor], labels: Tensor) -> Tensor:
    """Per sample, the mean over its classes of the cosine between the two branches' closed-form CAMs."""
    maps = [
        torch.einsum("kc,bchw->bkhw", weight.to(feature.dtype), feature).relu().flatten(2)
        for weight, feature in zip(classifier_weights, (f1, f2), strict=True)
    ]
    cosines = (F.normalize(maps[0], dim=2) * F.normalize(maps[1], dim=2)).sum(dim=2)  # (B, K)
    present = (labels > 0).to(cosines.dtype)
    return (cosines * present).sum(dim=1) / present.sum(dim=1).clamp_min(1)


class OrthogonalLoss(nn.Module):
    """Module form of ``orthogonal_loss``, times a weight: ``weight * orthogonal_loss(f1, f2, ...)``.

    See [`orthogonal_loss`][hiercam.orthogonal_loss] for the loss itself.

    Args:
        weight: non-negative factor (the paper's ``lambda`` when used on its own).
        reduction: ``"sum"`` (the paper), ``"batchmean"``, ``"mean"`` or ``"none"``
            (see [`orthogonal_loss`][hiercam.orthogonal_loss]).
        unit_norm: L2-normalise each sample's features first (not in the paper; ``"feature"`` mode only).
        mode: ``"feature"`` (the paper), ``"spatial"`` or ``"cam"``; ``"cam"`` takes the classifier weights
            and labels in each call: ``loss(f1, f2, classifier_weights=(w1, w2), labels=y)``.
        rectify: what is multiplied: ``True``: ``ReLU(f1)`` and ``ReLU(f2)``, for features that can be
            negative; ``False``: the features as given; ``None``: as given, warning on negative features (see
            [`orthogonal_loss`][hiercam.orthogonal_loss]).

    Raises:
        TypeError: ``weight`` is not a real number, ``unit_norm`` not a bool, or ``rectify`` not a bool or
            None.
        ValueError: ``weight`` is negative or not finite, ``reduction`` or ``mode`` is unknown,
            ``unit_norm`` with a cosine mode, or ``rectify=True`` with ``mode="cam"``.

    Examples:
        >>> import torch
        >>> loss = OrthogonalLoss(weight=0.5, reduction="batchmean")
        >>> loss(torch.ones(2, 3, 4, 4), torch.ones(2, 3, 4, 4))  # 0.5 * 48
        tensor(24.)
    """

    def __init__(
        self,
        weight: float = 1.0,
        reduction: Reduction = "sum",
        unit_norm: bool = False,
        *,
        mode: OrthogonalMode = "feature",
        rectify: bool | None = None,
    ) -> None:
        super().__init__()
        self.weight = check_weight(weight, "weight")
        self.reduction: Reduction = check_choice(reduction, "reduction", _REDUCTIONS)
        self.mode: OrthogonalMode = check_choice(mode, "mode", _MODES)
        if not isinstance(unit_norm, bool):
            raise TypeError(f"`unit_norm` must be a bool, got {type_name(unit_norm)}")
        if unit_norm and mode != "feature":
            raise ValueError(f"`unit_norm` applies to mode='feature' only; mode={mode!r} is a cosine already")
        self.unit_norm = unit_norm
        _check_rectify(rectify, mode)
        self.rectify = rectify

    def forward(
        self,
        f1: Tensor,
        f2: Tensor,
        *,
        classifier_weights: tuple[Tensor, Tensor] | None = None,
        labels: Tensor | None = None,
    ) -> Tensor:
        """Weighted orthogonal loss of ``f1`` and ``f2``, both ``(B, C, H, W)`` (or ``(B, D)``: features)."""
        loss = orthogonal_loss(
            f1,
            f2,
            reduction=self.reduction,
            unit_norm=self.unit_norm,
            mode=self.mode,
            classifier_weights=classifier_weights,
            labels=labels,
            rectify=self.rectify,
        )
        return self.weight * loss

    def extra_repr(self) -> str:  # noqa: D102
        options = (
            f"reduction={self.reduction!r}, unit_norm={self.unit_norm}, mode={self.mode!r}, "
            f"rectify={self.rectify}"
        )
        return f"weight={self.weight}, {options}"


def check_features(f1: Tensor, f2: Tensor) -> None:
    """``f1`` and ``f2`` are equal-shaped floating ``(B, C, H, W)`` or ``(B, D)`` tensors, ``B >= 1``."""
    for value, name in ((f1, "f1"), (f2, "f2")):
        check_tensor(value, name, floating=True)
        if value.ndim not in (2, 4):
            raise ValueError(
                f"`{name}` must have shape (B, C, H, W) or (B, D), got {format_shape(value.shape)}"
            )
    check_same_shape(f1, f2, "f1", "f2")
    if f1.shape[0] == 0:
        raise ValueError(f"`f1` and `f2` must hold at least one sample, got shape {format_shape(f1.shape)}")


def check_weight(value: object, name: str) -> float:
    """``value`` as a float, a finite real number >= 0 (``name`` is the argument in messages)."""
    if not is_real(value):
        raise TypeError(f"`{name}` must be a float, got {type_name(value)}")
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"`{name}` must be a finite number >= 0, got {value}")
    return float(value)
