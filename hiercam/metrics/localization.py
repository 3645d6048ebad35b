"""Localisation quality of CAMs: boxes around thresholded maps, and the localisation error (paper Eq. 8).

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
from hiercam.metrics._distributed import sync_sum
from hiercam.metrics._inputs import check_cams_and_labels

__all__ = ["BoxMode", "cam_boxes", "localization_error", "LocalizationError"]

BoxMode = Literal["largest", "all"]
BoxesArg = Sequence[Tensor | tuple[Tensor, Tensor]]

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


# --------------------------------------------------------------------------------------------- boxes
def cam_boxes(cam: Tensor, threshold: float = 0.15, mode: BoxMode = "largest") -> Tensor:
    """Boxes around the connected regions of a CAM above a threshold.

    The map is max-normalised with [`normalize_maps`][hiercam.normalize_maps] (a no-op for maps whose peak is
    already 1), pixels strictly above ``threshold`` are kept (the rule of
    [`cams_to_labels`][hiercam.cams_to_labels]), and ``scipy.ndimage.label`` splits them into 8-connected
    components.

    Args:
        cam: one map ``(H, W)``, floating point, any device.
        threshold: strictly between 0 and 1 (the paper uses 0.15).
        mode: ``"largest"``: the box of the component with the most pixels (the first in row-major order on
            ties); ``"all"``: one box per component, in row-major order of their first pixel.

    Returns:
        Float32 boxes ``(M, 4)`` as ``(x1, y1, x2, y2)`` with exclusive far edges (module docstring), on the
        device of ``cam``; ``M = 0`` when no pixel is above the threshold, ``M <= 1`` for ``"largest"``.

    Raises:
        TypeError: ``cam`` is not a floating-point tensor.
        ValueError: ``cam`` is not 2-D or not finite, ``threshold`` is not in (0, 1), or ``mode`` is unknown.

    Examples:
        >>> import torch
        >>> cam = torch.zeros(6, 8)
        >>> cam[1:3, 1:4] = 1.0  # 6 pixels
        >>> cam[4, 6] = 0.5  # 1 pixel
        >>> cam[5, 7] = 0.5  # touches the previous one diagonally
        >>> cam_boxes(cam)
        tensor([[1., 1., 4., 3.]])
        >>> cam_boxes(cam, mode="all")
        tensor([[1., 1., 4., 3.],
                [6., 4., 8., 6.]])
    """
    check_tensor(cam, "cam", dims="H, W", floating=True)
    check_finite(cam, "cam")
    threshold = check_threshold(threshold, "threshold")
    check_choice(mode, "mode", ("largest", "all"))
    mask = _cam_masks(cam, threshold).cpu().numpy()
    return torch.from_numpy(_mask_boxes(mask, mode)).to(device=cam.device)


def _cam_masks(maps: Tensor, threshold: float) -> Tensor:
    """Pixels of the max-normalised maps ``(..., H, W)`` strictly above ``threshold``."""
    return normalize_maps(maps.detach(), "max") > threshold


def _mask_boxes(mask: np.ndarray, mode: BoxMode) -> np.ndarray:
    """Float32 boxes ``(M, 4)`` of the 8-connected components of a boolean ``(H, W)`` mask."""
    from scipy import ndimage  # imported here: SciPy is slow to import

    components, count = ndimage.label(mask, structure=_EIGHT_CONNECTED)
    if count == 0:
        return np.zeros((0, 4), dtype=np.float32)
    if mode == "largest":
        sizes = np.bincount(components.ravel(), minlength=count + 1)[1:]
        keep = int(np.argmax(sizes)) + 1
        components = (components == keep).astype(np.int32)
    slices = ndimage.find_objects(components)
    return np.array(
        [[cols.start, rows.start, cols.stop, rows.stop] for rows, cols in slices if rows is not None],
        dtype=np.float32,
    )


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
    cams: Tensor,
    labels: Tensor,
    boxes: BoxesArg,
    thresholds: list[float],
    iou: float,
    mode: BoxMode,
) -> Tensor:
    """``[[errors, pairs], ...]`` (int64 ``(T, 2)``, CPU) per threshold over the (image, present class) pairs.

    Inputs are checked and the maps of the present classes normalised once, whatever the number of
    thresholds; only the thresholding and the connected components are done per threshold.
    """
    check_cams_and_labels(cams, labels)
    truth = _check_boxes(boxes, cams.shape[0], cams.shape[1])
    from torchvision.ops import box_iou  # imported here: slow to import

    images, classes = torch.nonzero(labels.to(device=cams.device, dtype=torch.bool), as_tuple=True)
    maps = normalize_maps(cams[images, classes].detach(), "max").cpu()
    targets = [
        truth[image][0][truth[image][1] == cls]
        for image, cls in zip(images.tolist(), classes.tolist(), strict=True)
    ]
    counts = torch.zeros(len(thresholds), 2, dtype=torch.long)
    counts[:, 1] = len(maps)
    for row, threshold in enumerate(thresholds):
        masks = (maps > threshold).numpy()
        for mask, target in zip(masks, targets, strict=True):
            predicted = torch.from_numpy(_mask_boxes(mask, mode)).to(torch.float64)
            hit = (
                target.numel() > 0
                and predicted.numel() > 0
                and bool((box_iou(predicted, target) >= iou).any())
            )
            counts[row, 0] += int(not hit)
    return counts


def _localization_compute(counts: Tensor) -> Tensor:
    """Error percentage from ``[..., [errors, pairs]]``; NaN where there were no pairs."""
    errors, pairs = counts[..., 0].to(torch.float64), counts[..., 1].to(torch.float64)
    return torch.where(pairs > 0, 100.0 * errors / pairs.clamp_min(1), torch.full_like(pairs, torch.nan))


def _check_options(threshold: float, iou: float, mode: BoxMode) -> tuple[float, float, BoxMode]:
    return (
        check_threshold(threshold, "threshold"),
        check_threshold(iou, "iou"),
        check_choice(mode, "mode", ("largest", "all")),
    )


# --------------------------------------------------------------------------------------------- public API
def localization_error(
    cams: Tensor,
    labels: Tensor,
    boxes: BoxesArg,
    threshold: float = 0.15,
    iou: float = 0.5,
    mode: BoxMode = "largest",
) -> Tensor:
    """Localisation error (paper Eq. 8, "mLEV") in percent: lower is better.

    Every (image, class) pair with ``labels[b, k] = 1`` is one trial. Its CAM gives boxes with
    [`cam_boxes`][hiercam.cam_boxes] (``threshold``, ``mode``); the trial is a success when some predicted box
    has ``IoU >= iou`` (``torchvision.ops.box_iou``) with some ground-truth box of class ``k`` in that image,
    and an error otherwise, including when there is no predicted box or no ground-truth box of that class.
    Classes with ``labels[b, k] = 0`` are not evaluated, whatever boxes they have; an image with no present
    class contributes nothing. The result is ``100 * errors / trials`` over the whole batch.

    Args:
        cams: CAMs ``(B, K, H, W)`` in the frame of the boxes, floating point, any device.
        labels: multi-hot image labels ``(B, K)`` (0/1, any dtype), normally the ground truth.
        boxes: ground-truth boxes, a list with one entry per image, each either a tensor ``(M, 5)`` of rows
            ``(class, x1, y1, x2, y2)`` or a pair ``(boxes (M, 4), classes (M,))``; ``M`` may be 0.
            Coordinates follow the convention of the module docstring (exclusive far edges).
        threshold: background threshold of the max-normalised maps, in (0, 1).
        iou: the IoU a box needs to count as a hit, in (0, 1); the paper uses 0.5.
        mode: ``"largest"`` (one box per map) or ``"all"`` (every component), see
            [`cam_boxes`][hiercam.cam_boxes].

    Returns:
        A 0-dim float64 tensor on the CPU: the error in percent, NaN if no class is present in any image.

    Raises:
        TypeError: wrong argument types.
        ValueError: shapes disagree, the batch is empty, ``labels`` is not 0/1, a box is malformed
            (``x2 < x1`` or ``y2 < y1``) or has a class outside ``[0, K)``, or an option is out of range.

    Examples:
        >>> import torch
        >>> cams = torch.zeros(1, 2, 8, 8)
        >>> cams[0, 0, 2:6, 2:6] = 1.0  # class 0: right where its box is
        >>> cams[0, 1, 0:2, 0:2] = 1.0  # class 1: far from its box
        >>> truth = [torch.tensor([[0, 2, 2, 6, 6], [1, 4, 4, 8, 8]])]
        >>> localization_error(cams, torch.tensor([[1, 1]]), truth)
        tensor(50., dtype=torch.float64)
    """
    threshold, iou, mode = _check_options(threshold, iou, mode)
    return _localization_compute(_localization_update(cams, labels, boxes, [threshold], iou, mode)[0])


class LocalizationError:
    """Streaming localisation error (paper Eq. 8): counts of errors and trials accumulated over a dataset.

    The figure is ``100 * errors / trials`` over all (image, present class) pairs seen, exactly as
    [`localization_error`][hiercam.localization_error] on the whole dataset at once. In a
    ``torch.distributed`` run, [`compute`][hiercam.LocalizationError.compute] sums the counts of all processes
    (all_reduce SUM) when a process group of more than one process is initialised; every process must call it
    (use [`to`][hiercam.LocalizationError.to] to put the state on the backend's device).

    With ``thresholds=[t1, t2, ...]`` every update scores every threshold (inputs are checked and the maps
    normalised once per batch) and ``compute`` returns one error per threshold, so a threshold can be
    chosen on validation data in one pass, as with ``MeanIoU(thresholds=...)``.

    Args:
        threshold: background threshold of the max-normalised maps, in (0, 1).
        iou: IoU needed for a hit, in (0, 1).
        mode: ``"largest"`` or ``"all"`` (see [`cam_boxes`][hiercam.cam_boxes]).
        thresholds: several thresholds in (0, 1) instead of ``threshold``, or ``None``.
        sync_on_compute: sum the state across processes in [`compute`][hiercam.LocalizationError.compute].

    Attributes:
        counts: int64 ``[errors, trials]`` accumulated so far; ``(T, 2)`` with ``thresholds``.

    Examples:
        >>> import torch
        >>> metric = LocalizationError()
        >>> cams = torch.zeros(1, 1, 8, 8)
        >>> cams[0, 0, 2:6, 2:6] = 1.0
        >>> metric.update(cams, torch.tensor([[1]]), [torch.tensor([[0, 2, 2, 6, 6]])])
        >>> metric.update(cams, torch.tensor([[1]]), [torch.tensor([[0, 0, 0, 2, 2]])])
        >>> metric.compute()
        tensor(50., dtype=torch.float64)
    """

    def __init__(
        self,
        threshold: float = 0.15,
        iou: float = 0.5,
        mode: BoxMode = "largest",
        *,
        thresholds: Sequence[float] | None = None,
        sync_on_compute: bool = True,
    ) -> None:
        self.threshold, self.iou, self.mode = _check_options(threshold, iou, mode)
        if thresholds is not None:
            if isinstance(thresholds, (str, bytes)) or not isinstance(thresholds, Sequence) or not thresholds:
                raise ValueError(f"`thresholds` must be a non-empty sequence of floats, got {thresholds!r}")
            self.thresholds: list[float] | None = [check_threshold(t, "thresholds") for t in thresholds]
        else:
            self.thresholds = None
        self.sync_on_compute = bool(sync_on_compute)
        self.counts = torch.zeros((len(self.thresholds), 2) if self.thresholds else (2,), dtype=torch.long)

    def update(self, cams: Tensor, labels: Tensor, boxes: BoxesArg) -> None:
        """Add a batch; arguments as in [`localization_error`][hiercam.localization_error]."""
        thresholds = self.thresholds if self.thresholds is not None else [self.threshold]
        batch = _localization_update(cams, labels, boxes, thresholds, self.iou, self.mode)
        self.counts += batch.reshape(self.counts.shape).to(self.counts.device)

    def compute(self) -> Tensor:
        """Error in percent over everything seen since ``reset``, NaN before any trial.

        Returns:
            A 0-dim float64 tensor, or ``(T,)`` with ``thresholds``.
        """
        counts = sync_sum(self.counts) if self.sync_on_compute else self.counts
        return _localization_compute(counts)

    def reset(self) -> None:
        """Forget everything seen so far."""
        self.counts = torch.zeros_like(self.counts)

    def to(self, device: torch.device | str) -> LocalizationError:
        """Move the state to ``device``; returns ``self``."""
        self.counts = self.counts.to(device)
        return self

    def __repr__(self) -> str:
        return f"LocalizationError(threshold={self.threshold}, iou={self.iou}, mode={self.mode!r})"
