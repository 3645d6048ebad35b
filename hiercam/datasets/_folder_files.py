"""The files of a segmentation folder: ``classes.json``, the images and the masks, read and checked.

Shared by [`SegmentationFolder`][hiercam.datasets.SegmentationFolder] (and its MSRC-21 preset) and
[`check_folder`][hiercam.datasets.check_folder]: every file is validated before anything is allocated from it,
and every message names the file.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from hiercam._io import open_image
from hiercam._validation import format_shape
from hiercam.datasets._msrc_layout import VOID, read_json

__all__ = [
    "MAX_CLASSES",
    "FolderClasses",
    "read_folder_classes",
    "read_mask",
    "class_pixel_counts",
    "present_classes",
]

#: The most classes a folder may have: class ``k`` is mask label ``k + 1`` and 255 is void, in 8 bits.
MAX_CLASSES = 254


@dataclass(frozen=True)
class FolderClasses:
    """What ``classes.json`` says: the ``K`` class names, the void id of the masks, optional colours.

    Attributes:
        names: the ``K`` class names; id ``k`` of the masks is ``names[k]``.
        void: the mask id of unlabelled pixels (``K..255``; 255 unless ``classes.json`` says otherwise).
        colors: ``K`` RGB triples (0..255) for figures, or ``None``.
    """

    names: tuple[str, ...]
    void: int = VOID
    colors: tuple[tuple[int, int, int], ...] | None = None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _one_of(data: dict[str, Any], keys: Sequence[str], path: Path) -> Any:
    """The value of the first of ``keys`` in ``data`` (spellings of one entry); refuse two that differ."""
    given = [key for key in keys if key in data]
    if len(given) > 1 and any(data[key] != data[given[0]] for key in given[1:]):
        raise ValueError(f"{path}: {' and '.join(map(repr, given))} are the same entry and differ")
    return data[given[0]] if given else None


def read_folder_classes(path: Path) -> FolderClasses:
    """Read and check ``classes.json``: ``{"classes": [K names], "void": 255, "colors": [[r, g, b], ...]}``.

    ``void`` and ``colors`` are optional (MSRC-21's spellings ``void_id`` and ``colors_rgb`` are read too).

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: not JSON, not an object, no list of 1..254 distinct non-empty names, a void id that is
            not an integer in ``K..255`` (a class id or out of 8 bits), or colours that are not ``K``
            triples of 0..255 (the message names the file).
    """
    data = read_json(path, "a segmentation folder")
    if not isinstance(data, dict):
        raise ValueError(f'{path} must hold a JSON object {{"classes": [names], ...}}')
    names = data.get("classes")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n.strip() for n in names):
        raise ValueError(f"{path}: key 'classes' must be a non-empty list of class names (strings)")
    if len(names) > MAX_CLASSES:
        raise ValueError(f"{path}: at most {MAX_CLASSES} classes fit 8-bit masks, got {len(names)}")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"{path}: class names must be distinct, got {', '.join(map(repr, repeated))} twice")
    void = _one_of(data, ("void", "void_id"), path)
    if void is None:
        void = VOID
    if not _is_int(void) or not len(names) <= void <= 255:
        raise ValueError(
            f"{path}: 'void' must be an integer id of no class, {len(names)}..255 (ids 0..{len(names) - 1} "
            f"are the classes), got {void!r}"
        )
    colors = _one_of(data, ("colors", "colors_rgb"), path)
    if colors is not None:
        if not (
            isinstance(colors, list)
            and len(colors) == len(names)
            and all(
                isinstance(c, list) and len(c) == 3 and all(_is_int(v) and 0 <= v <= 255 for v in c)
                for c in colors
            )
        ):
            raise ValueError(f"{path}: 'colors' must list {len(names)} [r, g, b] triples of 0..255")
        colors = tuple((int(c[0]), int(c[1]), int(c[2])) for c in colors)
    return FolderClasses(tuple(names), int(void), colors)


def read_mask(path: Path, size: Sequence[int] | None, num_classes: int, void: int) -> npt.NDArray[np.uint8]:
    """The ``uint8`` mask at ``path``, checked: one channel, ``size`` (when given), ids ``0..K-1`` or void.

    Raises:
        FileNotFoundError: no such file.
        ValueError: an unreadable, truncated or oversized file, a colour image, another size than the photo's,
            or unknown ids (the first five shown).
    """
    with open_image(path) as png:
        mode = png.mode
        ids: npt.NDArray[np.uint8] | None = (
            np.asarray(png, dtype=np.uint8).copy() if mode in ("L", "P") else None
        )
    if ids is None:
        raise ValueError(f"{path}: a label map must be a single-channel 8-bit PNG, got mode {mode!r}")
    if size is not None and ids.shape != tuple(size):
        raise ValueError(
            f"{path}: label map of size {format_shape(ids.shape)} for a photo of size {format_shape(size)}"
        )
    counts = np.bincount(ids.ravel(), minlength=256)
    counts[void] = 0
    bad = np.flatnonzero(counts[num_classes:])
    if len(bad):
        shown = ", ".join(str(int(v) + num_classes) for v in bad[:5])
        raise ValueError(f"{path}: label ids must be 0..{num_classes - 1} or {void} (void), got {shown}")
    return ids


def class_pixel_counts(ids: npt.NDArray[np.uint8], num_classes: int) -> npt.NDArray[np.int64]:
    """``(K,)`` pixels of each class in a checked mask."""
    return np.bincount(ids.ravel(), minlength=256)[:num_classes].astype(np.int64)


def present_classes(
    counts: npt.NDArray[np.int64], num_pixels: int, min_pixels: int, min_fraction: float
) -> list[int]:
    """The classes of a mask that count as present: at least ``min_pixels`` and ``min_fraction`` of it."""
    enough = (counts >= max(min_pixels, 1)) & (counts >= min_fraction * num_pixels)
    return [int(c) for c in np.flatnonzero(enough)]
