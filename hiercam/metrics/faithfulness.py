"""Faithfulness of maps to the model: deletion / insertion (RISE) and the confidence change on masked images.

Both ask whether a map points at what the model uses, by scoring the model on images changed according to
the map. Every (image, class) pair with ``labels[b, k] = 1`` is one *trial*; the changed images of all trials
of a batch go through the model together, in chunks of ``batch_size``. The class score is the softmax
probability by default (``score="sigmoid"`` for multi-label models, ``"logit"`` for the raw output). Figures
are means over trials, accumulated over the whole dataset by the streaming classes, NaN with no trial.

* [`deletion_insertion`][hiercam.deletion_insertion] (Petsiuk et al., "RISE", BMVC 2018): pixels are
  replaced by a baseline (deletion) or restored from it (insertion) in decreasing order of the map, and the
  area under the class-score curve is reported (deletion: lower is better; insertion: higher is better).
* [`confidence_change`][hiercam.confidence_change] (Chattopadhay et al., "Grad-CAM++", WACV 2018): the
  image multiplied by its normalised map, scored against the original: Average Drop, Increase in Confidence,
  and pytorch-grad-cam's ``CamMultImageConfidenceChange``.

Each function and its class share the private ``_..._update`` kernels (the torchmetrics pattern).
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from hiercam._validation import check_choice, check_int, format_shape
from hiercam.maps import NormalizeMode, normalize_maps
from hiercam.metrics._base import Metric
from hiercam.metrics._perturb import Model, ScoreMode, check_common, class_scores, trial_scores, trials

__all__ = [
    "Baseline",
    "DeletionInsertionResult",
    "deletion_insertion",
    "DeletionInsertion",
    "ConfidenceResult",
    "confidence_change",
    "ConfidenceChange",
]

Baseline = Literal["zeros", "blur"] | Tensor
Reduction = Literal["mean", "none"]


class DeletionInsertionResult(NamedTuple):
    """Areas under the deletion and insertion curves, float64: 0-dim means, or ``(P,)`` per trial."""

    deletion: Tensor
    insertion: Tensor


class ConfidenceResult(NamedTuple):
    """Confidence on the map-masked image against the original (float64, 0-dim means or ``(P,)``).

    Attributes:
        average_drop: ``max(0, Y - O) / Y`` (Grad-CAM++'s Average Drop, as a fraction: lower is better).
        increase: ``1[O > Y]`` (Increase in Confidence: higher is better).
        change: ``O - Y`` (pytorch-grad-cam's ``CamMultImageConfidenceChange``).
    """

    average_drop: Tensor
    increase: Tensor
    change: Tensor


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
        return baseline
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


def _reduce(values: Tensor, reduction: Reduction) -> Tensor:
    if reduction == "none":
        return values
    return values.mean(dim=0) if values.shape[0] else torch.full(values.shape[1:], torch.nan).double()


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
) -> Tensor:
    """Per-trial areas ``(P, 2)`` float64 (columns: deletion, insertion), on the CPU."""
    found = trials(maps, labels, images)
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
    # jobs, trial-major: deletion at points 1..n-1, then insertion at points 1..n-2 (the ends are shared)
    device = images.device
    deleted = torch.tensor(counts[1:], device=device)
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

    original_scores = trial_scores(model, images, found, maps.shape[1], score, batch_size)
    perturbed = class_scores(
        model, make_inputs, found.classes[job_trial], maps.shape[1], score, batch_size
    ).reshape(count, jobs)
    deletion = torch.cat([original_scores[:, None], perturbed[:, : points - 1]], dim=1)
    insertion = torch.cat([deletion[:, -1:], perturbed[:, points - 1 :], original_scores[:, None]], dim=1)
    fractions = torch.tensor(counts, dtype=torch.float64) / pixels
    curves = torch.stack([deletion, insertion], dim=1).cpu().double()  # float64 on the CPU (not on MPS)
    return torch.trapezoid(curves, fractions, dim=2)


def _check_deletion_options(steps: int, baseline: object) -> tuple[int, Baseline]:
    return check_int(steps, "steps", minimum=1), _check_baseline(baseline)


def _check_reduction(reduction: Reduction) -> Reduction:
    return check_choice(reduction, "reduction", ("mean", "none"))


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
            ``torch.no_grad()``; the modules' ``training`` flags are restored after.
        steps: number of intervals of the curves (``>= 1``); ``steps + 1`` points when ``N`` is a multiple.
        baseline: ``"zeros"``, ``"blur"`` (RISE's: 11x11 Gaussian of sigma 5, zero padding) or a tensor that
            broadcasts to ``images`` (e.g. the per-channel mean ``(C, 1, 1)``).
        score: ``"softmax"`` probability (default), ``"sigmoid"`` (multi-label models) or raw ``"logit"``.
        batch_size: perturbed images per forward pass (memory: ``batch_size`` images at a time).
        reduction: ``"mean"`` over trials, or ``"none"`` for one value per trial in the row-major order of
            ``labels.nonzero()``.

    Returns:
        ``DeletionInsertionResult(deletion, insertion)``, float64 on the CPU: 0-dim means (NaN without any
        trial) or ``(P,)``.

    Raises:
        TypeError: a tensor of the wrong type, a ``model`` that is not callable or does not return a tensor.
        ValueError: shapes disagree (``maps`` / ``images`` / ``labels``), an empty batch or class set, values
            that are not finite, a model output that is not ``(N, K)``, or an option out of range.

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
    reduction = _check_reduction(reduction)
    areas = _deletion_insertion_update(model, maps, labels, images, steps, baseline, mode, batch_size)
    values = _reduce(areas, reduction)
    return DeletionInsertionResult(values[..., 0], values[..., 1])


class _MeanMetric(Metric):
    """Sums of per-trial values and the number of trials; ``compute`` gives the means (NaN without trials)."""

    sums: Tensor
    count: Tensor

    def __init__(self, width: int, *, sync_on_compute: bool) -> None:
        super().__init__(sync_on_compute=sync_on_compute)
        self.add_state("sums", torch.zeros(width, dtype=torch.float64), "sum")
        self.add_state("count", torch.zeros((), dtype=torch.long), "sum")

    def _add(self, values: Tensor) -> None:
        self.sums = self.sums + values.sum(dim=0).to(self.sums.device)
        self.count = self.count + values.shape[0]

    def _means(self) -> Tensor:
        if int(self.count) == 0:
            return torch.full_like(self.sums, torch.nan)
        return self.sums / self.count


class DeletionInsertion(_MeanMetric):
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

    model: Model

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
        super().__init__(2, sync_on_compute=sync_on_compute)
        self.score, self.batch_size = check_common(model, score, batch_size)
        self.steps, self.baseline = _check_deletion_options(steps, baseline)
        self.__dict__["model"] = model  # a plain attribute: not a submodule, not in state_dict

    def update(self, maps: Tensor, labels: Tensor, *, images: Tensor) -> None:
        """Add a batch; arguments as in [`deletion_insertion`][hiercam.deletion_insertion]."""
        self._add(
            _deletion_insertion_update(
                self.model, maps, labels, images, self.steps, self.baseline, self.score, self.batch_size
            )
        )

    def forward(self, maps: Tensor, labels: Tensor, *, images: Tensor) -> DeletionInsertionResult:
        """The areas of this batch alone, which is also added to the state."""
        result: DeletionInsertionResult = super().forward(maps, labels, images=images)
        return result

    def _compute(self) -> DeletionInsertionResult:
        means = self._means()
        return DeletionInsertionResult(means[0], means[1])

    def compute(self) -> DeletionInsertionResult:
        """Mean areas over every trial since ``reset`` (NaN before any), float64 0-dim tensors."""
        result: DeletionInsertionResult = super().compute()
        return result

    def extra_repr(self) -> str:
        """The options, shown by ``repr``."""
        kind = "tensor" if isinstance(self.baseline, Tensor) else repr(self.baseline)
        return f"steps={self.steps}, baseline={kind}, score={self.score!r}, batch_size={self.batch_size}"


# --------------------------------------------------------------------------------------------- confidence
def _confidence_update(
    model: Model,
    maps: Tensor,
    labels: Tensor,
    images: Tensor,
    normalize: NormalizeMode | None,
    score: ScoreMode,
    batch_size: int,
) -> Tensor:
    """Per-trial ``(P, 3)`` float64 on the CPU: drop, increase, change."""
    found = trials(maps, labels, images)
    if found.images.shape[0] == 0:
        return torch.zeros((0, 3), dtype=torch.float64)
    weights = normalize_maps(found.maps, normalize).to(images.dtype)
    before = trial_scores(model, images, found, maps.shape[1], score, batch_size).cpu().double()

    def make_inputs(rows: Tensor) -> Tensor:
        return images.detach()[found.images[rows]] * weights[rows, None]

    after = class_scores(model, make_inputs, found.classes, maps.shape[1], score, batch_size).cpu().double()
    drop = (before - after).clamp_min(0) / before
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
) -> ConfidenceResult:
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

    Returns:
        ``ConfidenceResult(average_drop, increase, change)``, float64 on the CPU: 0-dim means (NaN without
        any trial) or ``(P,)``.

    Raises:
        TypeError, ValueError: as [`deletion_insertion`][hiercam.deletion_insertion], and an unknown
            ``normalize``.

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
    reduction = _check_reduction(reduction)
    values = _reduce(_confidence_update(model, maps, labels, images, normalize, mode, batch_size), reduction)
    return ConfidenceResult(values[..., 0], values[..., 1], values[..., 2])


class ConfidenceChange(_MeanMetric):
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

    model: Model

    def __init__(
        self,
        model: Model,
        *,
        normalize: NormalizeMode | None = "minmax",
        score: ScoreMode = "softmax",
        batch_size: int = 64,
        sync_on_compute: bool = True,
    ) -> None:
        super().__init__(3, sync_on_compute=sync_on_compute)
        self.score, self.batch_size = check_common(model, score, batch_size)
        self.normalize = _check_normalize(normalize)
        self.__dict__["model"] = model

    def update(self, maps: Tensor, labels: Tensor, *, images: Tensor) -> None:
        """Add a batch; arguments as in [`confidence_change`][hiercam.confidence_change]."""
        self._add(
            _confidence_update(self.model, maps, labels, images, self.normalize, self.score, self.batch_size)
        )

    def forward(self, maps: Tensor, labels: Tensor, *, images: Tensor) -> ConfidenceResult:
        """The figures of this batch alone, which is also added to the state."""
        result: ConfidenceResult = super().forward(maps, labels, images=images)
        return result

    def _compute(self) -> ConfidenceResult:
        means = self._means()
        return ConfidenceResult(means[0], means[1], means[2])

    def compute(self) -> ConfidenceResult:
        """Means over every trial since ``reset`` (NaN before any), float64 0-dim tensors."""
        result: ConfidenceResult = super().compute()
        return result

    def extra_repr(self) -> str:
        """The options, shown by ``repr``."""
        return f"normalize={self.normalize!r}, score={self.score!r}, batch_size={self.batch_size}"
