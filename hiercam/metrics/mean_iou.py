"""Segmentation quality of CAMs: masks at a background threshold, and mean IoU (paper Eq. 7).

The convention is IRN's (jiwoon-ahn/irn, ``step/eval_cam.py``): every map of a class present in the image is
max-normalised, a constant background plane is put at the threshold (0.15 in the paper), and each pixel takes
the arg-max; label 0 is the background and class ``k`` is label ``k + 1``. The IoU of every class is computed
from a confusion matrix accumulated over the whole dataset (not a mean over images), and mIoU is their mean
over the classes that occur in the prediction or the ground truth. Figures are fractions in [0, 1].

[`mean_iou`][hiercam.mean_iou] and [`MeanIoU`][hiercam.MeanIoU] share the private kernels ``_maps_update``
/ ``_iou_compute`` (the torchmetrics pattern), so the functional and the streaming form agree by construction;
[`mean_iou_from_masks`][hiercam.mean_iou_from_masks] scores predicted label maps with the same kernels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from hiercam._validation import check_int, check_threshold, format_shape
from hiercam.maps import normalize_maps
from hiercam.metrics._base import Metric
from hiercam.metrics._confusion import (
    check_label_maps,
    check_mask_dtype,
    check_pred_range,
    check_table_size,
    confmat_update,
    sweep_update,
    target_rows,
)
from hiercam.metrics._inputs import check_maps_and_labels, check_thresholds

__all__ = ["MeanIoUResult", "maps_to_masks", "mean_iou", "mean_iou_from_masks", "MeanIoU"]


class MeanIoUResult(NamedTuple):
    """Mean and per-class IoU, float64 tensors on the state's device.

    Returned by [`mean_iou`][hiercam.mean_iou], [`mean_iou_from_masks`][hiercam.mean_iou_from_masks] and
    [`MeanIoU.compute`][hiercam.MeanIoU.compute].

    Attributes:
        miou: the mean IoU over the classes that occur, a fraction in [0, 1]: a 0-dim tensor for one
            threshold, ``(T,)`` for a sequence of ``T`` thresholds. NaN when no class occurs at all (or with
            no data).
        per_class: IoU of every label ``(C,)`` (``(T, C)`` for a sequence of thresholds); NaN for a class
            absent from both prediction and ground truth, and for ``ignore_index`` when it is a class label.
    """

    miou: Tensor
    per_class: Tensor


# --------------------------------------------------------------------------------------------- maps -> masks
def maps_to_masks(maps: Tensor, labels: Tensor, threshold: float = 0.15) -> Tensor:
    """Turn class activation maps into predicted masks (label maps) with IRN's background threshold.

    The maps of the classes present in ``labels`` are max-normalised with
    [`normalize_maps`][hiercam.normalize_maps] (an all-zero map stays zero), a constant background plane is
    set at ``threshold``, and each pixel takes the arg-max. Absent classes never win. **Ties** go to the
    background (a class must be strictly above ``threshold``, as in IRN, which puts the background plane
    first), then to the lower class index. An image with no present class is all background.

    The maps must already have the resolution of the ground truth (upsample them first, e.g. with
    ``torch.nn.functional.interpolate``).

    Args:
        maps: class activation maps ``(B, K, H, W)``, floating point, finite, any device.
        labels: multi-hot image labels ``(B, K)`` (0/1, any dtype): ground truth at evaluation time.
        threshold: the background score, strictly between 0 and 1 (the paper and IRN use 0.15).

    Returns:
        ``LongTensor (B, H, W)`` on the device of ``maps``: 0 for background, ``k + 1`` for class ``k``.

    Raises:
        TypeError: ``maps`` is not a floating-point tensor, or ``threshold`` is not a number.
        ValueError: shapes disagree, the batch is empty, ``labels`` is not 0/1, ``maps`` is not finite, or
            ``threshold`` is not in (0, 1).

    Examples:
        >>> import torch
        >>> maps = torch.tensor([[[[0.9, 0.1], [0.0, 0.0]], [[0.0, 0.5], [1.0, 0.2]]]])
        >>> maps_to_masks(maps, torch.tensor([[1, 1]]), threshold=0.15)
        tensor([[[1, 2],
                 [2, 2]]])
        >>> maps_to_masks(maps, torch.tensor([[0, 1]]))
        tensor([[[0, 2],
                 [2, 2]]])
    """
    threshold = check_threshold(threshold, "threshold")
    value, index = _cam_peaks(*check_maps_and_labels(maps, labels))
    return _peaks_to_labels(value, index, threshold)


def _cam_peaks(maps: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Best normalised score ``(B, H, W)`` over the present classes and its class (the lowest on ties).

    The score is ``-inf`` where no class is present. Only the maps of present classes are normalised: each
    image's present classes are gathered in ascending order into ``(B, P, H, W)``, ``P`` the largest number
    of present classes in the batch (a few, against ``K`` = 20 or 1000), padded with ``-inf``.
    """
    batch, _, height, width = maps.shape
    present = labels.to(device=maps.device, dtype=torch.bool)
    width_p = int(present.sum(dim=1).max())
    if width_p == 0:
        empty = torch.full((batch, height, width), -torch.inf, dtype=maps.dtype, device=maps.device)
        return empty, torch.zeros((batch, height, width), dtype=torch.long, device=maps.device)
    # present classes first, each group in ascending class order (stable sort)
    order = torch.sort((~present).to(torch.uint8), dim=1, stable=True).indices[:, :width_p]
    real = present.gather(1, order)[:, :, None, None]
    chosen = maps.detach().gather(1, order[:, :, None, None].expand(-1, -1, height, width))
    scores = normalize_maps(chosen, "max", validate_args=False).masked_fill(~real, -torch.inf)  # checked
    value, slot = scores.max(dim=1)
    return value, order.gather(1, slot.reshape(batch, -1)).reshape(batch, height, width)


