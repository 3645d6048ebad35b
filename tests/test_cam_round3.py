"""Issue 26, CAM part (items 1, 2, 7, 10 and 11): no silent wrong answer on the new CAM surfaces.

Oracles: Grad-CAM written out by hand with autograd (for the readings of an ambiguous output), the explicit
layer's own error (for the automatic choice), pytorch-grad-cam with its documented ``reshape_transform`` (the
way out of an ambiguous ViT), the two passes of ``MultiScaleCAM(flip=True)`` computed by hand with the
mirrored mask, and the same model with a plain tensor output (namedtuple and dataclass outputs).
"""

from __future__ import annotations

import dataclasses
from collections import namedtuple
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import hiercam
from hiercam.cam import _checks
from hiercam.cam.reshape import channels_last_to_map, readings

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:FutureWarning"),
]
timm = pytest.importorskip("timm")


# ----------------------------------------------------------------------------------- item 1: ambiguity
def vit(**kwargs: Any) -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=5, **kwargs).eval()


AMBIGUOUS_VITS = [
    pytest.param({"img_size": 80}, 80, hiercam.GradCAM, id="img_size=80"),
    pytest.param({"img_size": 48}, 48, hiercam.GradCAM, id="img_size=48"),
    pytest.param({"dynamic_img_size": True}, 48, hiercam.GradCAM, id="dynamic_img_size at 48"),
    pytest.param({"img_size": 48}, 48, hiercam.ScoreCAM, id="ScoreCAM at 48"),
]


@pytest.mark.parametrize(("kwargs", "side", "method"), AMBIGUOUS_VITS)
def test_the_automatic_layer_of_an_ambiguous_vit_raises_the_explicit_layers_error(
    kwargs: dict[str, Any], side: int, method: type[hiercam.BaseCAM]
) -> None:
    """26 tokens of 80 x 80 are 5 x 5 + 1 or 4 x 4 + 10 (10 of 48 x 48: 3 x 3 + 1 or 2 x 2 + 6): the choice
    used to fall back to ``patch_embed``; it now refuses with the error of the layer it would take."""
    model, images = vit(**kwargs), torch.randn(2, 3, side, side)
    with pytest.raises(ValueError, match="tokens fit several patch grids") as explicit:
        method(model, "blocks.11.norm1")(images, classes=0)
    with pytest.raises(
        ValueError, match=r"automatic choice of `target_layer` would take 'blocks\.11\.norm1'"
    ) as automatic:
        method(model)(images, classes=0)
    # the same reason and the same way out: everything after the layer's name and shape
    assert str(automatic.value).split(": ", 1)[1] == str(explicit.value).split(": ", 1)[1]
    assert "`reshape=`" in str(automatic.value)
    assert "`target_layer`" in str(automatic.value)


def test_the_way_out_of_an_ambiguous_vit_equals_pytorch_grad_cam() -> None:
    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model, images = vit(img_size=48), torch.randn(2, 3, 48, 48)
    ours = hiercam.GradCAM(model, "blocks.11.norm1", reshape=hiercam.TokenReshape((3, 3), prefix=1))(
        images, classes=[3], size="feature", normalize=None
    )

    def reshape_transform(tensor: torch.Tensor) -> torch.Tensor:
        return tensor[:, 1:, :].reshape(tensor.size(0), 3, 3, tensor.size(2)).permute(0, 3, 1, 2)

    peer = pgc.GradCAM(model, [model.blocks[11].norm1], reshape_transform=reshape_transform)
    peer.compute_input_gradient = False

    # pytorch-grad-cam upsamples to the input: compare at the feature resolution by hand
    activations, gradients = [], []
    layer = model.blocks[11].norm1
    handle = layer.register_forward_hook(lambda _m, _i, out: activations.append(out))
    logits = model(images)
    handle.remove()
    gradients = torch.autograd.grad(logits[:, 3].sum(), activations[0])[0]
    acts, grads = reshape_transform(activations[0]), reshape_transform(gradients)
    expected = F.relu((grads.mean(dim=(2, 3), keepdim=True) * acts).sum(1))
    torch.testing.assert_close(ours[:, 0], expected.detach(), rtol=1e-4, atol=1e-6)
    peer_maps = torch.as_tensor(peer(images, targets=[ClassifierOutputTarget(3)] * 2))
    ours_input = hiercam.GradCAM(model, "blocks.11.norm1", reshape=hiercam.TokenReshape((3, 3), prefix=1))(
        images, classes=[3], normalize="minmax"
    )[:, 0]
    correlation = torch.corrcoef(torch.stack([ours_input.flatten(), peer_maps.flatten()]))[0, 1]
    assert correlation > 0.99


