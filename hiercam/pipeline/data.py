"""The pipeline's data: evaluation splits with masks and boxes, and loaders for training.

FashionScenes are drawn once per run and kept in memory as uint8 images (what real photos are), so that the
many models of a run train on the same scenes without drawing them again; a scene's pixels are the drawn
ones rounded to 1/255.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from hiercam.datasets import FashionScenes
from hiercam.pipeline.config import PipelineConfig

__all__ = ["SplitData", "load_split", "class_names", "train_loader", "eval_batches"]

_SPLIT_SEEDS = {"train": 0, "val": 1, "test": 2}


@dataclass(frozen=True)
class SplitData:
    """One split held in memory.

    Attributes:
        images: ``(N, 3, H, W)`` uint8.
        targets: ``(N, K)`` float32 multi-hot.
        masks: ``(N, H, W)`` uint8 label maps: 0 background, ``k + 1`` class ``k``, 255 ignore.
        boxes: ``N`` tensors ``(M, 5)`` of ``(class, x1, y1, x2, y2)`` with exclusive far edges.
    """

    images: Tensor
    targets: Tensor
    masks: Tensor
    boxes: list[Tensor]

    def __len__(self) -> int:
        return len(self.images)


class _Training(Dataset[dict[str, Tensor]]):
    def __init__(self, data: SplitData) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return {"image": self.data.images[index].float() / 255, "targets": self.data.targets[index]}


def class_names(config: PipelineConfig) -> tuple[str, ...]:
    """The ``K`` class names of the configured dataset."""
    return FashionScenes.classes


def load_split(config: PipelineConfig, split: str) -> SplitData:
    """Draw (FashionScenes) or read (VOC) one split into memory."""
    sizes = {
        "train": config.data.train_scenes,
        "val": config.data.val_scenes,
        "test": config.data.test_scenes,
    }
    scenes = FashionScenes(
        split,  # type: ignore[arg-type]
        num_scenes=sizes[split],
        image_size=config.data.image_size,
        items=config.data.items,
        seed=config.seed,
        root=config.data.root,
    )
    images, targets, masks, boxes = [], [], [], []
    for batch in DataLoader(scenes, batch_size=256, collate_fn=FashionScenes.collate):
        images.append((batch["image"] * 255).round().to(torch.uint8))
        targets.append(batch["targets"])
        masks.append(batch["mask"].to(torch.uint8))
        boxes.extend(batch["boxes"])
    return SplitData(torch.cat(images), torch.cat(targets), torch.cat(masks), boxes)


def train_loader(data: SplitData, batch_size: int, seed: int, *, shuffle: bool = True) -> DataLoader[Any]:
    """Batches ``{"image": (B, 3, H, W) in [0, 1], "targets": (B, K)}``, shuffled by a seeded generator."""
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(_Training(data), batch_size=batch_size, shuffle=shuffle, generator=generator)


def eval_batches(data: SplitData, batch_size: int) -> Iterator[tuple[Tensor, Tensor, Tensor, list[Tensor]]]:
    """``(images float (B, 3, H, W), targets (B, K), masks long (B, H, W), boxes)`` in order."""
    for start in range(0, len(data), batch_size):
        stop = start + batch_size
        yield (
            data.images[start:stop].float() / 255,
            data.targets[start:stop],
            data.masks[start:stop].long(),
            data.boxes[start:stop],
        )
