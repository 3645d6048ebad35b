"""Map handling in one place: normalising, resizing, and the boxes of masks and maps.

The CAM engine, fusion, the metrics, the datasets and the pipeline all call these functions, so that
"max-normalised", "resized to the image" and "the box of a region" mean the same thing everywhere:

* [`normalize_maps`][hiercam.maps.normalize_maps] rescales maps to ``[0, 1]`` (``"max"``, the IRN convention
  behind mIoU at threshold 0.15, or ``"minmax"``);
* [`resize_maps`][hiercam.maps.resize_maps] resizes maps with one batched bilinear ``interpolate``;
* [`mask_boxes`][hiercam.maps.mask_boxes] boxes the 8-connected regions of a boolean mask,
  [`cam_boxes`][hiercam.maps.cam_boxes] those of a map above a threshold, and
  [`level_boxes`][hiercam.maps.level_boxes] those of the nested masks of many thresholds in one pass.

**Box convention.** Boxes are ``(x1, y1, x2, y2)`` in continuous pixel coordinates with *exclusive* far
edges: pixel ``(row, col)`` covers ``[col, col + 1) x [row, row + 1)``, so a region spanning columns ``3..7``
has ``x1 = 3`` and ``x2 = 8``, and ``(x2 - x1) * (y2 - y1)`` is its box area in pixels. This is the
convention of ``torchvision.ops.box_iou`` (areas ``(x2 - x1) * (y2 - y1)``), which the localisation error
uses. Give ground-truth boxes in the same frame and convention: for VOC XML (1-based, inclusive
``xmin..xmax``) use ``x1 = xmin - 1, y1 = ymin - 1, x2 = xmax, y2 = ymax``, scaled like the maps if the images
were resized.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

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

__all__ = [
    "BoxComponents",
    "LevelBoxes",
    "NormalizeMode",
    "cam_boxes",
    "level_boxes",
    "mask_boxes",
    "normalize_maps",
    "resize_maps",
]

NormalizeMode = Literal["max", "minmax"]
BoxComponents = Literal["largest", "all"]


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

    The ``True`` pixels are split into 8-connected regions (pixels that touch by a side or a corner) by
    [`level_boxes`][hiercam.maps.level_boxes] (one level: the mask); every region kept gets its bounding box,
    in the box convention of the module docstring.

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
    found = level_boxes(mask.detach()[None].to(torch.int16))
    kept = found.areas >= min_area
    boxes, areas = found.boxes[kept], found.areas[kept]
    if components == "largest" and len(boxes):
        boxes = boxes[int(torch.argmax(areas))][None]  # the first of equal maxima: row-major order
    return boxes.to(device=mask.device, dtype=torch.float32)


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


# --------------------------------------------------------------------------------------------- level boxes
class LevelBoxes(NamedTuple):
    """The regions found by [`level_boxes`][hiercam.maps.level_boxes], one row each.

    Rows are sorted by map, then level, then the region's first pixel in row-major order.

    Attributes:
        boxes: int64 ``(M, 4)`` as ``(x1, y1, x2, y2)`` with exclusive far edges (module docstring).
        maps: int64 ``(M,)``: the map ``n`` of each region.
        levels: int64 ``(M,)``: the level ``i`` of each region (a region of the mask ``levels[n] > i``).
        areas: int64 ``(M,)``: pixels of each region.
    """

    boxes: Tensor
    maps: Tensor
    levels: Tensor
    areas: Tensor


_RADIX_KEYS = 2**16  # (map, level) keys below this sort as uint16: NumPy's radix sort, linear time
_CHUNK_PIXELS = 2**18  # pixels per pass: the run arrays of a pass stay small (measured fastest)


def level_boxes(levels: Tensor, components: BoxComponents = "all") -> LevelBoxes:
    """Boxes of the 8-connected regions of the nested masks ``levels[n] > i``, every map and level at once.

    Thresholding a map at ``t_0 < t_1 < ...`` gives nested masks; with ``levels[n, y, x]`` the number of
    thresholds below the pixel's value, the mask of ``t_i`` is ``levels[n] > i``. Labelling every mask
    separately (``scipy.ndimage.label``, about 0.2 ms per 224 x 224 mask) costs a full pass over the pixels
    per threshold; here every mask of every map is labelled in one pass over its *runs* (the maximal
    horizontal stretches of a row inside a mask, about two per row and level for a CAM), which are connected
    to the overlapping runs of the next row (8-connectivity: touching by a side or a corner) and grouped with
    one ``scipy.sparse.csgraph.connected_components``. The regions and boxes are those of
    ``scipy.ndimage.label`` of each mask (checked against it in the tests); for 100
    thresholds of 224 x 224 CAMs, MaxBoxAccV2 built on it was measured about 6 times faster than with one
    labelling per mask, and faster than wsolevaluation's OpenCV loop (``benchmarks/faithfulness_speed.py``).
    The work is on the CPU, in chunks of maps that keep the run arrays small.

    Args:
        levels: integer level maps ``(N, H, W)``, values in ``[0, 32767]``, any device (copied to the CPU).
        components: ``"all"`` regions, or the ``"largest"`` of each (map, level): the one with the most
            pixels, the first in row-major order of its first pixel on ties.

    Returns:
        [`LevelBoxes`][hiercam.maps.LevelBoxes] on the CPU: every region of ``levels[n] > i`` for
        ``0 <= i < levels[n].max()``; none for a mask without pixels.

    Raises:
        TypeError: ``levels`` is not an integer tensor.
        ValueError: ``levels`` is not 3-D, a value is outside ``[0, 32767]``, or ``components`` is unknown.

    Examples:
        >>> import torch
        >>> levels = torch.tensor([[[0, 2, 0, 1], [0, 1, 0, 0]]])  # mask 0: 3 pixels, mask 1: 1 pixel
        >>> found = level_boxes(levels)
        >>> found.boxes.tolist(), found.levels.tolist(), found.areas.tolist()
        ([[1, 0, 2, 2], [3, 0, 4, 1], [1, 0, 2, 1]], [0, 0, 1], [2, 1, 1])
    """
    check_tensor(levels, "levels", dims="N, H, W")
    if levels.is_floating_point() or levels.is_complex() or levels.dtype == torch.bool:
        raise TypeError(f"`levels` must be an integer tensor, got dtype {levels.dtype}")
    check_choice(components, "components", ("largest", "all"))
    array = levels.detach().cpu().numpy()
    if array.size and (int(array.min()) < 0 or int(array.max()) > np.iinfo(np.int16).max):
        raise ValueError(f"`levels` must hold values in [0, 32767], got [{array.min()}, {array.max()}]")
    count, height, width = array.shape
    per_chunk = max(1, _CHUNK_PIXELS // max(1, height * width))
    parts = []
    for start in range(0, count, per_chunk):
        chunk = array[start : start + per_chunk].astype(np.int16)
        depth = int(chunk.max()) if chunk.size else 0
        step = max(1, min(len(chunk), _RADIX_KEYS // max(1, depth)))
        for offset in range(0, len(chunk), step):
            found = _chunk_regions(chunk[offset : offset + step], components)
            parts.append(found._replace(maps=found.maps + start + offset))
    if not parts:
        empty = torch.zeros(0, dtype=torch.int64)
        return LevelBoxes(empty.reshape(0, 4), empty, empty, empty)
    return LevelBoxes(*(torch.cat(values) for values in zip(*parts, strict=True)))


def _expand(positions: np.ndarray, low: np.ndarray, count: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each position repeated ``count`` times, with the levels ``low, low + 1, ..., low + count - 1``."""
    ends = np.cumsum(count, dtype=np.int64)
    levels = np.arange(int(ends[-1]) if len(ends) else 0, dtype=np.int64)
    levels -= np.repeat(ends - count - low, count)
    return np.repeat(positions, count), levels


