from __future__ import annotations

import gc
import os
from collections.abc import Callable
from functools import cache

import pytest
import torch
from torch import nn
from torchvision import models

import hiercam
from hiercam.cam import BaseCAM

METHODS = [
    hiercam.GradCAM,
    hiercam.GradCAMPlusPlus,
    hiercam.XGradCAM,
    hiercam.LayerCAM,
    hiercam.HiResCAM,
]


def tiny_net(num_classes: int = 5) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(0.5),
        nn.Linear(16, num_classes),
    )


def reference_gradcam(model: nn.Module, layer: nn.Module, images: torch.Tensor, k: int) -> torch.Tensor:
    """Grad-CAM written out naively: one forward and one backward for class k, maps at feature size."""
    store: dict[str, torch.Tensor] = {}
    handle = layer.register_forward_hook(lambda _m, _i, out: store.__setitem__("a", out))
    try:
        logits = model(images)
    finally:
        handle.remove()
    (grad,) = torch.autograd.grad(logits[:, k].sum(), store["a"])
    return torch.relu((grad.mean(dim=(2, 3), keepdim=True) * store["a"]).sum(1)).detach()


CLOSED_FORM_MODELS: dict[str, tuple[Callable[[], nn.Module], str]] = {
    "resnet18": (lambda: models.resnet18(num_classes=7), "layer4"),
    "mobilenet_v2": (lambda: models.mobilenet_v2(num_classes=7), "features"),
    "efficientnet_b0": (lambda: models.efficientnet_b0(num_classes=7), "features"),
    "tiny": (lambda: tiny_net(7), "4"),
}
GENERAL_MODELS: dict[str, tuple[Callable[[], nn.Module], str]] = {
    "mobilenet_v3_small": (lambda: models.mobilenet_v3_small(num_classes=7), "features"),
    "convnext_tiny": (lambda: models.convnext_tiny(num_classes=7), "features"),
    "tiny_earlier_layer": (lambda: tiny_net(7), "2"),
    # F.relu(features, inplace=True) between `features` and the pool
    "densenet121": (lambda: models.densenet121(num_classes=7), "features"),
}


@cache
def built(name: str) -> nn.Module:
    """Models shared by tests that do not modify them (built once: DenseNet and EfficientNet take a while)."""
    return {**CLOSED_FORM_MODELS, **GENERAL_MODELS}[name][0]().eval()


@pytest.mark.parametrize("name", list(CLOSED_FORM_MODELS))
@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.__name__)
def test_closed_form_is_detected_and_equals_the_general_path(name: str, method: type[BaseCAM]) -> None:
    layer = CLOSED_FORM_MODELS[name][1]
    model = built(name)
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    general = method(model, layer, closed_form=False)(images, normalize=None, size="feature")
    extractor = method(model, layer)
    first = extractor(images, normalize=None, size="feature")  # general path + verification
    assert "closed_form=verified" in repr(extractor)
    closed = extractor(images, normalize=None, size="feature")
    torch.testing.assert_close(first, general)
    torch.testing.assert_close(closed, general, rtol=1e-5, atol=1e-5 * general.abs().amax().item())


@pytest.mark.parametrize("name", list(GENERAL_MODELS))
def test_closed_form_is_rejected_where_it_does_not_hold(name: str) -> None:
    layer = GENERAL_MODELS[name][1]
    model = built(name)
    extractor = hiercam.GradCAM(model, layer)
    extractor(torch.randn(1, 3, 64, 64))
    assert "closed_form=general" in repr(extractor)
    with pytest.raises(ValueError, match="CAM needs the target layer to feed a global average pool"):
        hiercam.CAM(model, layer)(torch.randn(1, 3, 64, 64))


def test_closed_form_falls_back_when_the_head_changes() -> None:
    model = tiny_net(4).eval()
    images = torch.randn(2, 3, 32, 32)
    extractor = hiercam.GradCAM(model, "4")
    extractor(images)
    extractor(images)
    assert "verified" in repr(extractor)
    model[8] = nn.Sequential(nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 4))  # no longer GAP + linear
    got = extractor(images, normalize=None, size="feature")
    expected = torch.stack([reference_gradcam(model, model[4], images, k) for k in range(4)], 1)
    torch.testing.assert_close(got, expected)
    assert "general" in repr(extractor)


