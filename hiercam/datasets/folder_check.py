"""Check a segmentation folder without training: every file, every id, the labels, and what each split holds.

[`check_folder`][hiercam.datasets.check_folder] reads the whole folder (the layout of
[`SegmentationFolder`][hiercam.datasets.SegmentationFolder]) and collects every problem instead of stopping at
the first; ``hiercam data check ROOT`` prints its report.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from hiercam._io import open_image
from hiercam._validation import check_int, is_real, type_name
from hiercam.datasets._folder_files import (
    class_pixel_counts,
    present_classes,
    read_folder_classes,
    read_mask,
)
from hiercam.datasets._msrc_layout import read_image_labels, read_split
from hiercam.datasets.folder import FolderLayout

__all__ = ["ClassCounts", "SplitReport", "FolderReport", "check_folder"]

#: The splits the pipeline reads (``all.txt`` is optional and not checked).
CHECKED_SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class ClassCounts:
    """One class in one split.

    Attributes:
        name: the class name.
        images: images the class is present in (by the image labels).
        pixels: its pixels in the split's masks, at full size (0 without masks).
    """

    name: str
    images: int
    pixels: int


@dataclass(frozen=True)
class SplitReport:
    """What one split holds.

    Attributes:
        split: ``"train"``, ``"val"`` or ``"test"``.
        num_images: images listed in the split file.
        sizes: image sizes ``(H, W)`` and how many images have each, the most common first.
        classes: the ``K`` classes' counts, in the order of ``classes.json``.
    """

    split: str
    num_images: int
    sizes: tuple[tuple[tuple[int, int], int], ...]
    classes: tuple[ClassCounts, ...]

    @property
    def presence(self) -> tuple[float, ...]:
        """``K`` fractions: the share of the split's images each class is present in."""
        return tuple(c.images / max(self.num_images, 1) for c in self.classes)

    @property
    def absent(self) -> tuple[str, ...]:
        """The classes present in none of the split's images."""
        return tuple(c.name for c in self.classes if c.images == 0)


@dataclass(frozen=True)
class FolderReport:
    """The result of [`check_folder`][hiercam.datasets.check_folder].

    Attributes:
        root: the folder.
        classes: the ``K`` names of ``classes.json`` (empty when it could not be read).
        void: the void id of the masks.
        has_masks: whether the folder has a ``masks/`` folder.
        labels_from: where the image labels come from: ``"image_labels.json"`` or ``"masks"``.
        splits: one report per split that could be read.
        ubiquitous: classes present in more than ``ubiquitous_fraction`` of the training images.
        ubiquitous_fraction: the fraction that makes a class near-ubiquitous.
        errors: what is wrong (a file unreadable, an id out of range, labels disagreeing with a mask...).
        warnings: what runs but deserves a look (a class absent from a split, a near-ubiquitous class).
    """

    root: Path
    classes: tuple[str, ...]
    void: int
    has_masks: bool
    labels_from: Literal["image_labels.json", "masks"]
    splits: tuple[SplitReport, ...]
    ubiquitous: tuple[str, ...]
    ubiquitous_fraction: float
    errors: tuple[str, ...] = field(default=())
    warnings: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        """No error (warnings allowed)."""
        return not self.errors

    def to_text(self, max_errors: int = 20) -> str:
        """The report as text: a table per split, then the warnings and the first ``max_errors`` errors."""
        lines = [
            f"{self.root}: {len(self.classes)} classes, void {self.void}, labels from {self.labels_from}"
        ]
        if not self.has_masks:
            lines.append("no masks/: the mask metrics (mIoU, localisation, WSOL) are skipped")
        width = max([len("class"), *map(len, self.classes)])
        for split in self.splits:
            sizes = ", ".join(f"{h}x{w} ({n})" for (h, w), n in split.sizes[:4])
            more = f", {len(split.sizes) - 4} more sizes" if len(split.sizes) > 4 else ""
            lines += ["", f"{split.split}: {split.num_images} images, H x W {sizes}{more}", ""]
            lines.append(f"{'class':<{width}} | images | presence | pixels")
            lines.append(f"{'-' * width}-|--------|----------|-----------")
            for counts, share in zip(split.classes, split.presence, strict=True):
                percent = f"{100 * share:>6.1f} %"
                lines.append(f"{counts.name:<{width}} | {counts.images:>6} | {percent} | {counts.pixels:>10}")
        if self.warnings:
            lines += ["", *(f"warning: {text}" for text in self.warnings)]
        if self.errors:
            lines += ["", *(f"error: {text}" for text in self.errors[:max_errors])]
            if len(self.errors) > max_errors:
                lines.append(f"... and {len(self.errors) - max_errors} more errors")
        lines += ["", f"{len(self.errors)} errors, {len(self.warnings)} warnings"]
        return "\n".join(lines)


