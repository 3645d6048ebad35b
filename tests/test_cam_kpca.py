"""KPCACAM and kernel_principal_component_maps: scikit-learn's KernelPCA (through pytorch-grad-cam) as oracle.

pytorch-grad-cam's ``KPCA_CAM`` centres the positions and runs ``KernelPCA(n_components=1)`` per image.
scikit-learn orients the eigenvector so that its entry of largest magnitude is positive; hiercam orients it
as EigenCAM's axis (non-negative correlation with the sum over channels). The projections agree up to that
sign, the maps wherever the signs agree.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from cam_test_helpers import activation_of, pearson
from torch import Tensor, nn
from torchvision import models

import hiercam
from hiercam.cam import KPCACAM, kernel_principal_component_maps

pgc = pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection_kernel  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

KERNELS = ["sigmoid", "rbf", "poly", "linear", "cosine"]


def full_res_net(num_classes: int = 4) -> nn.Module:
    """Target layer "3": 8 channels at the input's resolution (16 x 16 = 256 positions: sklearn's ARPACK)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(6, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, num_classes),
    ).eval()


def sklearn_projection(activations: Tensor, kernel: str, gamma: float | None = None) -> Tensor:
    return torch.from_numpy(get_2d_projection_kernel(activations.numpy(), kernel, gamma))


def assert_equal_up_to_sign(ours: Tensor, theirs: Tensor, atol: float) -> Tensor:
    """Each map equal to the oracle's or its negative; returns where the signs agree."""
    sign = torch.where((ours * theirs).sum(dim=(-2, -1)) >= 0, 1.0, -1.0)
    torch.testing.assert_close(ours, sign[..., None, None] * theirs, rtol=0, atol=atol)
    return sign > 0


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("size", [(5, 7), (16, 16)], ids=["dense", "arpack"])
def test_projection_equals_kernel_pca_up_to_the_sign(kernel: str, size: tuple[int, int]) -> None:
    activations = torch.randn(3, 12, *size, generator=torch.Generator().manual_seed(1)).relu()
    ours = kernel_principal_component_maps(activations, kernel)  # type: ignore[arg-type]
    theirs = sklearn_projection(activations, kernel)
    scale = float(theirs.abs().max())
    assert_equal_up_to_sign(ours, theirs, atol=1e-4 * scale)


@pytest.mark.parametrize("gamma", [0.01, 0.5])
def test_gamma_is_the_kernel_coefficient(gamma: float) -> None:
    activations = torch.randn(2, 6, 4, 5, generator=torch.Generator().manual_seed(2)).relu()
    for kernel in ("sigmoid", "rbf", "poly"):
        ours = kernel_principal_component_maps(activations, kernel, gamma)  # type: ignore[arg-type]
        theirs = sklearn_projection(activations, kernel, gamma)
        assert_equal_up_to_sign(ours, theirs, atol=1e-4 * float(theirs.abs().max()))


def test_linear_kernel_is_eigencam() -> None:
    activations = torch.randn(4, 16, 5, 7, generator=torch.Generator().manual_seed(3)).relu()
    torch.testing.assert_close(
        kernel_principal_component_maps(activations, "linear"),
        hiercam.principal_component_maps(activations),
        rtol=0,
        atol=1e-4,
    )
    model = full_res_net()
    images = torch.randn(2, 3, 12, 12)
    torch.testing.assert_close(
        KPCACAM(model, "3", kernel="linear")(images),
        hiercam.EigenCAM(model, "3")(images),
        rtol=0,
        atol=1e-4,
    )


def test_orientation_correlates_with_the_channel_sum() -> None:
    activations = torch.randn(6, 8, 4, 4, generator=torch.Generator().manual_seed(4)).relu()
    projection = kernel_principal_component_maps(activations)
    summed = activations.sum(dim=1)
    summed = summed - summed.mean(dim=(-2, -1), keepdim=True)
    assert bool(((projection * summed).sum(dim=(-2, -1)) >= 0).all())


def test_zero_channel_sums_orient_as_eigencam() -> None:
    """Channels summing to zero at every position (LayerNorm): the linear kernel gives EigenCAM's map."""
    activations = torch.randn(6, 8, 4, 4, generator=torch.Generator().manual_seed(5))
    activations = activations - activations.mean(dim=1, keepdim=True)
    projection = kernel_principal_component_maps(activations, "linear")
    eigen = hiercam.principal_component_maps(activations)
    torch.testing.assert_close(projection, eigen, rtol=1e-4, atol=1e-4)
    flat = projection.flatten(1)
    assert bool((flat.gather(1, flat.abs().argmax(1, keepdim=True)) > 0).all())


def test_leading_dimensions_and_degenerate_maps() -> None:
    activations = torch.randn(2, 3, 5, 4, 4).relu()
    batched = kernel_principal_component_maps(activations, "rbf")
    assert batched.shape == (2, 3, 4, 4)
    torch.testing.assert_close(batched[1, 2], kernel_principal_component_maps(activations[1, 2], "rbf"))
    assert torch.equal(kernel_principal_component_maps(torch.ones(1, 3, 4, 4)), torch.zeros(1, 4, 4))
    assert torch.equal(kernel_principal_component_maps(torch.randn(1, 3, 1, 1)), torch.zeros(1, 1, 1))


