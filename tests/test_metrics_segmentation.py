from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchmetrics.classification import MulticlassJaccardIndex

from hiercam.metrics import MeanIoU, MeanIoUResult, maps_to_masks, mean_iou, mean_iou_from_masks

# ----------------------------------------------------------------------------------- oracles


def irn_labels(cams: np.ndarray, labels: np.ndarray, threshold: float) -> np.ndarray:
    """IRN's step/eval_cam.py per image: a background plane padded first, arg-max, mapped through keys."""
    out = []
    for maps, present in zip(cams, labels, strict=True):
        keys = np.nonzero(present)[0]
        chosen = maps[keys]
        peaks = chosen.reshape(len(keys), -1).max(axis=1) if len(keys) else np.zeros(0)
        normed = (
            np.stack([m / p if p > 0 else np.zeros_like(m) for m, p in zip(chosen, peaks, strict=True)])
            if len(keys)
            else np.zeros((0, *maps.shape[1:]))
        )
        padded = np.concatenate([np.full((1, *maps.shape[1:]), threshold), normed])
        keys = np.concatenate([[0], keys + 1])
        out.append(keys[np.argmax(padded, axis=0)])
    return np.stack(out)


def naive_pixel_labels(cams: np.ndarray, labels: np.ndarray, threshold: float) -> np.ndarray:
    """A per-pixel loop: the best present class if its normalised score beats the threshold, else 0."""
    batch, num_classes, height, width = cams.shape
    peaks = cams.max(axis=(2, 3))
    out = np.zeros((batch, height, width), dtype=np.int64)
    for b in range(batch):
        for y in range(height):
            for x in range(width):
                best, label = threshold, 0
                for k in range(num_classes):
                    if labels[b, k] and peaks[b, k] > 0 and cams[b, k, y, x] / peaks[b, k] > best:
                        best, label = cams[b, k, y, x] / peaks[b, k], k + 1
                out[b, y, x] = label
    return out


def naive_iou(pred: np.ndarray, target: np.ndarray, num_classes: int, ignore: int | None) -> np.ndarray:
    """Per-class IoU by counting pixel by pixel; NaN for classes in neither map."""
    tp = np.zeros(num_classes)
    fp = np.zeros(num_classes)
    fn = np.zeros(num_classes)
    for p, t in zip(pred.ravel().tolist(), target.ravel().tolist(), strict=True):
        if ignore is not None and t == ignore:
            continue
        if p == t:
            tp[t] += 1
        else:
            fp[p] += 1
            fn[t] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = tp / (tp + fp + fn)
    if ignore is not None and 0 <= ignore < num_classes:
        iou[ignore] = np.nan
    return iou


def torchmetrics_miou(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore: int | None
) -> float:
    metric = MulticlassJaccardIndex(num_classes=num_classes, ignore_index=ignore, average="macro")
    return float(metric(pred, target))


