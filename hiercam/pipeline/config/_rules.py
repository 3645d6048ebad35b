"""The rules a pipeline config must follow, checked when it is built (``PipelineConfig.__post_init__``).

The rules read the sections (``hiercam.pipeline.config.sections``) and raise their ``ConfigError``; the config
(``core``) calls them, so the rules never import it at run time.
"""

from __future__ import annotations

import math
import re
from itertools import pairwise
from typing import TYPE_CHECKING

from hiercam.datasets.images import MAX_IMAGE_SIDE  # the largest side of `data.image_size`, 4096
from hiercam.pipeline.config.sections import (
    ConfigError,
    DataConfig,
    ModelConfig,
    background_class_names,
    folder_classes,
)

if TYPE_CHECKING:
    from hiercam.pipeline.config.core import PipelineConfig

__all__ = ["MAX_IMAGE_SIDE", "MAX_SEED", "MAX_WIDTH", "validate"]


#: The largest `seed`: every seed derived from it (per model, per epoch) stays in torch's and NumPy's range.
MAX_SEED = 2**32 - 1

#: The largest ``model.width``: ``small_convnet`` then has 2048 output channels (a 3 x 3 convolution of
#: 2048 x 2048 channels holds 38 M weights).
MAX_WIDTH = 512

#: The devices a config may name: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
_DEVICE = re.compile(r"auto|cpu|cuda(:[0-9]+)?")


def _dataset_classes(data: DataConfig) -> tuple[str, ...]:
    """Every class name of the dataset, before background classes are taken out (a folder's from its file)."""
    from hiercam.datasets import MSRC21_CLASSES, VOC_CLASSES, FashionScenes

    if data.dataset == "folder":
        return folder_classes(data)
    if data.dataset == "msrc21":
        return MSRC21_CLASSES
    return VOC_CLASSES if data.dataset == "voc" else FashionScenes.classes


def _num_classes(data: DataConfig) -> int:
    return len(_dataset_classes(data)) - len(background_class_names(data))


def _validate_folder_data(data: DataConfig) -> None:
    """The keys of the datasets read from a folder (MSRC-21, your own): a root, known background classes."""
    if data.dataset not in ("msrc21", "folder"):
        if data.background_classes:
            raise ConfigError(
                "`data.background_classes` applies to 'msrc21' only, and to 'folder'; got it with "
                f"{data.dataset!r}"
            )
        if isinstance(data.image_size, tuple):
            raise ConfigError(
                f"`data.image_size` [H, W] applies to 'msrc21' and 'folder' only; {data.dataset!r} takes one "
                f"side, got {list(data.image_size)}"
            )
        if data.eval_image_size is not None:
            raise ConfigError(
                f"`data.eval_image_size` applies to 'msrc21' and 'folder' only; got it with {data.dataset!r}"
            )
        return
    if data.root is None:
        what = "the MSRC-21 folder" if data.dataset == "msrc21" else "your dataset folder"
        raise ConfigError(f"`data.root` must name {what} when `data.dataset` is {data.dataset!r}")
    if data.min_box_area < 0:
        raise ConfigError(f"`data.min_box_area` must be >= 0, got {data.min_box_area}")
    if data.min_pixels < 1:
        raise ConfigError(f"`data.min_pixels` must be >= 1, got {data.min_pixels}")
    if not 0 <= data.min_fraction < 1:
        raise ConfigError(f"`data.min_fraction` must be in [0, 1), got {data.min_fraction}")
    if data.dataset == "folder" and data.background_classes == "stuff":
        raise ConfigError(
            "`data.background_classes` = 'stuff' names MSRC-21's classes: list your folder's own classes"
        )
    classes = _dataset_classes(data)
    names = background_class_names(data)
    unknown = [name for name in names if name not in classes]
    if unknown:
        stuff = " (or 'stuff')" if data.dataset == "msrc21" else ""
        raise ConfigError(
            f"`data.background_classes`: unknown class(es) {', '.join(map(repr, unknown))}; the classes are "
            f"{', '.join(classes)}{stuff}"
        )
    if len(set(names)) != len(names):
        raise ConfigError(f"`data.background_classes` names a class twice, got {list(names)}")
    if len(names) >= len(classes) - 1:
        raise ConfigError("`data.background_classes` must leave at least two classes to score")


def _validate_data(data: DataConfig) -> None:
    """The data section, with FashionScenes' own limits when it is the dataset."""
    low, high = data.items
    if not 1 <= low <= high:
        raise ConfigError(f"`data.items` must be (min, max) with 1 <= min <= max, got {list(data.items)}")
    if data.dataset != "fashion_scenes":
        return
    from hiercam.datasets import FashionScenes

    most, smallest = FashionScenes.MAX_ITEMS, FashionScenes.MIN_IMAGE_SIZE
    if high > most:
        raise ConfigError(f"`data.items` allows at most {most} garments per scene, got {list(data.items)}")
    if isinstance(data.image_size, int) and data.image_size < smallest:
        raise ConfigError(
            f"`data.image_size` must be >= {smallest} for FashionScenes (a garment is at least 12 pixels "
            f"wide), got {data.image_size}"
        )


