"""Input checks shared by the CAM metrics: maps and labels, thresholds, ground-truth boxes."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from hiercam._validation import (
    check_binary,
    check_finite,
    check_tensor,
    check_threshold,
    format_shape,
    is_real,
    type_name,
)

__all__ = ["BoxesArg", "check_boxes", "check_maps_and_labels", "check_thresholds"]

# ground-truth boxes, one entry per image: a (M, 5) tensor (class, x1, y1, x2, y2) or a (boxes, classes) pair
BoxesArg = Sequence[Tensor | tuple[Tensor, Tensor]]


def check_maps_and_labels(maps: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Maps ``(B, K, H, W)`` (floating, finite, ``B, K >= 1``) and 0/1 labels ``(B, K)`` that fit them."""
    check_tensor(maps, "maps", dims="B, K, H, W", floating=True)
    check_tensor(labels, "labels", dims="B, K")
    if maps.shape[0] == 0 or maps.shape[1] == 0:
        raise ValueError(
            f"`maps` must hold at least one image and one class, got shape {format_shape(maps.shape)}"
        )
    if labels.shape != maps.shape[:2]:
        raise ValueError(
            f"`labels` must have shape (B, K) = {format_shape(maps.shape[:2])} to match `maps`, "
            f"got {format_shape(labels.shape)}"
        )
    if labels.is_complex():
        raise TypeError(f"`labels` must be a real 0/1 tensor, got dtype {labels.dtype}")
    check_binary(labels, "labels")
    check_finite(maps, "maps")
    return maps, labels


def check_thresholds(thresholds: object) -> tuple[list[float], bool]:
    """``thresholds`` as a list of floats in (0, 1), and whether a single float was given (a scalar result).

    Raises:
        TypeError: neither a number nor a sequence of numbers.
        ValueError: an empty sequence, or a value outside (0, 1).
    """
    if is_real(thresholds):
        return [check_threshold(thresholds, "thresholds")], True
    if isinstance(thresholds, (str, bytes)) or not isinstance(thresholds, Sequence):
        raise TypeError(
            f"`thresholds` must be a float or a sequence of floats in (0, 1), got {type_name(thresholds)}"
        )
    if not thresholds:
        raise ValueError("`thresholds` must hold at least one threshold, got an empty sequence")
    return [check_threshold(value, f"thresholds[{index}]") for index, value in enumerate(thresholds)], False


def check_boxes(boxes: BoxesArg, batch: int, num_classes: int) -> list[tuple[Tensor, Tensor]]:
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
