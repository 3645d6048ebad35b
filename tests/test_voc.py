"""VOCMultiLabel against a fake VOC tree whose content is known."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from hiercam.datasets.fake_voc import write_fake_voc
from hiercam.datasets.voc import VOC_CLASSES, VOCMultiLabel, VOCTransform, collate_voc


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return write_fake_voc(tmp_path_factory.mktemp("voc"), num_images=12, seed=3)


def expected_targets(rows: list[tuple[int, ...]], ignore_difficult: bool = False) -> torch.Tensor:
    targets = torch.zeros(len(VOC_CLASSES))
    for cls, *_, difficult in rows:
        if not (ignore_difficult and difficult):
            targets[cls] = 1
    return targets


@pytest.mark.parametrize("split", ["train", "val", "train_aug"])
def test_targets_masks_and_boxes_are_what_was_written(fake: dict, split: str) -> None:
    dataset = VOCMultiLabel(fake["root"], split, transform=None)
    assert dataset.ids == fake["splits"][split]
    assert len(dataset) == len(fake["splits"][split])
    for index, image_id in enumerate(dataset.ids):
        sample = dataset[index]
        rows = fake["objects"][image_id]
        height, width = fake["masks"][image_id].shape
        assert sample["image"].shape == (3, height, width)
        assert sample["image"].dtype == torch.float32
        assert 0 <= float(sample["image"].min()) <= float(sample["image"].max()) <= 1
        torch.testing.assert_close(sample["labels"], expected_targets(rows))
        np.testing.assert_array_equal(sample["mask"].numpy(), fake["masks"][image_id])
        written = torch.tensor(
            [[cls, x0 - 1, y0 - 1, x1, y1] for cls, x0, y0, x1, y1, _ in rows], dtype=torch.float32
        )
        torch.testing.assert_close(sample["boxes"], written)
    torch.testing.assert_close(
        dataset.labels, torch.stack([expected_targets(fake["objects"][i]) for i in dataset.ids])
    )


def test_box_convention_matches_the_label_map(fake: dict) -> None:
    """A rectangle's exclusive-edge box is the tight box of its pixels (where no later object covers it)."""
    dataset = VOCMultiLabel(fake["root"], "val", transform=None)
    for index, image_id in enumerate(dataset.ids):
        sample = dataset[index]
        last_cls, x1, y1, x2, y2 = sample["boxes"][-1].long().tolist()  # drawn last: fully visible
        ys, xs = np.nonzero(fake["masks"][image_id] == last_cls + 1)
        assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x1, y1, x2, y2)


def test_difficult_objects_are_ignored_only_when_asked(fake: dict) -> None:
    with_difficult = VOCMultiLabel(fake["root"], "train_aug", transform=None)
    without = VOCMultiLabel(fake["root"], "train_aug", transform=None, ignore_difficult=True)
    difficult_rows = sum(row[-1] for image_id in with_difficult.ids for row in fake["objects"][image_id])
    assert difficult_rows > 0  # the fixture has some
    for index, image_id in enumerate(without.ids):
        torch.testing.assert_close(
            without[index]["labels"], expected_targets(fake["objects"][image_id], True)
        )
        assert len(without[index]["boxes"]) == sum(1 for row in fake["objects"][image_id] if not row[-1])


def test_default_transform_is_the_papers_preprocessing(fake: dict) -> None:
    full = VOCMultiLabel(fake["root"], "val", transform=None)
    cropped = VOCMultiLabel(fake["root"], "val")
    for index in range(len(full)):
        original, sample = full[index], cropped[index]
        assert sample["image"].shape == (3, 224, 224)
        assert sample["mask"].shape == (224, 224)
        height, width = original["mask"].shape
        scale = 224 / min(height, width)
        new_h, new_w = max(224, round(height * scale)), max(224, round(width * scale))
        top, left = (new_h - 224) // 2, (new_w - 224) // 2
        # the mask is the nearest-neighbour resize of the original, cropped in the centre
        resized = torch.nn.functional.interpolate(original["mask"][None, None].float(), size=(new_h, new_w))[
            0, 0
        ]
        assert torch.equal(sample["mask"], resized[top : top + 224, left : left + 224].long())
        # boxes are scaled and shifted the same way, clipped to the crop
        for row in sample["boxes"]:
            cls = int(row[0])
            source = original["boxes"][original["boxes"][:, 0] == cls][0, 1:]
            expected = (
                source * torch.tensor([new_w / width, new_h / height] * 2) - torch.tensor([left, top] * 2)
            ).clamp(0, 224)
            torch.testing.assert_close(row[1:], expected)
        assert set(sample["labels"].nonzero().flatten().tolist()) == set(
            sample["boxes"][:, 0].long().tolist()
        )


def test_train_transform_flips_consistently() -> None:
    image = torch.zeros(3, 224, 300)
    image[:, 50:100, 20:60] = 1
    mask = torch.zeros(224, 300, dtype=torch.long)
    mask[50:100, 20:60] = 3
    boxes = torch.tensor([[2.0, 20, 50, 60, 100]])
    torch.manual_seed(0)
    for _ in range(20):
        out_image, out_mask, out_boxes = VOCTransform(train=True)(image, mask, boxes)
        assert out_mask is not None
        assert out_boxes is not None
        if len(out_boxes):
            x1, y1, x2, y2 = out_boxes[0, 1:].long().tolist()
            ys, xs = (out_mask == 3).nonzero(as_tuple=True)
            assert (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1) == (x1, y1, x2, y2)
            assert torch.equal(out_image[0] > 0.5, out_mask == 3)
        else:
            assert not (out_mask == 3).any()


def test_collate_keeps_boxes_as_a_list(fake: dict) -> None:
    dataset = VOCMultiLabel(fake["root"], "val")
    batch = collate_voc([dataset[0], dataset[1]])
    assert batch["image"].shape == (2, 3, 224, 224)
    assert batch["mask"].shape == (2, 224, 224)
    assert isinstance(batch["boxes"], list)
    assert torch.equal(batch["index"], torch.tensor([0, 1]))
    assert collate_voc([dataset[0]])["image"].shape == (1, 3, 224, 224)


def test_missing_files_are_named(tmp_path: Path, fake: dict) -> None:
    with pytest.raises(FileNotFoundError, match="no VOC 2012 folder"):
        VOCMultiLabel(tmp_path, "val")
    with pytest.raises(FileNotFoundError, match=r"train_aug.txt not found \(the SBD augmentation"):
        VOCMultiLabel(fake["root"], "train_aug", image_set_dir=tmp_path)
    broken = write_fake_voc(tmp_path / "broken", num_images=4, seed=1)
    missing = broken["root"] / "VOC2012" / "SegmentationClass" / f"{broken['splits']['val'][0]}.png"
    missing.unlink()
    with pytest.raises(FileNotFoundError, match=f"{missing.name}.*listed in"):
        VOCMultiLabel(broken["root"], "val")
    assert len(VOCMultiLabel(broken["root"], "val", with_masks=False)) == 2
    with pytest.raises(TypeError, match="`split` must be an image-set name"):
        VOCMultiLabel(broken["root"], 3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`crop` must be <= 224"):
        VOCTransform(size=224, crop=300)
