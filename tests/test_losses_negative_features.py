"""The orthogonal loss on features that can be negative (backbones whose last block has no ReLU)."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from hiercam import OrthogonalLoss, TwoBranchLoss, TwoBranchNet, orthogonal_loss

pytestmark = pytest.mark.usefixtures("one_thread")

NEGATIVE = "features hold negative values.*rectify=True"


def no_relu_backbone() -> nn.Sequential:
    """A tiny conv net whose features are signed, like ConvNeXt's (normalisation, then a conv, no ReLU)."""
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.Conv2d(8, 8, 3, padding=1))


def test_hand_computed_rectified_and_raw_values() -> None:
    f1 = torch.tensor([[1.0, -2.0, 3.0]])
    f2 = torch.tensor([[-1.0, 4.0, 2.0]])
    # raw: 1 * -1 + -2 * 4 + 3 * 2 = -3; rectified: [1, 0, 3] . [0, 4, 2] = 6
    assert float(orthogonal_loss(f1, f2, rectify=False)) == -3.0
    assert float(orthogonal_loss(f1, f2, rectify=True)) == 6.0
    # unit_norm after the ReLU: 6 / (sqrt(10) * sqrt(20))
    cosine = orthogonal_loss(f1, f2, rectify=True, unit_norm=True)
    assert float(cosine) == pytest.approx(6 / (10**0.5 * 20**0.5))
    # spatial: channel means of ReLU(f) over C = 2 channels of a 1 x 2 map
    g1 = torch.tensor([[[[1.0, -1.0]], [[-3.0, 1.0]]]])  # ReLU -> means [0.5, 0.5]
    g2 = torch.tensor([[[[2.0, 0.0]], [[-2.0, -2.0]]]])  # ReLU -> means [1.0, 0.0]
    spatial = orthogonal_loss(g1, g2, mode="spatial", rectify=True)
    assert float(spatial) == pytest.approx(0.5 / (0.5**0.5 * 1.0))  # cos([.5, .5], [1, 0])
    raw = orthogonal_loss(g1, g2, mode="spatial", rectify=False)  # means [-1, 0] and [0, -1]: cosine 0
    assert float(raw) == pytest.approx(0.0)


def test_default_warns_on_negative_features_only() -> None:
    g = torch.Generator().manual_seed(0)
    signed = torch.randn(2, 4, 3, 3, generator=g), torch.randn(2, 4, 3, 3, generator=g)
    with pytest.warns(UserWarning, match=NEGATIVE):
        orthogonal_loss(*signed)
    with pytest.warns(UserWarning, match=NEGATIVE):
        orthogonal_loss(*signed, mode="spatial")
    with pytest.warns(UserWarning, match=NEGATIVE):
        OrthogonalLoss(reduction="batchmean", unit_norm=True)(*signed)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        orthogonal_loss(signed[0].relu(), signed[1].relu())  # post-ReLU features: the paper's case
        orthogonal_loss(*signed, rectify=False)  # the caller asked for the raw product
        orthogonal_loss(*signed, rectify=True)
        weights = (torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g))
        orthogonal_loss(*signed, mode="cam", classifier_weights=weights, labels=torch.ones(2, 3))


def test_rectify_is_checked() -> None:
    f = torch.rand(2, 3, 4, 4)
    with pytest.raises(TypeError, match="`rectify` must be a bool or None, got int"):
        orthogonal_loss(f, f, rectify=1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="`rectify` must be a bool or None, got str"):
        OrthogonalLoss(rectify="relu")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`rectify=True` applies to mode='feature' and 'spatial'"):
        TwoBranchLoss(mode="cam", heads=(nn.Linear(3, 2), nn.Linear(3, 2)), rectify=True)
    assert "rectify=True" in repr(TwoBranchLoss(rectify=True))


@pytest.mark.parametrize("mode", ["feature", "spatial"])
def test_rectified_gradients_are_exact(mode: str) -> None:
    g = torch.Generator().manual_seed(3)
    f1 = torch.randn(2, 3, 2, 2, generator=g, dtype=torch.float64, requires_grad=True)
    f2 = torch.randn(2, 3, 2, 2, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: orthogonal_loss(a, b, mode=mode, rectify=True), (f1, f2))


def train_two_branch(rectify: bool | None, steps: int = 6) -> list[tuple[float, float, float]]:
    """(orthogonal, total, bce_1 + bce_2) at each SGD step of a two-branch net on a non-ReLU backbone."""
    torch.manual_seed(0)
    net = TwoBranchNet(no_relu_backbone, num_classes=3)
    g = torch.Generator().manual_seed(1)
    images = torch.randn(4, 3, 8, 8, generator=g)
    labels = (torch.rand(4, 3, generator=g) < 0.5).float()
    criterion = TwoBranchLoss(weight=1e-2, rectify=rectify)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05)
    seen = []
    for _ in range(steps):
        output = net(images)
        parts = criterion(output, labels)
        values = [float(part.detach()) for part in parts]
        if rectify:  # oracle: the naive sum of ReLU(f1) * ReLU(f2)
            f1, f2 = (f.detach().double().clamp_min(0) for f in output.features)
            assert values[3] == pytest.approx(float((f1 * f2).sum()), rel=1e-5)
        optimizer.zero_grad()
        parts.total.backward()
        optimizer.step()
        seen.append((values[3], values[0], values[1] + values[2]))
    return seen


def test_rectified_loss_stays_bounded_below_on_a_non_relu_backbone() -> None:
    raw = train_two_branch(rectify=False)
    # the failure the option fixes: the raw sum falls without bound, and the total loss below zero
    assert raw[-1][0] < -1000
    assert raw[-1][0] < 10 * raw[0][0]
    assert raw[-1][1] < 0
    rectified = train_two_branch(rectify=True)
    for orthogonal, total, bce in rectified:
        assert orthogonal >= 0
        assert total >= bce
    assert rectified[-1][0] < rectified[0][0]  # minimised towards 0, not below it


def test_default_warns_on_a_non_relu_backbone_and_trains_like_raw() -> None:
    with pytest.warns(UserWarning, match=NEGATIVE):
        default = train_two_branch(rectify=None, steps=2)
    assert default == train_two_branch(rectify=False, steps=2)


def test_convnext_features_are_negative_and_the_default_warns() -> None:
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    features = torchvision.models.convnext_tiny(weights=None).features.eval()
    with torch.no_grad():
        f1, f2 = features(torch.randn(2, 3, 32, 32)).chunk(2)  # (1, 768, 1, 1) each
    assert (f1 < 0).float().mean() > 0.2
    with pytest.warns(UserWarning, match=NEGATIVE):
        orthogonal_loss(f1, f2)
    assert float(orthogonal_loss(f1, f2, rectify=True)) >= 0
    assert float(orthogonal_loss(f1, f2, rectify=True, unit_norm=True)) >= 0
