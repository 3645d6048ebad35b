"""Faithfulness metrics: deletion / insertion, confidence change, ROAD.

Oracles: hand-computed values on a toy model whose logit is a known function of the pixels, torchcam's
``DeletionInsertionMetric`` / ``ClassificationMetric`` and pytorch-grad-cam's ``CamMultImageConfidenceChange``
/ ``ROADMostRelevantFirst`` / ``ROADLeastRelevantFirst`` / ``NoisyLinearImputer`` on the same maps.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from hiercam.metrics import (
    ROAD,
    ConfidenceChange,
    DeletionInsertion,
    confidence_change,
    deletion_insertion,
    noisy_linear_impute,
    road,
)

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    # pytorch-grad-cam's np.float32(list of tensors) under NumPy 2: the peer's warning, not ours
    pytest.mark.filterwarnings("ignore:__array_wrap__ must accept context:DeprecationWarning"),
]


class RegionSum(nn.Module):
    """Logit of class k: the sum of channel 0 over region k (columns ``[2k, 2k + 2)`` of a 4 x 4 image)."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.stack([x[:, 0, :, 2 * k : 2 * k + 2].sum((1, 2)) for k in range(2)], dim=1)


def left_first_maps() -> Tensor:
    """(1, 2, 4, 4) maps ranking class 0's region first (in row-major order) and class 1's region first."""
    maps = torch.zeros(1, 2, 4, 4)
    maps[0, 0, :, :2] = torch.arange(8, 0, -1.0).reshape(4, 2)
    maps[0, 1, :, 2:] = 1.0
    return maps


def small_net(num_classes: int = 5) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(16, num_classes),
    ).eval()


# ------------------------------------------------------------------------------------- deletion / insertion
def test_deletion_insertion_by_hand() -> None:
    # class 0: 8 pixels of value 1 in its region, all ranked first; steps=4 removes 4 pixels a step
    # deletion curve 8, 4, 0, 0, 0 -> area 1/4 * (4 + 4 + 0 + 0 + 0) = 2; insertion 0, 4, 8, 8, 8 -> 6
    images = torch.ones(1, 1, 4, 4)
    result = deletion_insertion(
        left_first_maps(),
        torch.tensor([[1, 1]]),
        images=images,
        model=RegionSum(),
        steps=4,
        score="logit",
        reduction="none",
    )
    assert result.deletion.tolist() == [2.0, 2.0]
    assert result.insertion.tolist() == [6.0, 6.0]
    # a map pointing away from the region: nothing changes until the last half
    wrong = left_first_maps().flip(-1)
    bad = deletion_insertion(
        wrong, torch.tensor([[1, 0]]), images=images, model=RegionSum(), steps=4, score="logit"
    )
    # deletion 8, 8, 8, 4, 0 -> 1/4 * (4 + 8 + 8 + 4 + 0) = 6; insertion 0, 0, 0, 4, 8 -> 2
    assert (float(bad.deletion), float(bad.insertion)) == (6.0, 2.0)


def test_deletion_insertion_baselines_and_step_rounding() -> None:
    images = torch.full((1, 1, 4, 4), 2.0)
    maps = left_first_maps()
    labels = torch.tensor([[1, 0]])
    # a constant baseline of 1: deletion 16 -> 12 -> 8 -> 8 -> 8 (values fall from 2 to 1)
    result = deletion_insertion(
        maps, labels, images=images, model=RegionSum(), steps=4, score="logit", baseline=torch.tensor(1.0)
    )
    assert float(result.deletion) == pytest.approx(0.25 * (8 + 12 + 8 + 8 + 4))
    # steps=3 on 16 pixels: ceil(16 / 3) = 6 pixels a step, counts 0, 6, 12, 16 (fractions 0, 3/8, 3/4, 1)
    uneven = deletion_insertion(
        maps, labels, images=torch.ones(1, 1, 4, 4), model=RegionSum(), steps=3, score="logit"
    )
    expected = np.trapezoid([8, 2, 0, 0], [0, 6 / 16, 12 / 16, 1])
    assert float(uneven.deletion) == pytest.approx(expected)
    # the blur of a constant image is the constant times the kernel mass seen through the zero padding
    blurred = deletion_insertion(
        maps, labels, images=images, model=RegionSum(), steps=16, score="logit", baseline="blur"
    )
    assert 0 < float(blurred.insertion) < 16


