"""Feature orthogonal loss and the two-branch training loss (paper section 3.4.1, Eq. 4-5).

The paper trains two branches with separate parameters and pushes their deep features apart with
``L_o = sum(f1 * f2)`` (Eq. 4, the Hadamard product summed over every element), added to the two
branches' binary cross-entropy losses as ``L_all = L_c1 + L_c2 + lambda * L_o`` (Eq. 5, ``lambda = 1e-4``).

The raw sum grows with the batch size and the feature map size, so ``lambda`` only means something for one
backbone, input size and batch size: fine-tuning an ImageNet MobileNetV2 (1280 x 7 x 7 features, batch 16),
the paper's ``lambda * L_o`` is 137 times the two BCE terms at the first step (``benchmarks/
orthogonal_scale.py``). ``reduction="batchmean"`` removes the batch size and ``unit_norm=True`` the feature
scale (the loss becomes a cosine similarity per sample); the paper does neither.

Orthogonal features need not give complementary maps: the branches can meet the loss by splitting their
channels while looking at the same places. ``mode`` chooses where orthogonality acts (not in the paper):
``"spatial"`` penalises the cosine between the branches' channel-pooled activation maps, so they must look at
different places; ``"cam"`` the cosine between the branches' class activation maps of each ground-truth
class, computed differentiably in closed form from the features and the classifier weights.

Under ``DistributedDataParallel`` each process computes its loss on its own shard and the gradients are
*averaged* over processes. Mean-reduced terms (the BCE, ``"batchmean"``, ``"mean"``) therefore train
exactly as one process on the whole batch, while ``"sum"`` gives ``1 / world_size`` of the single-process
gradient of the orthogonal term (multiply its weight by the world size to compensate).
"""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hiercam._validation import (
    check_binary,
    check_choice,
    check_same_shape,
    check_tensor,
    format_shape,
    type_name,
)

if TYPE_CHECKING:
    from hiercam.models.two_branch import TwoBranchOutput

__all__ = [
    "Reduction",
    "OrthogonalMode",
    "orthogonal_loss",
    "OrthogonalLoss",
    "TwoBranchLoss",
    "TwoBranchLossOutput",
]

Reduction = Literal["sum", "batchmean", "mean", "none"]
OrthogonalMode = Literal["feature", "spatial", "cam"]
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
    feature map and, on an accelerator, one device synchronisation per call; ``True`` or ``False`` skips it.
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
    _check_features(f1, f2)
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
    """Warn when either feature map holds a negative value: one min-reduction each, one device sync."""
    if f1.numel() == 0:
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
        self.weight = _check_weight(weight, "weight")
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


class TwoBranchLossOutput(NamedTuple):
    """The loss of a two-branch network and its parts, all scalar tensors.

    ``total`` is the one to backpropagate; the other fields are for logging (they stay attached to the
    graph, so they can also be recombined).
    """

    total: Tensor
    """``classification_1 + classification_2 + weight * orthogonal`` (Eq. 5)."""
    classification_1: Tensor
    """BCE-with-logits of branch 1, averaged over the ``B x K`` entries."""
    classification_2: Tensor
    """BCE-with-logits of branch 2, averaged over the ``B x K`` entries."""
    orthogonal: Tensor
    """``L_o`` before weighting by ``weight`` (detached from the graph when ``weight == 0``)."""


