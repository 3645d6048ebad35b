"""MaxBoxAcc and PxAP (Choe et al., CVPR 2020).

Oracles: values worked out on paper (the +1 pixel box convention included), a reference written after
wsolevaluation's ``BoxEvaluator`` with OpenCV's contours (``cv2.findContours`` / ``cv2.boundingRect``), and a
naive loop over thresholds for PxAP.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor

from hiercam.metrics import MaxBoxAcc, PxAP, max_box_acc, pxap


def blob(size: int = 8, rows: slice = slice(2, 5), cols: slice = slice(2, 5)) -> Tensor:
    maps = torch.zeros(1, 1, size, size)
    maps[0, 0, rows, cols] = 1.0
    return maps


ONE = torch.tensor([[1]])


# ------------------------------------------------------------------------------------- MaxBoxAcc by hand
def test_plus_one_pixel_iou() -> None:
    # predicted box (2, 2, 5, 5), truth (2, 2, 6, 6): wsolevaluation's IoU (4 * 4) / (5 * 5) = 0.64
    result = max_box_acc(blob(), ONE, boxes=[torch.tensor([[0, 2, 2, 6, 6]])])
    assert result.per_iou.tolist() == [1.0, 1.0, 0.0]
    assert float(result.value) == pytest.approx(2 / 3)
    # the same box: IoU 1 at every threshold; the best threshold is the lowest, 0
    exact = max_box_acc(blob(), ONE, boxes=[torch.tensor([[0, 2, 2, 5, 5]])])
    assert exact.per_iou.tolist() == [1.0, 1.0, 1.0]
    assert exact.best_thresholds.tolist() == [0.0, 0.0, 0.0]


def test_far_edges_are_clamped_at_the_border() -> None:
    # a region touching the right border: x2 = 8 is clamped to W - 1 = 7, so the box reads 3 pixels wide
    # against a truth 4 pixels wide (inclusive +1 on x2 = 8): IoU (3 * 4) / (4 * 4) = 0.75
    maps = blob(cols=slice(5, 8))
    result = max_box_acc(maps, ONE, boxes=[torch.tensor([[0, 5, 2, 8, 5]])], iou_thresholds=[0.7, 0.76])
    assert result.per_iou.tolist() == [1.0, 0.0]


def test_no_region_predicts_the_corner_box() -> None:
    flat = torch.zeros(1, 1, 8, 8)  # normalised to zeros: no pixel above any threshold -> box (0, 0, 0, 0)
    corner = max_box_acc(flat, ONE, boxes=[torch.tensor([[0, 0, 0, 1, 1]])])  # IoU 1 / 4
    assert corner.per_iou.tolist() == [0.0, 0.0, 0.0]
    point = max_box_acc(flat, ONE, boxes=[torch.tensor([[0, 0, 0, 0, 0]])])  # IoU 1
    assert point.per_iou.tolist() == [1.0, 1.0, 1.0]


def test_best_threshold_and_all_regions() -> None:
    # a 3x3 core at 1.0 inside a 5x5 halo at 0.5: uint8(0.5 * 255) = 127 is kept while int(t * 255) < 127,
    # i.e. up to t = 0.49; from t = 0.50 the core alone gives box (3, 3, 6, 6)
    maps = torch.zeros(1, 1, 9, 9)
    maps[0, 0, 2:7, 2:7] = 0.5
    maps[0, 0, 3:6, 3:6] = 1.0
    truth = [torch.tensor([[0, 3, 3, 6, 6]])]  # halo box (2, 2, 7, 7): IoU 16 / 36
    result = max_box_acc(maps, ONE, boxes=truth)
    assert result.per_iou.tolist() == [1.0, 1.0, 1.0]
    assert result.best_thresholds.tolist() == pytest.approx([0.0, 0.5, 0.5])
    # two regions; the truth is the smaller one: every region counts for "all", the largest alone does not
    two = torch.zeros(1, 1, 10, 10)
    two[0, 0, 0:4, 0:4] = 1.0
    two[0, 0, 7:9, 7:9] = 1.0
    small = [torch.tensor([[0, 7, 7, 9, 9]])]
    assert max_box_acc(two, ONE, boxes=small).per_iou.tolist() == [1.0, 1.0, 1.0]
    assert max_box_acc(two, ONE, boxes=small, components="largest").per_iou.tolist() == [0.0, 0.0, 0.0]


def test_trials_are_present_classes_and_boxes_of_their_class() -> None:
    maps = torch.cat([blob(), blob(rows=slice(0, 3), cols=slice(0, 3))], dim=1)  # (1, 2, 8, 8)
    boxes = [torch.tensor([[0, 2, 2, 5, 5], [1, 5, 5, 8, 8]])]  # class 1's truth is elsewhere
    both = max_box_acc(maps, torch.tensor([[1, 1]]), boxes=boxes)
    assert both.per_iou.tolist() == [0.5, 0.5, 0.5]
    assert max_box_acc(maps, torch.tensor([[1, 0]]), boxes=boxes).per_iou.tolist() == [1.0, 1.0, 1.0]
    assert torch.isnan(max_box_acc(maps, torch.tensor([[0, 0]]), boxes=boxes).value)


# ----------------------------------------------------------------------------------- MaxBoxAcc vs OpenCV
def opencv_best_ious(score: np.ndarray, truth: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """wsolevaluation's boxes (multi_contour_eval=True) and IoU with OpenCV: best IoU per threshold."""
    import cv2

    height, width = score.shape
    image = np.expand_dims((score * 255).astype(np.uint8), 2)
    best = []
    for threshold in grid:
        _, binary = cv2.threshold(image, int(threshold * np.max(image)), 255, cv2.THRESH_BINARY)
        contours = cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[0]
        boxes = []
        for contour in contours:
            x, y, w, h = cv2.boundingRect(contour)
            boxes.append([x, y, min(x + w, width - 1), min(y + h, height - 1)])
        values = []
        for a in boxes or [[0, 0, 0, 0]]:
            for b in truth:
                across = max(0, min(a[2], b[2]) - max(a[0], b[0]) + 1)
                down = max(0, min(a[3], b[3]) - max(a[1], b[1]) + 1)
                union = (a[2] - a[0] + 1) * (a[3] - a[1] + 1) + (b[2] - b[0] + 1) * (b[3] - b[1] + 1)
                values.append(across * down / (union - across * down))
        best.append(max(values))
    return np.asarray(best)