@pytest.mark.parametrize("closed_form", [True, False])
@pytest.mark.parametrize("name", ["mobilenet_v3_small", "tiny"])
def test_batched_classes_equal_a_per_class_loop(name: str, closed_form: bool) -> None:
    layer = {**CLOSED_FORM_MODELS, **GENERAL_MODELS}[name][1]
    model = built(name)
    images = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    extractor = hiercam.GradCAM(model, layer, closed_form=closed_form)
    extractor(images)
    batched = extractor(images, normalize=None, size="feature")
    loop = torch.cat([extractor(images, k, normalize=None, size="feature") for k in range(7)], dim=1)
    naive = torch.stack(
        [reference_gradcam(model, model.get_submodule(layer), images, k) for k in range(7)], 1
    )
    # equal up to the order of float32 sums (vmap and einsum block differently for 1 and K' classes), which
    # shows only where the channel sum cancels (MobileNetV3's random-init maps: ~1e-10 sums of larger terms)
    torch.testing.assert_close(batched, loop, rtol=1e-5, atol=1e-5 * loop.abs().amax().item())
    torch.testing.assert_close(batched, naive, rtol=1e-5, atol=1e-6 * naive.abs().amax().item())


def test_class_arguments() -> None:
    model = tiny_net(5).eval()
    images = torch.randn(3, 3, 32, 32)
    cam = hiercam.GradCAM(model, "4")
    every = cam(images)
    assert every.shape == (3, 5, 32, 32)
    torch.testing.assert_close(cam(images, 3), every[:, 3:4])
    torch.testing.assert_close(cam(images, [4, 0]), every[:, [4, 0]])
    torch.testing.assert_close(cam(images, torch.tensor(2)), every[:, 2:3])  # a 0-d tensor is an int
    # a (B,) tensor: one class per image
    per_image = cam(images, torch.tensor([2, 1, 4]))
    assert per_image.shape == (3, 1, 32, 32)
    torch.testing.assert_close(per_image, torch.stack([every[0, 2], every[1, 1], every[2, 4]])[:, None])
    mask = torch.tensor([[1, 0, 0, 1, 0], [0, 0, 0, 0, 0], [0, 1, 0, 1, 0]])
    masked = cam(images, mask)
    assert masked.shape == (3, 5, 32, 32)
    torch.testing.assert_close(masked, every * mask[:, :, None, None])
    torch.testing.assert_close(cam(images, mask.bool()), masked)


def test_sizes_and_normalisation() -> None:
    model = tiny_net(3).eval()
    images = torch.randn(2, 3, 30, 34)
    cam = hiercam.GradCAM(model, "4")
    raw = cam(images, size="feature", normalize=None)
    assert raw.shape == (2, 3, 15, 17)
    assert (raw >= 0).all()
    # the engine normalises its own maps in place: the same values as normalize_maps (closed form from here)
    closed = cam(images, size="feature", normalize=None)
    assert torch.equal(cam(images, size="feature"), hiercam.normalize_maps(closed, "max"))
    minmax = cam(images, size="feature", normalize="minmax")
    assert torch.equal(minmax, hiercam.normalize_maps(closed, "minmax"))
    upsampled = torch.nn.functional.interpolate(raw, size=(30, 34), mode="bilinear", align_corners=False)
    torch.testing.assert_close(cam(images, normalize=None), upsampled)
    torch.testing.assert_close(cam(images), hiercam.normalize_maps(upsampled, "max"))
    torch.testing.assert_close(cam(images, normalize="minmax"), hiercam.normalize_maps(upsampled, "minmax"))
    assert cam(images, size=(8, 9)).shape == (2, 3, 8, 9)
    peaks = cam(images).amax(dim=(-2, -1))
    assert torch.all((peaks == 0) | torch.isclose(peaks, torch.ones(())))


def test_logits_are_kept() -> None:
    model = tiny_net(4).eval()
    images = torch.randn(2, 3, 32, 32)
    cam = hiercam.GradCAM(model, "4")
    cam(images)
    assert cam.logits is not None
    assert not cam.logits.requires_grad
    torch.testing.assert_close(cam.logits, model(images))


def test_automatic_target_layer() -> None:
    resnet = models.resnet18(num_classes=3).eval()
    images = torch.randn(1, 3, 64, 64)
    cam = hiercam.GradCAM(resnet)
    assert "<chosen on first call>" in repr(cam)
    torch.testing.assert_close(cam(images), hiercam.GradCAM(resnet, "layer4")(images))
    assert cam.target_layer == "layer4"
    assert "target_layer='layer4'" in repr(cam)
    mobilenet = hiercam.GradCAM(models.mobilenet_v2(num_classes=3).eval())
    mobilenet(torch.randn(1, 3, 64, 64))
    assert mobilenet.target_layer == "features"
    module_given = hiercam.GradCAM(resnet, resnet.layer3)
    assert module_given.target_layer == "layer3"


