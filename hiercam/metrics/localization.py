"""Localisation quality of CAMs: boxes around thresholded maps, and the localisation error (paper Eq. 8).

The error is a fraction in [0, 1] (lower is better), like every hiercam metric; reports print percent.

**Box convention.** Boxes are ``(x1, y1, x2, y2)`` in continuous pixel coordinates with *exclusive* far
edges: pixel ``(row, col)`` covers ``[col, col + 1) x [row, row + 1)``, so a component spanning columns
``3..7`` has ``x1 = 3`` and ``x2 = 8``, and ``(x2 - x1) * (y2 - y1)`` is its box area in pixels. This is the
convention of ``torchvision.ops.box_iou`` (areas ``(x2 - x1) * (y2 - y1)``), which computes every IoU here.
Give ground-truth boxes in the same frame and convention: for VOC XML (1-based, inclusive ``xmin..xmax``) use
``x1 = xmin - 1, y1 = ymin - 1, x2 = xmax, y2 = ymax``, scaled like the CAMs if the images were resized.

[`localization_error`][hiercam.localization_error] and [`LocalizationError`][hiercam.LocalizationError] share
the private kernels ``_localization_update`` and ``_localization_compute`` (the torchmetrics pattern).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from hiercam._validation import (
    check_choice,
    check_finite,
    check_tensor,
    check_threshold,
    format_shape,
    type_name,
)
from hiercam.maps import normalize_maps
from hiercam.metrics._base import Metric
from hiercam.metrics._inputs import check_maps_and_labels, check_thresholds

__all__ = ["BoxComponents", "cam_boxes", "localization_error", "LocalizationError"]

BoxComponents = Literal["largest", "all"]
BoxesArg = Sequence[Tensor | tuple[Tensor, Tensor]]

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


# --------------------------------------------------------------------------------------------- boxes
def cam_boxes(map: Tensor, threshold: float = 0.15, components: BoxComponents = "largest") -> Tensor:
    """Boxes around the connected regions of one class activation map above a threshold.

    The map is max-normalised with [`normalize_maps`][hiercam.normalize_maps] (a no-op for maps whose peak is
    already 1), pixels strictly above ``threshold`` are kept (the rule of
    [`maps_to_masks`][hiercam.maps_to_masks]), and ``scipy.ndimage.label`` splits them into 8-connected
    components.

    Args:
        map: one map ``(H, W)``, floating point, finite, any device.
        threshold: strictly between 0 and 1 (the paper uses 0.15).
        components: which connected components get a box: ``"largest"``, the one with the most pixels (the
            first in row-major order on ties); ``"all"``, every one, in row-major order of their first pixel.

    Returns:
        Float32 boxes ``(M, 4)`` as ``(x1, y1, x2, y2)`` with exclusive far edges (module docstring), on the
        device of ``map``; ``M = 0`` when no pixel is above the threshold, ``M <= 1`` for ``"largest"``.

    Raises:
        TypeError: ``map`` is not a floating-point tensor.
        ValueError: ``map`` is not 2-D or not finite, ``threshold`` is not in (0, 1), or ``components`` is
            unknown.

    Examples:
        >>> import torch
        >>> map = torch.zeros(6, 8)
        >>> map[1:3, 1:4] = 1.0  # 6 pixels
        >>> map[4, 6] = 0.5  # 1 pixel
        >>> map[5, 7] = 0.5  # touches the previous one diagonally
        >>> cam_boxes(map)
        tensor([[1., 1., 4., 3.]])
        >>> cam_boxes(map, components="all")
        tensor([[1., 1., 4., 3.],
                [6., 4., 8., 6.]])
    """
    check_tensor(map, "map", dims="H, W", floating=True)
    check_finite(map, "map")
    threshold = check_threshold(threshold, "threshold")
    check_choice(components, "components", ("largest", "all"))
    mask = _cam_masks(map, threshold).cpu().numpy()
    return torch.from_numpy(_mask_boxes(mask, components)).to(device=map.device)


def _cam_masks(maps: Tensor, threshold: float) -> Tensor:
    """Pixels of the max-normalised maps ``(..., H, W)`` strictly above ``threshold``."""
    return normalize_maps(maps.detach(), "max") > threshold


def _mask_boxes(mask: np.ndarray, components: BoxComponents, min_area: int = 0) -> np.ndarray:
    """Float32 boxes ``(M, 4)`` of the 8-connected components of a boolean ``(H, W)`` mask.

    Components with fewer than ``min_area`` pixels get no box (the ground-truth boxes of
    ``hiercam.datasets.MSRC21`` use this; the metrics keep every component).
    """
    from scipy import ndimage  # imported here: SciPy is slow to import

    regions, count = ndimage.label(mask, structure=_EIGHT_CONNECTED)
    if count == 0:
        return np.zeros((0, 4), dtype=np.float32)
    if components == "largest" or min_area > 0:
        sizes = np.bincount(regions.ravel(), minlength=count + 1)[1:]
        if min_area > 0:
            small = np.flatnonzero(sizes < min_area) + 1
            if len(small):
                regions = np.where(np.isin(regions, small), 0, regions)
                sizes[small - 1] = 0
        if components == "largest":
            if not sizes.any():
                return np.zeros((0, 4), dtype=np.float32)
            keep = int(np.argmax(sizes)) + 1
            regions = (regions == keep).astype(np.int32)
    slices = ndimage.find_objects(regions)
    return np.array(
        [[cols.start, rows.start, cols.stop, rows.stop] for rows, cols in filter(None, slices)],
        dtype=np.float32,
    ).reshape(-1, 4)


# --------------------------------------------------------------------------------------------- kernels
def _check_boxes(boxes: BoxesArg, batch: int, num_classes: int) -> list[tuple[Tensor, Tensor]]:
    """Ground-truth boxes as ``(boxes (M, 4) float64, classes (M,) int64)`` on the CPU, one pair per image."""
    given: object = boxes
    if not isinstance(given, (list, tuple)):
        raise TypeError(f"`boxes` must be a list with one entry per image, got {type_name(boxes)}")
    if len(boxes) != batch:
        raise ValueError(f"`boxes` must have one entry per image ({batch}), got {len(boxes)}")
    parsed = []
    for index, entry in enumerate(boxes):
        name = f"boxes[{index}]"
        if isinstance(entry, Tensor):
            check_tensor(entry, name, ndim=2)
            if entry.shape[1] != 5:
                raise ValueError(
                    f"`{name}` must have shape (M, 5) as (class, x1, y1, x2, y2), "
                    f"got {format_shape(entry.shape)}"
                )
            coords, classes = entry[:, 1:], entry[:, 0]
        elif isinstance(entry, (tuple, list)) and len(entry) == 2:
            coords, classes = entry
            check_tensor(coords, f"{name}[0]", ndim=2)
            check_tensor(classes, f"{name}[1]", ndim=1)
            if coords.shape[1] != 4 or classes.shape[0] != coords.shape[0]:
                raise ValueError(
                    f"`{name}` must be (boxes (M, 4), classes (M,)), "
                    f"got {format_shape(coords.shape)} and {format_shape(classes.shape)}"
                )
        else:
            raise TypeError(
                f"`{name}` must be a (M, 5) tensor or a (boxes, classes) pair, got {type_name(entry)}"
            )
        coords = coords.detach().to("cpu", torch.float64)
        classes = classes.detach().to("cpu")
        check_finite(coords, name)
        if classes.is_floating_point() and not bool((classes == classes.round()).all()):
            raise ValueError(f"`{name}` class ids must be integers, got {classes.tolist()}")
        classes = classes.long()
        if classes.numel() and (int(classes.min()) < 0 or int(classes.max()) >= num_classes):
            raise ValueError(f"`{name}` class ids must be in [0, {num_classes - 1}], got {classes.tolist()}")
        malformed = (coords[:, 2] < coords[:, 0]) | (coords[:, 3] < coords[:, 1])
        if bool(malformed.any()):
            bad = coords[malformed][0].tolist()
            raise ValueError(f"`{name}` holds a box with x2 < x1 or y2 < y1: (x1, y1, x2, y2) = {bad}")
        parsed.append((coords, classes))
    return parsed


def _localization_update(
    maps: Tensor,
    labels: Tensor,
    boxes: BoxesArg,
    thresholds: list[float],
    iou: float,
    components: BoxComponents,
) -> Tensor:
    """``[[errors, pairs], ...]`` (int64 ``(T, 2)``, CPU) per threshold over the (image, present class) pairs.

    Inputs are checked and the maps of the present classes normalised once, whatever the number of
    thresholds; only the thresholding and the connected components are done per threshold.
    """
    check_maps_and_labels(maps, labels)
    truth = _check_boxes(boxes, maps.shape[0], maps.shape[1])
    from torchvision.ops import box_iou  # imported here: slow to import

    images, classes = torch.nonzero(labels.to(device=maps.device, dtype=torch.bool), as_tuple=True)
    present = normalize_maps(maps[images, classes].detach(), "max").cpu()
    targets = [
        truth[image][0][truth[image][1] == cls]
        for image, cls in zip(images.tolist(), classes.tolist(), strict=True)
    ]
    counts = torch.zeros(len(thresholds), 2, dtype=torch.long)
    counts[:, 1] = len(present)
    for row, threshold in enumerate(thresholds):
        kept = (present > threshold).numpy()
        for mask, target in zip(kept, targets, strict=True):
            predicted = torch.from_numpy(_mask_boxes(mask, components)).to(torch.float64)
            hit = (
                target.numel() > 0
                and predicted.numel() > 0
                and bool((box_iou(predicted, target) >= iou).any())
            )
            counts[row, 0] += int(not hit)
    return counts


def _localization_compute(counts: Tensor) -> Tensor:
    """Error fraction from ``[..., [errors, pairs]]``; NaN where there were no pairs."""
    errors, pairs = counts[..., 0].to(torch.float64), counts[..., 1].to(torch.float64)
    return torch.where(pairs > 0, errors / pairs.clamp_min(1), torch.full_like(pairs, torch.nan))


def _check_options(iou: float, components: BoxComponents) -> tuple[float, BoxComponents]:
    return check_threshold(iou, "iou"), check_choice(components, "components", ("largest", "all"))


# --------------------------------------------------------------------------------------------- public API
def localization_error(
    maps: Tensor,
    labels: Tensor,
    *,
    boxes: BoxesArg,
    thresholds: float | Sequence[float] = 0.15,
    iou: float = 0.5,
    components: BoxComponents = "largest",
) -> Tensor:
    """Localisation error (paper Eq. 8, "mLEV") as a fraction in [0, 1]: lower is better.

    Every (image, class) pair with ``labels[b, k] = 1`` is one trial. Its map gives boxes with
    [`cam_boxes`][hiercam.cam_boxes] (at each threshold, ``components``); the trial is a success when
    some predicted box has ``IoU >= iou`` (``torchvision.ops.box_iou``) with some ground-truth box of class
    ``k`` in that image, and an error otherwise, including when there is no predicted box or no ground-truth
    box of that class. Classes with ``labels[b, k] = 0`` are not evaluated, whatever boxes they have; an
    image with no present class contributes nothing. The result is ``errors / trials`` over the whole batch.

    Args:
        maps: class activation maps ``(B, K, H, W)`` in the frame of the boxes, floating point, finite.
        labels: multi-hot image labels ``(B, K)`` (0/1, any dtype), normally the ground truth.
        boxes: ground-truth boxes, a list with one entry per image, each either a tensor ``(M, 5)`` of rows
            ``(class, x1, y1, x2, y2)`` or a pair ``(boxes (M, 4), classes (M,))``; ``M`` may be 0.
            Coordinates follow the convention of the module docstring (exclusive far edges).
        thresholds: background threshold(s) of the max-normalised maps in (0, 1): a float gives a scalar
            error, a sequence of ``T`` floats one error per threshold (maps normalised once).
        iou: the IoU a box needs to count as a hit, in (0, 1); the paper uses 0.5.
        components: ``"largest"`` (one box per map) or ``"all"`` (every component), see
            [`cam_boxes`][hiercam.cam_boxes].

    Returns:
        A float64 tensor on the CPU, 0-dim for a float threshold or ``(T,)``: the error fraction, NaN if no
        class is present in any image.

    Raises:
        TypeError: wrong argument types.
        ValueError: shapes disagree, the batch is empty, ``labels`` is not 0/1, ``maps`` is not finite, a
            box is malformed (``x2 < x1`` or ``y2 < y1``) or has a class outside ``[0, K)``, or an option is
            out of range.

    Examples:
        >>> import torch
        >>> maps = torch.zeros(1, 2, 8, 8)
        >>> maps[0, 0, 2:6, 2:6] = 1.0  # class 0: right where its box is
        >>> maps[0, 1, 0:2, 0:2] = 1.0  # class 1: far from its box
        >>> boxes = [torch.tensor([[0, 2, 2, 6, 6], [1, 4, 4, 8, 8]])]
        >>> localization_error(maps, torch.tensor([[1, 1]]), boxes=boxes)
        tensor(0.5000, dtype=torch.float64)
    """
    values, scalar = check_thresholds(thresholds)
    iou, components = _check_options(iou, components)
    errors = _localization_compute(_localization_update(maps, labels, boxes, values, iou, components))
    return errors[0] if scalar else errors


class LocalizationError(Metric):
    """Streaming localisation error (paper Eq. 8): counts of errors and trials accumulated over a dataset.

    The figure is ``errors / trials`` over all (image, present class) pairs seen, exactly
    [`localization_error`][hiercam.localization_error] on the whole dataset at once; both share their
    kernels. With a sequence of ``thresholds`` every update scores every threshold (inputs checked and maps
    normalised once per batch), so a threshold can be chosen on validation data in one pass, as with
    [`MeanIoU`][hiercam.MeanIoU].

    A metric like the others: ``update`` / ``compute`` / ``reset``, calling it returns the batch's figure and
    accumulates it, ``state_dict`` / ``load_state_dict`` and ``.to(device)`` as any ``nn.Module``. In a
    ``torch.distributed`` run, ``compute`` sums the counts of all processes (every process must call it, one
    with no data too).

    Args:
        thresholds: background threshold(s) in (0, 1): a float gives a scalar error, a sequence of ``T``
            floats one error per threshold.
        iou: IoU needed for a hit, in (0, 1).
        components: ``"largest"`` or ``"all"`` (see [`cam_boxes`][hiercam.cam_boxes]).
        sync_on_compute: sum the state across processes in [`compute`][hiercam.LocalizationError.compute].

    Attributes:
        counts: int64 ``(T, 2)``, ``[errors, trials]`` per threshold accumulated so far.

    Examples:
        >>> import torch
        >>> metric = LocalizationError()
        >>> maps = torch.zeros(1, 1, 8, 8)
        >>> maps[0, 0, 2:6, 2:6] = 1.0
        >>> metric.update(maps, torch.tensor([[1]]), boxes=[torch.tensor([[0, 2, 2, 6, 6]])])
        >>> metric.update(maps, torch.tensor([[1]]), boxes=[torch.tensor([[0, 0, 0, 2, 2]])])
        >>> metric.compute()
        tensor(0.5000, dtype=torch.float64)
    """

    counts: Tensor

    def __init__(
        self,
        *,
        thresholds: float | Sequence[float] = 0.15,
        iou: float = 0.5,
        components: BoxComponents = "largest",
        sync_on_compute: bool = True,
    ) -> None:
        super().__init__(sync_on_compute=sync_on_compute)
        values, self._scalar = check_thresholds(thresholds)
        self.iou, self.components = _check_options(iou, components)
        self.thresholds: float | tuple[float, ...] = values[0] if self._scalar else tuple(values)
        self._values = values
        self.add_state("counts", torch.zeros((len(values), 2), dtype=torch.long), "sum")

    def update(self, maps: Tensor, labels: Tensor, *, boxes: BoxesArg) -> None:
        """Add a batch; arguments as in [`localization_error`][hiercam.localization_error]."""
        batch = _localization_update(maps, labels, boxes, self._values, self.iou, self.components)
        self.counts = self.counts + batch.to(self.counts.device)

    def forward(self, maps: Tensor, labels: Tensor, *, boxes: BoxesArg) -> Tensor:
        """The error of this batch alone, which is also added to the state."""
        result: Tensor = super().forward(maps, labels, boxes=boxes)
        return result

    def _compute(self) -> Tensor:
        errors = _localization_compute(self.counts)
        return errors[0] if self._scalar else errors

    def compute(self) -> Tensor:
        """Error fraction over everything seen since ``reset``, NaN before any trial.

        Returns:
            A float64 tensor, 0-dim for a float threshold or ``(T,)``.
        """
        result: Tensor = super().compute()
        return result

    def extra_repr(self) -> str:
        """The options, shown by ``repr``."""
        return f"thresholds={self.thresholds}, iou={self.iou}, components={self.components!r}"