def random_maps(
    rng: np.random.Generator, shape: tuple[int, ...], num_classes: int, ignore: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    pred = rng.integers(0, num_classes, size=shape)
    target = rng.integers(0, num_classes, size=shape)
    if ignore is not None:
        target[rng.random(shape) < 0.2] = ignore
    return torch.from_numpy(pred), torch.from_numpy(target)


# ---------------------------------------------------------------------------- maps_to_masks


@pytest.mark.parametrize("threshold", [0.15, 0.25, 0.5, 0.75])
def test_maps_to_masks_matches_irn_and_a_pixel_loop(threshold: float) -> None:
    generator = torch.Generator().manual_seed(1)
    # Values on a 1/4 grid: exact ties between classes and with thresholds 0.25 / 0.5 / 0.75 do occur.
    cams = torch.randint(0, 5, (4, 5, 6, 7), generator=generator).double() / 4
    cams[0, 1] = 0.0  # an all-zero map of a present class
    labels = torch.randint(0, 2, (4, 5), generator=generator)
    labels[0, 1] = 1
    labels[3] = 0  # an image without any class
    got = maps_to_masks(cams, labels, threshold)
    assert got.dtype == torch.long
    np.testing.assert_array_equal(got.numpy(), irn_labels(cams.numpy(), labels.numpy(), threshold))
    np.testing.assert_array_equal(got.numpy(), naive_pixel_labels(cams.numpy(), labels.numpy(), threshold))
    assert torch.count_nonzero(got[3]) == 0


def test_maps_to_masks_tie_rule() -> None:
    cams = torch.tensor([[[[1.0, 0.15, 0.6]], [[1.0, 0.1, 0.6]]]])  # (1, 2, 1, 3)
    got = maps_to_masks(cams, torch.tensor([[1, 1]]), threshold=0.15)
    # class tie -> the lower class; exactly at the threshold -> background
    assert got.tolist() == [[[1, 0, 1]]]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_maps_to_masks_dtypes_and_inputs_untouched(dtype: torch.dtype) -> None:
    cams = (torch.rand(2, 3, 8, 8) * 5).to(dtype).requires_grad_()
    labels = torch.tensor([[True, False, True], [False, True, False]])
    before = cams.detach().clone()
    got = maps_to_masks(cams, labels)
    expected = irn_labels(cams.detach().double().numpy(), labels.numpy(), 0.15)
    assert (got.numpy() != expected).mean() < 0.02  # rounding of low-precision dtypes near the threshold
    assert torch.equal(cams.detach(), before)
    assert cams.grad is None


def test_maps_to_masks_bad_input() -> None:
    cams = torch.rand(2, 3, 4, 4)
    labels = torch.ones(2, 3)
    with pytest.raises(ValueError, match=r"`threshold` must be between 0 and 1 \(exclusive\), got 1.5"):
        maps_to_masks(cams, labels, 1.5)
    with pytest.raises(ValueError, match=r"`threshold` must be between 0 and 1 \(exclusive\), got 0"):
        maps_to_masks(cams, labels, 0)
    with pytest.raises(ValueError, match=r"`labels` must have shape \(B, K\) = \(2, 3\) to match `maps`"):
        maps_to_masks(cams, torch.ones(2, 4))
    with pytest.raises(ValueError, match="`labels` must hold only 0/1 values"):
        maps_to_masks(cams, labels * 0.5)
    with pytest.raises(ValueError, match=r"`maps` must have shape \(B, K, H, W\), got \(3, 4, 4\)"):
        maps_to_masks(cams[0], labels)
    with pytest.raises(ValueError, match="`maps` must hold at least one image"):
        maps_to_masks(cams[:0], labels[:0])
    with pytest.raises(TypeError, match="`maps` must be a floating-point tensor"):
        maps_to_masks(cams.long(), labels)
    with pytest.raises(ValueError, match="`maps` must be finite"):
        maps_to_masks(cams.masked_fill(cams > 0.5, torch.nan), labels)


# ------------------------------------------------------------------------------- mean_iou_from_masks


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    num_classes=st.integers(2, 8),
    batch=st.integers(1, 3),
    size=st.integers(1, 9),
    ignore=st.sampled_from([255, None, 0, -1]),
)
def test_mean_iou_from_masks_matches_numpy_loop_and_torchmetrics(
    seed: int, num_classes: int, batch: int, size: int, ignore: int | None
) -> None:
    rng = np.random.default_rng(seed)
    pred, target = random_maps(rng, (batch, size, size + 1), num_classes, ignore)
    result = mean_iou_from_masks(pred, target, num_classes, ignore_index=ignore)
    expected = naive_iou(pred.numpy(), target.numpy(), num_classes, ignore)
    np.testing.assert_allclose(result.per_class.numpy(), expected, rtol=1e-12, equal_nan=True)
    if np.isnan(expected).all():
        assert math.isnan(float(result.miou))
    else:
        assert float(result.miou) == pytest.approx(np.nanmean(expected), rel=1e-12)
        # torchmetrics' macro average excludes classes absent from both maps and ignore_index: same figure
        assert float(result.miou) == pytest.approx(
            torchmetrics_miou(pred, target, num_classes, ignore), abs=1e-6
        )


def test_absent_classes_are_nan_and_excluded() -> None:
    pred = torch.tensor([[[1, 1], [0, 0]]])
    target = torch.tensor([[[1, 0], [0, 0]]])
    result = mean_iou_from_masks(pred, target, num_classes=4)
    assert isinstance(result, MeanIoUResult)
    assert result.per_class.dtype == torch.float64
    np.testing.assert_allclose(result.per_class.numpy(), [2 / 3, 1 / 2, np.nan, np.nan], equal_nan=True)
    assert float(result.miou) == pytest.approx((2 / 3 + 1 / 2) / 2)
    # torchmetrics' per-class figures agree where a class occurs (it writes 0 for absent classes)
    per_class = MulticlassJaccardIndex(num_classes=4, average="none")(pred, target)
    np.testing.assert_allclose(per_class[:2].numpy(), result.per_class[:2].numpy(), rtol=1e-6)


