"""ReCAM's loss: the multi-label BCE plus the softmax cross-entropy of the re-activation predictor.

``total = BCE(class_logits, labels) + weight * SCE``, where SCE is, for every image, the mean over its
labelled classes ``k`` of ``cross_entropy(reactivation_logits[b, k], k)``, averaged over the batch (images
without a label count as 0, as in the authors' ``Class_Predictor``). ReCAM's softmax runs over all ``K``
classes. ``candidates`` restricts it: row ``k`` holds the classes the softmax of target ``k`` runs over
(``k`` itself included), e.g. the class and its siblings in a hierarchy
([`sibling_candidates`][hiercam.losses.sibling_candidates]): the siblings are then the only negatives, the
classes a similarity hierarchy names as the hardest to tell apart.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hiercam._validation import check_binary, check_tensor, format_shape, type_name
from hiercam.hierarchy import ClassHierarchy
from hiercam.losses.orthogonal import check_weight

__all__ = ["ReActivationLossOutput", "reactivation_loss", "ReActivationLoss", "sibling_candidates"]


class ReActivationLossOutput(NamedTuple):
    """ReCAM's loss and its two terms, scalar tensors."""

    total: Tensor
    """``classification + weight * reactivation``: backpropagate this."""
    classification: Tensor
    """The multi-label BCE of the class logits, averaged over ``B x K``."""
    reactivation: Tensor
    """The re-activation softmax cross-entropy, before weighting."""


def sibling_candidates(hierarchy: ClassHierarchy, level: int = 1) -> Tensor:
    """``(K, K)`` bool: row ``k`` is class ``k`` and its siblings in its group at ``level``.

    Raises:
        TypeError: ``hierarchy`` is not a ``ClassHierarchy``.
        ValueError: ``level`` is outside ``0..hierarchy.num_levels - 1``.

    Example:
        >>> sibling_candidates(ClassHierarchy([[0, 0, 1]])).int()
        tensor([[1, 1, 0],
                [1, 1, 0],
                [0, 0, 1]], dtype=torch.int32)
    """
    if not isinstance(hierarchy, ClassHierarchy):
        raise TypeError(f"`hierarchy` must be a ClassHierarchy, got {type_name(hierarchy)}")
    groups = hierarchy.assignments(level)
    return groups[:, None] == groups[None, :]


