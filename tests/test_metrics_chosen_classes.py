"""The faithfulness metrics on maps of chosen classes (``classes=``: an index per map into the model's
outputs).

Oracle: the same metric on all-class maps, where only the chosen classes' trials are labelled; the two must
give the same per-trial figures, so no wrapper module (which would change what the softmax means) is needed.
"""

from __future__ import annotations

import pytest
import torch

import hiercam
from hiercam.metrics import ROAD, ConfidenceChange, DeletionInsertion

K = 12


def _model(x: torch.Tensor) -> torch.Tensor:
    """``K`` class scores that depend on where the image is bright (channel 0 pooled on a 3 x 4 grid)."""
    pooled = torch.nn.functional.adaptive_avg_pool2d(x[:, :1], (3, 4)).flatten(1)
    return torch.cat([pooled, -pooled], dim=1)[:, :K] * 5


def _case() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    images = torch.rand(3, 2, 12, 16, generator=g)
    every = torch.rand(3, K, 12, 16, generator=g)
    chosen = torch.tensor([[4, 0], [11, 3], [7, 7]])  # two maps per image (a class may repeat)
    maps = every.gather(1, chosen[:, :, None, None].expand(-1, -1, 12, 16))
    labels = torch.tensor([[1, 1], [1, 0], [0, 1]])
    full = torch.zeros(3, K, dtype=torch.long)
    for b in range(3):
        for k in range(2):
            if labels[b, k]:
                full[b, chosen[b, k]] = 1
    return images, maps, labels, chosen, full, every


METRICS = {
    "deletion_insertion": lambda **kw: hiercam.deletion_insertion(steps=6, score="softmax", **kw),
    "confidence_change": lambda **kw: hiercam.confidence_change(**kw),
    "road": lambda **kw: hiercam.road(percentages=(20, 60), noise=0.0, **kw),
}


@pytest.mark.parametrize("name", list(METRICS))
def test_chosen_classes_equal_the_all_class_maps(name: str) -> None:
    images, maps, labels, chosen, full, every = _case()
    ours = METRICS[name](
        maps=maps, labels=labels, images=images, model=_model, classes=chosen, reduction="none"
    )
    reference = METRICS[name](maps=every, labels=full, images=images, model=_model, reduction="none")
    index_b, index_k = labels.nonzero(as_tuple=True)  # our trials, in the row-major order of `labels`
    order = torch.argsort(index_b * K + chosen[index_b, index_k])  # the reference's order: (image, class)
    for a, b in zip(ours, reference, strict=True):
        torch.testing.assert_close(a[order], b)


def test_streaming_classes_take_classes_too() -> None:
    images, maps, labels, chosen, full, every = _case()
    for metric, function in (
        (DeletionInsertion(_model, steps=6), METRICS["deletion_insertion"]),
        (ConfidenceChange(_model), METRICS["confidence_change"]),
        (ROAD(_model, percentages=(20, 60), noise=0.0), METRICS["road"]),
    ):
        batch = metric(maps, labels, images=images, classes=chosen)
        expected = function(maps=every, labels=full, images=images, model=_model)
        for a, b in zip(batch, expected, strict=True):
            torch.testing.assert_close(a, b)


def test_bad_classes_name_the_argument() -> None:
    images, maps, labels, chosen, _, _ = _case()
    with pytest.raises(ValueError, match=r"`classes` must give the model's class of every map"):
        hiercam.confidence_change(maps, labels, images=images, model=_model, classes=chosen[:, :1])
    with pytest.raises(TypeError, match="integer class indices"):
        hiercam.confidence_change(maps, labels, images=images, model=_model, classes=chosen.float())
    with pytest.raises(ValueError, match="`classes` holds class 12 but `model` returns 12 scores"):
        hiercam.confidence_change(maps, labels, images=images, model=_model, classes=chosen + 1)
    with pytest.raises(ValueError, match="non-negative"):
        hiercam.confidence_change(maps, labels, images=images, model=_model, classes=chosen - 5)


def test_cam_top_k_feeds_the_metric() -> None:
    from torchvision.models import resnet18

    torch.manual_seed(0)
    model = resnet18(num_classes=K).eval()
    images = torch.randn(2, 3, 96, 96)  # 3 x 3 maps: a 1 x 1 map would be constant, its min-max ill-posed
    cam = hiercam.GradCAM(model, "layer4")
    maps = cam(images, top_k=2)
    top = cam.classes
    result = hiercam.confidence_change(
        maps, torch.ones(2, 2), images=images, model=model, classes=top, reduction="none"
    )
    every = cam(images)
    full = torch.zeros(2, K)
    full.scatter_(1, cam.logits.topk(2, dim=1).indices, 1)
    expected = hiercam.confidence_change(every, full, images=images, model=model, reduction="none")
    # trials in row-major order: sort both by (image, class)
    order = torch.argsort(top.flatten() + K * torch.arange(2).repeat_interleave(2))
    torch.testing.assert_close(result.change[order], expected.change)
