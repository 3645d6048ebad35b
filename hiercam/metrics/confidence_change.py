"""The confidence change on map-masked images: Average Drop, Increase in Confidence (Grad-CAM++).

Chattopadhay et al., "Grad-CAM++", WACV 2018: the image multiplied by its normalised map is scored against the
original, for every (image, present class) trial of a batch in batched forward passes (see
[`deletion_insertion`][hiercam.deletion_insertion] for the trials, the scores and the model's mode).
[`confidence_change`][hiercam.confidence_change] and [`ConfidenceChange`][hiercam.ConfidenceChange] share the
private kernel ``_confidence_update``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from hiercam._validation import check_choice, check_unit_interval
from hiercam.maps import NormalizeMode, normalize_maps
from hiercam.metrics._perturb import (
    MeanMetric,
    Model,
    Reduction,
    ScoreMode,
    as_float64,
    check_common,
    check_reduction,
    class_scores,
    reduce_trials,
    trial_scores,
    trials,
)

__all__ = ["ConfidenceChangeResult", "confidence_change", "ConfidenceChange"]


class ConfidenceChangeResult(NamedTuple):
    """Confidence on the map-masked image against the original (float64, 0-dim means or ``(P,)``).

    Attributes:
        average_drop: ``max(0, Y - O) / Y`` (Grad-CAM++'s Average Drop, as a fraction: lower is better).
        increase: ``1[O > Y]`` (Increase in Confidence: higher is better).
        change: ``O - Y`` (pytorch-grad-cam's ``CamMultImageConfidenceChange``).
    """

    average_drop: Tensor
    increase: Tensor
    change: Tensor


def _confidence_update(
    model: Model,
    maps: Tensor,
    labels: Tensor,
    images: Tensor,
    normalize: NormalizeMode | None,
    score: ScoreMode,
    batch_size: int,
    classes: Tensor | None = None,
) -> Tensor:
    """Per-trial ``(P, 3)`` float64 on the images' device (CPU for MPS): drop, increase, change."""
    found = trials(maps, labels, images, classes)
    if normalize is None:  # the maps multiply the images as they are: they must be weights in [0, 1]
        check_unit_interval(maps, "maps", hint=" with `normalize=None` (pass normalize='minmax' or 'max')")
    if found.images.shape[0] == 0:
        return torch.zeros((0, 3), dtype=torch.float64)
    weights = normalize_maps(found.maps, normalize, validate_args=False).to(images.dtype)  # checked
    before = as_float64(trial_scores(model, images, found, score, batch_size))

    def make_inputs(rows: Tensor) -> Tensor:
        return images.detach()[found.images[rows]] * weights[rows, None]

    after = class_scores(model, make_inputs, found.classes, found.num_classes, score, batch_size)
    after = as_float64(after)
    # A class whose score is exactly 0 (a softmax that underflowed) has no confidence to drop: 0, not 0 / 0
    # (torchcam's ``/ (Y + 1e-7)`` gives the same 0 there).
    drop = torch.where(before != 0, (before - after).clamp_min(0) / before, torch.zeros_like(before))
    return torch.stack([drop, (after > before).double(), after - before], dim=1)


def _check_normalize(normalize: NormalizeMode | None) -> NormalizeMode | None:
    return check_choice(normalize, "normalize", ("minmax", "max", None))


def confidence_change(
    maps: Tensor,
    labels: Tensor,
    *,
    images: Tensor,
    model: Model,
    normalize: NormalizeMode | None = "minmax",
    score: ScoreMode = "softmax",
    batch_size: int = 64,
    reduction: Reduction = "mean",
    classes: Tensor | None = None,
) -> ConfidenceChangeResult:
    r"""Average Drop, Increase in Confidence (Grad-CAM++) and the confidence change on map-masked images.

    For a trial (image ``x``, class ``k``, map ``m`` normalised to ``[0, 1]``), ``Y = f_k(x)`` and
    ``O = f_k(x \odot m)`` (the map multiplies every channel). Over the ``P`` trials:

    ```latex
    \mathrm{AverageDrop} = \frac{1}{P}\sum \frac{\max(0, Y - O)}{Y}, \quad
    \mathrm{Increase} = \frac{1}{P}\sum \mathbb{1}[O > Y], \quad
    \mathrm{Change} = \frac{1}{P}\sum (O - Y).
    ```

    Grad-CAM++ reports the first two in percent (here fractions; the drop exceeds 1 only for negative
    scores, so use ``"softmax"`` or ``"sigmoid"`` with it). torchcam's ``ClassificationMetric`` computes the
    same with ``max(0, Y - O) / (Y + 1e-7)``; pytorch-grad-cam's ``CamMultImageConfidenceChange`` is
    ``Change`` per trial (its ``DropInConfidence`` is ``max(0, Y - O)`` without the division). Both peers
    score one class per image (the top-1 or a target); here every present class is scored.

    Args:
        maps: class activation maps ``(B, K, H, W)`` at the image size, floating point, finite.
        labels: multi-hot labels ``(B, K)`` choosing the trials.
        images: the model's inputs ``(B, C, H, W)``, as in [`deletion_insertion`][hiercam.deletion_insertion].
        model: the classifier, as in [`deletion_insertion`][hiercam.deletion_insertion].
        score: ``"softmax"`` (default), ``"sigmoid"`` or ``"logit"``.
        batch_size: masked images per forward pass.
        reduction: ``"mean"`` over trials, or ``"none"`` per trial.
        normalize: how maps are brought to ``[0, 1]`` with [`normalize_maps`][hiercam.normalize_maps]:
            ``"minmax"`` (the peers' convention, default), ``"max"``, or ``None`` for maps already in
            ``[0, 1]``.
        classes: ``(B, K)`` integer indices into the model's outputs, one per map (``classes[b, k]`` is the
            class that map ``k`` of image ``b`` explains, e.g. an extractor's ``cam.classes`` after a
            ``top_k`` call), for maps of chosen classes of a big model; ``None`` (default): map ``k`` is class
            ``k`` and the model returns ``K`` scores.

    Returns:
        ``ConfidenceChangeResult(average_drop, increase, change)``, float64 on the CPU: 0-dim means (NaN
        without any trial) or ``(P,)``.

    Raises:
        TypeError, ValueError: as [`deletion_insertion`][hiercam.deletion_insertion], an unknown
            ``normalize``, and with ``normalize=None`` maps outside ``[0, 1]`` (a value check).

    Examples:
        >>> import torch
        >>> model = lambda x: x.sum((2, 3))  # class k's logit: the sum of channel k
        >>> maps = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]], [[1.0, 1.0], [1.0, 0.0]]]])
        >>> result = confidence_change(maps, torch.tensor([[1, 1]]), images=torch.ones(1, 2, 2, 2),
        ...                            model=model, score="logit", reduction="none")
        >>> result.average_drop, result.change
        (tensor([0.7500, 0.2500], dtype=torch.float64), tensor([-3., -1.], dtype=torch.float64))
    """
    mode, batch_size = check_common(model, score, batch_size)
    normalize = _check_normalize(normalize)
    reduction = check_reduction(reduction)
    values = reduce_trials(
        _confidence_update(model, maps, labels, images, normalize, mode, batch_size, classes), reduction
    ).cpu()
    return ConfidenceChangeResult(values[..., 0], values[..., 1], values[..., 2])


class ConfidenceChange(MeanMetric):
    """Streaming Average Drop / Increase in Confidence / confidence change: means over every trial seen.

    See [`confidence_change`][hiercam.confidence_change], which shares the kernel.

    Args:
        model: the classifier (a plain attribute, not a submodule).
        normalize: ``"minmax"``, ``"max"`` or ``None`` (see [`confidence_change`][hiercam.confidence_change]).
        score: ``"softmax"``, ``"sigmoid"`` or ``"logit"``.
        batch_size: masked images per forward pass.
        sync_on_compute: sum the states across processes in ``compute``.

    Examples:
        >>> import torch
        >>> metric = ConfidenceChange(lambda x: x.sum((2, 3)), score="logit")
        >>> maps = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
        >>> metric.update(maps, torch.tensor([[1]]), images=torch.ones(1, 1, 2, 2))
        >>> metric.compute().average_drop
        tensor(0.7500, dtype=torch.float64)
    """

    def __init__(
        self,
        model: Model,
        *,
        normalize: NormalizeMode | None = "minmax",
        score: ScoreMode = "softmax",
        batch_size: int = 64,
        sync_on_compute: bool = True,
    ) -> None:
        super().__init__(model, score=score, batch_size=batch_size, sync_on_compute=sync_on_compute)
        self._add_states(3)
        self.normalize = _check_normalize(normalize)

    def update(self, maps: Tensor, labels: Tensor, *, images: Tensor, classes: Tensor | None = None) -> None:
        """Add a batch; arguments as in [`confidence_change`][hiercam.confidence_change]."""
        options = (self.normalize, self.score, self.batch_size, classes)
        self._add(_confidence_update(self.model, maps, labels, images, *options))

    def forward(
        self, maps: Tensor, labels: Tensor, *, images: Tensor, classes: Tensor | None = None
    ) -> ConfidenceChangeResult:
        """The figures of this batch alone, which is also added to the state."""
        result: ConfidenceChangeResult = super().forward(maps, labels, images=images, classes=classes)
        return result

    def _compute(self) -> ConfidenceChangeResult:
        means = self._means()
        return ConfidenceChangeResult(means[0], means[1], means[2])

    def compute(self) -> ConfidenceChangeResult:
        """Means over every trial since ``reset`` (NaN before any), float64 0-dim tensors."""
        result: ConfidenceChangeResult = super().compute()
        return result

    def _options(self) -> dict[str, object]:
        return {"normalize": self.normalize, "score": self.score}

    def extra_repr(self) -> str:
        """The options, shown by ``repr``."""
        return f"normalize={self.normalize!r}, score={self.score!r}, batch_size={self.batch_size}"
