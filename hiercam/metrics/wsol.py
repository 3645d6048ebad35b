"""Weakly-supervised localisation metrics of Choe et al. (CVPR 2020): MaxBoxAccV2 and PxAP.

"Evaluating Weakly Supervised Object Localization Methods Right" replaced top-1 localisation with two
threshold-free figures, defined by its public code (clovaai/wsolevaluation, ``evaluation.py``), which this
module follows step by step:

* **Normalisation.** Each map is min-max normalised to ``[0, 1]`` (a constant map becomes all zero), as
  ``normalize_scoremap`` in wsolevaluation's ``inference.py``. Give maps at the size of the ground truth.
* **Threshold grid.** ``np.arange(0, 1, interval)``: 100 thresholds ``0, 0.01, ..., 0.99`` for the default
  ``interval = 0.01`` (wsolevaluation's ``cam_curve_interval`` in ``config.py``; its stand-alone
  ``evaluate_wsol`` uses 0.001).
* **MaxBoxAccV2.** At threshold ``t`` the map is quantised as ``u = uint8(255 s)`` and the pixels with
  ``u > int(t * max(u))`` are kept (``cv2.threshold``); every connected region (8-connected, as the outer
  contours of ``cv2.findContours``) gives a box, and a trial is correct when some box has ``IoU >= delta``
  with some ground-truth box of its class. ``BoxAcc(t, delta)`` is the fraction of correct trials over the
  dataset, ``MaxBoxAcc(delta) = max_t BoxAcc(t, delta)``, and MaxBoxAccV2 its mean over
  ``delta in (0.3, 0.5, 0.7)``.
* **PxAP.** Pixel scores are histogrammed over the bins ``[t_i, t_{i+1})`` of the grid extended with
  ``1, 2, 3``, separately for ground-truth foreground and background pixels (``ignore_index`` pixels left
  out) over the whole dataset; precision and recall at every threshold give the average precision
  ``sum_i P_i (R_i - R_{i-1})`` (thresholds without a positive prediction skipped).

**Boxes and the +1 pixel.** hiercam boxes have exclusive far edges (``x2 = x1 + width``, see
[`cam_boxes`][hiercam.cam_boxes]); wsolevaluation's metadata boxes are ``x + w`` too, but its IoU reads
both corners as inclusive and adds one pixel to every side: ``area = (x2 - x1 + 1) (y2 - y1 + 1)``. The same
formula is used here on the given boxes, and a predicted box ``(x, y, x + w, y + h)`` has its far edges
clamped to ``W - 1`` and ``H - 1`` as there; a map with no kept pixel predicts the box ``(0, 0, 0, 0)``.

**Contours versus connected components.** OpenCV's outer contours are the borders of 8-connected regions,
so their bounding rectangles are the regions' boxes, found here with ``scipy.ndimage`` (no OpenCV). With
``RETR_TREE`` OpenCV also lists the border of each hole as a contour; such a box lies inside its region's
box and is not produced here, so a trial differs only where a hole's box matches a ground-truth box better
than every region's box. For ``components="largest"``, wsolevaluation picks the contour of largest polygon
area (``cv2.contourArea``), hiercam the region with most pixels.

Trials are the (image, class) pairs with ``labels[b, k] = 1`` (wsolevaluation has one class per image).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from hiercam._validation import (
    check_choice,
    check_int,
    check_tensor,
    check_threshold,
    format_shape,
    type_name,
)
from hiercam.maps import normalize_maps
from hiercam.metrics._base import Metric
from hiercam.metrics._inputs import check_maps_and_labels
from hiercam.metrics.localization import BoxComponents, BoxesArg, _check_boxes, _mask_boxes

__all__ = ["MaxBoxAccResult", "max_box_acc", "MaxBoxAccV2", "pxap", "PxAP"]


class MaxBoxAccResult(NamedTuple):
    """MaxBoxAccV2 and its parts, float64 on the CPU.

    Attributes:
        value: the mean of ``per_iou`` (0-dim): MaxBoxAccV2, a fraction in [0, 1].
        per_iou: ``MaxBoxAcc(delta)`` for each IoU threshold ``(I,)``.
        best_thresholds: the map threshold reaching it ``(I,)`` (the lowest one on ties).
    """

    value: Tensor
    per_iou: Tensor
    best_thresholds: Tensor


# --------------------------------------------------------------------------------------------- options
def _grid(interval: object) -> np.ndarray:
    """``np.arange(0, 1, interval)``, wsolevaluation's ``cam_threshold_list``."""
    step = check_threshold(interval, "interval")
    return np.arange(0, 1, step)


