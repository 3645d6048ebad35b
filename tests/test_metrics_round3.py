"""Issue 26 (no silent wrong answer, round 3), the metrics part: ROAD's tie rule, preconditions, states
loaded with checks, non-finite values named, sizes bounded before allocating.

Oracles: hand-built removal masks and ROAD's own imputation for the tie rule; hand values for the
normalisation; the same metric on relabelled masks for a large ``ignore_index``; states made by hand.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import hiercam
from hiercam.maps import normalize_maps
from hiercam.metrics import (
    ROAD,
    ConfidenceChange,
    LocalizationError,
    MaxBoxAcc,
    MeanIoU,
    PxAP,
    confidence_change,
    deletion_insertion,
    max_box_acc,
    mean_iou,
    mean_iou_from_masks,
    noisy_linear_impute,
    pxap,
    road,
)
from hiercam.metrics.road import _removed


def pixel_model(x: torch.Tensor) -> torch.Tensor:
    """Two logits: the sum of the image, and its weighted sum (so each pixel's value counts)."""
    weights = torch.arange(x.shape[2] * x.shape[3], dtype=x.dtype).reshape(x.shape[2:])
    return torch.stack([x.sum((1, 2, 3)), (x * weights).sum((1, 2, 3))], dim=1)


# --------------------------------------------------------------------------------------------- item 3: ties
def test_a_constant_map_at_20_percent_removes_20_percent_first_and_last_in_raster_order() -> None:
    maps = torch.full((1, 10, 10), 0.5)
    morf, lerf = _removed(maps, 20, "morf"), _removed(maps, 20, "lerf")
    expected_morf = torch.zeros(100, dtype=torch.bool)
    expected_morf[:20] = True  # ties in raster order: the first 20 pixels are "most relevant"
    expected_lerf = torch.zeros(100, dtype=torch.bool)
    expected_lerf[80:] = True  # ... and the last 20 the least relevant
    assert torch.equal(morf.reshape(-1), expected_morf)
    assert torch.equal(lerf.reshape(-1), expected_lerf)


@pytest.mark.parametrize("percentage", [1, 20, 33.3, 50, 90])
def test_exactly_the_asked_share_is_removed_whatever_the_ties(percentage: float) -> None:
    maps = torch.randint(0, 3, (4, 7, 9)).float()  # three values: ties everywhere
    for order in ("morf", "lerf"):
        removed = _removed(maps, percentage, order)  # type: ignore[arg-type]
        expected = int(percentage / 100 * 63 + 0.5)
        assert removed.reshape(4, -1).sum(1).tolist() == [expected] * 4


def test_road_on_tied_maps_equals_the_model_on_the_hand_imputed_image() -> None:
    images = torch.rand(1, 1, 6, 5)
    maps = torch.zeros(1, 2, 6, 5)
    maps[0, 0, :3] = 1.0  # the top half is relevant (tied), the bottom half is not (tied)
    result = road(
        maps, torch.tensor([[1, 0]]), images=images, model=pixel_model, percentages=20, noise=0.0,
        score="logit", reduction="none",
    )  # fmt: skip
    morf_mask = torch.zeros(1, 30, dtype=torch.bool)
    morf_mask[0, :6] = True  # 20 % of 30 = 6: the first six of the relevant pixels
    lerf_mask = torch.zeros(1, 30, dtype=torch.bool)
    lerf_mask[0, 24:] = True  # the last six of the irrelevant pixels
    for mask, value in ((morf_mask, result.morf), (lerf_mask, result.lerf)):
        imputed = noisy_linear_impute(images, mask.reshape(1, 6, 5), noise=0.0)
        expected = pixel_model(imputed)[0, 0].double()
        torch.testing.assert_close(value[0], expected, rtol=1e-6, atol=1e-6)
    assert not torch.equal(result.morf, result.lerf)


def test_the_threshold_rule_of_pytorch_grad_cam_removes_everything_on_a_constant_map() -> None:
    # the flaw the tie rule avoids, shown on the peer (its percentile threshold keeps no tied pixel)
    from pytorch_grad_cam.metrics.road import ROADMostRelevantFirst
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    peer = ROADMostRelevantFirst(percentile=80)
    seen: list[torch.Tensor] = []
    peer.perturbation.imputer = lambda image, mask: (seen.append(mask), image)[1]  # type: ignore[assignment]

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 2))
    peer(
        torch.rand(1, 1, 4, 4), np.full((1, 4, 4), 0.5, dtype=np.float32), [ClassifierOutputTarget(0)], model
    )
    assert float(seen[0].sum()) == 0  # the peer's mask keeps 0 of the 16 pixels: all are removed
    assert int(_removed(torch.full((1, 4, 4), 0.5), 20, "morf").sum()) == 3  # here: round(3.2) = 3


