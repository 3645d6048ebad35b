"""What MaxBoxAcc and PxAP share of wsolevaluation's protocol: the trials, the normalisation, the grid.

Described in the docstring of ``hiercam.metrics.max_box_acc`` (Choe et al., CVPR 2020;
clovaai/wsolevaluation): one trial per (image, present class), each map min-max normalised
(``normalize_scoremap``), and the threshold grid ``np.arange(0, 1, interval)`` (``cam_threshold_list``).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from hiercam._validation import check_threshold
from hiercam.maps import normalize_maps
from hiercam.metrics._inputs import check_maps_and_labels

__all__ = ["MAX_THRESHOLDS", "scoremaps", "threshold_grid"]

MAX_THRESHOLDS = 10_000
"""The most thresholds a grid may have (``interval >= 1e-4``): each costs a pass over the maps."""


def threshold_grid(interval: object) -> np.ndarray:
    """``np.arange(0, 1, interval)``, wsolevaluation's ``cam_threshold_list``, at most ``MAX_THRESHOLDS``.

    Raises:
        TypeError: ``interval`` is not a real number.
        ValueError: ``interval`` is outside (0, 1) or gives more than ``MAX_THRESHOLDS`` thresholds.
    """
    step = check_threshold(interval, "interval")
    size = math.ceil(1 / step)
    if size > MAX_THRESHOLDS:
        raise ValueError(
            f"`interval` {step} gives {size} thresholds, more than the {MAX_THRESHOLDS} allowed; "
            f"use an interval >= {1 / MAX_THRESHOLDS}"
        )
    return np.arange(0, 1, step)


def scoremaps(maps: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Images and classes of the trials, and their min-max normalised maps ``(P, H, W)``."""
    check_maps_and_labels(maps, labels)
    images, classes = torch.nonzero(labels.to(device=maps.device, dtype=torch.bool), as_tuple=True)
    return images, classes, normalize_maps(maps.detach()[images, classes], "minmax", validate_args=False)
