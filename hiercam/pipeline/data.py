"""The pipeline's data: one interface over FashionScenes, PASCAL VOC, MSRC-21 and your own folder.

FashionScenes are drawn once and kept in memory; VOC is read from disk by loader workers. Evaluation batches
can be restricted to a shard of the images, and training loaders follow ``torchrun``'s processes.

FashionScenes are drawn once per run and kept as uint8 images (what real photos are): a scene's pixels are
the drawn ones rounded to 1/255. VOC images are read and transformed by DataLoader workers; training uses the
paper's preprocessing with a random crop and flip, evaluation the centre crop. MSRC-21 photos are read by
loader workers too, resized (stretched) to ``data.image_size``; training adds a random horizontal flip. A
segmentation folder (``data.dataset = "folder"``) is read as MSRC-21 is, with the folder's own class names; a
class present in none of its training images is refused (``ConfigError`` naming it) before any training.

Every split says which mask labels its mIoU averages (``scored_labels``): all ``K + 1`` labels with the
background for FashionScenes and VOC, the dataset's own choice for MSRC-21 (which has no background class
unless ``data.background_classes`` makes one).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from hiercam.datasets import FashionScenes, collate_scenes
from hiercam.pipeline.config import ConfigError, PipelineConfig, background_class_names
from hiercam.pipeline.distributed import Distributed

__all__ = [
    "EvalBatch",
    "DataSplit",
    "InMemorySplit",
    "VOCSplit",
    "MSRC21Split",
    "FolderSplit",
    "load_split",
    "class_names",
    "train_loader",
]

#: ``(indices (B,), images (B, 3, H, W) in [0, 1], targets (B, K), masks (B, H, W) long, boxes)``.
EvalBatch = tuple[Tensor, Tensor, Tensor, Tensor, list[Tensor]]


class DataSplit(Protocol):
    """What the stages need of a dataset split (its images, labels, masks and boxes)."""

    def __len__(self) -> int:
        """Number of images."""
        ...

    @property
    def labels(self) -> Tensor:
        """``(N, K)`` multi-hot labels (of the full images)."""
        ...

    @property
    def scored_labels(self) -> tuple[int, ...]:
        """The mask labels whose IoUs the mIoU averages (``0`` is the background, ``k + 1`` class ``k``)."""
        ...

    @property
    def has_masks(self) -> bool:
        """Whether the split has ground-truth masks and boxes (``False``: mask and box figures skipped)."""
        ...

    def training_set(self, augment: bool) -> Dataset[Any]:
        """Samples ``{"image": (3, H, W), "labels": (K,)}`` for [`fit`][hiercam.fit]."""
        ...

    def batches(self, batch_size: int, indices: Sequence[int] | None = None) -> Iterator[EvalBatch]:
        """Evaluation batches of the images ``indices`` (all by default), in order."""
        ...


@dataclass(frozen=True)
class InMemorySplit:
    """A split held in memory (FashionScenes).

    Attributes:
        images: ``(N, 3, H, W)`` uint8.
        labels: ``(N, K)`` float32 multi-hot.
        masks: ``(N, H, W)`` uint8 label maps: 0 background, ``k + 1`` class ``k``, 255 ignore.
        boxes: ``N`` tensors ``(M, 5)`` of ``(class, x1, y1, x2, y2)`` with exclusive far edges.
    """

    images: Tensor
    labels: Tensor
    masks: Tensor
    boxes: list[Tensor]

    def __len__(self) -> int:
        return len(self.images)

    @property
    def scored_labels(self) -> tuple[int, ...]:
        """Every label, the background (0) and the ``K`` classes."""
        return tuple(range(self.labels.shape[1] + 1))

    @property
    def has_masks(self) -> bool:
        """Always: the scenes are drawn with exact masks and boxes."""
        return True

    def training_set(self, augment: bool) -> Dataset[Any]:
        """The scenes as training samples (FashionScenes need no augmentation: every scene is new)."""
        return _InMemory(self)

    def batches(self, batch_size: int, indices: Sequence[int] | None = None) -> Iterator[EvalBatch]:
        """Evaluation batches of ``indices`` (all by default), in order."""
        order = (
            torch.arange(len(self)) if indices is None else torch.as_tensor(list(indices), dtype=torch.long)
        )
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            yield (
                rows,
                self.images[rows].float() / 255,
                self.labels[rows],
                self.masks[rows].long(),
                [self.boxes[int(i)] for i in rows],
            )


class _InMemory(Dataset[dict[str, Tensor]]):
    def __init__(self, data: InMemorySplit) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return {"image": self.data.images[index].float() / 255, "labels": self.data.labels[index]}


class _ImagesAndTargets(Dataset[dict[str, Tensor]]):
    """The ``image`` and ``labels`` of another dataset's samples (what training needs)."""

    def __init__(self, dataset: Dataset[Any]) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        sample = self.dataset[index]
        return {"image": sample["image"], "labels": sample["labels"]}