class FixedCams:
    """A torchcam CAM extractor stand-in returning given maps, so that both libraries score the same maps."""

    def __init__(self, model: nn.Module, cams: Tensor) -> None:
        self.model = model
        self.cams = cams

    def __call__(
        self, class_idx: object, scores: object = None, normalized: bool = True, **kwargs: object
    ) -> list[Tensor]:
        return [self.cams]

    def fuse_cams(self, cams: list[Tensor]) -> Tensor:
        return cams[0]

    @contextmanager
    def _hooks_off(self) -> Iterator[None]:
        yield


@pytest.mark.parametrize("score", ["softmax", "logit"])
@pytest.mark.parametrize("steps", [7, 16])
def test_deletion_insertion_matches_torchcam(score: str, steps: int) -> None:
    from torchcam.metrics import DeletionInsertionMetric

    model = small_net()
    images = torch.randn(3, 3, 12, 12)
    cams = torch.rand(3, 12, 12)
    classes = [4, 0, 2]
    maps = torch.zeros(3, 5, 12, 12)
    maps[torch.arange(3), classes] = cams
    labels = torch.zeros(3, 5, dtype=torch.long)
    labels[torch.arange(3), classes] = 1
    baseline = torch.randn(3, 1, 1)
    logits_fn = partial(torch.softmax, dim=-1) if score == "softmax" else None
    peer = DeletionInsertionMetric(
        FixedCams(model, cams), logits_fn, steps=steps, baseline=baseline, batch_size=5
    )
    peer.update(images, classes)
    expected = peer.summary()
    ours = deletion_insertion(
        maps, labels, images=images, model=model, steps=steps, baseline=baseline, score=score, batch_size=5
    )  # type: ignore[arg-type]
    assert float(ours.deletion) == pytest.approx(expected["deletion_auc"], rel=1e-5, abs=1e-6)
    assert float(ours.insertion) == pytest.approx(expected["insertion_auc"], rel=1e-5, abs=1e-6)


def test_all_classes_of_a_batch_agree_with_one_class_at_a_time() -> None:
    model = small_net()
    images, maps = torch.randn(2, 3, 8, 8), torch.rand(2, 5, 8, 8)
    labels = torch.tensor([[1, 0, 1, 1, 0], [0, 1, 0, 0, 1]])
    together = deletion_insertion(
        maps, labels, images=images, model=model, steps=5, batch_size=7, reduction="none"
    )
    alone = []
    for b, k in labels.nonzero().tolist():
        one = torch.zeros_like(labels)
        one[b, k] = 1
        alone.append(deletion_insertion(maps, one, images=images, model=model, steps=5, batch_size=1))
    torch.testing.assert_close(together.deletion, torch.stack([r.deletion for r in alone]))
    torch.testing.assert_close(together.insertion, torch.stack([r.insertion for r in alone]))


def test_modes_of_the_model_are_restored() -> None:
    model = small_net().train()
    model[1].eval()  # a mixed state, as the caller left it
    images, maps = torch.randn(2, 3, 8, 8), torch.rand(2, 5, 8, 8)
    labels = torch.tensor([[1, 0, 0, 0, 0], [0, 1, 1, 0, 0]])
    metric = DeletionInsertion(model, steps=4)
    metric(maps, labels, images=images)
    deletion_insertion(maps, labels, images=images, model=model, steps=4)
    assert model.training
    assert not model[1].training
    assert model[0].training
    assert set(metric.state_dict()) == {"sums", "count", "_options"}  # the model is not in the state


# --------------------------------------------------------------------------------------------- confidence
def test_confidence_change_by_hand() -> None:
    images = torch.ones(1, 1, 4, 4)
    maps = torch.zeros(1, 2, 4, 4)
    maps[0, 0, :, :2] = 0.5  # class 0: half of its region's mass survives -> O = 4, Y = 8
    maps[0, 1, :, 2:] = 1.0  # class 1: all of it survives -> O = Y = 8 (no increase)
    result = confidence_change(
        maps,
        torch.tensor([[1, 1]]),
        images=images,
        model=RegionSum(),
        score="logit",
        normalize=None,
        reduction="none",
    )
    assert result.average_drop.tolist() == [0.5, 0.0]
    assert result.increase.tolist() == [0.0, 0.0]
    assert result.change.tolist() == [-4.0, 0.0]
    # min-max normalisation brings class 0's flat half-map to 1 / 0 -> nothing dropped
    scaled = confidence_change(maps, torch.tensor([[1, 0]]), images=images, model=RegionSum(), score="logit")
    assert float(scaled.average_drop) == 0.0


