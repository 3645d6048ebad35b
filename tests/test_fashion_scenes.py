from __future__ import annotations

import gzip
import socket
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader
from torchvision.ops import box_iou, masks_to_boxes

from hiercam import ClassHierarchy, FashionScenes, collate_scenes
from hiercam.datasets import FASHION_MNIST_CLASSES, fashion_mnist, load_garments
from hiercam.datasets.fashion_mnist import SUBSET_PATH, VAL_MODULUS, read_idx


def scenes(split: str = "train", num: int = 24, size: int = 64, seed: int = 0, **kw) -> FashionScenes:
    return FashionScenes(split, num_scenes=num, image_size=size, seed=seed, **kw)


def assert_same_sample(a: dict, b: dict) -> None:
    for key in ("image", "labels", "mask", "boxes", "item_ids"):
        assert torch.equal(a[key], b[key]), key
    assert a["index"] == b["index"]


# ------------------------------------------------------------------------------------------ determinism
def test_scene_is_a_pure_function_of_seed_split_and_index() -> None:
    first = scenes(num=10)
    again = scenes(num=50)  # another length, another instance
    for i in (7, 3, 0, 9):  # any order
        assert_same_sample(first[i], again[i])
    assert_same_sample(first[-1], first[9])


def test_scenes_ignore_and_keep_global_random_state() -> None:
    data = scenes(num=4)
    torch.manual_seed(1)
    np.random.seed(1)  # noqa: NPY002
    a = data[2]
    torch_state, numpy_state = torch.get_rng_state(), np.random.get_state()  # noqa: NPY002
    torch.manual_seed(2)
    np.random.seed(2)  # noqa: NPY002
    assert_same_sample(a, data[2])
    torch.manual_seed(1)
    np.random.seed(1)  # noqa: NPY002
    data[2]
    assert torch.equal(torch_state, torch.get_rng_state())
    assert np.array_equal(numpy_state[1], np.random.get_state()[1])  # noqa: NPY002


def test_seed_and_split_change_the_scenes() -> None:
    base = scenes("val", num=3)
    for other in (scenes("val", num=3, seed=1), scenes("test", num=3)):
        assert not torch.equal(base[0]["image"], other[0]["image"])
    assert not torch.equal(base[0]["image"], base[1]["image"])


# ------------------------------------------------------------------------------------------ labels
@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_boxes_are_tight_boxes_of_visible_pixels_with_exclusive_edges(split: str) -> None:
    for sample in scenes(split, num=30, size=72):
        mask, boxes = sample["mask"], sample["boxes"]
        classes = boxes[:, 0].long()
        instance_masks = torch.stack([mask == c + 1 for c in classes])
        # torchvision's masks_to_boxes gives inclusive last pixels: the exclusive edge is one more.
        expected = masks_to_boxes(instance_masks) + torch.tensor([0.0, 0.0, 1.0, 1.0])
        assert torch.equal(boxes[:, 1:], expected)
        assert bool((boxes[:, 3] > boxes[:, 1]).all())
        assert bool((boxes[:, 4] > boxes[:, 2]).all())


def test_single_pixel_box_convention_matches_box_iou() -> None:
    # The documented convention: a pixel (x, y) is the box (x, y, x + 1, y + 1), area 1 in box_iou.
    sample = scenes(num=1)[0]
    cls, x1, y1, x2, y2 = sample["boxes"][0].tolist()
    pixels = int((sample["mask"] == int(cls) + 1).sum())
    assert (x2 - x1) * (y2 - y1) >= pixels
    area = box_iou(torch.tensor([[x1, y1, x2, y2]]), torch.tensor([[x1, y1, x1 + 1, y1 + 1]]))
    assert area.item() == pytest.approx(1 / ((x2 - x1) * (y2 - y1)))


def test_targets_masks_and_boxes_agree() -> None:
    for sample in scenes("val", num=40):
        present = sample["labels"].nonzero()[:, 0]
        labels = sample["mask"].unique()
        assert set(labels.tolist()) <= {0, *(present + 1).tolist()}
        assert set((present + 1).tolist()) <= set(labels.tolist())  # every garment keeps visible pixels
        assert torch.equal(sample["boxes"][:, 0].long(), present)  # one box per class, sorted by class
        assert sample["item_ids"].shape == (len(present),)
        assert sample["labels"].dtype == torch.float32
        assert sample["mask"].dtype == torch.long
        assert set(sample["labels"].unique().tolist()) <= {0.0, 1.0}