# --------------------------------------------------------------------------------------------- item 4
def test_pxap_refuses_mask_values_that_are_neither_a_class_nor_ignored_as_mean_iou_does() -> None:
    maps, labels = torch.rand(1, 2, 3, 3), torch.tensor([[1, 1]])
    masks = torch.tensor([[[0, 1, 2], [7, 0, 0], [255, 1, 2]]])
    with pytest.raises(
        ValueError, match=r"`masks` must hold class labels in \[0, 2\] or ignore_index=255, got 7"
    ):
        pxap(maps, labels, masks=masks)
    with pytest.raises(
        ValueError, match=r"`masks` must hold class labels in \[0, 2\] or ignore_index=255, got 7"
    ):
        mean_iou(maps, labels, masks=masks)
    metric = PxAP()
    with pytest.raises(ValueError, match="got 7"):
        metric.update(maps, labels, masks=masks)
    assert int(metric.hist.sum()) == 0
    masks[0, 1, 0] = 255
    assert 0 <= float(pxap(maps, labels, masks=masks)) <= 1


def test_confidence_change_without_normalisation_refuses_maps_outside_the_unit_interval() -> None:
    maps, labels, images = torch.rand(1, 2, 4, 4) * 2, torch.tensor([[1, 1]]), torch.rand(1, 1, 4, 4)
    model = lambda x: x.sum((2, 3)).repeat(1, 2)  # noqa: E731
    with pytest.raises(ValueError, match=r"`maps` must hold values in \[0, 1\] with `normalize=None`"):
        confidence_change(maps, labels, images=images, model=model, normalize=None)
    with hiercam.checks(False):  # a value check: off with the switch
        confidence_change(maps, labels, images=images, model=model, normalize=None)
    confidence_change(maps / 2, labels, images=images, model=model, normalize=None)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_normalize_maps_brings_a_subnormal_peak_to_one(dtype: torch.dtype) -> None:
    tiny = torch.finfo(dtype).tiny
    maps = torch.tensor([[0.0, tiny / 16], [tiny / 64, 0.0]], dtype=dtype)  # subnormal values
    assert float(maps[0, 1]) > 0
    result = normalize_maps(maps, "max")
    assert result.dtype == dtype
    assert float(result.max()) == 1.0
    expected = maps.double() / maps.double().max()  # the oracle: float64
    torch.testing.assert_close(result.double(), expected, atol=1e-2, rtol=1e-2)
    assert float(normalize_maps(maps, "minmax").max()) == 1.0


# --------------------------------------------------------------------------------------------- item 5
def _road_state(percentages: list[float]) -> dict[str, torch.Tensor]:
    metric = ROAD(lambda x: x.mean((2, 3)), percentages=percentages, noise=0.0, score="logit")
    images = torch.rand(1, 1, 4, 4)
    metric.update(images, torch.tensor([[1]]), images=images)
    return metric.state_dict()


