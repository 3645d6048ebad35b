"""Build the Fashion-MNIST subset shipped in ``hiercam/datasets/data/`` from the full IDX files.

The full files come from the Debian package ``dataset-fashion-mnist`` (Fashion-MNIST by Zalando Research, MIT
licence)::

    cd /tmp && apt-get download dataset-fashion-mnist && dpkg -x dataset-fashion-mnist_*.deb out/
    python scripts/make_fashion_subset.py out/usr/share/datasets/fashion-mnist

The selection is deterministic (no randomness): for every class, in file order, the first 800 training-file
items with ``id % 5 != 0`` (the ``train`` split), the first 200 with ``id % 5 == 0`` (the ``val`` split) and
the first 200 test-file items. Original item ids are kept, so split disjointness stays checkable. The output
is a compressed ``.npz`` (``uint8`` images), written atomically; the script prints its size and the SHA-256
of the source files' decompressed contents.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
from pathlib import Path

import numpy as np

from hiercam._io import atomic_write
from hiercam.datasets.fashion_mnist import (
    FASHION_MNIST_CLASSES,
    IDX_FILES,
    SUBSET_PATH,
    VAL_MODULUS,
    read_idx,
)

PER_CLASS = {"train": 800, "val": 200, "test": 200}


def _source(root: Path, name: str) -> Path:
    for candidate in (root / name, root / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise SystemExit(f"{root} has no {name} or {name}.gz")


def _digest(path: Path) -> str:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def select(labels: np.ndarray, ids: np.ndarray, part: str) -> np.ndarray:
    """Row indices of the first ``PER_CLASS[part]`` items of each class in ``part``, in file order."""
    if part == "test":
        eligible = np.ones(len(labels), dtype=bool)
    else:
        eligible = (ids % VAL_MODULUS == 0) if part == "val" else (ids % VAL_MODULUS != 0)
    rows = []
    for k in range(len(FASHION_MNIST_CLASSES)):
        candidates = np.flatnonzero(eligible & (labels == k))[: PER_CLASS[part]]
        if len(candidates) < PER_CLASS[part]:
            raise SystemExit(f"only {len(candidates)} {part} items of class {k}, need {PER_CLASS[part]}")
        rows.append(candidates)
    return np.concatenate(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="folder with the four Fashion-MNIST IDX files (plain or .gz)")
    parser.add_argument("--out", type=Path, default=SUBSET_PATH, help=f"output file (default: {SUBSET_PATH})")
    args = parser.parse_args()

    arrays: dict[str, np.ndarray] = {}
    for source, (image_name, label_name) in IDX_FILES.items():
        image_path, label_path = _source(args.root, image_name), _source(args.root, label_name)
        for path in (image_path, label_path):
            print(f"sha256 {_digest(path)}  {path.name} (decompressed)")
        images, labels = read_idx(image_path), read_idx(label_path)
        ids = np.arange(len(labels))
        parts = ("train", "val") if source == "train" else ("test",)
        rows = np.sort(np.concatenate([select(labels, ids, part) for part in parts]))
        arrays[f"{source}_images"] = np.ascontiguousarray(images[rows], dtype=np.uint8)
        arrays[f"{source}_labels"] = labels[rows].astype(np.uint8)
        arrays[f"{source}_ids"] = ids[rows].astype(np.int32)

    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    atomic_write(args.out, lambda handle: handle.write(buffer.getvalue()))
    counts = {name: len(array) for name, array in arrays.items() if name.endswith("_labels")}
    print(f"wrote {args.out}: {args.out.stat().st_size / 1e6:.2f} MB, items {counts}")


if __name__ == "__main__":
    main()
