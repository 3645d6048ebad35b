from __future__ import annotations

import pytest
import torch
from torch import nn

from hiercam import SmallConvNet, group_classes


@pytest.mark.parametrize("norm", ["batch", "group"])
@pytest.mark.parametrize(("size", "expected"), [((96, 96), (12, 12)), ((50, 41), (7, 6)), ((8, 8), (1, 1))])
def test_feature_maps_have_stride_8_and_announced_channels(norm: str, size: tuple, expected: tuple) -> None:
    net = SmallConvNet(width=6, norm=norm).eval()
    out = net(torch.rand(2, 3, *size))
    assert out.shape == (2, net.out_channels, *expected)
    assert net.out_channels == 24
    assert bool((out >= 0).all())  # ends with a ReLU: non-negative maps, as CAM engines expect


def test_default_is_width_16_with_batchnorm_and_no_classifier() -> None:
    net = SmallConvNet()
    assert isinstance(net, SmallConvNet)
    assert net.out_channels == 64
    assert not any(isinstance(m, nn.Linear) for m in net.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in net.modules()) == 5
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [16, 32, 32, 64, 64]
    assert [c.stride[0] for c in convs] == [2, 2, 1, 2, 1]


def test_group_norm_processes_every_image_independently_and_ignores_mode() -> None:
    net = SmallConvNet(width=4, norm="group")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    images = torch.rand(5, 3, 32, 32)
    batch = net.train()(images)
    torch.testing.assert_close(net.eval()(images), batch)
    torch.testing.assert_close(net(images[2:3]), batch[2:3], rtol=1e-5, atol=1e-6)


def test_batch_norm_in_eval_mode_is_batch_independent() -> None:
    net = SmallConvNet(width=4)
    net.train()(torch.rand(8, 3, 32, 32))  # update running statistics
    net.eval()
    images = torch.rand(4, 3, 32, 32)
    torch.testing.assert_close(net(images[1:2]), net(images)[1:2], rtol=1e-5, atol=1e-6)


def test_in_channels_gradients_and_float64() -> None:
    net = SmallConvNet(width=2, in_channels=1).double()
    images = torch.rand(3, 1, 24, 24, dtype=torch.float64, requires_grad=True)
    net(images).sum().backward()
    assert images.grad is not None
    assert bool(images.grad.abs().sum() > 0)
    assert all(p.grad is not None for p in net.parameters())


def test_works_as_backbone_of_a_classifier_whose_class_vectors_can_be_grouped() -> None:
    backbone = SmallConvNet(width=4)
    model = nn.Sequential(
        backbone, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(backbone.out_channels, 10)
    )
    assert model.eval()(torch.rand(2, 3, 40, 40)).shape == (2, 10)
    assert group_classes(model, levels=(4, 2)).level_sizes == (10, 4, 2)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"width": 0}, ValueError, "`width` must be >= 1, got 0"),
        ({"width": 2.5}, TypeError, "`width` must be an int, got float"),
        ({"in_channels": 0}, ValueError, "`in_channels` must be >= 1"),
        ({"norm": "layer"}, ValueError, "`norm` must be one of 'batch', 'group', got 'layer'"),
    ],
)
def test_bad_arguments(kwargs: dict, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        SmallConvNet(**kwargs)
