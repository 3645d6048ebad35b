"""ROAD: Remove And Debias (Rong et al., ICML 2022), with the noisy linear imputation.

A fraction ``p`` of the pixels is removed, the most relevant first (MoRF) or the least relevant first
(LeRF), and *imputed* from their neighbours rather than set to a constant, so that the model cannot read the
shape of the removed region (the "class information leakage" of plain deletion). The model's class score on
the imputed image is reported: with a faithful map it falls fast under MoRF and stays high under LeRF.

The imputation is the one of the ROAD paper's code (also in pytorch-grad-cam's ``NoisyLinearImputer``): each
removed pixel equals the weighted mean of its 8 neighbours (weights 1/6 on the sides, 1/12 on the diagonals,
only neighbours inside the image), a sparse linear system solved exactly with ``scipy.sparse.linalg.spsolve``,
plus Gaussian noise of standard deviation ``noise`` (0.01 by default) on the imputed values. The systems of
each image is built with vectorised NumPy and solved on its own (SciPy's SuperLU was 1.3x to 7x slower on
one block-diagonal system for a chunk). The solve runs on the CPU; the rest runs on the images' device.

[`road`][hiercam.road] and [`ROAD`][hiercam.ROAD] share the private kernel ``_road_update``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, NamedTuple

import numpy as np
import torch
from torch import Tensor

from hiercam._validation import check_finite, check_float, check_generator, check_tensor, is_real, type_name
from hiercam.metrics._perturb import (
    MeanMetric,
    Model,
    Reduction,
    ScoreMode,
    check_common,
    check_reduction,
    class_scores,
    reduce_trials,
    trials,
)

__all__ = ["ROADResult", "road", "ROAD", "noisy_linear_impute"]

Order = Literal["morf", "lerf"]
_NEIGHBOURS = (  # (row offset, column offset, weight), as in the ROAD code
    (1, 1, 1 / 12),
    (0, 1, 1 / 6),
    (-1, 1, 1 / 12),
    (1, -1, 1 / 12),
    (0, -1, 1 / 6),
    (-1, -1, 1 / 12),
    (1, 0, 1 / 6),
    (-1, 0, 1 / 6),
)


class ROADResult(NamedTuple):
    """Class scores on imputed images, float64 on the CPU: ``(T,)`` means per percentage, or ``(P, T)``.

    Attributes:
        morf: most relevant removed first (lower is better).
        lerf: least relevant removed first (higher is better).
    """

    morf: Tensor
    lerf: Tensor


# --------------------------------------------------------------------------------------------- imputation
def noisy_linear_impute(
    images: Tensor, removed: Tensor, noise: float = 0.01, generator: torch.Generator | None = None
) -> Tensor:
    """Fill the removed pixels of images with ROAD's noisy linear imputation.

    Args:
        images: images ``(N, C, H, W)``, floating point, any device.
        removed: boolean ``(N, H, W)``, ``True`` where a pixel (all its channels) is to be imputed.
        noise: standard deviation of the Gaussian noise added to imputed values (0 for none).
        generator: the random generator of the noise (CPU), for reproducible results.

    Returns:
        A new tensor like ``images``: kept pixels unchanged, removed ones imputed.

    Raises:
        TypeError: ``images`` is not floating point or ``removed`` not boolean.
        ValueError: shapes disagree, ``noise`` is negative or not finite, ``images`` hold NaN or infinite
            values (a value check), or an image has every pixel removed (nothing to impute from).

    Examples:
        >>> import torch
        >>> images = torch.tensor([[[[0.0, 5.0, 2.0]]]])
        >>> noisy_linear_impute(images, torch.tensor([[[False, True, False]]]), noise=0.0)
        tensor([[[[0., 1., 2.]]]])
    """
    check_tensor(images, "images", dims="N, C, H, W", floating=True)
    check_tensor(removed, "removed", dims="N, H, W")
    if removed.dtype != torch.bool:
        raise TypeError(f"`removed` must be a boolean tensor, got dtype {removed.dtype}")
    if removed.shape != images.shape[:1] + images.shape[2:]:
        raise ValueError(
            f"`removed` must have shape (N, H, W) = {tuple(images.shape[:1] + images.shape[2:])}, "
            f"got {tuple(removed.shape)}"
        )
    noise_value = _check_noise(noise)
    generator = check_generator(generator)
    check_finite(images, "images")
    if removed.numel() and bool(removed.flatten(1).all(dim=1).any()):
        raise ValueError(
            "`removed` must keep at least one pixel of every image: the imputation starts from kept pixels, "
            "got an image with every pixel removed"
        )
    return _impute(images, removed, noise_value, generator)


def _impute(images: Tensor, removed: Tensor, noise: float, generator: torch.Generator | None) -> Tensor:
    """Images ``(N, C, H, W)`` with the ``removed`` ``(N, H, W)`` pixels imputed, one solve per image."""
    channels = images.shape[1]
    result = images.detach().clone()
    masks = removed.detach().cpu().numpy()
    values = images.detach().cpu().double().numpy()
    for index in range(images.shape[0]):
        unknown = np.flatnonzero(masks[index])
        if unknown.size == 0:
            continue
        filled = torch.from_numpy(_solve(values[index], masks[index])).to(torch.float32)
        if noise:
            filled = filled + noise * torch.randn(filled.shape, generator=generator)
        flat = result[index].reshape(channels, -1)
        flat[:, torch.from_numpy(unknown).to(flat.device)] = filled.T.to(flat)
    return result


def _solve(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The imputed values ``(U, C)`` of the ``U`` pixels of ``mask`` ``(H, W)`` in an image ``(C, H, W)``."""
    from scipy.sparse import csc_matrix  # imported here: SciPy is slow to import
    from scipy.sparse.linalg import spsolve

    channels, height, width = image.shape
    flat_mask = mask.reshape(-1)
    pixels = image.reshape(channels, -1).T
    unknown = np.flatnonzero(flat_mask)
    variable = np.full(flat_mask.size, -1, dtype=np.int64)
    variable[unknown] = np.arange(unknown.size)
    row, col = np.divmod(unknown, width)
    rows, cols, weights = [np.arange(unknown.size)], [np.arange(unknown.size)], []
    diagonal = np.zeros(unknown.size)
    rhs = np.zeros((unknown.size, channels))
    for d_row, d_col, weight in _NEIGHBOURS:
        n_row, n_col = row + d_row, col + d_col
        inside = (n_row >= 0) & (n_row < height) & (n_col >= 0) & (n_col < width)
        diagonal[inside] -= weight
        equation = np.flatnonzero(inside)
        neighbour = n_row[inside] * width + n_col[inside]
        free = flat_mask[neighbour]
        rows.append(equation[free])
        cols.append(variable[neighbour[free]])
        weights.append(np.full(int(free.sum()), weight))
        rhs[equation[~free]] -= weight * pixels[neighbour[~free]]
    system = csc_matrix(
        (np.concatenate([diagonal, *weights]), (np.concatenate(rows), np.concatenate(cols))),
        shape=(unknown.size, unknown.size),
    )
    return np.asarray(spsolve(system, rhs)).reshape(unknown.size, channels)


