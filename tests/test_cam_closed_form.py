"""The closed form is used only where it is exact (issue 15, item 2).

A non-linearity, a scale or a second pool between the target layer and the global-average-pool + linear head
sends the engine to the general path.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

import hiercam
from hiercam.cam import BaseCAM


class Scale(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2.0 * x


def toy(between: nn.Module, channels: int = 6, num_classes: int = 4) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, channels, 3, padding=1),  # "0": the target layer, outputs of both signs
        between,
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(channels, num_classes),
    ).eval()


BETWEEN: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "scale": Scale,
    "max_pool": lambda: nn.MaxPool2d(2),
    "avg_pool_not_tiling": lambda: nn.AvgPool2d(2),  # 7 x 7 features: the last row and column are dropped
}


@pytest.mark.parametrize("method", [hiercam.GradCAM, hiercam.HiResCAM], ids=lambda m: m.__name__)
@pytest.mark.parametrize("between", list(BETWEEN))
def test_anything_between_layer_and_head_uses_the_general_path(between: str, method: type[BaseCAM]) -> None:
    model = toy(BETWEEN[between]())
    batches = [torch.randn(2, 3, 7, 7), torch.randn(3, 3, 7, 7) * 3]
    cam = method(model, "0")
    general = method(model, "0", closed_form=False)
    for images in batches:
        got = cam(images, normalize=None, size="feature")
        expected = general(images, normalize=None, size="feature")
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * expected.abs().amax().item())
        assert "closed_form=general" in repr(cam)
    with pytest.raises(ValueError, match="CAM needs the target layer to feed a global average pool"):
        hiercam.CAM(model, "0")(batches[0])


def test_an_average_pool_that_tiles_the_map_is_exact_and_verified() -> None:
    model = toy(nn.AvgPool2d(2))
    images = torch.randn(2, 3, 8, 8)
    cam = hiercam.GradCAM(model, "0")
    cam(images)
    assert "closed_form=verified" in repr(cam)
    expected = hiercam.GradCAM(model, "0", closed_form=False)(images, normalize=None, size="feature")
    got = cam(images, normalize=None, size="feature")
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * expected.abs().amax().item())
    # another input size is verified again: at 7 x 7 the pool no longer tiles the map
    odd = torch.randn(2, 3, 7, 7)
    expected_odd = hiercam.GradCAM(model, "0", closed_form=False)(odd, normalize=None, size="feature")
    torch.testing.assert_close(cam(odd, normalize=None, size="feature"), expected_odd)
    assert "closed_form=general" in repr(cam)


def test_a_relu_that_is_the_identity_on_the_first_batch_does_not_fool_the_verification() -> None:
    """The first batch has only positive activations (the ReLU passes everything, the gradients equal W / hw,
    the logits equal W mean(A) + b); the second has tiny negative values in one channel, too small for the
    logits check but halving that channel's Grad-CAM weight."""
    conv = nn.Conv2d(3, 2, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.eye(3)[:2, :, None, None])  # A = the first two image channels
    fc = nn.Linear(2, 2)
    with torch.no_grad():
        fc.weight.copy_(torch.tensor([[1.0, 1.0], [1.0, -1.0]]))
    model = nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), fc).eval()
    positive = torch.rand(1, 3, 4, 4) + 0.5
    tricky = torch.rand(1, 3, 4, 4) + 0.5
    tricky[0, 1, :, 2:] = -1e-7
    cam = hiercam.GradCAM(model, "0")
    cam(positive)
    got = cam(tricky, normalize=None, size="feature")
    expected = hiercam.GradCAM(model, "0", closed_form=False)(tricky, normalize=None, size="feature")
    torch.testing.assert_close(got, expected)
    assert "closed_form=general" in repr(cam)
