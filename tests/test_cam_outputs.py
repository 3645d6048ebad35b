"""Any output and one class per image (issue 16, items 3 and 4).

Oracles: pytorch-grad-cam with its targets (``ClassifierOutputTarget`` per image,
``ClassifierOutputSoftmaxTarget``, ``SemanticSegmentationTarget`` on torchvision segmentation models wrapped
to return ``["out"]`` as its tutorial does), and hiercam's own all-class maps (one class per image must equal
the matching slice of the all-class call).
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
from cam_test_helpers import pearson
from torch import nn
from torchvision import models

import hiercam

pgc = pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam.utils import model_targets as peer_targets  # noqa: E402

PER_IMAGE = [3, 1, 4, 1]


def agree(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    live = ours.flatten(1).amax(dim=1) > 0
    assert int(live.sum()) * 2 >= len(live), "most maps are all zero: the comparison would prove little"
    try:
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)
    except AssertionError:
        assert pearson(ours, theirs) > 0.999


def images(count: int, size: int = 64) -> torch.Tensor:
    return torch.randn(count, 3, size, size, generator=torch.Generator().manual_seed(1))


def peer_maps(model: nn.Module, layer: nn.Module, x: torch.Tensor, targets: list) -> torch.Tensor:
    with pgc.GradCAM(model, target_layers=[layer]) as peer:
        return torch.from_numpy(peer(x, targets=targets))[:, None]


# ---------------------------------------------------------------------------------------- one class per image
@pytest.mark.parametrize(
    ("factory", "layer"),
    [
        (lambda: models.resnet18(num_classes=6), "layer4"),  # closed form after the first call
        (lambda: models.mobilenet_v3_small(num_classes=6), "features"),  # general path (Hardswish MLP)
    ],
    ids=["resnet18", "mobilenet_v3_small"],
)
def test_one_class_per_image_matches_pytorch_grad_cam(factory, layer: str) -> None:
    torch.manual_seed(0)
    model = factory().eval()
    x = images(4)
    cam = hiercam.GradCAM(model, layer)
    ours = cam(x, torch.tensor(PER_IMAGE), normalize="minmax")
    assert ours.shape == (4, 1, 64, 64)
    again = cam(x, torch.tensor(PER_IMAGE), normalize="minmax")  # the closed form where it was verified
    torch.testing.assert_close(again, ours, rtol=1e-5, atol=1e-5)
    theirs = peer_maps(
        model, model.get_submodule(layer), x, [peer_targets.ClassifierOutputTarget(k) for k in PER_IMAGE]
    )
    agree(ours, theirs)
    every = cam(x, normalize="minmax")
    torch.testing.assert_close(ours, every[torch.arange(4), PER_IMAGE][:, None], rtol=1e-5, atol=1e-5)


def test_closed_form_serves_one_class_per_image() -> None:
    torch.manual_seed(0)
    model = models.resnet18(num_classes=6).eval()
    x = images(4)
    cam = hiercam.GradCAM(model, "layer4")
    general = cam(x, torch.tensor(PER_IMAGE), normalize=None)
    assert "closed_form=verified" in repr(cam)
    closed = cam(x, torch.tensor(PER_IMAGE), normalize=None)
    torch.testing.assert_close(closed, general, rtol=1e-5, atol=1e-6 * float(general.abs().amax()))
    list_meaning = cam(x, [3, 1], normalize=None)  # a list keeps its meaning: the same classes everywhere
    assert list_meaning.shape == (4, 2, 64, 64)


# ---------------------------------------------------------------------------------------------- targets
def test_targets_equal_classes_and_softmax_matches_pytorch_grad_cam() -> None:
    torch.manual_seed(0)
    model = models.resnet18(num_classes=6).eval()
    x = images(4)
    cam = hiercam.GradCAM(model, "layer4")
    by_class = cam(x, torch.tensor(PER_IMAGE))
    by_target = cam(x, targets=[hiercam.ClassifierOutputTarget(k) for k in PER_IMAGE])
    torch.testing.assert_close(by_target, by_class, rtol=1e-5, atol=1e-5)
    same_for_all = cam(x, targets=hiercam.ClassifierOutputTarget(2))
    torch.testing.assert_close(same_for_all, cam(x, 2), rtol=1e-5, atol=1e-5)
    softmax = cam(
        x, targets=[hiercam.ClassifierOutputSoftmaxTarget(k) for k in PER_IMAGE], normalize="minmax"
    )
    theirs = peer_maps(
        model, model.layer4, x, [peer_targets.ClassifierOutputSoftmaxTarget(k) for k in PER_IMAGE]
    )
    agree(softmax, theirs)


class SegmentationOutputWrapper(nn.Module):
    """pytorch-grad-cam's tutorial wrapper: the segmentation model's ``["out"]``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)["out"]