def cube_net(channels_after: int | None) -> nn.Sequential:
    """Conv 8 x 8 stride 8 with 8 channels: (B, 8, 8, 8) of a 64 x 64 input, h == w == C."""
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Conv2d(3, 8, 8, stride=8), nn.ReLU()]
    if channels_after is not None:
        layers += [nn.Conv2d(8, channels_after, 3, stride=2, padding=1), nn.ReLU()]
    width = channels_after or 8
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 3)).eval()


class ChannelsLast(nn.Module):
    """A patch embedding, then channels-last (B, 8, 8, 8) features (h == w == C), as ConvNeXt or Swin."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Conv2d(3, 8, 8, stride=8)
        self.norm = nn.LayerNorm(8)
        self.fc = nn.Linear(8, 3)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.norm(self.embed(images).permute(0, 2, 3, 1))
        return self.fc(features.mean(dim=(1, 2)))


def hand_grad_cam(
    model: nn.Module, layer: nn.Module, images: torch.Tensor, cls: int, channels_last: bool
) -> torch.Tensor:
    """Grad-CAM at the layer's resolution, written out: the output read channels-first or channels-last."""
    captured = []
    handle = layer.register_forward_hook(lambda _m, _i, out: captured.append(out))
    logits = model(images)
    handle.remove()
    grads = torch.autograd.grad(logits[:, cls].sum(), captured[0])[0]
    acts = captured[0]
    if channels_last:
        acts, grads = acts.permute(0, 3, 1, 2), grads.permute(0, 3, 1, 2)
    return F.relu((grads.mean(dim=(2, 3), keepdim=True) * acts).sum(1)).detach()


def test_a_channels_last_output_with_h_equal_w_equal_c_is_refused_not_read_channels_first() -> None:
    model, images = ChannelsLast().eval(), torch.randn(2, 3, 64, 64)
    assert [layout for layout, _ in readings((2, 8, 8, 8), (64, 64))] == ["map", "channels_last"]
    for method in (hiercam.GradCAM, hiercam.ScoreCAM):  # with and without an autograd graph
        with pytest.raises(ValueError, match=r"reads both as \(B, C, h, w\) and as channels-last") as error:
            method(model, "norm")(images, classes=0)
        assert "`reshape=None`" in str(error.value)
        assert "channels_last_to_map" in str(error.value)
    # the automatic choice would take the same layer: the same refusal, no fallback to `embed`
    with pytest.raises(ValueError, match=r"automatic choice of `target_layer` would take 'norm'.*reads both"):
        hiercam.GradCAM(model)(images, classes=0)
    # the way out, equal to Grad-CAM by hand with that reading, and different from the old tie-break
    maps = hiercam.GradCAM(model, "norm", reshape=channels_last_to_map)(
        images, classes=[2], size="feature", normalize=None
    )
    expected = hand_grad_cam(model, model.norm, images, 2, channels_last=True)
    torch.testing.assert_close(maps[:, 0], expected, rtol=1e-4, atol=1e-6)
    first = hiercam.GradCAM(model, "norm", reshape=None)(images, classes=[2], size="feature", normalize=None)
    torch.testing.assert_close(first[:, 0], hand_grad_cam(model, model.norm, images, 2, channels_last=False))
    assert not torch.allclose(first, maps, atol=1e-3)


