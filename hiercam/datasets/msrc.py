"""MSRC-21: real photos with pixel labels for measuring CAM quality (image, labels, label map, boxes).

Reads the layout of the MSRC-21 folder the user provides (``images/<id>.jpg``, ``labels/<id>.png``,
``image_labels.json``, ``classes.json``, ``splits/<split>.txt``); hiercam ships none of it: the photos are
under a non-commercial licence (Microsoft Research Digital Image License Agreement).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TypedDict

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from hiercam._validation import check_choice, check_int, format_shape, type_name
from hiercam.datasets._msrc_layout import (
    MSRC21_CLASSES,
    MSRC21_STUFF_CLASSES,
    SPLITS,
    VOID,
    MaskTransform,
    apply_transform,
    check_image_size,
    class_indices,
    read_classes,
    read_image_labels,
    read_split,
)
from hiercam.datasets.fake_msrc import write_fake_msrc21
from hiercam.maps import mask_boxes

__all__ = [
    "MSRC21",
    "MSRC21Sample",
    "MSRC21_CLASSES",
    "MSRC21_STUFF_CLASSES",
    "write_fake_msrc21",
]


class MSRC21Sample(TypedDict):
    """One MSRC-21 sample: ``K`` scored classes, ``H x W`` after resizing, ``M`` boxes.

    The keys and dtypes of [`VOCSample`][hiercam.datasets.VOCSample]; batch with
    [`collate_voc`][hiercam.datasets.collate_voc].
    """

    image: Tensor  # (3, H, W) float32 in [0, 1]
    labels: Tensor  # (K,) float32 multi-hot
    mask: Tensor  # (H, W) int64: 0 background, k + 1 class k, 255 void (ignored)
    boxes: Tensor  # (M, 5) float32 rows (class, x1, y1, x2, y2), x2/y2 exclusive
    index: int


class MSRC21(Dataset[MSRC21Sample]):
    """MSRC-21 (591 real photos, 21 classes, pixel labels with void) for multi-label training and CAM scores.

    The folder is the one described in its ``README.md``: ``images/<id>.jpg``, ``labels/<id>.png``
    (single-channel, ids ``0..20``, ``255`` void), ``image_labels.json`` (``{id: [class ids]}``),
    ``classes.json`` (``{"classes": [21 names], ...}``) and ``splits/{train,val,test,all}.txt`` (the standard
    split of Shotton et al., 276 / 59 / 256 images). Nothing is downloaded and nothing of it ships with
    hiercam (non-commercial licence).

    **Checks.** The constructor reads only the small files and tests that every listed image and label map
    exists, so a missing or partial tree fails at once with a message naming the path. Pixel values are
    read, and checked (ids ``0..20`` or ``255``, the size of the photo, the classes of ``image_labels.json``),
    when a sample is loaded.

    **Resizing.** With ``image_size`` the photo is resized bilinearly (antialiased) and the label map by
    nearest neighbour (``"nearest-exact"``: each output pixel takes the input pixel under its centre) to a
    fixed size, **stretched**, without padding or cropping: MSRC photos are 320 x 213 or 320 x 240 (some
    upright), so the aspect ratio changes by at most 1.5; every labelled pixel stays in the frame and no
    padding adds pixels that belong to no class. ``image_size=None`` keeps each photo's own size (batches then
    need ``batch_size=1``).

    **Background.** MSRC-21 labels every pixel with a class or void; it has no background class. By default
    (``background_classes=()``) all 21 classes are scored: label ``k + 1`` is class ``k`` and label ``0``
    never occurs in the masks, so pixels the IRN convention gives to the background plane count as misses
    of their true class; average the IoUs of [`scored_labels`][hiercam.datasets.MSRC21.scored_labels] only
    (label 0's IoU is 0 by construction). With ``background_classes`` (e.g.
    [`MSRC21_STUFF_CLASSES`][hiercam.datasets.MSRC21_STUFF_CLASSES]) those classes become the background,
    label ``0``: they leave ``labels`` and ``classes`` and the other classes are renumbered in their
    order. ``docs/datasets.md`` says why the default scores all classes.

    **Boxes.** One box per 8-connected component of each class in the final label map (after resizing and
    ``transform``), ``(class, x1, y1, x2, y2)`` with exclusive far edges (the box convention of
    [`hiercam.maps`][hiercam.maps], found by [`mask_boxes`][hiercam.maps.mask_boxes]); components with fewer
    than ``min_box_area`` pixels get no box; rows are sorted by
    class, then by the first pixel of the component in row-major order. Void pixels belong to no component,
    so MSRC's void bands can split an object into several boxes.

    **Labels.** ``labels`` come from ``image_labels.json`` (the classes of the full-size label map, which
    are checked to agree), even if a small region vanishes in the resizing. A ``transform`` may remove a
    class (a crop): a class that had pixels before the transform and has none after it is no longer a target.

    Args:
        root: the MSRC-21 folder (e.g. ``../shared/data/msrc21``).
        split: ``"train"`` (276), ``"val"`` (59), ``"test"`` (256) or ``"all"`` (591).
        image_size: output side ``S`` (square ``S x S``), an ``(H, W)`` pair, or ``None`` for the original
            size.
        transform: optional ``transform(image, mask) -> (image, mask)`` applied after resizing, e.g. a
            random flip; boxes and labels are computed from its output. It receives a ``(3, H, W)`` float32
            image and a ``(H, W)`` int64 mask and must return tensors of those ranks with equal sizes.
        min_box_area: smallest component, in pixels of the final label map, that gets a box (>= 0; 0 keeps
            every component). The default 100 drops specks: at 224 x 224 it is 0.2 % of the image, and 12 of
            the 1,720 class components of MSRC-21 are smaller.
        background_classes: names (or ids) of classes to treat as background, label 0.

    Attributes:
        root: the folder.
        split: the split name.
        ids: the image ids of the split, in the order of its file.
        all_classes: the 21 names of ``classes.json``.
        classes: the ``K`` scored class names: ``all_classes`` without ``background_classes``.
        background_classes: the names mapped to background.

    Raises:
        TypeError: an argument has the wrong type.
        ValueError: unknown ``split`` or class name, a bad ``image_size`` or ``min_box_area``, every class in
            ``background_classes``, or a file of the tree with the wrong content (the message names it).
        FileNotFoundError: ``root``, ``classes.json``, ``image_labels.json``, the split file, or an image or
            label map of a listed id is missing (the message names the path).

    Examples:
        >>> import tempfile
        >>> root = write_fake_msrc21(tempfile.mkdtemp(), num_images=8)["root"]
        >>> dataset = MSRC21(root, "train", image_size=64)
        >>> sample = dataset[0]
        >>> sample["image"].shape, sample["labels"].shape, sample["mask"].shape
        (torch.Size([3, 64, 64]), torch.Size([21]), torch.Size([64, 64]))
        >>> stuff = MSRC21(root, "train", image_size=64, background_classes=MSRC21_STUFF_CLASSES)
        >>> len(stuff.classes), stuff.classes[:3], stuff.scored_labels[:3]
        (15, ('cow', 'sheep', 'aeroplane'), (0, 1, 2))
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str,
        *,
        image_size: int | tuple[int, int] | None = 224,
        transform: MaskTransform | None = None,
        min_box_area: int = 100,
        background_classes: Sequence[str | int] = (),
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
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"MSRC-21 folder {self.root} not found (pass the folder holding images/)")
        self.all_classes = read_classes(self.root / "classes.json")
        background = class_indices(background_classes, self.all_classes)
        if len(background) == len(self.all_classes):
            raise ValueError("`background_classes` must leave at least one class to score, got all of them")
        self.background_classes = tuple(self.all_classes[c] for c in background)
        kept = [c for c in range(len(self.all_classes)) if c not in background]
        self.classes = tuple(self.all_classes[c] for c in kept)
        # lookup table from label-map ids to mask labels: void stays 255, background 0, class k -> k + 1
        self._lut = np.full(256, VOID, dtype=np.int64)
        self._lut[list(background)] = 0
        self._lut[kept] = np.arange(1, len(kept) + 1)
        self._new_index = {old: new for new, old in enumerate(kept)}
        self.ids = read_split(self.root / "splits" / f"{self.split}.txt")
        self._labels = read_image_labels(self.root / "image_labels.json", self.ids, len(self.all_classes))
        where = self.root / "splits" / f"{self.split}.txt"
        for image_id in self.ids:
            for path in (self._image_path(image_id), self._label_path(image_id)):
                if not path.is_file():
                    raise FileNotFoundError(f"{path} (listed in {where}) not found")

    # ------------------------------------------------------------------------------------------- data
    @property
    def num_classes(self) -> int:
        """``K``, the number of scored classes (21 without background classes)."""
        return len(self.classes)

    @property
    def scored_labels(self) -> tuple[int, ...]:
        """The mask labels whose IoUs make the mIoU: ``1..K`` with no background class, else ``0..K``.

        Without ``background_classes`` no pixel is background, so the background label's IoU (label 0) is 0
        by construction and is left out of the mean: ``per_class[list(dataset.scored_labels)].nanmean()``
        on the ``per_class`` of [`mean_iou`][hiercam.mean_iou] with ``num_classes = K + 1``.
        """
        first = 0 if self.background_classes else 1
        return tuple(range(first, self.num_classes + 1))

    @property
    def labels(self) -> Tensor:
        """``(N, K)`` float32 multi-hot labels of the images, from ``image_labels.json`` (no pixel read)."""
        out = torch.zeros(len(self.ids), self.num_classes)
        for row, image_id in enumerate(self.ids):
            for cls in self._labels[image_id]:
                if cls in self._new_index:
                    out[row, self._new_index[cls]] = 1.0
        return out

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> MSRC21Sample:
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"sample index must be an int, got {type_name(index)}")
        if not -len(self.ids) <= index < len(self.ids):
            raise IndexError(f"sample index {index} is out of range for {len(self.ids)} images")
        index = int(index) % len(self.ids)
        image_id = self.ids[index]
        image = self._read_image(image_id)
        ids = self._read_label_map(image_id, image.shape[-2:])
        mask = torch.from_numpy(self._lut[ids])
        if self.image_size is not None:
            image = F.interpolate(
                image[None], size=self.image_size, mode="bilinear", antialias=True, align_corners=False
            )[0].clamp(0, 1)
            mask = F.interpolate(mask[None, None].float(), size=self.image_size, mode="nearest-exact")[0, 0]
            mask = mask.long()
        targets = torch.zeros(self.num_classes)
        for cls in self._labels[image_id]:
            if cls in self._new_index:
                targets[self._new_index[cls]] = 1.0
        if self.transform is not None:
            before = set(mask.unique().tolist())
            image, mask = apply_transform(self.transform, image, mask)
            for label in before - set(mask.unique().tolist()) - {0, VOID}:
                targets[label - 1] = 0.0
        return {
            "image": image,
            "labels": targets,
            "mask": mask,
            "boxes": self._boxes(mask),
            "index": index,
        }

    def __repr__(self) -> str:
        background = f", background_classes={self.background_classes}" if self.background_classes else ""
        return (
            f"MSRC21({str(self.root)!r}, {self.split!r}, {len(self)} images, image_size={self.image_size}, "
            f"min_box_area={self.min_box_area}{background})"
        )

    # ------------------------------------------------------------------------------------------- helpers
    def _image_path(self, image_id: str) -> Path:
        return self.root / "images" / f"{image_id}.jpg"

    def _label_path(self, image_id: str) -> Path:
        return self.root / "labels" / f"{image_id}.png"

    def _read_image(self, image_id: str) -> Tensor:
        from PIL import Image

        with Image.open(self._image_path(image_id)) as photo:
            pixels = np.asarray(photo.convert("RGB"), dtype=np.uint8).copy()
        return torch.from_numpy(pixels).permute(2, 0, 1).float() / 255

    def _read_label_map(self, image_id: str, size: Sequence[int]) -> npt.NDArray[np.uint8]:
        """The ``uint8`` label map of ``image_id``, checked: one channel, the photo's size, known ids."""
        from PIL import Image

        path = self._label_path(image_id)
        with Image.open(path) as png:
            mode = png.mode
            ids: npt.NDArray[np.uint8] | None = (
                np.asarray(png, dtype=np.uint8).copy() if mode in ("L", "P") else None
            )
        if ids is None:
            raise ValueError(f"{path}: a label map must be a single-channel 8-bit PNG, got mode {mode!r}")
        if ids.shape != tuple(size):
            raise ValueError(
                f"{path}: label map of size {format_shape(ids.shape)} for a photo of size "
                f"{format_shape(size)}"
            )
        counts = np.bincount(ids.ravel(), minlength=256)
        bad = np.flatnonzero(counts[len(self.all_classes) : VOID])
        if len(bad):
            shown = ", ".join(str(int(v) + len(self.all_classes)) for v in bad[:5])
            raise ValueError(
                f"{path}: label ids must be 0..{len(self.all_classes) - 1} or {VOID} (void), got {shown}"
            )
        present = sorted(int(v) for v in np.flatnonzero(counts[: len(self.all_classes)]))
        if present != sorted(self._labels[image_id]):
            raise ValueError(
                f"{path} holds the classes {present}, but image_labels.json lists "
                f"{sorted(self._labels[image_id])} for {image_id!r}"
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
