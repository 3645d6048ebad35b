"""Input checks shared by the CAM metrics."""

from __future__ import annotations

from torch import Tensor

from hiercam._validation import check_binary, check_finite, check_tensor, format_shape

__all__ = ["check_cams_and_labels"]


def check_cams_and_labels(cams: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """CAMs ``(B, K, H, W)`` (floating, finite, ``B >= 1``) and 0/1 image labels ``(B, K)`` that fit them."""
    check_tensor(cams, "cams", dims="B, K, H, W", floating=True)
    check_tensor(labels, "labels", dims="B, K")
    if cams.shape[0] == 0:
        raise ValueError(f"`cams` must hold at least one image, got shape {format_shape(cams.shape)}")
    if labels.shape != cams.shape[:2]:
        raise ValueError(
            f"`labels` must have shape (B, K) = {format_shape(cams.shape[:2])} to match `cams`, "
            f"got {format_shape(labels.shape)}"
        )
    check_binary(labels, "labels")
    check_finite(cams, "cams")
    return cams, labels
