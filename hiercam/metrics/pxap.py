"""PxAP, the pixel average precision of Choe et al. (CVPR 2020), as in wsolevaluation's ``MaskEvaluator``.

The trials (the (image, class) pairs with ``labels[b, k] = 1``), the normalisation (min-max per map) and the
threshold grid (``np.arange(0, 1, interval)``) are those of [`max_box_acc`][hiercam.max_box_acc], whose
module docstring describes them. Pixel scores are histogrammed over the bins ``[t_i, t_{i+1})`` of the grid
extended with ``1, 2, 3``, separately for ground-truth foreground and background pixels (``ignore_index``
pixels left out) over the whole dataset; precision and recall at every threshold give the average precision
``sum_i P_i (R_i - R_{i-1})`` (thresholds without a positive prediction skipped).

[`pxap`][hiercam.pxap] and [`PxAP`][hiercam.PxAP] share the private kernels ``_pxap_update`` and
``_pxap_compute``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from hiercam._validation import check_int, check_tensor, format_shape, should_check
from hiercam.metrics._base import Metric
from hiercam.metrics._confusion import check_target_values
from hiercam.metrics._wsol import scoremaps, threshold_grid

__all__ = ["pxap", "PxAP"]


_CHUNK_PIXELS = 2**16  # pixels per chunk of maps on the CPU


def _check_masks(masks: Tensor, maps: Tensor) -> Tensor:
    check_tensor(masks, "masks", dims="B, H, W")
    if masks.is_floating_point() or masks.is_complex() or masks.dtype == torch.bool:
        raise TypeError(f"`masks` must be an integer label map, got dtype {masks.dtype}")
    if masks.shape != maps.shape[:1] + maps.shape[2:]:
        raise ValueError(
            f"`masks` must have shape (B, H, W) = {format_shape(maps.shape[:1] + maps.shape[2:])} to match "
            f"`maps`, got {format_shape(masks.shape)}"
        )
    return masks


def _edges(grid: np.ndarray, dtype: torch.dtype) -> Tensor:
    """The bin edges ``grid, 1, 2, 3`` in ``dtype``, each rounded up to the next representable value.

    ``score >= edge`` in float64 (wsolevaluation's ``np.histogram``) is ``score >= rounded-up edge`` in the
    scores' own dtype, so the bins are found without converting the scores to float64.
    """
    edges = np.append(grid, [1.0, 2.0, 3.0])
    if dtype == torch.float64:
        return torch.from_numpy(edges)
    narrow = torch.from_numpy(edges).to(dtype)
    below = narrow.double() < torch.from_numpy(edges)
    return torch.where(below, torch.nextafter(narrow, torch.tensor(torch.inf, dtype=dtype)), narrow)


def _bins(scores: Tensor, edges: Tensor, interval: float) -> Tensor:
    """The bin ``k`` with ``edges[k] <= score < edges[k + 1]`` of every score in ``[0, 1]``, int64.

    The grid is uniform, so ``floor(score / interval)`` is the bin up to one rounding step either way, which
    one comparison with each neighbouring edge corrects: the bins of ``torch.bucketize`` (tested) in a few
    elementwise passes instead of a binary search per pixel.
    """
    top = len(edges) - 3  # the bin [1, 2): scores of exactly 1
    guess = torch.mul(scores, 1 / interval).floor_().clamp_(0, top).long()
    low, high = torch.take(edges, guess), torch.take(edges, guess + 1)
    return guess.add_((scores >= high).long()).sub_((scores < low).long())


def _pxap_update(
    maps: Tensor, labels: Tensor, masks: Tensor, grid: np.ndarray, ignore_index: int | None
) -> Tensor:
    """Histograms ``(2, T + 2)`` int64 of the scores of foreground (row 0) and background (row 1) pixels.

    One ``bincount`` over the keys ``(background, bin)``; left-out pixels go to a last key that is dropped
    (no boolean mask: nothing waits for the device's values, and nothing is copied). On the maps' device;
    with the value checks off the only host read is the number of trials (``scoremaps``).
    """
    images, classes, scores = scoremaps(maps, labels)
    _check_masks(masks, maps)
    if should_check(masks):  # a value check; without it, a stray mask value counts as background
        check_target_values(masks, int(maps.shape[1]) + 1, ignore_index)
    if scores.dtype not in (torch.float32, torch.float64):
        scores = scores.float()  # float16 / bfloat16 maps: binned as float32, like the float64 edges
    edges = _edges(grid, scores.dtype).to(scores.device)
    bins = len(edges) - 1
    interval = float(grid[1]) if len(grid) > 1 else 1.0
    masks = masks.to(scores.device)
    counts = torch.zeros(2 * bins + 1, dtype=torch.int64, device=scores.device)
    # in chunks of maps: on the CPU the temporaries of a chunk stay in the cache (about 2x faster)
    step = max(1, _CHUNK_PIXELS // max(1, scores[0].numel())) if scores.device.type == "cpu" else len(scores)
    for start in range(0, len(scores), step):
        rows = slice(start, start + step)
        where = _bins(scores[rows], edges, interval)
        truth = masks[images[rows]]
        foreground = truth == (classes[rows] + 1)[:, None, None]
        keys = where.add_(~foreground, alpha=bins)  # background pixels: the second row
        if ignore_index is not None:
            keys.masked_fill_(~foreground & (truth == ignore_index), 2 * bins)
        counts += torch.bincount(keys.reshape(-1), minlength=2 * bins + 1)
    return counts[: 2 * bins].reshape(2, bins)


def _pxap_compute(hist: Tensor) -> Tensor:
    """Wsolevaluation's ``MaskEvaluator.compute`` as a fraction; NaN without a foreground pixel."""
    true, false = hist[0].double().flip(0), hist[1].double().flip(0)
    tp, fp = true.cumsum(0), false.cumsum(0)
    if float(true.sum()) == 0:
        return torch.tensor(torch.nan, dtype=torch.float64)
    predicted = tp + fp
    precision = tp / predicted.clamp_min(1)
    recall = tp / true.sum()
    terms = precision[1:] * (recall[1:] - recall[:-1])
    return terms[predicted[1:] != 0].sum()


def _check_ignore(ignore_index: object) -> int | None:
    return None if ignore_index is None else check_int(ignore_index, "ignore_index")


def pxap(
    maps: Tensor,
    labels: Tensor,
    *,
    masks: Tensor,
    interval: float = 0.01,
    ignore_index: int | None = 255,
) -> Tensor:
    r"""PxAP (Choe et al., CVPR 2020): pixel average precision of the maps against masks, in [0, 1].

    For each trial (image ``b``, class ``k``), the pixels with ``masks[b] == k + 1`` are the foreground,
    those with another value the background, and ``ignore_index`` pixels are left out. With the counts of
    the whole batch at the thresholds ``t_i`` of the grid (scores ``>= t_i``),

    ```latex
    \mathrm{PxAP} = \sum_i P(t_i)\,\big(R(t_i) - R(t_{i+1})\big), \quad
    P(t) = \frac{TP(t)}{TP(t) + FP(t)}, \; R(t) = \frac{TP(t)}{TP(t) + FN(t)},
    ```

    the sum over decreasing thresholds; see the module docstring for the bins and the normalisation.

    Args:
        maps: class activation maps ``(B, K, H, W)`` at the masks' size, floating point, finite.
        labels: multi-hot labels ``(B, K)`` choosing the trials.
        masks: ground-truth label maps ``(B, H, W)``, integer: 0 for background, ``k + 1`` for class ``k``
            (hiercam's convention, as [`mean_iou`][hiercam.mean_iou]), ``ignore_index`` for pixels left out.
        interval: spacing of the threshold grid, in (0, 1).
        ignore_index: mask value left out (VOC's 255), or ``None``.

    Returns:
        A float64 0-dim tensor on the CPU, NaN without any foreground pixel.

    Raises:
        TypeError: wrong argument types (``masks`` not integer).
        ValueError: shapes disagree, an empty batch or class set, non-finite maps, a mask value that is
            neither a class label in ``[0, K]`` nor ``ignore_index`` (as in [`mean_iou`][hiercam.mean_iou];
            here a value check that [`set_checks`][hiercam.set_checks] turns off, as the finiteness of the
            maps: such a pixel then counts as background, since it indexes nothing), or ``interval`` out of
            range or finer than ``1e-4`` (more than 10,000 thresholds).

    Examples:
        >>> import torch
        >>> maps = torch.tensor([[[[0.9, 0.8], [0.1, 0.0]]]])
        >>> masks = torch.tensor([[[1, 0], [1, 255]]])  # foreground scores 1 and 1/9, background 8/9
        >>> pxap(maps, torch.tensor([[1]]), masks=masks)  # precision 1 at recall 1/2, 2/3 at recall 1
        tensor(0.8333, dtype=torch.float64)
    """
    grid = threshold_grid(interval)
    ignore_index = _check_ignore(ignore_index)
    return _pxap_compute(_pxap_update(maps, labels, masks, grid, ignore_index).cpu())


class PxAP(Metric):
    """Streaming PxAP: score histograms of foreground and background pixels summed over a dataset.

    A dataset-level figure, not a mean over images. See [`pxap`][hiercam.pxap], which shares the kernels.

    Args:
        interval: spacing of the threshold grid, in (0, 1).
        ignore_index: mask value left out, or ``None``.
        sync_on_compute: sum the histograms across processes in ``compute``.

    Attributes:
        hist: int64 ``(2, T + 2)``: foreground and background pixels per score bin.

    Examples:
        >>> import torch
        >>> metric = PxAP()
        >>> metric.update(torch.tensor([[[[0.9, 0.1]]]]), torch.tensor([[1]]), masks=torch.tensor([[[1, 0]]]))
        >>> metric.compute()
        tensor(1., dtype=torch.float64)
    """

    hist: Tensor

    def __init__(
        self, *, interval: float = 0.01, ignore_index: int | None = 255, sync_on_compute: bool = True
    ) -> None:
        super().__init__(sync_on_compute=sync_on_compute)
        self._grid = threshold_grid(interval)
        self.interval = float(interval)
        self.ignore_index = _check_ignore(ignore_index)
        self.add_state("hist", torch.zeros((2, len(self._grid) + 2), dtype=torch.long), "sum")

    def update(self, maps: Tensor, labels: Tensor, *, masks: Tensor) -> None:
        """Add a batch; arguments as in [`pxap`][hiercam.pxap]."""
        batch = _pxap_update(maps, labels, masks, self._grid, self.ignore_index)
        self.hist = self.hist + batch.to(self.hist.device)

    def forward(self, maps: Tensor, labels: Tensor, *, masks: Tensor) -> Tensor:
        """The figure of this batch alone, which is also added to the state."""
        result: Tensor = super().forward(maps, labels, masks=masks)
        return result

    def _compute(self) -> Tensor:
        return _pxap_compute(self.hist.cpu())

    def compute(self) -> Tensor:
        """PxAP over every pixel seen since ``reset`` (NaN before any foreground pixel)."""
        result: Tensor = super().compute()
        return result

    def _options(self) -> dict[str, object]:
        return {"interval": self.interval, "ignore_index": self.ignore_index}

    def extra_repr(self) -> str:
        """The options, shown by ``repr``."""
        return f"interval={self.interval}, ignore_index={self.ignore_index}"
