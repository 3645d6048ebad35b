"""Top-k classes, several target layers and the progress of the perturbation methods (issue 24).

Oracles: the all-class maps of the same extractor (top-k equals slicing them), pytorch-grad-cam with
``targets=None`` (its top-1 class) and with ``target_layers=[a, b]`` (its per-layer mean), on random-init
torchvision models as in tests/test_cam_peers.py.
"""

from __future__ import annotations

import logging
import warnings

import pytest
import torch
from cam_test_helpers import pearson
from torch import nn
from torchvision import models

import hiercam
from hiercam.cam import METHODS

pgc = pytest.importorskip("pytorch_grad_cam")


def _model() -> nn.Module:
    torch.manual_seed(0)
    return models.resnet18(num_classes=6).eval()


def _images() -> torch.Tensor:
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def _extractor(name: str, model: nn.Module, layer: object = "layer4") -> hiercam.BaseCAM:
    method = METHODS[name]
    if name in ("scorecam", "ablationcam"):
        return method(model, layer, batch_size=512, progress=False)  # type: ignore[call-arg]
    if name in ("sscam", "iscam"):  # 2 samples of 32 channels: the test is about classes, not samples
        return method(model, layer, num_samples=2, max_channels=32, batch_size=512, progress=False)  # type: ignore[call-arg]
    if name in ("fullgrad", "guidedbackprop"):  # no target layer: they explain the input
        return method(model)
    return method(model, layer)


def _reseed(extractor: hiercam.BaseCAM) -> None:
    """The same random draws for the next call (RandomCAM's weights, the noise of SmoothGradCAMPlusPlus and
    SSCAM)."""
    if isinstance(extractor, (hiercam.RandomCAM, hiercam.SmoothGradCAMPlusPlus, hiercam.SSCAM)):
        extractor.generator = torch.Generator().manual_seed(0)


