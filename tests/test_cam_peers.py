"""hiercam's CAM methods against the peer libraries pytorch-grad-cam and torchcam (test-only oracles).

How the comparisons are made, and why:

* torchcam returns raw maps at feature resolution (``normalized=False``; ReLU'd for gradient methods), so
  hiercam's ``size="feature", normalize=None`` maps are compared with ``assert_close``. torchcam's own
  normalisation adds 1e-8 to the maximum, which distorts the maps of random-init models whose maps peak near
  1e-10, so normalised maps are not compared.
* pytorch-grad-cam returns min-max normalised maps resized with OpenCV's bilinear filter to the input size
  (the same half-pixel convention as ``F.interpolate(align_corners=False)``) and normalises twice; min-max
  normalisation commutes with bilinear resizing, so hiercam's ``size="input", normalize="minmax"`` maps are
  compared with ``assert_close`` (atol 1e-4), or with Pearson r > 0.999 where its 1e-7 guard meets tiny maps.
* XGrad-CAM's guard against a zero channel sum is 1e-7 in hiercam and pytorch-grad-cam, 1e-8 in torchcam;
  the torchcam comparison patches hiercam's to 1e-8 (it decides where Hardswish channel sums are near zero).
* torchcam's Grad-CAM++ is not compared: its ``alpha[idx][mask].div_(...)`` divides a copy made by boolean
  indexing, so its alpha stays ``G**2``. pytorch-grad-cam implements the formula.
* DenseNet applies ``F.relu(features, inplace=True)`` after ``features``. Both peers then store the activation
  after that ReLU (the in-place op overwrites the tensor their hook kept; pytorch-grad-cam pairs it with the
  gradient before the ReLU, torchcam with the gradient after it), while hiercam explains the value
  ``features`` produced (tests/test_cam_inplace.py checks it against the model without in-place ops).
  DenseNet is therefore compared with both peers on ``features.denseblock4``, which no in-place op follows.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest
import torch
from cam_test_helpers import pearson
from torch import nn
from torchvision import models

import hiercam

pgc = pytest.importorskip("pytorch_grad_cam")
torchcam_methods = pytest.importorskip("torchcam.methods")
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

logging.getLogger("torchcam").setLevel(logging.ERROR)

MODELS: dict[str, tuple[Callable[[], nn.Module], str, str]] = {
    # name: (factory, layer for pytorch-grad-cam, layer for torchcam)
    "resnet18": (lambda: models.resnet18(num_classes=6), "layer4", "layer4"),
    "vgg11_bn": (lambda: models.vgg11_bn(num_classes=6), "features", "features"),
    "mobilenet_v3_small": (lambda: models.mobilenet_v3_small(num_classes=6), "features", "features"),
    "densenet121": (
        lambda: models.densenet121(num_classes=6),
        "features.denseblock4",
        "features.denseblock4",
    ),
    "convnext_tiny": (lambda: models.convnext_tiny(num_classes=6), "features", "features"),
}
OURS = {
    "GradCAM": hiercam.GradCAM,
    "GradCAMPlusPlus": hiercam.GradCAMPlusPlus,
    "XGradCAM": hiercam.XGradCAM,
    "LayerCAM": hiercam.LayerCAM,
    "HiResCAM": hiercam.HiResCAM,
}
PYTORCH_GRAD_CAM = {
    "GradCAM": pgc.GradCAM,
    "GradCAMPlusPlus": pgc.GradCAMPlusPlus,
    "XGradCAM": pgc.XGradCAM,
    "LayerCAM": pgc.LayerCAM,
    "HiResCAM": pgc.HiResCAM,
}
TORCHCAM = {
    "GradCAM": torchcam_methods.GradCAM,
    "XGradCAM": torchcam_methods.XGradCAM,
    "LayerCAM": torchcam_methods.LayerCAM,
}
CLASSES = [1, 4]


@pytest.fixture(scope="module", params=list(MODELS))
def model_case(request: pytest.FixtureRequest) -> tuple[str, nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = MODELS[request.param][0]().eval()
    images = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    return request.param, model, images


@pytest.mark.parametrize("method", list(PYTORCH_GRAD_CAM))
def test_matches_pytorch_grad_cam(model_case, method: str) -> None:
    name, model, images = model_case
    layer = MODELS[name][1]
    with OURS[method](model, layer) as extractor:
        ours = extractor(images, CLASSES, size="input", normalize="minmax")
    with PYTORCH_GRAD_CAM[method](model, target_layers=[model.get_submodule(layer)]) as peer:
        theirs = torch.stack(
            [
                torch.from_numpy(peer(images, targets=[ClassifierOutputTarget(k)] * len(images)))
                for k in CLASSES
            ],
            dim=1,
        )
    try:
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)
    except AssertionError:
        assert pearson(ours, theirs) > 0.999


@pytest.mark.parametrize("method", list(TORCHCAM))
def test_matches_torchcam_raw_maps(model_case, method: str, monkeypatch: pytest.MonkeyPatch) -> None:
    name, model, images = model_case
    layer = MODELS[name][2]
    # XGrad-CAM divides by the channel sums of A, near zero for some Hardswish channels of MobileNetV3: there
    # the guard decides, and hiercam uses pytorch-grad-cam's 1e-7 where torchcam uses 1e-8.
    monkeypatch.setattr("hiercam.cam.methods._XGRAD_EPS", 1e-8)
    with OURS[method](model, layer) as extractor:
        ours = extractor(images, CLASSES, size="feature", normalize=None)
    peer = TORCHCAM[method](model, layer)
    try:
        theirs = torch.stack([peer(k, model(images), normalized=False)[0] for k in CLASSES], dim=1)
    finally:
        peer.remove_hooks()
    scale = theirs.abs().amax().item()
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5 * scale)


CAM_MODELS: dict[str, tuple[Callable[[], nn.Module], str, str]] = {
    # name: (factory, target layer, classifier)
    "resnet18": (lambda: models.resnet18(num_classes=6), "layer4", "fc"),
    "mobilenet_v2": (lambda: models.mobilenet_v2(num_classes=6), "features", "classifier.1"),
}


@pytest.mark.parametrize("name", list(CAM_MODELS))
def test_cam_matches_torchcam(name: str) -> None:
    torch.manual_seed(0)
    factory, layer, fc = CAM_MODELS[name]
    model = factory().eval()
    images = torch.randn(2, 3, 96, 96)
    ours = hiercam.CAM(model, layer)(images, CLASSES, size="feature", normalize=None)
    peer = torchcam_methods.CAM(model, layer, fc_layer=fc)
    try:
        theirs = torch.stack([peer(k, model(images), normalized=False)[0] for k in CLASSES], dim=1)
    finally:
        peer.remove_hooks()
    # torchcam's CAM is not ReLU'd; hiercam's maps are, like every other method's
    torch.testing.assert_close(ours, theirs.relu(), rtol=1e-5, atol=1e-6)


def test_cam_refuses_densenet_features_where_torchcam_reads_an_overwritten_tensor() -> None:
    # DenseNet's F.relu(features, inplace=True) sits between `features` and the pool: CAM's W @ A is not the
    # model's score there. torchcam computes it from the tensor the in-place ReLU overwrote; hiercam refuses.
    model = models.densenet121(num_classes=6).eval()
    with pytest.raises(ValueError, match="CAM needs the target layer to feed a global average pool"):
        hiercam.CAM(model, "features")(torch.randn(1, 3, 64, 64))
