"""The one-pass kernels of MaxBoxAcc and PxAP against the per-threshold computations they replace.

Oracles: ``scipy.ndimage`` labelling of every mask separately (``mask_boxes`` of each threshold, the kernel
MaxBoxAcc used before), wsolevaluation's IoU with the +1 pixel written out per threshold, and
``torch.bucketize`` of float64 scores against the float64 edges (PxAP's bins before). Maps with ties (few
distinct values), constant maps, empty masks and trials without a ground-truth box are included.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage
from torch import Tensor

import hiercam
from hiercam._host_reads import HostReads
from hiercam.maps import level_boxes
from hiercam.metrics import ConfidenceChange, DeletionInsertion, MaxBoxAcc, PxAP, max_box_acc, pxap
from hiercam.metrics._wsol import threshold_grid
from hiercam.metrics.max_box_acc import _trial_ious
from hiercam.metrics.pxap import _bins, _edges


def scipy_regions(mask: np.ndarray, components: str) -> list[tuple[list[int], int]]:
    """Boxes and pixel counts of the 8-connected regions by ``scipy.ndimage`` (largest: the first on ties)."""
    regions, count = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    if count == 0:
        return []
    sizes = np.bincount(regions.ravel())[1:].tolist()
    boxes = [[c.start, r.start, c.stop, r.stop] for r, c in ndimage.find_objects(regions)]
    if components == "largest":
        best = int(np.argmax(sizes))
        return [(boxes[best], sizes[best])]
    return list(zip(boxes, sizes, strict=True))


def scipy_boxes(mask: np.ndarray, components: str) -> list[list[int]]:
    return [box for box, _ in scipy_regions(mask, components)]


def random_levels(seed: int) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    count, height, width = (int(v) for v in torch.randint(1, 13, (3,), generator=generator))
    depth = int(torch.randint(1, 7, (1,), generator=generator))
    return torch.randint(0, depth + 1, (count % 4 + 1, height, width), generator=generator)


# --------------------------------------------------------------------------------------------- level_boxes
@pytest.mark.parametrize("components", ["all", "largest"])
@pytest.mark.parametrize("seed", range(12))
def test_level_boxes_are_the_boxes_of_every_mask(seed: int, components: str) -> None:
    levels = random_levels(seed)
    found = level_boxes(levels, components)  # type: ignore[arg-type]
    columns = (found.maps, found.levels, found.boxes, found.areas)
    got = list(zip(*(column.tolist() for column in columns), strict=True))
    want = []
    for index, level_map in enumerate(levels.numpy()):
        for level in range(int(level_map.max())):
            regions = scipy_regions(level_map > level, components)
            want += [(index, level, box, area) for box, area in regions]
    assert got == want  # the same regions, in the order (map, level, first pixel in row-major order)


def test_level_boxes_edge_cases() -> None:
    empty = level_boxes(torch.zeros(3, 5, 4, dtype=torch.long))
    assert empty.boxes.shape == (0, 4)
    assert empty.maps.numel() == 0
    single = level_boxes(torch.ones(1, 1, 1, dtype=torch.int16))
    assert single.boxes.tolist() == [[0, 0, 1, 1]]
    assert single.areas.tolist() == [1]
    # a diagonal touches by its corners: one region; a chequerboard's two colours: two regions
    diagonal = torch.eye(5, dtype=torch.long)[None]
    assert level_boxes(diagonal).boxes.tolist() == [[0, 0, 5, 5]]
    board = (torch.arange(4)[:, None] + torch.arange(4)[None, :]) % 2
    assert level_boxes(board[None]).boxes.tolist() == [[0, 0, 4, 4]]
    assert level_boxes((1 - board)[None]).boxes.tolist() == [[0, 0, 4, 4]]
    # a full mask, then the same map once more: the map index follows
    twice = level_boxes(torch.ones(2, 3, 3, dtype=torch.long))
    assert twice.maps.tolist() == [0, 1]
    assert twice.areas.tolist() == [9, 9]


def test_level_boxes_bad_input() -> None:
    with pytest.raises(TypeError, match="`levels` must be an integer tensor"):
        level_boxes(torch.rand(1, 3, 3))
    with pytest.raises(ValueError, match=r"`levels` must hold values in \[0, 32767\]"):
        level_boxes(torch.full((1, 2, 2), -1))
    with pytest.raises(ValueError, match="levels"):
        level_boxes(torch.ones(3, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="components"):
        level_boxes(torch.ones(1, 3, 3, dtype=torch.long), "biggest")  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------- MaxBoxAcc
def naive_best_ious(score: np.ndarray, truth: np.ndarray, grid: np.ndarray, components: str) -> np.ndarray:
    """The per-threshold loop: label the mask of every threshold, box it, best wsolevaluation IoU."""
    height, width = score.shape
    quantised = (score * 255).astype(np.uint8)
    best = np.zeros(len(grid))
    for index, threshold in enumerate(grid):
        boxes = scipy_boxes(quantised > int(threshold * quantised.max()), components) or [[0, 0, 0, 0]]
        values = [0.0]
        for x1, y1, x2, y2 in boxes:
            x2, y2 = min(x2, width - 1), min(y2, height - 1)
            for a1, b1, a2, b2 in truth.tolist():
                across = max(0.0, min(x2, a2) - max(x1, a1) + 1)
                down = max(0.0, min(y2, b2) - max(y1, b1) + 1)
                union = (x2 - x1 + 1) * (y2 - y1 + 1) + (a2 - a1 + 1) * (b2 - b1 + 1) - across * down
                values.append(across * down / union if union > 0 else 0.0)
        best[index] = max(values)
    return best


def tied_scores(count: int, size: int, seed: int) -> Tensor:
    """Min-max normalised maps with few distinct values (ties), a constant map and a one-pixel peak."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.randint(0, 6, (count, 1, 4, 4), generator=generator).float()
    maps = torch.nn.functional.interpolate(coarse, size=(size, size), mode="nearest")[:, 0]
    maps = maps + torch.rand(count, size, size, generator=generator) ** 8  # a few values off the plateaus
    maps[0] = 0.0  # constant: every mask empty, the box (0, 0, 0, 0)
    maps[1] = 0.0
    maps[1, size // 2, size // 3] = 1.0
    low = maps.amin(dim=(1, 2), keepdim=True)
    span = (maps.amax(dim=(1, 2), keepdim=True) - low).clamp_min(1e-12)
    return (maps - low) / span


@pytest.mark.parametrize("components", ["all", "largest"])
@pytest.mark.parametrize("interval", [0.01, 0.05, 0.3])
def test_trial_ious_match_the_per_threshold_loop(interval: float, components: str) -> None:
    size, count = 13, 7
    scores = tied_scores(count, size, seed=int(interval * 100))
    generator = torch.Generator().manual_seed(5)
    truth = []
    for index in range(count):  # 0 to 2 boxes per trial; one at the corner (0, 0) meets the empty box
        corners = torch.randint(0, size, (index % 3, 2, 2), generator=generator).sort(dim=1).values
        boxes = torch.cat([corners[:, 0], corners[:, 1]], dim=1).double()
        truth.append(boxes[:, [1, 0, 3, 2]] if index % 2 else boxes)
    truth[3] = torch.tensor([[0.0, 0.0, 2.0, 3.0]], dtype=torch.float64)
    grid = threshold_grid(interval)
    got = _trial_ious(scores, truth, grid, components)  # type: ignore[arg-type]
    for index in range(count):
        want = naive_best_ious(scores[index].numpy(), truth[index].numpy(), grid, components)
        np.testing.assert_array_equal(got[index].numpy(), want)  # identical, not close


@pytest.mark.parametrize("components", ["all", "largest"])
@pytest.mark.parametrize("seed", range(6))
def test_mask_boxes_are_the_boxes_of_scipy_ndimage(seed: int, components: str) -> None:
    mask = random_levels(seed)[0] > 0
    for min_area in (0, 2, 5):
        regions = [(box, area) for box, area in scipy_regions(mask.numpy(), "all") if area >= min_area]
        if components == "largest" and regions:
            regions = [max(regions, key=lambda region: region[1])]  # max keeps the first of equals
        got = hiercam.maps.mask_boxes(mask, components, min_area)  # type: ignore[arg-type]
        assert got.dtype == torch.float32
        assert got.tolist() == [[float(v) for v in box] for box, _ in regions]


def naive_localization_counts(
    maps: Tensor, labels: Tensor, boxes: list[Tensor], thresholds: list[float], iou: float, components: str
) -> list[list[int]]:
    """The localisation error's counts, one ``scipy.ndimage`` labelling per pair and threshold."""
    from torchvision.ops import box_iou

    counts = []
    for threshold in thresholds:
        errors = pairs = 0
        for image, cls in torch.nonzero(labels).tolist():
            pairs += 1
            map = maps[image, cls]
            kept = (map / map.max()) > threshold
            found = torch.tensor(scipy_boxes(kept.numpy(), components), dtype=torch.float64).reshape(-1, 4)
            target = boxes[image][boxes[image][:, 0] == cls][:, 1:]
            hit = len(found) and len(target) and bool((box_iou(found, target) >= iou).any())
            errors += not hit
        counts.append([errors, pairs])
    return counts


@pytest.mark.parametrize("iou", [0.1, 0.3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
@pytest.mark.parametrize("components", ["all", "largest"])
def test_localization_error_of_all_thresholds_matches_one_labelling_per_threshold(
    components: str, dtype: torch.dtype, iou: float
) -> None:
    from hiercam.metrics.localization_error import _localization_update

    generator = torch.Generator().manual_seed(3)
    coarse = torch.rand(4, 3, 3, 3, generator=generator)
    maps = torch.nn.functional.interpolate(coarse, size=(17, 17), mode="bilinear").to(dtype)
    maps[3, 0] = torch.where(maps[3, 0] > 0.5, 1.0, 0.25).to(dtype)  # ties at exactly the thresholds
    labels = torch.rand(4, 3, generator=generator) > 0.3
    labels[0] = False  # an image without a present class
    boxes = []
    for image in range(4):  # 0 to 3 boxes, of classes 0-2, some for absent classes
        corners = torch.randint(0, 17, (image, 2, 2), generator=generator).sort(dim=1).values
        classes = torch.randint(0, 3, (image, 1), generator=generator).double()
        boxes.append(torch.cat([classes, corners[:, 0, [1, 0]], corners[:, 1, [1, 0]] + 1], dim=1).double())
    thresholds = [0.5, 0.15, 0.25, 0.15, 0.9, 0.05]  # unsorted, a duplicate, one at the tie value
    got = _localization_update(maps, labels, boxes, thresholds, iou, components)  # type: ignore[arg-type]
    want = naive_localization_counts(maps, labels, boxes, thresholds, iou, components)
    assert got.tolist() == want
    assert 0 < sum(errors for errors, _ in want) < sum(pairs for _, pairs in want)  # hits and misses


def test_max_box_acc_streams_like_one_call_on_random_maps() -> None:
    generator = torch.Generator().manual_seed(0)
    maps = torch.rand(3, 4, 12, 12, generator=generator) ** 3
    labels = (torch.rand(3, 4, generator=generator) < 0.6).long()
    boxes = [torch.tensor([[k, 2, 1, 9, 8], [k, 0, 0, 4, 4]]) for k in (0, 1, 3)]
    whole = max_box_acc(maps, labels, boxes=boxes)
    metric = MaxBoxAcc()
    for index in range(3):
        metric.update(maps[index : index + 1], labels[index : index + 1], boxes=boxes[index : index + 1])
    streamed = metric.compute()
    assert torch.equal(streamed.per_iou, whole.per_iou)
    assert torch.equal(streamed.best_thresholds, whole.best_thresholds)


# --------------------------------------------------------------------------------------------- PxAP
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("interval", [0.01, 0.03, 0.1, 0.7, 1e-3])
def test_pxap_bins_are_those_of_bucketize_in_float64(interval: float, dtype: torch.dtype) -> None:
    grid = threshold_grid(interval)
    edges64 = torch.from_numpy(np.append(grid, [1.0, 2.0, 3.0]))
    near = torch.from_numpy(grid).to(dtype)  # the grid's own values and their neighbours: the hard cases
    scores = torch.cat(
        [
            near,
            torch.nextafter(near, torch.tensor(2.0, dtype=dtype)),
            torch.nextafter(near, torch.tensor(-1.0, dtype=dtype)).clamp_min(0),
            torch.rand(2000, dtype=dtype),
            torch.tensor([0.0, 1.0], dtype=dtype),
        ]
    )
    want = (torch.bucketize(scores.double(), edges64, right=True) - 1).clamp(0, len(edges64) - 2)
    got = _bins(scores, _edges(grid, dtype), float(grid[1]) if len(grid) > 1 else 1.0)
    assert torch.equal(got, want)


def naive_pxap_hist(
    maps: Tensor, labels: Tensor, masks: Tensor, interval: float, ignore: int | None
) -> Tensor:
    """The histograms as before: float64 scores, ``bucketize``, a boolean mask of the counted pixels."""
    grid = threshold_grid(interval)
    edges = torch.from_numpy(np.append(grid, [1.0, 2.0, 3.0]))
    hist = torch.zeros(2, len(edges) - 1, dtype=torch.long)
    for image, cls in labels.nonzero().tolist():
        score = hiercam.normalize_maps(maps[image, cls], "minmax").double()
        where = (torch.bucketize(score, edges, right=True) - 1).clamp(0, len(edges) - 2)
        foreground = masks[image] == cls + 1
        counted = foreground | (masks[image] != ignore) if ignore is not None else torch.ones_like(foreground)
        hist[0] += torch.bincount(where[foreground], minlength=len(edges) - 1)
        hist[1] += torch.bincount(where[~foreground & counted], minlength=len(edges) - 1)
    return hist


@pytest.mark.parametrize("ignore", [255, 2, None])
def test_pxap_histograms_match_the_masked_loop(ignore: int | None) -> None:
    generator = torch.Generator().manual_seed(3)
    maps = (torch.rand(3, 4, 9, 9, generator=generator) * 4).round()  # ties on the grid's edges
    maps[1, 2] = 0.0  # a constant map: every score 0
    labels = torch.tensor([[1, 0, 1, 1], [0, 1, 1, 0], [1, 1, 1, 1]])
    masks = torch.randint(0, 5, (3, 9, 9), generator=generator)
    if ignore is not None:
        masks[:, 0] = ignore
    metric = PxAP(interval=0.05, ignore_index=ignore)
    metric.update(maps, labels, masks=masks)
    assert torch.equal(metric.hist, naive_pxap_hist(maps, labels, masks, 0.05, ignore))
    assert torch.equal(metric.compute(), pxap(maps, labels, masks=masks, interval=0.05, ignore_index=ignore))


# --------------------------------------------------------------------------------------------- host reads
def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 3, 3, padding=1), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()
    ).eval()


@pytest.mark.parametrize("name", ["PxAP", "DeletionInsertion", "ConfidenceChange"])
def test_update_reads_only_the_number_of_trials_with_the_checks_off(name: str) -> None:
    # Counted with a TorchFunctionMode (what would wait for a GPU): the one ``nonzero`` of the labels that
    # lists the trials (their number sizes the work); no value check, no boolean mask, no copy to the host.
    maps, labels = torch.rand(2, 3, 8, 8), torch.tensor([[1, 0, 1], [1, 1, 1]])
    masks, images = torch.randint(0, 4, (2, 8, 8)), torch.rand(2, 3, 8, 8)
    model = tiny_model()
    calls = {
        "PxAP": lambda: PxAP().update(maps, labels, masks=masks),
        "DeletionInsertion": lambda: DeletionInsertion(model, steps=4).update(maps, labels, images=images),
        "ConfidenceChange": lambda: ConfidenceChange(model).update(maps, labels, images=images),
    }
    with HostReads() as checked:
        calls[name]()
    with hiercam.checks(False), HostReads() as reads:
        calls[name]()
    assert [event.name for event in reads.events] == ["nonzero"], [str(e) for e in reads.events]
    assert checked.count > reads.count  # the value checks were reads, and the switch skipped them