def test_confidence_change_matches_torchcam_and_pytorch_grad_cam() -> None:
    from pytorch_grad_cam.metrics.cam_mult_image import CamMultImageConfidenceChange, DropInConfidence
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget
    from torchcam.metrics import ClassificationMetric

    model = small_net()
    images, cams = torch.randn(4, 3, 10, 10), torch.rand(4, 10, 10)
    classes = [1, 3, 3, 0]
    maps = torch.zeros(4, 5, 10, 10)
    maps[torch.arange(4), classes] = cams
    labels = torch.zeros(4, 5, dtype=torch.long)
    labels[torch.arange(4), classes] = 1
    ours = confidence_change(maps, labels, images=images, model=model, normalize=None, reduction="none")

    peer = ClassificationMetric(FixedCams(model, cams), partial(torch.softmax, dim=-1))
    peer.update(images, classes)
    summary = peer.summary()
    assert float(ours.average_drop.mean()) == pytest.approx(summary["avg_drop"], rel=1e-5)
    assert float(ours.increase.mean()) == pytest.approx(summary["conf_increase"])

    targets = [ClassifierOutputSoftmaxTarget(k) for k in classes]
    change = CamMultImageConfidenceChange()(images, cams.numpy(), targets, model)
    np.testing.assert_allclose(ours.change.numpy(), change, atol=1e-6)
    drop = DropInConfidence()(images, cams.numpy(), targets, model)  # max(0, Y - O), not divided by Y
    before = model(images).softmax(1)[torch.arange(4), classes].detach().double()
    np.testing.assert_allclose((ours.average_drop * before).numpy(), drop, atol=1e-6)


def test_average_drop_of_a_class_whose_softmax_underflows_is_zero_like_torchcam() -> None:
    """Y = 0 exactly (huge logits, float32 softmax): nothing to drop, 0 (was 0 / 0 = NaN); torchcam agrees."""
    from torchcam.metrics import ClassificationMetric

    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[1000.0] * 16, [-1000.0] * 16]))
        model[1].bias.zero_()
    images, cams = torch.ones(1, 1, 4, 4), torch.rand(1, 4, 4)
    maps = torch.zeros(1, 2, 4, 4)
    maps[0, 1] = cams[0]
    assert float(model(images).detach().softmax(1)[0, 1]) == 0.0  # the premise: class 1's score underflows
    ours = confidence_change(maps, torch.tensor([[0, 1]]), images=images, model=model, normalize=None)
    peer = ClassificationMetric(FixedCams(model, cams), partial(torch.softmax, dim=-1))
    peer.update(images, [1])
    assert float(ours.average_drop) == 0.0
    assert float(ours.average_drop) == pytest.approx(peer.summary()["avg_drop"], abs=1e-12)


# --------------------------------------------------------------------------------------------- ROAD
def test_imputation_matches_pytorch_grad_cam() -> None:
    from pytorch_grad_cam.metrics.road import NoisyLinearImputer

    image = torch.randn(3, 9, 11)
    keep = (torch.rand(9, 11) > 0.4).float()
    expected = NoisyLinearImputer(noise=0.0)(image, keep)
    ours = noisy_linear_impute(image[None], keep[None] == 0, noise=0.0)[0]
    torch.testing.assert_close(ours, expected, atol=1e-6, rtol=1e-6)
    assert torch.equal(ours[:, keep.bool()], image[:, keep.bool()])


