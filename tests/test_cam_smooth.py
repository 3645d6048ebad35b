"""SmoothGradCAMPlusPlus: a naive reference and torchcam's SmoothGradCAMpp, fed the same noise, as oracles.

torchcam 0.5's ``SmoothGradCAMpp`` documents ``alpha = D2 / (2 D2 + sum_hw(A) D3)`` and
``w = sum_hw(alpha ReLU(dY/dA))`` with ``Dp`` the mean of the p-th power of the gradients over the noisy
copies. Its code departs from that in three ways, each reproduced exactly here by
``naive(..., as_torchcam=True)``:

1. the map is taken on the activation of the *last noisy copy*: its forward hook stays enabled during the
   noisy forwards and overwrites the stored activation (the clean one is kept only for alpha);
2. ``ReLU`` is applied to the *last noisy copy's* gradient (``hook_g`` is overwritten), not to the mean
   ``D1``;
3. the ``sum_hw(A) D3`` term is computed as ``sum_hw(A * D3)``.

hiercam follows the documented formula with ``D1`` (the SmoothGrad mean) and the clean activation: the
corrected oracle is ``naive(..., as_torchcam=False)``, and torchcam with deviation 1 undone where 2 and 3
vanish (a target layer followed by global average pooling and a linear layer: constant gradients).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import pytest
import torch
from cam_test_helpers import pearson, strided_net
from torch import Tensor, nn
from torchvision import models

import hiercam
from hiercam.cam import SmoothGradCAMPlusPlus

torchcam_methods = pytest.importorskip("torchcam.methods")
logging.getLogger("torchcam").setLevel(logging.ERROR)
pytestmark = pytest.mark.usefixtures("one_thread")

CLASSES = [1, 3]
STD = 0.3
EPS = 1e-8


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    torch.manual_seed(0)
    return models.resnet18(num_classes=5).eval()


def draws(shape: Sequence[int], count: int, seed: int) -> list[Tensor]:
    """The noise hiercam draws from ``torch.Generator().manual_seed(seed)``: ``randn(shape) * std`` each."""
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(tuple(shape), generator=generator) * STD for _ in range(count)]


def naive(
    model: nn.Module, layer: str, images: Tensor, k: int, noises: list[Tensor], *, as_torchcam: bool
) -> Tensor:
    """One class, one noisy copy, one ``autograd.grad`` at a time; raw maps at the layer's resolution."""
    store: dict[str, Tensor] = {}
    handle = model.get_submodule(layer).register_forward_hook(lambda _m, _i, o: store.__setitem__("a", o))
    try:
        with torch.no_grad():
            model(images)
        clean = store["a"].detach()
        sums = [torch.zeros_like(clean) for _ in range(3)]
        for noise in noises:
            out = model(images + noise)
            (gradient,) = torch.autograd.grad(out[:, k].sum(), store["a"])
            sums = [total + gradient**p for total, p in zip(sums, (1, 2, 3), strict=True)]
            last_activation, last_gradient = store["a"].detach(), gradient
    finally:
        handle.remove()
    first, second, third = (total / len(noises) for total in sums)
    if as_torchcam:
        total = (third * clean).sum(dim=(-2, -1), keepdim=True)
        relu_of, activation = last_gradient, last_activation
    else:
        total = clean.sum(dim=(-2, -1), keepdim=True) * third
        relu_of, activation = first, clean
    alpha = second / (2 * second + total + EPS)
    weights = (alpha * relu_of.relu()).sum(dim=(-2, -1))
    return torch.relu((weights[..., None, None] * activation).sum(dim=1))


class Injected:
    """Stands in for torchcam's noise distribution: hands out the given noise, in order."""

    def __init__(self, noises: list[Tensor]) -> None:
        self.noises = list(noises)

    def sample(self, size: Sequence[int]) -> Tensor:
        noise = self.noises.pop(0)
        assert tuple(noise.shape) == tuple(size)
        return noise


