"""Input checks shared by the metrics, on top of :mod:`hiercam._validation`."""

from __future__ import annotations

import torch
from torch import Tensor

from hiercam._validation import check_finite

__all__ = ["check_finite_maps"]


def check_finite_maps(maps: Tensor, name: str) -> Tensor:
    """:func:`~hiercam._validation.check_finite` for large map tensors, without a full-size boolean mask.

    ``aminmax`` propagates NaN and shows infinities, so checking its two values is equivalent; measured
    about 10x faster than ``isfinite(maps).all()`` on CAMs ``(16, 20, 224, 224)`` (2 CPU threads).
    """
    if maps.numel():
        check_finite(torch.stack(torch.aminmax(maps.detach())), name)
    return maps
