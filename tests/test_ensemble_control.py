"""The ensemble control: the Grad-CAMs of two independently trained single models, averaged."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hiercam import FashionScenes, GradCAM, SmallConvNet, average_branch_maps, collate_scenes, mean_iou


def _trained_model(seed: int, batch: dict[str, torch.Tensor]) -> nn.Module:
    """A single-branch classifier trained for a few steps from its own seed, on its own sample order."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = nn.Sequential(
        SmallConvNet(width=4, norm="group"), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(4):
        order = torch.randperm(len(batch["image"]), generator=generator)[:8]
        loss = nn.functional.binary_cross_entropy_with_logits(
            model(batch["image"][order]), batch["labels"][order]
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def _naive_average(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Oracle: per map, divide by its maximum (0 stays 0), average the two, divide by the maximum again."""

    def by_max(m: torch.Tensor) -> torch.Tensor:
        return m / m.max() if m.max() > 0 else torch.zeros_like(m)

    out = torch.empty_like(first)
    for b in range(first.shape[0]):
        for k in range(first.shape[1]):
            out[b, k] = by_max((by_max(first[b, k]) + by_max(second[b, k])) / 2)
    return out


@pytest.fixture(scope="module")
def two_models_maps() -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: see the one_thread fixture in conftest.py; restored below
    scenes = FashionScenes("train", num_scenes=16, image_size=48, seed=3)
    batch = dict(collate_scenes([scenes[i] for i in range(16)]))
    first, second = _trained_model(1, batch), _trained_model(2, batch)
    images, labels = batch["image"][:6], batch["labels"][:6]
    maps_first = GradCAM(first)(images, labels, normalize=None)
    maps_second = GradCAM(second)(images, labels, normalize=None)
    torch.set_num_threads(threads)
    return maps_first, maps_second, batch


def test_two_models_maps_average_like_the_naive_loop(
    two_models_maps: tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]],
) -> None:
    first, second, _ = two_models_maps
    assert first.shape == second.shape == (6, 10, 48, 48)
    assert not torch.allclose(first, second)  # two different models
    ensemble = average_branch_maps([first, second])
    torch.testing.assert_close(ensemble, _naive_average(first, second))
    torch.testing.assert_close(average_branch_maps(torch.stack([first, second])), ensemble)
    torch.testing.assert_close(average_branch_maps([second, first]), ensemble)  # order does not matter


def test_a_model_with_larger_maps_does_not_dominate(
    two_models_maps: tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]],
) -> None:
    first, second, _ = two_models_maps
    ensemble = average_branch_maps([first, second])
    torch.testing.assert_close(average_branch_maps([first * 1000.0, second]), ensemble)
    # maps already max-normalised by the extractor give the same ensemble
    torch.testing.assert_close(
        average_branch_maps([average_branch_maps([first]), average_branch_maps([second])]), ensemble
    )


def test_the_ensemble_is_scored_like_any_maps(
    two_models_maps: tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]],
) -> None:
    first, second, batch = two_models_maps
    ensemble = average_branch_maps([first, second])
    labels, masks = batch["labels"][:6], batch["mask"][:6]
    present = ensemble[labels.bool()]
    assert torch.all(
        present.amax(dim=(-2, -1)).isclose(torch.tensor(1.0)) | (present.amax(dim=(-2, -1)) == 0)
    )
    assert torch.all(ensemble[~labels.bool()] == 0)  # absent classes' maps stay zero
    result = mean_iou(ensemble, labels, masks=masks, thresholds=[0.15, 0.3])
    assert result.miou.shape == (2,)
    assert bool(torch.isfinite(result.miou).all())