def _check_ious(ious: object) -> list[float]:
    if isinstance(ious, (str, bytes)) or not isinstance(ious, Sequence):
        raise TypeError(f"`iou_thresholds` must be a sequence of floats in (0, 1), got {type_name(ious)}")
    if not ious:
        raise ValueError("`iou_thresholds` must hold at least one threshold, got an empty sequence")
    return [check_threshold(value, f"iou_thresholds[{index}]") for index, value in enumerate(ious)]


def _check_components(components: BoxComponents) -> BoxComponents:
    return check_choice(components, "components", ("all", "largest"))


def _scoremaps(maps: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Images and classes of the trials, and their min-max normalised maps ``(P, H, W)``."""
    check_maps_and_labels(maps, labels)
    images, classes = torch.nonzero(labels.to(device=maps.device, dtype=torch.bool), as_tuple=True)
    return images, classes, normalize_maps(maps.detach()[images, classes], "minmax")


# --------------------------------------------------------------------------------------------- MaxBoxAccV2
def _wsol_iou(boxes: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Wsolevaluation's ``calculate_multiple_iou``: ``(M, G)`` IoUs with the +1 pixel on every side."""
    low = np.maximum(boxes[:, None, :2], truth[None, :, :2])
    high = np.minimum(boxes[:, None, 2:], truth[None, :, 2:])
    inter = np.prod(np.maximum(0.0, high - low + 1), axis=2)
    area_a = np.prod(boxes[:, 2:] - boxes[:, :2] + 1, axis=1)
    area_b = np.prod(truth[:, 2:] - truth[:, :2] + 1, axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def _best_ious(
    score: np.ndarray, truth: np.ndarray, grid: np.ndarray, components: BoxComponents
) -> np.ndarray:
    """The best IoU ``(T,)`` of the boxes at every threshold with the ground-truth boxes ``(G, 4)``."""
    height, width = score.shape
    quantised = (score * 255).astype(np.uint8)
    cutoffs = (grid * quantised.max()).astype(np.int64)
    best = np.zeros(len(grid))
    if truth.shape[0] == 0:
        return best
    cache: dict[int, float] = {}
    for index, cutoff in enumerate(cutoffs.tolist()):
        if cutoff not in cache:
            boxes = _mask_boxes(quantised > cutoff, components).astype(np.float64)
            if boxes.shape[0] == 0:
                boxes = np.zeros((1, 4))
            boxes[:, 2] = np.minimum(boxes[:, 2], width - 1)
            boxes[:, 3] = np.minimum(boxes[:, 3], height - 1)
            cache[cutoff] = float(_wsol_iou(boxes, truth).max())
        best[index] = cache[cutoff]
    return best


def _box_update(
    maps: Tensor,
    labels: Tensor,
    boxes: BoxesArg,
    grid: np.ndarray,
    ious: list[float],
    components: BoxComponents,
) -> Tensor:
    """``(I, T + 1)`` int64: correct trials per IoU and map threshold; the last column counts trials."""
    images, classes, scores = _scoremaps(maps, labels)
    truth = _check_boxes(boxes, maps.shape[0], maps.shape[1])
    counts = np.zeros((len(ious), len(grid) + 1), dtype=np.int64)
    counts[:, -1] = int(images.shape[0])
    limits = np.asarray(ious)[:, None]
    for score, image, cls in zip(
        scores.float().cpu().numpy(), images.tolist(), classes.tolist(), strict=True
    ):
        coords, owners = truth[image]
        best = _best_ious(score, coords[owners == cls].numpy(), grid, components)
        counts[:, :-1] += best[None, :] >= limits
    return torch.from_numpy(counts)


def _box_compute(counts: Tensor, grid: np.ndarray) -> MaxBoxAccResult:
    trials = counts[:, -1].double()
    if int(trials[0]) == 0:
        nan = torch.full((counts.shape[0],), torch.nan, dtype=torch.float64)
        return MaxBoxAccResult(torch.tensor(torch.nan, dtype=torch.float64), nan, nan.clone())
    accuracy = counts[:, :-1].double() / trials[:, None]
    per_iou, where = accuracy.max(dim=1)  # the first maximum: the lowest threshold
    return MaxBoxAccResult(per_iou.mean(), per_iou, torch.from_numpy(grid)[where])


def max_box_acc(
    maps: Tensor,
    labels: Tensor,
    *,
    boxes: BoxesArg,
    iou_thresholds: Sequence[float] = (0.3, 0.5, 0.7),
    interval: float = 0.01,
    components: BoxComponents = "all",
) -> MaxBoxAccResult:
    r"""MaxBoxAccV2 (Choe et al., CVPR 2020) of a batch, as a fraction in [0, 1]: higher is better.

    ```latex
    \mathrm{MaxBoxAccV2} = \frac{1}{|D|}\sum_{\delta \in D} \max_{t}\, \frac{1}{P}\sum_{p=1}^{P}
    \mathbb{1}\big[\max_{b \in B_p(t),\, g \in G_p} \mathrm{IoU}(b, g) \ge \delta\big],
    ```

    ``D`` the IoU thresholds, ``t`` the grid ``0, interval, ...``, ``B_p(t)`` the boxes of trial ``p``'s
    regions at ``t`` and ``G_p`` the ground-truth boxes of its class (none: the trial fails). The module
    docstring gives the quantisation, the box convention and how it matches wsolevaluation.

    Args:
        maps: class activation maps ``(B, K, H, W)`` at the ground truth's size, floating point, finite.
        labels: multi-hot labels ``(B, K)`` choosing the trials.
        boxes: ground-truth boxes per image, ``(M, 5)`` rows ``(class, x1, y1, x2, y2)`` or pairs
            ``(boxes (M, 4), classes (M,))`` as in [`localization_error`][hiercam.localization_error].
        iou_thresholds: the IoU thresholds ``D``, each in (0, 1).
        interval: spacing of the map-threshold grid, in (0, 1).
        components: ``"all"`` regions (MaxBoxAccV2) or the ``"largest"`` (the first MaxBoxAcc).

    Returns:
        ``MaxBoxAccResult(value, per_iou, best_thresholds)``, NaN without any trial.

    Raises:
        TypeError: wrong argument types.
        ValueError: shapes disagree, an empty batch or class set, non-finite maps, malformed boxes, or an
            option out of range.

    Examples:
        >>> import torch
        >>> maps = torch.zeros(1, 1, 8, 8)
        >>> maps[0, 0, 2:5, 2:5] = 1.0  # a 3x3 blob: box (2, 2, 5, 5)
        >>> result = max_box_acc(maps, torch.tensor([[1]]), boxes=[torch.tensor([[0, 2, 2, 6, 6]])])
        >>> result.per_iou  # wsolevaluation's IoU: 16 / 25 = 0.64 (torchvision's: 9 / 16)
        tensor([1., 1., 0.], dtype=torch.float64)
    """
    grid = _grid(interval)
    ious = _check_ious(iou_thresholds)
    components = _check_components(components)
    return _box_compute(_box_update(maps, labels, boxes, grid, ious, components), grid)


class MaxBoxAccV2(Metric):
    """Streaming MaxBoxAccV2: correct trials per (IoU, map threshold); the best threshold in ``compute``.

    See [`max_box_acc`][hiercam.max_box_acc], which shares the kernels.

    Args:
        iou_thresholds: the IoU thresholds, each in (0, 1).
        interval: spacing of the map-threshold grid, in (0, 1).
        components: ``"all"`` regions or the ``"largest"``, as in [`max_box_acc`][hiercam.max_box_acc].
        sync_on_compute: sum the counts across processes in ``compute``.

    Attributes:
        counts: int64 ``(I, T + 1)``: correct trials per IoU and map threshold, and the trials (last column).

    Examples:
        >>> import torch
        >>> metric = MaxBoxAccV2()
        >>> maps = torch.zeros(1, 1, 8, 8)
        >>> maps[0, 0, 2:5, 2:5] = 1.0
        >>> metric.update(maps, torch.tensor([[1]]), boxes=[torch.tensor([[0, 2, 2, 5, 5]])])
        >>> metric.update(maps, torch.tensor([[1]]), boxes=[torch.tensor([[0, 5, 5, 8, 8]])])
        >>> metric.compute().value
        tensor(0.5000, dtype=torch.float64)
    """

    counts: Tensor

    def __init__(
        self,
        *,
        iou_thresholds: Sequence[float] = (0.3, 0.5, 0.7),
        interval: float = 0.01,
        components: BoxComponents = "all",
        sync_on_compute: bool = True,
    ) -> None:
        super().__init__(sync_on_compute=sync_on_compute)
        self._grid = _grid(interval)
        self.interval = float(interval)
        self.iou_thresholds = tuple(_check_ious(iou_thresholds))
        self.components = _check_components(components)
        shape = (len(self.iou_thresholds), len(self._grid) + 1)
        self.add_state("counts", torch.zeros(shape, dtype=torch.long), "sum")

    def update(self, maps: Tensor, labels: Tensor, *, boxes: BoxesArg) -> None:
        """Add a batch; arguments as in [`max_box_acc`][hiercam.max_box_acc]."""
        batch = _box_update(maps, labels, boxes, self._grid, list(self.iou_thresholds), self.components)
        self.counts = self.counts + batch.to(self.counts.device)

    def forward(self, maps: Tensor, labels: Tensor, *, boxes: BoxesArg) -> MaxBoxAccResult:
        """The figure of this batch alone, which is also added to the state."""
        result: MaxBoxAccResult = super().forward(maps, labels, boxes=boxes)
        return result

    def _compute(self) -> MaxBoxAccResult:
        return _box_compute(self.counts.cpu(), self._grid)

    def compute(self) -> MaxBoxAccResult:
        """MaxBoxAccV2 over every trial since ``reset`` (NaN before any)."""
        result: MaxBoxAccResult = super().compute()
        return result

    def extra_repr(self) -> str:
        """The options, shown by ``repr``."""
        return (
            f"iou_thresholds={self.iou_thresholds}, interval={self.interval}, components={self.components!r}"
        )


# --------------------------------------------------------------------------------------------- PxAP
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


def _pxap_update(
    maps: Tensor, labels: Tensor, masks: Tensor, grid: np.ndarray, ignore_index: int | None
) -> Tensor:
    """Histograms ``(2, T + 2)`` int64 of the scores of foreground (row 0) and background (row 1) pixels."""
    images, classes, scores = _scoremaps(maps, labels)
    _check_masks(masks, maps)
    if scores.device.type == "mps":  # no float64 there
        scores, images, classes = scores.cpu(), images.cpu(), classes.cpu()
    edges = torch.from_numpy(np.append(grid, [1.0, 2.0, 3.0])).to(scores.device)
    bins = len(edges) - 1
    truth = masks.to(scores.device)[images]
    foreground = truth == (classes + 1)[:, None, None]
    valid = torch.ones_like(foreground) if ignore_index is None else truth != ignore_index
    where = (torch.bucketize(scores.double(), edges, right=True) - 1).clamp_(0, bins - 1)
    keys = (~foreground).long() * bins + where
    return torch.bincount(keys[valid | foreground], minlength=2 * bins).reshape(2, bins).cpu()


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
        ValueError: shapes disagree, an empty batch or class set, non-finite maps, or ``interval`` out of
            range.

    Examples:
        >>> import torch
        >>> maps = torch.tensor([[[[0.9, 0.8], [0.1, 0.0]]]])
        >>> masks = torch.tensor([[[1, 0], [1, 255]]])  # foreground scores 1 and 1/9, background 8/9
        >>> pxap(maps, torch.tensor([[1]]), masks=masks)  # precision 1 at recall 1/2, 2/3 at recall 1
        tensor(0.8333, dtype=torch.float64)
    """
    grid = _grid(interval)
    ignore_index = _check_ignore(ignore_index)
    return _pxap_compute(_pxap_update(maps, labels, masks, grid, ignore_index))


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
        self._grid = _grid(interval)
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

    def extra_repr(self) -> str:
        """The options, shown by ``repr``."""
        return f"interval={self.interval}, ignore_index={self.ignore_index}"
