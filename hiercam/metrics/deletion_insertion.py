"""Deletion and insertion (Petsiuk et al., "RISE", BMVC 2018): does a map point at what the model uses?

Pixels are replaced by a baseline (deletion) or restored from it (insertion) in decreasing order of the map,
and the area under the class-score curve is reported (deletion: lower is better; insertion: higher is
better).

The conventions of the faithfulness metrics (this one, [`confidence_change`][hiercam.confidence_change] and
[`road`][hiercam.road]): every (image, class) pair with ``labels[b, k] = 1`` is one *trial*; the changed
images of all trials of a batch go through the model together, in chunks of ``batch_size``. The class score
is the softmax probability by default (``score="sigmoid"`` for multi-label models, ``"logit"`` for the raw
output). Figures are means over trials, accumulated over the whole dataset by the streaming classes, NaN with
no trial.

[`deletion_insertion`][hiercam.deletion_insertion] and [`DeletionInsertion`][hiercam.DeletionInsertion] share
the private kernel ``_deletion_insertion_update`` (the torchmetrics pattern); the trials, the model's scores
and the mean states are in ``hiercam.metrics._perturb``.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from hiercam._validation import check_finite, check_int, format_shape
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

__all__ = [
    "Baseline",
    "DeletionInsertionResult",
    "deletion_insertion",
    "DeletionInsertion",
]

Baseline = Literal["zeros", "blur"] | Tensor


class DeletionInsertionResult(NamedTuple):
    """Areas under the deletion and insertion curves, float64: 0-dim means, or ``(P,)`` per trial."""

    deletion: Tensor
    insertion: Tensor


# --------------------------------------------------------------------------------------------- helpers
def _blur(images: Tensor) -> Tensor:
    """RISE's blur: an 11x11 kernel made by ``scipy.ndimage.gaussian_filter`` (sigma 5) of a unit impulse."""
    from scipy.ndimage import gaussian_filter  # imported here: SciPy is slow to import

    impulse = torch.zeros(11, 11, dtype=torch.float64)
    impulse[5, 5] = 1.0
    kernel = torch.from_numpy(gaussian_filter(impulse.numpy(), 5)).to(images)
    channels = images.shape[1]
    weight = kernel.expand(channels, 1, 11, 11)
    return F.conv2d(images, weight, padding=5, groups=channels)


def _check_baseline(baseline: object) -> Baseline:
    if isinstance(baseline, Tensor):
        if baseline.is_complex():
            raise TypeError(f"`baseline` must be a real tensor, got dtype {baseline.dtype}")
        return check_finite(baseline, "baseline")
    if isinstance(baseline, str) and baseline in ("zeros", "blur"):
        return baseline  # type: ignore[return-value]
    raise ValueError(f"`baseline` must be 'zeros', 'blur' or a tensor, got {baseline!r}")


def _baseline_images(images: Tensor, baseline: Baseline) -> Tensor:
    if isinstance(baseline, Tensor):
        try:
            return torch.broadcast_to(baseline.detach().to(images), images.shape)
        except RuntimeError:
            raise ValueError(
                f"`baseline` must broadcast to the images {format_shape(images.shape)}, "
                f"got {format_shape(baseline.shape)}"
            ) from None
    if baseline == "blur":
        return _blur(images.detach())
    return torch.zeros_like(images)