def _peaks_to_labels(value: Tensor, index: Tensor, threshold: float) -> Tensor:
    """Label 0 unless the best class is strictly above ``threshold``, else its index + 1."""
    return torch.where(value > threshold, index + 1, torch.zeros_like(index))


# --------------------------------------------------------------------------------------------- kernels
def _iou_compute(confmat: Tensor, ignore_index: int | None) -> MeanIoUResult:
    """Per-class IoU and their NaN-mean from a confusion matrix ``(..., C, C)``."""
    matrix = confmat.to(torch.float64)
    hits = matrix.diagonal(dim1=-2, dim2=-1)
    union = matrix.sum(dim=-1) + matrix.sum(dim=-2) - hits
    nan = torch.full_like(hits, torch.nan)
    per_class = torch.where(union > 0, hits / union.clamp_min(1), nan)
    if ignore_index is not None and 0 <= ignore_index < per_class.shape[-1]:
        per_class[..., ignore_index] = torch.nan
    return MeanIoUResult(per_class.nanmean(dim=-1), per_class)


def _check_ignore_index(ignore_index: int | None) -> int | None:
    if ignore_index is None:
        return None
    return check_int(ignore_index, "ignore_index")


def _check_num_classes(num_classes: int | None, maps: Tensor | None = None) -> int:
    """``C``, labels counted with the background: at least 2, and ``K + 1`` for maps ``(B, K, H, W)``."""
    if num_classes is None:
        if maps is None:
            raise TypeError("`num_classes` must be an int, got None")
        return int(maps.shape[1]) + 1
    num_classes = check_int(num_classes, "num_classes", minimum=2)
    if maps is not None and maps.shape[1] != num_classes - 1:
        raise ValueError(
            f"`maps` must have K = num_classes - 1 = {num_classes - 1} maps (label 0 is the background), "
            f"got shape {format_shape(maps.shape)}"
        )
    return num_classes


