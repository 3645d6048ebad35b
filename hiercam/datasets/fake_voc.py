"""A tiny folder in the PASCAL VOC 2012 layout, for smoke tests of the VOC recipe without the real data."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from hiercam._validation import check_int
from hiercam.datasets.voc import VOC_CLASSES

__all__ = ["write_fake_voc"]


def write_fake_voc(
    root: str | os.PathLike[str], num_images: int = 12, *, seed: int = 0, augmented: bool = True
) -> dict[str, Any]:
    """Write random images with VOC annotations, label maps and image sets under ``root/VOCdevkit/VOC2012``.

    Each image (80-160 pixels a side) shows 1-3 coloured rectangles of random VOC classes on noise; the XML
    boxes, the ``SegmentationClass`` palette PNGs (a 2-pixel 255 border around every object, as in VOC) and
    the targets all describe those rectangles. ``ImageSets/Segmentation`` gets ``train.txt`` and ``val.txt``
    (half each); with ``augmented``, ``train_aug.txt`` lists the train images plus as many more whose label
    maps are in ``SegmentationClassAug`` (grey PNGs), as the SBD augmentation does.

    Args:
        root: folder to create the tree in.
        num_images: images in ``train`` + ``val`` (>= 2).
        seed: seed of everything drawn.
        augmented: also write the SBD-style ``train_aug`` split.

    Returns:
        What was written, for tests: ``{"root": VOCdevkit path, "splits": {name: [ids]},
        "objects": {id: [(class, xmin, ymin, xmax, ymax, difficult), ...]} (VOC's 1-based inclusive
        coordinates), "masks": {id: uint8 array}}``.

    Examples:
        >>> import tempfile
        >>> info = write_fake_voc(tempfile.mkdtemp(), num_images=4)
        >>> sorted(info["splits"]), len(info["splits"]["train_aug"])
        (['train', 'train_aug', 'val'], 4)
    """
    from PIL import Image

    check_int(num_images, "num_images", minimum=2)
    rng = np.random.default_rng(seed)
    voc = Path(root) / "VOCdevkit" / "VOC2012"
    folders = [
        "JPEGImages",
        "Annotations",
        "SegmentationClass",
        "SegmentationClassAug",
        "ImageSets/Segmentation",
    ]
    for folder in folders:
        (voc / folder).mkdir(parents=True, exist_ok=True)
    palette = rng.integers(0, 256, size=(256, 3), dtype=np.uint8)
    palette[0] = 0
    extra = num_images // 2 if augmented else 0
    ids = [f"2012_{i:06d}" for i in range(num_images + extra)]
    objects: dict[str, list[tuple[int, int, int, int, int, int]]] = {}
    masks: dict[str, np.ndarray] = {}
    for number, image_id in enumerate(ids):
        height, width = (int(v) for v in rng.integers(80, 161, size=2))
        image = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
        mask = np.zeros((height, width), dtype=np.uint8)
        rows = []
        classes = rng.choice(len(VOC_CLASSES), size=int(rng.integers(1, 4)), replace=False)
        for cls in classes:
            box_w, box_h = int(rng.integers(20, width // 2)), int(rng.integers(20, height // 2))
            x0, y0 = int(rng.integers(2, width - box_w - 2)), int(rng.integers(2, height - box_h - 2))
            image[y0 : y0 + box_h, x0 : x0 + box_w] = rng.integers(0, 256, size=3, dtype=np.uint8)
            mask[max(0, y0 - 2) : y0 + box_h + 2, max(0, x0 - 2) : x0 + box_w + 2] = 255  # ignored border
            mask[y0 : y0 + box_h, x0 : x0 + box_w] = cls + 1
            difficult = int(rng.random() < 0.2)
            rows.append((int(cls), x0 + 1, y0 + 1, x0 + box_w, y0 + box_h, difficult))  # 1-based inclusive
        # later rectangles may hide part of earlier ones; the XML keeps every full box, as VOC's do
        objects[image_id] = rows
        masks[image_id] = mask
        Image.fromarray(image).save(voc / "JPEGImages" / f"{image_id}.jpg", quality=95)
        (voc / "Annotations" / f"{image_id}.xml").write_text(_annotation(image_id, width, height, rows))
        if number < num_images:
            png = Image.fromarray(mask, mode="P")
            png.putpalette(palette.flatten().tolist())
            png.save(voc / "SegmentationClass" / f"{image_id}.png")
        else:
            Image.fromarray(mask, mode="L").save(voc / "SegmentationClassAug" / f"{image_id}.png")
    half = num_images // 2
    splits = {"train": ids[:half], "val": ids[half:num_images]}
    if augmented:
        splits["train_aug"] = ids[:half] + ids[num_images:]
    for name, members in splits.items():
        (voc / "ImageSets" / "Segmentation" / f"{name}.txt").write_text("\n".join(members) + "\n")
    return {"root": voc.parent, "splits": splits, "objects": objects, "masks": masks}


def _annotation(
    image_id: str, width: int, height: int, rows: list[tuple[int, int, int, int, int, int]]
) -> str:
    parts = [
        f"<annotation><folder>VOC2012</folder><filename>{image_id}.jpg</filename>",
        f"<size><width>{width}</width><height>{height}</height><depth>3</depth></size><segmented>1</segmented>",
    ]
    for cls, xmin, ymin, xmax, ymax, difficult in rows:
        parts.append(
            f"<object><name>{VOC_CLASSES[cls]}</name><pose>Unspecified</pose><truncated>0</truncated>"
            f"<difficult>{difficult}</difficult><bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin>"
            f"<xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object>"
        )
    return "".join(parts) + "</annotation>\n"
