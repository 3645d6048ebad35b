"""Average precision for multi-label classification: per class and its mean over classes (mAP).

Average precision is computed exactly as scikit-learn's ``average_precision_score`` (the step-wise area under
the precision-recall curve, tied scores forming a single threshold), but for all classes at once, in PyTorch,
on any device. The figures are accumulated over a whole dataset, not averaged over batches.

Policy for classes without positives: their AP is undefined (NaN in
[`average_precision`][hiercam.average_precision]) and they are **left out** of the mean, as in the usual
VOC/COCO evaluation; scikit-learn's macro average would instead warn and count them as 0. When no class has a
positive, the mean is NaN.
"""

from __future__ import annotations

import torch
from torch import Tensor

from hiercam._validation import check_binary, check_finite, check_same_shape, check_tensor
from hiercam.metrics._distributed import sync_cat

__all__ = ["average_precision", "mean_average_precision", "MeanAveragePrecision"]


def _check(scores: Tensor, targets: Tensor) -> None:
    check_tensor(scores, "scores", dims="B, K", floating=True)
    check_tensor(targets, "targets", dims="B, K")
    check_same_shape(scores, targets, "scores", "targets")
    check_finite(scores, "scores")
    check_binary(targets, "targets")


def _average_precision_compute(scores: Tensor, targets: Tensor) -> Tensor:
    """AP of every column; NaN for a column without positives. Inputs already checked, ``(N, K)``."""
    count = scores.shape[0]
    order = scores.argsort(dim=0, descending=True, stable=True)
    ranked = scores.gather(0, order)
    hits = targets.gather(0, order).to(torch.float32)
    precision = (
        hits.cumsum(0) / torch.arange(1, count + 1, device=scores.device, dtype=torch.float32)[:, None]
    )
    # Tied scores form one threshold: every hit of a tie group counts with the precision at the group's end.
    group_end = torch.ones_like(ranked, dtype=torch.bool)
    group_end[:-1] = ranked[:-1] != ranked[1:]
    position = torch.arange(count, device=scores.device)[:, None].expand_as(ranked)
    no_end = torch.full_like(position, count - 1)
    next_end = torch.where(group_end, position, no_end).flip(0).cummin(0).values.flip(0)
    positives = hits.sum(0)
    total = (hits * precision.gather(0, next_end)).sum(0)
    return torch.where(positives > 0, total / positives.clamp_min(1), torch.full_like(total, float("nan")))


def _mean_compute(per_class: Tensor) -> Tensor:
    defined = per_class[~per_class.isnan()]
    return defined.mean() if defined.numel() else per_class.new_tensor(float("nan"))


def average_precision(scores: Tensor, targets: Tensor) -> Tensor:
    """Average precision of each class over a set of images.

    Args:
        scores: ``(B, K)`` scores, any monotone form (logits or probabilities), floating point, finite.
        targets: ``(B, K)`` 0/1 targets, any dtype.

    Returns:
        ``(K,)`` float32 tensor on the device of ``scores``: AP of each class, NaN for a class without
        positives.

    Raises:
        TypeError: a non-tensor argument or non-floating ``scores``.
        ValueError: shapes differ or are not 2-D, non-finite scores, non-binary targets.

    Examples:
        >>> import torch
        >>> scores = torch.tensor([[0.9, 0.1], [0.8, 0.4], [0.3, 0.2]])
        >>> targets = torch.tensor([[1, 0], [0, 0], [1, 0]])
        >>> average_precision(scores, targets)
        tensor([0.8333,    nan])
    """
    _check(scores, targets)
    return _average_precision_compute(scores.detach(), targets.detach())


def mean_average_precision(scores: Tensor, targets: Tensor) -> Tensor:
    """mAP: the mean of ``average_precision`` over the classes that have at least one positive.

    The per-class figures are those of [`average_precision`][hiercam.average_precision].

    Args:
        scores: ``(B, K)`` scores (logits or probabilities).
        targets: ``(B, K)`` 0/1 targets.

    Returns:
        A scalar float32 tensor; NaN when no class has a positive.

    Raises:
        TypeError, ValueError: as [`average_precision`][hiercam.average_precision].

    Examples:
        >>> import torch
        >>> scores = torch.tensor([[0.9, 0.1], [0.8, 0.4], [0.3, 0.2]])
        >>> mean_average_precision(scores, torch.tensor([[1, 0], [0, 1], [1, 0]]))
        tensor(0.9167)
    """
    return _mean_compute(average_precision(scores, targets))


class MeanAveragePrecision:
    """Accumulate scores and targets over batches, then compute mAP over everything seen.

    Keeps every score (AP needs the full ranking): ``B x K`` floats per batch, on the device they come from.
    In a ``torch.distributed`` run, ``per_class`` and ``compute`` gather the scores and targets of all
    processes first (every process must call them), so each process may see a disjoint shard of the data;
    ``sync_on_compute=False`` keeps them local.

    Examples:
        >>> import torch
        >>> metric = MeanAveragePrecision()
        >>> metric.update(torch.tensor([[0.9, 0.1]]), torch.tensor([[1, 0]]))
        >>> metric.update(torch.tensor([[0.8, 0.4], [0.3, 0.2]]), torch.tensor([[0, 1], [1, 0]]))
        >>> metric.compute()
        tensor(0.9167)
    """

    def __init__(self, *, sync_on_compute: bool = True) -> None:
        self.sync_on_compute = bool(sync_on_compute)
        self._scores: list[Tensor] = []
        self._targets: list[Tensor] = []

    def update(self, scores: Tensor, targets: Tensor) -> None:
        """Add a batch: ``scores`` and ``targets`` of shape ``(B, K)`` (``K`` fixed across batches)."""
        _check(scores, targets)
        if self._scores and scores.shape[1] != self._scores[0].shape[1]:
            raise ValueError(
                f"`scores` must have {self._scores[0].shape[1]} classes like earlier batches, "
                f"got {scores.shape[1]}"
            )
        self._scores.append(scores.detach().to(torch.float32))
        self._targets.append(targets.detach())

    def per_class(self) -> Tensor:
        """``(K,)`` AP of each class over all batches seen (NaN for a class without positives)."""
        if not self._scores:
            raise ValueError("no batch was added: call update() before compute()")
        scores, targets = torch.cat(self._scores), torch.cat(self._targets)
        if self.sync_on_compute:
            scores, targets = sync_cat(scores), sync_cat(targets)
        return _average_precision_compute(scores, targets)

    def compute(self) -> Tensor:
        """The mAP over all batches seen, as [`mean_average_precision`][hiercam.mean_average_precision]."""
        return _mean_compute(self.per_class())

    def reset(self) -> None:
        """Forget every batch."""
        self._scores.clear()
        self._targets.clear()
