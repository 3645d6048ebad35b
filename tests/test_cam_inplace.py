"""In-place operations after the target layer must not change the maps (issue 15, item 1).

Oracles: the same model with every ``inplace`` flag off (a deep copy), or the tail of the model written out by
hand without in-place ops, with Grad-CAM computed by plain autograd on the value the target layer produced.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision import models

import hiercam


def gradcam_of(features: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Raw Grad-CAM ``(B, K, h, w)`` of every class, one plain backward per class."""
    maps = []
    for k in range(logits.shape[1]):
        (grad,) = torch.autograd.grad(logits[:, k].sum(), features, retain_graph=True)
        maps.append(torch.relu((grad.mean(dim=(2, 3), keepdim=True) * features).sum(1)))
    return torch.stack(maps, 1).detach()


def without_inplace(model: nn.Module) -> nn.Module:
    clone = copy.deepcopy(model)
    for module in clone.modules():
        if hasattr(module, "inplace"):
            module.inplace = False
    return clone


def small_classifier() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        hiercam.SmallConvNet(width=4), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5)
    ).eval()
    for module in model.modules():  # non-trivial running statistics, so that BN outputs have both signs
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return model


@pytest.mark.parametrize("frozen", [False, True])
@pytest.mark.parametrize("layer", ["0.features.4", "0.features.13"])
def test_small_convnet_batchnorm_followed_by_inplace_relu(layer: str, frozen: bool) -> None:
    model = small_classifier()
    model.requires_grad_(not frozen)
    images = torch.randn(3, 3, 32, 32)
    oracle_model = without_inplace(model)
    store: dict[str, torch.Tensor] = {}
    handle = oracle_model.get_submodule(layer).register_forward_hook(
        lambda _m, _i, out: store.__setitem__("a", out)
    )
    with torch.enable_grad():
        inputs = images.clone().requires_grad_()  # a graph even with frozen parameters
        logits = oracle_model(inputs)
    handle.remove()
    expected = gradcam_of(store["a"], logits)
    cam = hiercam.GradCAM(model, layer)
    first = cam(images, normalize=None, size="feature")
    second = cam(images, normalize=None, size="feature")
    scale = expected.abs().amax().item()
    torch.testing.assert_close(first, expected, rtol=1e-5, atol=1e-6 * scale)
    torch.testing.assert_close(second, expected, rtol=1e-5, atol=1e-6 * scale)
    assert sum(len(m._forward_hooks) for m in model.modules()) == 0


def test_resnet_bn2_followed_by_inplace_add_and_relu() -> None:
    torch.manual_seed(0)
    model = models.resnet18(num_classes=4).eval()
    images = torch.randn(2, 3, 64, 64)
    # the oracle: the last block written out by hand, nothing in place
    with torch.enable_grad():
        x = model.layer4[0](
            model.layer3(
                model.layer2(model.layer1(model.maxpool(model.relu(model.bn1(model.conv1(images))))))
            )
        )
        block = model.layer4[1]
        bn2 = block.bn2(block.conv2(F.relu(block.bn1(block.conv1(x)))))
        logits = model.fc(torch.flatten(model.avgpool(F.relu(bn2 + x)), 1))
    expected = gradcam_of(bn2, logits)
    for closed_form in (True, False):
        cam = hiercam.GradCAM(model, "layer4.1.bn2", closed_form=closed_form)
        for _ in range(2):
            got = cam(images, normalize=None, size="feature")
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6 * expected.abs().amax().item())
        assert "closed_form=verified" not in repr(cam)


def test_densenet_features_followed_by_functional_inplace_relu() -> None:
    torch.manual_seed(0)
    model = models.densenet121(num_classes=3).eval()
    images = torch.randn(1, 3, 64, 64)
    with torch.enable_grad():
        features = model.features(images)
        logits = model.classifier(torch.flatten(F.adaptive_avg_pool2d(F.relu(features), 1), 1))
    expected = gradcam_of(features, logits)
    got = hiercam.GradCAM(model, "features")(images, normalize=None, size="feature")
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6 * expected.abs().amax().item())


def test_the_copy_costs_one_extra_forward_once_and_nothing_without_inplace_ops() -> None:
    model = small_classifier()
    forwards: list[int] = []
    handle = model.register_forward_pre_hook(lambda _m, _i: forwards.append(1))
    try:
        images = torch.randn(2, 3, 32, 32)
        aliased = hiercam.GradCAM(model, "0.features.4", closed_form=False)
        aliased(images)
        assert len(forwards) == 2  # the in-place ReLU is seen, the forward runs again with a copy
        aliased(images)
        assert len(forwards) == 3  # later calls copy from the start: one forward
        forwards.clear()
        plain = hiercam.GradCAM(model, "0", closed_form=False)  # the last ReLU's output: nothing follows
        plain(images)
        plain(images)
        assert len(forwards) == 2
    finally:
        handle.remove()