def torchcam_maps(
    model: nn.Module,
    layer: str,
    images: Tensor,
    noises: list[Tensor] | None,
    *,
    restore_activation: bool = False,
    seed: int = 0,
) -> Tensor:
    """torchcam's raw maps ``(B, K', h, w)``; its own global-RNG noise after ``manual_seed(seed)`` if None."""
    maps = []
    for k in CLASSES:
        extractor = torchcam_methods.SmoothGradCAMpp(model, layer, num_samples=4, std=STD)
        if noises is not None:
            extractor._distrib = Injected(noises)
        try:
            model(images)
            clean = [a.clone() for a in extractor.hook_a]
            torch.manual_seed(seed)
            weights = extractor._get_weights(k)
            if restore_activation:  # undo deviation 1: the map on the images' own activation
                extractor.hook_a = clean
            activation = extractor.hook_a[0]
            maps.append(torch.relu(torch.nansum(weights[0][..., None, None] * activation, dim=1)))
        finally:
            extractor.remove_hooks()
    return torch.stack(maps, dim=1).detach()


def ours(model: nn.Module, layer: str, images: Tensor, seed: int = 0, **options: object) -> Tensor:
    cam = SmoothGradCAMPlusPlus(model, layer, generator=torch.Generator().manual_seed(seed), **options)  # type: ignore[arg-type]
    return cam(images, CLASSES, size="feature", normalize=None)


AGREEMENT: dict[str, tuple[float, float]] = {}


def cases(resnet: nn.Module) -> dict[str, tuple[nn.Module, str, Tensor]]:
    generator = torch.Generator().manual_seed(5)
    return {
        "small CNN '1'": (strided_net(), "1", torch.randn(2, 3, 16, 16, generator=generator)),
        "resnet18 layer3": (resnet, "layer3", torch.randn(2, 3, 64, 64, generator=generator)),
        "resnet18 layer4": (resnet, "layer4", torch.randn(2, 3, 64, 64, generator=generator)),
    }


@pytest.mark.parametrize("case", ["small CNN '1'", "resnet18 layer3", "resnet18 layer4"])
def test_equals_the_corrected_naive_reference(case: str, resnet: nn.Module) -> None:
    model, layer, images = cases(resnet)[case]
    noises = draws(images.shape, 4, seed=0)
    expected = torch.stack([naive(model, layer, images, k, noises, as_torchcam=False) for k in CLASSES], 1)
    mine = ours(model, layer, images)
    AGREEMENT[f"{case} vs the corrected reference"] = (
        (mine - expected).abs().max().item(),
        pearson(mine, expected),
    )
    torch.testing.assert_close(mine, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("case", ["small CNN '1'", "resnet18 layer3", "resnet18 layer4"])
def test_torchcam_is_the_naive_reference_with_its_three_deviations(case: str, resnet: nn.Module) -> None:
    model, layer, images = cases(resnet)[case]
    noises = draws(images.shape, 4, seed=0)
    theirs = torchcam_maps(model, layer, images, noises)
    reproduced = torch.stack([naive(model, layer, images, k, noises, as_torchcam=True) for k in CLASSES], 1)
    torch.testing.assert_close(theirs, reproduced, rtol=1e-5, atol=1e-6)
    mine = ours(model, layer, images)
    AGREEMENT[f"{case} vs torchcam"] = ((mine - theirs).abs().max().item(), pearson(mine, theirs))
    assert not torch.allclose(mine, theirs, atol=1e-3)  # the deviations matter


def test_torchcam_with_its_own_seeded_noise_draws_what_a_seeded_generator_draws(resnet: nn.Module) -> None:
    # torchcam samples Normal(0, std) from torch's global generator: after manual_seed(s) that is
    # randn(shape) * std, the noise of hiercam's generator seeded with s
    model, layer, images = cases(resnet)["small CNN '1'"]
    noises = draws(images.shape, 4, seed=7)
    theirs = torchcam_maps(model, layer, images, None, seed=7)
    reproduced = torch.stack([naive(model, layer, images, k, noises, as_torchcam=True) for k in CLASSES], 1)
    torch.testing.assert_close(theirs, reproduced, rtol=1e-5, atol=1e-6)


def test_equals_torchcam_on_its_own_activation_where_the_gradients_are_constant(resnet: nn.Module) -> None:
    # layer4 -> global average pool -> fc: constant gradients, so deviations 2 and 3 vanish; with the
    # images' own activation restored (deviation 1 undone) torchcam gives hiercam's maps
    model, layer, images = cases(resnet)["resnet18 layer4"]
    noises = draws(images.shape, 4, seed=0)
    theirs = torchcam_maps(model, layer, images, noises, restore_activation=True)
    mine = ours(model, layer, images)
    AGREEMENT["resnet18 layer4 vs torchcam, clean activation"] = (
        (mine - theirs).abs().max().item(),
        pearson(mine, theirs),
    )
    torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-5)