class _FolderSplit:
    """A split read from disk by loader workers.

    ``evaluation`` (with masks and boxes) and ``_train`` (with the training transform) are two views of the
    same images.
    """

    config: PipelineConfig
    evaluation: Any
    _train: Any

    def __len__(self) -> int:
        return len(self.evaluation)

    @property
    def has_masks(self) -> bool:
        """Whether the dataset has masks (VOC and MSRC-21 always have; a segmentation folder may not)."""
        return bool(getattr(self.evaluation, "has_masks", True))

    @property
    def labels(self) -> Tensor:
        """``(N, K)`` labels of the full images, from the annotations."""
        labels: Tensor = self.evaluation.labels
        return labels

    def training_set(self, augment: bool) -> Dataset[Any]:
        """The training transform's samples (``augment``) or the evaluation ones; images and labels only."""
        return _ImagesAndTargets(self._train if augment else self.evaluation)

    def batches(self, batch_size: int, indices: Sequence[int] | None = None) -> Iterator[EvalBatch]:
        """Evaluation batches (masks and boxes) read by loader workers, in order."""
        yield from _loader_batches(self.evaluation, self.config, batch_size, indices)


class VOCSplit(_FolderSplit):
    """A PASCAL VOC split read from disk ([`VOCMultiLabel`][hiercam.datasets.VOCMultiLabel]).

    Training images get a random crop and flip; evaluation images the centre crop.
    """

    def __init__(self, config: PipelineConfig, split: str) -> None:
        from hiercam.datasets.voc import VOCMultiLabel, VOCTransform

        root = config.data.root
        if root is None:  # pragma: no cover - the config validation requires it
            raise ValueError("`data.root` is required for VOC")
        size = _side(config)
        self.config = config
        self.image_set = "train_aug" if split == "train" else "val"
        self.evaluation = VOCMultiLabel(root, self.image_set, transform=VOCTransform(size, size))
        self._train = VOCMultiLabel(
            root, self.image_set, transform=VOCTransform(size, size, train=True), with_masks=False
        )

    @property
    def scored_labels(self) -> tuple[int, ...]:
        """Every label, the background (0) and the 20 classes (the paper's VOC mIoU)."""
        return tuple(range(self.labels.shape[1] + 1))


def _split_size(config: PipelineConfig, split: str) -> int | tuple[int, int]:
    """The image size of a split read from a folder: ``data.eval_image_size`` (when set) or ``image_size``."""
    if split != "train" and config.data.eval_image_size is not None:
        return config.data.eval_image_size
    return config.data.image_size


def _side(config: PipelineConfig) -> int:
    """The one side of the square images of FashionScenes and VOC (the config refuses ``[H, W]`` for them)."""
    size = config.data.image_size
    if isinstance(size, tuple):  # pragma: no cover - the config validation refuses it
        raise ConfigError(f"`data.image_size` must be one side for {config.data.dataset!r}, got {list(size)}")
    return size


