"""The loss of a level-heads network: every level's BCE on the labels remapped to that level's groups.

Level ``l``'s logits ``(B, N_l)`` are scored with BCE-with-logits against
``hierarchy.remap_labels(labels, l)`` (a group is present when any of its classes is), each averaged over its
``B x N_l`` entries as in ``nn.BCEWithLogitsLoss``; the total is their (weighted) sum, or their weighted mean.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hiercam._validation import (
    check_binary,
    check_choice,
    check_tensor,
    format_shape,
    type_name,
    values_checked,
)
from hiercam.hierarchy import ClassHierarchy
from hiercam.losses.orthogonal import check_weight

__all__ = ["LevelReduction", "LevelHeadsLossOutput", "level_heads_loss", "LevelHeadsLoss"]

LevelReduction = Literal["sum", "mean"]
_REDUCTIONS: tuple[LevelReduction, ...] = ("sum", "mean")


class LevelHeadsLossOutput(tuple[Tensor, ...]):
    """The loss of a level-heads network and its parts, scalar tensors: ``(total, level_0, ..., level_L)``.

    ``total`` (item 0) is the one to backpropagate; ``levels`` are each level's unweighted BCE, for logging
    (they stay attached to the graph). ``_asdict()`` names them ``total``, ``level_0``, ..., so
    ``hiercam.fit`` logs every term (``train_level_1``...) as it does for a ``NamedTuple`` loss.

    Examples:
        >>> import torch
        >>> parts = LevelHeadsLossOutput([torch.tensor(3.0), torch.tensor(1.0), torch.tensor(2.0)])
        >>> float(parts.total), [float(x) for x in parts.levels], list(parts._asdict())
        (3.0, [1.0, 2.0], ['total', 'level_0', 'level_1'])
    """

    __slots__ = ()

    @property
    def total(self) -> Tensor:
        """The weighted sum (or mean) of the levels' BCE terms: backpropagate this."""
        return self[0]

    @property
    def levels(self) -> tuple[Tensor, ...]:
        """Each level's BCE before weighting, level 0 first."""
        return tuple(self[1:])

    def _asdict(self) -> dict[str, Tensor]:
        """``{"total": ..., "level_0": ..., ...}``, the ``NamedTuple`` protocol that ``hiercam.fit`` logs."""
        return {"total": self[0], **{f"level_{level}": term for level, term in enumerate(self[1:])}}


def level_heads_loss(
    output: Sequence[Tensor],
    labels: Tensor,
    hierarchy: ClassHierarchy,
    *,
    weights: Sequence[float] | None = None,
    reduction: LevelReduction = "sum",
) -> LevelHeadsLossOutput:
    """Sum (or weighted mean) of every level's BCE-with-logits on the labels remapped to that level.

    ``total = sum_l w_l * BCE(output[l], remap_labels(labels, l))`` with ``reduction="sum"``, divided by
    ``sum_l w_l`` with ``reduction="mean"``; each BCE is averaged over its ``B x N_l`` entries. Computed in
    float32 (float64 for float64 logits), also under autocast.

    Args:
        output: the logits of every level, level 0 first: ``(B, K)``, ``(B, N_1)``, ..., ``(B, N_L)`` (a
            [`LevelHeadsOutput`][hiercam.models.LevelHeadsOutput] or any sequence of tensors).
        labels: multi-hot class labels ``(B, K)`` of 0/1 values (bool, integer or floating).
        hierarchy: the class hierarchy whose levels the heads predict.
        weights: one non-negative weight per level (at least one positive); ``None``: all 1.
        reduction: ``"sum"`` (default) or ``"mean"`` (the weighted mean over levels).

    Returns:
        [`LevelHeadsLossOutput`][hiercam.losses.LevelHeadsLossOutput] ``(total, level_0, ..., level_L)``.

    Raises:
        TypeError: ``output`` is not a sequence of floating-point tensors, ``labels`` not a tensor,
            ``hierarchy`` not a ``ClassHierarchy``, or a weight not a real number.
        ValueError: ``output`` does not hold one ``(B, N_l)`` tensor per level, ``labels`` is not ``(B, K)``
            of 0/1 values, ``weights`` has the wrong length, a negative or non-finite weight or no positive
            one, or ``reduction`` is unknown.

    Examples:
        >>> import torch
        >>> from hiercam import ClassHierarchy
        >>> hierarchy = ClassHierarchy([[0, 0, 1]])  # 3 classes -> 2 groups
        >>> output = [torch.zeros(4, 3), torch.zeros(4, 2)]
        >>> parts = level_heads_loss(output, torch.ones(4, 3), hierarchy)
        >>> [round(float(x), 4) for x in parts]  # total = 2 * log(2)
        [1.3863, 0.6931, 0.6931]
    """
    if not isinstance(hierarchy, ClassHierarchy):
        raise TypeError(f"`hierarchy` must be a ClassHierarchy, got {type_name(hierarchy)}")
    factors = _check_level_weights(weights, hierarchy.num_levels)
    check_choice(reduction, "reduction", _REDUCTIONS)
    logits = _check_output(output, hierarchy)
    check_tensor(labels, "labels", dims="B, K")
    if labels.shape != logits[0].shape:
        raise ValueError(
            f"`labels` must have shape (B, K) = {format_shape(logits[0].shape)} like `output[0]`, got "
            f"{format_shape(labels.shape)}"
        )
    check_binary(labels, "labels")
    dtype = torch.promote_types(logits[0].dtype, torch.float32)
    terms = []
    # remap_labels would check the labels again, once per level
    with torch.autocast(device_type=logits[0].device.type, enabled=False), values_checked(labels):
        for level, level_logits in enumerate(logits):
            targets = hierarchy.remap_labels(labels, level).to(device=level_logits.device, dtype=dtype)
            terms.append(F.binary_cross_entropy_with_logits(level_logits.to(dtype), targets))
    total = sum((factor * term for factor, term in zip(factors, terms, strict=True)), terms[0].new_zeros(()))
    if reduction == "mean":
        total = total / math.fsum(factors)
    return LevelHeadsLossOutput([total, *terms])


