"""The switch of the value checks (``hiercam.set_checks``, ``hiercam.checks``, ``HIERCAM_CHECKS``).

Value checks read tensor values (finite, 0/1, in [0, 1]) and so cost a host synchronisation on a GPU; with
the switch off they are skipped, while type and shape checks still run. The counting tests count the reads
of tensor values into Python (``bool``, ``int``, ``float``, ``item``, ``tolist``...) and the other operations
that synchronise on a GPU with ``hiercam._host_reads.HostReads`` (a ``TorchFunctionMode``).
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import hiercam
from hiercam import (
    ClassHierarchy,
    GradCAM,
    GradCAMPlusPlus,
    LayerCAM,
    MeanIoU,
    MultiScaleCAM,
    ScoreCAM,
    SmallConvNet,
    TwoBranchLoss,
    TwoBranchNet,
    TwoBranchOutput,
    average_precision,
    class_distances,
    fit,
    fuse,
    mean_iou,
    normalize_maps,
    orthogonal_loss,
)
from hiercam._host_reads import HostReads, host_reads

NAN = float("nan")


@pytest.fixture(autouse=True)
def checks_on() -> Iterator[None]:
    """Every test starts with the checks on and leaves them as it found them."""
    previous = hiercam.checks_enabled()
    hiercam.set_checks(True)
    yield
    hiercam.set_checks(previous)


def two_branch_output(batch: int = 4, classes: int = 3, *, negative: bool = False) -> TwoBranchOutput:
    torch.manual_seed(0)
    logits = torch.randn(2, batch, classes)
    features = (torch.randn(batch, 8, 2, 2), torch.randn(batch, 8, 2, 2))
    if not negative:
        features = (features[0].abs(), features[1].abs())
    return TwoBranchOutput(logits, features, logits.mean(0))


def iou_inputs(*, nan: bool = False, labels_value: int = 1) -> tuple[Tensor, Tensor, Tensor]:
    torch.manual_seed(0)
    maps = torch.rand(2, 3, 8, 8)
    if nan:
        maps[0, 1, 2, 2] = NAN
    labels = torch.tensor([[1, 0, labels_value], [0, 1, 1]])
    masks = torch.randint(0, 4, (2, 8, 8))
    return maps, labels, masks


def tiny_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)
    ).eval()


# --------------------------------------------------------------------------------------------- the switch
def test_default_is_on_and_set_checks_switches() -> None:
    assert hiercam.checks_enabled() is True
    hiercam.set_checks(False)
    assert hiercam.checks_enabled() is False
    hiercam.set_checks(True)
    assert hiercam.checks_enabled() is True


@pytest.mark.parametrize("bad", [0, 1, "off", None, torch.tensor(True)])
def test_the_switch_takes_only_bools(bad: object) -> None:
    with pytest.raises(TypeError, match="`enabled` must be a bool"):
        hiercam.set_checks(bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="`enabled` must be a bool"):
        hiercam.checks(bad)  # type: ignore[arg-type]  # refused when called, before any `with`
    assert hiercam.checks_enabled() is True


def test_context_manager_restores_the_previous_state_even_on_error() -> None:
    with hiercam.checks(False):
        assert not hiercam.checks_enabled()
        with hiercam.checks(True):
            assert hiercam.checks_enabled()
        assert not hiercam.checks_enabled()
    assert hiercam.checks_enabled()

    with pytest.raises(RuntimeError, match="boom"), hiercam.checks(False):
        raise RuntimeError("boom")
    assert hiercam.checks_enabled()

    hiercam.set_checks(False)
    with pytest.raises(ValueError, match="must be finite"), hiercam.checks(True):
        normalize_maps(torch.full((2, 2), NAN))
    assert not hiercam.checks_enabled()  # back to the state before the block, not to the default


def run_python(code: str, value: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "HIERCAM_CHECKS"}
    if value is not None:
        env["HIERCAM_CHECKS"] = value
    return subprocess.run(
        [sys.executable, "-W", "error::RuntimeWarning", "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


SCRIPT = """
import torch, hiercam
print(hiercam.checks_enabled())
try:
    hiercam.normalize_maps(torch.full((2, 2), float("nan")))
    print("accepted")
except ValueError:
    print("refused")