def test_every_class_from_the_same_noisy_forwards() -> None:
    model = strided_net()
    images = torch.randn(2, 3, 16, 16)
    calls: list[bool] = []
    handle = model.register_forward_pre_hook(lambda _m, _i: calls.append(torch.is_grad_enabled()))
    try:
        all_maps = SmoothGradCAMPlusPlus(model, "1", generator=torch.Generator().manual_seed(0))(images)
        assert calls == [False] + [True] * 4  # the images under no_grad, then 4 noisy copies
        calls.clear()
        one = SmoothGradCAMPlusPlus(model, "1", generator=torch.Generator().manual_seed(0))(images, 2)
        assert len(calls) == 5
        calls.clear()
        two_layers = SmoothGradCAMPlusPlus(model, ["1", "3"], num_samples=2)(images)
        assert len(calls) == 3  # both layers from the same noisy forwards
    finally:
        handle.remove()
    torch.testing.assert_close(all_maps[:, 2:3], one)
    assert two_layers.shape == (2, 4, 16, 16)


def test_reproducible_with_a_generator_and_the_options_change_the_maps() -> None:
    model = strided_net()
    images = torch.randn(2, 3, 16, 16)
    first = ours(model, "1", images, seed=3)
    torch.testing.assert_close(ours(model, "1", images, seed=3), first, rtol=0, atol=0)
    assert not torch.allclose(ours(model, "1", images, seed=4), first)
    assert not torch.allclose(ours(model, "1", images, seed=3, std=0.05), first)
    noises = draws(images.shape, 2, seed=3)
    expected = torch.stack([naive(model, "1", images, k, noises, as_torchcam=False) for k in CLASSES], 1)
    torch.testing.assert_close(
        ours(model, "1", images, seed=3, num_samples=2), expected, rtol=1e-4, atol=1e-5
    )
    cam = SmoothGradCAMPlusPlus(model, "1", generator=torch.Generator().manual_seed(3))
    assert not torch.allclose(cam(images, CLASSES), cam(images, CLASSES))  # the generator advances


def test_global_generator_when_none_is_given() -> None:
    model = strided_net()
    images = torch.randn(1, 3, 16, 16)
    torch.manual_seed(11)
    first = SmoothGradCAMPlusPlus(model, "1")(images)
    torch.manual_seed(11)
    torch.testing.assert_close(SmoothGradCAMPlusPlus(model, "1")(images), first, rtol=0, atol=0)