# --------------------------------------------------------------------------------------------- kernels
def _removed_count(percentage: float, pixels: int) -> int:
    """The number of pixels removed at ``percentage`` of ``pixels``: ``p / 100 * H W`` rounded half up."""
    return math.floor(percentage / 100 * pixels + 0.5)


def _removed(maps: Tensor, percentage: float, order: Order) -> Tensor:
    """Pixels removed at ``percentage`` from maps ``(P, H, W)``: exactly ``_removed_count`` per map.

    One ranking per map, most relevant first, ties in raster order (a stable sort): MoRF removes its first
    ``n`` pixels, LeRF its last ``n``.
    """
    flat = maps.reshape(maps.shape[0], -1).double()
    pixels = flat.shape[1]
    count = _removed_count(percentage, pixels)
    ranking = torch.argsort(flat, dim=1, descending=True, stable=True)
    chosen = ranking[:, :count] if order == "morf" else ranking[:, pixels - count :]
    removed = torch.zeros(flat.shape, dtype=torch.bool, device=flat.device)
    return removed.scatter_(1, chosen, True).reshape(maps.shape)


def _check_leaves_pixels(percentages: list[float], height: int, width: int) -> None:
    """Refuse a percentage that removes every pixel: the imputation has no kept pixel to start from."""
    for index, percentage in enumerate(percentages):
        if _removed_count(percentage, height * width) >= height * width:
            raise ValueError(
                f"`percentages` value {percentage} removes all {height * width} pixels of the {height} x "
                f"{width} maps (percentages[{index}]): ROAD imputes removed pixels from kept ones; use a "
                "smaller percentage or larger maps"
            )