def test_item_counts_follow_items_and_garments_overlap_sometimes() -> None:
    data = scenes(num=60, items=(2, 3))
    counts = [len(s["boxes"]) for s in data]
    assert set(counts) == {2, 3}
    overlapping = 0
    for sample in data:
        boxes = sample["boxes"][:, 1:]
        iou = box_iou(boxes, boxes).fill_diagonal_(0)
        overlapping += bool((iou > 0).any())
    assert overlapping >= 10


def test_background_is_not_a_trivial_mask() -> None:
    best = []
    for sample in scenes("val", num=20):
        image, foreground = sample["image"], sample["mask"] > 0
        assert image.shape == (3, 64, 64)
        assert image.dtype == torch.float32
        assert float(image.min()) >= 0.0
        assert float(image.max()) <= 1.0
        # background pixels are not black ...
        assert float((image.amax(0)[~foreground] > 0.02).float().mean()) > 0.99
        # ... and no brightness threshold separates garments from background, even one chosen per scene
        grey = image.mean(0)
        ious = []
        for t in torch.linspace(0, 1, 51):
            for guess in (grey > t, grey < t):
                ious.append(float((guess & foreground).sum() / (guess | foreground).sum()))
        best.append(max(ious))
    assert np.mean(best) < 0.6


# ------------------------------------------------------------------------------------------ sources
def test_splits_draw_garments_from_disjoint_sources() -> None:
    pools = {split: load_garments(split) for split in ("train", "val", "test")}
    assert not set(pools["train"].ids.tolist()) & set(pools["val"].ids.tolist())
    assert bool((pools["val"].ids % VAL_MODULUS == 0).all())
    assert bool((pools["train"].ids % VAL_MODULUS != 0).all())
    used = {split: set() for split in pools}
    for split in pools:
        for sample in scenes(split, num=40):
            used[split] |= set(sample["item_ids"].tolist())
        assert used[split] <= set(pools[split].ids.tolist())
    assert not used["train"] & used["val"]
    assert max(used["test"]) < 10_000  # ids of the test file


def test_bundled_subset_loads_without_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("FashionScenes tried to open a socket")

    monkeypatch.setattr(socket, "socket", no_network)
    fashion_mnist._load_source.cache_clear()
    assert SUBSET_PATH.is_file()
    assert SUBSET_PATH.stat().st_size < 6_000_000
    sizes = {split: load_garments(split).labels for split in ("train", "val", "test")}
    for split, per_class in (("train", 800), ("val", 200), ("test", 200)):
        assert np.bincount(sizes[split], minlength=10).tolist() == [per_class] * 10
    pool = load_garments("test")
    assert pool.images.shape == (2000, 28, 28)
    assert pool.images.dtype == np.uint8
    assert not pool.images.flags.writeable
    assert scenes("test", num=2)[1]["image"].shape == (3, 64, 64)


def write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + b"".join(
        struct.pack(">I", s) for s in array.shape
    )
    data = header + array.astype(np.uint8).tobytes()
    if path.suffix == ".gz":
        data = gzip.compress(data)
    path.write_bytes(data)


@pytest.fixture
def idx_root(tmp_path: Path) -> Path:
    """Full-format Fashion-MNIST files made of bundled garments: 50 training and 20 test items per class."""
    rng = np.random.default_rng(0)
    for source, per_class, suffix in (("train", 50, ".gz"), ("test", 20, "")):
        pool = load_garments("train" if source == "train" else "test")
        rows = np.concatenate([rng.choice(pool.by_class[k], per_class, replace=False) for k in range(10)])
        rows = rng.permutation(rows)
        images, labels = fashion_mnist.IDX_FILES[source]
        write_idx(tmp_path / f"{images}{suffix}", pool.images[rows])
        write_idx(tmp_path / f"{labels}{suffix}", pool.labels[rows])
    return tmp_path


