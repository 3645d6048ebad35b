"""MSRC21: the real tree in ../shared (skipped when absent), hand-made trees, and bad trees in tmp_path."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hiercam.datasets import (
    MSRC21,
    MSRC21_CLASSES,
    MSRC21_STUFF_CLASSES,
    collate_voc,
    write_fake_msrc21,
)

# ../shared/data/msrc21 beside the checkout; HIERCAM_MSRC21 points elsewhere (e.g. from a git worktree)
SHARED_MSRC = Path(
    os.environ.get(
        "HIERCAM_MSRC21", Path(__file__).resolve().parents[1].parent / "shared" / "data" / "msrc21"
    )
)


@pytest.fixture(scope="module")
def msrc_root() -> Path:
    if not (SHARED_MSRC / "splits" / "all.txt").is_file():
        pytest.skip("../shared/data/msrc21 is not available")
    return SHARED_MSRC


def _png(root: Path, image_id: str) -> np.ndarray:
    with Image.open(root / "labels" / f"{image_id}.png") as png:
        return np.asarray(png).copy()


def _nearest_exact(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Naive oracle: each output pixel takes the input pixel under its centre."""
    rows = np.minimum(((np.arange(size[0]) + 0.5) * array.shape[0] / size[0]).astype(int), array.shape[0] - 1)
    cols = np.minimum(((np.arange(size[1]) + 0.5) * array.shape[1] / size[1]).astype(int), array.shape[1] - 1)
    return array[rows][:, cols]