def test_targets_per_image_classes_and_top_k_agree_with_classes(resnet: nn.Module) -> None:
    model, layer, images = cases(resnet)["resnet18 layer3"]
    full = ours(model, layer, images)  # classes 1 and 3
    by_target = SmoothGradCAMPlusPlus(model, layer, generator=torch.Generator().manual_seed(0))(
        images, targets=hiercam.ClassifierOutputTarget(3), size="feature", normalize=None
    )
    torch.testing.assert_close(by_target[:, 0], full[:, 1], rtol=1e-4, atol=1e-5)
    per_image = SmoothGradCAMPlusPlus(model, layer, generator=torch.Generator().manual_seed(0))(
        images, torch.tensor([1, 3]), size="feature", normalize=None
    )
    torch.testing.assert_close(per_image[:, 0], torch.stack([full[0, 0], full[1, 1]]), rtol=1e-4, atol=1e-5)
    cam = SmoothGradCAMPlusPlus(model, layer)
    assert cam(images, top_k=2).shape == (2, 2, 64, 64)
    assert cam.classes is not None
    assert cam.classes.shape == (2, 2)


def test_eigen_smooth_is_the_projection_of_the_weighted_activations() -> None:
    model = strided_net()
    images = torch.randn(2, 3, 16, 16)
    smooth = ours(model, "1", images, eigen_smooth=True)
    plain = ours(model, "1", images)
    assert smooth.shape == plain.shape
    assert not torch.allclose(smooth, plain)
    assert (smooth >= 0).all()


MAKERS: list[Callable[[nn.Module], SmoothGradCAMPlusPlus]] = [
    lambda m: SmoothGradCAMPlusPlus(m, "1", num_samples=2),
    lambda m: SmoothGradCAMPlusPlus(m, "1", num_samples=2, eigen_smooth=True),
]


def count_hooks(model: nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules()
    )


def test_model_is_left_as_it_was_and_works_under_no_grad() -> None:
    model = strided_net().train()
    model[0].weight.requires_grad_(False)
    images = torch.randn(2, 3, 16, 16)
    before = images.clone()
    for make in MAKERS:
        with torch.no_grad():
            maps = make(model)(images)
        assert maps.shape == (2, 4, 16, 16)
        assert count_hooks(model) == 0
    assert all(m.training for m in model.modules())
    assert not model[0].weight.requires_grad
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(images, before)


def test_noisy_forwards_run_under_the_callers_autocast() -> None:
    model = strided_net()
    dtypes: list[torch.dtype] = []
    handle = model[-1].register_forward_hook(lambda _m, _i, out: dtypes.append(out.dtype))
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            maps = SmoothGradCAMPlusPlus(model, "1", num_samples=2)(torch.randn(1, 3, 16, 16))
    finally:
        handle.remove()
    assert set(dtypes) == {torch.bfloat16}
    assert maps.dtype == torch.float32


def test_bad_options_are_named() -> None:
    model = strided_net()
    with pytest.raises(ValueError, match="`num_samples` must be >= 1"):
        SmoothGradCAMPlusPlus(model, "1", num_samples=0)
    with pytest.raises(TypeError, match="`num_samples` must be an int"):
        SmoothGradCAMPlusPlus(model, "1", num_samples=2.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`std` must be in"):
        SmoothGradCAMPlusPlus(model, "1", std=0.0)
    with pytest.raises(TypeError, match="`generator` must be a torch.Generator"):
        SmoothGradCAMPlusPlus(model, "1", generator=0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`softmax_over` is not supported"):
        SmoothGradCAMPlusPlus(model, "1")(torch.randn(1, 3, 16, 16), softmax_over=torch.ones(1, 4))
    assert repr(SmoothGradCAMPlusPlus(model, "1")) == (
        "SmoothGradCAMPlusPlus(target_layer='1', num_samples=4, std=0.3)"
    )


def test_print_agreement(capsys: pytest.CaptureFixture[str]) -> None:
    """Not a check: prints the agreement figures gathered above (run with -s to see them)."""
    with capsys.disabled():
        for name, (diff, r) in AGREEMENT.items():
            print(f"\nSmoothGradCAMPlusPlus {name}: max abs diff {diff:.2e}, Pearson r {r:.6f}")