class LevelHeadsLoss(nn.Module):
    """[`level_heads_loss`][hiercam.losses.level_heads_loss] as a module, for ``hiercam.fit(loss=...)``.

    ``forward(output, labels)`` calls the function with the hierarchy, weights and reduction given here.

    Args:
        hierarchy: the class hierarchy whose levels the heads predict.
        weights: one non-negative weight per level (at least one positive); ``None``: all 1.
        reduction: ``"sum"`` (default) or ``"mean"`` (the weighted mean over levels).

    Raises:
        TypeError: ``hierarchy`` is not a ``ClassHierarchy`` or a weight not a real number.
        ValueError: ``weights`` has the wrong length, a negative or non-finite weight or no positive one, or
            ``reduction`` is unknown.

    Examples:
        >>> import torch
        >>> from hiercam import ClassHierarchy
        >>> criterion = LevelHeadsLoss(ClassHierarchy([[0, 0, 1]]), weights=[1.0, 0.5])
        >>> parts = criterion([torch.zeros(4, 3), torch.zeros(4, 2)], torch.ones(4, 3))
        >>> round(float(parts.total), 4)  # 1.5 * log(2)
        1.0397
    """

    def __init__(
        self,
        hierarchy: ClassHierarchy,
        *,
        weights: Sequence[float] | None = None,
        reduction: LevelReduction = "sum",
    ) -> None:
        super().__init__()
        if not isinstance(hierarchy, ClassHierarchy):
            raise TypeError(f"`hierarchy` must be a ClassHierarchy, got {type_name(hierarchy)}")
        self.hierarchy = hierarchy
        self.weights: tuple[float, ...] | None = (
            None if weights is None else _check_level_weights(weights, hierarchy.num_levels)
        )
        self.reduction: LevelReduction = check_choice(reduction, "reduction", _REDUCTIONS)

    def forward(self, output: Sequence[Tensor], labels: Tensor) -> LevelHeadsLossOutput:
        """Loss of every level's logits ``output`` against class labels ``labels`` ``(B, K)``."""
        return level_heads_loss(
            output, labels, self.hierarchy, weights=self.weights, reduction=self.reduction
        )

    def extra_repr(self) -> str:  # noqa: D102
        return (
            f"level_sizes={self.hierarchy.level_sizes}, weights={self.weights}, reduction={self.reduction!r}"
        )


def _check_level_weights(weights: object, num_levels: int) -> tuple[float, ...]:
    """One finite weight >= 0 per level, at least one positive; ``None`` gives all 1."""
    if weights is None:
        return (1.0,) * num_levels
    if isinstance(weights, (str, bytes)) or not isinstance(weights, Sequence):
        raise TypeError(f"`weights` must be a sequence of floats or None, got {type_name(weights)}")
    if len(weights) != num_levels:
        raise ValueError(f"`weights` must hold one weight per level ({num_levels}), got {len(weights)}")
    factors = tuple(check_weight(value, f"weights[{i}]") for i, value in enumerate(weights))
    if not any(factor > 0 for factor in factors):
        raise ValueError(f"`weights` must hold at least one positive weight, got {list(factors)}")
    return factors


def _check_output(output: object, hierarchy: ClassHierarchy) -> list[Tensor]:
    """The levels' logits, checked to be ``(B, N_l)`` floating-point tensors, one per level."""
    if isinstance(output, Tensor) or not isinstance(output, Sequence):
        raise TypeError(
            "`output` must be a sequence of logits, one tensor per level (a LevelHeadsOutput), got "
            f"{type_name(output)}"
        )
    if len(output) != hierarchy.num_levels:
        raise ValueError(
            f"`output` must hold one logits tensor per level ({hierarchy.num_levels}: sizes "
            f"{hierarchy.level_sizes}), got {len(output)}"
        )
    logits = [check_tensor(x, f"output[{i}]", dims="B, N", floating=True) for i, x in enumerate(output)]
    for level, level_logits in enumerate(logits):
        expected = (logits[0].shape[0], hierarchy.num_groups(level))
        if tuple(level_logits.shape) != expected:
            raise ValueError(
                f"`output[{level}]` must have shape (B, N_{level}) = {format_shape(expected)}, got "
                f"{format_shape(level_logits.shape)}"
            )
    return logits
