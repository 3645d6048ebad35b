"""Feature orthogonal loss and the two-branch training loss (paper section 3.4.1, Eq. 4-5).

The paper trains two branches with separate parameters and pushes their deep features apart with
``L_o = sum(f1 * f2)`` (Eq. 4, the Hadamard product summed over every element), added to the two
branches' binary cross-entropy losses as ``L_all = L_c1 + L_c2 + lambda * L_o`` (Eq. 5, ``lambda = 1e-4``).

The raw sum grows with the batch size and the feature map size, so ``lambda`` only means something for one
backbone, input size and batch size: with MobileNetV2 features (1280 x 9 x 12 per image, batch 16) the
paper's ``lambda * L_o`` was 168 times the BCE at the first step. ``reduction="batchmean"`` removes the
batch size and ``normalize=True`` the feature scale (the loss becomes a cosine similarity per sample); the
paper does neither.

Under ``DistributedDataParallel`` each process computes its loss on its own shard and the gradients are
*averaged* over processes. Mean-reduced terms (the BCE, ``"batchmean"``, ``"mean"``) therefore train
exactly as one process on the whole batch, while ``"sum"`` gives ``1 / world_size`` of the single-process
gradient of the orthogonal term (multiply ``lambda`` by the world size to compensate).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hiercam._validation import check_choice, check_same_shape, check_tensor, format_shape, type_name

if TYPE_CHECKING:
    from hiercam.models.two_branch import TwoBranchOutput

__all__ = ["Reduction", "orthogonal_loss", "OrthogonalLoss", "TwoBranchLoss", "TwoBranchLossOutput"]

Reduction = Literal["sum", "batchmean", "mean", "none"]
_REDUCTIONS: tuple[Reduction, ...] = ("sum", "batchmean", "mean", "none")


def orthogonal_loss(
    f1: Tensor, f2: Tensor, *, reduction: Reduction = "sum", normalize: bool = False
) -> Tensor:
    """Feature orthogonal loss of Eq. 4: the sum of the element-wise product of two feature tensors.

    Per sample ``b`` the overlap is ``o_b = sum(f1[b] * f2[b])``; with ``normalize=True`` each sample's
    flattened features are first divided by their L2 norm, so ``o_b`` is the cosine similarity of the two
    feature maps (in ``[0, 1]`` for non-negative features, 0 for an all-zero sample). The paper does not
    normalise.

    The products are accumulated in float32 (float64 for float64 inputs), also under ``torch.autocast``.

    Args:
        f1: features of the first branch, ``(B, C, H, W)`` or ``(B, D)``.
        f2: features of the second branch, same shape as ``f1``.
        reduction: ``"sum"``: ``sum_b o_b``, the paper's Eq. 4 (grows with the batch and feature size);
            ``"batchmean"``: ``sum_b o_b / B``, so that ``lambda`` does not depend on the batch size;
            ``"mean"``: the sum divided by the number of elements ``f1.numel()``;
            ``"none"``: ``o`` of shape ``(B,)``.
        normalize: L2-normalise each sample's flattened features first (a scale-free variant).

    Returns:
        A scalar, or ``(B,)`` for ``reduction="none"``, in float32 (float64 for float64 inputs).

    Raises:
        TypeError: ``f1`` or ``f2`` is not a floating-point tensor, or ``normalize`` is not a bool.
        ValueError: the shapes differ or are not ``(B, C, H, W)`` / ``(B, D)``, the batch is empty, or
            ``reduction`` is unknown.

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
    """
    _check_features(f1, f2)
    check_choice(reduction, "reduction", _REDUCTIONS)
    if not isinstance(normalize, bool):
        raise TypeError(f"`normalize` must be a bool, got {type_name(normalize)}")
    dtype = torch.promote_types(torch.promote_types(f1.dtype, f2.dtype), torch.float32)
    with torch.autocast(device_type=f1.device.type, enabled=False):
        a = f1.flatten(1).to(dtype)
        b = f2.flatten(1).to(dtype)
        if normalize:
            a = F.normalize(a, dim=1)
            b = F.normalize(b, dim=1)
        per_sample = (a * b).sum(dim=1)
    if reduction == "none":
        return per_sample
    total = per_sample.sum()
    if reduction == "batchmean":
        return total / f1.shape[0]
    if reduction == "mean":
        return total / f1.numel()
    return total


class OrthogonalLoss(nn.Module):
    """Module form of ``orthogonal_loss``, times a weight: ``weight * orthogonal_loss(f1, f2, ...)``.

    See [`orthogonal_loss`][hiercam.orthogonal_loss] for the loss itself.

    Args:
        weight: non-negative factor (the paper's ``lambda`` when used on its own).
        reduction: ``"sum"`` (the paper), ``"batchmean"``, ``"mean"`` or ``"none"``
            (see [`orthogonal_loss`][hiercam.orthogonal_loss]).
        normalize: L2-normalise each sample's features first (not in the paper).

    Raises:
        TypeError: ``weight`` is not a real number or ``normalize`` not a bool.
        ValueError: ``weight`` is negative or not finite, or ``reduction`` is unknown.

    Examples:
        >>> import torch
        >>> loss = OrthogonalLoss(weight=0.5, reduction="batchmean")
        >>> loss(torch.ones(2, 3, 4, 4), torch.ones(2, 3, 4, 4))  # 0.5 * 48
        tensor(24.)
    """

    def __init__(self, weight: float = 1.0, reduction: Reduction = "sum", normalize: bool = False) -> None:
        super().__init__()
        self.weight = _check_weight(weight, "weight")
        self.reduction: Reduction = check_choice(reduction, "reduction", _REDUCTIONS)
        if not isinstance(normalize, bool):
            raise TypeError(f"`normalize` must be a bool, got {type_name(normalize)}")
        self.normalize = normalize

    def forward(self, f1: Tensor, f2: Tensor) -> Tensor:
        """Weighted orthogonal loss of ``f1`` and ``f2`` (both ``(B, C, H, W)`` or ``(B, D)``)."""
        return self.weight * orthogonal_loss(f1, f2, reduction=self.reduction, normalize=self.normalize)

    def extra_repr(self) -> str:  # noqa: D102
        return f"weight={self.weight}, reduction={self.reduction!r}, normalize={self.normalize}"


class TwoBranchLossOutput(NamedTuple):
    """The loss of a two-branch network and its parts, all scalar tensors.

    ``total`` is the one to backpropagate; the other fields are for logging (they stay attached to the
    graph, so they can also be recombined).
    """

    total: Tensor
    """``classification_1 + classification_2 + lam * orthogonal`` (Eq. 5)."""
    classification_1: Tensor
    """BCE-with-logits of branch 1, averaged over the ``B x K`` entries."""
    classification_2: Tensor
    """BCE-with-logits of branch 2, averaged over the ``B x K`` entries."""
    orthogonal: Tensor
    """``L_o`` before weighting by ``lam`` (detached from the graph when ``lam == 0``)."""


class TwoBranchLoss(nn.Module):
    """The two-branch loss of Eq. 5: ``L_all = L_c1 + L_c2 + lam * L_o`` from a ``TwoBranchOutput``.

    ``L_c1`` and ``L_c2`` are multi-label BCE-with-logits losses of each branch's logits (mean over the
    ``B x K`` entries, as in ``nn.BCEWithLogitsLoss``); ``L_o`` is
    [`orthogonal_loss`][hiercam.orthogonal_loss] of the two branches' feature maps before pooling. The
    defaults are the paper's (``lam=1e-4``, raw sum), whose scale depends on the batch size, the feature size
    and the backbone; ``reduction="batchmean"`` and ``normalize=True`` make it scale-free, and ``lam`` should
    then be chosen on validation data. With ``lam=0`` the branches train independently and ``orthogonal`` is
    only logged.

    Under ``DistributedDataParallel`` (gradients averaged over ``W`` processes, equal shards) the BCE terms
    and the ``"batchmean"``/``"mean"`` orthogonal term match one process on the concatenated batch; ``"sum"``
    gives ``1 / W`` of its orthogonal gradient.

    Args:
        lam: non-negative weight ``lambda`` of the orthogonal term (paper: ``1e-4``).
        reduction: reduction of the orthogonal term, ``"sum"`` (paper), ``"batchmean"`` or ``"mean"``.
        normalize: L2-normalise each sample's features in the orthogonal term (not in the paper).

    Raises:
        TypeError: ``lam`` is not a real number or ``normalize`` not a bool.
        ValueError: ``lam`` is negative or not finite, or ``reduction`` is unknown.

    Examples:
        >>> import torch
        >>> from hiercam.models import TwoBranchOutput
        >>> logits = torch.zeros(2, 4, 3)  # (2, B, K)
        >>> features = (torch.ones(4, 8, 2, 2), torch.ones(4, 8, 2, 2))
        >>> output = TwoBranchOutput(logits, features, logits.mean(0))
        >>> parts = TwoBranchLoss(lam=0.01, reduction="batchmean")(output, torch.ones(4, 3))
        >>> [round(float(x), 4) for x in parts]  # total = 2 * log(2) + 0.01 * 32
        [1.7063, 0.6931, 0.6931, 32.0]
    """

    def __init__(self, lam: float = 1e-4, *, reduction: Reduction = "sum", normalize: bool = False) -> None:
        super().__init__()
        self.lam = _check_weight(lam, "lam")
        check_choice(reduction, "reduction", ("sum", "batchmean", "mean"))
        self.orthogonal = OrthogonalLoss(1.0, reduction, normalize)

    def forward(self, output: TwoBranchOutput, targets: Tensor) -> TwoBranchLossOutput:
        """Loss of a two-branch output against multi-label targets.

        Args:
            output: a ``TwoBranchOutput`` (or any object with ``logits`` ``(2, B, K)`` and ``features``, a
                pair of equal-shaped ``(B, C, H, W)`` or ``(B, D)`` tensors).
            targets: multi-hot targets ``(B, K)`` (bool, integer or floating; soft labels in ``[0, 1]`` work
                too). Values are not checked, to avoid a device synchronisation every step.

        Returns:
            ``TwoBranchLossOutput(total, classification_1, classification_2, orthogonal)``, scalars in float32
            (float64 for float64 logits).

        Raises:
            TypeError: ``output`` lacks ``logits``/``features`` or they are not tensors.
            ValueError: the shapes of the logits, features and targets do not fit together.
        """
        logits, (f1, f2) = _check_output(output)
        check_tensor(targets, "targets", dims="B, K")
        if targets.shape != logits.shape[1:]:
            raise ValueError(
                f"`targets` must have shape (B, K) = {format_shape(logits.shape[1:])} to match "
                f"`output.logits` {format_shape(logits.shape)}, got {format_shape(targets.shape)}"
            )
        dtype = torch.promote_types(logits.dtype, torch.float32)
        with torch.autocast(device_type=logits.device.type, enabled=False):
            logits = logits.to(dtype)
            targets = targets.to(dtype)
            bce_1 = F.binary_cross_entropy_with_logits(logits[0], targets)
            bce_2 = F.binary_cross_entropy_with_logits(logits[1], targets)
        if self.lam == 0.0:
            with torch.no_grad():
                orthogonal = self.orthogonal(f1, f2)
            total = bce_1 + bce_2
        else:
            orthogonal = self.orthogonal(f1, f2)
            total = bce_1 + bce_2 + self.lam * orthogonal
        return TwoBranchLossOutput(total, bce_1, bce_2, orthogonal)

    def extra_repr(self) -> str:  # noqa: D102
        return f"lam={self.lam}"


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