AGREEMENT: dict[str, tuple[float, float, int, int]] = {}


@pytest.mark.parametrize("kernel", ["sigmoid", "rbf"])
@pytest.mark.parametrize("which", ["small CNN '3'", "resnet18 layer4", "resnet18 layer3"])
def test_kpcacam_matches_pytorch_grad_cam_up_to_the_sign(
    kernel: str, which: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(6)
    if which.startswith("small"):
        model, layer, images = full_res_net(), "3", torch.randn(4, 3, 16, 16, generator=generator)
    else:
        model = models.resnet18(num_classes=5).eval()
        layer, images = which.split()[1], torch.randn(4, 3, 64, 64, generator=generator)
    ours = KPCACAM(model, layer, kernel=kernel)(images, 0, normalize="minmax")[:, 0]  # type: ignore[arg-type]
    with pgc.KPCA_CAM(model, target_layers=[model.get_submodule(layer)], kernel=kernel) as peer:
        theirs = torch.from_numpy(peer(images, targets=None))
    activation = activation_of(model, layer, images)
    agree = assert_equal_up_to_sign(
        kernel_principal_component_maps(activation, kernel),  # type: ignore[arg-type]
        sklearn_projection(activation, kernel),
        atol=1e-4 * float(sklearn_projection(activation, kernel).abs().max()),
    )
    from hiercam.cam import kpca

    original = kpca.kernel_principal_component_maps
    monkeypatch.setattr(kpca, "kernel_principal_component_maps", lambda *a, **k: -original(*a, **k))
    flipped = KPCACAM(model, layer, kernel=kernel)(images, 0, normalize="minmax")[:, 0]  # type: ignore[arg-type]
    expected = torch.where(agree[:, None, None], ours, flipped)  # hiercam's maps with scikit-learn's signs
    torch.testing.assert_close(expected, theirs, rtol=0, atol=1e-4)
    AGREEMENT[f"{which} {kernel}"] = (
        (expected - theirs).abs().max().item(),
        pearson(expected, theirs),
        int(agree.sum()),
        len(agree),
    )


def test_class_agnostic_masks_and_repr() -> None:
    model = full_res_net()
    images = torch.randn(2, 3, 8, 8)
    cam = KPCACAM(model, "3", kernel="rbf", gamma=0.1)
    maps = cam(images)
    assert maps.shape == (2, 4, 8, 8)
    assert all(torch.equal(maps[:, 0], maps[:, k]) for k in range(4))
    mask = torch.tensor([[1, 0, 0, 1], [0, 0, 0, 0]])
    torch.testing.assert_close(cam(images, mask), maps * mask[:, :, None, None])
    assert repr(cam) == "KPCACAM(target_layer='3', kernel='rbf', gamma=0.1, class_agnostic=True)"
    assert cam.logits is not None
    assert cam.logits.shape == (2, 4)
    assert np.isfinite(maps.numpy()).all()


def test_hooks_and_modes_are_left_as_they_were() -> None:
    model = full_res_net().train()
    images = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        KPCACAM(model, "3")(images)
    assert all(m.training for m in model.modules())
    assert all(not m._forward_hooks for m in model.modules())
    assert all(p.grad is None for p in model.parameters())


def test_bad_options_and_inputs_are_named() -> None:
    model = full_res_net()
    with pytest.raises(ValueError, match="`kernel` must be one of"):
        KPCACAM(model, "3", kernel="laplacian")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`gamma` must be in"):
        KPCACAM(model, "3", gamma=0.0)
    with pytest.raises(TypeError, match="`gamma` must be a float"):
        KPCACAM(model, "3", gamma="0.1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`degree` must be >= 1"):
        KPCACAM(model, "3", degree=0)
    with pytest.raises(TypeError, match="`activations` must be a floating-point tensor"):
        kernel_principal_component_maps(torch.ones(2, 3, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="`activations` must have shape"):
        kernel_principal_component_maps(torch.ones(3, 3))
    broken = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(2))
    broken(torch.randn(1, 3, 8, 8))
    with torch.no_grad():
        broken[0].bias.fill_(float("nan"))
    with pytest.raises(ValueError, match="NaN or infinite"):
        KPCACAM(broken, "0")(torch.randn(1, 3, 8, 8))


def test_print_agreement(capsys: pytest.CaptureFixture[str]) -> None:
    """Not a check: prints the agreement figures gathered above (run with -s to see them)."""
    with capsys.disabled():
        for name, (diff, r, same, total) in AGREEMENT.items():
            print(
                f"\nKPCACAM {name}: max abs diff {diff:.2e}, Pearson r {r:.6f} (with scikit-learn's signs); "
                f"scikit-learn's sign is hiercam's for {same} of {total} maps"
            )