def _road_update(
    model: Model,
    maps: Tensor,
    labels: Tensor,
    images: Tensor,
    percentages: list[float],
    noise: float,
    generator: torch.Generator | None,
    score: ScoreMode,
    batch_size: int,
    classes: Tensor | None = None,
) -> Tensor:
    """Per-trial class scores ``(P, 2, T)`` float64 on the CPU (MoRF, LeRF) after imputation."""
    found = trials(maps, labels, images, classes)
    _check_leaves_pixels(percentages, int(maps.shape[2]), int(maps.shape[3]))
    count = int(found.images.shape[0])
    steps = len(percentages)
    if count == 0:
        return torch.zeros((0, 2, steps), dtype=torch.float64)
    # jobs, trial-major: (order, percentage) pairs
    settings: list[tuple[Order, float]] = [(order, p) for order in ("morf", "lerf") for p in percentages]
    job_trial = torch.arange(count, device=images.device).repeat_interleave(len(settings))
    job_setting = torch.arange(len(settings)).repeat(count)
    local_maps = found.maps.cpu()  # the removed pixels are chosen on the CPU, where the solve runs

    def make_inputs(rows: Tensor) -> Tensor:
        trial = job_trial[rows]
        local_trial, setting = trial.cpu(), job_setting[rows.cpu()]
        masks = torch.empty((rows.numel(), *maps.shape[2:]), dtype=torch.bool)
        for index in torch.unique(setting).tolist():  # a loop over percentages, never over classes
            chosen = setting == index
            order, percentage = settings[index]
            masks[chosen] = _removed(local_maps[local_trial[chosen]], percentage, order)
        return _impute(images.detach()[found.images[trial]], masks, noise, generator)

    scores = class_scores(model, make_inputs, found.classes[job_trial], found.num_classes, score, batch_size)
    return scores.cpu().double().reshape(count, 2, steps)


def _check_percentages(percentages: object) -> tuple[list[float], bool]:
    single = is_real(percentages)
    values: object = [percentages] if single else percentages
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise TypeError(
            f"`percentages` must be a number or a sequence of numbers, got {type_name(percentages)}"
        )
    if not values:
        raise ValueError("`percentages` must hold at least one value, got an empty sequence")
    checked = []
    for index, value in enumerate(values):
        name = "percentages" if single else f"percentages[{index}]"
        number = check_float(value, name)
        if not 0 < number < 100:
            raise ValueError(f"`{name}` must be between 0 and 100 (exclusive), got {number}")
        checked.append(number)
    return checked, single


def _check_noise(noise: object) -> float:
    return check_float(noise, "noise", minimum=0.0)