def smooth_maps(count: int, size: int, seed: int) -> Tensor:
    """Sums of a few Gaussian bumps: several regions at some thresholds, no holes."""
    rng = np.random.default_rng(seed)
    grid = np.mgrid[0:size, 0:size]
    maps = np.zeros((count, size, size))
    for index in range(count):
        for _ in range(3):
            center = rng.uniform(0, size, 2)
            width = rng.uniform(1.5, 4)
            maps[index] += rng.uniform(0.3, 1) * np.exp(
                -((grid - center[:, None, None]) ** 2).sum(0) / (2 * width**2)
            )
    return torch.from_numpy(maps).float()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_max_box_acc_matches_opencv_reference(seed: int) -> None:
    from hiercam.metrics.max_box_acc import _best_ious

    size, count, interval = 24, 8, 0.02
    maps = smooth_maps(count, size, seed)[:, None]
    rng = np.random.default_rng(seed + 10)
    truths = []
    for m in maps[:, 0]:  # a box near the map's peak, of random size: accuracies in between 0 and 1
        y, x = np.unravel_index(int(m.argmax()), m.shape)
        left, top, right, bottom = rng.integers(1, 7, 4)
        truths.append(
            np.array([[max(x - left, 0), max(y - top, 0), min(x + right, size), min(y + bottom, size)]])
        )
    boxes = [torch.cat([torch.zeros(1, 1), torch.from_numpy(t).float()], 1) for t in truths]
    grid = np.arange(0, 1, interval)
    scores = [((m - m.min()) / (m.max() - m.min())).numpy() for m in maps[:, 0]]
    expected = [opencv_best_ious(score, truth, grid) for score, truth in zip(scores, truths, strict=True)]
    for score, truth, want in zip(scores, truths, expected, strict=True):  # every trial, every threshold
        np.testing.assert_allclose(_best_ious(score, truth.astype(float), grid, "all"), want, rtol=1e-12)
    accuracy = [float((np.stack(expected) >= iou).mean(0).max()) for iou in (0.3, 0.5, 0.7)]
    result = max_box_acc(maps, torch.ones(count, 1), boxes=boxes, interval=interval)
    assert result.per_iou.tolist() == pytest.approx(accuracy)
    assert 0 < float(result.value) < 1


