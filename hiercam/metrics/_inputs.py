"""Input checks shared by the CAM metrics."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from hiercam._validation import (
    check_binary,
    check_finite,
    check_tensor,
    check_threshold,
    format_shape,
    type_name,
)

__all__ = ["check_maps_and_labels", "check_thresholds"]


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
    if isinstance(thresholds, (int, float)) and not isinstance(thresholds, bool):
        return [check_threshold(thresholds, "thresholds")], True
    if isinstance(thresholds, (str, bytes)) or not isinstance(thresholds, Sequence):
        raise TypeError(
            f"`thresholds` must be a float or a sequence of floats in (0, 1), got {type_name(thresholds)}"
        )
    if not thresholds:
        raise ValueError("`thresholds` must hold at least one threshold, got an empty sequence")
    return [check_threshold(value, f"thresholds[{index}]") for index, value in enumerate(thresholds)], False