def reactivation_loss(
    output: tuple[Tensor, Tensor],
    labels: Tensor,
    *,
    weight: float = 1.0,
    candidates: Tensor | None = None,
) -> ReActivationLossOutput:
    """ReCAM's loss (module docstring), in float32 (float64 for float64 logits), also under autocast.

    Args:
        output: ``(class_logits (B, K), reactivation_logits (B, K, K))``, a
            [`ReCAMOutput`][hiercam.models.ReCAMOutput].
        labels: ``(B, K)`` 0/1 image labels.
        weight: the re-activation term's weight, ``>= 0`` (ReCAM's 1 by default).
        candidates: ``(K, K)`` bool, or ``None`` (every class): the classes of target ``k``'s softmax, row
            ``k``, which must hold ``k``. A class whose row holds only itself adds a zero term.

    Returns:
        [`ReActivationLossOutput`][hiercam.losses.ReActivationLossOutput]
        ``(total, classification, reactivation)``.

    Raises:
        TypeError: ``output`` is not a pair of floating-point tensors, ``labels`` or ``candidates`` not a
            tensor, ``weight`` not a real number.
        ValueError: shapes that do not fit ``(B, K)`` / ``(B, K, K)`` / ``(K, K)``, labels other than 0/1, a
            ``candidates`` row without its own class, or a negative or non-finite ``weight``.

    Examples:
        >>> logits, reactivation = torch.zeros(2, 3), torch.zeros(2, 3, 3)
        >>> labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
        >>> parts = reactivation_loss((logits, reactivation), labels)
        >>> [round(float(x), 4) for x in parts]  # log(2) + log(3)
        [1.7918, 0.6931, 1.0986]
    """
    if isinstance(output, Tensor) or not isinstance(output, tuple) or len(output) != 2:
        raise TypeError(
            f"`output` must be a (class_logits, reactivation_logits) pair, got {type_name(output)}"
        )
    logits, reactivation = output
    check_tensor(logits, "output.class_logits", dims="B, K", floating=True)
    check_tensor(reactivation, "output.reactivation_logits", dims="B, K, K", floating=True)
    batch, classes = logits.shape
    if reactivation.shape != (batch, classes, classes):
        raise ValueError(
            f"`output.reactivation_logits` must have shape (B, K, K) = ({batch}, {classes}, {classes}), got "
            f"{format_shape(reactivation.shape)}"
        )
    check_tensor(labels, "labels", dims="B, K")
    if labels.shape != logits.shape:
        raise ValueError(
            f"`labels` must have shape (B, K) = {format_shape(logits.shape)}, got "
            f"{format_shape(labels.shape)}"
        )
    check_binary(labels, "labels")
    weight = check_weight(weight, "weight")
    if candidates is not None:
        _check_candidates(candidates, classes)
    dtype = torch.promote_types(logits.dtype, torch.float32)
    with torch.autocast(device_type=logits.device.type, enabled=False):
        values = reactivation.to(dtype)
        present = labels.to(device=logits.device, dtype=torch.bool)
        classification = F.binary_cross_entropy_with_logits(logits.to(dtype), present.to(dtype))
        if candidates is not None:
            allowed = candidates.to(logits.device)
            values = values.masked_fill(~allowed.unsqueeze(0), float("-inf"))
        targets = torch.arange(classes, device=logits.device).expand(batch, classes)
        per_class = F.cross_entropy(values.flatten(0, 1), targets.flatten(), reduction="none").view(
            batch, classes
        )
        per_class = per_class * present
        counts = present.sum(1)
        per_image = per_class.sum(1) / counts.clamp(min=1)
        reactivation_term = per_image.sum() / batch
    return ReActivationLossOutput(
        classification + weight * reactivation_term, classification, reactivation_term
    )


class ReActivationLoss(nn.Module):
    """[`reactivation_loss`][hiercam.losses.reactivation_loss] as a module, for ``hiercam.fit(loss=...)``.

    Args:
        weight: the re-activation term's weight, ``>= 0``.
        candidates: ``(K, K)`` bool softmax candidates per target class, or ``None`` (every class).

    Raises:
        TypeError, ValueError: as ``reactivation_loss`` for ``weight`` and ``candidates``.

    Examples:
        >>> criterion = ReActivationLoss(candidates=torch.eye(3, dtype=torch.bool))
        >>> float(criterion((torch.zeros(1, 3), torch.zeros(1, 3, 3)), torch.ones(1, 3)).reactivation)
        0.0
    """

    def __init__(self, *, weight: float = 1.0, candidates: Tensor | None = None) -> None:
        super().__init__()
        self.weight = check_weight(weight, "weight")
        if candidates is not None:
            candidates = _check_candidates(candidates, None).clone()
        self.candidates = candidates

    def forward(self, output: tuple[Tensor, Tensor], labels: Tensor) -> ReActivationLossOutput:
        """The loss of a ``ReCAMNet``'s output against labels ``(B, K)``."""
        return reactivation_loss(output, labels, weight=self.weight, candidates=self.candidates)


def _check_candidates(candidates: Tensor, classes: int | None) -> Tensor:
    """A square bool ``(K, K)`` tensor (``K = classes`` when given) whose diagonal is all True."""
    check_tensor(candidates, "candidates", dims="K, K")
    size = candidates.shape[0] if classes is None else classes
    if candidates.dtype != torch.bool or candidates.shape != (size, size):
        expected = "a square bool tensor" if classes is None else f"a bool ({size}, {size}) tensor"
        raise ValueError(
            f"`candidates` must be {expected}, got {candidates.dtype} {format_shape(candidates.shape)}"
        )
    if not bool(candidates.diagonal().all()):
        raise ValueError("`candidates` must hold every class in its own row (the diagonal must be True)")
    return candidates