def road(
    maps: Tensor,
    labels: Tensor,
    *,
    images: Tensor,
    model: Model,
    percentages: float | Sequence[float] = (10, 20, 30, 40, 50, 60, 70, 80, 90),
    noise: float = 0.01,
    generator: torch.Generator | None = None,
    score: ScoreMode = "softmax",
    batch_size: int = 64,
    reduction: Reduction = "mean",
    classes: Tensor | None = None,
) -> ROADResult:
    r"""ROAD (Rong et al., ICML 2022): class scores after removing and imputing a share of the pixels.

    For a trial (image ``x``, class ``k``, map ``m``) and a percentage ``p``, the ``H W`` pixels are ranked by
    ``m``, most relevant first, **ties in raster order** (a stable sort); MoRF removes the first
    ``n = floor(p / 100 * H W + 1/2)`` pixels of that ranking and LeRF the last ``n``, so exactly ``n`` pixels
    go whatever the ties (a constant map at 20 % loses 20 % of its pixels, and MoRF and LeRF remove
    different ones). The removed pixels are imputed (module docstring) and the score ``f_k`` of the imputed
    image is reported. The paper
    plots these against ``p``; ``(mean LeRF - mean MoRF) / 2`` over the percentages is pytorch-grad-cam's
    ``ROADCombined`` up to the subtraction of the original score, which cancels.

    **pytorch-grad-cam.** Its ``ROADMostRelevantFirst(percentile=q)`` removes the pixels at or above the
    ``q``-th percentile of the map (a threshold rule), i.e. about ``100 - q`` % of them: on maps without
    ties it removes the same pixels as MoRF here at ``p = 100 - q`` (its interpolated percentile can count
    one pixel more or less than ``n``), and ``ROADLeastRelevantFirst(q)`` those of LeRF. On tied values the
    threshold rule removes every pixel at the threshold: a constant map loses all its pixels at any
    percentile, and MoRF equals LeRF; the ranking here removes exactly ``n``. It also returns the score
    *change* against the original image where this returns the score itself (the paper's quantity). Here
    ``p`` is always the share removed, as on the paper's axes.

    Args:
        maps: class activation maps ``(B, K, H, W)`` at the image size, floating point, finite; used as
            given (only the order of their values matters).
        labels: multi-hot labels ``(B, K)`` choosing the trials.
        images: the model's inputs ``(B, C, H, W)``, as in [`deletion_insertion`][hiercam.deletion_insertion].
        model: the classifier, as in [`deletion_insertion`][hiercam.deletion_insertion].
        score: ``"softmax"`` (default), ``"sigmoid"`` or ``"logit"``.
        batch_size: imputed images per forward pass (and per block-diagonal solve).
        percentages: share(s) of pixels removed, in percent, each strictly between 0 and 100: a number gives
            results without the ``T`` dimension.
        noise: standard deviation of the imputation noise (the ROAD default 0.01; 0 for none).
        generator: CPU random generator of the noise, for reproducible figures.
        reduction: ``"mean"`` over trials, or ``"none"`` per trial (row-major order of ``labels.nonzero()``).
        classes: ``(B, K)`` integer indices into the model's outputs, one per map, as in
            [`deletion_insertion`][hiercam.deletion_insertion] (maps of chosen classes of a big model).

    Returns:
        ``ROADResult(morf, lerf)``, float64 on the CPU, each ``(T,)`` (mean) or ``(P, T)`` (none), without
        the ``T`` dimension for a single number; NaN means without any trial.

    Raises:
        TypeError, ValueError: as [`deletion_insertion`][hiercam.deletion_insertion], and percentages
            outside (0, 100), an empty sequence of them, one that removes every pixel (``n = H W``, e.g. any
            ``p >= 50`` on 1 x 1 maps), or a negative or non-finite ``noise``.

    Examples:
        >>> import torch
        >>> model = lambda x: torch.stack([x[:, 0, 0].sum(1), -x[:, 0, 0].sum(1)], dim=1)
        >>> images = torch.tensor([[[[0.0, 9.0, 2.0, 4.0]]]])
        >>> maps = torch.tensor([[[[0.0, 1.0, 0.5, 0.2]], [[0.0, 0.0, 0.0, 0.0]]]])
        >>> road(maps, torch.tensor([[1, 0]]), images=images, model=model, percentages=25, noise=0.0,
        ...      score="logit")
        ROADResult(morf=tensor(7., dtype=torch.float64), lerf=tensor(24., dtype=torch.float64))
    """
    mode, batch_size = check_common(model, score, batch_size)
    values, single = _check_percentages(percentages)
    noise = _check_noise(noise)
    generator = check_generator(generator)
    reduction = check_reduction(reduction)
    scores = reduce_trials(
        _road_update(model, maps, labels, images, values, noise, generator, mode, batch_size, classes),
        reduction,
    )
    if single:
        scores = scores[..., 0]
        return ROADResult(scores[..., 0], scores[..., 1])
    return ROADResult(scores[..., 0, :], scores[..., 1, :])


