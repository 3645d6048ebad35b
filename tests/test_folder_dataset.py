"""SegmentationFolder: own classes, 4:3 images, void, labels from masks or image_labels.json, no masks.

The oracle is the folder's design in ``conftest.py`` (``STREET_SPLITS``, ``STREET_REGIONS``): which classes
each image shows, where, and how many pixels each rectangle has.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hiercam.datasets import (
    MSRC21,
    FolderClasses,
    SegmentationFolder,
    collate_voc,
    read_folder_classes,
)

CLASSES = ("road", "car", "person", "bicycle", "sign")
TRAIN = {  # the drawn classes of STREET_SPLITS["train"]; t7's bicycle is a 9-pixel speck
    "t0": {"road", "car"},
    "t1": {"road", "person"},
    "t2": {"road", "bicycle"},
    "t3": {"road", "car", "person"},
    "t4": {"road", "car", "bicycle"},
    "t5": {"road", "person", "bicycle"},
    "t6": {"road", "car", "person", "bicycle"},
    "t7": {"road", "car", "bicycle"},
}


def _multi_hot(names: set[str], classes: tuple[str, ...] = CLASSES) -> list[float]:
    return [1.0 if name in names else 0.0 for name in classes]


def test_classes_ids_and_labels_from_the_masks(street_folder: Path) -> None:
    dataset = SegmentationFolder(street_folder, "train", image_size=None)
    assert dataset.all_classes == dataset.classes == CLASSES
    assert dataset.ids == list(TRAIN)
    assert dataset.void == 255
    assert dataset.has_masks
    assert dataset.labels.tolist() == [_multi_hot(names) for names in TRAIN.values()]
    assert dataset.scored_labels == (1, 2, 3, 4, 5)  # no background class: label 0 is left out


def test_masks_read_back_with_class_k_as_label_k_plus_one(street_folder: Path) -> None:
    sample = SegmentationFolder(street_folder, "train", image_size=None)[6]  # t6: road, car, person, bicycle
    mask = sample["mask"]
    assert mask.shape == (48, 64)
    assert mask.dtype == torch.int64
    counts = {int(v): int(n) for v, n in zip(*mask.unique(return_counts=True), strict=True)}
    # road 1536 - car 192 - person's 80 over road - bicycle 192; void: the 24 x 64 band less person's 14 x 8
    assert counts == {1: 1536 - 192 - 80 - 192, 2: 192, 3: 192, 4: 192, 255: 24 * 64 - 14 * 8}
    assert sample["labels"].tolist() == _multi_hot(TRAIN["t6"])


def test_a_small_region_is_void_and_no_label(street_folder: Path) -> None:
    kept = SegmentationFolder(street_folder, "train", image_size=None)[7]
    dropped = SegmentationFolder(street_folder, "train", image_size=None, min_pixels=10)[7]
    assert kept["labels"].tolist() == _multi_hot({"road", "car", "bicycle"})
    assert dropped["labels"].tolist() == _multi_hot({"road", "car"})
    assert (kept["mask"][2:5, 2:5] == 4).all()
    assert (dropped["mask"][2:5, 2:5] == 255).all()
    assert torch.equal(kept["mask"][5:], dropped["mask"][5:])  # nothing else changes
    # 9 pixels of 48 x 64 are 0.29 %: a fraction of 0.5 % drops the speck too, 0.2 % keeps it
    assert SegmentationFolder(street_folder, "train", min_fraction=0.005).labels[7, 3] == 0
    assert SegmentationFolder(street_folder, "train", min_fraction=0.002).labels[7, 3] == 1


def test_non_square_size_and_batches(street_folder: Path) -> None:
    from torch.utils.data import DataLoader

    dataset = SegmentationFolder(street_folder, "val", image_size=(24, 32), min_box_area=4)
    sample = dataset[0]  # v0: road, car, sign
    assert sample["image"].shape == (3, 24, 32)
    assert sample["mask"].shape == (24, 32)
    assert sorted(sample["boxes"][:, 0].tolist()) == [0.0, 1.0, 4.0]  # one box each for road, car, sign
    car = sample["boxes"][sample["boxes"][:, 0] == 1][0, 1:].tolist()
    assert car == [2.0, 14.0, 10.0, 20.0]  # rows 28..39, cols 4..19 halved: x 2..10, y 14..20
    batch = next(iter(DataLoader(dataset, batch_size=4, collate_fn=collate_voc)))
    assert batch["image"].shape == (4, 3, 24, 32)
    assert torch.equal(batch["labels"], dataset.labels)


def test_background_classes_leave_the_scored_ones(street_folder: Path) -> None:
    dataset = SegmentationFolder(street_folder, "val", image_size=None, background_classes=["sign"])
    assert dataset.classes == CLASSES[:4]
    assert dataset.background_classes == ("sign",)
    assert dataset.scored_labels == (0, 1, 2, 3, 4)
    mask = dataset[0]["mask"]  # v0's sign rectangle is background now
    assert (mask[4:12, 50:58] == 0).all()
    assert dataset.labels.shape == (4, 4)


def test_image_labels_json_is_used_and_checked(tmp_path: Path, street_writer: Callable[..., Path]) -> None:
    root = street_writer(tmp_path / "s", image_labels=True)
    dataset = SegmentationFolder(root, "train", image_size=None, min_pixels=10)
    assert dataset.labels[7].tolist() == _multi_hot(TRAIN["t7"])  # the file's labels: thresholds do not apply
    labels = json.loads((root / "image_labels.json").read_text())
    labels["t1"] = [0]
    (root / "image_labels.json").write_text(json.dumps(labels))
    with pytest.raises(ValueError, match=r"t1\.png holds the classes \[0, 2\], but image_labels\.json lists"):
        SegmentationFolder(root, "train")[1]
    labels["t1"] = [0, 5]
    (root / "image_labels.json").write_text(json.dumps(labels))
    with pytest.raises(
        ValueError, match=r"image_labels\.json: the entry of 't1' must be a list of class ids 0\.\.4"
    ):
        SegmentationFolder(root, "train")


def test_without_masks_it_trains_and_explains(tmp_path: Path, street_writer: Callable[..., Path]) -> None:
    root = street_writer(tmp_path / "s", masks=False)
    dataset = SegmentationFolder(root, "test", image_size=(24, 32))
    assert not dataset.has_masks
    sample = dataset[2]  # s2: road, bicycle, person
    assert sample["labels"].tolist() == _multi_hot({"road", "bicycle", "person"})
    assert (sample["mask"] == 255).all()
    assert sample["boxes"].shape == (0, 5)
    (root / "image_labels.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"neither masks/ nor image_labels\.json"):
        SegmentationFolder(root, "test")


def test_mask_ids_out_of_range_name_the_file(street_folder: Path) -> None:
    png = np.asarray(Image.open(street_folder / "masks" / "t0.png")).copy()
    png[0, :2] = [5, 200]
    Image.fromarray(png).save(street_folder / "masks" / "t0.png")
    with pytest.raises(ValueError, match=r"t0\.png: label ids must be 0\.\.4 or 255 \(void\), got 5, 200"):
        SegmentationFolder(street_folder, "train")  # labels from masks: every mask is read here


def test_another_void_id(street_folder: Path) -> None:
    (street_folder / "classes.json").write_text(json.dumps({"classes": list(CLASSES), "void": 254}))
    with pytest.raises(ValueError, match=r"label ids must be 0\.\.4 or 254 \(void\), got 255"):
        SegmentationFolder(street_folder, "train")
    for split in ("train", "val", "test"):
        for image_id in (street_folder / "splits" / f"{split}.txt").read_text().split():
            path = street_folder / "masks" / f"{image_id}.png"
            png = np.asarray(Image.open(path)).copy()
            png[png == 255] = 254
            Image.fromarray(png).save(path)
    sample = SegmentationFolder(street_folder, "train", image_size=None)[0]
    assert set(sample["mask"].unique().tolist()) == {1, 2, 255}  # void 254 on disk is 255 in samples


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ([], "must hold a JSON object"),
        ({"classes": []}, "non-empty list of class names"),
        ({"classes": ["road", 3]}, "non-empty list of class names"),
        ({"classes": ["road", "car", "road"]}, "distinct, got 'road' twice"),
        ({"classes": ["road", "car"], "void": 1}, r"'void' must be an integer id of no class, 2\.\.255"),
        ({"classes": ["road", "car"], "void": 256}, "'void' must be an integer"),
        ({"classes": ["road", "car"], "void": True}, "'void' must be an integer"),
        ({"classes": ["road", "car"], "void": 255, "void_id": 0}, "are the same entry and differ"),
        ({"classes": ["road", "car"], "colors": [[0, 0, 0]]}, r"'colors' must list 2 \[r, g, b\] triples"),
        ({"classes": [f"c{i}" for i in range(255)]}, "at most 254 classes"),
    ],
)
def test_bad_classes_json(tmp_path: Path, content: object, match: str) -> None:
    path = tmp_path / "classes.json"
    path.write_text(json.dumps(content))
    with pytest.raises(ValueError, match=match) as info:
        read_folder_classes(path)
    assert "classes.json" in str(info.value)


def test_colours_are_read(tmp_path: Path) -> None:
    path = tmp_path / "classes.json"
    path.write_text(json.dumps({"classes": ["a", "b"], "void_id": 9, "colors_rgb": [[1, 2, 3], [4, 5, 6]]}))
    assert read_folder_classes(path) == FolderClasses(("a", "b"), 9, ((1, 2, 3), (4, 5, 6)))


def test_missing_and_ambiguous_files(street_folder: Path) -> None:
    (street_folder / "images" / "t1.jpg").unlink()
    with pytest.raises(
        FileNotFoundError, match=r"images/t1\.jpg or \.jpeg or \.png \(listed in .*train\.txt\)"
    ):
        SegmentationFolder(street_folder, "train")
    Image.new("RGB", (64, 48)).save(street_folder / "images" / "t1.jpg")
    Image.new("RGB", (64, 48)).save(street_folder / "images" / "t1.png")
    with pytest.raises(ValueError, match="two images of 't1'"):
        SegmentationFolder(street_folder, "train")
    (street_folder / "masks" / "v0.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"masks/v0\.png \(listed in"):
        SegmentationFolder(street_folder, "val")
    with pytest.raises(FileNotFoundError, match="segmentation folder .*nowhere not found"):
        SegmentationFolder(street_folder / "nowhere", "val")


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"min_pixels": 0}, ValueError, "min_pixels"),
        ({"min_fraction": 1.0}, ValueError, "min_fraction"),
        ({"min_fraction": "0.1"}, TypeError, "min_fraction"),
        ({"background_classes": ["lawn"]}, ValueError, "unknown class 'lawn'"),
        ({"background_classes": list(CLASSES)}, ValueError, "at least one class"),
        ({"image_size": (48, 0)}, ValueError, r"image_size\[1\]"),
    ],
)
def test_bad_arguments(
    street_folder: Path, kwargs: dict[str, object], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        SegmentationFolder(street_folder, "train", **kwargs)  # type: ignore[arg-type]


def test_msrc21_is_a_preset_of_the_folder_reader() -> None:
    assert issubclass(MSRC21, SegmentationFolder)
    assert MSRC21.layout.masks == "labels"
    assert MSRC21.layout.labels_required
