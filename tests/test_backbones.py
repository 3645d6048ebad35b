from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn
from torchvision import models
from torchvision.models.convnext import CNBlockConfig
from torchvision.models.efficientnet import MBConvConfig

from hiercam.models import cut_backbone

pytestmark = pytest.mark.usefixtures("one_thread")


# Small members of each torchvision family (the real classes, fewer/narrower layers), to keep the tests fast.


def small_vgg() -> nn.Module:
    return models.VGG(models.vgg.make_layers([8, "M", 16, "M", 512]), num_classes=3, init_weights=False)


def small_densenet() -> nn.Module:
    return models.DenseNet(growth_rate=8, block_config=(2, 2), num_init_features=16, num_classes=3)


def small_efficientnet() -> nn.Module:
    setting = [MBConvConfig(1, 3, 1, 16, 8, 1, 1.0, 1.0), MBConvConfig(6, 3, 2, 8, 16, 1, 1.0, 1.0)]
    return models.EfficientNet(setting, dropout=0.2, num_classes=3)


def small_convnext() -> nn.Module:
    return models.ConvNeXt([CNBlockConfig(16, 32, 1), CNBlockConfig(32, None, 1)], num_classes=3)


def _capture(module: nn.Module, *, pre: bool) -> tuple[list[torch.Tensor], torch.utils.hooks.RemovableHandle]:
    """Record the input (pre=True) or the output of ``module`` on the next forward."""
    seen: list[torch.Tensor] = []
    if pre:
        handle = module.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().clone()))
    else:
        handle = module.register_forward_hook(lambda _m, _a, out: seen.append(out.detach().clone()))
    return seen, handle


# For each family: the module whose input (pre) or output is the map the model pools, and the linear layer
# whose input is the pooled vector (None where the model does not globally average-pool: VGG).
FAMILIES: dict[str, tuple[Callable[[], nn.Module], Callable[[nn.Module], tuple[nn.Module, bool]], object]] = {
    "resnet18": (
        lambda: models.resnet18(num_classes=3),
        lambda m: (m.avgpool, True),
        lambda m: m.fc,
    ),
    "vgg": (small_vgg, lambda m: (m.avgpool, True), None),
    "mobilenet_v2": (
        lambda: models.mobilenet_v2(num_classes=3, width_mult=0.25),
        lambda m: (m.features, False),  # pooled functionally in MobileNetV2.forward
        lambda m: m.classifier[1],
    ),
    "mobilenet_v3_small": (
        lambda: models.mobilenet_v3_small(num_classes=3),
        lambda m: (m.avgpool, True),
        lambda m: m.classifier[0],
    ),
    "densenet": (
        small_densenet,
        None,  # F.relu and the pooling are functional in DenseNet.forward: the pooled vector is the oracle
        lambda m: m.classifier,
    ),
    "efficientnet": (
        small_efficientnet,
        lambda m: (m.avgpool, True),
        lambda m: m.classifier[1],
    ),
    "convnext": (
        small_convnext,
        lambda m: (m.avgpool, True),
        lambda m: m.classifier[0],  # LayerNorm2d of the pooled (B, C, 1, 1) vector
    ),
}


@pytest.mark.parametrize("name", list(FAMILIES))
def test_torchvision_cut_reproduces_the_models_own_forward_up_to_the_pool(name: str) -> None:
    build, map_site, linear_site = FAMILIES[name]
    model = build().eval()
    x = torch.randn(2, 3, 32, 32)
    handles, expected_map, expected_pooled = [], None, None
    if map_site is not None:
        module, pre = map_site(model)
        seen_map, handle = _capture(module, pre=pre)
        handles.append(handle)
    if linear_site is not None:
        seen_pooled, handle = _capture(linear_site(model), pre=True)
        handles.append(handle)
    with torch.no_grad():
        model(x)
    for handle in handles:
        handle.remove()
    if map_site is not None:
        expected_map = seen_map[0]
    if linear_site is not None:
        expected_pooled = seen_pooled[0].flatten(1)

    cut = cut_backbone(model)
    assert cut.kind.startswith("torchvision")
    with torch.no_grad():
        features = cut.features(x)
    assert features.ndim == 4
    assert features.shape[1] == cut.num_features
    if expected_map is not None:
        torch.testing.assert_close(features, expected_map, rtol=1e-5, atol=1e-5)
    if expected_pooled is not None:
        torch.testing.assert_close(features.mean(dim=(2, 3)), expected_pooled, rtol=1e-5, atol=1e-5)


def test_densenet_cut_applies_the_final_relu() -> None:
    model = small_densenet().eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        features = cut_backbone(model).features(x)
        raw = model.features(x)
    assert bool((raw < 0).any())  # the BatchNorm output has negative entries ...
    assert bool((features >= 0).all())  # ... which the ReLU of DenseNet.forward removes
    torch.testing.assert_close(features, raw.relu())