@pytest.mark.parametrize("method", [hiercam.GradCAM, hiercam.HiResCAM, hiercam.ScoreCAM])
def test_a_tie_that_a_convolution_produces_is_read_channels_first_on_evidence(method: type) -> None:
    """``(B, 8, 8, 8)`` after Conv2d + ReLU: the graph shows the convolution (a forward without a graph,
    the closed form or ScoreCAM's, gets it from one probe of one image, once per input size)."""
    model, images = cube_net(None), torch.randn(2, 3, 64, 64)
    calls: list[int] = []
    handle = model.register_forward_pre_hook(lambda _m, inputs: calls.append(inputs[0].shape[0]))
    cam = method(model, "1")
    try:
        for _ in range(3):
            maps = cam(images, classes=[2], size="feature", normalize=None)
    finally:
        handle.remove()
    # GradCAM's first call has a graph (the closed form comes after it); ScoreCAM's never: one probe, kept
    assert calls.count(1) == (1 if method is hiercam.ScoreCAM else 0)
    if method is not hiercam.ScoreCAM:
        expected = hand_grad_cam(model, model[1], images, 2, channels_last=False)
        torch.testing.assert_close(maps[:, 0], expected, rtol=1e-4, atol=1e-6)
    automatic = method(model)
    automatic(images, classes=0)
    assert automatic.target_layer == "1"


def test_an_earlier_ambiguous_layer_does_not_block_the_automatic_choice() -> None:
    model, images = cube_net(16), torch.randn(2, 3, 64, 64)  # (B, 8, 8, 8) then (B, 16, 4, 4)
    cam = hiercam.GradCAM(model)
    maps = cam(images, classes=[1], size="feature", normalize=None)
    assert cam.target_layer == "3"
    expected = hand_grad_cam(model, model[3], images, 1, channels_last=False)
    torch.testing.assert_close(maps[:, 0], expected, rtol=1e-4, atol=1e-6)


def test_near_ties_are_still_read_by_the_better_fitting_strides() -> None:
    assert [layout for layout, _ in readings((2, 56, 56, 64), (224, 224))] == ["channels_last"]
    assert [layout for layout, _ in readings((2, 512, 7, 7), (224, 224))] == ["map"]


# ------------------------------------------------------------------------ item 2: flip and spatial targets
def segmenter() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 3, 1)
    ).eval()


def left_mask(height: int = 16, width: int = 16) -> torch.Tensor:
    mask = torch.zeros(height, width)
    mask[3:9, 1:6] = 1.0
    return mask


def test_flip_explains_the_mirrored_mask_in_the_mirror_images() -> None:
    model, images, mask = segmenter(), torch.randn(2, 3, 16, 16), left_mask()
    target = [hiercam.SemanticSegmentationTarget(2, mask)] * 2
    cam = hiercam.GradCAM(model, "1")
    ours = hiercam.MultiScaleCAM(cam, scales=(1.0,), flip=True)(images, targets=target, normalize=None)

    plain = hiercam.GradCAM(model, "1")(images, targets=target, normalize=None)
    mirrored_target = [hiercam.SemanticSegmentationTarget(2, mask.flip(-1))] * 2
    mirror = hiercam.GradCAM(model, "1")(images.flip(-1), targets=mirrored_target, normalize=None)
    torch.testing.assert_close(ours, (plain + mirror.flip(-1)) / 2, rtol=1e-5, atol=1e-6)

    # the old answer (the unmirrored mask in the mirror images) is another map: the test can fail
    wrong = hiercam.GradCAM(model, "1")(images.flip(-1), targets=target, normalize=None)
    assert ((ours - (plain + wrong.flip(-1)) / 2).abs().amax() > 0.1 * ours.abs().amax()).item()