"""


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, "True refused"),
        ("1", "True refused"),
        ("on", "True refused"),
        ("0", "False accepted"),
        ("false", "False accepted"),
        (" OFF ", "False accepted"),
        ("no", "False accepted"),
    ],
)
def test_environment_variable_is_read_at_import(value: str | None, expected: str) -> None:
    result = run_python(SCRIPT, value)
    assert result.returncode == 0, result.stderr
    assert " ".join(result.stdout.split()) == expected


def test_unknown_environment_value_warns_and_keeps_checks_on() -> None:
    result = run_python(SCRIPT, "flase")
    assert result.returncode != 0  # the RuntimeWarning, turned into an error by -W error
    assert "HIERCAM_CHECKS='flase'" in result.stderr
    relaxed = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        env={**os.environ, "HIERCAM_CHECKS": "flase"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert " ".join(relaxed.stdout.split()) == "True refused"


# ------------------------------------------------------------- value checks off, shape checks still on
def _fit_once(labels: Tensor, images: Tensor) -> object:
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 3))
    return fit(model, [(images, labels)], epochs=1, progress=False, scheduler=None)


VALUE_CASES: dict[str, tuple[Callable[[], object], str]] = {
    "normalize_maps NaN": (lambda: normalize_maps(torch.full((1, 2, 2), NAN)), "must be finite"),
    "mean_iou NaN maps": (
        lambda: mean_iou(*iou_inputs(nan=True)[:2], masks=iou_inputs()[2]),
        "must be finite",
    ),
    "mean_iou labels 2": (
        lambda: mean_iou(*iou_inputs(labels_value=2)[:2], masks=iou_inputs()[2]),
        "0/1",
    ),
    "MeanIoU.update NaN": (
        lambda: MeanIoU(num_classes=4).update(*iou_inputs(nan=True)[:2], masks=iou_inputs()[2]),
        "must be finite",
    ),
    "TwoBranchLoss labels 2": (
        lambda: TwoBranchLoss(rectify=False)(two_branch_output(), torch.full((4, 3), 2.0)),
        "0/1",
    ),
    "GradCAM NaN images": (
        lambda: GradCAM(tiny_cnn())(torch.full((1, 3, 8, 8), NAN)),
        "finite",
    ),
    "fuse NaN": (lambda: fuse(torch.full((1, 2, 4, 4), NAN), [torch.rand(1, 2, 4, 4)]), "finite"),
    "average_precision labels 2": (
        lambda: average_precision(torch.rand(4, 3), torch.full((4, 3), 2)),
        "0/1",
    ),
    "remap_labels labels 2": (
        lambda: ClassHierarchy([[0, 0, 1]]).remap_labels(torch.full((2, 3), 2), 1),
        "0/1",
    ),
    "class_distances NaN": (lambda: class_distances(torch.full((3, 2), NAN)), "finite"),
    "fit labels 0.5": (lambda: _fit_once(torch.full((2, 3), 0.5), torch.rand(2, 3, 4, 4)), "0/1"),
    "fit NaN images": (
        lambda: _fit_once(torch.ones(2, 3), torch.full((2, 3, 4, 4), NAN)),
        "non-finite",
    ),
}


@pytest.mark.parametrize("case", list(VALUE_CASES))
def test_value_checks_refuse_when_on_and_not_when_off(case: str) -> None:
    call, message = VALUE_CASES[case]
    with pytest.raises(ValueError, match=message):
        call()
    with hiercam.checks(False):
        call()  # not refused: no check reads the values


def test_negative_feature_warning_is_a_value_check() -> None:
    output = two_branch_output(negative=True)
    with pytest.warns(UserWarning, match="negative values"):
        TwoBranchLoss()(output, torch.ones(4, 3))
    with pytest.warns(UserWarning, match="negative values"):
        orthogonal_loss(*output.features)
    with warnings.catch_warnings(), hiercam.checks(False):
        warnings.simplefilter("error")
        TwoBranchLoss()(output, torch.ones(4, 3))
        orthogonal_loss(*output.features)


SHAPE_CASES: dict[str, tuple[Callable[[], object], type[Exception], str]] = {
    "normalize_maps 1-D": (lambda: normalize_maps(torch.rand(4)), ValueError, r"\(\.\.\., H, W\)"),
    "normalize_maps integer": (
        lambda: normalize_maps(torch.ones(2, 2, dtype=torch.long)),
        TypeError,
        "float",
    ),
    "mean_iou labels shape": (
        lambda: mean_iou(iou_inputs()[0], torch.ones(2, 4), masks=iou_inputs()[2]),
        ValueError,
        "`labels` must have shape",
    ),
    "MeanIoU.update float masks": (
        lambda: MeanIoU(num_classes=4).update(*iou_inputs()[:2], masks=torch.rand(2, 8, 8)),
        TypeError,
        "integer label map",
    ),
    "mean_iou mask label out of range": (
        lambda: mean_iou(*iou_inputs()[:2], masks=torch.full((2, 8, 8), 7)),
        ValueError,
        "class labels in",
    ),
    "TwoBranchLoss labels shape": (
        lambda: TwoBranchLoss()(two_branch_output(), torch.ones(4, 2)),
        ValueError,
        "`labels` must have shape",
    ),
    "GradCAM 3-D images": (lambda: GradCAM(tiny_cnn())(torch.rand(3, 8, 8)), ValueError, "B, C, H, W"),
    "GradCAM class out of range": (
        lambda: GradCAM(tiny_cnn())(torch.rand(1, 3, 8, 8), classes=[5]),
        ValueError,
        "class indices",
    ),
    "fit non-tensor labels": (
        lambda: fit(nn.Linear(2, 3), [(torch.rand(2, 2), [[1, 0, 1]] * 2)], epochs=1, progress=False),
        TypeError,
        "labels must be a torch.Tensor",
    ),
}


@pytest.mark.parametrize("case", list(SHAPE_CASES))
def test_type_shape_and_index_checks_stay_on(case: str) -> None:
    call, error, message = SHAPE_CASES[case]
    for enabled in (True, False):
        with hiercam.checks(enabled), pytest.raises(error, match=message):
            call()


def test_validate_args_overrides_the_switch_for_one_call() -> None:
    nan_maps = torch.full((1, 2, 2), NAN)
    normalize_maps(nan_maps, validate_args=False)  # the caller checked: not refused, switch on
    with hiercam.checks(False), pytest.raises(ValueError, match="must be finite"):
        normalize_maps(nan_maps, validate_args=True)
    with pytest.raises(ValueError, match="must be finite"):
        hiercam.average_branch_maps(torch.stack([nan_maps, nan_maps]))
    hiercam.average_branch_maps(torch.stack([nan_maps, nan_maps]), validate_args=False)


# ----------------------------------------------------------------- counting: what is skipped, and once
def test_switched_off_functions_read_no_values() -> None:
    maps = torch.rand(2, 3, 8, 8)
    output, labels = two_branch_output(), torch.ones(4, 3)
    features = output.features
    assert host_reads(lambda: normalize_maps(maps)) == 1
    # labels 0/1, negative features, and the scale watch of the first training calls (one read for both terms)
    assert host_reads(lambda: TwoBranchLoss()(output, labels)) == 3
    assert host_reads(lambda: orthogonal_loss(*features)) == 1
    with hiercam.checks(False):
        assert host_reads(lambda: normalize_maps(maps)) == 0
        assert host_reads(lambda: TwoBranchLoss()(output, labels)) == 0
        assert host_reads(lambda: orthogonal_loss(*features)) == 0
        assert host_reads(lambda: fuse(maps, [maps])) == 0


def test_mean_iou_checks_its_inputs_once() -> None:
    maps, labels, masks = iou_inputs()
    on = host_reads(lambda: mean_iou(maps, labels, masks=masks))
    metric = MeanIoU(num_classes=4)
    update_on = host_reads(lambda: metric.update(maps, labels, masks=masks))
    with hiercam.checks(False):
        off = host_reads(lambda: mean_iou(maps, labels, masks=masks))
        update_off = host_reads(lambda: metric.update(maps, labels, masks=masks))
    assert on - off == 2  # one finiteness check of the maps, one 0/1 check of the labels
    assert update_on - update_off == 2
    assert off == update_off  # what is left is the counting itself (mask range, present classes)


def test_gradcam_checks_each_value_once_per_batch() -> None:
    images = torch.rand(2, 3, 8, 8)
    cam = GradCAM(tiny_cnn(), closed_form=False)
    cam(images)  # the first call also chooses the target layer
    on = host_reads(lambda: cam(images))
    with hiercam.checks(False):
        off = host_reads(lambda: cam(images))
    assert on - off == 3  # images, logits, maps

    net = TwoBranchNet(functools.partial(SmallConvNet, width=2, norm="group"), num_classes=3).eval()
    two = GradCAM(net, closed_form=False)
    two(images)
    on = host_reads(lambda: two(images))
    with hiercam.checks(False):
        off = host_reads(lambda: two(images))
    assert on - off == 5  # images, and the logits and maps of each branch: not the averaged maps again


def test_multiscale_cam_checks_the_images_once() -> None:
    images = torch.rand(2, 3, 16, 16)
    cam = hiercam.MultiScaleCAM(GradCAM(tiny_cnn(), closed_form=False), scales=(1.0, 0.5), flip=True)
    cam(images)
    on = host_reads(lambda: cam(images))
    with hiercam.checks(False):
        off = host_reads(lambda: cam(images))
    assert on - off == 5  # the images once, then per scale (images and mirror images in one call) the
    # logits and the maps: not the resized and mirrored images again


class CountingLoss(TwoBranchLoss):
    """A TwoBranchLoss that records the host reads of each call."""

    def __init__(self) -> None:
        super().__init__(weight=1e-3, rectify=False)
        self.reads: list[int] = []

    def forward(self, output: TwoBranchOutput, labels: Tensor) -> Any:
        reads = HostReads()
        with reads:
            result = super().forward(output, labels)
        self.reads.append(reads.count)
        return result


def test_two_branch_loss_inside_fit_does_not_check_the_labels_again() -> None:
    torch.manual_seed(0)
    net = TwoBranchNet(functools.partial(SmallConvNet, width=2, norm="group"), num_classes=3)
    loss = CountingLoss()
    batches = [(torch.rand(2, 3, 16, 16), torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]))] * 2
    fit(net, batches, epochs=1, loss=loss, val_loader=batches[:1], progress=False, scheduler=None)
    # two training steps and one validation batch: no label check, only the scale watch of the first
    # training calls (one read each; none in validation)
    assert loss.reads == [1, 1, 0]
    loss(net(batches[0][0]), batches[0][1].clone())
    assert loss.reads[-1] == 2  # outside fit: the loss checks its labels too


# ------------------------------------------------ the CAM engine's per-batch path: no host synchronisation
def closed_form_cnn() -> nn.Sequential:
    """Conv, ReLU, global average pool, linear: the closed form holds at the ReLU (layer "1")."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)
    ).eval()