def test_resnet_cut_keeps_torchvision_layer_names() -> None:
    cut = cut_backbone(models.resnet18(num_classes=3))
    assert [name for name, _ in cut.features.named_children()] == [
        "conv1",
        "bn1",
        "relu",
        "maxpool",
        "layer1",
        "layer2",
        "layer3",
        "layer4",
    ]


def test_cut_copies_and_leaves_the_model_untouched() -> None:
    model = models.resnet18(num_classes=3).eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    cut = cut_backbone(model)
    assert not model.training  # flags untouched ...
    assert not cut.features.training  # ... and copied
    shared = {p.data_ptr() for p in model.parameters()} & {p.data_ptr() for p in cut.features.parameters()}
    assert not shared
    cut.features.train()(torch.randn(2, 3, 32, 32)).sum().backward()  # updates BN statistics of the copy
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert all(p.grad is None for p in model.parameters())
    assert isinstance(model.fc, nn.Linear)


def test_plain_feature_module_is_used_as_is() -> None:
    trunk = nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.Conv2d(6, 10, 3, stride=2))
    cut = cut_backbone(trunk)
    assert cut.kind == "feature module"
    assert cut.num_features == 10
    x = torch.randn(2, 3, 20, 20)
    torch.testing.assert_close(cut.features(x), trunk(x))


def test_probe_runs_in_eval_mode_and_restores_flags() -> None:
    trunk = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.5))
    trunk[2].eval()
    cut = cut_backbone(trunk)
    assert [m.training for m in cut.features.modules()] == [True, True, True, False]
    assert torch.equal(cut.features[1].running_mean, torch.zeros(4))  # the probe did not update BN statistics


@pytest.mark.parametrize("name", ["test_resnet", "test_convnext", "test_efficientnet"])
def test_timm_cut_uses_forward_features(name: str) -> None:
    timm = pytest.importorskip("timm")
    model = timm.create_model(name, pretrained=False, num_classes=3).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model.forward_features(x)
    cut = cut_backbone(model)
    assert cut.kind == "timm-style forward_features"
    assert cut.num_features == model.num_features
    assert model.num_classes == 3  # the classifier is removed from the copy only
    with torch.no_grad():
        torch.testing.assert_close(cut.features(x), expected)
    # every trainable parameter is used by forward_features (DDP without find_unused_parameters)
    cut.features(x).sum().backward()
    trainable = [n for n, p in cut.features.named_parameters() if p.requires_grad]
    assert trainable
    assert [n for n, p in cut.features.named_parameters() if p.requires_grad and p.grad is None] == []
    classifier = "model." + model.pretrained_cfg["classifier"] + "."
    assert not any(n.startswith(classifier) for n, _ in cut.features.named_parameters())


def test_timm_convnext_head_norm_is_frozen_not_trained() -> None:
    timm = pytest.importorskip("timm")
    cut = cut_backbone(timm.create_model("test_convnext", pretrained=False, num_classes=3))
    frozen = [n for n, p in cut.features.named_parameters() if not p.requires_grad]
    assert frozen == ["model.head.norm.weight", "model.head.norm.bias"]


def test_timm_vision_transformer_cannot_be_cut() -> None:
    timm = pytest.importorskip("timm")
    model = timm.create_model("test_vit", pretrained=False, num_classes=3)
    with pytest.raises(ValueError, match=r"must return \(B, C, H, W\) features, got \(1, \d+, \d+\)"):
        cut_backbone(model)


def test_non_4d_module_cannot_be_cut() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(
        ValueError,
        match=r"`model` \(Sequential, feature module\) must return \(B, C, H, W\) "
        r"features, got \(1, 2\) for a \(1, 3, 64, 64\) input; it is not a classifier",
    ):
        cut_backbone(model)
    with pytest.raises(ValueError, match=r"must return \(B, C, H, W\) features, got \(1, 1000\)"):
        cut_backbone(models.squeezenet1_1())


def test_module_that_fails_on_the_probe() -> None:
    grayscale = nn.Conv2d(1, 4, 3)
    with pytest.raises(
        ValueError, match=r"could not run `model` \(feature module\) on a \(1, 3, 64, 64\) probe"
    ):
        cut_backbone(grayscale)


def test_not_a_module() -> None:
    with pytest.raises(TypeError, match=r"`model` must be an nn.Module, got function"):
        cut_backbone(models.resnet18)  # type: ignore[arg-type]


def test_cut_follows_device_and_dtype() -> None:
    trunk = nn.Sequential(nn.Conv2d(3, 5, 3), nn.ReLU()).double()
    cut = cut_backbone(trunk)
    assert cut.num_features == 5
    assert next(cut.features.parameters()).dtype == torch.float64
