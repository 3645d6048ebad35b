from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn
from torchvision import models
from torchvision.models.convnext import CNBlockConfig
from torchvision.models.efficientnet import MBConvConfig

from hiercam.models import TwoBranchNet, cut_backbone

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
    with pytest.raises(
        ValueError,
        match=r"must return \(B, C, H, W\) features, got \(1, \d+, \d+\).*does not reshape tokens.*`layer=`",
    ):
        cut_backbone(model)


def test_non_4d_module_cannot_be_cut() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(
        ValueError,
        match=r"`model` \(Sequential, feature module\) must return \(B, C, H, W\) "
        r"features, got \(1, 2\) for a \(1, 3, 64, 64\) input; it is not a classifier",
    ):
        cut_backbone(model)


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


# Every torchvision classifier. For each class: the module whose input (pre=True) or output is the map the
# model pools, and the width of the pooled vector its head reads (VGG and AlexNet flatten a 7 x 7 / 6 x 6
# pool: channels = in_features / area).
SITES: dict[type[nn.Module], Callable[[Any], tuple[nn.Module, bool, int]]] = {
    models.ResNet: lambda m: (m.avgpool, True, m.fc.in_features),
    models.VGG: lambda m: (m.avgpool, True, m.classifier[0].in_features // 49),
    models.AlexNet: lambda m: (m.avgpool, True, m.classifier[1].in_features // 36),
    models.SqueezeNet: lambda m: (m.classifier, True, m.classifier[1].in_channels),
    models.DenseNet: lambda m: (m.features, False, m.classifier.in_features),  # then F.relu
    models.MobileNetV2: lambda m: (m.features, False, m.classifier[1].in_features),
    models.MobileNetV3: lambda m: (m.avgpool, True, m.classifier[0].in_features),
    models.EfficientNet: lambda m: (m.avgpool, True, m.classifier[1].in_features),
    models.ConvNeXt: lambda m: (m.avgpool, True, m.classifier[2].in_features),
    models.MNASNet: lambda m: (m.layers, False, m.classifier[1].in_features),
    models.ShuffleNetV2: lambda m: (m.conv5, False, m.fc.in_features),
    models.RegNet: lambda m: (m.avgpool, True, m.fc.in_features),
    models.GoogLeNet: lambda m: (m.avgpool, True, m.fc.in_features),
    models.Inception3: lambda m: (m.avgpool, True, m.fc.in_features),
    models.SwinTransformer: lambda m: (m.avgpool, True, m.head.in_features),  # after norm and permute
    models.MaxVit: lambda m: (m.classifier, True, m.classifier[3].in_features),
}
REFUSED = (models.VisionTransformer,)
# The smallest input each model accepts, where it is above 32 x 32.
INPUT_SIZE = {"alexnet": 64, "inception_v3": 75, "maxvit_t": 224}
# Over about a second each to build, cut and run on one core (2 to 17 s for the largest): in the slow suite.
# Every family keeps its smaller members in the fast one.
SLOW = {
    "convnext_base",
    "convnext_large",
    "efficientnet_v2_l",
    "regnet_x_32gf",
    "regnet_y_16gf",
    "regnet_y_32gf",
    "regnet_y_128gf",
    "resnet152",
    "resnext101_32x8d",
    "resnext101_64x4d",
    "swin_b",
    "swin_s",
    "swin_v2_b",
    "vgg16",
    "vgg16_bn",
    "vgg19",
    "vgg19_bn",
    "vit_h_14",
    "vit_l_16",
    "vit_l_32",
    "wide_resnet50_2",
    "wide_resnet101_2",
}
TORCHVISION_CLASSIFIERS = models.list_models(module=models)


# PyTorch's default initialisation: theirs (a truncated normal of std 0.01) gives maps of size 1e-12.
INIT = {"googlenet": {"init_weights": False}, "inception_v3": {"init_weights": False}}


def build(name: str) -> nn.Module:
    return models.get_model(name, weights=None, num_classes=10, **INIT.get(name, {}))


def assert_same_maps(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal up to 1e-5 of the largest value: randomly initialised deep nets in eval mode give tiny maps."""
    scale = float(expected.abs().max())
    assert scale > 0
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5 * scale)


def own_maps(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The map the model pools on its own forward, and the width its head expects."""
    module, pre, width = SITES[type(model)](model)
    seen, handle = _capture(module, pre=pre)
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return (seen[0].relu() if isinstance(model, models.DenseNet) else seen[0]), width


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in TORCHVISION_CLASSIFIERS],
)
def test_every_torchvision_classifier_cuts_or_raises_the_documented_error(name: str) -> None:
    model = build(name).eval()
    if isinstance(model, REFUSED):
        with pytest.raises(
            ValueError,
            match=r"`model` \(torchvision VisionTransformer\) cannot be cut into \(B, C, H, W\) feature "
            r"maps: it returns tokens .* pass `layer=`",
        ):
            cut_backbone(model)
        return
    size = INPUT_SIZE.get(name, 32)
    x = torch.randn(2, 3, size, size)
    expected, width = own_maps(model, x)
    cut = cut_backbone(model)
    assert cut.kind == f"torchvision {type(model).__name__}"
    with torch.no_grad():
        features = cut.features(x)
    assert features.ndim == 4
    assert features.shape[:2] == (2, width)
    assert cut.num_features == width
    assert_same_maps(features, expected)


@pytest.mark.parametrize("name", ["shufflenet_v2_x0_5", "regnet_x_400mf", "googlenet", "swin_t"])
def test_two_branch_net_on_newly_supported_backbones(name: str) -> None:
    model = build(name).eval()
    x = torch.randn(2, 3, 32, 32)
    expected, width = own_maps(model, x)
    net = TwoBranchNet(model, num_classes=4)
    assert net.num_features == width
    assert not net.training
    with torch.no_grad():
        out = net(x)
    assert out.logits.shape == (2, 2, 4)
    for features in out.features:  # both branches start from the model's weights
        assert_same_maps(features, expected)
    net.train()
    out = net(x)
    (out.logits.sum() + (out.features[0] * out.features[1]).mean()).backward()
    unused = [n for n, p in net.named_parameters() if p.requires_grad and p.grad is None]
    assert unused == []  # DDP with find_unused_parameters=False
    shared = {p.data_ptr() for p in net.branches[0].parameters()} & {
        p.data_ptr() for p in net.branches[1].parameters()
    }
    assert not shared


def test_googlenet_cut_keeps_the_input_transform_and_drops_the_auxiliary_heads() -> None:
    model = models.googlenet(num_classes=10, aux_logits=True, transform_input=True, init_weights=False)
    x = torch.rand(2, 3, 32, 32)
    expected, _ = own_maps(model.eval(), x)
    model.train()  # the auxiliary heads run in training only
    model.inception4a.eval()  # mixed flags survive the tracing, which switches the whole model
    cut = cut_backbone(model)
    assert model.training
    assert not model.inception4a.training
    assert model.inception4b.training
    assert not any("aux" in n for n, _ in cut.features.named_parameters())
    body = cut.features.body
    assert body.training
    assert body.graph is body.train_graph  # the probe's eval graph is not left behind
    assert type(body.inception4a) is type(model.inception4a)  # the model's blocks, so hooks on them fire
    assert not body.inception4a.training
    cut.features.eval()
    assert body.graph is body.eval_graph
    with torch.no_grad():
        assert_same_maps(cut.features(x), expected)
    # the transform is applied: without it the maps differ
    model.eval().transform_input = False
    untransformed = own_maps(model, x)[0]
    assert float((untransformed - expected).abs().max()) > 1e-2 * float(expected.abs().max())


def test_graph_cut_deep_copy_keeps_training_flags() -> None:
    model = build("googlenet").eval()
    x = torch.randn(2, 3, 32, 32)
    features = cut_backbone(model).features
    features.body.inception3a.train()  # mixed flags
    clone = copy.deepcopy(features)
    assert [m.training for _, m in sorted(clone.named_modules(), key=lambda item: item[0])] == [
        m.training for _, m in sorted(features.named_modules(), key=lambda item: item[0])
    ]
    assert clone.body.graph is clone.body.eval_graph
    features.body.inception3a.eval()
    clone.body.inception3a.eval()
    with torch.no_grad():
        torch.testing.assert_close(clone(x), features(x))
    assert_same_maps(clone(x), own_maps(model, x)[0])


def test_swin_cut_permutes_channels_last_maps() -> None:
    model = build("swin_t").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        channels_last = model.norm(model.features(x))  # (B, h, w, C): what Swin pools after its permute
        features = cut_backbone(model).features(x)
    assert channels_last.shape == (1, 2, 2, 768)
    torch.testing.assert_close(features, channels_last.permute(0, 3, 1, 2))


def test_maxvit_is_probed_at_its_input_size() -> None:
    model = build("maxvit_t")
    with pytest.raises(RuntimeError):
        model.eval()(torch.zeros(1, 3, 64, 64))  # a fixed 64 x 64 probe fails on MaxViT
    assert cut_backbone(model).num_features == 512


def test_layer_option_cuts_at_a_named_node() -> None:
    model = models.resnet18(num_classes=3).eval()
    x = torch.randn(2, 3, 32, 32)
    seen, handle = _capture(model.layer3, pre=False)
    with torch.no_grad():
        model(x)
    handle.remove()
    flags = [m.training for m in model.modules()]
    cut = cut_backbone(model, layer="layer3")
    assert cut.kind == "layer"
    assert cut.num_features == 256
    assert [m.training for m in model.modules()] == flags
    assert not any(n.startswith("body.layer4") for n, _ in cut.features.named_parameters())
    with torch.no_grad():
        torch.testing.assert_close(cut.features(x), seen[0])
    shared = {p.data_ptr() for p in model.parameters()} & {p.data_ptr() for p in cut.features.parameters()}
    assert not shared


def test_layer_option_on_a_module_the_table_does_not_know() -> None:
    trunk = nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    cut = cut_backbone(trunk, layer="1")
    x = torch.randn(2, 3, 10, 10)
    torch.testing.assert_close(cut.features(x), trunk[1](trunk[0](x)))


def test_layer_option_errors() -> None:
    model = models.resnet18(num_classes=3)
    with pytest.raises(TypeError, match=r"`layer` must be a str or None, got int"):
        cut_backbone(model, layer=3)  # type: ignore[arg-type]
    with pytest.raises(
        ValueError, match=r"could not cut `model` \(ResNet\) at `layer='layer9'` with torchvision"
    ):
        cut_backbone(model, layer="layer9")
    with pytest.raises(
        ValueError,
        match=r"`model` \(ResNet, at `layer='fc'`\) must return \(B, C, H, W\) features, got \(1, 3\)",
    ):
        cut_backbone(model, layer="fc")
    assert isinstance(model.fc, nn.Linear)


TIMM_FAMILIES = {  # timm name -> extra constructor arguments (small members, random init)
    "resnet18": {},
    "efficientnet_b0": {},
    "convnext_atto": {},
    "mobilenetv3_small_050": {},
    "regnetx_002": {},
}


@pytest.mark.parametrize("name", list(TIMM_FAMILIES))
def test_common_timm_families_cut_through_forward_features(name: str) -> None:
    timm = pytest.importorskip("timm")
    model = timm.create_model(name, pretrained=False, num_classes=3, **TIMM_FAMILIES[name]).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model.forward_features(x)
    cut = cut_backbone(model)
    assert cut.num_features == model.num_features == expected.shape[1]
    with torch.no_grad():
        torch.testing.assert_close(cut.features(x), expected)


def test_timm_swin_channels_last_features_are_permuted() -> None:
    timm = pytest.importorskip("timm")
    model = timm.create_model(
        "swin_tiny_patch4_window7_224",
        pretrained=False,
        num_classes=3,
        embed_dim=24,
        depths=(1, 1, 1, 1),
        num_heads=(1, 1, 1, 1),
        img_size=64,
        window_size=2,
    ).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model.forward_features(x)  # (B, h, w, C)
    cut = cut_backbone(model)
    assert expected.shape == (2, 2, 2, 192)
    assert cut.num_features == 192
    with torch.no_grad():
        torch.testing.assert_close(cut.features(x), expected.permute(0, 3, 1, 2))


def test_timm_deit_is_refused_with_the_token_note() -> None:
    timm = pytest.importorskip("timm")
    model = timm.create_model("deit_tiny_patch16_224", pretrained=False, num_classes=3, depth=1)
    with pytest.raises(ValueError, match=r"got \(1, 197, 192\) for a \(1, 3, 224, 224\) input.*tokens"):
        cut_backbone(model)
