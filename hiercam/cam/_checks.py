"""Input and output checks of the CAM engine (once per call, at the boundary)."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from hiercam._validation import all_finite, check_finite, check_tensor, format_shape
from hiercam.cam._heads import HeadState

__all__ = ["check_images", "check_size", "non_finite_origin"]


def check_images(images: Any) -> None:
    """``images`` is a non-empty, finite ``(B, C, H, W)`` floating-point batch (one ``aminmax`` pass).

    The finiteness is a value check (``hiercam.set_checks``), skipped too for images a caller marked with
    ``values_checked`` (``MultiScaleCAM``'s resized and mirrored copies of checked images).
    """
    check_tensor(images, "images", dims="B, C, H, W", floating=True)
    if images.numel() == 0:
        raise ValueError(
            f"`images` must hold at least one image of positive size, got shape {format_shape(images.shape)}"
        )
    check_finite(images, "images")


def non_finite_origin(head: HeadState, features: Tensor, gradients: Tensor) -> str:
    """Which tensor made a head's maps non-finite (computed only on failure)."""
    if not all_finite(features):
        return f"the output of `target_layer` {head.name!r} holds NaN or infinite values for finite `images`"
    if not all_finite(gradients):
        return (
            f"the gradients of the logits with respect to `target_layer` {head.name!r} hold NaN or infinite "
            "values for finite `images`"
        )
    return f"the maps of `target_layer` {head.name!r} overflow float32"


def check_size(size: Any, images: Tensor) -> tuple[int, int] | None:
    """The output size ``(H, W)`` the ``size`` argument asks for, or ``None`` for the feature size."""
    if size == "input":
        return int(images.shape[-2]), int(images.shape[-1])
    if size == "feature":
        return None
    if (
        isinstance(size, tuple)
        and len(size) == 2
        and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size)
    ):
        return int(size[0]), int(size[1])
    raise ValueError(f"`size` must be 'input', 'feature' or a (H, W) tuple of positive ints, got {size!r}")