class TwoBranchLoss(nn.Module):
    """The two-branch loss of Eq. 5: ``L_all = L_c1 + L_c2 + weight * L_o`` from a ``TwoBranchOutput``.

    ``L_c1`` and ``L_c2`` are multi-label BCE-with-logits losses of each branch's logits (mean over the
    ``B x K`` entries, as in ``nn.BCEWithLogitsLoss``); ``L_o`` is
    [`orthogonal_loss`][hiercam.orthogonal_loss] of the two branches' feature maps before pooling. The
    defaults are the paper's (``weight=1e-4``, the paper's ``lambda``, raw sum), whose scale depends on the
    batch size, the feature size and the backbone; ``reduction="batchmean"`` and ``unit_norm=True`` make it
    scale-free, and ``weight`` should then be chosen on validation data. With ``weight=0`` the branches train
    independently and ``orthogonal`` is only logged.

    Under ``DistributedDataParallel`` (gradients averaged over ``W`` processes, equal shards) the BCE terms
    and the ``"batchmean"``/``"mean"`` orthogonal term match one process on the concatenated batch; ``"sum"``
    gives ``1 / W`` of its orthogonal gradient.

    Args:
        weight: non-negative weight ``lambda`` of the orthogonal term (paper: ``1e-4``).
        reduction: reduction of the orthogonal term, ``"sum"`` (paper), ``"batchmean"`` or ``"mean"``.
        unit_norm: L2-normalise each sample's features in the orthogonal term (not in the paper).
        mode: where orthogonality acts (see [`orthogonal_loss`][hiercam.orthogonal_loss]): ``"feature"`` (the
            paper), ``"spatial"`` or ``"cam"``.
        heads: for ``mode="cam"``, the two branch classifiers, e.g. ``net.classifier_heads()``: their weights
            are read at every call (so the loss follows training) and the labels come from the call.
        rectify: what the orthogonal term multiplies in ``"feature"``/``"spatial"`` modes: ``True``:
            ``ReLU(f1)`` and ``ReLU(f2)``, the choice for backbones whose features can be negative (ConvNeXt,
            ViT); ``False``: the features as given; ``None`` (default): as given, with a ``UserWarning`` when
            they hold negative values (see [`orthogonal_loss`][hiercam.orthogonal_loss]).

    Raises:
        TypeError: ``weight`` is not a real number, ``unit_norm`` not a bool, ``rectify`` not a bool or
            None, or ``heads`` not two linear layers.
        ValueError: ``weight`` is negative or not finite, ``reduction`` or ``mode`` is unknown, ``heads``
            is missing for ``mode="cam"``, or ``rectify=True`` with ``mode="cam"``.

    Examples:
        >>> import torch
        >>> from hiercam.models import TwoBranchOutput
        >>> logits = torch.zeros(2, 4, 3)  # (2, B, K)
        >>> features = (torch.ones(4, 8, 2, 2), torch.ones(4, 8, 2, 2))
        >>> output = TwoBranchOutput(logits, features, logits.mean(0))
        >>> parts = TwoBranchLoss(weight=0.01, reduction="batchmean")(output, torch.ones(4, 3))
        >>> [round(float(x), 4) for x in parts]  # total = 2 * log(2) + 0.01 * 32
        [1.7063, 0.6931, 0.6931, 32.0]
    """

    def __init__(
        self,
        weight: float = 1e-4,
        *,
        reduction: Reduction = "sum",
        unit_norm: bool = False,
        mode: OrthogonalMode = "feature",
        heads: tuple[nn.Linear, nn.Linear] | None = None,
        rectify: bool | None = None,
    ) -> None:
        super().__init__()
        self.weight = _check_weight(weight, "weight")
        check_choice(reduction, "reduction", ("sum", "batchmean", "mean"))
        self.orthogonal = OrthogonalLoss(1.0, reduction, unit_norm, mode=mode, rectify=rectify)
        if mode == "cam":
            if heads is None:
                raise ValueError(
                    "mode='cam' needs `heads`, the two branch classifiers (net.classifier_heads())"
                )
            if not (
                isinstance(heads, (tuple, list))
                and len(heads) == 2
                and all(isinstance(h, nn.Linear) for h in heads)
            ):
                raise TypeError(f"`heads` must be two nn.Linear classifiers, got {type_name(heads)}")
        # a plain tuple: the heads belong to the network, not to the loss (no parameters registered here)
        self._heads: tuple[nn.Linear, ...] = tuple(heads) if heads is not None else ()

    def forward(self, output: TwoBranchOutput, labels: Tensor) -> TwoBranchLossOutput:
        """Loss of a two-branch output against multi-hot image labels.

        Args:
            output: a ``TwoBranchOutput`` (or any object with ``logits`` ``(2, B, K)`` and ``features``, a
                pair of equal-shaped ``(B, C, H, W)`` or ``(B, D)`` tensors).
            labels: multi-hot image labels ``(B, K)`` of 0/1 values (bool, integer or floating). Checking
                the values costs one pass over the ``B x K`` entries and, on an accelerator, one device
                synchronisation per call.

        Returns:
            ``TwoBranchLossOutput(total, classification_1, classification_2, orthogonal)``, scalars in float32
            (float64 for float64 logits).

        Raises:
            TypeError: ``output`` lacks ``logits``/``features`` or they are not tensors.
            ValueError: the shapes of the logits, features and labels do not fit together, or ``labels``
                holds values other than 0 and 1.
        """
        logits, (f1, f2) = _check_output(output)
        check_tensor(labels, "labels", dims="B, K")
        if labels.shape != logits.shape[1:]:
            raise ValueError(
                f"`labels` must have shape (B, K) = {format_shape(logits.shape[1:])} to match "
                f"`output.logits` {format_shape(logits.shape)}, got {format_shape(labels.shape)}"
            )
        check_binary(labels, "labels")
        dtype = torch.promote_types(logits.dtype, torch.float32)
        with torch.autocast(device_type=logits.device.type, enabled=False):
            logits = logits.to(dtype)
            labels = labels.to(dtype)
            bce_1 = F.binary_cross_entropy_with_logits(logits[0], labels)
            bce_2 = F.binary_cross_entropy_with_logits(logits[1], labels)
        extra = {}
        if self.orthogonal.mode == "cam":
            extra = {"classifier_weights": (self._heads[0].weight, self._heads[1].weight), "labels": labels}
        if self.weight == 0.0:
            with torch.no_grad():
                orthogonal = self.orthogonal(f1, f2, **extra)
            total = bce_1 + bce_2
        else:
            orthogonal = self.orthogonal(f1, f2, **extra)
            total = bce_1 + bce_2 + self.weight * orthogonal
        return TwoBranchLossOutput(total, bce_1, bce_2, orthogonal)

    def extra_repr(self) -> str:  # noqa: D102
        return f"weight={self.weight}, mode={self.orthogonal.mode!r}, rectify={self.orthogonal.rectify}"