def _slice(maps: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    return maps.gather(1, classes[:, :, None, None].expand(-1, -1, *maps.shape[-2:]))


@pytest.mark.parametrize("name", sorted(METHODS))
def test_top_k_equals_slicing_the_all_class_maps(name: str) -> None:
    model, images = _model(), _images()
    extractor = _extractor(name, model)
    _reseed(extractor)
    every = extractor(images, normalize=None)
    assert torch.equal(extractor.classes, torch.arange(6).expand(2, -1))
    _reseed(extractor)
    top = extractor(images, top_k=3, normalize=None)
    expected = extractor.logits.topk(3, dim=1).indices
    assert top.shape == (2, 3, 64, 64)
    assert torch.equal(extractor.classes, expected)  # highest score first
    torch.testing.assert_close(top, _slice(every, expected), rtol=1e-5, atol=1e-6 * every.abs().amax().item())


def test_top_k_of_multi_scale_cam_equals_slicing() -> None:
    model, images = _model(), _images()
    cam = hiercam.MultiScaleCAM(hiercam.GradCAM(model, "layer4"), scales=(1.0, 0.5))
    every = cam(images)
    top = cam(images, top_k=2)
    chosen = model(images).topk(2, dim=1).indices
    assert torch.equal(cam.classes, chosen)
    torch.testing.assert_close(top, _slice(every, chosen), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", ["GradCAM", "GradCAMPlusPlus", "XGradCAM", "LayerCAM", "HiResCAM"])
def test_top_1_equals_pytorch_grad_cam_without_targets(method: str) -> None:
    model, images = _model(), _images()
    ours = getattr(hiercam, method)(model, "layer4")(images, top_k=1, normalize="minmax")[:, 0]
    with getattr(pgc, method)(model, target_layers=[model.layer4]) as peer:
        theirs = torch.from_numpy(peer(images, targets=None))
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)


def test_top_k_errors_name_the_argument() -> None:
    cam, images = hiercam.GradCAM(_model(), "layer4"), _images()
    with pytest.raises(ValueError, match="either `classes` or `top_k`"):
        cam(images, [1], top_k=1)
    with pytest.raises(ValueError, match=r"`top_k` must be <= 6"):
        cam(images, top_k=7)
    with pytest.raises(ValueError, match="`top_k` must be an int >= 1"):
        cam(images, top_k=0)
    with pytest.raises(TypeError, match="`top_k` must be an int"):
        cam(images, top_k=1.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`targets`"):
        cam(images, top_k=1, targets=hiercam.ClassifierOutputTarget(0))


def test_all_class_call_warns_once_over_the_memory_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("hiercam.cam.engine.MAPS_WARNING_BYTES", 2 * 6 * 64 * 64 * 4 - 1)
    cam, images = hiercam.GradCAM(_model(), "layer4"), _images()
    with pytest.warns(UserWarning, match=r"all 6 classes of 2 images.*`top_k=1`"):
        cam(images)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cam(images)  # once per extractor
        hiercam.GradCAM(_model(), "layer4")(images, top_k=1)  # a top-k call holds k maps
        hiercam.GradCAM(_model(), "layer4")(images, size="feature")  # 2 x 6 x 2 x 2 maps


# --------------------------------------------------------------------------------- several target layers
MULTI = {
    "resnet18": (lambda: models.resnet18(num_classes=6), ["layer3", "layer4"]),
    "vgg11_bn": (lambda: models.vgg11_bn(num_classes=6), ["features.20", "features"]),
}


@pytest.mark.parametrize("name", list(MULTI))
@pytest.mark.parametrize("method", ["GradCAM", "LayerCAM", "HiResCAM"])
def test_several_layers_equal_pytorch_grad_cam(name: str, method: str) -> None:
    torch.manual_seed(0)
    factory, layers = MULTI[name]
    model = factory().eval()
    images = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    ours = getattr(hiercam, method)(model, layers)(images, [1, 4], normalize="minmax")
    with getattr(pgc, method)(model, target_layers=[model.get_submodule(n) for n in layers]) as peer:
        theirs = torch.stack(
            [
                torch.from_numpy(
                    peer(images, targets=[pgc.utils.model_targets.ClassifierOutputTarget(k)] * 2)
                )
                for k in (1, 4)
            ],
            dim=1,
        )
    try:
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)
    except AssertionError:  # pytorch-grad-cam's 1e-7 guard on tiny random-init maps (as in test_cam_peers)
        assert pearson(ours, theirs) > 0.999


def test_several_layers_keep_per_layer_maps_and_leave_no_hook() -> None:
    model, images = _model(), _images()
    training = [m.training for m in model.modules()]
    cam = hiercam.GradCAM(model, [model.layer3, "layer4"])
    maps = cam(images, [0, 2], size="feature", normalize="max")
    assert cam.target_layers == ["layer3", "layer4"]
    assert maps.shape == (2, 2, 4, 4)  # the finest layer's resolution
    assert cam.branch_maps is not None
    assert cam.branch_maps.shape == (2, 2, 2, 4, 4)
    single = [
        hiercam.GradCAM(model, n)(images, [0, 2], size=(4, 4), normalize=None) for n in ("layer3", "layer4")
    ]
    each = [
        hiercam.normalize_maps(hiercam.GradCAM(model, n)(images, [0, 2], size="feature", normalize=None))
        for n in ("layer3", "layer4")
    ]
    expected = hiercam.normalize_maps((each[0] + hiercam.resize_maps(each[1], (4, 4))) / 2)
    torch.testing.assert_close(maps, expected, rtol=1e-5, atol=1e-6)
    assert single[0].shape == maps.shape
    assert all(not m._forward_hooks and not m._backward_hooks for m in model.modules())
    assert [m.training for m in model.modules()] == training


def test_several_layers_errors() -> None:
    model = _model()
    with pytest.raises(ValueError, match="at least one layer"):
        hiercam.GradCAM(model, [])
    with pytest.raises(ValueError, match="must not repeat a layer"):
        hiercam.GradCAM(model, ["layer4", model.layer4])
    with pytest.raises(ValueError, match="'layer9' is not a submodule"):
        hiercam.GradCAM(model, ["layer4", "layer9"])


# --------------------------------------------------------------------------------------------- progress
@pytest.mark.parametrize("method", [hiercam.ScoreCAM, hiercam.AblationCAM])
def test_perturbation_progress_bar_and_log_lines(
    method: type[hiercam.BaseCAM],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    model, images = _model(), _images()[:1]
    monkeypatch.setattr("hiercam._progress.is_terminal", lambda stream=None: True)  # a bar on "stderr"
    with caplog.at_level(logging.INFO, logger="hiercam.cam"):
        method(model, "layer4", batch_size=128)(images, [0])  # type: ignore[call-arg]
    bar = capsys.readouterr().err
    assert f"{method.__name__} layer4" in bar
    assert "512/512" in bar
    assert any(
        r.name == "hiercam.cam" and r.getMessage().startswith(f"{method.__name__} layer4: 512 ")
        for r in caplog.records
    )
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="hiercam.cam"):
        method(model, "layer4", batch_size=128, progress=False)(images, [0])  # type: ignore[call-arg]
    assert capsys.readouterr().err == ""
    assert not caplog.records


def test_progress_must_be_a_bool() -> None:
    with pytest.raises(TypeError, match="`progress` must be a bool"):
        hiercam.ScoreCAM(_model(), "layer4", progress="yes")  # type: ignore[arg-type]
