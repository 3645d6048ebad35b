"""The loss of a sub-category classifier (SC-CAM): the classes' BCE plus a weighted sub-categories' BCE.

``total = BCE(logits[:, :K], targets[:, :K]) + weight * BCE(logits[:, K:], targets[:, K:])``, each BCE the
mean over its entries: SC-CAM's ``multilabel_soft_margin_loss`` on both heads, the sub-category term weighted
by 5 in the authors' code (``train_cls.py``, ``--subcls_loss_weight``), the default here.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hiercam._validation import check_binary, check_int, check_tensor, format_shape
from hiercam.losses.orthogonal import check_weight

__all__ = ["SubCategoryLossOutput", "subcategory_loss", "SubCategoryLoss"]


class SubCategoryLossOutput(NamedTuple):
    """The loss of a sub-category classifier and its two terms, scalar tensors."""

    total: Tensor
    """``classes + weight * subcategories``: backpropagate this."""
    classes: Tensor
    """The BCE of the class head, averaged over its ``B x K`` entries."""
    subcategories: Tensor
    """The BCE of the sub-category head, averaged over its ``B x S`` entries, before weighting."""


def subcategory_loss(
    logits: Tensor, targets: Tensor, num_classes: int, *, weight: float = 5.0
) -> SubCategoryLossOutput:
    """The classes' BCE-with-logits plus ``weight`` times the sub-categories', on logits ``(B, K + S)``.

    Computed in float32 (float64 for float64 logits), also under autocast.

    Args:
        logits: ``(B, K + S)``, the class logits then the sub-category logits (a
            [`SubCategoryNet`][hiercam.models.SubCategoryNet]'s output).
        targets: ``(B, K + S)`` 0/1: the class labels then ``SubCategories.targets(assignments)``.
        num_classes: ``K``, ``1 <= K < K + S``.
        weight: the sub-category term's weight, ``>= 0`` (SC-CAM's 5 by default).

    Returns:
        [`SubCategoryLossOutput`][hiercam.losses.SubCategoryLossOutput] ``(total, classes, subcategories)``.

    Raises:
        TypeError: ``logits`` or ``targets`` is not a tensor (``logits`` floating point), ``num_classes``
            not an int, ``weight`` not a real number.
        ValueError: shapes that differ or are not 2-D, ``num_classes`` leaving no sub-category column,
            targets other than 0/1, or a negative or non-finite ``weight``.

    Examples:
        >>> parts = subcategory_loss(torch.zeros(4, 5), torch.ones(4, 5), num_classes=2, weight=5.0)
        >>> [round(float(x), 4) for x in parts]  # 6 * log(2), log(2), log(2)
        [4.1589, 0.6931, 0.6931]
    """
    check_tensor(logits, "logits", dims="B, K + S", floating=True)
    check_tensor(targets, "targets", dims="B, K + S")
    if logits.shape != targets.shape:
        raise ValueError(
            f"`logits` {format_shape(logits.shape)} and `targets` {format_shape(targets.shape)} must have "
            "the same shape (B, K + S)"
        )
    num_classes = check_int(num_classes, "num_classes", minimum=1, maximum=logits.shape[1] - 1)
    weight = check_weight(weight, "weight")
    check_binary(targets, "targets")
    dtype = torch.promote_types(logits.dtype, torch.float32)
    with torch.autocast(device_type=logits.device.type, enabled=False):
        values, goals = logits.to(dtype), targets.to(device=logits.device, dtype=dtype)
        classes = F.binary_cross_entropy_with_logits(values[:, :num_classes], goals[:, :num_classes])
        subcategories = F.binary_cross_entropy_with_logits(values[:, num_classes:], goals[:, num_classes:])
    return SubCategoryLossOutput(classes + weight * subcategories, classes, subcategories)


class SubCategoryLoss(nn.Module):
    """[`subcategory_loss`][hiercam.losses.subcategory_loss] as a module, for ``hiercam.fit(loss=...)``.

    Args:
        num_classes: ``K``: the first ``K`` columns of the logits and targets are the classes.
        weight: the sub-category term's weight, ``>= 0`` (SC-CAM's 5 by default).

    Raises:
        TypeError: ``num_classes`` is not an int or ``weight`` not a real number.
        ValueError: ``num_classes < 1``, or a negative or non-finite ``weight``.

    Examples:
        >>> criterion = SubCategoryLoss(num_classes=2, weight=1.0)
        >>> round(float(criterion(torch.zeros(4, 5), torch.ones(4, 5)).total), 4)  # 2 * log(2)
        1.3863
    """

    def __init__(self, num_classes: int, *, weight: float = 5.0) -> None:
        super().__init__()
        self.num_classes = check_int(num_classes, "num_classes", minimum=1)
        self.weight = check_weight(weight, "weight")

    def forward(self, logits: Tensor, targets: Tensor) -> SubCategoryLossOutput:
        """The loss of logits ``(B, K + S)`` against targets ``(B, K + S)``."""
        return subcategory_loss(logits, targets, self.num_classes, weight=self.weight)

    def extra_repr(self) -> str:  # noqa: D102
        return f"num_classes={self.num_classes}, weight={self.weight}"