def _write_tree(root: Path, masks: dict[str, np.ndarray], splits: dict[str, list[str]] | None = None) -> Path:
    """A minimal MSRC-21 tree written directly (not by write_fake_msrc21): grey photos and the given maps."""
    for folder in ("images", "labels", "splits"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for image_id, mask in masks.items():
        Image.fromarray(np.full((*mask.shape, 3), 128, np.uint8)).save(root / "images" / f"{image_id}.jpg")
        Image.fromarray(mask.astype(np.uint8)).save(root / "labels" / f"{image_id}.png")
    labels = {i: sorted(int(v) for v in np.unique(m) if v != 255) for i, m in masks.items()}
    (root / "image_labels.json").write_text(json.dumps(labels))
    (root / "classes.json").write_text(json.dumps({"classes": list(MSRC21_CLASSES)}))
    for name, ids in (splits or {"train": list(masks), "val": list(masks)}).items():
        (root / "splits" / f"{name}.txt").write_text("\n".join(ids) + "\n")
    return root


# ------------------------------------------------------------------------------------------ the real tree
@pytest.mark.shared
def test_split_sizes_are_the_standard_ones(msrc_root: Path) -> None:
    sizes = {split: len(MSRC21(msrc_root, split)) for split in ("train", "val", "test", "all")}
    assert sizes == {"train": 276, "val": 59, "test": 256, "all": 591}
    ids = [set(MSRC21(msrc_root, split).ids) for split in ("train", "val", "test")]
    assert not (ids[0] & ids[1])
    assert not (ids[0] & ids[2])
    assert not (ids[1] & ids[2])


@pytest.mark.shared
def test_classes_come_from_classes_json(msrc_root: Path) -> None:
    names = json.loads((msrc_root / "classes.json").read_text())["classes"]
    dataset = MSRC21(msrc_root, "val")
    assert dataset.classes == tuple(names) == MSRC21_CLASSES
    assert dataset.num_classes == 21
    assert dataset.scored_labels == tuple(range(1, 22))


@pytest.mark.shared
def test_label_maps_read_back_equal_the_pngs(msrc_root: Path) -> None:
    dataset = MSRC21(msrc_root, "train", image_size=None)
    for index in (0, 7, 100, 275):
        png = _png(msrc_root, dataset.ids[index])
        expected = np.where(png == 255, 255, png.astype(np.int64) + 1)
        sample = dataset[index]
        assert sample["mask"].dtype == torch.int64
        np.testing.assert_array_equal(sample["mask"].numpy(), expected)
        with Image.open(msrc_root / "images" / f"{dataset.ids[index]}.jpg") as photo:
            pixels = np.asarray(photo.convert("RGB"), dtype=np.float32) / 255
        assert sample["image"].dtype == torch.float32
        np.testing.assert_allclose(sample["image"].permute(1, 2, 0).numpy(), pixels, atol=1e-6)


@pytest.mark.shared
def test_resized_label_maps_are_nearest_neighbour(msrc_root: Path) -> None:
    dataset = MSRC21(msrc_root, "test", image_size=(96, 128))
    for index in (0, 50, 255):
        png = _png(msrc_root, dataset.ids[index])
        expected = _nearest_exact(np.where(png == 255, 255, png.astype(np.int64) + 1), (96, 128))
        sample = dataset[index]
        assert sample["image"].shape == (3, 96, 128)
        assert sample["mask"].shape == (96, 128)
        assert float(sample["image"].min()) >= 0.0
        assert float(sample["image"].max()) <= 1.0
        np.testing.assert_array_equal(sample["mask"].numpy(), expected)


@pytest.mark.shared
def test_image_labels_equal_image_labels_json(msrc_root: Path) -> None:
    truth = json.loads((msrc_root / "image_labels.json").read_text())
    dataset = MSRC21(msrc_root, "all", image_size=64)
    expected = torch.zeros(len(dataset), 21)
    for row, image_id in enumerate(dataset.ids):
        expected[row, truth[image_id]] = 1.0
    assert torch.equal(dataset.labels, expected)
    for index in (0, 300, 590):
        assert torch.equal(dataset[index]["labels"], expected[index])


@pytest.mark.shared
def test_stuff_classes_as_background(msrc_root: Path) -> None:
    dataset = MSRC21(msrc_root, "val", image_size=None, background_classes=MSRC21_STUFF_CLASSES)
    objects = [c for c in range(21) if MSRC21_CLASSES[c] not in MSRC21_STUFF_CLASSES]
    assert dataset.classes == tuple(MSRC21_CLASSES[c] for c in objects)
    assert dataset.num_classes == 15
    assert dataset.scored_labels == tuple(range(16))
    lut = np.full(256, 255)
    lut[[MSRC21_CLASSES.index(name) for name in MSRC21_STUFF_CLASSES]] = 0
    lut[objects] = np.arange(1, 16)
    truth = json.loads((msrc_root / "image_labels.json").read_text())
    for index in (0, 30, 58):
        image_id = dataset.ids[index]
        sample = dataset[index]
        np.testing.assert_array_equal(sample["mask"].numpy(), lut[_png(msrc_root, image_id)])
        expected = [objects.index(c) for c in truth[image_id] if c in objects]
        assert sample["labels"].nonzero()[:, 0].tolist() == expected
        assert set(sample["boxes"][:, 0].long().tolist()) <= set(expected)


@pytest.mark.shared
def test_boxes_cover_the_class_pixels(msrc_root: Path) -> None:
    """Every pixel of a class lies in one of its boxes when no component is dropped."""
    dataset = MSRC21(msrc_root, "val", image_size=64, min_box_area=0)
    for index in range(0, 59, 10):
        sample = dataset[index]
        mask, boxes = sample["mask"], sample["boxes"]
        assert sample["labels"][boxes[:, 0].long()].eq(1).all()
        for label in set(mask.unique().tolist()) - {255}:
            covered = torch.zeros_like(mask, dtype=torch.bool)
            for _cls, x1, y1, x2, y2 in boxes[boxes[:, 0] == label - 1].long().tolist():
                covered[y1:y2, x1:x2] = True
            assert covered[mask == label].all()


@pytest.mark.shared
def test_batches_collate_with_collate_voc(msrc_root: Path) -> None:
    dataset = MSRC21(msrc_root, "val", image_size=48)
    batch = collate_voc([dataset[0], dataset[1], dataset[2]])
    assert batch["image"].shape == (3, 3, 48, 48)
    assert batch["labels"].shape == (3, 21)
    assert batch["mask"].shape == (3, 48, 48)
    assert len(batch["boxes"]) == 3


# ------------------------------------------------------------------------------------------ hand-made trees
def test_boxes_of_a_hand_made_mask(tmp_path: Path) -> None:
    mask = np.full((10, 12), 255, np.uint8)
    mask[1:4, 1:5] = 3  # cow: 12 pixels -> (1, 1, 5, 4)
    mask[4, 5] = 3  # touches the block diagonally: same component, box grows to (1, 1, 6, 5)
    mask[7:9, 9:12] = 3  # cow: a second component of 6 pixels -> (9, 7, 12, 9)
    mask[0, 11] = 3  # cow: 1 pixel, dropped with min_box_area=2
    mask[6:10, 0:3] = 1  # grass: 12 pixels -> (0, 6, 3, 10)
    mask[6, 4] = 5  # sky: 1 pixel, dropped with min_box_area=2
    root = _write_tree(tmp_path, {"1_1_s": mask})
    sample = MSRC21(root, "train", image_size=None, min_box_area=2)[0]
    expected = torch.tensor([[1, 0, 6, 3, 10], [3, 1, 1, 6, 5], [3, 9, 7, 12, 9]], dtype=torch.float32)
    assert torch.equal(sample["boxes"], expected)
    assert sample["labels"].nonzero()[:, 0].tolist() == [1, 3, 5]  # the sky speck is still present
    at_six = MSRC21(root, "train", image_size=None, min_box_area=6)[0]["boxes"]  # 6 pixels are enough
    assert at_six[:, 1:].tolist() == [[0, 6, 3, 10], [1, 1, 6, 5], [9, 7, 12, 9]]
    at_seven = MSRC21(root, "train", image_size=None, min_box_area=7)[0]["boxes"]
    assert at_seven[:, 1:].tolist() == [[0, 6, 3, 10], [1, 1, 6, 5]]
    everything = MSRC21(root, "train", image_size=None, min_box_area=0)[0]["boxes"]
    assert everything[:, 0].tolist() == [1, 3, 3, 3, 5]
    assert everything[1:4, 1:].tolist() == [[11, 0, 12, 1], [1, 1, 6, 5], [9, 7, 12, 9]]  # row-major
    stuff = MSRC21(root, "train", image_size=None, min_box_area=2, background_classes=["grass", "sky"])[0]
    assert stuff["boxes"].tolist() == [[2, 1, 1, 6, 5], [2, 9, 7, 12, 9]]  # cow is class 2 of 19
    assert stuff["mask"][6, 0] == 0
    assert stuff["mask"][6, 4] == 0
    assert stuff["mask"][1, 1] == 3


def test_a_transform_can_remove_a_class(tmp_path: Path) -> None:
    mask = np.full((8, 8), 255, np.uint8)
    mask[1:3, 0:2] = 3
    mask[5:7, 5:8] = 9
    root = _write_tree(tmp_path, {"1_1_s": mask})

    def flip(image: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return image.flip(-1), labels.flip(-1)

    flipped = MSRC21(root, "train", image_size=None, transform=flip, min_box_area=0)[0]
    assert flipped["boxes"].tolist() == [[3, 6, 1, 8, 3], [9, 0, 5, 3, 7]]
    assert flipped["labels"].nonzero()[:, 0].tolist() == [3, 9]

    def crop(image: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return image[:, :4, :4], labels[:4, :4]

    cropped = MSRC21(root, "train", image_size=None, transform=crop, min_box_area=0)[0]
    assert cropped["labels"].nonzero()[:, 0].tolist() == [3]  # the car was cropped out
    assert cropped["boxes"].tolist() == [[3, 0, 1, 2, 3]]


def test_fake_tree_reads_back(tmp_path: Path) -> None:
    info = write_fake_msrc21(tmp_path, num_images=8, seed=3)
    dataset = MSRC21(info["root"], "all", image_size=None, min_box_area=0)
    assert dataset.ids == info["splits"]["all"]
    for index, image_id in enumerate(dataset.ids):
        sample = dataset[index]
        png = info["masks"][image_id]
        np.testing.assert_array_equal(sample["mask"].numpy(), np.where(png == 255, 255, png + 1))
        assert sample["labels"].nonzero()[:, 0].tolist() == info["labels"][image_id]


def test_negative_index_and_repr(tmp_path: Path) -> None:
    dataset = MSRC21(write_fake_msrc21(tmp_path, num_images=4)["root"], "all", image_size=32)
    assert dataset[-1]["index"] == 3
    assert "4 images" in repr(dataset)
    with pytest.raises(IndexError, match="out of range"):
        dataset[4]
    with pytest.raises(TypeError, match="sample index"):
        dataset["0"]  # type: ignore[index]


# ------------------------------------------------------------------------------------------ bad trees
@pytest.fixture
def fake_root(tmp_path: Path) -> Path:
    root: Path = write_fake_msrc21(tmp_path / "msrc", num_images=8)["root"]
    return root


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        MSRC21(tmp_path / "nowhere", "train")


@pytest.mark.parametrize("name", ["classes.json", "image_labels.json"])
def test_missing_json(fake_root: Path, name: str) -> None:
    (fake_root / name).unlink()
    with pytest.raises(FileNotFoundError, match=name):
        MSRC21(fake_root, "train")


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("classes.json", "{not json", "classes.json is not valid JSON"),
        ("classes.json", json.dumps({"classes": list(MSRC21_CLASSES[:20])}), "21 distinct class names"),
        ("classes.json", json.dumps(list(MSRC21_CLASSES)), "21 distinct class names"),
        ("image_labels.json", "[]", "must hold a JSON object"),
        ("image_labels.json", json.dumps({}), "has no entry for the image"),
    ],
)
def test_bad_json(fake_root: Path, name: str, content: str, match: str) -> None:
    (fake_root / name).write_text(content)
    with pytest.raises(ValueError, match=match):
        MSRC21(fake_root, "train")


def test_image_labels_with_unknown_class(fake_root: Path) -> None:
    labels = json.loads((fake_root / "image_labels.json").read_text())
    first = (fake_root / "splits" / "train.txt").read_text().split()[0]
    labels[first] = [1, 21]
    (fake_root / "image_labels.json").write_text(json.dumps(labels))
    with pytest.raises(ValueError, match=f"entry of '{first}' must be a list of class ids 0..20"):
        MSRC21(fake_root, "train")


def test_missing_split_file(fake_root: Path) -> None:
    (fake_root / "splits" / "val.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"split file .*val\.txt not found"):
        MSRC21(fake_root, "val")


@pytest.mark.parametrize(
    ("content", "match"),
    [("\n\n", "lists no image"), ("../etc/passwd\n", "not an image id"), ("1_1_s\n1_1_s\n", "twice")],
)
def test_bad_split_file(fake_root: Path, content: str, match: str) -> None:
    (fake_root / "splits" / "train.txt").write_text(content)
    with pytest.raises(ValueError, match=match):
        MSRC21(fake_root, "train")


@pytest.mark.parametrize("folder", ["images", "labels"])
def test_listed_file_absent(fake_root: Path, folder: str) -> None:
    first = (fake_root / "splits" / "train.txt").read_text().split()[0]
    suffix = ".jpg" if folder == "images" else ".png"
    (fake_root / folder / f"{first}{suffix}").unlink()
    with pytest.raises(FileNotFoundError, match=rf"{folder}/{first}\{suffix} \(listed in .*train\.txt\)"):
        MSRC21(fake_root, "train")


def test_label_map_with_unknown_ids(fake_root: Path) -> None:
    first = (fake_root / "splits" / "train.txt").read_text().split()[0]
    png = _png(fake_root, first)
    png[0, :3] = [21, 30, 254]
    Image.fromarray(png).save(fake_root / "labels" / f"{first}.png")
    dataset = MSRC21(fake_root, "train")  # pixel values are checked when a sample is read
    with pytest.raises(
        ValueError, match=rf"{first}\.png: label ids must be 0..20 or 255 \(void\), got 21, 30, 254"
    ):
        dataset[0]


def test_label_map_disagreeing_with_image_labels(fake_root: Path) -> None:
    first = (fake_root / "splits" / "train.txt").read_text().split()[0]
    png = _png(fake_root, first)
    png[0, 0] = 20
    Image.fromarray(png).save(fake_root / "labels" / f"{first}.png")
    with pytest.raises(ValueError, match=r"image_labels\.json lists"):
        MSRC21(fake_root, "train")[0]


def test_colour_label_map(fake_root: Path) -> None:
    first = (fake_root / "splits" / "train.txt").read_text().split()[0]
    png = _png(fake_root, first)
    Image.fromarray(np.stack([png] * 3, axis=-1)).save(fake_root / "labels" / f"{first}.png")
    with pytest.raises(ValueError, match="single-channel 8-bit PNG, got mode 'RGB'"):
        MSRC21(fake_root, "train")[0]


def test_label_map_of_another_size(fake_root: Path) -> None:
    first = (fake_root / "splits" / "train.txt").read_text().split()[0]
    Image.fromarray(_png(fake_root, first)[:-1]).save(fake_root / "labels" / f"{first}.png")
    with pytest.raises(ValueError, match="for a photo of size"):
        MSRC21(fake_root, "train")[0]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"split": "bogus"}, ValueError, "split"),
        ({"split": 3}, TypeError, "split"),
        ({"image_size": 0}, ValueError, "image_size"),
        ({"image_size": (1, 2, 3)}, ValueError, "image_size"),
        ({"image_size": 1.5}, TypeError, "image_size"),
        ({"min_box_area": -1}, ValueError, "min_box_area"),
        ({"background_classes": "grass"}, TypeError, "background_classes"),
        ({"background_classes": ["lawn"]}, ValueError, "unknown class 'lawn'"),
        ({"background_classes": ["grass", 1]}, ValueError, "twice"),
        ({"background_classes": [21]}, ValueError, "background_classes"),
        ({"background_classes": list(MSRC21_CLASSES)}, ValueError, "at least one class"),
        ({"transform": "flip"}, TypeError, "transform"),
    ],
)
def test_bad_arguments(
    fake_root: Path, kwargs: dict[str, object], error: type[Exception], match: str
) -> None:
    arguments: dict[str, object] = {"split": "train", **kwargs}
    split = arguments.pop("split")
    with pytest.raises(error, match=match):
        MSRC21(fake_root, split, **arguments)  # type: ignore[arg-type]