def _maps_update(
    maps: Tensor,
    labels: Tensor,
    masks: Tensor,
    thresholds: Sequence[float],
    num_classes: int | None,
    ignore_index: int | None,
) -> Tensor:
    """Confusion matrices ``(T, C, C)`` of ``maps_to_masks`` at every threshold against ``masks``.

    Inputs are checked (here only: ``mean_iou`` and ``MeanIoU.update`` do not check them before), and
    normalisation, arg-max and counting done once, whatever the number of thresholds. ``num_classes`` is
    ``C``, or ``None`` for ``K + 1``.
    """
    check_maps_and_labels(maps, labels)
    num_classes = _check_num_classes(num_classes, maps)
    check_table_size(num_classes, len(thresholds))
    check_mask_dtype(masks, "masks")
    expected = (maps.shape[0], *maps.shape[2:])
    if masks.shape != expected or masks.device != maps.device:
        raise ValueError(
            f"`masks` must have shape (B, H, W) = {format_shape(expected)} on {maps.device} to match `maps`, "
            f"got {format_shape(masks.shape)} on {masks.device}"
        )
    value, index = _cam_peaks(maps, labels)
    rows = target_rows(masks, num_classes, ignore_index)
    return sweep_update(rows, value, index, thresholds, num_classes, ignore_index)


def _select(result: MeanIoUResult, scalar: bool) -> MeanIoUResult:
    """The only row of a one-threshold result when a single float threshold was given."""
    return MeanIoUResult(result.miou[0], result.per_class[0]) if scalar else result


# --------------------------------------------------------------------------------------------- public API
def mean_iou(
    maps: Tensor,
    labels: Tensor,
    *,
    masks: Tensor,
    num_classes: int | None = None,
    thresholds: float | Sequence[float] = 0.15,
    ignore_index: int | None = 255,
) -> MeanIoUResult:
    """Mean IoU of class activation maps against ground-truth masks (paper Eq. 7), over all the pixels given.

    The maps become predicted masks with the rule of [`maps_to_masks`][hiercam.maps_to_masks] at every
    threshold. The IoU of label ``c`` is ``TP / (TP + FP + FN)`` summed over *all* images (the dataset-level
    confusion matrix, as in IRN and the VOC benchmark), not a mean of per-image IoUs. Labels that occur
    neither in the prediction nor in ``masks`` are left out of the mean (NaN in ``per_class``). Pixels whose
    mask value is ``ignore_index`` are left out. Same figure as ``torchmetrics``'
    ``MulticlassJaccardIndex(num_classes, ignore_index=..., average="macro")`` on ``maps_to_masks``' output.

    Args:
        maps: class activation maps ``(B, K, H, W)`` at the resolution of ``masks``, floating point, finite.
        labels: multi-hot image labels ``(B, K)`` (0/1): only the maps of present classes can win a pixel.
        masks: ground-truth masks ``(B, H, W)``, integer, 0 for background, ``k + 1`` for class ``k``, or
            ``ignore_index``.
        num_classes: ``C = K + 1``, labels counted with the background (21 for VOC); inferred from ``maps``
            when ``None``.
        thresholds: background threshold(s) in (0, 1): a float gives a scalar mIoU, a sequence of ``T``
            floats one mIoU per threshold (all computed in one pass).
        ignore_index: mask value to leave out (255 marks VOC's object boundaries), or ``None``.

    Returns:
        [`MeanIoUResult`][hiercam.MeanIoUResult] ``(miou, per_class)``, fractions in [0, 1] (float64):
        shapes ``()`` and ``(C,)`` for a float threshold, ``(T,)`` and ``(T, C)`` for a sequence.

    Raises:
        TypeError: a non-tensor or wrongly typed input (float masks, integer maps), or a non-number option.
        ValueError: shapes or devices disagree, the batch is empty, ``labels`` is not 0/1, ``maps`` is not
            finite, a mask value is out of range, a threshold is not in (0, 1), or the confusion matrices
            ``(T, C, C)`` would hold more than ``2**27`` counts (1 GiB). A large ``ignore_index``
            (``10**9``) costs nothing: it gets one row of the count table, not a table up to it.

    Examples:
        >>> import torch
        >>> maps = torch.tensor([[[[0.9, 0.3]], [[0.0, 0.0]]]])  # (B, K, H, W) = (1, 2, 1, 2)
        >>> labels = torch.tensor([[1, 0]])
        >>> masks = torch.tensor([[[1, 0]]])  # class 0 (label 1) on the left, background on the right
        >>> float(mean_iou(maps, labels, masks=masks, thresholds=0.5).miou)
        1.0
        >>> mean_iou(maps, labels, masks=masks, thresholds=[0.1, 0.5]).miou
        tensor([0.2500, 1.0000], dtype=torch.float64)
    """
    values, scalar = check_thresholds(thresholds)
    ignore_index = _check_ignore_index(ignore_index)
    if num_classes is not None:
        num_classes = _check_num_classes(num_classes)
    confmat = _maps_update(maps, labels, masks, values, num_classes, ignore_index)
    return _select(_iou_compute(confmat, ignore_index), scalar)


