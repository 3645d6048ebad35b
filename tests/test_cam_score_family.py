"""SSCAM and ISCAM against torchcam, and the perturbation engine's batching and channel subset.

Oracles:

* torchcam 0.5's ``SSCAM`` and ``ISCAM`` on a target layer at the input's resolution (where its masks,
  normalised before upsampling, equal hiercam's), with hiercam's noise injected into torchcam's sampler;
* naive references written one image, one sample, one channel and one class at a time (hiercam's
  convention on strided layers: the masks normalised after upsampling, as pytorch-grad-cam does);
* the methods themselves with every channel (``max_channels=None``) and with other batch sizes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from cam_test_helpers import full_res_net, strided_net
from torch import nn

import hiercam
from hiercam.cam import BaseCAM

torchcam_methods = pytest.importorskip("torchcam.methods")
logging.getLogger("torchcam").setLevel(logging.ERROR)
pytestmark = pytest.mark.usefixtures("one_thread")

CLASSES = [1, 3]
PERTURBATION = [hiercam.ScoreCAM, hiercam.SSCAM, hiercam.ISCAM, hiercam.AblationCAM]


def make(method: type[BaseCAM], model: nn.Module, **options: Any) -> BaseCAM:
    """``method(model, "3", ...)``: ``num_samples`` (default 2) only for SSCAM and ISCAM; SSCAM's noise from
    a generator seeded with 0 (so that two extractors made alike draw the same noise)."""
    if method in (hiercam.SSCAM, hiercam.ISCAM):
        options.setdefault("num_samples", 2)
    if method is hiercam.SSCAM:
        options.setdefault("generator", seeded(0))
    else:
        options.pop("num_samples", None)
    constructor: Any = method
    return constructor(model, "3", **options)  # type: ignore[no-any-return]


def activation_of(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    store: list[torch.Tensor] = []
    handle = model.get_submodule("3").register_forward_hook(lambda _m, _i, o: store.append(o))
    try:
        with torch.no_grad():
            model(images)
    finally:
        handle.remove()
    return store[0]


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def reference_noise(
    batch: int, samples: int, channels: int, size: tuple[int, int], std: float, seed: int
) -> torch.Tensor:
    """SSCAM's documented noise ``(B, S, N, 1, H, W)``: from one CPU generator seeded with ``seed``, one
    plane per (image, sample, channel) in that order."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.empty(batch, samples, channels, 1, *size)
    for b in range(batch):
        for s in range(samples):
            for c in range(channels):
                noise[b, s, c] = torch.randn(1, *size, generator=generator)
    return noise * std


def iscam_coefficients(samples: int) -> list[float]:
    values, total = [], 0.0
    for step in range(1, samples + 1):
        total += step / samples
        values.append(total)
    return values


def naive_score_family(
    model: nn.Module,
    images: torch.Tensor,
    k: int,
    *,
    samples: int = 1,
    noise: torch.Tensor | None = None,
    coefficients: list[float] | None = None,
    channels: list[list[int]] | None = None,
) -> torch.Tensor:
    """ScoreCAM / SSCAM / ISCAM one image, sample, channel and class at a time; raw maps at feature size."""
    activation = activation_of(model, images)
    maps = []
    for b in range(len(images)):
        kept = list(range(activation.shape[1])) if channels is None else channels[b]
        scores = torch.zeros(len(kept))
        for j, c in enumerate(kept):
            mask = F.interpolate(
                activation[b : b + 1, c : c + 1], size=images.shape[-2:], mode="bilinear", align_corners=False
            )
            mask = (mask - mask.min()) / (mask.max() - mask.min() + 1e-8)
            for s in range(samples):
                noisy = mask if noise is None else mask + noise[b, s, j]
                masked = images[b : b + 1] * noisy
                if coefficients is not None:
                    masked = masked * coefficients[s]
                with torch.no_grad():
                    scores[j] += model(masked)[0, k] / samples
        weights = torch.zeros(activation.shape[1])
        weights[kept] = torch.softmax(scores, dim=0)
        maps.append(torch.relu((weights[:, None, None] * activation[b]).sum(0)))
    return torch.stack(maps)


