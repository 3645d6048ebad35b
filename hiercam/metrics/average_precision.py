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
from hiercam.metrics._base import Metric

__all__ = ["average_precision", "mean_average_precision", "MeanAveragePrecision"]


def _check(scores: Tensor, labels: Tensor) -> None:
    check_tensor(scores, "scores", dims="B, K", floating=True)
    check_tensor(labels, "labels", dims="B, K")
    check_same_shape(scores, labels, "scores", "labels")
    if scores.shape[1] == 0:
        raise ValueError("`scores` must have at least one class, got shape (B, 0)")
    if labels.is_complex():
        raise TypeError(f"`labels` must be a real 0/1 tensor, got dtype {labels.dtype}")
    check_finite(scores, "scores")
    check_binary(labels, "labels")


def _average_precision_compute(scores: Tensor, labels: Tensor) -> Tensor:
    """AP of every column; NaN for a column without positives. Inputs already checked, ``(N, K)``."""
    count = scores.shape[0]
    order = scores.argsort(dim=0, descending=True, stable=True)
    ranked = scores.gather(0, order)
    hits = labels.gather(0, order).to(torch.float32)
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


def average_precision(scores: Tensor, labels: Tensor) -> Tensor:
    """Average precision of each class over a set of images.

    Args:
        scores: ``(B, K)`` scores, any monotone form (logits or probabilities), floating point, finite.
        labels: ``(B, K)`` 0/1 image labels, any real dtype.

    Returns:
        ``(K,)`` float32 tensor on the device of ``scores``: AP of each class, a fraction in [0, 1], NaN for a
        class without positives.

    Raises:
        TypeError: a non-tensor argument or non-floating ``scores``.
        ValueError: shapes differ or are not 2-D, no class, non-finite scores, non-binary labels.

    Examples:
        >>> import torch
        >>> scores = torch.tensor([[0.9, 0.1], [0.8, 0.4], [0.3, 0.2]])
        >>> labels = torch.tensor([[1, 0], [0, 0], [1, 0]])
        >>> average_precision(scores, labels)
        tensor([0.8333,    nan])
    """
    _check(scores, labels)
    if scores.shape[0] == 0:
        return scores.new_full((scores.shape[1],), float("nan"), dtype=torch.float32)
    return _average_precision_compute(scores.detach(), labels.detach())


def mean_average_precision(scores: Tensor, labels: Tensor) -> Tensor:
    """mAP: the mean of ``average_precision`` over the classes that have at least one positive.

    The per-class figures are those of [`average_precision`][hiercam.average_precision].

    Args:
        scores: ``(B, K)`` scores (logits or probabilities).
        labels: ``(B, K)`` 0/1 image labels.

    Returns:
        A scalar float32 tensor, a fraction in [0, 1]; NaN when no class has a positive (or ``B = 0``).

    Raises:
        TypeError, ValueError: as [`average_precision`][hiercam.average_precision].

    Examples:
        >>> import torch
        >>> scores = torch.tensor([[0.9, 0.1], [0.8, 0.4], [0.3, 0.2]])
        >>> mean_average_precision(scores, torch.tensor([[1, 0], [0, 1], [1, 0]]))
        tensor(0.9167)
    """
    return _mean_compute(average_precision(scores, labels))


class MeanAveragePrecision(Metric):
    """Accumulate scores and labels over batches, then compute mAP over everything seen.

    Keeps every score (AP needs the full ranking): ``B x K`` floats per batch, on the device they come from.
    A metric like the others: ``update`` / ``compute`` / ``reset``, calling it returns the batch's mAP and
    accumulates the batch, ``state_dict`` / ``load_state_dict`` and ``.to(device)`` as any ``nn.Module``.
    In a ``torch.distributed`` run, [`per_class`][hiercam.MeanAveragePrecision.per_class] and
    [`compute`][hiercam.MeanAveragePrecision.compute] gather the scores and labels of all processes first
    (every process must call them, one with no data too), so each process may see a disjoint shard of the
    data; ``sync_on_compute=False`` keeps them local.

    Attributes:
        scores, labels: the batches seen, lists of ``(B, K)`` tensors (float32 scores).

    Examples:
        >>> import torch
        >>> metric = MeanAveragePrecision()
        >>> metric.update(torch.tensor([[0.9, 0.1]]), torch.tensor([[1, 0]]))
        >>> metric.update(torch.tensor([[0.8, 0.4], [0.3, 0.2]]), torch.tensor([[0, 1], [1, 0]]))
        >>> metric.compute()
        tensor(0.9167)
    """

    scores: list[Tensor]
    labels: list[Tensor]

    def __init__(self, *, sync_on_compute: bool = True) -> None:
        super().__init__(sync_on_compute=sync_on_compute)
        self.add_state("scores", None, "cat")
        self.add_state("labels", None, "cat")

    def update(self, scores: Tensor, labels: Tensor) -> None:
        """Add a batch: ``scores`` and ``labels`` of shape ``(B, K)`` (``K`` fixed across batches)."""
        self._check_batch(scores, labels)
        self.scores.append(scores.detach().to(torch.float32))
        self.labels.append(labels.detach())

    def forward(self, scores: Tensor, labels: Tensor) -> Tensor:
        """The mAP of this batch alone, which is also added to the state."""
        self._check_batch(scores, labels)
        result: Tensor = super().forward(scores, labels)
        return result

    def _check_batch(self, scores: Tensor, labels: Tensor) -> None:
        """``scores`` and ``labels`` as ``_check`` wants them, with the class count of earlier batches."""
        _check(scores, labels)
        if self.scores and scores.shape[1] != self.scores[0].shape[1]:
            raise ValueError(
                f"`scores` must have {self.scores[0].shape[1]} classes like earlier batches, "
                f"got {scores.shape[1]}"
            )

    def _per_class(self) -> Tensor:
        if not self.scores:
            return torch.empty(0)
        return _average_precision_compute(torch.cat(self.scores), torch.cat(self.labels))

    def _compute(self) -> Tensor:
        return _mean_compute(self._per_class())

    def per_class(self) -> Tensor:
        """``(K,)`` AP of each class over all batches seen (NaN for a class without positives).

        An empty ``(0,)`` tensor when no batch was seen (by any process).
        """
        with self._synced():
            return self._per_class()

    def compute(self) -> Tensor:
        """The mAP over all batches seen, as [`mean_average_precision`][hiercam.mean_average_precision].

        NaN when no batch was seen (by any process) or no class has a positive.
        """
        result: Tensor = super().compute()
        return result
