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
so their bounding rectangles are the regions' boxes, found here with
[`mask_boxes`][hiercam.maps.mask_boxes] (``scipy.ndimage``, no OpenCV). With ``RETR_TREE`` OpenCV also lists
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
from hiercam.maps import BoxComponents, mask_boxes
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
            boxes = mask_boxes(torch.from_numpy(quantised > cutoff), components).numpy().astype(np.float64)
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
    images, classes, scores = scoremaps(maps, labels)
    truth = check_boxes(boxes, maps.shape[0], maps.shape[1])
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