class InjectedNormal:
    """Stands in for torchcam's ``Normal(0, std)``: hands out hiercam's noise, one sample per call."""

    def __init__(self, noise: torch.Tensor) -> None:  # (B, S, C, 1, H, W)
        self.planes = [noise[:, s, :, 0] for s in range(noise.shape[1])]

    def sample(self, size: torch.Size) -> torch.Tensor:
        plane = self.planes.pop(0)
        assert plane.shape == size
        return plane


def torchcam_maps(peer: object, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    try:
        return torch.stack([peer(k, model(images), normalized=False)[0] for k in CLASSES], dim=1)  # type: ignore[operator]
    finally:
        peer.remove_hooks()  # type: ignore[attr-defined]


# ------------------------------------------------------------------------------------ torchcam
def test_sscam_equals_torchcam_with_the_same_noise() -> None:
    model = full_res_net()
    images = torch.randn(2, 3, 16, 16)
    ours = hiercam.SSCAM(model, "3", num_samples=3, generator=seeded(5), batch_size=7)(
        images, CLASSES, size="feature", normalize=None
    )
    peer = torchcam_methods.SSCAM(model, "3", batch_size=64, num_samples=3, std=2.0)
    noise = reference_noise(2, 3, 8, (16, 16), 2.0, 5)
    theirs = []
    for k in CLASSES:  # torchcam draws the noise anew for every class: the same noise each time
        peer._distrib = InjectedNormal(noise)
        theirs.append(peer(k, model(images), normalized=False)[0])
    peer.remove_hooks()
    torch.testing.assert_close(ours, torch.stack(theirs, dim=1), rtol=1e-5, atol=1e-6)


def test_iscam_equals_torchcam() -> None:
    model = full_res_net()
    images = torch.randn(2, 3, 16, 16)
    ours = hiercam.ISCAM(model, "3", num_samples=4, batch_size=5)(
        images, CLASSES, size="feature", normalize=None
    )
    theirs = torchcam_maps(torchcam_methods.ISCAM(model, "3", batch_size=64, num_samples=4), model, images)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_iscam_on_a_strided_layer_is_close_to_torchcam() -> None:
    # torchcam normalises the 4x4 channels before upsampling them: slightly different masks
    model = strided_net()
    images = torch.randn(2, 3, 16, 16)
    ours = hiercam.ISCAM(model, "3", num_samples=3)(images, CLASSES, size="feature", normalize=None)
    theirs = torchcam_maps(torchcam_methods.ISCAM(model, "3", batch_size=64, num_samples=3), model, images)
    assert (ours - theirs).abs().max() < 0.05 * theirs.abs().max()


# ------------------------------------------------------------------------------------ naive references
def test_sscam_and_iscam_equal_naive_loops_on_a_strided_layer() -> None:
    model = strided_net()
    images = torch.randn(2, 3, 16, 16)
    noise = reference_noise(2, 3, 8, (16, 16), 0.7, 11)
    ours = hiercam.SSCAM(model, "3", num_samples=3, std=0.7, generator=seeded(11))(
        images, CLASSES, size="feature", normalize=None
    )
    expected = torch.stack([naive_score_family(model, images, k, samples=3, noise=noise) for k in CLASSES], 1)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6)
    ours = hiercam.ISCAM(model, "3", num_samples=3)(images, CLASSES, size="feature", normalize=None)
    coefficients = iscam_coefficients(3)
    expected = torch.stack(
        [naive_score_family(model, images, k, samples=3, coefficients=coefficients) for k in CLASSES], 1
    )
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6)
    assert coefficients[-1] == pytest.approx(2.0)  # (N + 1) / 2


def test_sscam_without_noise_is_scorecam() -> None:
    model = strided_net()
    images = torch.randn(2, 3, 16, 16)
    plain = hiercam.ScoreCAM(model, "3")(images, normalize=None)
    torch.testing.assert_close(
        hiercam.SSCAM(model, "3", num_samples=2, std=0.0)(images, normalize=None), plain
    )


# ------------------------------------------------------------------------------------ channel subset
def spread_order(activation: torch.Tensor, count: int) -> list[list[int]]:
    """Each image's ``count`` channels of largest spatial standard deviation, ascending (no ties here)."""
    spread = activation.flatten(2).std(dim=2, unbiased=False)
    order = spread.argsort(dim=1, descending=True)
    for b in range(len(spread)):  # the test needs a clear cut between kept and dropped channels
        assert spread[b, order[b, count - 1]] > spread[b, order[b, count]] + 1e-6
    return [sorted(row[:count].tolist()) for row in order]