def test_imputation_fills_a_linear_ramp_exactly_and_noise_is_seeded() -> None:
    ramp = torch.arange(6.0).repeat(5, 1)[None, None]  # each pixel the mean of its neighbours
    removed = torch.zeros(1, 5, 6, dtype=torch.bool)
    removed[0, 1:4, 1:5] = True
    torch.testing.assert_close(noisy_linear_impute(ramp, removed, noise=0.0), ramp)
    first = noisy_linear_impute(ramp, removed, generator=torch.Generator().manual_seed(1))
    again = noisy_linear_impute(ramp, removed, generator=torch.Generator().manual_seed(1))
    assert torch.equal(first, again)
    assert not torch.equal(first, ramp)


@pytest.mark.parametrize("percentage", [10, 35, 70, 90])
def test_road_matches_pytorch_grad_cam(percentage: int) -> None:
    from pytorch_grad_cam.metrics.road import ROADLeastRelevantFirst, ROADMostRelevantFirst
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget
    from torchvision.models import resnet18

    torch.manual_seed(0)
    model = resnet18(weights=None, num_classes=5).eval()
    images, maps = torch.randn(2, 3, 24, 24), torch.rand(2, 5, 24, 24)
    labels = torch.tensor([[1, 0, 1, 0, 0], [0, 1, 0, 0, 1]])
    ours = road(
        maps, labels, images=images, model=model, percentages=[percentage], noise=0.0, reduction="none"
    )
    b, k = labels.nonzero(as_tuple=True)
    with torch.no_grad():
        before = model(images).softmax(1)[b, k].double()
    targets = [ClassifierOutputSoftmaxTarget(int(c)) for c in k]
    for peer_class, mine in ((ROADMostRelevantFirst, ours.morf), (ROADLeastRelevantFirst, ours.lerf)):
        peer = peer_class(percentile=100 - percentage)  # pytorch-grad-cam's percentile keeps 100 - p %
        peer.perturbation.imputer.noise = 0.0
        change = peer(images[b], maps[b, k].numpy(), targets, model)
        np.testing.assert_allclose((mine[:, 0] - before).numpy(), change, atol=1e-6)


def test_road_by_hand() -> None:
    # one row [0, 9, 2, 4], class 0 = the row sum; MoRF 25 % removes the 9 (imputed to 1), LeRF the 0 (to 9)
    model = lambda x: torch.stack([x[:, 0, 0].sum(1), -x[:, 0, 0].sum(1)], dim=1)  # noqa: E731
    images = torch.tensor([[[[0.0, 9.0, 2.0, 4.0]]]])
    maps = torch.tensor([[[[0.0, 1.0, 0.5, 0.2]], [[0.0, 0.0, 0.0, 0.0]]]])
    result = road(
        maps,
        torch.tensor([[1, 0]]),
        images=images,
        model=model,
        percentages=[25, 50],
        noise=0.0,
        score="logit",
    )
    assert result.morf.tolist()[0] == pytest.approx(7.0)
    assert result.lerf.tolist()[0] == pytest.approx(24.0)


# --------------------------------------------------------------------------------------------- bad input
GOOD = dict(maps=torch.rand(2, 2, 4, 4), labels=torch.tensor([[1, 0], [0, 1]]), images=torch.ones(2, 1, 4, 4))


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        ({"images": torch.ones(2, 1, 4, 5)}, ValueError, "must match `maps`"),
        ({"images": torch.ones(3, 1, 4, 4)}, ValueError, "must match `maps`"),
        ({"images": torch.ones(2, 4, 4)}, ValueError, "images"),
        ({"images": torch.ones(2, 1, 4, 4, dtype=torch.long)}, TypeError, "floating"),
        ({"images": torch.full((2, 1, 4, 4), float("nan"))}, ValueError, "finite"),
        ({"maps": torch.rand(2, 0, 4, 4), "labels": torch.zeros(2, 0)}, ValueError, "at least one"),
        ({"labels": torch.tensor([[1, 0, 0], [0, 1, 0]])}, ValueError, "labels"),
        ({"model": "resnet"}, TypeError, "callable"),
        ({"model": lambda x: (x.sum((2, 3)),)}, TypeError, r"return class scores"),
        ({"model": lambda x: x.sum((1, 2, 3))}, ValueError, r"\(B, K\)"),
        ({"model": lambda x: torch.zeros(len(x), 3)}, ValueError, r"\(B, K\)"),
        ({"score": "probability"}, ValueError, "score"),
        ({"batch_size": 0}, ValueError, "batch_size"),
        ({"reduction": "sum"}, ValueError, "reduction"),
    ],
)
@pytest.mark.parametrize("metric", ["deletion", "confidence", "road"])
def test_bad_input(metric: str, change: dict, error: type, match: str) -> None:
    model = lambda x: torch.stack([x.sum((1, 2, 3)), -x.sum((1, 2, 3))], dim=1)  # noqa: E731
    arguments = {**GOOD, "model": model, **change}
    function = {"deletion": deletion_insertion, "confidence": confidence_change, "road": road}[metric]
    with pytest.raises(error, match=match):
        function(arguments.pop("maps"), arguments.pop("labels"), **arguments)


