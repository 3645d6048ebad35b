"""MultiScaleCAM: IRN's multi-scale + flip aggregation for every method.

Oracles: a naive loop (one image, one class, one scale, one flip at a time), IRN's ``step/make_cam.py``
written out for a CAM network, and pytorch-grad-cam's ``aug_smooth`` where the definitions agree (a model
whose maps scale with the input's intensity, so that ttach's intensity factors change nothing).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision import models

import hiercam
from hiercam.cam import BaseCAM

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_net(num_classes: int = 4, bias: bool = True) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, stride=2, padding=1, bias=bias),
        nn.ReLU(),
        nn.Conv2d(6, 8, 3, stride=2, padding=1, bias=bias),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, num_classes, bias=bias),
    ).eval()


METHODS: dict[str, Callable[[nn.Module], BaseCAM]] = {
    "GradCAM": lambda m: hiercam.GradCAM(m, "3"),
    "GradCAM general": lambda m: hiercam.GradCAM(m, "3", closed_form=False),
    "HiResCAM": lambda m: hiercam.HiResCAM(m, "3"),
    "CAM": lambda m: hiercam.CAM(m, "3"),
    "ScoreCAM": lambda m: hiercam.ScoreCAM(m, "3", batch_size=16),
    "AblationCAM": lambda m: hiercam.AblationCAM(m, "3", batch_size=16),
    "EigenCAM": lambda m: hiercam.EigenCAM(m, "3"),
    "GradCAM eigen_smooth": lambda m: hiercam.GradCAM(m, "3", eigen_smooth=True),
}


def naive_multiscale(
    make: Callable[[nn.Module], BaseCAM],
    model: nn.Module,
    images: torch.Tensor,
    classes: list[int],
    scales: tuple[float, ...],
    flip: bool,
) -> torch.Tensor:
    """One image, one class, one scale and one flip per call; the mean of the raw maps, max-normalised."""
    height, width = images.shape[-2:]
    out = torch.zeros(len(images), len(classes), height, width)
    cam = make(model)
    for b in range(len(images)):
        for i, k in enumerate(classes):
            for s in scales:
                size = (round(height * s), round(width * s))
                scaled = images[b : b + 1]
                if size != (height, width):
                    scaled = F.interpolate(scaled, size=size, mode="bilinear", align_corners=False)
                for mirrored in (False, True) if flip else (False,):
                    x = scaled.flip(-1) if mirrored else scaled
                    m = cam(x, k, size=(height, width), normalize=None)[0, 0]
                    out[b, i] += m.flip(-1) if mirrored else m
    out /= len(scales) * (2 if flip else 1)
    return hiercam.normalize_maps(out, "max")


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_equals_a_naive_loop(name: str) -> None:
    model = tiny_net()
    images = torch.randn(2, 3, 20, 20)
    scales = (1.0, 0.5, 1.5)
    ours = hiercam.MultiScaleCAM(METHODS[name](model), scales)(images, [0, 2])
    expected = naive_multiscale(METHODS[name], model, images, [0, 2], scales, flip=True)
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("flip", [False, True])
def test_class_masks_and_no_flip_equal_the_naive_loop(flip: bool) -> None:
    model = tiny_net()
    images = torch.randn(2, 3, 16, 16)
    mask = torch.tensor([[1, 0, 1, 0], [0, 0, 1, 1]])
    cam = hiercam.MultiScaleCAM(hiercam.GradCAM(model, "3"), (1.0, 2.0), flip=flip)
    ours = cam(images, mask)
    expected = naive_multiscale(
        lambda m: hiercam.GradCAM(m, "3"), model, images, [0, 1, 2, 3], (1.0, 2.0), flip
    )
    torch.testing.assert_close(ours, expected * mask[:, :, None, None], rtol=1e-4, atol=1e-5)


def irn_make_cam(model: nn.Module, image: torch.Tensor, scales: tuple[float, ...]) -> torch.Tensor:
    """IRN's step/make_cam.py for one image, written out for a torchvision ResNet used as IRN's CAM network.

    IRN's CAM network returns ``relu(conv1x1(features, W))`` of the image and its flip, added (the flip
    flipped back); make_cam resizes each scale's map to the output size (bilinear, align_corners=False),
    sums over scales and divides by the maximum + 1e-5.
    """
    trunk = nn.Sequential(*list(model.children())[:-2])
    weight = model.fc.weight[:, :, None, None]
    height, width = image.shape[-2:]
    outputs = []
    with torch.no_grad():
        for s in scales:
            x = image[None]
            size = (round(height * s), round(width * s))
            if size != (height, width):
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            pack = torch.cat([x, x.flip(-1)])
            cam = F.relu(F.conv2d(trunk(pack), weight))
            outputs.append(cam[0] + cam[1].flip(-1))
        strided = torch.sum(
            torch.stack(
                [
                    F.interpolate(o[None], (height, width), mode="bilinear", align_corners=False)[0]
                    for o in outputs
                ]
            ),
            0,
        )
    return strided / (F.adaptive_max_pool2d(strided, (1, 1)) + 1e-5)


def test_cam_with_irn_scales_equals_irn_make_cam() -> None:
    torch.manual_seed(0)
    model = models.resnet18(num_classes=3).eval()
    images = torch.randn(2, 3, 48, 48)
    ours = hiercam.MultiScaleCAM(hiercam.CAM(model, "layer4"))(images)  # IRN_SCALES, flip, max-normalised
    expected = torch.stack([irn_make_cam(model, image, hiercam.IRN_SCALES) for image in images])
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-3)  # IRN's + 1e-5 in the denominator


def test_matches_pytorch_grad_cam_aug_smooth_where_the_definitions_agree() -> None:
    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = tiny_net(bias=False)  # no bias: the maps scale with the images' intensity (ttach's x0.9, x1.1)
    images = torch.randn(2, 3, 24, 24)
    ours = hiercam.MultiScaleCAM(hiercam.GradCAM(model, "3"), (1.0,), pass_normalize="minmax")(
        images, [1, 2], normalize=None
    )
    with pgc.GradCAM(model, target_layers=[model[3]]) as peer:
        theirs = torch.stack(
            [
                torch.from_numpy(peer(images, targets=[ClassifierOutputTarget(k)] * 2, aug_smooth=True))
                for k in (1, 2)
            ],
            dim=1,
        )
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-4)


def test_one_call_per_scale_for_all_classes() -> None:
    model = tiny_net()
    images = torch.randn(2, 3, 16, 16)
    batches: list[tuple[int, ...]] = []
    handle = model.register_forward_pre_hook(lambda _m, inputs: batches.append(tuple(inputs[0].shape)))
    cam = hiercam.MultiScaleCAM(hiercam.GradCAM(model, "3"), (1.0, 0.5, 1.5, 2.0))
    try:
        cam(images)  # the first call verifies the closed form
        batches.clear()
        cam(images)
    finally:
        handle.remove()
    assert batches == [(4, 3, 16, 16), (4, 3, 8, 8), (4, 3, 24, 24), (4, 3, 32, 32)]


def test_size_options_and_logits() -> None:
    model = tiny_net()
    images = torch.randn(2, 3, 16, 16)
    cam = hiercam.MultiScaleCAM(hiercam.GradCAM(model, "3"), (1.0, 2.0))
    assert cam(images, size="feature").shape == (2, 4, 4, 4)
    assert cam(images, size=(5, 7)).shape == (2, 4, 5, 7)
    raw = cam(images, [1], normalize=None)
    assert raw.amax() > 0
    assert torch.allclose(cam(images, [1], normalize="max"), hiercam.normalize_maps(raw, "max"))
    assert cam.logits is not None
    torch.testing.assert_close(cam.logits, model(images).detach())
    assert repr(cam).startswith("MultiScaleCAM(GradCAM(target_layer='3'")
    with hiercam.MultiScaleCAM(hiercam.GradCAM(model, "3")) as scoped:
        scoped(images)
    with pytest.raises(RuntimeError, match="was removed"):
        scoped(images)


def test_hooks_modes_and_images_are_left_as_they_were() -> None:
    model = tiny_net().train()
    images = torch.randn(2, 3, 16, 16)
    before = images.clone()
    for make in METHODS.values():
        hiercam.MultiScaleCAM(make(model), (1.0, 0.5))(images)
    with pytest.raises(ValueError, match="must be class indices"):
        hiercam.MultiScaleCAM(hiercam.ScoreCAM(model, "3"))(images, 9)
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()) == 0
    assert all(m.training for m in model.modules())
    assert torch.equal(images, before)