@pytest.mark.parametrize("context", ["no_grad", "inference_mode", "none"])
def test_works_inside_callers_no_grad_and_inference_mode(context: str) -> None:
    model = tiny_net(3).eval()
    images = torch.randn(2, 3, 32, 32)
    expected = hiercam.GradCAM(model, "4", closed_form=False)(images)
    manager = {
        "no_grad": torch.no_grad(),
        "inference_mode": torch.inference_mode(),
        "none": torch.enable_grad(),
    }
    with manager[context]:
        inputs = images.clone()  # an inference tensor under inference_mode
        got = hiercam.GradCAM(model, "4", closed_form=False)(inputs)
    torch.testing.assert_close(got, expected)


def test_inference_mode_parameters_are_a_clear_error() -> None:
    with torch.inference_mode():
        model = tiny_net(3).eval()
    with pytest.raises(ValueError, match="`model` has inference-mode parameters"):
        hiercam.GradCAM(model, "4")(torch.randn(1, 3, 16, 16))


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.__name__)
def test_frozen_model_works_and_equals_unfrozen(method: type[BaseCAM]) -> None:
    model = tiny_net(4).eval()
    images = torch.randn(2, 3, 32, 32)
    expected = method(model, "2", closed_form=False)(images)
    model.requires_grad_(False)
    got = method(model, "2", closed_form=False)(images)
    torch.testing.assert_close(got, expected)
    assert not any(p.requires_grad for p in model.parameters())


def test_callers_model_state_is_untouched() -> None:
    model = tiny_net(4)
    model.train()
    model[1].eval()  # a mix of flags must come back as it was
    model[0].weight.requires_grad_(False)
    model[3].weight.grad = torch.full_like(model[3].weight, 7.0)
    flags = [m.training for m in model.modules()]
    requires = [p.requires_grad for p in model.parameters()]
    grads = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
    buffers = [b.clone() for b in model.buffers()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    images = torch.randn(4, 3, 32, 32)
    before = images.clone()
    for method in METHODS:
        method(model, "4", closed_form=False)(images)
        method(model, "4")(images, [1, 2])
    assert [m.training for m in model.modules()] == flags
    assert [p.requires_grad for p in model.parameters()] == requires
    for p, g in zip(model.parameters(), grads, strict=True):
        assert (p.grad is None) == (g is None)
        if g is not None:
            assert torch.equal(p.grad, g)
    for b, old in zip(model.buffers(), buffers, strict=True):
        assert torch.equal(b, old)  # BatchNorm running statistics were not updated
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k])
    assert torch.equal(images, before)


def count_hooks(model: nn.Module) -> int:
    return sum(
        len(m._forward_hooks)
        + len(m._forward_pre_hooks)
        + len(m._backward_hooks)
        + len(m._backward_pre_hooks)
        for m in model.modules()
    )