@pytest.mark.parametrize(
    ("function", "change", "error", "match"),
    [
        (deletion_insertion, {"steps": 0}, ValueError, "steps"),
        (deletion_insertion, {"steps": 2.5}, TypeError, "steps"),
        (deletion_insertion, {"baseline": "noise"}, ValueError, "baseline"),
        (deletion_insertion, {"baseline": torch.zeros(3, 4, 4)}, ValueError, "broadcast"),
        (confidence_change, {"normalize": "l2"}, ValueError, "normalize"),
        (road, {"percentages": 0}, ValueError, r"between 0 and 100"),
        (road, {"percentages": [50, 100]}, ValueError, r"between 0 and 100"),
        (road, {"percentages": -5.0}, ValueError, r"between 0 and 100"),
        (road, {"percentages": []}, ValueError, "at least one"),
        (road, {"percentages": "50"}, TypeError, "percentages"),
        (road, {"noise": -0.1}, ValueError, "noise"),
    ],
)
def test_bad_options(function: object, change: dict, error: type, match: str) -> None:
    model = lambda x: torch.stack([x.sum((1, 2, 3)), -x.sum((1, 2, 3))], dim=1)  # noqa: E731
    arguments = {"images": GOOD["images"], "model": model, **change}
    with pytest.raises(error, match=match):
        function(GOOD["maps"], GOOD["labels"], **arguments)  # type: ignore[operator]


def test_bad_options_in_constructors_and_no_trials() -> None:
    model = lambda x: x.sum((2, 3))  # noqa: E731
    with pytest.raises(ValueError, match="steps"):
        DeletionInsertion(model, steps=0)
    with pytest.raises(ValueError, match="between 0 and 100"):
        ROAD(model, percentages=[100])
    with pytest.raises(TypeError, match="callable"):
        ConfidenceChange(None)  # type: ignore[arg-type]
    empty = deletion_insertion(
        torch.rand(1, 2, 4, 4), torch.zeros(1, 2), images=torch.ones(1, 2, 4, 4), model=model
    )
    assert torch.isnan(empty.deletion)
    assert torch.isnan(empty.insertion)
    assert confidence_change(
        torch.rand(1, 2, 4, 4),
        torch.zeros(1, 2),
        images=torch.ones(1, 2, 4, 4),
        model=model,
        reduction="none",
    ).change.shape == (0,)