def mean_iou_from_masks(
    pred_masks: Tensor, masks: Tensor, num_classes: int, ignore_index: int | None = 255
) -> MeanIoUResult:
    """Mean IoU of predicted masks (label maps) against ground-truth masks, from one confusion matrix.

    For predictions that are already label maps (from [`maps_to_masks`][hiercam.maps_to_masks] or any
    segmenter). The definition is that of [`mean_iou`][hiercam.mean_iou]: a dataset-level confusion matrix,
    labels absent from both sides left out, ``ignore_index`` pixels left out (and that label too, if it is a
    class). To stream label maps batch by batch, ``torchmetrics``'
    ``MulticlassJaccardIndex(num_classes, ignore_index=..., average="macro")`` gives the same figure.

    Args:
        pred_masks: predicted labels ``(B, H, W)``, any integer dtype, values in ``[0, num_classes)``.
        masks: ground-truth labels ``(B, H, W)``, values in ``[0, num_classes)`` or ``ignore_index``.
        num_classes: ``C``, the number of labels, background included (21 for VOC).
        ignore_index: mask value to leave out, or ``None``.

    Returns:
        [`MeanIoUResult`][hiercam.MeanIoUResult] ``(miou, per_class)``: a 0-dim float64 tensor and a ``(C,)``
        one, fractions in [0, 1].

    Raises:
        TypeError: inputs are not integer tensors, or ``num_classes`` / ``ignore_index`` are not ints.
        ValueError: shapes or devices differ, the batch is empty, labels are out of range, or
            ``num_classes**2`` is over ``2**27`` (a confusion matrix of more than 1 GiB).

    Examples:
        >>> import torch
        >>> pred_masks = torch.tensor([[[0, 1], [1, 1]]])
        >>> masks = torch.tensor([[[0, 1], [0, 255]]])
        >>> result = mean_iou_from_masks(pred_masks, masks, num_classes=3)
        >>> result.per_class
        tensor([0.5000, 0.5000,    nan], dtype=torch.float64)
        >>> float(result.miou)
        0.5
    """
    num_classes = check_int(num_classes, "num_classes", minimum=1)
    check_table_size(num_classes)
    ignore_index = _check_ignore_index(ignore_index)
    check_label_maps(pred_masks, masks)
    check_pred_range(pred_masks, num_classes)
    rows = target_rows(masks, num_classes, ignore_index)
    return _iou_compute(confmat_update(rows, pred_masks, num_classes, ignore_index), ignore_index)


