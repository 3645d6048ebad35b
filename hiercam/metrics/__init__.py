"""Metrics: CAM quality (paper section 4.1.3: mIoU at a threshold, localisation error) and multi-label mAP.

Each metric comes as a function and as a streaming class (``update`` / ``compute`` / ``reset``) that share
their kernels, as in torchmetrics. Peer CAM libraries do not evaluate maps against masks or boxes.
"""

from __future__ import annotations

from hiercam.metrics.average_precision import MeanAveragePrecision, average_precision, mean_average_precision
from hiercam.metrics.localization import BoxMode, LocalizationError, cam_boxes, localization_error
from hiercam.metrics.segmentation import IoUResult, MeanIoU, cams_to_labels, mean_iou

__all__ = [
    # segmentation (mIoU at a background threshold, Eq. 7)
    "cams_to_labels",
    "mean_iou",
    "MeanIoU",
    "IoUResult",
    # localisation (boxes, Eq. 8)
    "cam_boxes",
    "localization_error",
    "LocalizationError",
    "BoxMode",
    # classification (multi-label mean average precision, used in training)
    "average_precision",
    "mean_average_precision",
    "MeanAveragePrecision",
]