def test_dataset_level_not_mean_of_images() -> None:
    # image 1: class 1 perfect on 1 pixel; image 2: class 1 predicted on 3 pixels, true on 1
    pred = torch.tensor([[[1, 0, 0, 0]], [[1, 1, 1, 0]]])
    target = torch.tensor([[[1, 0, 0, 0]], [[1, 0, 0, 0]]])
    result = mean_iou_from_masks(pred, target, num_classes=2)
    assert float(result.per_class[1]) == pytest.approx(2 / 4)  # not (1 + 1/3) / 2


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int32, torch.int64])
def test_integer_dtypes_agree(dtype: torch.dtype) -> None:
    pred, target = random_maps(np.random.default_rng(0), (2, 5, 5), 21, 255)
    expected = mean_iou_from_masks(pred, target, 21)
    got = mean_iou_from_masks(pred.to(dtype), target.to(dtype), 21)
    torch.testing.assert_close(got.per_class, expected.per_class, equal_nan=True)


def test_mean_iou_from_masks_bad_input() -> None:
    pred = torch.zeros(2, 3, 3, dtype=torch.long)
    with pytest.raises(
        ValueError, match=r"`pred_masks` and `masks` must have the same shape, got \(2, 3, 3\) and"
    ):
        mean_iou_from_masks(pred, pred[:, :2], 3)
    with pytest.raises(TypeError, match="`pred_masks` must be an integer label map, got dtype torch.float32"):
        mean_iou_from_masks(pred.float(), pred, 3)
    with pytest.raises(TypeError, match="`masks` must be an integer label map, got dtype torch.bool"):
        mean_iou_from_masks(pred, pred.bool(), 3)
    with pytest.raises(ValueError, match="`pred_masks` must hold at least one image"):
        mean_iou_from_masks(pred[:0], pred[:0], 3)
    with pytest.raises(ValueError, match=r"`pred_masks` must hold class labels in \[0, 2\], got 3"):
        mean_iou_from_masks(pred + 3, pred, 3)
    with pytest.raises(ValueError, match=r"`pred_masks` must hold class labels in \[0, 2\], got -1"):
        mean_iou_from_masks(pred - 1, pred, 3)
    with pytest.raises(
        ValueError, match=r"`masks` must hold class labels in \[0, 2\] or ignore_index=255, got 7"
    ):
        mean_iou_from_masks(pred, pred.index_fill(1, torch.tensor([0]), 7), 3)
    with pytest.raises(ValueError, match=r"or ignore_index=255, got 300"):
        mean_iou_from_masks(pred, pred + 300, 3)
    with pytest.raises(ValueError, match=r"or ignore_index=255, got -2"):
        mean_iou_from_masks(pred, pred - 2, 3)
    with pytest.raises(ValueError, match=r"`masks` must hold class labels in \[0, 2\], got 255"):
        mean_iou_from_masks(pred, pred + 255, 3, ignore_index=None)
    with pytest.raises(ValueError, match=r"or ignore_index=-1, got 4"):
        mean_iou_from_masks(pred, pred.index_fill(2, torch.tensor([1]), 4), 3, ignore_index=-1)
    with pytest.raises(TypeError, match="`num_classes` must be an int"):
        mean_iou_from_masks(pred, pred, 3.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"`pred_masks` must have shape \(B, H, W\), got \(3, 3\)"):
        mean_iou_from_masks(pred[0], pred[0], 3)


# ---------------------------------------------------------------------------------- mean_iou (maps)