def test_a_target_without_mirrored_is_refused_on_a_spatial_output_with_flip() -> None:
    model, images, mask = segmenter(), torch.randn(1, 3, 16, 16), left_mask()

    def region(output: torch.Tensor) -> torch.Tensor:
        return (output[1] * mask).sum()

    multi = hiercam.MultiScaleCAM(hiercam.GradCAM(model, "1"), scales=(1.0,), flip=True)
    with pytest.raises(
        ValueError, match=r"`targets` \(function\) explains a spatial output.*`mirrored\(\)`.*`flip=False`"
    ):
        multi(images, targets=region)
    unflipped = hiercam.MultiScaleCAM(hiercam.GradCAM(model, "1"), scales=(1.0,), flip=False)
    assert unflipped(images, targets=region).shape == (1, 1, 16, 16)


def test_a_classifier_target_without_mirrored_is_kept_with_flip() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4)
    ).eval()
    images = torch.randn(2, 3, 16, 16)
    multi = hiercam.MultiScaleCAM(hiercam.GradCAM(model, "1"), scales=(1.0, 0.5), flip=True)
    by_lambda = multi(images, targets=lambda logits: logits[2])
    by_class = multi(images, classes=[2])
    torch.testing.assert_close(by_lambda, by_class, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------- item 7: bounded sizes
def small_classifier(classes: int = 4) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, classes)
    ).eval()