def _image_size(path: Path) -> tuple[int, int]:
    """``(H, W)`` of an image, decoded in full (a truncated file fails here)."""
    with open_image(path) as image:
        width, height = image.size
    return height, width


def check_folder(
    root: str | os.PathLike[str],
    *,
    min_pixels: int = 1,
    min_fraction: float = 0.0,
    ubiquitous_fraction: float = 0.9,
) -> FolderReport:
    """Check a segmentation folder: every file readable, ids in range, labels agreeing with the masks.

    Reads every image and mask of the ``train``, ``val`` and ``test`` splits and counts, per split, the images
    each class is present in (by the image labels: ``image_labels.json``, or the masks with ``min_pixels`` and
    ``min_fraction`` as [`SegmentationFolder`][hiercam.datasets.SegmentationFolder] derives them) and its
    pixels. Nothing raises for a problem of the folder: it is collected in ``errors``.

    Args:
        root: the folder.
        min_pixels: labels from masks: the fewest pixels that make a class present (``SegmentationFolder``'s).
        min_fraction: labels from masks: the smallest share of the image a present class covers.
        ubiquitous_fraction: a class present in more than this share of the training images is flagged: the
            grouping of the pipeline cannot tell such a class's group apart (``method.max_class_presence``).

    Returns:
        The [`FolderReport`][hiercam.datasets.FolderReport]; ``report.ok`` is False when there are errors.

    Raises:
        TypeError, ValueError: a bad argument (not a problem of the folder).

    Example:
        >>> import tempfile
        >>> report = check_folder(tempfile.mkdtemp())
        >>> report.ok, report.errors[0].endswith("classes.json not found (is this a segmentation folder?)")
        (False, True)
    """
    if not isinstance(root, (str, os.PathLike)):
        raise TypeError(f"`root` must be a path, got {type_name(root)}")
    check_int(min_pixels, "min_pixels", minimum=1)
    for name, value in (("min_fraction", min_fraction), ("ubiquitous_fraction", ubiquitous_fraction)):
        if not is_real(value) or not 0 <= float(value) < 1:
            raise ValueError(f"`{name}` must be a number in [0, 1), got {value!r}")
    base = Path(root)
    layout = FolderLayout()
    labels_file = base / "image_labels.json"
    has_masks = (base / layout.masks).is_dir()
    labels_from: Literal["image_labels.json", "masks"] = (
        "image_labels.json" if labels_file.is_file() else "masks"
    )
    try:
        found = read_folder_classes(base / "classes.json")
    except (ValueError, FileNotFoundError) as error:
        return FolderReport(base, (), 255, has_masks, labels_from, (), (), ubiquitous_fraction, (str(error),))
    errors: list[str] = []
    if not has_masks and labels_from == "masks":
        errors.append(f"{base} has neither masks/ nor image_labels.json: the labels come from one")
    splits = []
    for split in CHECKED_SPLITS:
        try:
            ids = read_split(base / "splits" / f"{split}.txt")
        except (ValueError, FileNotFoundError) as error:
            errors.append(str(error))
            continue
        listed = None
        if labels_from == "image_labels.json":
            try:
                listed = read_image_labels(labels_file, ids, len(found.names), layout.described)
            except (ValueError, FileNotFoundError) as error:
                errors.append(str(error))
        splits.append(_check_split(base, split, ids, found.names, found.void, listed, has_masks,
                                   (min_pixels, min_fraction), errors))  # fmt: skip
    ubiquitous: tuple[str, ...] = ()
    warnings = []
    for report in splits:
        if report.absent:
            warnings.append(f"{report.split}: classes present in no image: {', '.join(report.absent)}")
            if report.split == "train":
                warnings.append(
                    "the pipeline refuses classes absent from training: make them background "
                    "(`data.background_classes`) or add training images with them"
                )
        if report.split == "train":
            ubiquitous = tuple(
                c.name for c, share in zip(report.classes, report.presence, strict=True)
                if share > ubiquitous_fraction
            )  # fmt: skip
    if ubiquitous:
        warnings.append(
            f"near-ubiquitous in training (> {100 * ubiquitous_fraction:g} % of the images): "
            f"{', '.join(ubiquitous)}; a group holding one is in almost every image: keep them out of the "
            "grouping with `method.max_class_presence` (preset recommended) or make them background"
        )
    return FolderReport(
        base, found.names, found.void, has_masks, labels_from, tuple(splits), ubiquitous,
        ubiquitous_fraction, tuple(errors), tuple(warnings),
    )  # fmt: skip