def rss_bytes() -> int:
    with open(f"/proc/{os.getpid()}/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_no_hook_survives_normal_use_exceptions_or_many_calls() -> None:
    model = tiny_net(4).eval()
    images = torch.randn(2, 3, 32, 32)
    with hiercam.GradCAM(model, "4") as cam:
        cam(images)
    assert count_hooks(model) == 0

    def fail_inside_with_block() -> None:
        with hiercam.GradCAM(model, "4") as cam:
            cam(images)
            raise ZeroDivisionError

    with pytest.raises(ZeroDivisionError):
        fail_inside_with_block()
    assert count_hooks(model) == 0
    with pytest.raises(ValueError, match="must be class indices"):
        hiercam.GradCAM(model, "4")(images, 9)
    assert count_hooks(model) == 0
    auto = hiercam.GradCAM(model)
    auto(images)
    assert count_hooks(model) == 0
    if hasattr(os, "sysconf") and os.path.exists(f"/proc/{os.getpid()}/statm"):
        for method in METHODS:  # warm-up
            for _ in range(5):
                method(model, "4")(images)
        gc.collect()
        start = rss_bytes()
        for method in METHODS:
            cam = method(model, "4")
            for _ in range(40):  # 200 calls in all
                cam(images)
                assert count_hooks(model) == 0
        gc.collect()
        growth = rss_bytes() - start
        assert growth < 30 * 2**20, f"memory grew by {growth / 2**20:.1f} MiB over 200 calls"


def test_remove_is_idempotent_and_final() -> None:
    cam = hiercam.GradCAM(tiny_net(3).eval(), "4")
    cam(torch.randn(1, 3, 16, 16))
    cam.remove()
    cam.remove()
    assert cam.logits is None
    with pytest.raises(RuntimeError, match="GradCAM was removed"):
        cam(torch.randn(1, 3, 16, 16))


def test_float64_and_channels_last() -> None:
    model = tiny_net(3).eval()
    images = torch.randn(2, 3, 32, 32)
    expected = hiercam.GradCAM(model, "4", closed_form=False)(images)
    double = hiercam.GradCAM(tiny_net(3).double().eval(), "4", closed_form=False)(images.double())
    assert double.dtype == torch.float32
    torch.testing.assert_close(double, expected, rtol=1e-4, atol=1e-5)
    resnet = models.resnet18(num_classes=3).eval().to(memory_format=torch.channels_last)
    cam = hiercam.GradCAM(resnet, "layer4")
    cam(images.to(memory_format=torch.channels_last))
    assert "closed_form=verified" in repr(cam)  # channels-last views (as_strided) are affine
    last = model.to(memory_format=torch.channels_last)
    got = hiercam.GradCAM(last, "4", closed_form=False)(images.to(memory_format=torch.channels_last))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_bfloat16_autocast_computes_maps_in_float32() -> None:
    model = models.resnet18(num_classes=4).eval()
    images = torch.randn(2, 3, 64, 64)
    expected = hiercam.GradCAM(model, "layer4")(images)
    cam = hiercam.GradCAM(model, "layer4")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        first = cam(images)  # general path, verifies the closed form at bfloat16 tolerance
        second = cam(images)
    for got in (first, second):
        assert got.dtype == torch.float32
        assert torch.corrcoef(torch.stack([got.flatten(), expected.flatten()]))[0, 1] > 0.98
    assert cam.logits is not None
    assert cam.logits.dtype == torch.bfloat16


class Unused(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = tiny_net(3)
        self.spare = nn.Conv2d(3, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class Detached(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).mean(dim=(2, 3)).detach())


def test_bad_input_gets_clear_errors() -> None:
    model = tiny_net(3).eval()
    cam = hiercam.GradCAM(model, "4")
    with pytest.raises(ValueError, match=r"`images` must have shape \(B, C, H, W\), got \(3, 32, 32\)"):
        cam(torch.randn(3, 32, 32))
    with pytest.raises(TypeError, match="`images` must be a floating-point tensor"):
        cam(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"`classes` must be class indices in \[0, 3\), got 3"):
        cam(torch.randn(1, 3, 16, 16), [0, 3])
    with pytest.raises(ValueError, match="`classes` must be non-negative class indices, got -1"):
        cam(torch.randn(1, 3, 16, 16), -1)
    with pytest.raises(
        ValueError, match=r"`classes` mask must have shape \(B, K\) with B = 2 images, got \(3, 3\)"
    ):
        cam(torch.randn(2, 3, 16, 16), torch.ones(3, 3))
    with pytest.raises(
        ValueError, match=r"`classes` mask must have shape \(B, 3\) for a model with 3 classes"
    ):
        cam(torch.randn(2, 3, 16, 16), torch.ones(2, 4))
    with pytest.raises(ValueError, match="`classes` must hold only 0/1 values"):
        cam(torch.randn(1, 3, 16, 16), torch.tensor([[0.5, 1.0, 0.0]]))
    with pytest.raises(TypeError, match="`classes` must be None, an int, a list of ints or a"):
        cam(torch.randn(1, 3, 16, 16), "cat")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`size` must be 'input', 'feature' or a"):
        cam(torch.randn(1, 3, 16, 16), size=(0, 4))
    with pytest.raises(ValueError, match="`normalize` must be one of 'max', 'minmax', None, got 'l2'"):
        cam(torch.randn(1, 3, 16, 16), normalize="l2")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`target_layer` 'layer9' is not a submodule of Sequential"):
        hiercam.GradCAM(model, "layer9")
    with pytest.raises(ValueError, match="did you mean 'layer4'"):
        hiercam.GradCAM(models.resnet18(), "layer5")
    with pytest.raises(
        ValueError, match="`target_layer` 'fc' must output a \\(B, C, H, W\\) tensor.*got \\(1, 1000\\)"
    ):
        hiercam.GradCAM(models.resnet18().eval(), "fc")(torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match="`target_layer` 'spare' was not reached by the forward pass"):
        hiercam.GradCAM(Unused(), "spare")(torch.randn(1, 3, 16, 16))
    with pytest.raises(ValueError, match="`target_layer` 'conv' does not influence the logits of `model`"):
        hiercam.GradCAM(Detached(), "conv")(torch.randn(1, 3, 16, 16))
    with pytest.raises(ValueError, match="`target_layer` \\(Conv2d\\) is not a submodule of `model`"):
        hiercam.GradCAM(model, nn.Conv2d(1, 1, 1))
    with pytest.raises(TypeError, match="`model` must be an nn.Module, got function"):
        hiercam.GradCAM(tiny_net, "4")  # type: ignore[arg-type]
    with pytest.raises(
        ValueError, match=r"`model` must return logits of shape \(B, K\), got \(1, 16, 8, 8\)"
    ):
        hiercam.GradCAM(model[:4], "2")(torch.randn(1, 3, 16, 16))