def test_root_reads_idx_files_plain_or_gzipped(idx_root: Path) -> None:
    train = read_idx(idx_root / "train-images-idx3-ubyte.gz")
    assert train.shape == (500, 28, 28)
    pool = load_garments("val", root=idx_root)
    assert pool.ids.tolist() == [i for i in range(500) if i % VAL_MODULUS == 0]
    for index, item in zip(pool.ids, pool.images, strict=True):
        assert np.array_equal(item, train[index])
    sample = FashionScenes("test", num_scenes=3, image_size=48, root=idx_root)[2]
    assert int(sample["item_ids"].max()) < 200
    assert "root=" in repr(FashionScenes("train", num_scenes=1, root=str(idx_root)))


def test_missing_or_broken_root_files_raise_clear_errors(idx_root: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="must be a folder"):
        scenes(root=tmp_path / "nowhere")
    (idx_root / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(FileNotFoundError, match=r"no t10k-labels-idx1-ubyte or t10k-labels-idx1-ubyte\.gz"):
        scenes("test", root=idx_root)
    (idx_root / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x0d\x01\x00\x00\x00\x01\x00")
    with pytest.raises(ValueError, match="bad magic number"):
        scenes("test", root=idx_root)
    (idx_root / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x05\x00")
    with pytest.raises(ValueError, match="header announces"):
        scenes("test", root=idx_root)
    with pytest.raises(TypeError, match="`root` must be a path"):
        scenes(root=3)


# ------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"split": "training"}, ValueError, "`split` must be one of 'train', 'val', 'test', got 'training'"),
        ({"items": (0, 2)}, ValueError, r"`items` must satisfy 1 <= min <= max <= 6, got \(0, 2\)"),
        ({"items": (3, 2)}, ValueError, "`items` must satisfy"),
        ({"items": (1, 7)}, ValueError, "`items` must satisfy"),
        ({"items": 3}, TypeError, "`items` must be a"),
        ({"items": (1.0, 2)}, TypeError, r"`items\[0\]` must be an int"),
        ({"size": 39}, ValueError, "`image_size` is too small for a garment.* must be >= 40, got 39"),
        ({"num": 0}, ValueError, "`num_scenes` must be >= 1, got 0"),
        ({"seed": -1}, ValueError, "`seed` must be >= 0"),
    ],
)
def test_bad_arguments_are_rejected(kwargs: dict, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        scenes(**kwargs)


def test_bad_indices_are_rejected() -> None:
    data = scenes(num=3)
    with pytest.raises(IndexError, match="scene index 3 is out of range for 3 scenes"):
        data[3]
    with pytest.raises(TypeError, match="scene index must be an int, got str"):
        data["0"]  # type: ignore[index]


def test_smallest_image_size_still_fits_garments() -> None:
    for sample in scenes(num=10, size=40, items=(4, 4)):
        assert 1 <= len(sample["boxes"]) <= 4
        assert sample["mask"].shape == (40, 40)


# ------------------------------------------------------------------------------------------ batches
def test_collate_stacks_tensors_and_keeps_boxes_per_sample() -> None:
    data = scenes(num=5)
    batch = next(iter(DataLoader(data, batch_size=5, collate_fn=collate_scenes)))
    assert batch["image"].shape == (5, 3, 64, 64)
    assert batch["labels"].shape == (5, 10)
    assert batch["mask"].shape == (5, 64, 64)
    assert batch["index"].tolist() == [0, 1, 2, 3, 4]
    for i in range(5):
        assert torch.equal(batch["boxes"][i], data[i]["boxes"])
        assert torch.equal(batch["item_ids"][i], data[i]["item_ids"])
    with pytest.raises(ValueError, match="at least one sample"):
        collate_scenes([])


def test_class_names_and_natural_hierarchy() -> None:
    assert FashionScenes.classes == FASHION_MNIST_CLASSES
    assert len(FashionScenes.classes) == 10
    assert FashionScenes.classes[9] == "Ankle boot"
    hierarchy = FashionScenes.natural_hierarchy()
    assert isinstance(hierarchy, ClassHierarchy)
    assert hierarchy.level_sizes == (10, 4, 2)
    names = FashionScenes.classes
    level1 = {frozenset(names[c] for c in g) for g in hierarchy.groups(1)}
    assert level1 == {
        frozenset({"T-shirt/top", "Pullover", "Coat", "Shirt", "Dress"}),
        frozenset({"Sandal", "Sneaker", "Ankle boot"}),
        frozenset({"Trouser"}),
        frozenset({"Bag"}),
    }