class ROAD(MeanMetric):
    """Streaming ROAD: mean class scores after MoRF / LeRF imputation over every trial seen.

    See [`road`][hiercam.road], which shares the kernel.

    Args:
        model: the classifier (a plain attribute, not a submodule).
        percentages: share(s) of pixels removed, in percent, in (0, 100), as in [`road`][hiercam.road].
        noise: standard deviation of the imputation noise (0 for none).
        generator: CPU random generator of the noise.
        score: ``"softmax"``, ``"sigmoid"`` or ``"logit"``.
        batch_size: imputed images per forward pass.
        sync_on_compute: sum the states across processes in ``compute``.

    Attributes:
        sums: float64 ``(2, T)``, summed scores (MoRF, LeRF) per percentage.
        count: the number of trials.

    Examples:
        >>> import torch
        >>> metric = ROAD(lambda x: x.mean((2, 3)), percentages=[50], noise=0.0, score="logit")
        >>> images = torch.arange(16.0).reshape(1, 1, 4, 4)
        >>> metric.update(images, torch.tensor([[1]]), images=images)
        >>> [round(float(v), 2) for v in metric.compute()]
        [4.5, 10.5]
    """

    def __init__(
        self,
        model: Model,
        *,
        percentages: float | Sequence[float] = (10, 20, 30, 40, 50, 60, 70, 80, 90),
        noise: float = 0.01,
        generator: torch.Generator | None = None,
        score: ScoreMode = "softmax",
        batch_size: int = 64,
        sync_on_compute: bool = True,
    ) -> None:
        super().__init__(model, score=score, batch_size=batch_size, sync_on_compute=sync_on_compute)
        self._values, self._single = _check_percentages(percentages)
        self.percentages: float | tuple[float, ...] = self._values[0] if self._single else tuple(self._values)
        self.noise = _check_noise(noise)
        self.generator = check_generator(generator)
        self._add_states(2, len(self._values))

    def update(self, maps: Tensor, labels: Tensor, *, images: Tensor, classes: Tensor | None = None) -> None:
        """Add a batch; arguments as in [`road`][hiercam.road]."""
        scores = _road_update(
            self.model,
            maps,
            labels,
            images,
            self._values,
            self.noise,
            self.generator,
            self.score,
            self.batch_size,
            classes,
        )
        self._add(scores)

    def forward(
        self, maps: Tensor, labels: Tensor, *, images: Tensor, classes: Tensor | None = None
    ) -> ROADResult:
        """The figures of this batch alone, which are also added to the state."""
        result: ROADResult = super().forward(maps, labels, images=images, classes=classes)
        return result

    def _compute(self) -> ROADResult:
        means = self._means()
        if self._single:
            return ROADResult(means[0, 0], means[1, 0])
        return ROADResult(means[0], means[1])

    def compute(self) -> ROADResult:
        """Mean scores per percentage since ``reset`` (NaN before any trial), float64."""
        result: ROADResult = super().compute()
        return result

    def _options(self) -> dict[str, object]:
        return {"percentages": self._values, "noise": self.noise, "score": self.score}

    def extra_repr(self) -> str:
        """The options, shown by ``repr``."""
        return (
            f"percentages={self.percentages}, noise={self.noise}, score={self.score!r}, "
            f"batch_size={self.batch_size}"
        )
