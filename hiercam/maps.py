"""Map handling in one place: normalising, resizing, and the boxes of masks and maps.

The CAM engine, fusion, the metrics, the datasets and the pipeline all call these functions, so that
"max-normalised", "resized to the image" and "the box of a region" mean the same thing everywhere:

* [`normalize_maps`][hiercam.maps.normalize_maps] rescales maps to ``[0, 1]`` (``"max"``, the IRN convention
  behind mIoU at threshold 0.15, or ``"minmax"``);
* [`resize_maps`][hiercam.maps.resize_maps] resizes maps with one batched bilinear ``interpolate``;
* [`mask_boxes`][hiercam.maps.mask_boxes] boxes the 8-connected regions of a boolean mask, and
  [`cam_boxes`][hiercam.maps.cam_boxes] those of a map above a threshold.

**Box convention.** Boxes are ``(x1, y1, x2, y2)`` in continuous pixel coordinates with *exclusive* far
edges: pixel ``(row, col)`` covers ``[col, col + 1) x [row, row + 1)``, so a region spanning columns ``3..7``
has ``x1 = 3`` and ``x2 = 8``, and ``(x2 - x1) * (y2 - y1)`` is its box area in pixels. This is the
convention of ``torchvision.ops.box_iou`` (areas ``(x2 - x1) * (y2 - y1)``), which the localisation error
uses. Give ground-truth boxes in the same frame and convention: for VOC XML (1-based, inclusive
``xmin..xmax``) use ``x1 = xmin - 1, y1 = ymin - 1, x2 = xmax, y2 = ymax``, scaled like the maps if the images
were resized.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from hiercam._validation import (
    check_choice,
    check_finite,
    check_int,
    check_tensor,
    check_threshold,
    format_shape,
    type_name,
)

__all__ = ["BoxComponents", "NormalizeMode", "cam_boxes", "mask_boxes", "normalize_maps", "resize_maps"]

NormalizeMode = Literal["max", "minmax"]
BoxComponents = Literal["largest", "all"]

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


# --------------------------------------------------------------------------------------------- normalise
def normalize_maps(
    maps: Tensor, normalize: NormalizeMode | None = "max", *, validate_args: bool | None = None
) -> Tensor:
    """Rescale every map over its last two dimensions.

    * ``"max"``: divide each map by its maximum (the IRN convention), so the peak is 1, also for a subnormal
      peak. A map whose maximum is not positive (e.g. all zero) becomes all zero: no NaN.
    * ``"minmax"``: ``(m - min) / (max - min)``. A constant map becomes all zero; a span that overflows the
      dtype (-3e38 to 3e38 in float32) is computed at half scale, so the result stays in ``[0, 1]``.
    * ``None``: the input is returned unchanged.

    NaN and infinite values are refused with a ``ValueError``, never turned into zeros. That check is a value
    check (one ``aminmax`` pass over ``maps``: about 5 ms for ``(8, 20, 224, 224)`` float32 on one CPU thread,
    a tenth of the ``"max"`` rescaling itself, and one host synchronisation on a GPU): it follows
    [`hiercam.set_checks`][hiercam.set_checks] unless ``validate_args`` says otherwise. The type, shape and
    ``normalize`` checks always run.

    Args:
        maps: maps of shape ``(..., H, W)``, floating point, any device.
        normalize: ``"max"``, ``"minmax"`` or ``None``.
        validate_args: the per-call override of the finiteness check (as torchmetrics' ``validate_args``):
            ``None`` (default) follows the global switch [`checks_enabled`][hiercam.checks_enabled];
            ``True`` checks even when the switch is off; ``False`` skips it, for callers that checked their
            maps once already (a map with NaN is then not refused: it comes out as zeros or NaN).

    Returns:
        A new tensor of the same shape, dtype and device (differentiable), or ``maps`` itself for ``None``.
        float16 and bfloat16 maps are normalised in float32 and cast back.

    Raises:
        TypeError: ``maps`` is not a floating-point tensor.
        ValueError: ``maps`` has fewer than 2 dimensions, holds NaN or infinite values, or ``normalize`` is
            unknown.

    Examples:
        >>> import torch
        >>> normalize_maps(torch.tensor([[[0.0, 2.0], [1.0, 4.0]], [[0.0, 0.0], [0.0, 0.0]]]))
        tensor([[[0.0000, 0.5000],
                 [0.2500, 1.0000]],
        <BLANKLINE>
                [[0.0000, 0.0000],
                 [0.0000, 0.0000]]])
        >>> normalize_maps(torch.tensor([[1.0, 3.0], [2.0, 5.0]]), "minmax")
        tensor([[0.0000, 0.5000],
                [0.2500, 1.0000]])
    """
    check_tensor(maps, "maps", floating=True)
    if maps.ndim < 2:
        raise ValueError(f"`maps` must have shape (..., H, W), got {format_shape(maps.shape)}")
    check_choice(normalize, "normalize", ("max", "minmax", None))
    check_finite(maps, "maps", validate_args=validate_args)
    if normalize is None:
        return maps
    # float16 / bfloat16 are computed in float32 (a subnormal float16 peak is an ordinary float32 number)
    work = maps.float() if torch.finfo(maps.dtype).bits < 32 else maps
    result = _max(work) if normalize == "max" else _minmax(work)
    return result.to(maps.dtype)


def _max(maps: Tensor) -> Tensor:
    """Each map divided by its peak; zeros where the peak is not positive."""
    peak = maps.amax(dim=(-2, -1), keepdim=True)
    positive = peak > 0
    return torch.where(positive, maps / torch.where(positive, peak, 1.0), 0.0)


def _minmax(maps: Tensor) -> Tensor:
    """Each map as ``(m - min) / (max - min)``; zeros where the map is constant.

    A map whose span ``max - min`` overflows (values near both ends of the dtype's range, -3e38 and 3e38 in
    float32) is computed at half scale, which gives the same fractions without an infinite span.
    """
    low = maps.amin(dim=(-2, -1), keepdim=True)
    high = maps.amax(dim=(-2, -1), keepdim=True)
    scale = torch.where(torch.isinf(high - low), 0.5, 1.0).to(maps.dtype)
    low, span = low * scale, high * scale - low * scale
    varies = span > 0
    return torch.where(varies, (maps * scale - low) / torch.where(varies, span, 1.0), 0.0)


# --------------------------------------------------------------------------------------------- resize
def _check_size(size: object) -> tuple[int, int] | None:
    if size is None:
        return None
    if isinstance(size, (str, bytes)) or not isinstance(size, (tuple, list)) or len(size) != 2:
        raise TypeError(f"`size` must be a pair of ints (H, W) or None, got {type_name(size)}")
    height, width = (check_int(value, f"size[{index}]", minimum=1) for index, value in enumerate(size))
    return height, width


def resize_maps(maps: Tensor, size: tuple[int, int] | None) -> Tensor:
    """Maps resized to ``size`` in one batched bilinear ``interpolate`` (``align_corners=False``).

    This is the one resizing of maps in hiercam: the CAM extractors use it for ``size="input"``, the pipeline
    to bring every map to the image size. Maps are resized as they are, without normalising them.

    Args:
        maps: maps ``(..., h, w)`` with at least 2 dimensions (normally ``(B, K, h, w)``), floating point,
            any device.
        size: the target ``(H, W)``; ``None`` (or the maps' own size) returns ``maps`` as they are, without a
            copy.

    Returns:
        Maps ``(..., H, W)`` of the dtype and device of ``maps`` (differentiable); all zero when ``maps`` has
        no element (e.g. no class requested).

    Raises:
        TypeError: ``maps`` is not a floating-point tensor, or ``size`` not a pair of ints.
        ValueError: ``maps`` has fewer than 2 dimensions, or a size is below 1.

    Examples:
        >>> import torch
        >>> resize_maps(torch.ones(2, 3, 4, 4), (8, 8)).shape
        torch.Size([2, 3, 8, 8])
        >>> resize_maps(torch.tensor([[0.0, 1.0]]), (1, 4))
        tensor([[0.0000, 0.2500, 0.7500, 1.0000]])
    """
    check_tensor(maps, "maps", floating=True)
    if maps.ndim < 2:
        raise ValueError(f"`maps` must have shape (..., h, w), got {format_shape(maps.shape)}")
    target = _check_size(size)
    if target is None or tuple(maps.shape[-2:]) == target:
        return maps
    if maps.numel() == 0:  # e.g. no class requested (an all-zero mask)
        return maps.new_zeros(*maps.shape[:-2], *target)
    if maps.ndim == 4:
        return F.interpolate(maps, size=target, mode="bilinear", align_corners=False)
    flat = maps.reshape(1, -1, *maps.shape[-2:])
    resized = F.interpolate(flat, size=target, mode="bilinear", align_corners=False)
    return resized.reshape(*maps.shape[:-2], *target)


# --------------------------------------------------------------------------------------------- boxes
def mask_boxes(mask: Tensor, components: BoxComponents = "all", min_area: int = 0) -> Tensor:
    """Boxes around the 8-connected regions of a boolean mask.

    ``scipy.ndimage.label`` splits the ``True`` pixels into 8-connected regions (pixels that touch by a side
    or a corner); every region kept gets its bounding box, in the box convention of the module docstring.

    Args:
        mask: a boolean mask ``(H, W)``, any device (the regions are found on the CPU).
        components: which regions get a box: ``"all"``, every one, in row-major order of their first pixel;
            ``"largest"``, the one with the most pixels (the first in row-major order on ties).
        min_area: regions with fewer pixels get no box (0 keeps every region); with ``"largest"`` the
            largest of the regions left.

    Returns:
        Float32 boxes ``(M, 4)`` as ``(x1, y1, x2, y2)`` with exclusive far edges, on the device of ``mask``;
        ``M = 0`` without a region, ``M <= 1`` for ``"largest"``.

    Raises:
        TypeError: ``mask`` is not a boolean tensor, or ``min_area`` not an int.
        ValueError: ``mask`` is not 2-D, ``components`` is unknown, or ``min_area`` is negative.

    Examples:
        >>> import torch
        >>> mask = torch.zeros(6, 8, dtype=torch.bool)
        >>> mask[1:3, 1:4] = True  # 6 pixels
        >>> mask[4, 6] = mask[5, 7] = True  # 2 pixels touching diagonally: one region
        >>> mask_boxes(mask)
        tensor([[1., 1., 4., 3.],
                [6., 4., 8., 6.]])
        >>> mask_boxes(mask, "largest")
        tensor([[1., 1., 4., 3.]])
        >>> mask_boxes(mask, min_area=3)
        tensor([[1., 1., 4., 3.]])
    """
    check_tensor(mask, "mask", dims="H, W")
    if mask.dtype != torch.bool:
        raise TypeError(f"`mask` must be a boolean tensor, got dtype {mask.dtype}")
    check_choice(components, "components", ("largest", "all"))
    min_area = check_int(min_area, "min_area", minimum=0)
    boxes = _region_boxes(mask.detach().cpu().numpy(), components, min_area)
    return torch.from_numpy(boxes).to(device=mask.device)


def _region_boxes(mask: np.ndarray, components: BoxComponents, min_area: int) -> np.ndarray:
    """[`mask_boxes`][hiercam.maps.mask_boxes] of a checked NumPy mask, as a float32 array ``(M, 4)``."""
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


def cam_boxes(map: Tensor, threshold: float = 0.15, components: BoxComponents = "largest") -> Tensor:
    """Boxes around the connected regions of one class activation map above a threshold.

    The map is max-normalised with [`normalize_maps`][hiercam.maps.normalize_maps] (a no-op for maps whose
    peak is already 1), pixels strictly above ``threshold`` are kept (the rule of
    [`maps_to_masks`][hiercam.maps_to_masks]), and [`mask_boxes`][hiercam.maps.mask_boxes] boxes their
    8-connected regions. The localisation error scores these boxes.

    Args:
        map: one map ``(H, W)``, floating point, finite, any device.
        threshold: strictly between 0 and 1 (the paper uses 0.15).
        components: which regions get a box: ``"largest"``, the one with the most pixels (the first in
            row-major order on ties); ``"all"``, every one, in row-major order of their first pixel.

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
    mask = normalize_maps(map.detach(), "max", validate_args=False) > threshold
    return mask_boxes(mask, components)