SEGMENTATION = {
    # name: (factory, target layer, one class per image; classes whose random-init maps are not all zero)
    "fcn_resnet50": (
        lambda: models.segmentation.fcn_resnet50(
            weights=None, weights_backbone=None, num_classes=4, aux_loss=True
        ),
        "backbone.layer4",
        [0, 0],
    ),
    "deeplabv3_mobilenet_v3_large": (
        lambda: models.segmentation.deeplabv3_mobilenet_v3_large(
            weights=None, weights_backbone=None, num_classes=4
        ),
        "backbone.16",
        [1, 3],
    ),
}


@pytest.mark.parametrize("name", list(SEGMENTATION))
def test_segmentation_models_match_pytorch_grad_cam(name: str) -> None:
    torch.manual_seed(0)
    factory, layer, categories = SEGMENTATION[name]
    model = factory().eval()
    x = images(2)
    rng = np.random.default_rng(0)
    masks = [(rng.random((64, 64)) > 0.5).astype(np.float32) for _ in range(2)]
    ours = hiercam.GradCAM(model, layer, output="out")(
        x,
        targets=[hiercam.SemanticSegmentationTarget(k, m) for k, m in zip(categories, masks, strict=True)],
        normalize="minmax",
    )
    wrapped = SegmentationOutputWrapper(model)
    theirs = peer_maps(
        wrapped,
        wrapped.model.get_submodule(layer),
        x,
        [peer_targets.SemanticSegmentationTarget(k, m) for k, m in zip(categories, masks, strict=True)],
    )
    assert ours.shape == (2, 1, 64, 64)
    agree(ours, theirs)


class TupleNet(nn.Module):
    """Returns ``(logits, features)``, like many research models."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.conv(x).relu()
        return self.fc(features.mean(dim=(2, 3))), features


class DictSegNet(nn.Module):
    """A tiny segmentation model returning ``{"out": (B, K, H, W)}`` like torchvision's."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.head = nn.Conv2d(8, 3, 1)

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        logits = self.head(self.body(x).relu())
        return OrderedDict(out=nn.functional.interpolate(logits, size=x.shape[-2:], mode="bilinear"))


def test_output_selector_key_index_callable() -> None:
    torch.manual_seed(0)
    model = TupleNet().eval()
    x = images(2, 16)
    by_index = hiercam.GradCAM(model, "conv", output=0)(x)
    by_callable = hiercam.GradCAM(model, "conv", output=lambda out: out[0])(x)
    torch.testing.assert_close(by_callable, by_index)
    plain = nn.Sequential(model.conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), model.fc).eval()
    torch.testing.assert_close(by_index, hiercam.GradCAM(plain, "0")(x), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"`model` returned a tuple of 2 items; pass `output=`"):
        hiercam.GradCAM(model, "conv")(x)


def test_segmentation_by_hand_and_errors() -> None:
    torch.manual_seed(0)
    model = DictSegNet().eval()
    x = images(2, 16)
    mask = torch.zeros(16, 16)
    mask[4:12, 2:9] = 1
    ours = hiercam.GradCAM(model, "body", output="out")(
        x, targets=hiercam.SemanticSegmentationTarget(2, mask), normalize=None, size="feature"
    )
    # by hand: Grad-CAM of the score sum(out[:, 2] * mask)
    activation = model.body(x)
    logits = nn.functional.interpolate(model.head(activation.relu()), size=(16, 16), mode="bilinear")
    (grad,) = torch.autograd.grad((logits[:, 2] * mask).sum(), activation)
    expected = (grad.mean(dim=(2, 3), keepdim=True) * activation).sum(1, keepdim=True).relu()
    torch.testing.assert_close(ours, expected.detach(), rtol=1e-5, atol=1e-6)
    with pytest.raises(
        ValueError, match=r"`output` key 'logits' is not in the output of `model` \(its keys: 'out'\)"
    ):
        hiercam.GradCAM(model, "body", output="logits")(x)
    with pytest.raises(ValueError, match=r"`model` must return logits of shape \(B, K\).*pass `targets`"):
        hiercam.GradCAM(model, "body", output="out")(x, 1)


