"""RandomCAM: pytorch-grad-cam's RandomCAM fed the same weights as the oracle; reproducibility of the draws.

pytorch-grad-cam draws ``np.random.uniform(-1, 1, size=(B, C))`` once per class call; the tests hand it the
rows of the requested classes of the weights hiercam draws from a seeded generator
(``2 * torch.rand((K, B, C)) - 1``), so both compute the maps of the same weights.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch
from cam_test_helpers import pearson, small_net
from torch import Tensor, nn
from torchvision import models

import hiercam
from hiercam.cam import RandomCAM

pgc = pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

CLASSES = [1, 3]


def weights_of(seed: int, shape: tuple[int, int, int]) -> Tensor:
    """The weights ``(K', B, C)`` that RandomCAM draws from ``torch.Generator().manual_seed(seed)``."""
    return 2 * torch.rand(shape, generator=torch.Generator().manual_seed(seed)) - 1


def peer_maps(
    model: nn.Module, layer: str, images: Tensor, weights: Tensor, monkeypatch: pytest.MonkeyPatch
) -> Tensor:
    """pytorch-grad-cam's RandomCAM, one call per class, each handed that class's weights ``(B, C)``."""
    import pytorch_grad_cam.random_cam as peer_module

    rows: Iterator[np.ndarray] = iter(weights.double().numpy())

    def uniform(low: float, high: float, size: tuple[int, int]) -> np.ndarray:
        assert (low, high) == (-1, 1)
        row = next(rows)
        assert row.shape == tuple(size)
        return row

    monkeypatch.setattr(peer_module.np.random, "uniform", uniform)
    with pgc.RandomCAM(model, target_layers=[model.get_submodule(layer)]) as peer:
        maps = [peer(images, targets=[ClassifierOutputTarget(k)] * len(images)) for k in CLASSES]
    return torch.from_numpy(np.stack(maps, axis=1))


AGREEMENT: dict[str, tuple[float, float]] = {}


@pytest.mark.parametrize("which", ["small CNN '3'", "resnet18 layer4", "resnet18 layer3"])
def test_equals_pytorch_grad_cam_with_the_same_weights(which: str, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(3)
    if which.startswith("small"):
        model, layer, images = small_net(), "3", torch.randn(3, 3, 16, 16, generator=generator)
    else:
        model = models.resnet18(num_classes=5).eval()
        layer, images = which.split()[1], torch.randn(3, 3, 64, 64, generator=generator)
    cam = RandomCAM(model, layer, generator=torch.Generator().manual_seed(11))
    ours = cam(images, CLASSES, normalize="minmax")
    channels = {"3": 8, "layer3": 256, "layer4": 512}[layer]
    num_classes = 4 if layer == "3" else 5
    weights = weights_of(11, (num_classes, 3, channels))[CLASSES]  # every class drawn, the requested used
    theirs = peer_maps(model, layer, images, weights, monkeypatch)
    AGREEMENT[which] = ((ours - theirs).abs().max().item(), pearson(ours, theirs))
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


def test_raw_maps_are_the_weighted_channels() -> None:
    model = small_net()
    images = torch.randn(2, 3, 20, 20)
    store: dict[str, Tensor] = {}
    handle = model[3].register_forward_hook(lambda _m, _i, o: store.__setitem__("a", o))
    try:
        ours = RandomCAM(model, "3", generator=torch.Generator().manual_seed(5))(
            images, size="feature", normalize=None
        )
    finally:
        handle.remove()
    weights = weights_of(5, (4, 2, 8))
    expected = torch.einsum("kbc,bchw->bkhw", weights, store["a"].detach()).relu()
    torch.testing.assert_close(ours, expected)


def test_reproducible_with_a_generator_and_different_per_call() -> None:
    model = small_net()
    images = torch.randn(2, 3, 20, 20)
    first = RandomCAM(model, "3", generator=torch.Generator().manual_seed(0))(images)
    again = RandomCAM(model, "3", generator=torch.Generator().manual_seed(0))(images)
    assert torch.equal(first, again)
    cam = RandomCAM(model, "3", generator=torch.Generator().manual_seed(0))
    assert torch.equal(cam(images), first)
    assert not torch.equal(cam(images), first)  # the generator advanced
    torch.manual_seed(4)
    unseeded = RandomCAM(model, "3")(images)
    torch.manual_seed(4)
    assert torch.equal(RandomCAM(model, "3")(images), unseeded)  # torch's global generator
    assert not torch.equal(unseeded, first)


def test_no_gradient_is_taken_and_the_options_work() -> None:
    model = small_net()
    images = torch.randn(2, 3, 20, 20)
    grad_enabled: list[bool] = []
    handle = model.register_forward_pre_hook(lambda _m, _i: grad_enabled.append(torch.is_grad_enabled()))
    try:
        cam = RandomCAM(model, "3")
        assert cam(images, top_k=2).shape == (2, 2, 20, 20)
        assert cam(images, torch.tensor([0, 3])).shape == (2, 1, 20, 20)
        assert cam(images, targets=hiercam.ClassifierOutputTarget(1)).shape == (2, 1, 20, 20)
        assert RandomCAM(model, "3", eigen_smooth=True)(images, CLASSES).shape == (2, 2, 20, 20)
        mask = torch.tensor([[1, 0, 0, 0], [0, 0, 0, 0]])
        masked = cam(images, mask)
        assert masked[1].abs().sum() == 0
        assert masked[0, 1:].abs().sum() == 0
    finally:
        handle.remove()
    assert not any(grad_enabled)
    assert repr(RandomCAM(model, "3", generator=torch.Generator())) == (
        "RandomCAM(target_layer='3', weights=U(-1, 1), seeded)"
    )


def test_a_class_map_does_not_depend_on_the_other_classes_requested() -> None:
    model = small_net()
    images = torch.randn(2, 3, 20, 20)

    def maps(classes: object = None, **options: object) -> Tensor:
        cam = RandomCAM(model, "3", generator=torch.Generator().manual_seed(2))
        return cam(images, classes, **options)  # type: ignore[arg-type]

    every = maps()
    torch.testing.assert_close(maps([3, 1]), every[:, [3, 1]])
    torch.testing.assert_close(maps(torch.tensor([2, 0]))[:, 0], torch.stack([every[0, 2], every[1, 0]]))
    mask = torch.tensor([[1, 0, 1, 0], [0, 1, 0, 0]])
    torch.testing.assert_close(maps(mask), every * mask[:, :, None, None])


def test_bad_generator_is_named() -> None:
    model = small_net()
    with pytest.raises(TypeError, match=r"`generator` must be a torch.Generator or None, got int"):
        RandomCAM(model, "3", generator=0)  # type: ignore[arg-type]
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="CPU generator"):
            RandomCAM(model, "3", generator=torch.Generator("cuda"))


def test_print_agreement(capsys: pytest.CaptureFixture[str]) -> None:
    """Not a check: prints the agreement figures gathered above (run with -s to see them)."""
    with capsys.disabled():
        for name, (diff, r) in AGREEMENT.items():
            print(f"\nRandomCAM {name} (same weights): max abs diff {diff:.2e}, Pearson r {r:.6f}")