@pytest.mark.parametrize("method", PERTURBATION, ids=lambda m: m.__name__)
def test_max_channels_equal_to_all_channels_is_the_full_method(method: type[BaseCAM]) -> None:
    model = strided_net()
    images = torch.randn(2, 3, 16, 16)
    full = make(method, model)(images, CLASSES, normalize=None)
    for count in (8, 100):
        subset = make(method, model, max_channels=count)(images, CLASSES, normalize=None)
        torch.testing.assert_close(subset, full, rtol=0, atol=0)


def test_scorecam_family_on_a_channel_subset_equals_a_naive_reference() -> None:
    model = strided_net()
    images = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    kept = spread_order(activation_of(model, images), 3)
    ours = hiercam.ScoreCAM(model, "3", max_channels=3)(images, CLASSES, size="feature", normalize=None)
    expected = torch.stack([naive_score_family(model, images, k, channels=kept) for k in CLASSES], 1)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6)
    noise = reference_noise(2, 2, 3, (16, 16), 2.0, 0)  # the noise follows the kept channels
    ours = hiercam.SSCAM(model, "3", num_samples=2, max_channels=3, generator=seeded(0))(
        images, CLASSES, size="feature", normalize=None
    )
    expected = torch.stack(
        [naive_score_family(model, images, k, samples=2, noise=noise, channels=kept) for k in CLASSES], 1
    )
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6)


def test_ablationcam_on_a_channel_subset_equals_a_naive_reference() -> None:
    model = strided_net()
    images = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    activation = activation_of(model, images)
    kept = spread_order(activation, 3)
    head = nn.Sequential(*list(model)[4:])
    ours = hiercam.AblationCAM(model, "3", max_channels=3, batch_size=4)(
        images, CLASSES, size="feature", normalize=None
    )
    for i, k in enumerate(CLASSES):
        for b in range(2):
            score = head(activation[b : b + 1])[0, k]
            weights = torch.zeros(8)
            for c in kept[b]:
                ablated = activation[b : b + 1].clone()
                ablated[0, c] = 0
                weights[c] = (score - head(ablated)[0, k]) / score
            expected = torch.relu((weights[:, None, None] * activation[b]).sum(0)).detach()
            torch.testing.assert_close(ours[b, i], expected, rtol=1e-5, atol=1e-6)


def test_max_channels_runs_only_those_forwards() -> None:
    model = strided_net()
    sizes: list[int] = []
    handle = model.register_forward_pre_hook(lambda _m, inputs: sizes.append(inputs[0].shape[0]))
    try:
        hiercam.SSCAM(model, "3", num_samples=5, max_channels=3, batch_size=4)(torch.randn(2, 3, 16, 16))
    finally:
        handle.remove()
    # the first forward, then 2 images x 5 samples x 3 channels = 30 rows, 4 per forward across samples
    assert sizes == [2] + [4] * 7 + [2]


# ------------------------------------------------------------------------------------ batching
@pytest.mark.parametrize("method", PERTURBATION, ids=lambda m: m.__name__)
def test_maps_do_not_depend_on_the_batch_size_or_the_batch(method: type[BaseCAM]) -> None:
    model = strided_net()
    images = torch.randn(3, 3, 16, 16)
    maps = [
        make(method, model, batch_size=size, num_samples=3)(images, CLASSES, normalize=None)
        for size in (1, 5, 1000)
    ]
    for other in maps[1:]:
        torch.testing.assert_close(other, maps[0], rtol=1e-5, atol=1e-6)
    cam = make(method, model, batch_size=5, num_samples=3)
    alone = torch.cat([cam(images[b : b + 1], CLASSES, normalize=None) for b in range(3)])
    torch.testing.assert_close(alone, maps[0], rtol=1e-5, atol=1e-6)