class MeanIoU(Metric):
    """Streaming mean IoU of class activation maps: confusion matrices accumulated over a dataset.

    The figure is dataset-level (one confusion matrix for all images), exactly
    [`mean_iou`][hiercam.mean_iou] on the whole dataset at once; both share their kernels. With a sequence
    of ``thresholds`` every update scores every threshold (normalisation, arg-max and counting once per
    batch), so a threshold can be picked on validation data in one pass.

    A metric like the others: ``update`` / ``compute`` / ``reset``, calling it returns the
    batch's figure and accumulates it, ``state_dict`` / ``load_state_dict`` and ``.to(device)`` as any
    ``nn.Module``. In a ``torch.distributed`` run, ``compute`` sums the confusion matrices of all processes
    (every process must call it, one with no data too); the sum is taken on the backend's device (the GPU
    for NCCL), wherever the state lives.

    Args:
        num_classes: ``C = K + 1``, labels counted with the background (at least 2).
        thresholds: background threshold(s) in (0, 1): a float gives a scalar mIoU, a sequence of ``T``
            floats one mIoU per threshold.
        ignore_index: mask value to leave out, or ``None`` (see [`mean_iou`][hiercam.mean_iou]).
        sync_on_compute: sum the state across processes in [`compute`][hiercam.MeanIoU.compute].

    Attributes:
        confmat: the accumulated int64 confusion matrices ``(T, C, C)`` (rows: truth, columns: prediction),
            one per threshold (``T = 1`` for a float threshold).

    Raises:
        TypeError, ValueError: bad ``num_classes``, ``ignore_index`` or ``thresholds``, or a state
            ``(T, C, C)`` of more than ``2**27`` counts (1 GiB), refused before it is allocated.

    Examples:
        >>> import torch
        >>> metric = MeanIoU(num_classes=3, thresholds=[0.1, 0.5])
        >>> maps = torch.tensor([[[[0.9, 0.3]], [[0.0, 0.0]]]])  # (B, K, H, W) = (1, 2, 1, 2)
        >>> metric.update(maps, torch.tensor([[1, 0]]), masks=torch.tensor([[[1, 0]]]))
        >>> metric.compute().miou
        tensor([0.2500, 1.0000], dtype=torch.float64)
    """

    confmat: Tensor

    def __init__(
        self,
        num_classes: int,
        *,
        thresholds: float | Sequence[float] = 0.15,
        ignore_index: int | None = 255,
        sync_on_compute: bool = True,
    ) -> None:
        super().__init__(sync_on_compute=sync_on_compute)
        self.num_classes = _check_num_classes(num_classes)
        self.ignore_index = _check_ignore_index(ignore_index)
        values, self._scalar = check_thresholds(thresholds)
        self.thresholds: float | tuple[float, ...] = values[0] if self._scalar else tuple(values)
        self._values = values
        check_table_size(self.num_classes, len(values))
        shape = (len(values), self.num_classes, self.num_classes)
        self.add_state("confmat", torch.zeros(shape, dtype=torch.long), "sum")

    def update(self, maps: Tensor, labels: Tensor, *, masks: Tensor) -> None:
        """Add a batch: arguments as in [`mean_iou`][hiercam.mean_iou], ``K = num_classes - 1`` maps.

        Raises:
            TypeError, ValueError: see [`mean_iou`][hiercam.mean_iou]; nothing is added then.
        """
        batch = _maps_update(maps, labels, masks, self._values, self.num_classes, self.ignore_index)
        self.confmat = self.confmat.to(batch.device) + batch

    def forward(self, maps: Tensor, labels: Tensor, *, masks: Tensor) -> MeanIoUResult:
        """The mIoU of this batch alone, which is also added to the state."""
        result: MeanIoUResult = super().forward(maps, labels, masks=masks)
        return result

    def _compute(self) -> MeanIoUResult:
        return _select(_iou_compute(self.confmat, self.ignore_index), self._scalar)

    def compute(self) -> MeanIoUResult:
        """Mean and per-class IoU of everything seen since the last [`reset`][hiercam.MeanIoU.reset].

        Returns:
            [`MeanIoUResult`][hiercam.MeanIoUResult] ``(miou, per_class)``: shapes ``()`` and ``(C,)``, or
            ``(T,)`` and ``(T, C)`` for a sequence of thresholds (row ``i`` for ``thresholds[i]``); NaN
            with no data.
        """
        result: MeanIoUResult = super().compute()
        return result

    def _options(self) -> dict[str, object]:
        return {"thresholds": self._values, "ignore_index": self.ignore_index}

    def extra_repr(self) -> str:
        """The options, shown by ``repr``."""
        options = (self.num_classes, self.thresholds, self.ignore_index)
        return "num_classes={}, thresholds={}, ignore_index={}".format(*options)
