from __future__ import annotations

import math

import pytest
import torch
from torchvision.ops import box_iou

from hiercam.metrics import LocalizationError, localization_error

# ------------------------------------------------------------------------ localization_error


def blob(height: int, width: int, x1: int, y1: int, x2: int, y2: int) -> torch.Tensor:
    """A map that is 1 on the box (exclusive far edges), 0 elsewhere."""
    cam = torch.zeros(height, width)
    cam[y1:y2, x1:x2] = 1.0
    return cam


def test_localization_error_hand_built_cases() -> None:
    cams = torch.zeros(4, 3, 16, 16)
    labels = torch.zeros(4, 3, dtype=torch.long)
    boxes: list[torch.Tensor] = []
    # image 0, class 0: the CAM is on its box -> correct
    cams[0, 0] = blob(16, 16, 2, 2, 8, 8)
    labels[0, 0] = 1
    # image 0, class 2: absent; its CAM is far from its box -> ignored
    cams[0, 2] = blob(16, 16, 0, 0, 2, 2)
    boxes.append(torch.tensor([[0, 2, 2, 8, 8], [2, 10, 10, 16, 16]]))
    # image 1, class 1: the CAM is shifted by 3 of 6 pixels in x and y: IoU = 9 / 63 < 0.5 -> error
    cams[1, 1] = blob(16, 16, 5, 5, 11, 11)
    labels[1, 1] = 1
    boxes.append(torch.tensor([[1, 2, 2, 8, 8]]))
    # image 2, class 0: two instances; the CAM's largest region covers the second -> correct
    cams[2, 0] = blob(16, 16, 9, 9, 15, 15) + 0.5 * blob(16, 16, 0, 0, 2, 2)
    labels[2, 0] = 1
    boxes.append(torch.tensor([[0, 1, 1, 5, 5], [0, 9, 9, 15, 15]]))
    # image 3: no class present -> contributes nothing
    cams[3] = torch.rand(3, 16, 16)
    boxes.append(torch.zeros(0, 5))
    error = localization_error(cams, labels, boxes=boxes)
    assert error.dtype == torch.float64
    assert error.shape == ()
    assert float(error) == pytest.approx(1 / 3)
    # sanity of the hand-built shift: torchvision agrees the IoU is 9 / 63
    iou = box_iou(torch.tensor([[5.0, 5.0, 11.0, 11.0]]), torch.tensor([[2.0, 2.0, 8.0, 8.0]]))
    assert float(iou) == pytest.approx(9 / 63)
    # only the absent class's CAM changes: same result
    cams[0, 2] = torch.rand(16, 16)
    assert float(localization_error(cams, labels, boxes=boxes)) == pytest.approx(1 / 3)


def test_iou_boundary_and_all_components() -> None:
    # predicted 4 x 2 inside a 4 x 4 ground truth: IoU exactly 0.5 -> a hit (>= 0.5)
    cams = blob(8, 8, 0, 0, 4, 2)[None, None]
    truth = [torch.tensor([[0, 0, 0, 4, 4]])]
    labels = torch.ones(1, 1)
    assert float(localization_error(cams, labels, boxes=truth)) == 0.0
    assert float(localization_error(cams, labels, boxes=truth, iou=0.6)) == 1.0
    # a larger decoy region wins "largest" (-> error); "all" also keeps the right box (-> correct)
    decoy = blob(8, 8, 0, 0, 3, 3) + blob(8, 8, 4, 4, 8, 8)
    truth = [torch.tensor([[0, 0, 0, 3, 3]])]
    assert float(localization_error(decoy[None, None], labels, boxes=truth)) == 1.0
    assert float(localization_error(decoy[None, None], labels, boxes=truth, components="all")) == 0.0


def test_present_class_without_box_or_without_activation_is_an_error() -> None:
    cams = torch.zeros(1, 2, 8, 8)
    cams[0, 0] = blob(8, 8, 0, 0, 4, 4)
    labels = torch.tensor([[1, 1]])  # class 1 has no box and an all-zero CAM
    truth = [torch.tensor([[0, 0, 0, 4, 4]])]
    assert float(localization_error(cams, labels, boxes=truth)) == 0.5
    assert float(localization_error(cams, torch.tensor([[1, 0]]), boxes=truth)) == 0.0
    assert math.isnan(float(localization_error(cams, torch.zeros(1, 2), boxes=truth)))


def test_box_formats_agree() -> None:
    generator = torch.Generator().manual_seed(5)
    cams = torch.rand(6, 3, 12, 12, generator=generator) ** 4
    labels = torch.randint(0, 2, (6, 3), generator=generator)
    rows = []
    for _ in range(6):
        count = int(torch.randint(0, 4, (1,), generator=generator))
        corner = torch.randint(0, 6, (count, 2), generator=generator)
        size = torch.randint(1, 7, (count, 2), generator=generator)
        classes = torch.randint(0, 3, (count, 1), generator=generator)
        rows.append(torch.cat([classes, corner, corner + size], dim=1).float())
    pairs = [(r[:, 1:], r[:, 0].long()) for r in rows]
    expected = localization_error(cams, labels, boxes=rows, components="all")
    assert float(localization_error(cams, labels, boxes=pairs, components="all")) == float(expected)
    metric = LocalizationError(components="all")  # the formats mix across batches
    metric.update(cams[:4], labels[:4], boxes=pairs[:4])
    metric.update(cams[4:], labels[4:], boxes=rows[4:])
    assert float(metric.compute()) == float(expected)
    assert int(metric.counts[0, 1]) == int(labels.sum())


def test_inputs_untouched_and_dtypes() -> None:
    cams = torch.rand(2, 2, 8, 8, dtype=torch.float16)
    labels = torch.tensor([[True, False], [True, True]])
    truth = [torch.tensor([[0.0, 0.0, 0.0, 8.0, 8.0]]), torch.tensor([[0.0, 0.0, 0.0, 8.0, 8.0]])]
    before = (cams.clone(), truth[0].clone())
    error = localization_error(cams, labels, boxes=truth)
    assert 0.0 <= float(error) <= 1.0
    assert torch.equal(cams, before[0])
    assert torch.equal(truth[0], before[1])


def test_threshold_sweep_equals_one_metric_per_threshold() -> None:
    from hiercam.metrics import LocalizationError

    generator = torch.Generator().manual_seed(0)
    thresholds = [0.1, 0.3, 0.5, 0.7]
    sweep = LocalizationError(thresholds=thresholds)
    singles = [LocalizationError(thresholds=t) for t in thresholds]
    for _ in range(3):
        cams = torch.rand(4, 3, 16, 16, generator=generator) ** 4
        labels = (torch.rand(4, 3, generator=generator) > 0.4).long()
        boxes = [torch.tensor([[k, 2.0, 3.0, 10.0, 12.0] for k in range(3)]) for _ in range(4)]
        sweep.update(cams, labels, boxes=boxes)
        for metric in singles:
            metric.update(cams, labels, boxes=boxes)
    assert sweep.counts.shape == (4, 2)
    expected = torch.stack([metric.compute() for metric in singles])
    torch.testing.assert_close(sweep.compute(), expected)
    assert len(set(expected.tolist())) > 1  # the thresholds really differ
    functional = localization_error(cams, labels, boxes=boxes, thresholds=thresholds)
    assert functional.shape == (4,)
    for row, threshold in enumerate(thresholds):
        assert float(functional[row]) == float(
            localization_error(cams, labels, boxes=boxes, thresholds=threshold)
        )