def test_root_of_wrong_type() -> None:
    with pytest.raises(TypeError, match="`root` must be a path"):
        MSRC21(3, "train")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("transform", "error", "match"),
    [
        (lambda image, mask: image, TypeError, "pair"),
        (lambda image, mask: (image, mask[:-1]), ValueError, "same size"),
        (lambda image, mask: (image[0], mask), ValueError, r"image \(3, H, W\)"),
        (lambda image, mask: (image, mask.float()), TypeError, "integer mask"),
    ],
)
def test_bad_transform_output(fake_root: Path, transform: object, error: type[Exception], match: str) -> None:
    dataset = MSRC21(fake_root, "train", image_size=32, transform=transform)  # type: ignore[arg-type]
    with pytest.raises(error, match=match):
        dataset[0]


def test_a_data_loader_batches_the_fake_tree(tmp_path: Path) -> None:
    from torch.utils.data import DataLoader

    dataset = MSRC21(write_fake_msrc21(tmp_path, num_images=8)["root"], "train", image_size=(40, 56))
    batch = next(iter(DataLoader(dataset, batch_size=3, collate_fn=collate_voc)))
    assert batch["image"].shape == (3, 3, 40, 56)
    assert batch["labels"].shape == (3, 21)
    assert batch["mask"].dtype == torch.int64
    assert [len(b) for b in batch["boxes"]] == [len(dataset[i]["boxes"]) for i in range(3)]
    assert torch.equal(batch["labels"], dataset.labels[:3])
