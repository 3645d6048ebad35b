"""Metrics: CAM quality against masks and boxes, faithfulness to the model, and multi-label mAP.

CAM quality: mIoU at a threshold and the localisation error (paper section 4.1.3), MaxBoxAccV2 and PxAP
(Choe et al., CVPR 2020). Faithfulness: deletion / insertion (RISE), Average Drop and Increase in
Confidence (Grad-CAM++), ROAD.

Each metric comes as a function and as a streaming class that share their kernels, as in torchmetrics.
The classes derive from one small base, [`Metric`][hiercam.metrics.Metric] (an ``nn.Module``):
``update`` / ``compute`` / ``reset``, calling the metric returns the batch's figure and accumulates it,
``state_dict`` round trip, ``.to(device)``, and the sync of states across ``torch.distributed`` processes
(empty ones included).
Every figure is a fraction in [0, 1] (faithfulness figures are class scores), and NaN when there is no data.
Peer CAM libraries do not evaluate maps against masks or boxes, nor all classes of a batch at once.
"""

from __future__ import annotations

from hiercam.metrics._base import Metric
from hiercam.metrics.average_precision import MeanAveragePrecision, average_precision, mean_average_precision
from hiercam.metrics.confidence import ConfidenceChange, ConfidenceResult, confidence_change
from hiercam.metrics.faithfulness import DeletionInsertion, DeletionInsertionResult, deletion_insertion
from hiercam.metrics.group import MetricGroup
from hiercam.metrics.localization import BoxComponents, LocalizationError, cam_boxes, localization_error
from hiercam.metrics.pixel_precision import PxAP, pxap
from hiercam.metrics.remove_and_debias import ROAD, ROADResult, noisy_linear_impute, road
from hiercam.metrics.segmentation import IoUResult, MeanIoU, maps_to_masks, mean_iou, mean_iou_from_masks
from hiercam.metrics.wsol import MaxBoxAccResult, MaxBoxAccV2, max_box_acc

__all__ = [
    # the base of the streaming metrics, and a group of them fed by one call per batch
    "Metric",
    "MetricGroup",
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
    # weakly-supervised localisation (Choe et al., CVPR 2020)
    "max_box_acc",
    "MaxBoxAccV2",
    "MaxBoxAccResult",
    "pxap",
    "PxAP",
    # faithfulness to the model (RISE, Grad-CAM++, ROAD)
    "deletion_insertion",
    "DeletionInsertion",
    "DeletionInsertionResult",
    "confidence_change",
    "ConfidenceChange",
    "ConfidenceResult",
    "road",
    "ROAD",
    "ROADResult",
    "noisy_linear_impute",
    # classification (multi-label mean average precision, used in training)
    "average_precision",
    "mean_average_precision",
    "MeanAveragePrecision",
]