def test_a_state_round_trips_and_a_state_of_other_percentages_is_refused() -> None:
    state = _road_state([10, 20])
    same = ROAD(lambda x: x.mean((2, 3)), percentages=[10, 20], noise=0.0, score="logit")
    same.load_state_dict(state)
    assert int(same.count) == 1
    other = ROAD(lambda x: x.mean((2, 3)), percentages=[30, 40], noise=0.0, score="logit")
    with pytest.raises(ValueError, match=r"'_options'.*percentages=\[10.0, 20.0\]"):
        other.load_state_dict(state)
    assert int(other.count) == 0
    with pytest.raises(ValueError, match="score='logit'"):
        ROAD(lambda x: x.mean((2, 3)), percentages=[10, 20], noise=0.0).load_state_dict(state)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"count": torch.tensor(-3)}, r"state 'count' holds counts, which must be >= 0, got -3"),
        ({"count": torch.tensor(2.5, dtype=torch.float64)}, r"state 'count' must be an integer tensor"),
        ({"sums": torch.full((2, 2), float("nan"), dtype=torch.float64)}, r"state 'sums' must be finite"),
        ({"sums": torch.zeros(2, 3, dtype=torch.float64)}, r"state 'sums' must have shape \(2, 2\)"),
        ({"_options": torch.tensor([1, 2, 3], dtype=torch.uint8)}, r"state '_options' must be the options"),
    ],
)
def test_tampered_states_are_refused_naming_the_key(change: dict, match: str) -> None:
    state = {**_road_state([10, 20]), **change}
    metric = ROAD(lambda x: x.mean((2, 3)), percentages=[10, 20], noise=0.0, score="logit")
    with pytest.raises(ValueError, match=match):
        metric.load_state_dict(state)
    assert int(metric.count) == 0  # nothing loaded
    assert float(metric.sums.abs().sum()) == 0


def test_counts_that_give_impossible_figures_are_refused() -> None:
    # MaxBoxAccV2 = 3.0: 3 correct trials out of 1
    boxes = MaxBoxAcc(iou_thresholds=[0.5])
    counts = torch.zeros_like(boxes.counts)
    counts[:, :-1], counts[:, -1] = 3, 1
    with pytest.raises(ValueError, match="'counts' must count correct trials"):
        boxes.load_state_dict({"counts": counts})
    # localisation error 3.33: 10 errors out of 3 trials
    errors = LocalizationError(thresholds=0.15)
    with pytest.raises(ValueError, match=r"'counts' must hold \[errors, trials\]"):
        errors.load_state_dict({"counts": torch.tensor([[10, 3]])})
    # PxAP 83.8: a negative histogram (the figure needs non-negative counts)
    pixels = PxAP()
    hist = torch.zeros_like(pixels.hist)
    hist[0, 5], hist[1, 3] = 5, -100
    with pytest.raises(ValueError, match="'hist' holds counts, which must be >= 0"):
        pixels.load_state_dict({"hist": hist})
    # a negative confusion count
    confusion = MeanIoU(3)
    with pytest.raises(ValueError, match="'confmat' holds counts"):
        confusion.load_state_dict({"confmat": -torch.ones_like(confusion.confmat)})


# --------------------------------------------------------------------------------------------- item 6
def std_model(x: torch.Tensor) -> torch.Tensor:
    """Normalises each image by its spread: NaN on a constant (fully deleted) image."""
    flat = x.flatten(1)
    z = (flat - flat.mean(1, keepdim=True)) / flat.std(1, keepdim=True)
    return torch.stack([z[:, 0], z[:, -1]], dim=1)


