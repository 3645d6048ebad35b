"""PASCAL VOC 2012 for multi-label classification and CAM evaluation: image, labels, label map, boxes.

Reads the standard layout (``VOCdevkit/VOC2012/{JPEGImages, Annotations, SegmentationClass, ImageSets}``)
and, when present, the usual SBD augmentation (``SegmentationClassAug/`` and
``ImageSets/Segmentation/train_aug.txt``: 10,582 training images). Nothing is downloaded unless asked.
"""

from __future__ import annotations

import math
import os
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar, TypedDict

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from hiercam._io import open_image, read_text_file
from hiercam._validation import check_int, type_name

__all__ = ["VOC_CLASSES", "VOCMultiLabel", "VOCSample", "VOCTransform", "collate_voc"]

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
    "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip
_CLASS_INDEX = {name: index for index, name in enumerate(VOC_CLASSES)}


class VOCSample(TypedDict):
    """One sample: shapes after the transform (``H x W``, e.g. 224 x 224), ``M`` objects."""

    image: Tensor  # (3, H, W) float32 in [0, 1]
    labels: Tensor  # (20,) float32 multi-hot
    mask: Tensor  # (H, W) int64: 0 background, k + 1 class k, 255 ignore (empty (0, 0) without masks)
    boxes: Tensor  # (M, 5) float32 (class, x1, y1, x2, y2), x2/y2 exclusive (empty without boxes)
    index: int


