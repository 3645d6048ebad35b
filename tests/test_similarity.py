from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torchvision import models

from hiercam import class_distances, class_embeddings


def naive_distances(x: np.ndarray) -> np.ndarray:
    k = x.shape[0]
    out = np.zeros((k, k))
    for i in range(k):
        for j in range(k):
            out[i, j] = np.sqrt(sum((x[i, d] - x[j, d]) ** 2 for d in range(x.shape[1])))
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(("k", "d"), [(2, 1), (7, 5), (20, 64)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_distances_match_naive_double_loop(seed: int, k: int, d: int, dtype: torch.dtype) -> None:
    x = torch.randn(k, d, generator=torch.Generator().manual_seed(seed), dtype=dtype) * 3
    got = class_distances(x)
    assert got.dtype == dtype
    expected = torch.from_numpy(naive_distances(x.double().numpy())).to(dtype)
    torch.testing.assert_close(got, expected)
    assert torch.equal(got, got.T)
    assert torch.count_nonzero(torch.diagonal(got)) == 0


def test_distances_hand_computed() -> None:
    x = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 1.0]])
    expected = torch.tensor([[0.0, 5.0, 1.0], [5.0, 0.0, 18.0**0.5], [1.0, 18.0**0.5, 0.0]])
    torch.testing.assert_close(class_distances(x), expected)


@pytest.mark.parametrize(
    ("factory", "head"),
    [
        (lambda: models.resnet18(num_classes=20), lambda m: m.fc),
        (lambda: models.vgg11(num_classes=20), lambda m: m.classifier[6]),
        (lambda: models.mobilenet_v3_small(num_classes=20), lambda m: m.classifier[3]),
        (lambda: models.mobilenet_v2(num_classes=20), lambda m: m.classifier[1]),
        (lambda: models.densenet121(num_classes=20), lambda m: m.classifier),
        (lambda: models.efficientnet_b0(num_classes=20), lambda m: m.classifier[1]),
        (lambda: models.convnext_tiny(num_classes=20), lambda m: m.classifier[2]),
        (
            lambda: nn.Sequential(
                nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 20)
            ),
            lambda m: m[4],
        ),
    ],
    ids=[
        "resnet18",
        "vgg11",
        "mobilenet_v3_small",
        "mobilenet_v2",
        "densenet121",
        "efficientnet_b0",
        "convnext_tiny",
        "sequential",
    ],
)
def test_embeddings_are_the_classifier_rows(factory, head) -> None:
    model = factory()
    expected = head(model).weight
    got = class_embeddings(model)
    assert got.shape == (20, expected.shape[1])
    assert torch.equal(got, expected.detach())


def test_embeddings_of_timm_model_use_get_classifier() -> None:
    timm = pytest.importorskip("timm")
    model = timm.create_model("resnet18", pretrained=False, num_classes=7)
    assert torch.equal(class_embeddings(model), model.get_classifier().weight.detach())


def test_embeddings_are_a_detached_float32_copy() -> None:
    linear = nn.Linear(4, 3).double()
    got = class_embeddings(linear)
    assert got.dtype == torch.float32
    assert not got.requires_grad
    got += 1.0
    assert not torch.allclose(linear.weight.float(), got)
    weights = torch.randn(3, 4, dtype=torch.float16)
    copy = class_embeddings(weights)
    copy.zero_()
    assert weights.abs().sum() > 0


def test_sequential_mlp_head_picks_the_last_layer() -> None:
    model = nn.Sequential(nn.Linear(10, 10), nn.ReLU(), nn.Linear(10, 10))
    assert torch.equal(class_embeddings(model), model[2].weight.detach())


def test_explicit_layer_name() -> None:
    model = models.vgg11(num_classes=5)
    assert torch.equal(class_embeddings(model, layer="classifier.3"), model.classifier[3].weight.detach())


class TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(6, 8)
        self.head_a = nn.Linear(8, 4)
        self.head_b = nn.Linear(8, 4)


class Averaged(TwoHeads):
    def classifier_heads(self) -> list[nn.Linear]:
        return [self.head_a, self.head_b]


def test_parallel_heads_are_ambiguous() -> None:
    with pytest.raises(ValueError, match=r"several linear layers .*'head_a'.*'head_b'.*pass `layer`"):
        class_embeddings(TwoHeads())
    model = TwoHeads()
    assert torch.equal(class_embeddings(model, layer="head_b"), model.head_b.weight.detach())


def test_multi_head_models_average_their_heads() -> None:
    model = Averaged()
    expected = (model.head_a.weight + model.head_b.weight).detach() / 2
    torch.testing.assert_close(class_embeddings(model), expected)


def test_errors_name_the_argument() -> None:
    with pytest.raises(ValueError, match="no nn.Linear layer found"):
        class_embeddings(nn.Sequential(nn.Conv2d(3, 4, 1)))
    with pytest.raises(ValueError, match="`layer` 'nope' does not name a submodule"):
        class_embeddings(models.resnet18(), layer="nope")
    with pytest.raises(TypeError, match="`layer` 'layer4' must name an nn.Linear, got Sequential"):
        class_embeddings(models.resnet18(), layer="layer4")
    with pytest.raises(ValueError, match=r"`source` must have shape \(K, D\), got \(3,\)"):
        class_embeddings(torch.zeros(3))
    with pytest.raises(TypeError, match="`source` must be an nn.Module or a"):
        class_embeddings([[1.0, 2.0]])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"`embeddings` must have shape \(K, D\), got \(2, 3, 4\)"):
        class_distances(torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match="`embeddings` must be finite"):
        class_distances(torch.tensor([[0.0, float("nan")], [1.0, 2.0]]))
    with pytest.raises(TypeError, match="`embeddings` must be a floating-point tensor"):
        class_distances(torch.zeros(3, 2, dtype=torch.long))


@pytest.mark.shared
def test_real_imagenet_dog_breeds_are_nearest_to_dog_breeds(imagenet_mobilenet: nn.Module) -> None:
    distances = class_distances(class_embeddings(imagenet_mobilenet))
    assert distances.shape == (1000, 1000)
    distances.fill_diagonal_(float("inf"))
    dogs = torch.arange(151, 269)  # ImageNet-1k indices of the 118 dog breeds
    nearest = distances[dogs].argmin(dim=1)
    fraction = ((nearest >= 151) & (nearest <= 268)).float().mean().item()
    assert fraction >= 0.65, f"only {fraction:.0%} of dog breeds have a dog breed as nearest class"