def _check_split(
    base: Path,
    split: str,
    ids: list[str],
    names: tuple[str, ...],
    void: int,
    listed: dict[str, list[int]] | None,
    has_masks: bool,
    thresholds: tuple[int, float],
    errors: list[str],
) -> SplitReport:
    """Read every image and mask of one split; count presence and pixels; append problems to ``errors``."""
    layout = FolderLayout()
    num_classes = len(names)
    images = np.zeros(num_classes, dtype=np.int64)
    pixels = np.zeros(num_classes, dtype=np.int64)
    sizes: Counter[tuple[int, int]] = Counter()
    where = base / "splits" / f"{split}.txt"
    for image_id in ids:
        candidates = [base / "images" / f"{image_id}{s}" for s in layout.image_suffixes]
        existing = [path for path in candidates if path.is_file()]
        size = None
        if not existing:
            endings = " or ".join(layout.image_suffixes)
            errors.append(f"{base / 'images' / image_id}{endings} (listed in {where}) not found")
        elif len(existing) > 1:
            errors.append(f"{', '.join(map(str, existing))}: two images of {image_id!r} (keep one)")
        else:
            try:
                size = _image_size(existing[0])
                sizes[size] += 1
            except (OSError, ValueError) as error:  # PIL's own reason, when open_image gives one
                errors.append(f"{existing[0]}: not a readable image ({error.__cause__ or error})")
        present = listed.get(image_id) if listed is not None else None
        if has_masks:
            path = base / layout.masks / f"{image_id}.png"
            try:
                ids_map = read_mask(path, size, num_classes, void) if path.is_file() else None
            except (OSError, ValueError) as error:
                errors.append(
                    str(error) if isinstance(error, ValueError) else f"{path}: unreadable ({error})"
                )
                ids_map = None
            if not path.is_file():
                errors.append(f"{path} (listed in {where}) not found")
            if ids_map is not None:
                counts = class_pixel_counts(ids_map, num_classes)
                pixels += counts
                in_mask = [int(c) for c in np.flatnonzero(counts)]
                if listed is None:
                    present = present_classes(counts, ids_map.size, *thresholds)
                elif present is not None and present != in_mask:
                    errors.append(
                        f"{path} holds the classes {in_mask}, but image_labels.json lists {present} for "
                        f"{image_id!r}"
                    )
        for cls in present or ():
            images[cls] += 1
    counts_of = tuple(ClassCounts(n, int(i), int(p)) for n, i, p in zip(names, images, pixels, strict=True))
    return SplitReport(split, len(ids), tuple(sizes.most_common()), counts_of)
