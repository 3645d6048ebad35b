"""FEM and fem_weights: pytorch-grad-cam's FEM (its NumPy code) and a hand-computed example as oracles."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from cam_test_helpers import activation_of, pearson, small_net
from torch import Tensor, nn
from torchvision import models

import hiercam
from hiercam.cam import FEM, fem_weights

pgc = pytest.importorskip("pytorch_grad_cam")

pytestmark = pytest.mark.usefixtures("one_thread")


def peer_raw(activations: Tensor, k: float = 2.0) -> Tensor:
    """pytorch-grad-cam's FEM.get_cam_image (NumPy) on the same activations: raw maps (B, h, w)."""
    maps = pgc.FEM.get_cam_image(SimpleNamespace(k=k), None, None, None, activations.numpy(), None, False)
    return torch.from_numpy(maps).float()  # its weights are float64 (the mean of a bool array)


def test_weights_by_hand() -> None:
    a = torch.zeros(1, 2, 2, 2)
    a[0, 0, 0, 0] = 4.0  # mean 1, std sqrt(3): 4 > 1 + 1 * 1.73, 0 is not
    a[0, 1] = torch.tensor([[1.0, 2.0], [3.0, 4.0]])  # mean 2.5, std 1.118: only 4 > 3.618
    torch.testing.assert_close(fem_weights(a, k=1.0), torch.tensor([[0.25, 0.25]]))
    torch.testing.assert_close(fem_weights(a, k=-10.0), torch.tensor([[1.0, 1.0]]))
    torch.testing.assert_close(fem_weights(a, k=2.0), torch.tensor([[0.0, 0.0]]))  # z <= sqrt(4 - 1)


@pytest.mark.parametrize("k", [0.0, 1.0, 2.0])
def test_raw_maps_equal_pytorch_grad_cam(k: float) -> None:
    activations = torch.randn(3, 10, 6, 5, generator=torch.Generator().manual_seed(1)).relu()
    weights = fem_weights(activations, k)
    ours = (weights[..., None, None] * activations).sum(dim=1)
    torch.testing.assert_close(ours, peer_raw(activations, k), rtol=1e-5, atol=1e-5)


AGREEMENT: dict[str, tuple[float, float]] = {}


@pytest.mark.parametrize("which", ["small CNN '3'", "resnet18 layer4", "resnet18 layer3"])
def test_fem_matches_pytorch_grad_cam(which: str) -> None:
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(2)
    if which.startswith("small"):
        model, layer, images = small_net(), "3", torch.randn(3, 3, 16, 16, generator=generator)
    else:
        model = models.resnet18(num_classes=5).eval()
        layer, images = which.split()[1], torch.randn(3, 3, 64, 64, generator=generator)
    # ResNet-18's layer4 has 2 x 2 positions at 64 x 64: no value of 4 lies 2 std above their mean (the
    # largest z-score of n values is sqrt(n - 1)), so k = 2 gives zero maps there; k = 1 does not
    k = 1.0 if layer == "layer4" else 2.0
    ours = FEM(model, layer, k=k)(images, [0, 2], normalize="minmax")
    assert ours.amax() == 1
    with pgc.FEM(model, target_layers=[model.get_submodule(layer)], k=k) as peer:
        theirs = torch.from_numpy(peer(images, targets=None))
    assert torch.equal(ours[:, 0], ours[:, 1])
    AGREEMENT[which] = ((ours[:, 0] - theirs).abs().max().item(), pearson(ours[:, 0], theirs))
    torch.testing.assert_close(ours[:, 0], theirs, rtol=0, atol=1e-5)
    raw = FEM(model, layer, k=k)(images, 0, size="feature", normalize=None)[:, 0]
    expected = peer_raw(activation_of(model, layer, images), k).relu()
    torch.testing.assert_close(raw, expected, rtol=1e-5, atol=1e-5)


def test_eigen_smooth_is_the_projection_of_the_weighted_activations() -> None:
    model = small_net()
    images = torch.randn(2, 3, 16, 16)
    activations = activation_of(model, "3", images)
    terms = fem_weights(activations, 1.0)[:, None, :, None, None] * activations[:, None]
    expected = hiercam.principal_component_maps(terms).relu()
    ours = FEM(model, "3", k=1.0, eigen_smooth=True)(images, [0, 1, 3], size="feature", normalize=None)
    torch.testing.assert_close(ours, expected.expand(-1, 3, -1, -1), rtol=1e-4, atol=1e-5)


def test_class_agnostic_masks_two_branches_and_repr() -> None:
    model = small_net()
    images = torch.randn(2, 3, 16, 16)
    cam = FEM(model, "3", k=1.5)
    maps = cam(images)
    assert maps.shape == (2, 4, 16, 16)
    mask = torch.tensor([[1, 0, 0, 1], [0, 0, 0, 0]])
    torch.testing.assert_close(cam(images, mask), maps * mask[:, :, None, None])
    assert repr(cam) == "FEM(target_layer='3', k=1.5, class_agnostic=True)"
    torch.manual_seed(0)
    two = hiercam.TwoBranchNet(lambda: nn.Conv2d(3, 4, 3), num_classes=3).eval()
    fem = FEM(two)
    averaged = fem(torch.randn(2, 3, 10, 10))
    assert fem.branch_maps is not None
    torch.testing.assert_close(averaged, hiercam.average_branch_maps(fem.branch_maps))


def test_model_left_as_it_was() -> None:
    model = small_net().train()
    images = torch.randn(2, 3, 16, 16)
    before = images.clone()
    with torch.inference_mode():
        FEM(model, "3")(images)
    assert all(m.training for m in model.modules())
    assert all(not m._forward_hooks for m in model.modules())
    assert torch.equal(images, before)


def test_bad_options_and_inputs_are_named() -> None:
    model = small_net()
    with pytest.raises(TypeError, match="`k` must be a float"):
        FEM(model, "3", k="2")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`k` must be finite"):
        FEM(model, "3", k=float("inf"))
    with pytest.raises(ValueError, match=r"`activations` must have shape \(B, C, h, w\)"):
        fem_weights(torch.ones(2, 3, 3))
    with pytest.raises(TypeError, match="`activations` must be a floating-point tensor"):
        fem_weights(torch.ones(1, 2, 3, 3, dtype=torch.int64))
    broken = small_net()
    with torch.no_grad():
        broken[2].bias.fill_(float("inf"))
    with pytest.raises(ValueError, match="NaN or infinite"):
        FEM(broken, "2")(torch.randn(1, 3, 16, 16))
    assert np.isfinite(FEM(model, "3")(torch.zeros(1, 3, 16, 16)).numpy()).all()


def test_print_agreement(capsys: pytest.CaptureFixture[str]) -> None:
    """Not a check: prints the agreement figures gathered above (run with -s to see them)."""
    with capsys.disabled():
        for name, (diff, r) in AGREEMENT.items():
            print(f"\nFEM {name}: max abs diff {diff:.2e}, Pearson r {r:.6f}")