def _check_features(f1: Tensor, f2: Tensor) -> None:
    for value, name in ((f1, "f1"), (f2, "f2")):
        check_tensor(value, name, floating=True)
        if value.ndim not in (2, 4):
            raise ValueError(
                f"`{name}` must have shape (B, C, H, W) or (B, D), got {format_shape(value.shape)}"
            )
    check_same_shape(f1, f2, "f1", "f2")
    if f1.shape[0] == 0:
        raise ValueError(f"`f1` and `f2` must hold at least one sample, got shape {format_shape(f1.shape)}")


def _check_output(output: object) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    if not (hasattr(output, "logits") and hasattr(output, "features")):
        raise TypeError(
            f"`output` must be a TwoBranchOutput (with `logits` and `features`), got {type_name(output)}"
        )
    logits = check_tensor(output.logits, "output.logits", dims="2, B, K", floating=True)
    if logits.shape[0] != 2:
        raise ValueError(f"`output.logits` must have shape (2, B, K), got {format_shape(logits.shape)}")
    features = output.features
    if not isinstance(features, (tuple, list)) or len(features) != 2:
        raise TypeError(f"`output.features` must be a pair of tensors, got {type_name(features)}")
    f1, f2 = features
    _check_features(f1, f2)
    if f1.shape[0] != logits.shape[1]:
        raise ValueError(
            f"`output.features` must have batch size B = {logits.shape[1]} like `output.logits` "
            f"{format_shape(logits.shape)}, got {format_shape(f1.shape)}"
        )
    return logits, (f1, f2)


def _check_weight(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"`{name}` must be a float, got {type_name(value)}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"`{name}` must be a finite number >= 0, got {value}")
    return float(value)
