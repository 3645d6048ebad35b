"""Fashion-MNIST garments: the bundled subset, full IDX files, and the split of garments into train/val/test.

Fashion-MNIST (Xiao, Rasul and Vollgraf, 2017; Zalando Research; MIT licence) holds 70,000 greyscale 28 x 28
product photos of 10 classes. hiercam ships a class-balanced subset inside the package (see
``scripts/make_fashion_subset.py`` and ``data/README.md``) and can read the full IDX files from a folder.

Every garment keeps its item id: its index in the original training file (``train`` and ``val`` garments) or
test file (``test`` garments). The training file is split by id: ``val`` uses the items whose id is a multiple
of ``VAL_MODULUS``, ``train`` all others, so the two never share a garment, whichever source is read.
"""

from __future__ import annotations

import functools
import gzip
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt

from hiercam._validation import check_choice

__all__ = [
    "FASHION_MNIST_CLASSES",
    "VAL_MODULUS",
    "SUBSET_PATH",
    "IDX_FILES",
    "SplitName",
    "GarmentPool",
    "read_idx",
    "load_garments",
]

#: A dataset split's name.
SplitName = Literal["train", "val", "test"]

#: The 10 Fashion-MNIST class names, in label order.
FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

#: Training-file items whose id is a multiple of this number form the ``val`` split (one in five).
VAL_MODULUS = 5

#: The bundled subset: 800 train + 200 val garments per class from the training file, 200 per class from the
#: test file (``uint8``, compressed ``.npz``; arrays ``{train,test}_{images,labels,ids}``).
SUBSET_PATH = Path(__file__).resolve().parent / "data" / "fashion_mnist_subset.npz"

#: The IDX file names read from ``root`` (each may also be gzip-compressed, with a ``.gz`` suffix).
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

_IDX_DTYPES = {0x08: np.uint8}


@dataclass(frozen=True)
class GarmentPool:
    """The garments one split draws from, grouped by class.

    Attributes:
        images: ``uint8`` array ``(N, 28, 28)``, read-only.
        labels: class index of each garment, ``(N,)``.
        ids: item id of each garment in its original Fashion-MNIST file, ``(N,)``.
        by_class: for each of the 10 classes, the row indices (into ``images``) of its garments.
    """

    images: npt.NDArray[np.uint8]
    labels: npt.NDArray[np.int64]
    ids: npt.NDArray[np.int64]
    by_class: tuple[npt.NDArray[np.int64], ...]


def read_idx(path: str | os.PathLike[str]) -> npt.NDArray[np.uint8]:
    """Read an IDX file (the MNIST format), plain or gzip-compressed.

    Args:
        path: the file; a name ending in ``.gz`` is decompressed.

    Returns:
        The ``uint8`` array with the shape stored in the file, e.g. ``(60000, 28, 28)``.

    Raises:
        ValueError: the file is not an unsigned-byte IDX file or its size does not match its header.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        raw = handle.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{os.fspath(path)!r} is not an unsigned-byte IDX file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if len(raw) != header + int(np.prod(shape)):
        raise ValueError(
            f"{os.fspath(path)!r} holds {len(raw) - header} bytes of data, its header announces {shape}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _find(root: Path, name: str) -> Path:
    for candidate in (root / name, root / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"`root` {os.fspath(root)!r} has no {name} or {name}.gz; it must hold the Fashion-MNIST IDX files "
        + ", ".join(sorted(n for pair in IDX_FILES.values() for n in pair))
    )


@functools.lru_cache(maxsize=4)
def _load_source(
    root: str | None, source: str
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Images, labels and ids of one original file (``"train"`` or ``"test"``), cached and read-only."""
    if root is None:
        with np.load(SUBSET_PATH, allow_pickle=False) as data:
            images = data[f"{source}_images"]
            labels = data[f"{source}_labels"].astype(np.int64)
            ids = data[f"{source}_ids"].astype(np.int64)
    else:
        image_name, label_name = IDX_FILES[source]
        images = read_idx(_find(Path(root), image_name))
        labels = read_idx(_find(Path(root), label_name)).astype(np.int64)
        if images.ndim != 3 or images.shape[1:] != (28, 28) or labels.shape != images.shape[:1]:
            raise ValueError(
                f"`root` {root!r}: {source} images {images.shape} and labels {labels.shape} are not "
                "Fashion-MNIST (N, 28, 28) images with N labels"
            )
        ids = np.arange(len(labels), dtype=np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= len(FASHION_MNIST_CLASSES)):
        raise ValueError(f"{source} labels must lie in 0..9, got {labels.min()}..{labels.max()}")
    for array in (images, labels, ids):
        array.setflags(write=False)
    return images, labels, ids


def load_garments(split: SplitName, root: str | os.PathLike[str] | None = None) -> GarmentPool:
    """The garments of one split, from the bundled subset or from full Fashion-MNIST IDX files.

    Args:
        split: ``"train"`` (training-file items with ``id % VAL_MODULUS != 0``), ``"val"`` (training-file
            items with ``id % VAL_MODULUS == 0``) or ``"test"`` (the test file).
        root: a folder holding the four Fashion-MNIST IDX files (``train-images-idx3-ubyte``, ...; plain or
            ``.gz``); ``None`` reads the subset shipped with hiercam.

    Returns:
        The ``GarmentPool``. Loaded files are cached, so building several splits reads them once.

    Raises:
        ValueError: unknown ``split``, malformed files, or a class without garments in the split.
        FileNotFoundError: ``root`` lacks one of the IDX files.

    Examples:
        >>> pool = load_garments("val")
        >>> pool.images.shape, sorted({int(i) % VAL_MODULUS for i in pool.ids})
        ((2000, 28, 28), [0])
    """
    check_choice(split, "split", ("train", "val", "test"))
    key = None if root is None else os.fspath(Path(root).resolve())
    if key is not None and not Path(key).is_dir():
        raise FileNotFoundError(f"`root` must be a folder holding the Fashion-MNIST IDX files, got {key!r}")
    images, labels, ids = _load_source(key, "test" if split == "test" else "train")
    if split != "test":
        keep = (ids % VAL_MODULUS == 0) if split == "val" else (ids % VAL_MODULUS != 0)
        images, labels, ids = images[keep], labels[keep], ids[keep]
        for array in (images, labels, ids):
            array.setflags(write=False)
    by_class = tuple(np.flatnonzero(labels == k).astype(np.int64) for k in range(len(FASHION_MNIST_CLASSES)))
    empty = [FASHION_MNIST_CLASSES[k] for k, rows in enumerate(by_class) if rows.size == 0]
    if empty:
        raise ValueError(f"the {split} split has no garments of class(es) {empty}")
    return GarmentPool(images=images, labels=labels, ids=ids, by_class=by_class)