def two_branch_net() -> nn.Module:
    torch.manual_seed(0)
    return TwoBranchNet(functools.partial(SmallConvNet, width=2, norm="group"), num_classes=3).eval()


ENGINE_CASES: dict[str, tuple[Callable[[], Any], dict[str, Any]]] = {
    "GradCAM general path": (lambda: GradCAM(closed_form_cnn(), "1", closed_form=False), {}),
    "GradCAM closed form": (lambda: GradCAM(closed_form_cnn(), "1"), {}),
    "GradCAM closed form, classes list": (lambda: GradCAM(closed_form_cnn(), "1"), {"classes": [2, 0]}),
    "GradCAM general path, classes run": (
        lambda: GradCAM(closed_form_cnn(), "1", closed_form=False),
        {"classes": [1, 2], "size": "feature", "normalize": "minmax"},
    ),
    "GradCAM chosen layer": (lambda: GradCAM(closed_form_cnn()), {}),
    "GradCAMPlusPlus general path": (lambda: GradCAMPlusPlus(closed_form_cnn(), "1", closed_form=False), {}),
    "GradCAMPlusPlus closed form": (lambda: GradCAMPlusPlus(closed_form_cnn(), "1"), {}),
    "LayerCAM general path": (lambda: LayerCAM(closed_form_cnn(), "0", closed_form=False), {}),
    "LayerCAM closed form": (lambda: LayerCAM(closed_form_cnn(), "1"), {}),
    "ScoreCAM": (lambda: ScoreCAM(closed_form_cnn(), "1", batch_size=4, progress=False), {}),
    "MultiScaleCAM GradCAM": (
        lambda: MultiScaleCAM(GradCAM(closed_form_cnn(), "1"), scales=(1.0, 0.5), flip=True),
        {},
    ),
    "GradCAM TwoBranchNet": (lambda: GradCAM(two_branch_net()), {}),
}