# --------------------------------------------------------------------------------------------- PxAP
def naive_pxap(
    scores: list[np.ndarray], positives: list[np.ndarray], negatives: list[np.ndarray], interval: float
) -> float:
    """Precision and recall counted afresh at every threshold (descending), summed as wsolevaluation does."""
    thresholds = sorted([*np.arange(0, 1, interval), 1.0, 2.0, 3.0], reverse=True)
    total = sum(int(p.sum()) for p in positives)
    area, previous_recall = 0.0, 0.0
    for threshold in thresholds:
        tp = sum(int(((s >= threshold) & p).sum()) for s, p in zip(scores, positives, strict=True))
        fp = sum(int(((s >= threshold) & n).sum()) for s, n in zip(scores, negatives, strict=True))
        recall = tp / total
        if tp + fp:
            area += tp / (tp + fp) * (recall - previous_recall)
        previous_recall = recall
    return area


def test_pxap_by_hand() -> None:
    # foreground scores 1 and 0.6, background 0.8 and 0.2: precision 1 at recall 1/2, then 2/3 at recall 1
    maps = torch.tensor([[[[1.0, 0.8], [0.6, 0.2]]]])
    masks = torch.tensor([[[1, 0], [1, 0]]])
    value = float(pxap(maps, ONE, masks=masks, interval=0.1))
    assert value == pytest.approx(1 / 2 + 2 / 3 * 1 / 2)
    # the ignored pixel's score does not count, whatever it is; min-max normalisation keeps the order
    ignored = torch.tensor([[[1, 0], [1, 255]]])
    a = pxap(torch.tensor([[[[1.0, 0.8], [0.6, 0.0]]]]), ONE, masks=ignored, interval=0.1)
    b = pxap(torch.tensor([[[[1.0, 0.8], [0.6, 0.5]]]]), ONE, masks=ignored, interval=0.1)
    assert float(a) == pytest.approx(1 / 2 + 2 / 3 * 1 / 2)
    assert float(b) == pytest.approx(float(a))


@pytest.mark.parametrize("interval", [0.01, 0.05])
def test_pxap_matches_a_naive_loop(interval: float) -> None:
    torch.manual_seed(3)
    maps = smooth_maps(8, 12, 4).reshape(4, 2, 12, 12)
    masks = torch.randint(0, 3, (4, 12, 12))
    masks[torch.rand(4, 12, 12) < 0.1] = 255
    labels = torch.tensor([[1, 1], [1, 0], [0, 1], [1, 1]])
    scores, positives, negatives = [], [], []
    for b, k in labels.nonzero().tolist():
        m = maps[b, k]
        scores.append(((m - m.min()) / (m.max() - m.min())).numpy())
        positives.append((masks[b] == k + 1).numpy())
        negatives.append(((masks[b] != k + 1) & (masks[b] != 255)).numpy())
    expected = naive_pxap(scores, positives, negatives, interval)
    assert float(pxap(maps, labels, masks=masks, interval=interval)) == pytest.approx(expected)
    metric = PxAP(interval=interval)
    metric.update(maps[:1], labels[:1], masks=masks[:1])
    metric.update(maps[1:], labels[1:], masks=masks[1:])
    assert float(metric.compute()) == pytest.approx(expected)


def test_pxap_without_foreground_is_nan() -> None:
    assert torch.isnan(pxap(torch.rand(1, 1, 4, 4), ONE, masks=torch.zeros(1, 4, 4, dtype=torch.long)))
    assert torch.isnan(PxAP().compute())


