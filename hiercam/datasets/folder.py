"""A segmentation folder: your own photos, class names and masks, for multi-label training and CAM scores.

The layout generalises the MSRC-21 folder (which [`MSRC21`][hiercam.datasets.MSRC21] reads as a preset)::

    root/classes.json        {"classes": [K names], "void": 255 (optional), "colors": [...] (optional)}
    root/images/<id>.jpg     (.jpeg or .png)
    root/masks/<id>.png      single channel, ids 0..K-1, void 255 (optional: without masks/ nothing is scored)
    root/splits/train.txt    one id per line; val.txt, test.txt (and all.txt) alike
    root/image_labels.json   optional {id: [class ids]}; without it the labels come from the masks
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from hiercam._io import open_image
from hiercam._validation import check_choice, check_int, is_int, is_real, type_name
from hiercam.datasets._folder_files import (
    FolderClasses,
    class_pixel_counts,
    present_classes,
    read_folder_classes,
    read_mask,
)
from hiercam.datasets._msrc_layout import (
    SPLITS,
    VOID,
    MaskTransform,
    apply_transform,
    check_image_size,
    class_indices,
    read_image_labels,
    read_split,
)
from hiercam.maps import mask_boxes

__all__ = ["SegmentationFolder", "SegmentationSample", "FolderLayout"]


class SegmentationSample(TypedDict):
    """One sample of a segmentation folder: ``K`` scored classes, ``H x W`` after resizing, ``M`` boxes.

    The keys and dtypes of [`VOCSample`][hiercam.datasets.VOCSample]; batch with
    [`collate_voc`][hiercam.datasets.collate_voc].
    """

    image: Tensor  # (3, H, W) float32 in [0, 1]
    labels: Tensor  # (K,) float32 multi-hot
    mask: Tensor  # (H, W) int64: 0 background, k + 1 class k, 255 void (ignored)
    boxes: Tensor  # (M, 5) float32 rows (class, x1, y1, x2, y2), x2/y2 exclusive
    index: int


@dataclass(frozen=True)
class FolderLayout:
    """Where a folder keeps its files and what it requires (a preset such as MSRC-21 fixes its own).

    Attributes:
        name: what the folder is called in messages.
        described: the folder with its article, in messages ("is this ...?").
        masks: the folder of the label maps.
        image_suffixes: the image file endings tried, in order.
        labels_required: ``image_labels.json`` must exist.
    """

    name: str = "segmentation folder"
    described: str = "a segmentation folder"
    masks: str = "masks"
    image_suffixes: tuple[str, ...] = (".jpg", ".jpeg", ".png")
    labels_required: bool = False


class SegmentationFolder(Dataset[SegmentationSample]):
    r"""Images with masks of ``K`` classes of your own, read from a folder (layout in the module docstring).

    **Checks.** The constructor reads the small files (``classes.json`` first, validated before anything is
    allocated: ``K >= 1`` distinct names, a void id ``K..255``), checks that every listed image (and mask)
    exists, and refuses what is wrong with a message naming the file. Pixels are read when a sample is loaded
    and checked then (one channel, the photo's size, ids ``0..K-1`` or void) -- except without
    ``image_labels.json``: then every mask of the split is read once here, to find the labels.

    **Labels.** From ``image_labels.json`` when it exists (a sample's mask must then hold exactly those
    classes); otherwise from the masks: a class is present in an image when it covers at least
    ``min_pixels`` pixels and ``min_fraction`` of the image (full size); a smaller region of a class is set
    to void, so it is neither a target nor scored.

    **Without masks** (no ``masks/`` folder) the dataset still trains and explains: ``image_labels.json``
    gives the labels, each sample's mask is all void and it has no boxes (``has_masks`` is False), so no
    mask metric can be computed from it.

    **Resizing, background, boxes, transform**: as [`MSRC21`][hiercam.datasets.MSRC21] (stretched to
    ``image_size``, which may be an ``(H, W)`` pair such as ``(240, 320)`` for 4:3 photos; masks by nearest
    neighbour; ``background_classes`` become label 0 and leave ``classes``; one box per 8-connected component
    of at least ``min_box_area`` pixels).

    Args:
        root: the folder.
        split: ``"train"``, ``"val"``, ``"test"`` or ``"all"`` (the file ``splits/<split>.txt``).
        image_size: output side ``S`` (square), an ``(H, W)`` pair, or ``None`` for each image's own size.
        transform: optional ``transform(image, mask) -> (image, mask)`` applied after resizing.
        min_box_area: smallest component, in pixels of the final mask, that gets a box (>= 0).
        background_classes: names (or ids) of classes to treat as background, label 0.
        min_pixels: labels from masks: the fewest pixels of a class that make it present (>= 1).
        min_fraction: labels from masks: the smallest fraction of the image a present class covers (0..1).

    Attributes:
        root, split, ids: the folder, the split and its image ids (in the order of the split file).
        all_classes: the ``K`` names of ``classes.json``; ``classes``: those scored (without background).
        background_classes: the names mapped to background.
        void: the void id of the masks on disk; ``colors``: the colours of ``classes.json`` or ``None``.
        has_masks: whether the folder has masks.

    Raises:
        TypeError: an argument has the wrong type.
        ValueError: a bad argument or class name, every class in ``background_classes``, or a file with the
            wrong content (the message names it).
        FileNotFoundError: ``root``, ``classes.json``, the split file, or a listed image or mask is missing;
            ``image_labels.json`` without masks.

    Examples:
        >>> import json, tempfile
        >>> import numpy as np
        >>> from pathlib import Path
        >>> from PIL import Image
        >>> root = Path(tempfile.mkdtemp())
        >>> for sub in ("images", "masks", "splits"):
        ...     (root / sub).mkdir()
        >>> _ = (root / "classes.json").write_text(json.dumps({"classes": ["road", "car"]}))
        >>> mask = np.zeros((30, 40), np.uint8); mask[10:20, 5:25] = 1; mask[0] = 255
        >>> Image.fromarray(mask).save(root / "masks" / "a.png")
        >>> Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(root / "images" / "a.png")
        >>> _ = (root / "splits" / "train.txt").write_text("a\n")
        >>> dataset = SegmentationFolder(root, "train", image_size=(24, 32))
        >>> sample = dataset[0]
        >>> dataset.classes, sample["labels"].tolist(), tuple(sample["mask"].shape)
        (('road', 'car'), [1.0, 1.0], (24, 32))
    """

    layout: FolderLayout = FolderLayout()

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str,
        *,
        image_size: int | tuple[int, int] | None = 224,
        transform: MaskTransform | None = None,
        min_box_area: int = 100,
        background_classes: Sequence[str | int] = (),
        min_pixels: int = 1,
        min_fraction: float = 0.0,
    ) -> None:
        if not isinstance(root, (str, os.PathLike)):
            raise TypeError(f"`root` must be a path, got {type_name(root)}")
        if not isinstance(split, str):
            raise TypeError(f"`split` must be one of {SPLITS}, got {type_name(split)}")
        self.split = check_choice(split, "split", SPLITS)
        self.image_size = check_image_size(image_size)
        if transform is not None and not callable(transform):
            raise TypeError(f"`transform` must be None or a callable, got {type_name(transform)}")
        self.transform = transform
        self.min_box_area = check_int(min_box_area, "min_box_area", minimum=0)
        self.min_pixels = check_int(min_pixels, "min_pixels", minimum=1)
        if not is_real(min_fraction):
            raise TypeError(f"`min_fraction` must be a number, got {type_name(min_fraction)}")
        if not 0 <= float(min_fraction) < 1:
            raise ValueError(f"`min_fraction` must be in [0, 1), got {float(min_fraction)}")
        self.min_fraction = float(min_fraction)
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(
                f"{self.layout.name} {self.root} not found (pass the folder holding images/)"
            )
        found = self._read_classes(self.root / "classes.json")
        self.all_classes, self.void, self.colors = found.names, found.void, found.colors
        background = class_indices(background_classes, self.all_classes)
        if len(background) == len(self.all_classes):
            raise ValueError("`background_classes` must leave at least one class to score, got all of them")
        self.background_classes = tuple(self.all_classes[c] for c in background)
        kept = [c for c in range(len(self.all_classes)) if c not in background]
        self.classes = tuple(self.all_classes[c] for c in kept)
        # lookup table from mask ids to sample labels: void 255, background 0, class k -> its rank + 1
        self._lut = np.full(256, VOID, dtype=np.int64)
        self._lut[list(background)] = 0
        self._lut[kept] = np.arange(1, len(kept) + 1)
        self._new_index = {old: new for new, old in enumerate(kept)}
        where = self.root / "splits" / f"{self.split}.txt"
        self.ids = read_split(where)
        self.has_masks = (self.root / self.layout.masks).is_dir() or self.layout.labels_required
        labels_file = self.root / "image_labels.json"
        if not self.has_masks and not labels_file.is_file():
            raise FileNotFoundError(
                f"{self.root} has neither {self.layout.masks}/ nor image_labels.json: the labels come from "
                "one of them"
            )
        self._images = {image_id: self._find_image(image_id, where) for image_id in self.ids}
        for image_id in self.ids if self.has_masks else ():
            if not self._mask_path(image_id).is_file():
                raise FileNotFoundError(f"{self._mask_path(image_id)} (listed in {where}) not found")
        self._from_masks = self.has_masks and not labels_file.is_file() and not self.layout.labels_required
        self._small: dict[str, list[int]] = {}
        if self._from_masks:
            self._labels = self._labels_from_masks()
        else:
            self._labels = read_image_labels(
                labels_file, self.ids, len(self.all_classes), self.layout.described
            )

    def _read_classes(self, path: Path) -> FolderClasses:
        return read_folder_classes(path)

    # ------------------------------------------------------------------------------------------- data
    @property
    def num_classes(self) -> int:
        """``K``, the number of scored classes."""
        return len(self.classes)

    @property
    def scored_labels(self) -> tuple[int, ...]:
        """The mask labels whose IoUs make the mIoU: ``1..K`` with no background class, else ``0..K``."""
        first = 0 if self.background_classes else 1
        return tuple(range(first, self.num_classes + 1))

    @property
    def labels(self) -> Tensor:
        """``(N, K)`` float32 multi-hot labels of the images (no pixel read)."""
        out = torch.zeros(len(self.ids), self.num_classes)
        for row, image_id in enumerate(self.ids):
            out[row] = self._targets(image_id)
        return out

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> SegmentationSample:
        if not is_int(index):
            raise TypeError(f"sample index must be an int, got {type_name(index)}")
        if not -len(self.ids) <= index < len(self.ids):
            raise IndexError(f"sample index {index} is out of range for {len(self.ids)} images")
        index = int(index) % len(self.ids)
        image_id = self.ids[index]
        image = self._read_image(image_id)
        if self.has_masks:
            mask = torch.from_numpy(self._sample_lut(image_id)[self._read_mask(image_id, image.shape[-2:])])
        else:
            mask = torch.full(image.shape[-2:], VOID, dtype=torch.long)
        if self.image_size is not None:
            image = F.interpolate(
                image[None], size=self.image_size, mode="bilinear", antialias=True, align_corners=False
            )[0].clamp(0, 1)
            mask = F.interpolate(mask[None, None].float(), size=self.image_size, mode="nearest-exact")[0, 0]
            mask = mask.long()
        targets = self._targets(image_id)
        if self.transform is not None:
            before = set(mask.unique().tolist())
            image, mask = apply_transform(self.transform, image, mask)
            for label in before - set(mask.unique().tolist()) - {0, VOID}:
                targets[label - 1] = 0.0
        return {"image": image, "labels": targets, "mask": mask, "boxes": self._boxes(mask), "index": index}

    def __repr__(self) -> str:
        background = f", background_classes={self.background_classes}" if self.background_classes else ""
        return (
            f"{type(self).__name__}({str(self.root)!r}, {self.split!r}, {len(self)} images, "
            f"{len(self.all_classes)} classes, image_size={self.image_size}, "
            f"min_box_area={self.min_box_area}{background})"
        )

    # ------------------------------------------------------------------------------------------- helpers
    def _find_image(self, image_id: str, where: Path) -> Path:
        stem = self.root / "images" / image_id
        found = [stem.with_name(image_id + s) for s in self.layout.image_suffixes]
        found = [path for path in found if path.is_file()]
        if not found:
            endings = " or ".join(self.layout.image_suffixes)
            raise FileNotFoundError(f"{stem}{endings} (listed in {where}) not found")
        if len(found) > 1:
            raise ValueError(f"{', '.join(map(str, found))}: two images of {image_id!r} (keep one)")
        return found[0]

    def _mask_path(self, image_id: str) -> Path:
        return self.root / self.layout.masks / f"{image_id}.png"

    def _labels_from_masks(self) -> dict[str, list[int]]:
        """The labels of every image, from its mask at full size (``min_pixels``, ``min_fraction``)."""
        out: dict[str, list[int]] = {}
        num_classes = len(self.all_classes)
        for image_id in self.ids:
            ids = read_mask(self._mask_path(image_id), None, num_classes, self.void)
            counts = class_pixel_counts(ids, num_classes)
            out[image_id] = present_classes(counts, ids.size, self.min_pixels, self.min_fraction)
            self._small[image_id] = [c for c in np.flatnonzero(counts).tolist() if c not in out[image_id]]
        return out

    def _sample_lut(self, image_id: str) -> npt.NDArray[np.int64]:
        """The lookup table of one image: the folder's, with the void id and too small classes void."""
        lut: npt.NDArray[np.int64] = self._lut.copy()
        lut[self._small.get(image_id, [])] = VOID
        return lut

    def _targets(self, image_id: str) -> Tensor:
        targets = torch.zeros(self.num_classes)
        for cls in self._labels[image_id]:
            if cls in self._new_index:
                targets[self._new_index[cls]] = 1.0
        return targets

    def _read_image(self, image_id: str) -> Tensor:
        with open_image(self._images[image_id]) as photo:
            pixels = np.asarray(photo.convert("RGB"), dtype=np.uint8).copy()
        return torch.from_numpy(pixels).permute(2, 0, 1).float() / 255

    def _read_mask(self, image_id: str, size: Sequence[int]) -> npt.NDArray[np.uint8]:
        """The mask of ``image_id``, checked, and (with ``image_labels.json``) agreeing with its labels."""
        path = self._mask_path(image_id)
        ids = read_mask(path, size, len(self.all_classes), self.void)
        if not self._from_masks:
            present = np.flatnonzero(class_pixel_counts(ids, len(self.all_classes))).tolist()
            if present != self._labels[image_id]:
                raise ValueError(
                    f"{path} holds the classes {present}, but image_labels.json lists "
                    f"{self._labels[image_id]} for {image_id!r}"
                )
        return ids

    def _boxes(self, mask: Tensor) -> Tensor:
        """``(M, 5)`` boxes of the 8-connected components of each scored class in ``mask``."""
        labels = mask.cpu()
        rows = []
        for label in labels.unique().tolist():
            if label == 0 or label == VOID:
                continue
            found = mask_boxes(labels == label, "all", self.min_box_area)
            rows.append(torch.cat([torch.full((len(found), 1), float(label - 1)), found], dim=1))
        if not rows:
            return torch.zeros(0, 5)
        return torch.cat(rows)
