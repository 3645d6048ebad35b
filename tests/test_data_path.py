"""The whole data path with the public API only: images -> CAMs -> fused maps -> both CAM metrics.

Every figure is worked out by hand on an 8 x 8 two-class toy problem whose Grad-CAMs are known exactly:
the model's features are the image itself (an identity 1x1 convolution) and its head is a global average
pool and a linear layer, so the Grad-CAM of class ``k`` is ``ReLU(sum_c W[k, c] * image[c]) / 64``.

* image channel 0 is 1 on ``R0`` = rows 0-3, columns 0-3 (16 pixels), channel 1 on ``R1`` = rows 5-7,
  columns 5-7 (9 pixels); the two regions do not touch (not even diagonally).
* base model ``W = I``: the max-normalised map of class ``k`` is the indicator of ``R_k``.
* one group level holding both classes, level model ``W = [1, 1]``: the group map is ``R0 | R1``.
* Eq. 6 without ``M0'``: ``M_0 = 1[R0] + 1[R0 | R1]``, i.e. 2 on ``R0`` and 1 on ``R1``, normalised to 1 and
  0.5; with ``M0'`` the pixel-wise max of the other present class: ``M_0 = 1[R0] + 1[R0 | R1] - 1[R1]``,
  back to ``1[R0]``.
* ground truth: class 0 on rows 0-3, columns 0-4 (20 pixels), class 1 on ``R1`` with pixel (7, 7) void.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import hiercam

R0 = (slice(0, 4), slice(0, 4))
R1 = (slice(5, 8), slice(5, 8))


class FeaturesAreTheImage(nn.Module):
    def __init__(self, head_weight: torch.Tensor) -> None:
        super().__init__()
        self.features = nn.Conv2d(2, 2, 1, bias=False)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2, head_weight.shape[0])
        with torch.no_grad():
            self.features.weight.copy_(torch.eye(2)[:, :, None, None])
            self.fc.weight.copy_(head_weight)
            self.fc.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


def indicator(*regions: tuple[slice, slice]) -> torch.Tensor:
    out = torch.zeros(8, 8)
    for region in regions:
        out[region] = 1.0
    return out


@pytest.fixture
def problem() -> dict[str, torch.Tensor]:
    images = torch.stack([indicator(R0), indicator(R1)])[None]  # (1, 2, 8, 8)
    labels = torch.tensor([[1, 1]])
    masks = torch.zeros(1, 8, 8, dtype=torch.long)
    masks[0, 0:4, 0:5] = 1  # class 0 -> label 1
    masks[0, 5:8, 5:8] = 2  # class 1 -> label 2
    masks[0, 7, 7] = 255  # void
    boxes = [torch.tensor([[0, 0, 0, 5, 4], [1, 5, 5, 8, 8]])]  # [class, x1, y1, x2, y2], far edges exclusive
    return {"images": images, "labels": labels, "masks": masks, "boxes": boxes}


def test_images_to_cams_to_fused_maps_to_metrics(problem: dict[str, torch.Tensor]) -> None:
    base_model = FeaturesAreTheImage(torch.eye(2))
    level_model = FeaturesAreTheImage(torch.ones(1, 2))
    hierarchy = hiercam.ClassHierarchy([[0, 0]], class_names=["left", "right"])
    images, labels = problem["images"], problem["labels"]

    base_maps = hiercam.GradCAM(base_model, "features")(images)
    level_maps = hiercam.GradCAM(level_model, "features")(images)
    torch.testing.assert_close(base_maps[0], torch.stack([indicator(R0), indicator(R1)]))
    torch.testing.assert_close(level_maps[0, 0], indicator(R0, R1))

    no_rest = hiercam.fuse_hierarchy(base_maps, [level_maps], hierarchy, labels, rest_reduction=None)
    expected = torch.stack([indicator(R0) + 0.5 * indicator(R1), indicator(R1) + 0.5 * indicator(R0)])
    torch.testing.assert_close(no_rest[0], expected)
    with_rest = hiercam.fuse_hierarchy(base_maps, [level_maps], hierarchy, labels, rest_reduction="max")
    torch.testing.assert_close(with_rest, base_maps)

    # Predicted masks at 0.15: label 1 on R0 (16 px), label 2 on R1 (9 px, one of them void), background on
    # the other 39. Background IoU 35 / 39; class 0: 16 / 20; class 1: 8 / 8. Fractions, like every metric.
    expected_miou = (35 / 39 + 16 / 20 + 1.0) / 3
    for maps in (base_maps, no_rest):
        pred_masks = hiercam.maps_to_masks(maps, labels, threshold=0.15)
        assert pred_masks[0, 0:4, 0:4].eq(1).all()
        assert pred_masks[0, 5:8, 5:8].eq(2).all()
        result = hiercam.mean_iou(maps, labels, masks=problem["masks"], num_classes=3, thresholds=0.15)
        assert result.miou.item() == pytest.approx(expected_miou)
        torch.testing.assert_close(
            result.per_class.double(), torch.tensor([35 / 39, 0.8, 1.0], dtype=torch.float64)
        )

    # Largest component boxes at 0.15. Base maps: class 0 -> R0 = [0, 0, 4, 4] (IoU 16/20 with its box, a
    # hit), class 1 -> R1, exactly its box: error 0. Fused without M0': class 1's map is 1 on R1 and 0.5 on
    # R0, whose 16 pixels make the largest component, so its box misses: error 1/2.
    boxes = problem["boxes"]
    assert hiercam.localization_error(base_maps, labels, boxes=boxes).item() == 0.0
    assert hiercam.localization_error(no_rest, labels, boxes=boxes).item() == 0.5

    # The streaming forms give the same figures.
    miou, loc = hiercam.MeanIoU(num_classes=3), hiercam.LocalizationError()
    miou.update(no_rest, labels, masks=problem["masks"])
    loc.update(no_rest, labels, boxes=boxes)
    assert miou.compute().miou.item() == pytest.approx(expected_miou)
    assert loc.compute().item() == 0.5