@pytest.mark.parametrize("case", list(ENGINE_CASES))
def test_cam_calls_after_the_first_do_not_synchronise_with_checks_off(case: str) -> None:
    """Counted per call, checks off: no read, no data-dependent shape, no list index (0 on a GPU too).

    The first call may synchronise: it chooses the layer and verifies the closed form.
    """
    build, options = ENGINE_CASES[case]
    cam = build()
    images = torch.rand(2, 3, 16, 16)
    with hiercam.checks(False):
        first = cam(images, **options)
        with HostReads() as reads:
            again = cam(images, **options)
    assert reads.count == 0, "\n".join(map(str, reads.events))
    torch.testing.assert_close(again, first)
    if "closed form" in case:
        assert "closed_form=verified" in repr(cam)


@pytest.mark.parametrize("method", [GradCAM, GradCAMPlusPlus, LayerCAM], ids=lambda m: m.__name__)
def test_closed_form_with_checks_off_equals_the_general_path(method: type[hiercam.BaseCAM]) -> None:
    model, images = closed_form_cnn(), torch.rand(3, 3, 16, 16)
    expected = method(model, "1", closed_form=False)(images, normalize=None)
    cam = method(model, "1")
    with hiercam.checks(False):
        cam(images)  # the general path, and the verification
        got = cam(images, normalize=None)
    assert "closed_form=verified" in repr(cam)
    torch.testing.assert_close(got, expected)