class Counting(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.calls = inner, 0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.inner(images)


def test_a_huge_size_is_refused_before_any_work() -> None:
    model = Counting(small_classifier())
    with pytest.raises(ValueError, match=r"`size`: one 60000x60000 map per image would hold .*\(8 GiB\)"):
        hiercam.GradCAM(model, "inner.1")(torch.randn(1, 3, 16, 16), size=(60000, 60000))
    assert model.calls == 0


def test_a_huge_scale_is_refused_before_the_images_are_resized() -> None:
    model = Counting(small_classifier())
    multi = hiercam.MultiScaleCAM(hiercam.GradCAM(model, "inner.1"), scales=(1.0, 1000.0))
    with pytest.raises(ValueError, match=r"`scales`: scale 1000\.0: the 16000x16000 images and their mirror"):
        multi(torch.randn(2, 3, 16, 16))
    assert model.calls == 0


@pytest.mark.parametrize(
    ("bound", "size", "argument"),
    [
        (2 * 4 * 16 * 16, "input", None),  # exactly the bound: allowed
        (2 * 4 * 16 * 16 - 1, "input", "classes"),  # one value more than the bound
        (2 * 4 * 16 * 17, (16, 17), None),
        (2 * 4 * 16 * 17 - 1, (16, 17), "size"),
        (2 * 1 * 16 * 17 - 1, (16, 17), "size"),  # refused by the first check, before the forward
    ],
)
def test_the_maps_are_bounded_by_max_elements(
    monkeypatch: pytest.MonkeyPatch, bound: int, size: Any, argument: str | None
) -> None:
    monkeypatch.setattr(_checks, "MAX_ELEMENTS", bound)
    model = Counting(small_classifier(4))
    cam = hiercam.GradCAM(model, "inner.1")
    if argument is None:
        assert cam(torch.randn(2, 3, 16, 16), size=size).shape[:2] == (2, 4)
        return
    with pytest.raises(ValueError, match=f"`{argument}`: .* would hold {bound + 1:,} values"):
        cam(torch.randn(2, 3, 16, 16), size=size)
    assert cam.logits is None  # refused before any map was made


def test_numpy_integers_are_a_size() -> None:
    np = pytest.importorskip("numpy")
    model, images = small_classifier(), torch.randn(1, 3, 16, 16)
    plain = hiercam.GradCAM(model, "1")(images, size=(8, 12))
    torch.testing.assert_close(hiercam.GradCAM(model, "1")(images, size=(np.int64(8), np.int32(12))), plain)


# ----------------------------------------------------------------- item 11: namedtuple and dataclass outputs
Output = namedtuple("Output", ["features", "logits"])


@dataclasses.dataclass
class DataOutput:
    features: torch.Tensor
    logits: torch.Tensor


class Wrapped(nn.Module):
    def __init__(self, inner: nn.Sequential, kind: str) -> None:
        super().__init__()
        self.inner, self.kind = inner, kind

    def forward(self, images: torch.Tensor) -> Any:
        features = self.inner[:2](images)
        logits = self.inner[2:](features)
        return Output(features, logits) if self.kind == "namedtuple" else DataOutput(features, logits)


@pytest.mark.parametrize("kind", ["namedtuple", "dataclass"])
def test_a_named_field_output_is_read_by_name(kind: str) -> None:
    inner, images = small_classifier(), torch.randn(2, 3, 16, 16)
    expected = hiercam.GradCAM(inner, "1")(images, classes=[0, 3], normalize=None)
    cam = hiercam.GradCAM(Wrapped(inner, kind), "inner.1", output="logits")
    torch.testing.assert_close(cam(images, classes=[0, 3], normalize=None), expected)
    with pytest.raises(ValueError, match=r"`output` key 'scores' is not in .*'features', 'logits'"):
        hiercam.GradCAM(Wrapped(inner, kind), "inner.1", output="scores")(images)
    with pytest.raises(ValueError, match="with fields 'features', 'logits'"):
        hiercam.GradCAM(Wrapped(inner, kind), "inner.1")(images)


def test_a_namedtuple_output_is_still_indexed_by_position() -> None:
    inner, images = small_classifier(), torch.randn(2, 3, 16, 16)
    expected = hiercam.GradCAM(inner, "1")(images, classes=[1])
    torch.testing.assert_close(
        hiercam.GradCAM(Wrapped(inner, "namedtuple"), "inner.1", output=1)(images, classes=[1]), expected
    )


# ------------------------------------------------------------------- item 10: TorchScript and meta tensors
@pytest.mark.parametrize("compile_", ["script", "trace"])
def test_a_torchscript_model_is_refused_naming_model(compile_: str) -> None:
    model, images = small_classifier(), torch.randn(2, 3, 16, 16)
    scripted = torch.jit.script(model) if compile_ == "script" else torch.jit.trace(model, images)
    for layer in ("1", None):
        with pytest.raises(
            TypeError, match=r"`model` is a TorchScript module .*pass the original nn\.Module"
        ):
            hiercam.GradCAM(scripted, layer)


def test_a_torchscript_layer_is_refused_naming_target_layer_and_skipped_by_the_automatic_choice() -> None:
    model, images = small_classifier(), torch.randn(2, 3, 16, 16)
    expected = hiercam.GradCAM(model, "1")(images, classes=[2])
    model[2] = torch.jit.script(model[2])  # a scripted pool
    with pytest.raises(TypeError, match=r"`target_layer` '2' is a TorchScript module"):
        hiercam.GradCAM(model, "2")
    cam = hiercam.GradCAM(model)
    torch.testing.assert_close(cam(images, classes=[2]), expected)
    assert cam.target_layer == "1"


def test_meta_images_and_a_meta_model_are_refused_naming_them() -> None:
    model = small_classifier()
    with pytest.raises(ValueError, match="`images` are meta tensors"):
        hiercam.GradCAM(model, "1")(torch.randn(2, 3, 16, 16, device="meta"))
    with pytest.raises(ValueError, match="`images` are meta tensors"):
        hiercam.MultiScaleCAM(hiercam.GradCAM(model, "1"))(torch.randn(2, 3, 16, 16, device="meta"))
    with pytest.raises(ValueError, match="`model` has parameters on the meta device"):
        hiercam.GradCAM(small_classifier().to("meta"), "1")(torch.randn(2, 3, 16, 16))
