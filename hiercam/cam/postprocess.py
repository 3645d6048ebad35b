"""The engine's last steps on the maps: the two-branch mean, every head resized, its own maps normalised.

The generic map handling (normalising, resizing, boxes) is in [`hiercam.maps`][hiercam.maps]; what stays here
is about the CAMs of a multi-head model (the mean of the branch maps, paper section 3.4.2) and the engine's
in-place fast path on the maps it made itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from hiercam._validation import check_tensor, format_shape
from hiercam.maps import NormalizeMode, normalize_maps, resize_maps

__all__ = ["average_branch_maps", "average_layer_maps", "normalize_own", "resize_heads"]


def average_branch_maps(
    maps: Sequence[Tensor] | Tensor,
    normalize: NormalizeMode | None = "max",
    *,
    validate_args: bool | None = None,
) -> Tensor:
    """The CAM of a two-branch model (paper section 3.4.2): the mean of the branch maps.

    Each branch map is normalised first (so that a branch with larger activations does not dominate), the
    maps are averaged, and the mean is normalised again so that a ``"max"``-normalised result peaks at 1.
    With ``normalize=None`` the raw maps are averaged.

    Args:
        maps: a sequence of maps of the same shape ``(..., H, W)``, or a tensor with the branch dimension
            first, ``(2, ..., H, W)``.
        normalize: ``"max"``, ``"minmax"`` or ``None`` (see
            [`hiercam.maps.normalize_maps`][hiercam.maps.normalize_maps]).
        validate_args: the per-call override of the finiteness check of ``maps`` (a value check, done
            once): ``None`` (default) follows [`hiercam.set_checks`][hiercam.set_checks], ``True`` checks,
            ``False`` skips it (the CAM engine, whose maps are checked already).

    Returns:
        The averaged maps ``(..., H, W)``.

    Examples:
        >>> import torch
        >>> m1 = torch.tensor([[0.0, 2.0], [0.0, 0.0]])
        >>> m2 = torch.tensor([[0.0, 0.0], [0.0, 5.0]])
        >>> average_branch_maps([m1, m2])
        tensor([[0., 1.],
                [0., 1.]])
    """
    stacked = maps if isinstance(maps, Tensor) else torch.stack(list(maps))
    check_tensor(stacked, "maps", floating=True)
    if stacked.ndim < 3:
        raise ValueError(
            f"`maps` must stack to shape (branches, ..., H, W), got {format_shape(stacked.shape)}"
        )
    each = normalize_maps(stacked, normalize, validate_args=validate_args)
    return normalize_maps(each.mean(dim=0), normalize, validate_args=False)  # the mean of checked maps


def average_layer_maps(
    maps: list[Tensor], size: tuple[int, int] | None, normalize: NormalizeMode | None
) -> tuple[Tensor, Tensor]:
    """The maps of several target layers combined as pytorch-grad-cam combines its ``target_layers``.

    Each layer's ReLU'd maps ``(B, K', h_l, w_l)`` are normalised at their own resolution, resized to
    ``size`` (``None``: the finest layer's), averaged, and the mean normalised again (pytorch-grad-cam's
    ``scale_cam_image`` per layer, then ``aggregate_multi_layers``).

    Returns:
        The mean ``(B, K', H, W)`` and the per-layer maps ``(layers, B, K', H, W)``.
    """
    if size is None:
        size = max(((int(m.shape[-2]), int(m.shape[-1])) for m in maps), key=lambda hw: hw[0] * hw[1])
    each = torch.stack([resize_maps(normalize_own(m, normalize), size) for m in maps])
    return normalize_own(each.mean(dim=0), normalize), each


def resize_heads(maps: list[Tensor], size: tuple[int, int] | None) -> list[Tensor]:
    """Every head's maps resized in one ``interpolate`` when they share a shape (else one per head)."""
    if len(maps) == 1 or any(m.shape != maps[0].shape for m in maps):
        return [resize_maps(m, size) for m in maps]
    return list(resize_maps(torch.cat(maps), size).split(maps[0].shape[0]))


def normalize_own(maps: Tensor, normalize: NormalizeMode | None) -> Tensor:
    """[`normalize_maps`][hiercam.maps.normalize_maps] of the engine's finite, non-negative maps, in place.

    Equal to ``normalize_maps`` on such maps (an all-zero or constant map gives zeros, since ``0 / tiny = 0``)
    with one reduction and one division instead of a finiteness check, a reduction, a division, a zeros
    tensor and a ``where``.
    """
    if normalize is None or maps.numel() == 0:
        return maps
    tiny = torch.finfo(maps.dtype).tiny
    if normalize == "max":
        return maps.div_(maps.amax(dim=(-2, -1), keepdim=True).clamp_min(tiny))
    low = maps.amin(dim=(-2, -1), keepdim=True)
    span = maps.amax(dim=(-2, -1), keepdim=True) - low
    return maps.sub_(low).div_(span.clamp_min(tiny))
