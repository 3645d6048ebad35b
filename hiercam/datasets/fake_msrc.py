"""A tiny folder in the MSRC-21 layout, for tests of code that reads it without the real data."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from hiercam._validation import check_int
from hiercam.datasets._msrc_layout import MSRC21_CLASSES, VOID

__all__ = ["write_fake_msrc21"]


def write_fake_msrc21(root: str | os.PathLike[str], num_images: int = 12, *, seed: int = 0) -> dict[str, Any]:
    """Write a tiny folder in the MSRC-21 layout, for tests of code that reads it without the real data.

    Each image (48-96 pixels a side) shows 1-3 rectangles of random MSRC classes on noise; the label maps
    give each rectangle its class id, a 2-pixel void (255) border around it, and the class ``grass`` (id 1)
    elsewhere in every other image (void in the others). ``splits/`` gets ``train`` (the first half),
    ``val`` (a quarter), ``test`` (the rest) and ``all``.

    Args:
        root: folder to create the tree in.
        num_images: number of images (>= 4).
        seed: seed of everything drawn.

    Returns:
        ``{"root": Path, "splits": {name: [ids]}, "masks": {id: uint8 array}, "labels": {id: [class ids]}}``.

    Examples:
        >>> import tempfile
        >>> info = write_fake_msrc21(tempfile.mkdtemp(), num_images=8)
        >>> {name: len(ids) for name, ids in info["splits"].items()}
        {'train': 4, 'val': 2, 'test': 2, 'all': 8}
    """
    from PIL import Image

    check_int(num_images, "num_images", minimum=4)
    check_int(seed, "seed", minimum=0)
    rng = np.random.default_rng(seed)
    base = Path(root)
    for folder in ("images", "labels", "splits"):
        (base / folder).mkdir(parents=True, exist_ok=True)
    ids = [f"{1 + i % 20}_{1 + i // 20}_s" for i in range(num_images)]
    masks: dict[str, np.ndarray] = {}
    labels: dict[str, list[int]] = {}
    for number, image_id in enumerate(ids):
        height, width = (int(v) for v in rng.integers(48, 97, size=2))
        image = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
        mask = np.full((height, width), 1 if number % 2 == 0 else VOID, dtype=np.uint8)
        others = [c for c in range(len(MSRC21_CLASSES)) if c != 1]
        objects = rng.choice(others, size=int(rng.integers(1, 4)), replace=False)
        for cls in objects:
            box_w, box_h = int(rng.integers(12, width // 2)), int(rng.integers(12, height // 2))
            x0, y0 = int(rng.integers(2, width - box_w - 2)), int(rng.integers(2, height - box_h - 2))
            image[y0 : y0 + box_h, x0 : x0 + box_w] = rng.integers(0, 256, size=3, dtype=np.uint8)
            mask[y0 - 2 : y0 + box_h + 2, x0 - 2 : x0 + box_w + 2] = VOID
            mask[y0 : y0 + box_h, x0 : x0 + box_w] = cls
        masks[image_id] = mask
        labels[image_id] = sorted(int(v) for v in np.unique(mask) if v != VOID)
        Image.fromarray(image).save(base / "images" / f"{image_id}.jpg", quality=95)
        Image.fromarray(mask).save(base / "labels" / f"{image_id}.png")
    half, quarter = num_images // 2, num_images // 4
    splits = {
        "train": ids[:half],
        "val": ids[half : half + quarter],
        "test": ids[half + quarter :],
        "all": ids,
    }
    for name, members in splits.items():
        (base / "splits" / f"{name}.txt").write_text("\n".join(members) + "\n")
    (base / "image_labels.json").write_text(json.dumps(labels))
    (base / "classes.json").write_text(json.dumps({"classes": list(MSRC21_CLASSES), "void_id": VOID}))
    return {"root": base, "splits": splits, "masks": masks, "labels": labels}
