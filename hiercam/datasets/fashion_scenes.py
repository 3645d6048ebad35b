"""FashionScenes: multi-label scenes of Fashion-MNIST garments on textured backgrounds, exact masks and boxes.

Each scene places 1-4 garments of distinct classes (scaled, possibly mirrored, tinted) on a smooth colour
field with stripes and pixel noise, so that "non-zero pixels" is not a mask. Because the code draws the scene,
its label map and boxes are exact: a benchmark on which CAMs are scored with real masks and boxes on a CPU.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, TypedDict

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from hiercam._validation import check_choice, check_int, is_int, type_name
from hiercam.datasets.fashion_mnist import FASHION_MNIST_CLASSES, GarmentPool, SplitName, load_garments
from hiercam.hierarchy import ClassHierarchy

__all__ = ["FashionScenes", "SceneSample", "SceneBatch", "collate_scenes"]

_SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
_SCALE = (0.3, 0.5)  # garment side as a fraction of the image side
_MIN_GARMENT = 12  # smallest garment side in pixels
_MIN_VISIBLE = 0.6  # an occluded garment keeps at least this fraction of its pixels
_ATTEMPTS = 50  # positions tried per garment before it is left out


class SceneSample(TypedDict):
    """One FashionScenes sample (shapes for ``M`` garments in an ``H x W`` scene)."""

    image: Tensor  # (3, H, W) float32 in [0, 1]
    labels: Tensor  # (10,) float32 multi-hot
    mask: Tensor  # (H, W) int64 label map: 0 background, k + 1 garment of class k
    boxes: Tensor  # (M, 5) float32 rows (class, x1, y1, x2, y2), x2/y2 exclusive
    item_ids: Tensor  # (M,) int64 Fashion-MNIST item ids, rows as in `boxes`
    index: int  # the scene index


class SceneBatch(TypedDict):
    """A batch made by ``collate_scenes``: tensors stacked, variable-length parts kept as lists.

    Made by [`collate_scenes`][hiercam.collate_scenes].
    """

    image: Tensor  # (B, 3, H, W)
    labels: Tensor  # (B, 10)
    mask: Tensor  # (B, H, W)
    boxes: list[Tensor]  # B tensors (M_b, 5)
    item_ids: list[Tensor]  # B tensors (M_b,)
    index: Tensor  # (B,)


class FashionScenes(Dataset[SceneSample]):
    """Multi-label scenes of Fashion-MNIST garments with exact label maps and instance boxes.

    Scene ``i`` is a pure function of ``(seed, split, i)``: it is drawn with its own NumPy generator seeded
    from those three numbers, never from global random state, so any scene can be regenerated on its own, in
    any order, in any worker process.

    How a scene is drawn: the number of garments is uniform in ``items``; their classes are distinct
    (so each class present has exactly one instance, one box); each garment is a random item of its class
    from the split's pool, mirrored with probability 1/2, resized to a side of 30-50 % of ``image_size``,
    tinted with a random colour and alpha-blended onto a smooth colour field with stripes; Gaussian pixel
    noise covers the whole image. The garment's opacity comes from its Fashion-MNIST intensity, so what the
    image shows and what the label map says agree.

    Label map and occlusion: a pixel belongs to the top-most garment whose opacity there is at least 1/2
    (later garments are drawn on top); there is no "ignore" label. A garment may be partly hidden by later
    ones, but a position that would leave an earlier garment less than 60 % of its own pixels is rejected
    and another is drawn; after 50 rejected positions the garment is left out (the scene then has fewer
    garments; never fewer than one).

    Boxes: one row per garment, ``(class, x1, y1, x2, y2)`` in pixel indices with **exclusive** right/bottom
    edges: ``x1``/``y1`` are the first column/row of the garment's *visible* pixels in the label map and
    ``x2``/``y2`` the last column/row **plus one**, so a single pixel at ``(x, y)`` has the box
    ``(x, y, x + 1, y + 1)`` and ``(x2 - x1) * (y2 - y1)`` is the box area in pixels. This is the convention
    of ``torchvision.ops.box_iou`` applied to pixel-edge coordinates. Rows are sorted by class.

    Splits: ``train`` and ``val`` draw garments from disjoint parts of the Fashion-MNIST training file (items
    whose id is, respectively is not, a multiple of 5 go to ``val``, respectively ``train``), ``test``
    from the test file. The bundled subset holds 800 / 200 / 200 garments per class for train / val / test.

    Args:
        split: ``"train"``, ``"val"`` or ``"test"``.
        num_scenes: number of scenes (the dataset length), >= 1.
        image_size: side ``H = W`` of the square scenes, >= ``MIN_IMAGE_SIZE`` (40: a garment must be at
            least 12 pixels wide).
        items: ``(min, max)`` number of garments per scene, ``1 <= min <= max <= MAX_ITEMS`` (6).
        seed: non-negative seed; with ``split`` and the index it fixes each scene.
        root: a folder holding the full Fashion-MNIST IDX files (``train-images-idx3-ubyte`` etc., plain or
            ``.gz``); ``None`` uses the subset shipped inside the package (no network, no other files).

    Raises:
        TypeError: an argument has the wrong type.
        ValueError: unknown ``split``, ``items`` out of range, ``image_size`` too small for a garment.
        FileNotFoundError: ``root`` is not a folder or lacks one of the IDX files.

    Examples:
        >>> scenes = FashionScenes("val", num_scenes=8, image_size=64, seed=1)
        >>> sample = scenes[3]
        >>> sample["image"].shape, sample["labels"].shape, sample["mask"].shape
        (torch.Size([3, 64, 64]), torch.Size([10]), torch.Size([64, 64]))
        >>> bool((sample["boxes"][:, 0].long().unique() == sample["labels"].nonzero()[:, 0]).all())
        True
        >>> batch = collate_scenes([scenes[0], scenes[1]])
        >>> batch["image"].shape, len(batch["boxes"])
        (torch.Size([2, 3, 64, 64]), 2)
    """

    #: The 10 Fashion-MNIST class names; class ``k`` is label ``k + 1`` in label maps.
    classes: ClassVar[tuple[str, ...]] = FASHION_MNIST_CLASSES
    #: The most garments a scene can hold (the upper bound of ``items``).
    MAX_ITEMS: ClassVar[int] = 6
    #: The smallest ``image_size``: a garment is at least 30 % of the side and 12 pixels wide
    #: (``round(0.3 * 40) == 12``).
    MIN_IMAGE_SIZE: ClassVar[int] = 40

    def __init__(
        self,
        split: SplitName,
        *,
        num_scenes: int,
        image_size: int = 96,
        items: tuple[int, int] = (1, 4),
        seed: int = 0,
        root: str | os.PathLike[str] | None = None,
    ) -> None:
        self.split: SplitName = check_choice(split, "split", ("train", "val", "test"))
        self.num_scenes = check_int(num_scenes, "num_scenes", minimum=1)
        self.image_size = check_int(image_size, "image_size")
        if self.image_size < self.MIN_IMAGE_SIZE:
            raise ValueError(
                f"`image_size` is too small for a garment: garments are {_SCALE[0]:.0%}-{_SCALE[1]:.0%} "
                f"of the image side and at least {_MIN_GARMENT} pixels wide, so `image_size` must be "
                f">= {self.MIN_IMAGE_SIZE}, got {self.image_size}"
            )
        self.items = _check_items(items)
        self.seed = check_int(seed, "seed", minimum=0)
        if root is not None and not isinstance(root, (str, os.PathLike)):
            raise TypeError(f"`root` must be a path or None, got {type_name(root)}")
        self.root = root
        self._pool: GarmentPool = load_garments(self.split, root)

    def __len__(self) -> int:
        return self.num_scenes

    def __getitem__(self, index: int) -> SceneSample:
        if not is_int(index):
            raise TypeError(f"scene index must be an int, got {type_name(index)}")
        if not -self.num_scenes <= index < self.num_scenes:
            raise IndexError(f"scene index {index} is out of range for {self.num_scenes} scenes")
        index = int(index) % self.num_scenes
        rng = np.random.default_rng([self.seed, _SPLIT_CODES[self.split], index])
        image, owner, classes, item_ids = _draw_scene(rng, self._pool, self.image_size, self.items)
        return _sample(image, owner, classes, item_ids, index)

    def __repr__(self) -> str:
        source = "bundled subset" if self.root is None else f"root={os.fspath(self.root)!r}"
        return (
            f"FashionScenes({self.split!r}, num_scenes={self.num_scenes}, image_size={self.image_size}, "
            f"items={self.items}, seed={self.seed}, {source})"
        )

    @staticmethod
    def natural_hierarchy() -> ClassHierarchy:
        """The garment hierarchy a class grouping should rediscover.

        Level 1 (4 groups): tops (T-shirt/top, Pullover, Dress, Coat, Shirt), Trouser, footwear (Sandal,
        Sneaker, Ankle boot), Bag. Level 2 (2 groups): clothing (tops and Trouser), accessories (footwear
        and Bag).

        Examples:
            >>> FashionScenes.natural_hierarchy().group_names(1)[2]
            '{Sandal, Sneaker, Ankle boot}'
        """
        level1 = [0, 1, 0, 0, 0, 2, 0, 2, 3, 2]
        level2 = [0 if group < 2 else 1 for group in level1]
        return ClassHierarchy([level1, level2], class_names=FASHION_MNIST_CLASSES)


def collate_scenes(samples: Sequence[Mapping[str, Any]]) -> SceneBatch:
    """Stack FashionScenes samples into a batch; boxes and item ids stay per-sample lists.

    The batch is a mapping with ``"image"`` and ``"labels"`` keys, the form [`hiercam.fit`][hiercam.fit]
    reads.

    Args:
        samples: ``B`` samples as returned by [`FashionScenes`][hiercam.FashionScenes] (same image size).

    Returns:
        A [`SceneBatch`][hiercam.datasets.SceneBatch]: ``image (B, 3, H, W)``, ``labels (B, 10)``,
        ``mask (B, H, W)``, ``index (B,)``, and the lists ``boxes`` (``B`` tensors ``(M_b, 5)``) and
        ``item_ids`` (``B`` tensors ``(M_b,)``).

    Raises:
        ValueError: ``samples`` is empty.
    """
    if len(samples) == 0:
        raise ValueError("`samples` must hold at least one sample, got an empty sequence")
    return SceneBatch(
        image=torch.stack([s["image"] for s in samples]),
        labels=torch.stack([s["labels"] for s in samples]),
        mask=torch.stack([s["mask"] for s in samples]),
        boxes=[s["boxes"] for s in samples],
        item_ids=[s["item_ids"] for s in samples],
        index=torch.tensor([int(s["index"]) for s in samples], dtype=torch.long),
    )


def _check_items(items: Any) -> tuple[int, int]:
    if not isinstance(items, Sequence) or isinstance(items, str) or len(items) != 2:
        raise TypeError(f"`items` must be a (min, max) pair of ints, got {items!r}")
    low = check_int(items[0], "items[0]")
    high = check_int(items[1], "items[1]")
    most = FashionScenes.MAX_ITEMS
    if not 1 <= low <= high <= most:
        raise ValueError(f"`items` must satisfy 1 <= min <= max <= {most}, got {(low, high)}")
    return low, high


# ---------------------------------------------------------------------------------------------- drawing
FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]


def _resize(planes: FloatArray, size: int) -> FloatArray:
    """Resize ``(P, h, w)`` planes to ``(P, size, size)``: antialiased bilinear, deterministic on CPU."""
    tensor = torch.from_numpy(np.ascontiguousarray(planes))[None]
    resized = F.interpolate(tensor, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    result: FloatArray = np.asarray(resized[0].numpy(), dtype=np.float32)
    return result


def _background(rng: np.random.Generator, size: int) -> FloatArray:
    """A smooth random colour field with stripes of random angle, frequency and colour, ``(3, S, S)``."""
    coarse = rng.uniform(0.15, 0.85, size=(3, 4, 4)).astype(np.float32)
    field = _resize(coarse, size)
    angle, cycles, phase = rng.uniform(0, np.pi), rng.uniform(3, 12), rng.uniform(0, 2 * np.pi)
    grid = np.arange(size, dtype=np.float32) / size
    wave = np.sin(
        2 * np.pi * cycles * (grid[None, :] * np.cos(angle) + grid[:, None] * np.sin(angle)) + phase
    )
    colour = rng.uniform(-0.2, 0.2, size=(3, 1, 1)).astype(np.float32)
    background: FloatArray = field + colour * wave.astype(np.float32)[None]
    return background


def _garment(rng: np.random.Generator, pool: GarmentPool, cls: int, size: int) -> tuple[FloatArray, int]:
    """A random garment of class ``cls``: ``(4, s, s)`` planes (RGB appearance, opacity) and its item id."""
    rows = pool.by_class[cls]
    row = int(rows[rng.integers(len(rows))])
    intensity = pool.images[row].astype(np.float32) / 255.0
    if rng.random() < 0.5:
        intensity = intensity[:, ::-1]
    side = round(float(rng.uniform(*_SCALE)) * size)
    # Opacity ramps from 0 at intensity 2/255 to 1 at 12/255: Fashion-MNIST's background is 0.
    opacity = np.clip((intensity - 2 / 255) / (10 / 255), 0.0, 1.0)
    intensity, opacity = _resize(np.stack([intensity, opacity]), side)
    tint = rng.uniform(0.15, 1.0, size=(3, 1, 1)).astype(np.float32)
    appearance = tint * (0.25 + 0.75 * np.clip(intensity, 0.0, 1.0))[None]
    return np.concatenate([appearance, np.clip(opacity, 0.0, 1.0)[None]]), int(pool.ids[row])


def _draw_scene(
    rng: np.random.Generator, pool: GarmentPool, size: int, items: tuple[int, int]
) -> tuple[FloatArray, IntArray, list[int], list[int]]:
    """Draw one scene: image ``(3, S, S)``, owner map ``(S, S)`` (-1 or garment number), classes, item ids."""
    count = int(rng.integers(items[0], items[1] + 1))
    classes = [int(c) for c in rng.choice(len(FASHION_MNIST_CLASSES), size=count, replace=False)]
    image = _background(rng, size)
    owner = np.full((size, size), -1, dtype=np.int64)
    areas = np.zeros(0, dtype=np.int64)  # own pixels of each placed garment
    visible = np.zeros(0, dtype=np.int64)  # of which still visible
    placed_classes: list[int] = []
    item_ids: list[int] = []
    for cls in classes:
        planes, item_id = _garment(rng, pool, cls, size)
        side = planes.shape[-1]
        solid = planes[3] >= 0.5
        if not solid.any():
            continue
        for _ in range(_ATTEMPTS):
            y, x = (int(v) for v in rng.integers(0, size - side + 1, size=2))
            window = owner[y : y + side, x : x + side]
            hidden = np.bincount(window[solid] + 1, minlength=len(areas) + 1)[1:]
            if bool((visible - hidden >= _MIN_VISIBLE * areas).all()):
                break
        else:
            continue
        alpha = planes[3][None]
        patch = image[:, y : y + side, x : x + side]
        patch[...] = patch * (1 - alpha) + planes[:3] * alpha
        window[solid] = len(areas)
        own = int(solid.sum())
        areas, visible = np.append(areas, own), np.append(visible - hidden, own)
        placed_classes.append(cls)
        item_ids.append(item_id)
    image += rng.standard_normal(image.shape, dtype=np.float32) * np.float32(rng.uniform(0.02, 0.08))
    np.clip(image, 0.0, 1.0, out=image)
    return image, owner, placed_classes, item_ids


def _sample(
    image: FloatArray, owner: IntArray, classes: list[int], item_ids: list[int], index: int
) -> SceneSample:
    """Targets, label map and tight boxes of the visible pixels, from the owner map of a drawn scene."""
    labels = np.zeros_like(owner)
    targets = torch.zeros(len(FASHION_MNIST_CLASSES), dtype=torch.float32)
    rows: list[tuple[int, list[float], int]] = []
    for number, (cls, item_id) in enumerate(zip(classes, item_ids, strict=True)):
        visible = owner == number
        labels[visible] = cls + 1
        targets[cls] = 1.0
        ys, xs = np.nonzero(visible)
        box = [float(cls), float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]
        rows.append((cls, box, item_id))
    rows.sort(key=lambda row: row[0])
    return SceneSample(
        image=torch.from_numpy(image),
        labels=targets,
        mask=torch.from_numpy(labels),
        boxes=torch.tensor([row[1] for row in rows], dtype=torch.float32).reshape(-1, 5),
        item_ids=torch.tensor([row[2] for row in rows], dtype=torch.long),
        index=index,
    )