class ScaledLogits(nn.Module):
    """Logits times ``scale``: a change of the forward that the list of modules does not show."""

    def __init__(self) -> None:
        super().__init__()
        self.net = closed_form_cnn()
        self.scale = 1.0

    def forward(self, images: Tensor) -> Tensor:
        logits: Tensor = self.net(images) * self.scale
        return logits


def test_closed_form_whose_identity_breaks_gives_nan_maps_with_checks_off() -> None:
    """Checks on: the call falls back to the general path. Off: no host read decides, the maps are NaN."""
    model, images = ScaledLogits(), torch.rand(2, 3, 16, 16)
    cam = GradCAM(model, "net.1")
    cam(images)
    assert "closed_form=verified" in repr(cam)
    model.scale = 2.0  # the gradients double: W / (h * w) no longer gives them
    expected = GradCAM(model, "net.1", closed_form=False)(images, normalize=None)
    with hiercam.checks(False):
        poisoned = cam(images, normalize=None)
    assert torch.isnan(poisoned).all()
    torch.testing.assert_close(cam(images, normalize=None), expected)  # checks on: the general path
    assert "closed_form=general" in repr(cam)  # the scaled logits are not W @ mean(A) + b


def test_a_replaced_module_sends_the_closed_form_back_to_the_general_path_with_checks_off() -> None:
    model, images = closed_form_cnn(), torch.rand(2, 3, 16, 16)
    cam = GradCAM(model, "1")
    with hiercam.checks(False):
        cam(images)
        cam(images)
        assert "closed_form=verified" in repr(cam)
        model[4] = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 3))  # no longer GAP + linear
        got = cam(images, normalize=None)
    expected = GradCAM(model, "1", closed_form=False)(images, normalize=None)
    torch.testing.assert_close(got, expected)
    assert "closed_form=general" in repr(cam)


def test_host_reads_counts_each_kind_of_synchronisation() -> None:
    """The counter itself, on hand-made calls: what it counts and what it leaves alone."""
    x = torch.arange(6.0)
    counted: dict[str, Callable[[], object]] = {
        "read": lambda: x.sum().item(),
        "bool": lambda: bool(x.any()),
        "host copy": lambda: x.to("cpu"),
        "nonzero": lambda: x.nonzero(),
        "boolean mask": lambda: x[x > 2],
        "one-argument where": lambda: torch.where(x > 2),
        "unique": lambda: torch.unique(x),
        "repeat_interleave": lambda: x.repeat_interleave(torch.ones(6, dtype=torch.long)),
        "list index": lambda: x[[0, 2]],
    }
    free: dict[str, Callable[[], object]] = {
        "where": lambda: torch.where(x > 2, x, 0.0),
        "index tensor": lambda: x.index_select(0, torch.tensor([0, 2])),
        "slice": lambda: x[1:3],
        "repeat_interleave sized": lambda: x.repeat_interleave(
            torch.ones(6, dtype=torch.long), output_size=6
        ),
        "device of another tensor": lambda: x.to(x.device),
    }
    assert {name: host_reads(call) for name, call in counted.items()} == dict.fromkeys(counted, 1)
    assert {name: host_reads(call) for name, call in free.items()} == dict.fromkeys(free, 0)