def test_non_finite_baselines_and_model_outputs_are_named() -> None:
    maps, labels, images = torch.rand(1, 2, 4, 4), torch.tensor([[1, 0]]), torch.rand(1, 1, 4, 4)
    with pytest.raises(ValueError, match="`baseline` must be finite"):
        deletion_insertion(
            maps, labels, images=images, model=pixel_model, baseline=torch.full((1, 4, 4), torch.nan)
        )
    with pytest.raises(
        ValueError, match=r"`model` returned non-finite class scores .* on the perturbed images"
    ):
        deletion_insertion(maps, labels, images=images, model=std_model)
    inf_model = lambda x: pixel_model(x) * torch.inf  # noqa: E731
    with pytest.raises(
        ValueError, match=r"`model` returned non-finite class scores \(NaN or infinite, score='logit'\)"
    ):
        deletion_insertion(maps, labels, images=images, model=inf_model, score="logit")
    zero_maps = torch.zeros(1, 2, 4, 4)  # the masked image is all zero: std_model gives NaN
    with pytest.raises(ValueError, match="`model` returned non-finite"):
        confidence_change(zero_maps, labels, images=images, model=std_model)
    with pytest.raises(ValueError, match="`model` returned non-finite"):
        ConfidenceChange(std_model).update(zero_maps, labels, images=images)


@pytest.mark.parametrize("noise", [float("nan"), float("inf"), -1.0])
def test_imputation_refuses_a_non_finite_noise(noise: float) -> None:
    with pytest.raises(ValueError, match="`noise`"):
        noisy_linear_impute(torch.rand(1, 1, 3, 3), torch.zeros(1, 3, 3, dtype=torch.bool), noise=noise)
    with pytest.raises(ValueError, match="`noise`"):
        ROAD(pixel_model, noise=noise)


def test_imputation_refuses_nan_in_a_kept_pixel_and_an_image_with_nothing_kept() -> None:
    images = torch.rand(1, 1, 3, 3)
    images[0, 0, 0, 0] = torch.nan
    removed = torch.zeros(1, 3, 3, dtype=torch.bool)
    removed[0, 1, 1] = True
    with pytest.raises(ValueError, match="`images` must be finite"):
        noisy_linear_impute(images, removed, noise=0.0)
    with pytest.raises(ValueError, match="`removed` must keep at least one pixel"):
        noisy_linear_impute(torch.rand(1, 1, 3, 3), torch.ones(1, 3, 3, dtype=torch.bool))


def test_road_refuses_a_share_that_removes_every_pixel() -> None:
    arguments = dict(images=torch.rand(1, 1, 1, 1), model=lambda x: x.flatten(1), noise=0.0)
    with pytest.raises(ValueError, match=r"`percentages` value 50.0 removes all 1 pixels of the 1 x 1 maps"):
        road(torch.rand(1, 1, 1, 1), torch.tensor([[1]]), percentages=[50], **arguments)  # type: ignore[arg-type]
    small = road(torch.rand(1, 1, 1, 1), torch.tensor([[1]]), percentages=[10], score="logit", **arguments)  # type: ignore[arg-type]
    assert torch.equal(small.morf, arguments["images"].double().reshape(1))  # nothing removed: round(0.1) = 0


def test_minmax_normalisation_of_a_span_that_overflows() -> None:
    maps = torch.tensor([[-3e38, 3e38], [0.0, 1.5e38]])
    torch.testing.assert_close(normalize_maps(maps, "minmax"), torch.tensor([[0.0, 1.0], [0.5, 0.75]]))


# --------------------------------------------------------------------------------------------- item 7
@pytest.mark.parametrize("interval", [1e-9, 1e-5])
def test_an_interval_with_too_many_thresholds_is_refused_before_allocating(interval: float) -> None:
    maps, labels = torch.rand(1, 1, 4, 4), torch.tensor([[1]])
    with pytest.raises(ValueError, match=r"`interval` .* more than the 10000 allowed"):
        pxap(maps, labels, masks=torch.zeros(1, 4, 4, dtype=torch.long), interval=interval)
    with pytest.raises(ValueError, match=r"`interval` .* more than the 10000 allowed"):
        max_box_acc(maps, labels, boxes=[torch.tensor([[0, 0, 0, 2, 2]])], interval=interval)
    with pytest.raises(ValueError, match="`interval`"):
        MaxBoxAcc(interval=interval)
    assert len(PxAP(interval=1e-4).hist[0]) == 10_002  # the bound itself is accepted


