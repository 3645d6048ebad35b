"""Every public metric callable refuses bad inputs with a TypeError/ValueError naming the argument (issue 15).

Each case is one bad input to one callable; the message must name the argument (``match=``). That a streaming
metric that refuses a batch keeps its state is checked for every metric in ``test_metric_contract.py``. The
number of cases is in ``CASES``.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from hiercam.metrics import (
    LocalizationError,
    MeanAveragePrecision,
    MeanIoU,
    average_precision,
    localization_error,
    maps_to_masks,
    mean_average_precision,
    mean_iou,
    mean_iou_from_masks,
)

MAPS = torch.rand(2, 3, 8, 8)
LABELS = torch.tensor([[1, 0, 1], [0, 1, 1]])
MASKS = torch.randint(0, 4, (2, 8, 8))
BOXES = [torch.tensor([[0, 1, 1, 4, 4]]), torch.zeros(0, 5)]
SCORES = torch.randn(4, 3)
SCORE_LABELS = torch.tensor([[1, 0, 1], [0, 1, 1], [1, 1, 0], [0, 0, 1]])
NAN_MAPS = MAPS.clone().index_put_((torch.tensor([0]), torch.tensor([1])), torch.tensor(float("nan")))
INF_MAPS = MAPS.clone().index_put_((torch.tensor([1]), torch.tensor([2])), torch.tensor(float("inf")))

Case = tuple[str, Callable[[], object], type[Exception], str]


def _map_input_cases(name: str, call: Callable[..., object]) -> list[Case]:
    """Bad ``maps`` and ``labels`` for a callable taking ``(maps, labels)`` first."""
    return [
        (
            f"{name}-maps-list",
            lambda: call(MAPS.tolist(), LABELS),
            TypeError,
            "`maps` must be a torch.Tensor",
        ),
        (f"{name}-maps-int", lambda: call(MAPS.long(), LABELS), TypeError, "`maps` must be a floating-point"),
        (
            f"{name}-maps-3d",
            lambda: call(MAPS[0], LABELS),
            ValueError,
            r"`maps` must have shape \(B, K, H, W\)",
        ),
        (f"{name}-maps-nan", lambda: call(NAN_MAPS, LABELS), ValueError, "`maps` must be finite"),
        (f"{name}-maps-inf", lambda: call(INF_MAPS, LABELS), ValueError, "`maps` must be finite"),
        (
            f"{name}-maps-empty-batch",
            lambda: call(MAPS[:0], LABELS[:0]),
            ValueError,
            "`maps` must hold at least one",
        ),
        (f"{name}-maps-no-class", lambda: call(MAPS[:, :0], LABELS[:, :0]), ValueError, "one class"),
        (f"{name}-labels-2", lambda: call(MAPS, LABELS * 2), ValueError, "`labels` must hold only 0/1"),
        (f"{name}-labels-half", lambda: call(MAPS, LABELS * 0.5), ValueError, "`labels` must hold only 0/1"),
        (
            f"{name}-labels-nan",
            lambda: call(MAPS, LABELS.float().fill_(float("nan"))),
            ValueError,
            "`labels`",
        ),
        (f"{name}-labels-complex", lambda: call(MAPS, LABELS.to(torch.complex64)), TypeError, "`labels`"),
        (
            f"{name}-labels-batch",
            lambda: call(MAPS, LABELS[:1]),
            ValueError,
            r"`labels` must have shape \(B, K\)",
        ),
        (
            f"{name}-labels-classes",
            lambda: call(MAPS, LABELS[:, :2]),
            ValueError,
            r"`labels` must have shape",
        ),
        (
            f"{name}-labels-1d",
            lambda: call(MAPS, LABELS[0]),
            ValueError,
            r"`labels` must have shape \(B, K\)",
        ),
        (
            f"{name}-labels-list",
            lambda: call(MAPS, LABELS.tolist()),
            TypeError,
            "`labels` must be a torch.Tensor",
        ),
    ]


def _threshold_cases(name: str, call: Callable[[object], object]) -> list[Case]:
    """Bad ``thresholds`` for a callable taking them as its only argument."""
    return [
        (f"{name}-thresholds-0", lambda: call(0.0), ValueError, r"`thresholds` must be between 0 and 1"),
        (f"{name}-thresholds-1", lambda: call(1), ValueError, r"`thresholds` must be between 0 and 1"),
        (f"{name}-thresholds-neg", lambda: call(-0.1), ValueError, r"`thresholds` must be between 0 and 1"),
        (f"{name}-thresholds-nan", lambda: call(float("nan")), ValueError, r"`thresholds` must be between"),
        (
            f"{name}-thresholds-seq",
            lambda: call([0.1, 1.5]),
            ValueError,
            r"`thresholds\[1\]` must be between",
        ),
        (f"{name}-thresholds-empty", lambda: call([]), ValueError, "`thresholds` must hold at least one"),
        (
            f"{name}-thresholds-str",
            lambda: call("0.15"),
            TypeError,
            "`thresholds` must be a float or a sequence",
        ),
        (
            f"{name}-thresholds-bool",
            lambda: call(True),
            TypeError,
            "`thresholds` must be a float or a sequence",
        ),
        (
            f"{name}-thresholds-none-item",
            lambda: call([0.1, None]),
            TypeError,
            r"`thresholds\[1\]` must be a float",
        ),
        (
            f"{name}-thresholds-tensor",  # a 0-d tensor is a number (the rule for numbers); (1,) is not
            lambda: call(torch.tensor([0.2])),
            TypeError,
            "`thresholds` must be a float",
        ),
    ]


def _mask_cases(name: str, call: Callable[[object], object]) -> list[Case]:
    """Bad ``masks`` for a callable scoring ``MAPS, LABELS`` against them (4 labels: K + 1)."""
    return [
        (
            f"{name}-masks-float",
            lambda: call(MASKS.float()),
            TypeError,
            "`masks` must be an integer label map",
        ),
        (f"{name}-masks-bool", lambda: call(MASKS.bool()), TypeError, "`masks` must be an integer label map"),
        (f"{name}-masks-4d", lambda: call(MASKS[None]), ValueError, r"`masks` must have shape \(B, H, W\)"),
        (
            f"{name}-masks-batch",
            lambda: call(MASKS[:1]),
            ValueError,
            r"`masks` must have shape \(B, H, W\) = \(2, 8, 8\)",
        ),
        (
            f"{name}-masks-size",
            lambda: call(MASKS[:, :4]),
            ValueError,
            r"`masks` must have shape \(B, H, W\) = \(2, 8, 8\)",
        ),
        (
            f"{name}-masks-range",
            lambda: call(MASKS + 4),
            ValueError,
            r"`masks` must hold class labels in \[0, 3\]",
        ),
        (
            f"{name}-masks-negative",
            lambda: call(MASKS - 5),
            ValueError,
            r"`masks` must hold class labels in \[0, 3\]",
        ),
        (f"{name}-masks-list", lambda: call(MASKS.tolist()), TypeError, "`masks` must be a torch.Tensor"),
    ]


def _box_cases(name: str, call: Callable[[object], object]) -> list[Case]:
    """Bad ``boxes`` for a callable scoring ``MAPS, LABELS`` against them."""
    return [
        (
            f"{name}-boxes-flipped",
            lambda: call([torch.tensor([[0, 5, 1, 4, 4]]), BOXES[1]]),
            ValueError,
            r"`boxes\[0\]` holds a box with x2 < x1",
        ),
        (
            f"{name}-boxes-pair-flipped",
            lambda: call([BOXES[0], (torch.tensor([[1.0, 5.0, 4.0, 4.0]]), torch.tensor([0]))]),
            ValueError,
            r"`boxes\[1\]` holds a box",
        ),
        (
            f"{name}-boxes-count",
            lambda: call(BOXES[:1]),
            ValueError,
            r"`boxes` must have one entry per image \(2\), got 1",
        ),
        (
            f"{name}-boxes-columns",
            lambda: call([torch.zeros(1, 4), BOXES[1]]),
            ValueError,
            r"`boxes\[0\]` must have shape \(M, 5\)",
        ),
        (
            f"{name}-boxes-class-range",
            lambda: call([torch.tensor([[3, 1, 1, 4, 4]]), BOXES[1]]),
            ValueError,
            r"`boxes\[0\]` class ids must be in \[0, 2\]",
        ),
        (
            f"{name}-boxes-class-negative",
            lambda: call([torch.tensor([[-1, 1, 1, 4, 4]]), BOXES[1]]),
            ValueError,
            r"`boxes\[0\]` class ids must be in",
        ),
        (
            f"{name}-boxes-class-fraction",
            lambda: call([torch.tensor([[0.5, 1, 1, 4, 4]]), BOXES[1]]),
            ValueError,
            r"`boxes\[0\]` class ids must be integers",
        ),
        (
            f"{name}-boxes-nan",
            lambda: call([torch.tensor([[0, 1, float("nan"), 4, 4]]), BOXES[1]]),
            ValueError,
            r"`boxes\[0\]` must be finite",
        ),
        (
            f"{name}-boxes-entry-list",
            lambda: call([BOXES[0], [[0, 1, 1, 4, 4]]]),
            TypeError,
            r"`boxes\[1\]` must be a \(M, 5\) tensor or a \(boxes, classes\) pair",
        ),
        (
            f"{name}-boxes-tensor",
            lambda: call(torch.zeros(2, 1, 5)),
            TypeError,
            "`boxes` must be a list with one entry per image",
        ),
        (
            f"{name}-boxes-pair-shapes",
            lambda: call([(torch.zeros(2, 4), torch.zeros(1)), BOXES[1]]),
            ValueError,
            r"`boxes\[0\]` must be \(boxes \(M, 4\), classes \(M,\)\)",
        ),
    ]


def _score_cases(name: str, call: Callable[[object, object], object]) -> list[Case]:
    """Bad ``scores`` and ``labels`` for the average-precision callables."""
    return [
        (
            f"{name}-scores-int",
            lambda: call(SCORE_LABELS, SCORE_LABELS),
            TypeError,
            "`scores` must be a floating-point",
        ),
        (
            f"{name}-scores-list",
            lambda: call(SCORES.tolist(), SCORE_LABELS),
            TypeError,
            "`scores` must be a torch.Tensor",
        ),
        (
            f"{name}-scores-1d",
            lambda: call(SCORES[0], SCORE_LABELS[0]),
            ValueError,
            r"`scores` must have shape \(B, K\)",
        ),
        (
            f"{name}-scores-nan",
            lambda: call(SCORES.masked_fill(SCORE_LABELS.bool(), float("nan")), SCORE_LABELS),
            ValueError,
            "`scores` must be finite",
        ),
        (
            f"{name}-scores-inf",
            lambda: call(SCORES.masked_fill(SCORE_LABELS.bool(), float("inf")), SCORE_LABELS),
            ValueError,
            "`scores` must be finite",
        ),
        (
            f"{name}-scores-no-class",
            lambda: call(SCORES[:, :0], SCORE_LABELS[:, :0]),
            ValueError,
            "`scores` must have at least one class",
        ),
        (
            f"{name}-labels-2",
            lambda: call(SCORES, SCORE_LABELS * 2),
            ValueError,
            "`labels` must hold only 0/1",
        ),
        (
            f"{name}-labels-shape",
            lambda: call(SCORES, SCORE_LABELS[:, :2]),
            ValueError,
            "`scores` and `labels` must have the same shape",
        ),
        (
            f"{name}-labels-batch",
            lambda: call(SCORES, SCORE_LABELS[:2]),
            ValueError,
            "`scores` and `labels` must have the same shape",
        ),
        (
            f"{name}-labels-complex",
            lambda: call(SCORES, SCORE_LABELS.to(torch.complex64)),
            TypeError,
            "`labels` must be a real",
        ),
        (
            f"{name}-labels-list",
            lambda: call(SCORES, SCORE_LABELS.tolist()),
            TypeError,
            "`labels` must be a torch.Tensor",
        ),
    ]


def _cases() -> list[Case]:
    cases: list[Case] = []
    # maps_to_masks
    cases += _map_input_cases("maps_to_masks", lambda m, lb: maps_to_masks(m, lb))
    cases += [
        (
            "maps_to_masks-threshold-1.5",
            lambda: maps_to_masks(MAPS, LABELS, 1.5),
            ValueError,
            r"`threshold` must be between 0 and 1",
        ),
        (
            "maps_to_masks-threshold-0",
            lambda: maps_to_masks(MAPS, LABELS, 0),
            ValueError,
            r"`threshold` must be between 0 and 1",
        ),
        (
            "maps_to_masks-threshold-str",
            lambda: maps_to_masks(MAPS, LABELS, "0.1"),
            TypeError,
            "`threshold` must be a float",
        ),
    ]
    # mean_iou (maps) and MeanIoU
    cases += _map_input_cases("mean_iou", lambda m, lb: mean_iou(m, lb, masks=MASKS))
    cases += _threshold_cases("mean_iou", lambda t: mean_iou(MAPS, LABELS, masks=MASKS, thresholds=t))
    cases += _mask_cases("mean_iou", lambda k: mean_iou(MAPS, LABELS, masks=k))
    cases += [
        (
            "mean_iou-num_classes-mismatch",
            lambda: mean_iou(MAPS, LABELS, masks=MASKS, num_classes=5),
            ValueError,
            r"`maps` must have K = num_classes - 1 = 4",
        ),
        (
            "mean_iou-num_classes-1",
            lambda: mean_iou(MAPS, LABELS, masks=MASKS, num_classes=1),
            ValueError,
            "`num_classes` must be >= 2",
        ),
        (
            "mean_iou-num_classes-float",
            lambda: mean_iou(MAPS, LABELS, masks=MASKS, num_classes=4.0),
            TypeError,
            "`num_classes` must be an int",
        ),
        (
            "mean_iou-ignore_index-str",
            lambda: mean_iou(MAPS, LABELS, masks=MASKS, ignore_index="255"),
            TypeError,
            "`ignore_index` must be an int",
        ),
        (
            "mean_iou-ignore_index-bool",
            lambda: mean_iou(MAPS, LABELS, masks=MASKS, ignore_index=True),
            TypeError,
            "`ignore_index` must be an int",
        ),
        ("mean_iou-masks-missing", lambda: mean_iou(MAPS, LABELS), TypeError, "masks"),
    ]
    cases += _threshold_cases("MeanIoU", lambda t: MeanIoU(4, thresholds=t))
    cases += [
        ("MeanIoU-num_classes-1", lambda: MeanIoU(1), ValueError, "`num_classes` must be >= 2"),
        ("MeanIoU-num_classes-0", lambda: MeanIoU(0), ValueError, "`num_classes` must be >= 2"),
        ("MeanIoU-num_classes-none", lambda: MeanIoU(None), TypeError, "`num_classes` must be an int"),
        ("MeanIoU-num_classes-float", lambda: MeanIoU(4.5), TypeError, "`num_classes` must be an int"),
        (
            "MeanIoU-ignore_index-float",
            lambda: MeanIoU(4, ignore_index=255.0),
            TypeError,
            "`ignore_index` must be an int",
        ),
        (
            "MeanIoU.update-classes",
            lambda: MeanIoU(5).update(MAPS, LABELS, masks=MASKS),
            ValueError,
            r"`maps` must have K = num_classes - 1 = 4",
        ),
        (
            "MeanIoU.update-masks-positional",
            lambda: MeanIoU(4).update(MAPS, LABELS, MASKS),
            TypeError,
            "positional",
        ),
    ]
    cases += _map_input_cases("MeanIoU.update", lambda m, lb: MeanIoU(4).update(m, lb, masks=MASKS))
    cases += _mask_cases("MeanIoU.forward", lambda k: MeanIoU(4)(MAPS, LABELS, masks=k))
    # mean_iou_from_masks
    pred = MASKS.clone()
    cases += [
        (
            "mean_iou_from_masks-shape",
            lambda: mean_iou_from_masks(pred, MASKS[:, :2], 4),
            ValueError,
            "`pred_masks` and `masks` must have the same shape",
        ),
        (
            "mean_iou_from_masks-pred-float",
            lambda: mean_iou_from_masks(pred.float(), MASKS, 4),
            TypeError,
            "`pred_masks` must be an integer label map",
        ),
        (
            "mean_iou_from_masks-masks-bool",
            lambda: mean_iou_from_masks(pred, MASKS.bool(), 4),
            TypeError,
            "`masks` must be an integer label map",
        ),
        (
            "mean_iou_from_masks-empty-batch",
            lambda: mean_iou_from_masks(pred[:0], MASKS[:0], 4),
            ValueError,
            "`pred_masks` must hold at least one image",
        ),
        (
            "mean_iou_from_masks-pred-range",
            lambda: mean_iou_from_masks(pred + 4, MASKS, 4),
            ValueError,
            r"`pred_masks` must hold class labels in \[0, 3\], got",
        ),
        (
            "mean_iou_from_masks-pred-negative",
            lambda: mean_iou_from_masks(pred - 1, MASKS, 4),
            ValueError,
            r"`pred_masks` must hold class labels in \[0, 3\], got -1",
        ),
        (
            "mean_iou_from_masks-masks-range",
            lambda: mean_iou_from_masks(pred, MASKS.clamp_max(0) + 7, 4),
            ValueError,
            r"`masks` must hold class labels in \[0, 3\] or ignore_index=255, got 7",
        ),
        (
            "mean_iou_from_masks-masks-no-ignore",
            lambda: mean_iou_from_masks(pred, MASKS.clamp_max(0) + 255, 4, ignore_index=None),
            ValueError,
            r"`masks` must hold class labels in \[0, 3\], got 255",
        ),
        (
            "mean_iou_from_masks-2d",
            lambda: mean_iou_from_masks(pred[0], MASKS[0], 4),
            ValueError,
            r"`pred_masks` must have shape \(B, H, W\)",
        ),
        (
            "mean_iou_from_masks-num_classes-0",
            lambda: mean_iou_from_masks(pred, MASKS, 0),
            ValueError,
            "`num_classes` must be >= 1",
        ),
        (
            "mean_iou_from_masks-num_classes-float",
            lambda: mean_iou_from_masks(pred, MASKS, 4.0),
            TypeError,
            "`num_classes` must be an int",
        ),
    ]
    # localization_error and LocalizationError
    cases += _map_input_cases("localization_error", lambda m, lb: localization_error(m, lb, boxes=BOXES))
    cases += _threshold_cases(
        "localization_error", lambda t: localization_error(MAPS, LABELS, boxes=BOXES, thresholds=t)
    )
    cases += _box_cases("localization_error", lambda b: localization_error(MAPS, LABELS, boxes=b))
    cases += [
        (
            "localization_error-iou-1.5",
            lambda: localization_error(MAPS, LABELS, boxes=BOXES, iou=1.5),
            ValueError,
            r"`iou` must be between 0 and 1 \(exclusive\), got 1.5",
        ),
        (
            "localization_error-iou-str",
            lambda: localization_error(MAPS, LABELS, boxes=BOXES, iou="0.5"),
            TypeError,
            "`iou` must be a float",
        ),
        (
            "localization_error-components",
            lambda: localization_error(MAPS, LABELS, boxes=BOXES, components="every"),
            ValueError,
            "`components` must be one of",
        ),
        (
            "localization_error-boxes-positional",
            lambda: localization_error(MAPS, LABELS, BOXES),
            TypeError,
            "positional",
        ),
    ]
    cases += _threshold_cases("LocalizationError", lambda t: LocalizationError(thresholds=t))
    cases += [
        (
            "LocalizationError-iou-0",
            lambda: LocalizationError(iou=0.0),
            ValueError,
            r"`iou` must be between 0 and 1",
        ),
        (
            "LocalizationError-components",
            lambda: LocalizationError(components="any"),
            ValueError,
            "`components` must be one of",
        ),
        (
            "LocalizationError-threshold-old",
            lambda: LocalizationError(threshold=0.15),
            TypeError,
            "threshold",
        ),
    ]
    cases += _map_input_cases(
        "LocalizationError.update", lambda m, lb: LocalizationError().update(m, lb, boxes=BOXES)
    )
    cases += _box_cases("LocalizationError.forward", lambda b: LocalizationError()(MAPS, LABELS, boxes=b))
    # average precision
    cases += _score_cases("average_precision", average_precision)
    cases += _score_cases("mean_average_precision", mean_average_precision)
    cases += _score_cases("MeanAveragePrecision.update", lambda s, lb: MeanAveragePrecision().update(s, lb))
    cases += _score_cases("MeanAveragePrecision.forward", lambda s, lb: MeanAveragePrecision()(s, lb))
    return cases


CASES = _cases()


def test_case_ids_are_unique_and_counted() -> None:
    ids = [case[0] for case in CASES]
    assert len(ids) == len(set(ids))
    assert len(CASES) == 231  # 237 reported for issue 15; the 6 cases of cam_boxes are in test_maps.py


@pytest.mark.parametrize(
    ("call", "error", "match"), [case[1:] for case in CASES], ids=[case[0] for case in CASES]
)
def test_bad_input_gives_a_clear_error(
    call: Callable[[], object], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        call()


def test_inputs_are_not_modified() -> None:
    maps, labels, masks = MAPS.clone(), LABELS.clone(), MASKS.clone()
    boxes = [box.clone() for box in BOXES]
    mean_iou(maps, labels, masks=masks, thresholds=[0.1, 0.5])
    localization_error(maps, labels, boxes=boxes, thresholds=[0.1, 0.5])
    MeanIoU(4)(maps, labels, masks=masks)
    assert torch.equal(maps, MAPS)
    assert torch.equal(labels, LABELS)
    assert torch.equal(masks, MASKS)
    assert all(torch.equal(a, b) for a, b in zip(boxes, BOXES, strict=True))