def _step_counts(pixels: int, steps: int) -> list[int]:
    """Pixels changed at each point: ``0, s, 2s, ..., pixels`` with ``s = ceil(pixels / steps)``."""
    size = -(-pixels // steps)
    return [*range(0, pixels, size), pixels]


# ------------------------------------------------------------------------------------- deletion / insertion
def _deletion_insertion_update(
    model: Model,
    maps: Tensor,
    labels: Tensor,
    images: Tensor,
    steps: int,
    baseline: Baseline,
    score: ScoreMode,
    batch_size: int,
    classes: Tensor | None = None,
) -> Tensor:
    """Per-trial areas ``(P, 2)`` float64 (columns: deletion, insertion), on the images' device (CPU for MPS).

    Nothing is read back to the host but the number of trials (``trials``: it sizes the work).
    """
    found = trials(maps, labels, images, classes)
    substrate = _baseline_images(images.detach(), baseline)  # checked even without trials
    count = int(found.images.shape[0])
    if count == 0:
        return torch.zeros((0, 2), dtype=torch.float64)
    batch, channels, height, width = images.shape
    pixels = height * width
    counts = _step_counts(pixels, steps)
    points = len(counts)
    order = torch.argsort(found.maps.reshape(count, -1), dim=1, descending=True, stable=True)
    ranks = torch.empty_like(order, dtype=torch.int32).scatter_(  # int32: half the memory of (P, H * W)
        1, order, torch.arange(pixels, device=order.device, dtype=torch.int32).expand_as(order)
    )
    # jobs, trial-major: deletion, then insertion, at the points 1..n-2; the ends are the unchanged image and
    # the baseline image, scored once per image for all its trials
    device = images.device
    deleted = torch.tensor(counts[1:-1], device=device, dtype=torch.long)
    inserted = torch.tensor(counts[1:-1], device=device, dtype=torch.long)
    per_trial = torch.cat([deleted, inserted])
    kinds = torch.cat([torch.zeros_like(deleted), torch.ones_like(inserted)]).bool()
    jobs = per_trial.numel()
    job_trial = torch.arange(count, device=device).repeat_interleave(jobs)
    job_count = per_trial.repeat(count)
    job_insert = kinds.repeat(count)
    flat_images, flat_substrate = (
        images.detach().reshape(batch, channels, -1),
        substrate.reshape(batch, channels, -1),
    )

    def make_inputs(rows: Tensor) -> Tensor:
        trial = job_trial[rows]
        first = ranks[trial] < job_count[rows, None]  # the pixels changed so far
        original = torch.where(job_insert[rows, None], first, ~first)
        image = found.images[trial]
        mixed = torch.where(original[:, None], flat_images[image], flat_substrate[image])
        return mixed.reshape(-1, channels, height, width)

    original_scores = trial_scores(model, images, found, score, batch_size)
    baseline_scores = trial_scores(model, substrate, found, score, batch_size, "the perturbed images")
    perturbed = class_scores(
        model, make_inputs, found.classes[job_trial], found.num_classes, score, batch_size
    ).reshape(count, jobs)
    first, last = original_scores[:, None], baseline_scores[:, None]
    deletion = torch.cat([first, perturbed[:, : points - 2], last], dim=1)
    insertion = torch.cat([last, perturbed[:, points - 2 :], first], dim=1)
    curves = as_float64(torch.stack([deletion, insertion], dim=1))
    fractions = torch.tensor(counts, dtype=torch.float64).to(curves.device) / pixels
    return torch.trapezoid(curves, fractions, dim=2)


def _check_deletion_options(steps: int, baseline: object) -> tuple[int, Baseline]:
    return check_int(steps, "steps", minimum=1), _check_baseline(baseline)


def deletion_insertion(
    maps: Tensor,
    labels: Tensor,
    *,
    images: Tensor,
    model: Model,
    steps: int = 20,
    baseline: Baseline = "zeros",
    score: ScoreMode = "softmax",
    batch_size: int = 64,
    reduction: Reduction = "mean",
    classes: Tensor | None = None,
) -> DeletionInsertionResult:
    r"""Deletion and insertion areas (RISE, Petsiuk et al. 2018) for every present class of a batch.

    For a trial (image ``x``, class ``k``, map ``m``), the ``N = H * W`` pixels are ranked by decreasing
    ``m`` (ties in row-major order). With ``s = ceil(N / steps)`` and the counts ``n_i = 0, s, 2s, ..., N``,
    the deletion curve is the class score ``f_k`` of ``x`` with its first ``n_i`` pixels (all channels)
    replaced by the baseline ``x_0``, the insertion curve that of ``x_0`` with its first ``n_i`` pixels
    restored from ``x``. Each area is the trapezoidal integral over the fraction changed ``n_i / N``:

    ```latex
    \mathrm{Del} = \int_0^1 f_k\big(x \odot (1 - M_t) + x_0 \odot M_t\big)\,dt, \qquad
    \mathrm{Ins} = \int_0^1 f_k\big(x_0 \odot (1 - M_t) + x \odot M_t\big)\,dt,
    ```

    ``M_t`` the mask of the top fraction ``t`` of pixels. A faithful map gives a low deletion and a high
    insertion area. This is torchcam's ``DeletionInsertionMetric`` (same counts, ranking and integral),
    scoring every present class instead of the top-1 class. RISE itself steps one image row (224 pixels) at
    a time, uses zeros for deletion and its blur for insertion, and divides the plain sum by the number of
    steps; the figures agree when ``N`` is a multiple of ``steps``.

    Args:
        maps: class activation maps ``(B, K, H, W)`` at the image size, floating point, finite.
        labels: multi-hot labels ``(B, K)`` choosing the trials (usually the ground truth).
        images: the model's inputs ``(B, C, H, W)`` (already normalised as the model expects), on the
            device where the model runs; ``maps`` are moved there.
        model: a classifier mapping ``(N, C, H, W)`` to ``(N, K)`` scores (an ``nn.Module``, any callable, or
            a hiercam ``TwoBranchNet``, whose ``mean_logits`` are used). It runs in eval mode under
            ``torch.inference_mode()``; the modules' ``training`` flags are restored after.
        steps: number of intervals of the curves (``>= 1``); ``steps + 1`` points when ``N`` is a multiple.
        baseline: ``"zeros"``, ``"blur"`` (RISE's: 11x11 Gaussian of sigma 5, zero padding) or a tensor that
            broadcasts to ``images`` (e.g. the per-channel mean ``(C, 1, 1)``).
        score: ``"softmax"`` probability (default), ``"sigmoid"`` (multi-label models) or raw ``"logit"``.
        batch_size: perturbed images per forward pass (memory: ``batch_size`` images at a time).
        reduction: ``"mean"`` over trials, or ``"none"`` for one value per trial in the row-major order of
            ``labels.nonzero()``.
        classes: ``(B, K)`` integer indices into the model's outputs, one per map (``classes[b, k]`` is the
            class that map ``k`` of image ``b`` explains, e.g. an extractor's ``cam.classes`` after a
            ``top_k`` call), for maps of chosen classes of a big model; ``None`` (default): map ``k`` is class
            ``k`` and the model returns ``K`` scores.

    Returns:
        ``DeletionInsertionResult(deletion, insertion)``, float64 on the CPU: 0-dim means (NaN without any
        trial) or ``(P,)``.

    Raises:
        TypeError: a tensor of the wrong type, a ``model`` that is not callable or does not return a tensor.
        ValueError: shapes disagree (``maps`` / ``images`` / ``labels``), an empty batch or class set, values
            that are not finite (``maps``, ``images``, a ``baseline`` tensor), a model output that is not
            ``(N, K)`` or whose scores are not finite (e.g. NaN on a fully deleted image; a value check), or
            an option out of range.

    Examples:
        >>> import torch
        >>> model = lambda x: torch.stack([x[:, 0, :, :2].sum((1, 2)), x[:, 0, :, 2:].sum((1, 2))], 1)
        >>> images = torch.ones(1, 1, 2, 4)
        >>> maps = torch.tensor([[[[4.0, 3.0, 0.0, 0.0], [2.0, 1.0, 0.0, 0.0]], [[0.0] * 4] * 2]])
        >>> result = deletion_insertion(maps, torch.tensor([[1, 0]]), images=images, model=model,
        ...                             steps=8, score="logit")
        >>> result.deletion, result.insertion
        (tensor(1., dtype=torch.float64), tensor(3., dtype=torch.float64))
    """
    mode, batch_size = check_common(model, score, batch_size)
    steps, baseline = _check_deletion_options(steps, baseline)
    reduction = check_reduction(reduction)
    areas = _deletion_insertion_update(
        model, maps, labels, images, steps, baseline, mode, batch_size, classes
    )
    values = reduce_trials(areas, reduction).cpu()
    return DeletionInsertionResult(values[..., 0], values[..., 1])


class DeletionInsertion(MeanMetric):
    """Streaming deletion / insertion areas: means over every trial seen.

    See [`deletion_insertion`][hiercam.deletion_insertion], which shares the kernel.

    Args:
        model: the classifier, as in [`deletion_insertion`][hiercam.deletion_insertion] (not registered as
            a submodule: the metric's ``state_dict`` holds only its sums).
        steps: number of intervals of the curves, as in [`deletion_insertion`][hiercam.deletion_insertion].
        baseline: ``"zeros"``, ``"blur"`` or a tensor, see [`deletion_insertion`][hiercam.deletion_insertion].
        score: ``"softmax"``, ``"sigmoid"`` or ``"logit"``.
        batch_size: perturbed images per forward pass.
        sync_on_compute: sum the states across processes in ``compute``.

    Examples:
        >>> import torch
        >>> model = lambda x: x.sum((2, 3))  # class k's logit: the sum of channel k
        >>> metric = DeletionInsertion(model, steps=4, score="logit")
        >>> labels = torch.tensor([[1, 0], [1, 1]])
        >>> metric.update(torch.rand(2, 2, 4, 4), labels, images=torch.ones(2, 2, 4, 4))
        >>> metric.compute().deletion
        tensor(8., dtype=torch.float64)
    """

    def __init__(
        self,
        model: Model,
        *,
        steps: int = 20,
        baseline: Baseline = "zeros",
        score: ScoreMode = "softmax",
        batch_size: int = 64,
        sync_on_compute: bool = True,
    ) -> None:
        super().__init__(model, score=score, batch_size=batch_size, sync_on_compute=sync_on_compute)
        self._add_states(2)
        self.steps, self.baseline = _check_deletion_options(steps, baseline)

    def update(self, maps: Tensor, labels: Tensor, *, images: Tensor, classes: Tensor | None = None) -> None:
        """Add a batch; arguments as in [`deletion_insertion`][hiercam.deletion_insertion]."""
        self._add(
            _deletion_insertion_update(
                self.model,
                maps,
                labels,
                images,
                self.steps,
                self.baseline,
                self.score,
                self.batch_size,
                classes,
            )
        )

    def forward(
        self, maps: Tensor, labels: Tensor, *, images: Tensor, classes: Tensor | None = None
    ) -> DeletionInsertionResult:
        """The areas of this batch alone, which is also added to the state."""
        result: DeletionInsertionResult = super().forward(maps, labels, images=images, classes=classes)
        return result

    def _compute(self) -> DeletionInsertionResult:
        means = self._means()
        return DeletionInsertionResult(means[0], means[1])

    def compute(self) -> DeletionInsertionResult:
        """Mean areas over every trial since ``reset`` (NaN before any), float64 0-dim tensors."""
        result: DeletionInsertionResult = super().compute()
        return result

    def _options(self) -> dict[str, object]:
        kind = "tensor" if isinstance(self.baseline, Tensor) else self.baseline
        return {"steps": self.steps, "baseline": kind, "score": self.score}

    def extra_repr(self) -> str:
        """The options, shown by ``repr``."""
        kind = "tensor" if isinstance(self.baseline, Tensor) else repr(self.baseline)
        return f"steps={self.steps}, baseline={kind}, score={self.score!r}, batch_size={self.batch_size}"