def test_a_huge_ignore_index_is_masked_not_sized() -> None:
    torch.manual_seed(0)
    maps, labels = torch.rand(2, 2, 5, 5), torch.tensor([[1, 1], [1, 0]])
    masks = torch.randint(0, 3, (2, 5, 5))
    masks[0, 0] = 255
    huge = masks.clone()
    huge[masks == 255] = 10**9
    expected = mean_iou(maps, labels, masks=masks, thresholds=[0.2, 0.5])  # the oracle: ignore_index 255
    result = mean_iou(maps, labels, masks=huge, thresholds=[0.2, 0.5], ignore_index=10**9)
    torch.testing.assert_close(result.miou, expected.miou)
    predicted = torch.randint(0, 3, (2, 5, 5))
    torch.testing.assert_close(
        mean_iou_from_masks(predicted, huge, 3, ignore_index=10**9).miou,
        mean_iou_from_masks(predicted, masks, 3).miou,
    )
    huge[1, 1, 1] = 7
    with pytest.raises(ValueError, match="ignore_index=1000000000, got 7"):
        mean_iou(maps, labels, masks=huge, ignore_index=10**9)


def test_a_confusion_state_too_big_is_refused_naming_num_classes() -> None:
    with pytest.raises(ValueError, match=r"`num_classes` = 1000000 gives confusion matrices"):
        MeanIoU(num_classes=10**6)
    with pytest.raises(ValueError, match="`num_classes`"):
        mean_iou_from_masks(
            torch.zeros(1, 2, 2, dtype=torch.long), torch.zeros(1, 2, 2, dtype=torch.long), 10**6
        )
    with pytest.raises(ValueError, match="`num_classes`"):
        MeanIoU(num_classes=5000, thresholds=[0.1 * i for i in range(1, 10)])


# ------------------------------------------------------------------ item 10: obscure errors named


def _tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(4, 3),
    ).eval()


@pytest.mark.parametrize("metric", ["deletion_insertion", "confidence_change", "road"])
def test_float64_images_with_a_float32_model_name_both(metric: str) -> None:
    """torch's "Input type (double) and bias type (float)" becomes an error naming `images` and `model`."""
    import hiercam

    maps, labels = torch.rand(2, 3, 16, 16), torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    images = torch.rand(2, 3, 16, 16, dtype=torch.float64)
    with pytest.raises(
        ValueError, match=r"`images` are torch.float64 but `model`'s parameters are torch.float32"
    ):
        getattr(hiercam, metric)(maps, labels, images=images, model=_tiny_model())
    getattr(hiercam, metric)(maps, labels, images=images.float(), model=_tiny_model())  # the same, converted


def test_road_generator_must_be_a_generator() -> None:
    import hiercam

    maps, labels = torch.rand(1, 3, 8, 8), torch.tensor([[1.0, 0.0, 0.0]])
    images = torch.rand(1, 3, 8, 8)
    with pytest.raises(TypeError, match="`generator` must be a torch.Generator or None, got int"):
        hiercam.road(maps, labels, images=images, model=_tiny_model(), generator=42)
    with pytest.raises(TypeError, match="`generator` must be a torch.Generator"):
        hiercam.ROAD(_tiny_model(), generator=42)
    with pytest.raises(TypeError, match="`generator` must be a torch.Generator"):
        hiercam.noisy_linear_impute(images, torch.zeros(1, 8, 8, dtype=torch.bool), generator=42)
    first = hiercam.road(
        maps, labels, images=images, model=_tiny_model(), generator=torch.Generator().manual_seed(0)
    )
    again = hiercam.road(
        maps, labels, images=images, model=_tiny_model(), generator=torch.Generator().manual_seed(0)
    )
    assert torch.equal(first.morf, again.morf)
