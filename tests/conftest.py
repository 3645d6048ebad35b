"""Shared test fixtures: the real model and photos in ../shared (skipped when absent), seeded RNGs."""

from __future__ import annotations

import os

# One intra-op thread for the whole suite and every process it starts (examples, workers, the demo): its
# models are tiny, and on a 2-core machine two OpenMP threads spinning at barriers made the suite 2-3x slower
# (CI: 1841 s for `make test` with the default threads; pytest alone with one thread: 782 s on the same kind
# of machine). Set before torch loads.
os.environ.setdefault("OMP_NUM_THREADS", "1")

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
