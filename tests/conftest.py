"""Shared test fixtures: the real model and photos in ../shared (skipped when absent), seeded RNGs."""

from __future__ import annotations

import os

# One intra-op thread for the whole suite and every process it starts (examples, workers, the demo): its
# models are tiny, and on a 2-core machine two OpenMP threads spinning at barriers made the suite 2-3x slower
# (CI: 1841 s for `make test` with the default threads; pytest alone with one thread: 782 s on the same kind
# of machine). Set before torch loads.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import sys

# The helpers shared by test files (cam_test_helpers.py) are imported by name: --import-mode=importlib does
# not put this folder on sys.path.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(autouse=True)
def _deterministic_torch() -> None:
    torch.manual_seed(0)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One intra-op thread for tests of tiny models: on a 2-core machine shared with other jobs, two OpenMP
    threads made them up to 100x slower (threads spinning at barriers while the other core is busy)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def quick_config() -> Callable[..., Any]:
    """A factory of ``demo_config(quick=True)`` configs without the threshold-free figures (no MaxBoxAccV2,
    PxAP, deletion or insertion): ``quick_config(**changes)``. Session-scoped: module-scoped runs use it."""
    from hiercam.pipeline import PipelineConfig, demo_config

    def make(**changes: object) -> PipelineConfig:
        config = demo_config(quick=True).replace(evaluation__wsol=False, evaluation__faithfulness_images=0)
        return config.replace(**changes)

    return make


@pytest.fixture(scope="session")
def tiny_config() -> Callable[..., Any]:
    """A factory of pipeline configs small enough for a run in a few seconds: ``tiny_config(**changes)``."""
    from hiercam.pipeline import PipelineConfig, demo_config

    tiny = dict(
        data__image_size=48,
        data__train_scenes=96,
        data__val_scenes=32,
        data__test_scenes=32,
        model__width=4,
        train__epochs=1,
        train__batch_size=32,
    )

    def make(**changes: object) -> PipelineConfig:
        return demo_config(quick=True).replace(**{**tiny, **changes})

    return make


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The ../shared folder beside the checkout; tests using it skip when it is absent."""
    if not (SHARED / "models" / "mobilenet_v2_imagenet.pth").is_file():
        pytest.skip("../shared (real ImageNet model and photos) is not available")
    return SHARED


@pytest.fixture(scope="session")
def imagenet_mobilenet(shared_dir: Path) -> torch.nn.Module:
    """The real ImageNet MobileNetV2 from ../shared, in eval mode (input normalisation: x / 127.5 - 1)."""
    from torchvision.models import mobilenet_v2

    model = mobilenet_v2()
    state = torch.load(
        shared_dir / "models" / "mobilenet_v2_imagenet.pth", map_location="cpu", weights_only=True
    )
    model.load_state_dict(state)
    return model.eval()


# ------------------------------------------------------------------------------- a small segmentation folder
#: The classes of the street folder (ids 0..4), with names of their own.
STREET_CLASSES = ("road", "car", "person", "bicycle", "sign")
#: ``(rows, cols)`` of each class's rectangle in the 48 x 64 (H x W, 4:3) images; road first, the others over
#: it. ``speck`` is a 3 x 3 bicycle (9 pixels) in the void band, in image t7 only.
STREET_REGIONS = {
    "road": (slice(24, 48), slice(0, 64)),  # 1536 pixels before the objects cover some
    "car": (slice(28, 40), slice(4, 20)),  # 192 pixels, all over road
    "person": (slice(10, 34), slice(30, 38)),  # 192 pixels, 80 of them over road
    "bicycle": (slice(30, 42), slice(44, 60)),  # 192 pixels, all over road
    "sign": (slice(4, 12), slice(50, 58)),  # 64 pixels, in the void band
    "speck": (slice(2, 5), slice(2, 5)),  # 9 bicycle pixels
}
#: The classes drawn in each image, by split: road in every training image (near-ubiquitous), sign in none.
STREET_SPLITS = {
    "train": {
        "t0": ("road", "car"),
        "t1": ("road", "person"),
        "t2": ("road", "bicycle"),
        "t3": ("road", "car", "person"),
        "t4": ("road", "car", "bicycle"),
        "t5": ("road", "person", "bicycle"),
        "t6": ("road", "car", "person", "bicycle"),
        "t7": ("road", "car", "speck"),
    },
    "val": {"v0": ("road", "car", "sign"), "v1": ("road", "person"), "v2": ("car", "bicycle"),
            "v3": ("road", "bicycle", "sign")},
    "test": {"s0": ("road", "car"), "s1": ("person", "sign"), "s2": ("road", "bicycle", "person"),
             "s3": ("road", "car", "sign")},
}  # fmt: skip
_STREET_COLOURS = {"road": (90, 90, 90), "car": (200, 30, 30), "person": (30, 160, 60),
                   "bicycle": (30, 60, 200), "sign": (230, 200, 20), "speck": (30, 60, 200)}  # fmt: skip


def write_street_folder(root: Path, *, image_labels: bool = False, masks: bool = True) -> Path:
    """Write the street folder (``STREET_SPLITS``) under ``root``: 16 images of 48 x 64, masks with void 255.

    Even-numbered images are PNG, the others JPEG. ``image_labels`` also writes ``image_labels.json`` (the
    classes of each mask); ``masks=False`` leaves ``masks/`` out (and writes ``image_labels.json``).
    """
    import json

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for folder in ("images", "splits", *(("masks",) if masks else ())):
        (root / folder).mkdir(parents=True, exist_ok=True)
    (root / "classes.json").write_text(json.dumps({"classes": list(STREET_CLASSES), "void": 255}))
    listed: dict[str, list[int]] = {}
    for split, recipes in STREET_SPLITS.items():
        (root / "splits" / f"{split}.txt").write_text("\n".join(recipes) + "\n")
        for number, (image_id, drawn) in enumerate(recipes.items()):
            image = rng.integers(100, 156, size=(48, 64, 3)).astype(np.uint8)
            mask = np.full((48, 64), 255, dtype=np.uint8)
            for name in drawn:
                rows, cols = STREET_REGIONS[name]
                cls = STREET_CLASSES.index("bicycle" if name == "speck" else name)
                mask[rows, cols] = cls
                noise = rng.integers(-10, 11, size=image[rows, cols].shape)
                image[rows, cols] = np.clip(np.array(_STREET_COLOURS[name]) + noise, 0, 255)
            listed[image_id] = sorted(int(c) for c in np.unique(mask) if c != 255)
            suffix = ".png" if number % 2 == 0 else ".jpg"
            Image.fromarray(image).save(root / "images" / f"{image_id}{suffix}")
            if masks:
                Image.fromarray(mask).save(root / "masks" / f"{image_id}.png")
    if image_labels or not masks:
        (root / "image_labels.json").write_text(json.dumps(listed))
    return root


@pytest.fixture
def street_folder(tmp_path: Path) -> Path:
    """The street folder (5 classes of their own, 4:3 images, void, road everywhere, sign absent from
    training) written in ``tmp_path / "street"``; labels from the masks."""
    return write_street_folder(tmp_path / "street")


@pytest.fixture(scope="session")
def street_writer() -> Callable[..., Path]:
    """``write_street_folder`` itself, for tests that need another variant or a module-scoped folder."""
    return write_street_folder