def _validate_model(model: ModelConfig) -> None:
    """``model.weights`` names a file (its content is checked before work starts, by the pipeline)."""
    if model.weights is None:
        return
    if not model.weights.strip():
        raise ConfigError("`model.weights` must name a file or be left out, got an empty string")
    if model.pretrained:
        raise ConfigError(
            "`model.weights` and `model.pretrained` both choose the starting weights: set only one"
        )


def _validate_grouping_source(config: PipelineConfig) -> None:
    """``method.hierarchy_file`` is given exactly when ``method.grouping_source`` is ``"file"``.

    The file's content (a hierarchy of the dataset's classes) is checked before any training, by the
    pipeline (``hiercam.pipeline.stages.load_hierarchy_file``).
    """
    method = config.method
    if method.grouping_source == "file":
        if method.hierarchy_file is None or not method.hierarchy_file.strip():
            raise ConfigError(
                "`method.hierarchy_file` must name a hierarchy JSON when `method.grouping_source` is 'file'"
            )
    elif method.hierarchy_file is not None:
        raise ConfigError(
            "`method.hierarchy_file` is read only when `method.grouping_source` is 'file', got it with "
            f"{method.grouping_source!r}"
        )


def _validate_inference(config: PipelineConfig) -> None:
    """``method.multiscale``, ``method.branches`` and the ``evaluation`` section."""
    if config.method.branches == 1 and config.method.choose_fusion_weights:
        raise ConfigError(
            "`method.choose_fusion_weights` tunes the fusion of the two-branch models (row `full_tuned`), "
            "but `method.branches` = 1 trains none: set one of them"
        )
    _validate_level_heads(config)
    _validate_scales(config)
    evaluation = config.evaluation
    if evaluation.faithfulness_images < 0:
        raise ConfigError(
            f"`evaluation.faithfulness_images` must be >= 0 (0: off), got {evaluation.faithfulness_images}"
        )
    if evaluation.faithfulness_steps < 1:
        raise ConfigError(
            f"`evaluation.faithfulness_steps` must be >= 1, got {evaluation.faithfulness_steps}"
        )


def _validate_scales(config: PipelineConfig) -> None:
    """``method.multiscale``: positive scales that make images of 1 to ``MAX_IMAGE_SIDE`` pixels a side.

    The images of scale ``s`` are ``round(H s) x round(W s)`` (``MultiScaleCAM``), so a scale is refused
    here, before any training, when it would shrink ``data.image_size`` below one pixel or past the limit.
    """
    scales = config.method.multiscale
    if scales is None:
        return
    if not scales:
        raise ConfigError("`method.multiscale` must list at least one scale, or be left out")
    image_size = config.data.image_size
    sides = image_size if isinstance(image_size, tuple) else (image_size, image_size)
    for i, scale in enumerate(scales):
        if not (math.isfinite(scale) and scale > 0):
            raise ConfigError(f"`method.multiscale[{i}]` must be a positive number, got {scale}")
        scaled = [round(side * scale) for side in sides]
        if min(scaled) < 1 or max(scaled) > MAX_IMAGE_SIDE:
            raise ConfigError(
                f"`method.multiscale[{i}]` = {scale} turns `data.image_size` {list(sides)} into "
                f"{scaled[0]} x {scaled[1]} images; each side must be 1..{MAX_IMAGE_SIDE} pixels"
            )


def _validate_level_heads(config: PipelineConfig) -> None:
    """``method.level_heads`` needs ``method.branches = 1`` and the plain Grad-CAM pass.

    Its maps come from one Grad-CAM pass over every head (``level_heads_maps``), which has no multi-scale,
    mirrored or softmax-over-labels form.
    """
    method = config.method
    if not method.level_heads:
        return
    if method.branches != 1:
        raise ConfigError(
            "`method.level_heads` replaces the single-branch level models and needs `method.branches` = 1, "
            f"got `method.branches` = {method.branches}"
        )
    refused = {
        "method.multiscale": method.multiscale is not None,
        "method.flip": method.flip,
        "method.softmax_over_labels": method.softmax_over_labels,
    }
    for key, set_ in refused.items():
        if set_:
            raise ConfigError(
                f"`method.level_heads` has no {key.split('.')[1]} form of its maps (one Grad-CAM pass over "
                f"every head): leave `{key}` unset"
            )


