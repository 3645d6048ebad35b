"""Metrics: CAM quality against masks and boxes, faithfulness to the model, and multi-label mAP.

CAM quality: mIoU at a threshold and the localisation error (paper section 4.1.3), MaxBoxAcc (MaxBoxAccV2
with its defaults) and PxAP (Choe et al., CVPR 2020). Faithfulness: deletion / insertion (RISE), Average
Drop and Increase in Confidence (Grad-CAM++), ROAD. One module per metric, named after it
(``mean_iou``, ``localization_error``, ``max_box_acc``, ``pxap``, ``deletion_insertion``,
``confidence_change``, ``road``, ``average_precision``); boxes and normalisation of maps are in
[`hiercam.maps`][hiercam.maps].

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
from hiercam.metrics.confidence_change import ConfidenceChange, ConfidenceChangeResult, confidence_change
from hiercam.metrics.deletion_insertion import DeletionInsertion, DeletionInsertionResult, deletion_insertion
from hiercam.metrics.group import MetricGroup
from hiercam.metrics.localization_error import LocalizationError, localization_error
from hiercam.metrics.max_box_acc import MaxBoxAcc, MaxBoxAccResult, max_box_acc
from hiercam.metrics.mean_iou import MeanIoU, MeanIoUResult, maps_to_masks, mean_iou, mean_iou_from_masks
from hiercam.metrics.pxap import PxAP, pxap
from hiercam.metrics.road import ROAD, ROADResult, noisy_linear_impute, road

__all__ = [
    # the base of the streaming metrics, and a group of them fed by one call per batch
    "Metric",
    "MetricGroup",
    # segmentation (mIoU at a background threshold, Eq. 7)
    "maps_to_masks",
    "mean_iou",
    "mean_iou_from_masks",
    "MeanIoU",
    "MeanIoUResult",
    # localisation error (Eq. 8; the boxes of a map are hiercam.maps.cam_boxes)
    "localization_error",
    "LocalizationError",
    # weakly-supervised localisation (Choe et al., CVPR 2020)
    "max_box_acc",
    "MaxBoxAcc",
    "MaxBoxAccResult",
    "pxap",
    "PxAP",
    # faithfulness to the model (RISE, Grad-CAM++, ROAD)
    "deletion_insertion",
    "DeletionInsertion",
    "DeletionInsertionResult",
    "confidence_change",
    "ConfidenceChange",
    "ConfidenceChangeResult",
    "road",
    "ROAD",
    "ROADResult",
    "noisy_linear_impute",
    # classification (multi-label mean average precision, used in training)
    "average_precision",
    "mean_average_precision",
    "MeanAveragePrecision",
]