def count_hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_hook_hygiene_with_outputs_and_targets() -> None:
    torch.manual_seed(0)
    model = DictSegNet().train()
    model.head.weight.requires_grad_(False)
    flags = [p.requires_grad for p in model.parameters()]
    x = images(2, 16)
    target = hiercam.SemanticSegmentationTarget(1, torch.ones(16, 16))
    cam = hiercam.GradCAM(model, output="out")  # the automatic layer choice with a dict output and targets
    first = cam(x, targets=target)
    for _ in range(200):
        cam(x, targets=target)
    with pytest.raises(ValueError, match="`targets` must hold one target per image"):
        cam(x, targets=[target])
    with pytest.raises(ValueError, match="SemanticSegmentationTarget.*does not match"):
        cam(x, targets=hiercam.SemanticSegmentationTarget(1, torch.ones(8, 8)))
    assert cam.target_layer == "head"  # the last map the scores depend on: name one for segmentation models
    assert count_hooks(model) == 0
    assert all(m.training for m in model.modules())
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    torch.testing.assert_close(cam(x, targets=target), first)


# ------------------------------------------------------------------- the gradient-free methods on these paths
def strided() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 5),
    ).eval()


@pytest.mark.parametrize(
    "make",
    [
        lambda m: hiercam.ScoreCAM(m, "1", batch_size=5),
        lambda m: hiercam.AblationCAM(m, "1", batch_size=5),
        lambda m: hiercam.EigenCAM(m, "1"),
    ],
    ids=["ScoreCAM", "AblationCAM", "EigenCAM"],
)
def test_gradient_free_methods_take_one_class_per_image_and_targets(make) -> None:
    model = strided()
    x = images(4, 16)
    cam = make(model)
    every = cam(x, normalize=None)
    per_image = cam(x, torch.tensor(PER_IMAGE), normalize=None)
    assert per_image.shape == (4, 1, 16, 16)
    torch.testing.assert_close(per_image, every[torch.arange(4), PER_IMAGE][:, None], rtol=1e-5, atol=1e-6)
    by_target = cam(x, targets=[hiercam.ClassifierOutputTarget(k) for k in PER_IMAGE], normalize=None)
    torch.testing.assert_close(by_target, per_image, rtol=1e-5, atol=1e-6)


def test_scorecam_explains_a_segmentation_target_like_a_naive_loop() -> None:
    torch.manual_seed(0)
    model = DictSegNet().eval()
    x = images(2, 16)
    mask = torch.zeros(16, 16)
    mask[2:10, 4:14] = 1
    target = hiercam.SemanticSegmentationTarget(1, mask)
    ours = hiercam.ScoreCAM(model, "body", output="out", batch_size=3)(
        x, targets=target, size="feature", normalize=None
    )
    activation = model.body(x).detach()
    expected = []
    for b in range(2):
        scores = []
        for c in range(activation.shape[1]):
            up = nn.functional.interpolate(
                activation[b : b + 1, c : c + 1], size=(16, 16), mode="bilinear", align_corners=False
            )
            up = (up - up.min()) / (up.max() - up.min() + 1e-8)
            with torch.no_grad():
                scores.append((model(x[b : b + 1] * up)["out"][0, 1] * mask).sum())
        weights = torch.softmax(torch.stack(scores), dim=0)
        expected.append((weights[:, None, None] * activation[b]).sum(0).relu())
    torch.testing.assert_close(ours[:, 0], torch.stack(expected), rtol=1e-5, atol=1e-6)


def test_multi_scale_aggregation_takes_one_class_per_image_and_targets() -> None:
    model = strided()
    x = images(2, 16)
    cam = hiercam.MultiScaleCAM(hiercam.GradCAM(model, "1"), scales=(1.0, 0.5))
    every = cam(x)
    per_image = cam(x, torch.tensor([3, 1]))
    torch.testing.assert_close(per_image, every[[0, 1], [3, 1]][:, None], rtol=1e-5, atol=1e-6)
    by_target = cam(x, targets=[hiercam.ClassifierOutputTarget(3), hiercam.ClassifierOutputTarget(1)])
    torch.testing.assert_close(by_target, per_image, rtol=1e-5, atol=1e-6)
