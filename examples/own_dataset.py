"""Your own dataset: write a segmentation folder, check it with `hiercam data check`, run `hiercam run` on it.

    python examples/own_dataset.py --quick    # 16 tiny street scenes, 1 epoch: seconds (what CI runs)
    python examples/own_dataset.py            # 96 scenes, 4 epochs (not timed yet)

The folder has 5 classes with their own names, 4:3 images (48 x 64), masks with void (255), a class (road)
in almost every image and a class (sign) that never occurs in training: the check flags both, and the config
makes sign the background. The guide is docs/howto/own-dataset.md.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from hiercam.cli import main as hiercam

CLASSES = ["road", "car", "person", "bicycle", "sign"]
COLOURS = {"road": (90, 90, 90), "car": (200, 30, 30), "person": (30, 160, 60), "bicycle": (30, 60, 200),
           "sign": (230, 200, 20)}  # fmt: skip
BOXES = {  # (rows, columns) of each class in a 48 x 64 image; the objects cover the road
    "road": (slice(24, 48), slice(0, 64)),
    "car": (slice(28, 40), slice(4, 20)),
    "person": (slice(10, 34), slice(30, 38)),
    "bicycle": (slice(30, 42), slice(44, 60)),
    "sign": (slice(4, 12), slice(50, 58)),
}


def write_folder(root: Path, per_split: dict[str, int], seed: int = 0) -> Path:
    """Write the layout hiercam reads: classes.json, images/, masks/, splits/ (labels come from the masks)."""
    rng = np.random.default_rng(seed)
    for folder in ("images", "masks", "splits"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    (root / "classes.json").write_text(json.dumps({"classes": CLASSES, "void": 255}))
    for split, count in per_split.items():
        ids = [f"{split}_{i:03d}" for i in range(count)]
        (root / "splits" / f"{split}.txt").write_text("\n".join(ids) + "\n")
        for number, image_id in enumerate(ids):
            # the 7 combinations of car, person and bicycle in turn; road in all but every 20th image
            objects = [c for bit, c in enumerate(("car", "person", "bicycle")) if (number % 7 + 1) >> bit & 1]
            if split != "train" and number % 2 == 0:
                objects.append("sign")  # never in training: the check flags it
            drawn = (["road"] if number % 20 != 19 else []) + objects
            image = rng.integers(100, 156, size=(48, 64, 3)).astype(np.uint8)
            mask = np.full((48, 64), 255, dtype=np.uint8)  # void where nothing is drawn
            for name in drawn:
                rows, cols = BOXES[name]
                mask[rows, cols] = CLASSES.index(name)
                noise = rng.integers(-10, 11, size=image[rows, cols].shape)
                image[rows, cols] = np.clip(np.array(COLOURS[name]) + noise, 0, 255)
            Image.fromarray(image).save(root / "images" / f"{image_id}.png")
            Image.fromarray(mask).save(root / "masks" / f"{image_id}.png")
    return root


CONFIG = """\
device = "cpu"
ensemble = false

[data]
dataset = "folder"
root = "{root}"
image_size = [48, 64]            # H, W: keep the 4:3 shape
background_classes = ["sign"]    # absent from training: background instead of a class to learn
min_box_area = 4

[model]
backbone = "small_convnet"
width = {width}

[train]
epochs = {epochs}
batch_size = 8

[method]
levels = [2]
max_class_presence = 0.9         # road is in almost every image: keep it out of the grouping

[evaluation]
wsol = false
faithfulness_images = 0
"""


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="16 scenes and 1 epoch: a smoke test")
    parser.add_argument("--out", default=None, help="work folder (default: a new temporary folder)")
    args = parser.parse_args()
    work = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="hiercam-own-"))
    sizes = {"train": 8, "val": 4, "test": 4} if args.quick else {"train": 64, "val": 16, "test": 16}
    root = write_folder(work / "street", sizes)

    print(f"$ hiercam data check {root}")
    if hiercam(["data", "check", str(root)]) != 0:
        raise SystemExit("the folder has errors")

    config = work / "street.toml"
    config.write_text(CONFIG.format(root=root.as_posix(), width=4 if args.quick else 8,
                                    epochs=1 if args.quick else 4))  # fmt: skip
    print(f"\n$ hiercam run {config} --out {work / 'run'} --threads 1")
    status = hiercam(["run", str(config), "--out", str(work / "run"), "--threads", "1"])
    if status != 0:
        raise SystemExit(status)
    print(f"hierarchy: {(work / 'run' / 'hierarchy.txt').read_text().strip()}")


if __name__ == "__main__":
    main()