# --------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: pxap(torch.rand(1, 1, 4, 4), ONE, masks=torch.zeros(1, 4, 4)), TypeError, "integer"),
        (
            lambda: pxap(torch.rand(1, 1, 4, 4), ONE, masks=torch.zeros(1, 4, 5, dtype=torch.long)),
            ValueError,
            "masks",
        ),
        (
            lambda: pxap(torch.rand(1, 1, 4, 4), ONE, masks=torch.zeros(4, 4, dtype=torch.long)),
            ValueError,
            "masks",
        ),
        (
            lambda: pxap(
                torch.rand(1, 1, 4, 4), ONE, masks=torch.zeros(1, 4, 4, dtype=torch.long), interval=0
            ),
            ValueError,
            "interval",
        ),
        (
            lambda: pxap(
                torch.rand(1, 1, 4, 4), ONE, masks=torch.zeros(1, 4, 4, dtype=torch.long), ignore_index=2.5
            ),
            TypeError,
            "ignore_index",
        ),
        (
            lambda: pxap(
                torch.rand(1, 0, 4, 4), torch.zeros(1, 0), masks=torch.zeros(1, 4, 4, dtype=torch.long)
            ),
            ValueError,
            "at least one",
        ),
        (lambda: max_box_acc(blob(), ONE, boxes=[torch.tensor([[0, 5, 5, 2, 2]])]), ValueError, "x2 < x1"),
        (lambda: max_box_acc(blob(), ONE, boxes=[]), ValueError, "one entry per image"),
        (lambda: max_box_acc(blob(), ONE, boxes=[torch.tensor([[1, 0, 0, 2, 2]])]), ValueError, "class ids"),
        (
            lambda: max_box_acc(blob(), ONE, boxes=[torch.zeros(0, 5)], iou_thresholds=[]),
            ValueError,
            "at least one",
        ),
        (
            lambda: max_box_acc(blob(), ONE, boxes=[torch.zeros(0, 5)], iou_thresholds=[0.5, 1.0]),
            ValueError,
            "iou_thresholds",
        ),
        (
            lambda: max_box_acc(blob(), ONE, boxes=[torch.zeros(0, 5)], iou_thresholds=0.5),
            TypeError,
            "iou_thresholds",
        ),
        (lambda: max_box_acc(blob(), ONE, boxes=[torch.zeros(0, 5)], interval=1.5), ValueError, "interval"),
        (
            lambda: max_box_acc(blob(), ONE, boxes=[torch.zeros(0, 5)], components="first"),
            ValueError,
            "components",
        ),
        (lambda: max_box_acc(blob().long(), ONE, boxes=[torch.zeros(0, 5)]), TypeError, "floating"),
        (
            lambda: max_box_acc(blob(), torch.tensor([[1, 1]]), boxes=[torch.zeros(0, 5)]),
            ValueError,
            "labels",
        ),
        (lambda: max_box_acc(blob() * float("nan"), ONE, boxes=[torch.zeros(0, 5)]), ValueError, "finite"),
        (lambda: MaxBoxAcc(iou_thresholds=[0]), ValueError, "iou_thresholds"),
        (lambda: PxAP(interval=-0.1), ValueError, "interval"),
    ],
)
def test_bad_input(call: object, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        call()  # type: ignore[operator]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_on_the_gpu_equals_cpu() -> None:
    maps = smooth_maps(4, 16, 5).reshape(2, 2, 16, 16)
    masks = torch.randint(0, 3, (2, 16, 16))
    labels = torch.ones(2, 2)
    boxes = [torch.tensor([[0, 2, 2, 9, 9], [1, 5, 4, 14, 12]])] * 2
    torch.testing.assert_close(
        pxap(maps.cuda(), labels.cuda(), masks=masks.cuda()), pxap(maps, labels, masks=masks)
    )
    cuda = max_box_acc(maps.cuda(), labels.cuda(), boxes=[b.cuda() for b in boxes])
    torch.testing.assert_close(cuda.value, max_box_acc(maps, labels, boxes=boxes).value)