def _runs(levels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The runs of every (map, level, row), sorted: keys ``map * D + level``, start and end positions.

    Positions index the ``(N, H, W + 1)`` grid of the gaps between pixels (gap ``j`` is left of column
    ``j``), so a run from column ``s`` to the column before ``e`` has the positions of gaps ``s`` and ``e``.
    """
    count, height, width = levels.shape
    depth = max(1, int(levels.max()))
    padded = np.zeros((count, height, width + 2), dtype=np.int16)
    padded[..., 1:-1] = levels
    left, right = padded[..., :-1].reshape(-1), padded[..., 1:].reshape(-1)
    rise = np.flatnonzero(right > left)  # runs of the levels left[p] .. right[p] - 1 start here
    fall = np.flatnonzero(right < left)  # runs of the levels right[p] .. left[p] - 1 end here
    start, start_level = _expand(rise, left[rise], right[rise].astype(np.int64) - left[rise])
    end, end_level = _expand(fall, right[fall], left[fall].astype(np.int64) - right[fall])
    per_map = height * (width + 1)
    # generated in (map, row, column) order: a stable sort by (map, level) gives (map, level, row, column),
    # in which the k-th start and the k-th end of a (map, level, row) belong to the same run
    start_key = (start // per_map) * depth + start_level
    end_key = (end // per_map) * depth + end_level
    order = np.argsort(start_key.astype(np.uint16), kind="stable")
    end_order = np.argsort(end_key.astype(np.uint16), kind="stable")
    return start_key[order], start[order], end[end_order]


def _chunk_regions(levels: np.ndarray, components: BoxComponents) -> LevelBoxes:
    """[`level_boxes`][hiercam.maps.level_boxes] of a chunk with fewer than 2**16 (map, level) keys."""
    from scipy.sparse import csr_matrix  # imported here: SciPy is slow to import
    from scipy.sparse.csgraph import connected_components

    count, height, width = levels.shape
    depth = max(1, int(levels.max()) if levels.size else 0)
    key, start, end = _runs(levels)
    total = len(key)
    gaps = width + 1
    per_map = height * gaps
    row = (start // gaps) % height
    # a run touches the runs of the next row (same map and level) that start at or before its end gap and
    # end at or after its start gap; in the sorted order those are the consecutive runs lo .. hi - 1
    within = key * per_map
    start_at, end_at = within + start % per_map, within + end % per_map
    lo = np.searchsorted(end_at, start_at + gaps, "left")
    hi = np.searchsorted(start_at, end_at + gaps, "right")
    hi[row == height - 1] = 0  # the last row has no next row
    touches = hi > lo
    # edges: each run to the first run it touches, and each of those runs to the next one it touches
    wide = hi - lo >= 2
    cover = np.bincount(lo[wide], minlength=total) - np.bincount(hi[wide] - 1, minlength=total)
    chained = np.cumsum(cover[:-1]) > 0
    degree = touches.astype(np.int64)
    degree[:-1] += chained
    indptr = np.zeros(total + 1, dtype=np.int64)
    np.cumsum(degree, out=indptr[1:])
    indices = np.empty(int(indptr[-1]), dtype=np.int64)
    indices[indptr[:-1][touches]] = lo[touches]
    links = np.flatnonzero(chained)
    indices[indptr[links] + touches[links]] = links + 1
    graph = csr_matrix((np.ones(len(indices), dtype=np.int8), indices, indptr), shape=(total, total))
    regions, label = connected_components(graph, directed=True, connection="weak")
    # regions are numbered in the order of their first run: (map, level, row-major first pixel)
    label_t = torch.from_numpy(label.astype(np.int64))

    def reduce(values: np.ndarray, how: str) -> Tensor:
        empty = torch.zeros(regions, dtype=torch.int64)
        return empty.scatter_reduce_(0, label_t, torch.from_numpy(values), how, include_self=False)

    columns, end_columns = start % gaps, end % gaps
    boxes = torch.stack(
        [reduce(columns, "amin"), reduce(row, "amin"), reduce(end_columns, "amax"), reduce(row + 1, "amax")],
        1,
    )
    first = reduce(np.arange(total, dtype=np.int64), "amin")
    areas = torch.zeros(regions, dtype=torch.int64).scatter_add_(0, label_t, torch.from_numpy(end - start))
    keys = torch.from_numpy(key)[first]
    if components == "largest" and regions:
        best = torch.zeros(count * depth, dtype=torch.int64).scatter_reduce_(0, keys, areas, "amax")
        candidates = torch.where(areas == best[keys], torch.arange(regions), regions)
        chosen = torch.full((count * depth,), regions, dtype=torch.int64)
        chosen = chosen.scatter_reduce_(0, keys, candidates, "amin")
        keep = chosen[chosen < regions]
        boxes, areas, keys = boxes[keep], areas[keep], keys[keep]
    return LevelBoxes(boxes, keys // depth, keys % depth, areas)