def test_masked_forwards_run_under_inference_mode() -> None:
    model = strided_net()
    modes: list[bool] = []
    handle = model.register_forward_pre_hook(lambda _m, _i: modes.append(torch.is_inference_mode_enabled()))
    try:
        for method in PERTURBATION:
            modes.clear()
            maps = make(method, model, batch_size=8)(torch.randn(2, 3, 16, 16), CLASSES)
            assert modes[0] is False
            assert len(modes) > 1
            assert all(modes[1:])
            assert not maps.is_inference()
    finally:
        handle.remove()


def test_sscam_noise_comes_from_the_generator_or_the_global_generator() -> None:
    model = strided_net()
    images = torch.randn(2, 3, 16, 16)
    first = hiercam.SSCAM(model, "3", num_samples=2, generator=seeded(1))(images)
    cam = hiercam.SSCAM(model, "3", num_samples=2, generator=seeded(1), batch_size=3)
    torch.testing.assert_close(cam(images), first, rtol=0, atol=0)  # same seed, other batches: same maps
    assert not torch.allclose(cam(images), first)  # the generator advanced
    assert not torch.allclose(hiercam.SSCAM(model, "3", num_samples=2, generator=seeded(2))(images), first)
    free = hiercam.SSCAM(model, "3", num_samples=2)
    torch.manual_seed(7)
    first = free(images)
    torch.manual_seed(7)
    torch.testing.assert_close(free(images), first, rtol=0, atol=0)
    assert not torch.allclose(free(images), first)


# ------------------------------------------------------------------------------------ arguments
def test_repr_shows_the_settings() -> None:
    model = strided_net()
    assert repr(hiercam.SSCAM(model, "3")) == (
        "SSCAM(target_layer='3', batch_size=32, num_samples=35, std=2)"
    )
    assert repr(hiercam.ISCAM(model, "3", max_channels=4, batch_size=8)) == (
        "ISCAM(target_layer='3', batch_size=8, max_channels=4, num_samples=10)"
    )
    assert repr(hiercam.ScoreCAM(model, "3", batch_size=5)) == "ScoreCAM(target_layer='3', batch_size=5)"


BAD: list[tuple[Callable[[nn.Module], object], type[Exception], str]] = [
    (lambda m: hiercam.SSCAM(m, "3", num_samples=0), ValueError, "num_samples"),
    (lambda m: hiercam.SSCAM(m, "3", std=-1.0), ValueError, "std"),
    (lambda m: hiercam.SSCAM(m, "3", std=float("nan")), ValueError, "std"),
    (lambda m: hiercam.SSCAM(m, "3", generator=5), TypeError, "generator"),  # type: ignore[arg-type]
    (lambda m: hiercam.SSCAM(m, "3", generator=torch.Generator().get_state()), TypeError, "generator"),  # type: ignore[arg-type]
    (lambda m: hiercam.ISCAM(m, "3", num_samples=2.0), TypeError, "num_samples"),  # type: ignore[arg-type]
    (lambda m: hiercam.ScoreCAM(m, "3", max_channels=0), ValueError, "max_channels"),
    (lambda m: hiercam.AblationCAM(m, "3", max_channels="4"), TypeError, "max_channels"),  # type: ignore[arg-type]
]


@pytest.mark.parametrize(("make", "error", "name"), BAD)
def test_bad_arguments_name_themselves(
    make: Callable[[nn.Module], object], error: type[Exception], name: str
) -> None:
    with pytest.raises(error, match=f"`{name}`"):
        make(strided_net())


@pytest.mark.parametrize("method", [hiercam.SSCAM, hiercam.ISCAM], ids=lambda m: m.__name__)
def test_targets_one_class_per_image_and_eigen_smooth(method: type[BaseCAM]) -> None:
    model = strided_net()
    images = torch.randn(2, 3, 16, 16)
    every = make(method, model)(images, normalize=None)
    per_image = make(method, model)(images, torch.tensor([2, 0]), normalize=None)
    torch.testing.assert_close(per_image[:, 0], torch.stack([every[0, 2], every[1, 0]]))
    targets = [hiercam.ClassifierOutputTarget(2), hiercam.ClassifierOutputTarget(0)]
    torch.testing.assert_close(make(method, model)(images, targets=targets, normalize=None), per_image)
    smooth = make(method, model, eigen_smooth=True)(images, CLASSES)
    assert smooth.shape == (2, 2, 16, 16)