def random_cams(
    generator: torch.Generator, batch: int, num_classes: int, size: int, ignore: int | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Maps on a 1/4 grid (ties and values exactly at thresholds occur), labels, masks with void pixels."""
    maps = torch.randint(0, 5, (batch, num_classes - 1, size, size), generator=generator).float() / 4
    labels = torch.randint(0, 2, (batch, num_classes - 1), generator=generator)
    masks = torch.randint(0, num_classes, (batch, size, size), generator=generator)
    if ignore is not None:
        masks[:, 0] = ignore
    return maps, labels, masks


@pytest.mark.parametrize("ignore", [255, 0, None])
def test_mean_iou_of_maps_is_masks_then_iou_and_torchmetrics(ignore: int | None) -> None:
    maps, labels, masks = random_cams(torch.Generator().manual_seed(4), 4, 6, 9, ignore)
    for threshold in (0.15, 0.25, 0.5):
        got = mean_iou(maps, labels, masks=masks, thresholds=threshold, ignore_index=ignore)
        pred_masks = maps_to_masks(maps, labels, threshold)
        expected = mean_iou_from_masks(pred_masks, masks, 6, ignore_index=ignore)
        assert got.miou.shape == ()
        torch.testing.assert_close(got.per_class, expected.per_class, equal_nan=True)
        torch.testing.assert_close(got.miou, expected.miou)
        assert float(got.miou) == pytest.approx(torchmetrics_miou(pred_masks, masks, 6, ignore), abs=1e-6)
        assert 0.0 <= float(got.miou) <= 1.0
    sweep = mean_iou(maps, labels, masks=masks, num_classes=6, thresholds=[0.5, 0.15], ignore_index=ignore)
    assert sweep.miou.shape == (2,)
    assert sweep.per_class.shape == (2, 6)
    assert float(sweep.miou[0]) == pytest.approx(
        float(mean_iou(maps, labels, masks=masks, thresholds=0.5, ignore_index=ignore).miou)
    )


def test_mean_iou_hand_computed() -> None:
    maps = torch.tensor([[[[0.9, 0.3]], [[0.0, 0.0]]]])  # class 0 peaks left; class 1 absent
    labels, masks = torch.tensor([[1, 0]]), torch.tensor([[[1, 0]]])
    # t = 0.5: prediction [1, 0] == truth: IoU 1 for background and class 0
    assert float(mean_iou(maps, labels, masks=masks, thresholds=0.5).miou) == 1.0
    # t = 0.1: prediction [1, 1]: class 0 IoU 1/2, background IoU 0 -> mean 1/4
    result = mean_iou(maps, labels, masks=masks, thresholds=0.1)
    np.testing.assert_allclose(result.per_class.numpy(), [0.0, 0.5, np.nan], equal_nan=True)
    assert float(result.miou) == pytest.approx(0.25)


# ----------------------------------------------------------------------------------- MeanIoU


@pytest.mark.parametrize("ignore", [255, 0, None])
def test_thresholds_mode_equals_one_threshold_at_a_time(ignore: int | None) -> None:
    generator = torch.Generator().manual_seed(2)
    # unsorted, a duplicate, values on the 1/4 grid of the maps
    thresholds = [0.5, 0.1, 0.25, 0.25, 0.75, 0.15]
    sweep = MeanIoU(num_classes=6, ignore_index=ignore, thresholds=thresholds)
    singles = [MeanIoU(num_classes=6, ignore_index=ignore, thresholds=t) for t in thresholds]
    confmats = [torch.zeros(6, 6, dtype=torch.long) for _ in thresholds]
    for step in range(4):
        maps, labels, masks = random_cams(generator, 3, 6, 9, ignore)
        if step == 3:
            labels[:] = 0  # a batch without any present class
        sweep.update(maps, labels, masks=masks)
        for row, (threshold, single) in enumerate(zip(thresholds, singles, strict=True)):
            single.update(maps, labels, masks=masks)
            pred = maps_to_masks(maps, labels, threshold)  # naive confusion matrix as the oracle
            keep = masks != ignore if ignore is not None else torch.ones_like(masks, dtype=torch.bool)
            for t, p in zip(masks[keep].tolist(), pred[keep].tolist(), strict=True):
                confmats[row][t, p] += 1
    got = sweep.compute()
    assert got.miou.shape == (6,)
    assert got.per_class.shape == (6, 6)
    assert sweep.confmat.shape == (6, 6, 6)
    for row, single in enumerate(singles):
        if ignore is not None and 0 <= ignore < 6:
            confmats[row][ignore] = 0
        assert torch.equal(sweep.confmat[row], confmats[row])
        assert torch.equal(sweep.confmat[row], single.confmat[0])
        expected = single.compute()
        assert expected.miou.shape == ()
        torch.testing.assert_close(got.per_class[row], expected.per_class, equal_nan=True)
        torch.testing.assert_close(got.miou[row], expected.miou)
    assert len(set(got.miou.tolist())) > 3  # the thresholds make a difference


def test_repr_and_to() -> None:
    metric = MeanIoU(21, thresholds=[0.1, 0.2])
    assert repr(metric) == "MeanIoU(num_classes=21, thresholds=(0.1, 0.2), ignore_index=255)"
    assert metric.to("cpu") is metric