def validate(config: PipelineConfig) -> None:
    """Check every rule of a built config; raise a ``ConfigError`` naming the key of the first broken one."""
    data, train, method = config.data, config.train, config.method
    positive = {
        "data.train_scenes": data.train_scenes,
        "data.val_scenes": data.val_scenes,
        "data.test_scenes": data.test_scenes,
        "model.width": config.model.width,
        "train.epochs": train.epochs,
        "train.batch_size": train.batch_size,
    }
    for key, value in positive.items():
        if value < 1:
            raise ConfigError(f"`{key}` must be >= 1, got {value}")
    if data.num_workers < 0 or train.patience < 0:
        raise ConfigError("`data.num_workers` and `train.patience` must be >= 0")
    if method.subcategories < 0:
        raise ConfigError(f"`method.subcategories` must be >= 0 (0: off), got {method.subcategories}")
    if method.subcategory_min_size < 1:
        raise ConfigError(f"`method.subcategory_min_size` must be >= 1, got {method.subcategory_min_size}")
    if not (math.isfinite(method.subcategory_weight) and method.subcategory_weight >= 0):
        raise ConfigError(
            f"`method.subcategory_weight` must be finite and >= 0, got {method.subcategory_weight}"
        )
    if not 0 <= config.seed <= MAX_SEED:
        raise ConfigError(f"`seed` must be between 0 and {MAX_SEED} (2**32 - 1), got {config.seed}")
    if config.model.width > MAX_WIDTH:
        raise ConfigError(f"`model.width` must be at most {MAX_WIDTH}, got {config.model.width}")
    for key, size in (("image_size", data.image_size), ("eval_image_size", data.eval_image_size)):
        if size is None:
            continue
        sides = size if isinstance(size, tuple) else (size,)
        shown = list(size) if isinstance(size, tuple) else size
        if any(side < 1 for side in sides):
            raise ConfigError(f"`data.{key}` must be >= 1, got {shown}")
        if any(side > MAX_IMAGE_SIDE for side in sides):
            raise ConfigError(f"`data.{key}` must be at most {MAX_IMAGE_SIDE} pixels a side, got {shown}")
    _validate_data(data)
    _validate_folder_data(data)
    _validate_model(config.model)
    if not (train.lr > 0 and math.isfinite(train.lr)):
        raise ConfigError(f"`train.lr` must be a positive number, got {train.lr}")
    if not (train.weight_decay >= 0 and math.isfinite(train.weight_decay)):
        raise ConfigError(f"`train.weight_decay` must be a finite number >= 0, got {train.weight_decay}")
    if not method.levels:
        raise ConfigError("`method.levels` must name at least one group level")
    if any(n < 1 for n in method.levels) or any(a <= b for a, b in pairwise(method.levels)):
        raise ConfigError(
            f"`method.levels` must be strictly decreasing positive counts, got {list(method.levels)}"
        )
    num_classes = _num_classes(data)
    if method.levels[0] >= num_classes:
        raise ConfigError(
            f"`method.levels` must ask for fewer groups than the {num_classes} classes of {data.dataset!r}, "
            f"got {list(method.levels)}"
        )
    if not (method.orthogonal_weight >= 0 and math.isfinite(method.orthogonal_weight)):
        raise ConfigError(
            f"`method.orthogonal_weight` must be a non-negative number, got {method.orthogonal_weight}"
        )
    if method.orthogonal_unit_norm and method.orthogonal_mode != "feature":
        raise ConfigError("`method.orthogonal_unit_norm` applies to `method.orthogonal_mode` 'feature' only")
    if any(not (math.isfinite(w) and w >= 0) for w in method.fusion_weights):
        raise ConfigError(
            f"`method.fusion_weights` must be finite numbers >= 0, got {list(method.fusion_weights)}"
        )
    bounded = {"method.threshold": method.threshold, "method.iou": method.iou}
    if method.max_group_presence is not None:
        bounded["method.max_group_presence"] = method.max_group_presence
    if method.max_class_presence is not None:
        bounded["method.max_class_presence"] = method.max_class_presence
    bounded.update({f"method.thresholds[{i}]": t for i, t in enumerate(method.thresholds)})
    for key, fraction in bounded.items():
        if not 0 < fraction < 1:
            raise ConfigError(f"`{key}` must be between 0 and 1 (exclusive), got {fraction}")
    if not method.thresholds:
        raise ConfigError("`method.thresholds` must not be empty")
    _validate_inference(config)
    _validate_grouping_source(config)
    if data.root is not None and not data.root.strip():
        raise ConfigError("`data.root` must name a folder or be left out, got an empty string")
    if data.dataset == "voc" and data.root is None:
        raise ConfigError("`data.root` must name the VOCdevkit folder when `data.dataset` is 'voc'")
    device = config.device
    if not _DEVICE.fullmatch(device):
        raise ConfigError(
            f"`device` must be 'auto', 'cpu', 'cuda' or 'cuda:N' (N a device number), got {device!r}"
        )
    if train.amp and device == "cpu":
        raise ConfigError("`train.amp` (mixed precision) needs CUDA, but `device` is 'cpu'")