class VOCTransform:
    """Resize the short side to ``size``, crop ``crop x crop``, optionally flip: image, mask and boxes alike.

    The paper's preprocessing (``train=False``, the default): short side 224, centre crop 224. With
    ``train=True`` the crop position is random and the image is flipped horizontally with probability 1/2
    (the random numbers come from ``torch``'s global generator, which a seeded DataLoader controls). Images
    are resized bilinearly (antialiased), masks by nearest neighbour; boxes are scaled, shifted, clipped to
    the crop, and dropped when nothing of them is left.

    Args:
        size: short side after resizing.
        crop: side of the square crop (``<= size``).
        train: random crop and flip instead of the centre crop.

    Examples:
        >>> import torch
        >>> image, mask = torch.rand(3, 300, 500), torch.zeros(300, 500, dtype=torch.long)
        >>> boxes = torch.tensor([[14.0, 0.0, 0.0, 250.0, 150.0]])
        >>> out = VOCTransform()(image, mask, boxes)
        >>> out[0].shape, out[1].shape
        (torch.Size([3, 224, 224]), torch.Size([224, 224]))
        >>> out[2]  # 500 * 224 / 300 = 373 wide, centre crop from column 74: x2 = 250 * 373 / 500 - 74
        tensor([[ 14.0000,   0.0000,   0.0000, 112.5000, 112.0000]])
    """

    def __init__(self, size: int = 224, crop: int = 224, *, train: bool = False) -> None:
        self.size = check_int(size, "size", minimum=1)
        self.crop = check_int(crop, "crop", minimum=1, maximum=self.size)
        self.train = bool(train)

    def __call__(
        self, image: Tensor, mask: Tensor | None, boxes: Tensor | None
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Transform ``image (3, H, W)``, ``mask (H, W)`` and ``boxes (M, 5)`` (either may be ``None``)."""
        height, width = image.shape[-2:]
        scale = self.size / min(height, width)
        new_h, new_w = max(self.crop, round(height * scale)), max(self.crop, round(width * scale))
        image = F.interpolate(
            image[None], size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False
        )[0]
        if self.train:
            top = int(torch.randint(0, new_h - self.crop + 1, ()))
            left = int(torch.randint(0, new_w - self.crop + 1, ()))
            flip = bool(torch.rand(()) < 0.5)
        else:
            top, left, flip = (new_h - self.crop) // 2, (new_w - self.crop) // 2, False
        image = image[:, top : top + self.crop, left : left + self.crop].clamp(0, 1)
        if mask is not None:
            mask = F.interpolate(mask[None, None].float(), size=(new_h, new_w), mode="nearest")[0, 0].long()
            mask = mask[top : top + self.crop, left : left + self.crop]
        if boxes is not None and len(boxes):
            sx, sy = new_w / width, new_h / height
            coords = boxes[:, 1:] * torch.tensor([sx, sy, sx, sy]) - torch.tensor([left, top, left, top])
            coords = coords.clamp(0, self.crop)
            keep = (coords[:, 2] > coords[:, 0]) & (coords[:, 3] > coords[:, 1])
            boxes = torch.cat([boxes[:, :1], coords], dim=1)[keep]
        if flip:
            image = image.flip(-1)
            mask = None if mask is None else mask.flip(-1)
            if boxes is not None and len(boxes):
                boxes = torch.stack(
                    [boxes[:, 0], self.crop - boxes[:, 3], boxes[:, 2], self.crop - boxes[:, 1], boxes[:, 4]],
                    1,
                )
        return image, mask, boxes

    def __repr__(self) -> str:
        return f"VOCTransform(size={self.size}, crop={self.crop}, train={self.train})"


Transform = Callable[[Tensor, Tensor | None, Tensor | None], tuple[Tensor, Tensor | None, Tensor | None]]


def collate_voc(samples: Sequence[VOCSample]) -> dict[str, Any]:
    """Stack images, labels and masks; keep boxes as a list (their number varies)."""
    return {
        "image": torch.stack([s["image"] for s in samples]),
        "labels": torch.stack([s["labels"] for s in samples]),
        "mask": torch.stack([s["mask"] for s in samples]),
        "boxes": [s["boxes"] for s in samples],
        "index": torch.tensor([s["index"] for s in samples]),
    }


class VOCMultiLabel(Dataset[VOCSample]):
    """PASCAL VOC 2012 images with 20-class multi-hot labels, label maps and boxes.

    Targets come from the XML annotations (a class is present when the image has an object of it; with
    ``ignore_difficult=True`` objects marked ``difficult`` are left out); after a cropping transform, a class
    whose every box falls outside the crop is absent. Label maps come from ``SegmentationClass/<id>.png``,
    else ``SegmentationClassAug/<id>.png`` (SBD), with 255 on ignored borders. Boxes are
    ``(class, x1, y1, x2, y2)``
    in pixels with exclusive far edges: VOC's 1-based inclusive ``(xmin, ymin, xmax, ymax)`` becomes
    ``(xmin - 1, ymin - 1, xmax, ymax)``, the convention of ``hiercam.metrics``.

    Args:
        root: the ``VOCdevkit`` folder (holding ``VOC2012``) or the ``VOC2012`` folder itself.
        split: an image set: ``"train"`` (1,464), ``"val"`` (1,449), ``"trainval"``, or ``"train_aug"``
            (10,582, SBD); read from ``ImageSets/Segmentation/<split>.txt`` (or ``image_set_dir``).
        image_set_dir: another folder holding ``<split>.txt``.
        transform: applied to image, mask and boxes together; default the paper's evaluation preprocessing
            ``VOCTransform`` (short side 224, centre crop 224); ``None`` keeps full images.
        with_masks: load label maps (every listed image must have one).
        with_boxes: parse boxes.
        ignore_difficult: leave ``difficult`` objects out of labels and boxes.
        download: fetch VOC 2012 into ``root`` through torchvision first (never by default).

    Raises:
        FileNotFoundError: a folder, the image-set file, or an image/annotation/mask of a listed id is missing
            (the message names it).
        ValueError: the image set is empty, or an annotation (the message names its file) does not parse,
            names an unknown class, or has a box with a missing, non-numeric or non-finite coordinate or a
            far edge before its near edge.

    Examples:
        >>> dataset = VOCMultiLabel("/data/VOCdevkit", "val")  # doctest: +SKIP
        >>> sample = dataset[0]  # doctest: +SKIP
        >>> sample["image"].shape, sample["labels"].shape, sample["mask"].shape  # doctest: +SKIP
        (torch.Size([3, 224, 224]), torch.Size([20]), torch.Size([224, 224]))
    """

    #: The 20 PASCAL VOC class names; class ``k`` is label ``k + 1`` in label maps.
    classes: ClassVar[tuple[str, ...]] = VOC_CLASSES

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str,
        *,
        image_set_dir: str | os.PathLike[str] | None = None,
        transform: Transform | str | None = "default",
        with_masks: bool = True,
        with_boxes: bool = True,
        ignore_difficult: bool = False,
        download: bool = False,
    ) -> None:
        if not isinstance(split, str) or not split:
            raise TypeError(f"`split` must be an image-set name such as 'train_aug' or 'val', got {split!r}")
        if download:
            _download(Path(root), split)
        self.root = _voc_folder(Path(root))
        self.split = split
        if transform == "default":
            transform = VOCTransform()
        elif isinstance(transform, str):
            raise ValueError(f"`transform` must be 'default', None or a callable, got {transform!r}")
        elif transform is not None and not callable(transform):
            raise TypeError(f"`transform` must be 'default', None or a callable, got {type_name(transform)}")
        self.transform = transform
        self.with_masks, self.with_boxes, self.ignore_difficult = (
            bool(with_masks),
            bool(with_boxes),
            bool(ignore_difficult),
        )
        set_file = (
            Path(image_set_dir) if image_set_dir is not None else self.root / "ImageSets" / "Segmentation"
        ) / f"{split}.txt"
        if not set_file.is_file():
            hint = " (the SBD augmentation: put train_aug.txt there)" if split == "train_aug" else ""
            raise FileNotFoundError(f"image set file {set_file} not found{hint}")
        self.ids = [line.split()[0] for line in read_text_file(set_file).splitlines() if line.strip()]
        if not self.ids:
            raise ValueError(f"image set file {set_file} lists no image")
        for image_id in self.ids:
            for path in self._paths(image_id):
                if not path.is_file():
                    raise FileNotFoundError(f"{path} (listed in {set_file}) not found")
        self._objects = [
            _read_annotation(self.root / "Annotations" / f"{i}.xml", ignore_difficult) for i in self.ids
        ]

    @property
    def labels(self) -> Tensor:
        """``(N, 20)`` multi-hot labels of the full (untransformed) images, from the annotations."""
        out = torch.zeros(len(self.ids), len(VOC_CLASSES))
        for row, objects in enumerate(self._objects):
            for cls, *_ in objects:
                out[row, int(cls)] = 1.0
        return out

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> VOCSample:
        image_id = self.ids[index]
        with open_image(self.root / "JPEGImages" / f"{image_id}.jpg") as photo:
            image = torch.from_numpy(np.asarray(photo.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1)
        pixels = image.float() / 255
        mask = None
        if self.with_masks:
            with open_image(self._mask_path(image_id)) as png:
                mask = torch.from_numpy(np.asarray(png, dtype=np.uint8).copy()).long()
        boxes: Tensor | None = torch.tensor(self._objects[index], dtype=torch.float32).reshape(-1, 5)
        if self.transform is not None:
            pixels, mask, boxes = self.transform(pixels, mask, boxes)
        targets = torch.zeros(len(VOC_CLASSES))
        if boxes is not None and len(boxes):
            targets[boxes[:, 0].long()] = 1.0
        return {
            "image": pixels,
            "labels": targets,
            "mask": mask if mask is not None else torch.zeros(0, 0, dtype=torch.long),
            "boxes": boxes if self.with_boxes and boxes is not None else torch.zeros(0, 5),
            "index": index,
        }

    def _mask_path(self, image_id: str) -> Path:
        official = self.root / "SegmentationClass" / f"{image_id}.png"
        return official if official.is_file() else self.root / "SegmentationClassAug" / f"{image_id}.png"

    def _paths(self, image_id: str) -> list[Path]:
        paths = [self.root / "JPEGImages" / f"{image_id}.jpg", self.root / "Annotations" / f"{image_id}.xml"]
        if self.with_masks:
            paths.append(self._mask_path(image_id))
        return paths

    def __repr__(self) -> str:
        where = f"{str(self.root)!r}, {self.split!r}"
        return f"VOCMultiLabel({where}, {len(self)} images, transform={self.transform})"


def _voc_folder(root: Path) -> Path:
    for candidate in (root / "VOC2012", root / "VOCdevkit" / "VOC2012", root):
        if (candidate / "JPEGImages").is_dir():
            return candidate
    raise FileNotFoundError(f"no VOC 2012 folder (with JPEGImages/) under {root}; pass the VOCdevkit folder")


def _read_annotation(path: Path, ignore_difficult: bool) -> list[tuple[float, float, float, float, float]]:
    """``(class, x1, y1, x2, y2)`` rows, exclusive far edges (VOC's 1-based inclusive boxes converted).

    Raises:
        ValueError: naming the file, for XML that does not parse, an unknown class, or a box whose
            coordinate is missing, not a finite number, or whose far edge lies before its near edge.
    """
    try:
        root = ElementTree.parse(path).getroot()
    except ElementTree.ParseError as error:
        raise ValueError(f"{path}: not a valid annotation XML: {error}") from None
    objects = []
    for number, node in enumerate(root.iter("object")):
        name = (node.findtext("name") or "").strip()
        if name not in _CLASS_INDEX:
            raise ValueError(f"{path}: unknown class {name!r}")
        if ignore_difficult and (node.findtext("difficult") or "0").strip() == "1":
            continue
        box = node.find("bndbox")
        if box is None:
            raise ValueError(f"{path}: object {name!r} has no bndbox")
        xmin, ymin, xmax, ymax = (
            _coordinate(path, number, name, box, tag) for tag in ("xmin", "ymin", "xmax", "ymax")
        )
        if xmax < xmin or ymax < ymin:
            raise ValueError(
                f"{path}: object {number} ({name!r}) has an empty box: "
                f"xmin {xmin:g}, ymin {ymin:g}, xmax {xmax:g}, ymax {ymax:g}"
            )
        objects.append((float(_CLASS_INDEX[name]), xmin - 1, ymin - 1, xmax, ymax))
    return objects


def _coordinate(path: Path, number: int, name: str, box: ElementTree.Element, tag: str) -> float:
    """One ``bndbox`` coordinate, a finite number; otherwise a ValueError naming the file and the tag."""
    text = (box.findtext(tag) or "").strip()
    where = f"{path}: object {number} ({name!r}) bndbox"
    if not text:
        raise ValueError(f"{where} has no <{tag}>")
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{where} <{tag}> must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"{where} <{tag}> must be finite, got {text!r}")
    return value


def _download(root: Path, split: str) -> None:
    from torchvision.datasets import VOCSegmentation

    image_set = split if split in ("train", "val", "trainval") else "trainval"
    VOCSegmentation(str(root), year="2012", image_set=image_set, download=True)