def _flip(image: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """A random horizontal flip of an image ``(3, H, W)`` and its mask ``(H, W)`` (the MSRC training one)."""
    if bool(torch.rand(()) < 0.5):
        return image.flip(-1), mask.flip(-1)
    return image, mask


class MSRC21Split(_FolderSplit):
    """An MSRC-21 split read from disk ([`MSRC21`][hiercam.datasets.MSRC21]), resized to ``data.image_size``.

    Training images get a random horizontal flip.

    ``scored_labels`` is the dataset's: without background classes label 0 never occurs in the masks, its IoU
    is 0 by construction and the mIoU leaves it out.
    """

    def __init__(self, config: PipelineConfig, split: str) -> None:
        from hiercam.datasets.msrc import MSRC21

        root = config.data.root
        if root is None:  # pragma: no cover - the config validation requires it
            raise ValueError("`data.root` is required for MSRC-21")
        options: dict[str, Any] = {
            "image_size": _split_size(config, split),
            "min_box_area": config.data.min_box_area,
            "background_classes": background_class_names(config.data),
        }
        self.config = config
        self.evaluation = MSRC21(root, split, **options)
        self._train = MSRC21(root, split, transform=_flip, **options)

    @property
    def scored_labels(self) -> tuple[int, ...]:
        """The dataset's [`scored_labels`][hiercam.datasets.SegmentationFolder.scored_labels]."""
        scored: tuple[int, ...] = self.evaluation.scored_labels
        return scored


class FolderSplit(_FolderSplit):
    """A split of your own folder ([`SegmentationFolder`][hiercam.datasets.SegmentationFolder]), resized.

    Images are resized (stretched) to ``data.image_size``.
    Training images get a random horizontal flip. The training split must hold every scored class: a class
    present in none of its images could not be learnt, and grouping it would be arbitrary, so it is refused
    with its name (make it a background class, ``data.background_classes``, or add images with it).
    """

    def __init__(self, config: PipelineConfig, split: str) -> None:
        from hiercam.datasets import SegmentationFolder

        root = config.data.root
        if root is None:  # pragma: no cover - the config validation requires it
            raise ValueError("`data.root` is required for a folder dataset")
        options: dict[str, Any] = {
            "image_size": _split_size(config, split),
            "min_box_area": config.data.min_box_area,
            "background_classes": background_class_names(config.data),
            "min_pixels": config.data.min_pixels,
            "min_fraction": config.data.min_fraction,
        }
        self.config = config
        self.evaluation = SegmentationFolder(root, split, **options)
        self._train = SegmentationFolder(root, split, transform=_flip, **options)
        if split == "train":
            counts = self.evaluation.labels.sum(0)
            names = self.evaluation.classes
            absent = [name for name, n in zip(names, counts.tolist(), strict=True) if n == 0]
            if absent:
                which = f"class {absent[0]!r} is"
                if len(absent) > 1:
                    which = f"classes {', '.join(map(repr, absent))} are"
                raise ConfigError(
                    f"{root}: the {which} present in no training image: "
                    "a model cannot learn them and the grouping would place them at random; list them in "
                    "`data.background_classes` or add training images with them (`hiercam data check` "
                    "shows the presence of every class)"
                )

    @property
    def scored_labels(self) -> tuple[int, ...]:
        """The dataset's [`scored_labels`][hiercam.datasets.SegmentationFolder.scored_labels]."""
        scored: tuple[int, ...] = self.evaluation.scored_labels
        return scored


def _loader_batches(
    dataset: Dataset[Any], config: PipelineConfig, batch_size: int, indices: Sequence[int] | None
) -> Iterator[EvalBatch]:
    """Evaluation batches of a dataset of VOC-style samples, read by ``data.num_workers`` loader workers."""
    from hiercam.datasets.voc import collate_voc

    chosen = list(range(len(dataset))) if indices is None else list(indices)  # type: ignore[arg-type]
    loader = DataLoader(
        Subset(dataset, chosen),
        batch_size=batch_size,
        num_workers=config.data.num_workers,
        collate_fn=collate_voc,
        pin_memory=torch.cuda.is_available(),
    )
    for start, batch in zip(range(0, len(chosen), batch_size), loader, strict=True):
        rows = torch.tensor(chosen[start : start + batch_size])
        yield rows, batch["image"], batch["labels"], batch["mask"], batch["boxes"]


def class_names(config: PipelineConfig) -> tuple[str, ...]:
    """The ``K`` class names of the configured dataset (MSRC-21, folders: without their background classes).

    A folder's names are those of its ``classes.json``: every table, figure and hierarchy file uses them.
    """
    if config.data.dataset == "folder":
        from hiercam.pipeline.config import folder_classes

        background = background_class_names(config.data)
        return tuple(name for name in folder_classes(config.data) if name not in background)
    if config.data.dataset == "voc":
        from hiercam.datasets.voc import VOC_CLASSES

        return VOC_CLASSES
    if config.data.dataset == "msrc21":
        from hiercam.datasets.msrc import MSRC21_CLASSES

        background = background_class_names(config.data)
        return tuple(name for name in MSRC21_CLASSES if name not in background)
    return FashionScenes.classes


def load_split(config: PipelineConfig, split: str) -> DataSplit:
    """Draw (FashionScenes) or index (VOC) one split: ``"train"``, ``"val"`` or ``"test"``.

    VOC has no public test labels: its ``"test"`` is the official validation set (1,449 images), as in the
    paper, and hyper-parameters must then not be chosen on it. MSRC-21 has the standard split of Shotton et
    al. (276 / 59 / 256 images).
    """
    if config.data.dataset == "voc":
        return VOCSplit(config, split)
    if config.data.dataset == "msrc21":
        return MSRC21Split(config, split)
    if config.data.dataset == "folder":
        return FolderSplit(config, split)
    sizes = {
        "train": config.data.train_scenes,
        "val": config.data.val_scenes,
        "test": config.data.test_scenes,
    }
    scenes = FashionScenes(
        split,  # type: ignore[arg-type]
        num_scenes=sizes[split],
        image_size=_side(config),
        items=config.data.items,
        seed=config.seed,
        root=config.data.root,
    )
    images, targets, masks, boxes = [], [], [], []
    for batch in DataLoader(scenes, batch_size=256, collate_fn=collate_scenes):
        images.append((batch["image"] * 255).round().to(torch.uint8))
        targets.append(batch["labels"])
        masks.append(batch["mask"].to(torch.uint8))
        boxes.extend(batch["boxes"])
    return InMemorySplit(torch.cat(images), torch.cat(targets), torch.cat(masks), boxes)


def train_loader(
    dataset: Dataset[Any],
    batch_size: int,
    seed: int,
    distributed: Distributed,
    *,
    shuffle: bool = True,
    num_workers: int = 0,
) -> DataLoader[Any]:
    """A loader of ``{"image", "labels"}`` batches for [`fit`][hiercam.fit].

    ``batch_size`` is the global batch. Training (``shuffle``) always draws its order from a
    ``DistributedSampler`` (shuffled with ``seed``, a new order every epoch), with one replica in a single
    process: step ``b`` then trains on the same images whatever the number of processes, each of the ``world``
    processes taking ``batch_size / world`` of them. Validation gives each process its shard, without padding.
    """
    options: dict[str, Any] = {
        "num_workers": num_workers,
        "pin_memory": torch.cuda.is_available(),
        "persistent_workers": num_workers > 0,
    }
    local = batch_size // distributed.world
    if shuffle:
        sampler: DistributedSampler[Any] = DistributedSampler(
            dataset, num_replicas=distributed.world, rank=distributed.rank, shuffle=True, seed=seed
        )
        return DataLoader(dataset, batch_size=local, sampler=sampler, **options)
    shard = Subset(dataset, distributed.shard(len(dataset)))  # type: ignore[arg-type]
    return DataLoader(shard, batch_size=local, **options)
