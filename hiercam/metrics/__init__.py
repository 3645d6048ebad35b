"""Metrics: CAM quality (paper section 4.1.3: mIoU at a threshold, localisation error) and multi-label mAP.

Each metric comes as a function and as a streaming class that share their kernels, as in torchmetrics.
The classes derive from one small base, [`Metric`][hiercam.metrics.Metric] (an ``nn.Module``):
``update`` / ``compute`` / ``reset``, calling the metric returns the batch's figure and accumulates it,
``state_dict`` round trip, ``.to(device)``, and the sync of states across ``torch.distributed`` processes
(empty ones included).
Every figure is a fraction in [0, 1], and NaN when there is no data. Peer CAM libraries do not evaluate maps
against masks or boxes.
"""

from __future__ import annotations

from hiercam.metrics._base import Metric
from hiercam.metrics.average_precision import MeanAveragePrecision, average_precision, mean_average_precision
from hiercam.metrics.localization import BoxComponents, LocalizationError, cam_boxes, localization_error
from hiercam.metrics.segmentation import IoUResult, MeanIoU, maps_to_masks, mean_iou, mean_iou_from_masks

__all__ = [
    # the base of the streaming metrics
    "Metric",
    # segmentation (mIoU at a background threshold, Eq. 7)
    "maps_to_masks",
    "mean_iou",
    "mean_iou_from_masks",
    "MeanIoU",
    "IoUResult",
    # localisation (boxes, Eq. 8)
    "cam_boxes",
    "localization_error",
    "LocalizationError",
    "BoxComponents",
    # classification (multi-label mean average precision, used in training)
    "average_precision",
    "mean_average_precision",
    "MeanAveragePrecision",
]
