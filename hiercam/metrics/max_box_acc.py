"""MaxBoxAcc of Choe et al. (CVPR 2020): the box accuracy at the best map threshold, after wsolevaluation.

"Evaluating Weakly Supervised Object Localization Methods Right" replaced top-1 localisation with
threshold-free figures defined by its public code (clovaai/wsolevaluation, ``evaluation.py``). With its
defaults (every region boxed, IoU thresholds 0.3, 0.5 and 0.7) [`max_box_acc`][hiercam.max_box_acc] and
[`MaxBoxAcc`][hiercam.MaxBoxAcc] compute its **MaxBoxAccV2**; ``components="largest"`` with one IoU
threshold of 0.5 gives the first MaxBoxAcc. The trials, the min-max normalisation of the maps and the
threshold grid are shared with [`pxap`][hiercam.pxap]:

* **Trials, normalisation, grid.** One trial per (image, class) with ``labels[b, k] = 1`` (wsolevaluation has
  one class per image); each map min-max normalised to ``[0, 1]`` (``normalize_scoremap``); thresholds
  ``np.arange(0, 1, interval)``, 100 of them for the default ``interval = 0.01`` (wsolevaluation's
  ``cam_curve_interval``).
* **Box accuracy.** At threshold ``t`` the map is quantised as ``u = uint8(255 s)`` and the pixels with
  ``u > int(t * max(u))`` are kept (``cv2.threshold``); every connected region (8-connected, as the outer
  contours of ``cv2.findContours``) gives a box, and a trial is correct when some box has ``IoU >= delta``
  with some ground-truth box of its class. ``BoxAcc(t, delta)`` is the fraction of correct trials over the
  dataset, ``MaxBoxAcc(delta) = max_t BoxAcc(t, delta)``, and MaxBoxAccV2 its mean over
  ``delta in (0.3, 0.5, 0.7)``.

**Boxes and the +1 pixel.** hiercam boxes have exclusive far edges (``x2 = x1 + width``, see
[`hiercam.maps`][hiercam.maps]); wsolevaluation's metadata boxes are ``x + w`` too, but its IoU reads both
corners as inclusive and adds one pixel to every side: ``area = (x2 - x1 + 1) (y2 - y1 + 1)``. The same
formula is used here on the given boxes, and a predicted box ``(x, y, x + w, y + h)`` has its far edges
clamped to ``W - 1`` and ``H - 1`` as there; a map with no kept pixel predicts the box ``(0, 0, 0, 0)``.

**Contours versus connected components.** OpenCV's outer contours are the borders of 8-connected regions,
so their bounding rectangles are the regions' boxes, found here for every threshold at once with
[`level_boxes`][hiercam.maps.level_boxes] (the regions of [`mask_boxes`][hiercam.maps.mask_boxes], no
OpenCV). With ``RETR_TREE`` OpenCV also lists
the border of each hole as a contour; such a box lies inside its region's box and is not produced here, so
a trial differs only where a hole's box matches a ground-truth box better than every region's box. For
``components="largest"``, wsolevaluation picks the contour of largest polygon area (``cv2.contourArea``),
hiercam the region with most pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from hiercam._validation import check_choice, check_threshold, type_name
from hiercam.maps import BoxComponents, level_boxes
from hiercam.metrics._base import Metric
from hiercam.metrics._inputs import BoxesArg, check_boxes
from hiercam.metrics._wsol import scoremaps, threshold_grid

__all__ = ["MaxBoxAccResult", "max_box_acc", "MaxBoxAcc"]


class MaxBoxAccResult(NamedTuple):
    """MaxBoxAcc (MaxBoxAccV2 with the default options) and its parts, float64 on the CPU.

    Attributes:
        value: the mean of ``per_iou`` (0-dim), a fraction in [0, 1]: MaxBoxAccV2 with the defaults.
        per_iou: ``MaxBoxAcc(delta)`` for each IoU threshold ``(I,)``.
        best_thresholds: the map threshold reaching it ``(I,)`` (the lowest one on ties).
    """

    value: Tensor
    per_iou: Tensor
    best_thresholds: Tensor


# --------------------------------------------------------------------------------------------- options
def _check_ious(ious: object) -> list[float]:
    if isinstance(ious, (str, bytes)) or not isinstance(ious, Sequence):
        raise TypeError(f"`iou_thresholds` must be a sequence of floats in (0, 1), got {type_name(ious)}")
    if not ious:
        raise ValueError("`iou_thresholds` must hold at least one threshold, got an empty sequence")
    return [check_threshold(value, f"iou_thresholds[{index}]") for index, value in enumerate(ious)]


def _check_components(components: BoxComponents) -> BoxComponents:
    return check_choice(components, "components", ("all", "largest"))


# --------------------------------------------------------------------------------------------- kernels
def _best_ious(
    score: np.ndarray, truth: np.ndarray, grid: np.ndarray, components: BoxComponents
) -> np.ndarray:
    """The best IoU ``(T,)`` of one normalised map ``(H, W)`` at every threshold with the boxes ``(G, 4)``."""
    scores = torch.from_numpy(np.ascontiguousarray(score, dtype=np.float32))[None]
    return _trial_ious(scores, [torch.from_numpy(truth).double()], grid, components)[0].numpy()


def _levels(quantised: Tensor, grid: np.ndarray) -> tuple[Tensor, np.ndarray]:
    """Level maps of the quantised maps ``(P, H, W)`` and the level ``(P, T)`` of every grid threshold.

    Trial ``p`` keeps ``u > c`` at the cutoffs ``c = int(t * max(u))``; with its distinct cutoffs
    ``c_0 < c_1 < ...``, the level of a pixel is the number of them below ``u``, so the mask of cutoff
    ``c_i`` is ``level > i`` and thresholds with the same cutoff share a level.
    """
    maxima = quantised.amax(dim=(1, 2)).numpy()
    cutoffs = (grid[None, :] * maxima[:, None]).astype(np.int64)  # (P, T), as int(t * max(u)) per map
    present = np.zeros((len(maxima), 257), dtype=np.int64)
    np.put_along_axis(present, cutoffs, 1, axis=1)
    below = np.zeros((len(maxima), 256), dtype=np.int16)  # below[p, v]: distinct cutoffs of p under v
    np.cumsum(present[:, :255], axis=1, out=below[:, 1:])
    table = torch.from_numpy(below)
    levels = table.gather(1, quantised.reshape(len(maxima), -1).long()).reshape(quantised.shape)
    return levels, np.take_along_axis(below, cutoffs, axis=1).astype(np.int64)


def _pair_iou(boxes: Tensor, truth: Tensor) -> Tensor:
    """``_wsol_iou`` of the boxes ``(..., 4)`` and ``truth`` ``(..., 4)`` pair by pair, float64."""
    low = torch.maximum(boxes[..., :2], truth[..., :2])
    high = torch.minimum(boxes[..., 2:], truth[..., 2:])
    sides = (high - low + 1).clamp_min(0.0)
    inter = sides[..., 0] * sides[..., 1]
    area_a = (boxes[..., 2] - boxes[..., 0] + 1) * (boxes[..., 3] - boxes[..., 1] + 1)
    area_b = (truth[..., 2] - truth[..., 0] + 1) * (truth[..., 3] - truth[..., 1] + 1)
    union = area_a + area_b - inter
    return torch.where(union > 0, inter / torch.where(union > 0, union, 1.0), 0.0)


def _trial_ious(scores: Tensor, truth: list[Tensor], grid: np.ndarray, components: BoxComponents) -> Tensor:
    """The best IoU ``(P, T)`` of the boxes of every trial at every threshold with its boxes ``truth[p]``.

    All thresholds of all trials in one labelling ([`level_boxes`][hiercam.maps.level_boxes]: the runs of
    the nested masks, grouped once) instead of one ``scipy.ndimage.label`` per trial and threshold: about 6
    times faster than labelling every mask, and 1.2 to 1.5 times faster than wsolevaluation's OpenCV loop
    (``benchmarks/faithfulness_speed.py``, one thread). The figures are those of labelling every mask
    (tested).
    """
    count, height, width = scores.shape
    quantised = (scores.float() * 255).to(torch.uint8).cpu()  # wsolevaluation's uint8(255 s), truncated
    levels, at = _levels(quantised, grid)
    found = level_boxes(levels, components)
    # the ground-truth boxes of each trial, padded to the same number with boxes that score 0
    most = max(1, max(len(t) for t in truth))
    padded = torch.full((count, most, 4), -2.0, dtype=torch.float64)  # outside the image: IoU 0
    for index, boxes in enumerate(truth):
        padded[index, : len(boxes)] = boxes
    predicted = found.boxes.double()
    predicted[:, 2].clamp_(max=width - 1)  # wsolevaluation's min(x + w, W - 1), min(y + h, H - 1)
    predicted[:, 3].clamp_(max=height - 1)
    ious = _pair_iou(predicted[:, None, :], padded[found.maps]).amax(dim=1)
    depth = int(at.max()) + 1
    best = torch.full((count * depth,), -1.0, dtype=torch.float64)
    best.scatter_reduce_(0, found.maps * depth + found.levels, ious, "amax")
    # a mask without a region predicts the box (0, 0, 0, 0)
    empty = _pair_iou(torch.zeros(1, 1, 4, dtype=torch.float64), padded).amax(dim=1)
    best = best.reshape(count, depth)
    best = torch.where(best < 0, empty[:, None], best)
    return best.gather(1, torch.from_numpy(at))


def _box_update(
    maps: Tensor,
    labels: Tensor,
    boxes: BoxesArg,
    grid: np.ndarray,
    ious: list[float],
    components: BoxComponents,
) -> Tensor:
    """``(I, T + 1)`` int64: correct trials per IoU and map threshold; the last column counts trials."""
    images, classes, scores = scoremaps(maps, labels)
    truth = check_boxes(boxes, maps.shape[0], maps.shape[1])
    counts = torch.zeros((len(ious), len(grid) + 1), dtype=torch.int64)
    counts[:, -1] = images.shape[0]
    if images.shape[0] == 0:
        return counts
    wanted = [
        coords[owners == cls]
        for coords, owners, cls in (
            (*truth[image], cls) for image, cls in zip(images.tolist(), classes.tolist(), strict=True)
        )
    ]
    best = _trial_ious(scores, wanted, grid, components)
    limits = torch.tensor(ious, dtype=torch.float64)
    counts[:, :-1] = (best[None, :, :] >= limits[:, None, None]).sum(dim=1)
    return counts


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
            option out of range (an ``interval`` finer than ``1e-4``: more than 10,000 thresholds).

    Examples:
        >>> import torch
        >>> maps = torch.zeros(1, 1, 8, 8)
        >>> maps[0, 0, 2:5, 2:5] = 1.0  # a 3x3 blob: box (2, 2, 5, 5)
        >>> result = max_box_acc(maps, torch.tensor([[1]]), boxes=[torch.tensor([[0, 2, 2, 6, 6]])])
        >>> result.per_iou  # wsolevaluation's IoU: 16 / 25 = 0.64 (torchvision's: 9 / 16)
        tensor([1., 1., 0.], dtype=torch.float64)
    """
    grid = threshold_grid(interval)
    ious = _check_ious(iou_thresholds)
    components = _check_components(components)
    return _box_compute(_box_update(maps, labels, boxes, grid, ious, components), grid)


class MaxBoxAcc(Metric):
    """Streaming MaxBoxAcc(V2): correct trials per (IoU, map threshold); the best threshold in ``compute``.

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
        >>> metric = MaxBoxAcc()
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
        self._grid = threshold_grid(interval)
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
        """MaxBoxAcc over every trial since ``reset`` (NaN before any)."""
        result: MaxBoxAccResult = super().compute()
        return result

    def _options(self) -> dict[str, object]:
        return {
            "iou_thresholds": list(self.iou_thresholds),
            "interval": self.interval,
            "components": self.components,
        }

    def _check_loaded(self, states: dict[str, Tensor], prefix: str) -> None:
        counts = states.get("counts")
        if counts is None:
            return
        trials = counts[:, -1:]
        if bool((counts[:, :-1] > trials).any()) or bool((trials != trials[:1]).any()):
            raise ValueError(
                f"state {prefix + 'counts'!r} must count correct trials (columns before the last) no larger "
                "than the trials (the last column, the same in every row)"
            )

    def extra_repr(self) -> str:
        """The options, shown by ``repr``."""
        return (
            f"iou_thresholds={self.iou_thresholds}, interval={self.interval}, components={self.components!r}"
        )