def test_inputs_are_not_modified() -> None:
    model = small_net()
    images, maps = torch.randn(2, 3, 6, 6), torch.rand(2, 5, 6, 6)
    labels = torch.ones(2, 5)
    copies = images.clone(), maps.clone(), labels.clone()
    deletion_insertion(maps, labels, images=images, model=model, steps=3, baseline="blur")
    confidence_change(maps, labels, images=images, model=model)
    road(maps, labels, images=images, model=model, percentages=[50])
    for original, copy in zip((images, maps, labels), copies, strict=True):
        assert torch.equal(original, copy)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_on_the_gpu_equals_cpu() -> None:
    model = small_net()
    images, maps = torch.randn(2, 3, 8, 8), torch.rand(2, 5, 8, 8)
    labels = torch.tensor([[1, 0, 1, 0, 0], [0, 1, 0, 0, 1]])
    cpu = deletion_insertion(maps, labels, images=images, model=model, steps=4)
    gpu = deletion_insertion(maps.cuda(), labels.cuda(), images=images.cuda(), model=model.cuda(), steps=4)
    torch.testing.assert_close(gpu.deletion, cpu.deletion, atol=1e-5, rtol=1e-5)
    road_cpu = road(maps, labels, images=images, model=model.cpu(), percentages=[50], noise=0.0)
    road_gpu = road(
        maps.cuda(), labels.cuda(), images=images.cuda(), model=model.cuda(), percentages=[50], noise=0.0
    )
    torch.testing.assert_close(road_gpu.morf, road_cpu.morf, atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------------------------- a group
def test_metric_group_feeds_every_metric_what_it_reads() -> None:
    from hiercam.metrics import (
        LocalizationError,
        MaxBoxAcc,
        MeanIoU,
        MetricGroup,
        PxAP,
        max_box_acc,
        mean_iou,
    )

    model = small_net()
    images, maps = torch.randn(2, 3, 8, 8), torch.rand(2, 5, 8, 8)
    labels = torch.tensor([[1, 0, 1, 0, 0], [0, 1, 0, 0, 1]])
    masks = torch.randint(0, 6, (2, 8, 8))
    boxes = [
        torch.tensor([[0, 1, 1, 6, 6], [2, 0, 2, 4, 8]]),
        torch.tensor([[1, 2, 2, 8, 8], [4, 0, 0, 3, 3]]),
    ]
    group = MetricGroup(
        {
            "deletion": DeletionInsertion(model, steps=4),
            "miou": MeanIoU(num_classes=6),
            "loc": LocalizationError(),
            "boxacc": MaxBoxAcc(),
            "pxap": PxAP(),
        }
    )
    with pytest.raises(ValueError, match="needs `boxes=`"):
        group.update(maps, labels, images=images, masks=masks)
    assert int(group["pxap"].hist.sum()) == 0  # refused before any metric was updated
    group.update(maps, labels, images=images, masks=masks, boxes=boxes)
    figures = group.compute()
    expected = deletion_insertion(maps, labels, images=images, model=model, steps=4)
    assert figures["deletion.deletion"] == pytest.approx(float(expected.deletion))
    assert figures["miou.miou"] == pytest.approx(
        float(mean_iou(maps, labels, masks=masks, num_classes=6).miou)
    )
    assert figures["boxacc.per_iou"] == pytest.approx(max_box_acc(maps, labels, boxes=boxes).per_iou.tolist())
    assert isinstance(figures["pxap"], float)
    group.reset()
    assert np.isnan(group.compute()["loc"])
    with pytest.raises(TypeError, match="hiercam Metric"):
        MetricGroup({"x": nn.Linear(2, 2)})  # type: ignore[dict-item]


def test_models_in_train_mode_are_scored_in_eval_mode_and_two_branch_outputs_are_read() -> None:
    from hiercam.models import TwoBranchOutput

    model = small_net()
    images, maps = torch.randn(2, 3, 8, 8), torch.rand(2, 5, 8, 8)
    labels = torch.tensor([[1, 0, 1, 0, 0], [0, 1, 0, 0, 1]])
    expected = confidence_change(maps, labels, images=images, model=model, reduction="none")
    trained = confidence_change(maps, labels, images=images, model=model.train(), reduction="none")
    torch.testing.assert_close(trained.change, expected.change)  # BatchNorm used its running statistics
    assert model.training

    def two_branch(x: Tensor) -> TwoBranchOutput:
        logits = model(x)
        return TwoBranchOutput(torch.stack([logits, logits]), (x, x), logits)

    model.eval()
    wrapped = confidence_change(maps, labels, images=images, model=two_branch, reduction="none")
    torch.testing.assert_close(wrapped.change, expected.change)


@pytest.mark.parametrize(
    ("removed", "noise", "error", "match"),
    [
        (torch.zeros(1, 4, 4), 0.0, TypeError, "boolean"),
        (torch.zeros(1, 4, 5, dtype=torch.bool), 0.0, ValueError, "removed"),
        (torch.zeros(4, 4, dtype=torch.bool), 0.0, ValueError, "removed"),
        (torch.zeros(1, 4, 4, dtype=torch.bool), -1.0, ValueError, "noise"),
    ],
)
def test_imputation_bad_input(removed: Tensor, noise: float, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        noisy_linear_impute(torch.rand(1, 3, 4, 4), removed, noise=noise)
