"""Grad-CAM of a TwoBranchNet: the mean of the branch maps (paper section 3.4.2)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.models import resnet18

import hiercam


def small_backbone() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 12, 3, stride=2, padding=1), nn.ReLU()
    )


@pytest.fixture
def net() -> hiercam.TwoBranchNet:
    torch.manual_seed(0)
    return hiercam.TwoBranchNet(small_backbone, num_classes=4).eval()


def naive_branch_gradcam(branch: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Grad-CAM of one branch used alone, written out: all classes, ReLU, bilinear to the input, max-norm."""
    features = branch.features(images)
    logits = branch.classifier(features.mean(dim=(2, 3)))
    maps = []
    for k in range(logits.shape[1]):
        (grad,) = torch.autograd.grad(logits[:, k].sum(), features, retain_graph=True)
        maps.append(torch.relu((grad.mean(dim=(2, 3), keepdim=True) * features).sum(1)))
    stacked = torch.nn.functional.interpolate(
        torch.stack(maps, 1).detach(), size=images.shape[-2:], mode="bilinear", align_corners=False
    )
    return hiercam.normalize_maps(stacked)


@pytest.mark.parametrize("closed_form", [True, False])
def test_two_branch_cam_is_the_mean_of_the_branch_maps(net: hiercam.TwoBranchNet, closed_form: bool) -> None:
    images = torch.randn(3, 3, 16, 16)
    cam = hiercam.GradCAM(net, closed_form=closed_form)
    first = cam(images)
    second = cam(images)  # closed form, once verified
    branches = [naive_branch_gradcam(branch, images) for branch in net.branches]
    expected = hiercam.normalize_maps((branches[0] + branches[1]) / 2)
    torch.testing.assert_close(first, expected)
    torch.testing.assert_close(second, expected, rtol=1e-5, atol=1e-5)
    assert cam.branch_maps is not None
    assert cam.branch_maps.shape == (2, 3, 4, 16, 16)
    torch.testing.assert_close(cam.branch_maps, torch.stack(branches), rtol=1e-5, atol=1e-5)
    assert cam.logits is not None
    torch.testing.assert_close(cam.logits, net(images).mean_logits)
    expected_state = "verified, verified" if closed_form else "off"
    assert expected_state in repr(cam)


def test_each_branch_is_an_ordinary_classifier_for_cams(net: hiercam.TwoBranchNet) -> None:
    images = torch.randn(2, 3, 16, 16)
    cam = hiercam.GradCAM(net)
    cam(images, [1, 3])
    assert cam.branch_maps is not None
    for index, branch in enumerate(net.branches):
        alone = hiercam.GradCAM(branch, "features")(images, [1, 3])
        torch.testing.assert_close(cam.branch_maps[index], alone)


def test_masks_and_inner_target_layers() -> None:
    torch.manual_seed(0)
    net = hiercam.TwoBranchNet(resnet18(), num_classes=3).eval()
    images = torch.randn(2, 3, 64, 64)
    mask = torch.tensor([[1, 0, 1], [0, 1, 0]])
    masked = hiercam.GradCAM(net)(images, mask)
    full = hiercam.GradCAM(net)(images)
    torch.testing.assert_close(masked, full * mask[:, :, None, None])
    inner = hiercam.GradCAM(net, "features.layer3")  # not GAP + linear
    inner(images)
    assert (
        "target_layer='branches.0.features.layer3', 'branches.1.features.layer3', closed_form=general"
        in repr(inner)
    )


def test_max_pooled_branches_use_the_general_path() -> None:
    torch.manual_seed(0)
    net = hiercam.TwoBranchNet(small_backbone, num_classes=2, pool="max").eval()
    cam = hiercam.GradCAM(net)
    cam(torch.randn(2, 3, 16, 16))
    assert "closed_form=general, general" in repr(cam)


def test_two_branch_errors(net: hiercam.TwoBranchNet) -> None:
    with pytest.raises(ValueError, match=r"`classifier` is not used with a multi-head model \(TwoBranchNet"):
        hiercam.GradCAM(net, classifier="branches.0.classifier")
    with pytest.raises(TypeError, match=r"`target_layer` of a multi-head model \(TwoBranchNet\)"):
        hiercam.GradCAM(net, net.branches[0].features)
    with pytest.raises(ValueError, match="`target_layer` 'features.9' is not a submodule of Branch"):
        hiercam.GradCAM(net, "features.9")
