"""The pipeline's typed configuration, loadable from TOML or JSON, validated before any training starts.

A config file has one table per section; every key is optional (defaults below) and unknown keys are errors:

```toml
seed = 0
device = "cpu"

[data]
dataset = "fashion_scenes"
train_scenes = 3000

[model]
backbone = "small_convnet"

[train]
epochs = 6

[method]
levels = [4, 2]
orthogonal_weight = 1e-4
```
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = [
    "DataConfig",
    "ModelConfig",
    "TrainConfig",
    "MethodConfig",
    "EvaluationConfig",
    "PipelineConfig",
    "ConfigError",
    "load_config",
    "background_class_names",
]


class ConfigError(ValueError):
    """A configuration that cannot run: an unknown key, a wrong type or an invalid value."""


@dataclass(frozen=True)
class DataConfig:
    """Which data, and how much of it.

    Attributes:
        dataset: ``"fashion_scenes"`` (bundled), ``"voc"`` (PASCAL VOC 2012 under ``root``) or ``"msrc21"``
            (MSRC-21 under ``root``, see [`MSRC21`][hiercam.datasets.MSRC21]).
        root: data folder: full Fashion-MNIST IDX files (optional), ``VOCdevkit`` (required for VOC) or the
            MSRC-21 folder (required for MSRC-21). A relative path is relative to the working directory.
        image_size: side of the square images fed to the models.
        train_scenes, val_scenes, test_scenes: FashionScenes sizes (ignored for VOC and MSRC-21).
        items: FashionScenes garments per scene, ``(min, max)``.
        num_workers: DataLoader workers.
        min_box_area: MSRC-21: the smallest connected component, in pixels at ``image_size``, that gets a
            ground-truth box (``MSRC21(min_box_area=...)``).
        background_classes: MSRC-21: ``[]`` (default: all 21 classes are scored, label 0 left out of the
            mean), ``"stuff"`` (building, grass, tree, sky, water and road are the background, the 15 object
            classes are scored) or a list of class names to treat as background.
        input_norm: how images in ``[0, 1]`` are scaled before the backbone: ``"imagenet"`` (mean/std of
            torchvision's weights), ``"tanh"`` (``2 x - 1``, i.e. ``x / 127.5 - 1`` on 0..255: TensorFlow's
            MobileNets) or ``"none"``; unset: ``"imagenet"`` for torchvision and timm backbones, ``"none"``
            for ``small_convnet``.
    """

    dataset: Literal["fashion_scenes", "voc", "msrc21"] = "fashion_scenes"
    root: str | None = None
    image_size: int = 80
    train_scenes: int = 10000
    val_scenes: int = 500
    test_scenes: int = 500
    items: tuple[int, int] = (1, 4)
    num_workers: int = 0
    min_box_area: int = 100
    background_classes: Literal["stuff"] | tuple[str, ...] = ()
    input_norm: Literal["imagenet", "tanh", "none"] | None = None


@dataclass(frozen=True)
class ModelConfig:
    """The backbone every model is built from.

    Attributes:
        backbone: ``"small_convnet"``, a torchvision classifier name (``"resnet50"``, ``"vgg16"``...), or
            ``"timm:<name>"``.
        width: channel width of ``small_convnet``.
        norm: normalisation of ``small_convnet``: ``"batch"`` or ``"group"`` (batch-independent).
        pretrained: start torchvision backbones from their ImageNet weights (they must already be in the
            torch hub cache: nothing is downloaded unless the user allowed it).
        weights: a local weights file to start every model from: a state dict of the network that
            ``backbone`` names, before it is cut (a torchvision classifier with its 1000-class head, or
            ``small_convnet``), read with ``torch.load(weights_only=True)`` and checked against the network
            (keys and shapes) before any training. A relative path is relative to the working directory.
        freeze_batchnorm: keep every BatchNorm layer in eval mode while training: running statistics stay
            frozen (the affine weights still learn). Needed by weights whose BatchNorm is folded, such as
            ``../shared/models/mobilenet_v2_imagenet.pth``, which batch statistics would destroy.
    """

    backbone: str = "small_convnet"
    width: int = 16
    norm: Literal["batch", "group"] = "batch"
    pretrained: bool = False
    weights: str | None = None
    freeze_batchnorm: bool = False


@dataclass(frozen=True)
class TrainConfig:
    """How every model is trained (the paper: Adam, lr 1e-4, plateau halving after 5 epochs, batch 20).

    Attributes:
        epochs: epochs per model.
        lr: Adam learning rate.
        batch_size: images per batch (per process under ``torchrun``).
        weight_decay: L2 penalty on all weights.
        scheduler: ``"plateau"`` (halve the rate when the validation loss stalls) or ``"none"``.
        patience: plateau patience in epochs.
        amp: mixed precision on CUDA (``None``: on when CUDA is used).
        amp_dtype: the autocast type: ``"float16"`` (with gradient scaling) or ``"bfloat16"``.
        channels_last: use the channels-last memory format on CUDA.
    """

    epochs: int = 6
    lr: float = 3e-3
    batch_size: int = 32
    weight_decay: float = 0.0
    scheduler: Literal["plateau", "none"] = "plateau"
    patience: int = 5
    amp: bool | None = None
    amp_dtype: Literal["float16", "bfloat16"] = "float16"
    channels_last: bool = False


@dataclass(frozen=True)
class MethodConfig:
    """The method's own choices (paper sections 3.3-3.5).

    Attributes:
        levels: group counts after the base level, strictly decreasing (paper on VOC: ``[12, 8, 5]``).
        grouping_unit_norm: L2-normalise class vectors before K-means.
        grouping_weighted: weight group centres by their class counts.
        orthogonal_weight: weight of the orthogonal loss (paper: 1e-4 with the raw sum).
        orthogonal_reduction: ``"sum"`` (paper), ``"batchmean"``, ``"mean"``.
        orthogonal_unit_norm: L2-normalise each sample's features inside the orthogonal loss.
        orthogonal_mode: where orthogonality acts: ``"feature"`` (the paper), ``"spatial"`` or ``"cam"`` (see
            [`orthogonal_loss`][hiercam.orthogonal_loss]).
        max_group_presence: split the groups present in more than this fraction of the training images
            into halves of their children
            ([`split_saturated_groups`][hiercam.ClassHierarchy.split_saturated_groups]), then drop the group
            levels that still have such a group (``None``: keep every level, as the paper does); with no
            level left the method falls back to the baseline. The groups of the classes kept out by
            ``max_class_presence`` are not counted.
        max_class_presence: keep the classes present in more than this fraction of the training images out
            of the grouping: each is its own group at every level
            ([`frequent_classes`][hiercam.frequent_classes]); ``levels`` count them, and a level with no
            more groups than there are such classes is left out, or, when none is left, given that many more
            groups (``None``: every class is grouped, as in the paper).
        fusion_weights: ``(a, b, c)`` in ``a M0 + b mean_i(M_i) - c M0'`` (the paper: ``(1, 1, 1)``).
        choose_fusion_weights: also report ``full_tuned``: the fusion weights chosen on validation data from
            a small grid (the choice is recorded in ``metrics.json``).
        rest_reduction: how ``M0'`` of Eq. 6 is built from the other present classes' base maps:
            ``"max"``, ``"mean"`` or ``"none"`` (no ``M0'``; Python ``None`` in
            [`fuse_hierarchy`][hiercam.fuse_hierarchy]).
        threshold: the CAM threshold of the paper's metrics (0.15).
        thresholds: grid from which the best threshold is chosen on validation data.
        iou: box IoU needed for a correct localisation.
        multiscale: the image scales of multi-scale CAM aggregation at inference (IRN, e.g.
            ``[1.0, 0.5, 1.5, 2.0]``): every model's Grad-CAMs are averaged over the rescaled images (see
            [`MultiScaleCAM`][hiercam.MultiScaleCAM]); ``None`` (default): one pass at the input size.
        flip: also average over the horizontally mirrored images (with ``multiscale`` unset: at scale 1).
            With ``multiscale`` or ``flip`` the maps are kept at the feature resolution of the largest
            scale (IRN keeps them finer than one pass's, at a quarter of the input size).
        softmax_over_labels: explain each class by its log-softmax over the image's labelled classes
            instead of its logit (the extractors' ``softmax_over``, see ``hiercam.cam.contrast``): what a
            class shares with the other classes of its image is subtracted from its map. It uses the image
            labels of the split, as weakly supervised segmentation does when it makes CAMs of labelled
            training images.
        branches: ``2`` (the paper): the level models are two-branch networks trained with the orthogonal
            loss, and the method is Eq. 6 over them (row ``full``); ``1``: no two-branch model is trained:
            the level models are single-branch classifiers and the method is Eq. 6 over them (row
            ``grouping``); the ``orthogonal_*`` settings are then unused.
        grouping_source: where the class hierarchy comes from: ``"fc"`` (the paper: hierarchical K-means of
            the base classifier's class vectors), ``"cooccurrence"`` (hierarchical K-means of the classes'
            label co-occurrence in the training split,
            [`cooccurrence_embeddings`][hiercam.cooccurrence_embeddings], unit-norm, independent of any
            trained model) or ``"file"`` (the hierarchy of ``hierarchy_file``,
            used as it is: ``levels`` and ``max_class_presence`` are then unused; ``max_group_presence``
            still splits its saturated groups).
        hierarchy_file: a hierarchy JSON as [`ClassHierarchy.save`][hiercam.ClassHierarchy.save] writes it,
            whose class names are the dataset's (in its order); required when ``grouping_source`` is
            ``"file"``, and only then. A relative path is relative to the working directory.
        prototype_context: also evaluate prototype CAMs (row ``prototype``): LPCAM (Chen & Sun, CVPR 2023,
            [`PrototypeCAM`][hiercam.PrototypeCAM]) of the base classifier, prototypes from the training
            split. ``"none"`` (default): not computed; ``"own"``: LPCAM as published (each class's own
            context prototypes); ``"siblings"``: the context also holds the class prototypes of the class's
            siblings at hierarchy level 1; ``"others"``: the context also holds the class prototypes of
            every other class.
        level_heads: with ``branches = 1`` only: instead of one single-branch classifier per group level,
            train one [`LevelHeadsNet`][hiercam.models.LevelHeadsNet] (one shared backbone, one linear head
            per hierarchy level, trained with [`LevelHeadsLoss`][hiercam.losses.LevelHeadsLoss]) and make
            the method's Eq. 6 from its heads: the level-0 head's maps as ``M0``, the other heads' as the
            level maps (row ``heads``, which replaces ``grouping``). The hierarchy is still built from the
            base classifier, which stays the baseline. Its maps are one Grad-CAM pass per image
            ([`level_heads_maps`][hiercam.cam.level_heads_maps]), so ``multiscale``, ``flip`` and
            ``softmax_over_labels`` are refused with it.
    """

    levels: tuple[int, ...] = (4, 2)
    grouping_unit_norm: bool = False
    grouping_weighted: bool = False
    orthogonal_weight: float = 1e-4
    orthogonal_reduction: Literal["sum", "batchmean", "mean"] = "sum"
    orthogonal_unit_norm: bool = False
    orthogonal_mode: Literal["feature", "spatial", "cam"] = "feature"
    max_group_presence: float | None = None
    max_class_presence: float | None = None
    fusion_weights: tuple[float, float, float] = (1.0, 1.0, 1.0)
    choose_fusion_weights: bool = False
    rest_reduction: Literal["max", "mean", "none"] = "max"
    threshold: float = 0.15
    thresholds: tuple[float, ...] = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.7)
    iou: float = 0.5
    multiscale: tuple[float, ...] | None = None
    flip: bool = False
    softmax_over_labels: bool = False
    branches: Literal[1, 2] = 2
    grouping_source: Literal["fc", "cooccurrence", "file"] = "fc"
    hierarchy_file: str | None = None
    prototype_context: Literal["none", "own", "siblings", "others"] = "none"
    level_heads: bool = False


@dataclass(frozen=True)
class EvaluationConfig:
    """What the evaluation stage reports besides mIoU and localisation error.

    Attributes:
        wsol: report MaxBoxAccV2 and PxAP (Choe et al., CVPR 2020; [`MaxBoxAccV2`][hiercam.MaxBoxAccV2],
            [`PxAP`][hiercam.PxAP]) of every variant on every split.
        faithfulness_images: the first this many images of the test split (of val in validation-only runs)
            get the deletion and insertion areas ([`DeletionInsertion`][hiercam.DeletionInsertion]) of every
            variant's maps, measured against the base classifier (the level-0 single-branch model, the one the
            baseline explains); 0 turns them off.
        faithfulness_steps: intervals of the deletion and insertion curves (each step one batched forward
            pass of the base classifier per trial).
    """

    wsol: bool = True
    faithfulness_images: int = 64
    faithfulness_steps: int = 20


@dataclass(frozen=True)
class PipelineConfig:
    """Everything a run needs; recorded in full in every run directory.

    Attributes:
        seed: seed of data generation, initialisation and shuffling.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``... or ``"auto"`` (CUDA when available).
        ablation: also train the single-branch level models and report the paper's Table 4 rows.
        ensemble: also train more base classifiers (other seeds) and report the ensemble control: the
            Grad-CAMs of the base classifier and of these averaged, as many single-branch models as the method
            trains: with ``method.branches = 1`` the base and one per group level (3 models for levels
            ``[4, 2]``), with ``method.branches = 2`` two (the training compute of one two-branch model);
            two when the grouping left no group level, and two with ``method.level_heads`` (whose method
            trains one model beside the base classifier).
        shuffled_control: also retrain the method's level models on a shuffled hierarchy
            ([`shuffled_hierarchy`][hiercam.shuffled_hierarchy] with ``seed``: the same group sizes, the
            classes placed at random), two-branch or single-branch as ``method.branches`` says (one
            ``LevelHeadsNet`` with ``method.level_heads``), and report
            their Eq. 6 fusion (row ``shuffled``, fused like the method's row). It tells whether the
            grouping's content, not the extra models, makes the method's gain. Off by default (it trains
            the level models again); on in ``bench_config()`` and the benchmark configs.
        data, model, train, method, evaluation: the sections above.
    """

    seed: int = 0
    device: str = "auto"
    ablation: bool = True
    ensemble: bool = True
    shuffled_control: bool = False
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)

    def __post_init__(self) -> None:
        from hiercam.pipeline._config_rules import validate

        validate(self)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready copy (tuples become lists)."""
        data: dict[str, Any] = json.loads(json.dumps(dataclasses.asdict(self)))
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PipelineConfig:
        """Build and validate a config from nested mappings (as read from TOML or JSON)."""
        config: PipelineConfig = _build(cls, data, "")
        return config

    def replace(self, **changes: Any) -> PipelineConfig:
        """A copy with top-level fields or whole sections replaced; ``section__key=value`` sets one key."""
        return PipelineConfig.from_dict(_apply(self.to_dict(), changes))


def _apply(data: dict[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` with ``changes``: ``key=value`` at the top level, ``section__key=value`` in a table."""
    merged = {key: dict(value) if isinstance(value, Mapping) else value for key, value in data.items()}
    for key, value in changes.items():
        section, _, name = key.partition("__")
        if not name:
            merged[key] = value
            continue
        if section not in {f.name for f in dataclasses.fields(PipelineConfig)}:
            raise ConfigError(f"unknown config section {section!r}")
        table = merged.setdefault(section, {})
        if not isinstance(table, dict):
            raise ConfigError(f"`{section}` must be a table, got {type(table).__name__}")
        table[name] = value
    return merged


def load_config(path: str | Path, **changes: Any) -> PipelineConfig:
    """Read a ``PipelineConfig`` from a ``.toml`` or ``.json`` file (plain data: nothing is executed).

    ``changes`` override entries before validation, as in ``PipelineConfig.replace``
    (``data__root="/data/VOCdevkit"``), so a file may leave out what the command line supplies.

    Raises:
        FileNotFoundError: the file does not exist.
        ConfigError: unknown keys, wrong types or invalid values (the message names the key).
    """
    source = Path(path)
    text = source.read_text(encoding="utf-8")
    try:
        data = json.loads(text) if source.suffix == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as error:
        raise ConfigError(f"{source}: cannot parse: {error}") from None
    try:
        return PipelineConfig.from_dict(_apply(data, changes))
    except ConfigError as error:
        raise ConfigError(f"{source}: {error}") from None


def _build(cls: type[Any], data: Mapping[str, Any], prefix: str) -> Any:
    if not isinstance(data, Mapping):
        raise ConfigError(f"`{prefix or 'config'}` must be a table, got {type(data).__name__}")
    hints = get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        where = f" in [{prefix}]" if prefix else ""
        raise ConfigError(
            f"unknown config key(s){where}: {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    values = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            values[name] = _build(hint, value, key)  # type: ignore[arg-type]
        else:
            values[name] = _coerce(value, hint, key)
    try:
        return cls(**values)
    except TypeError as error:  # pragma: no cover - guarded by the key check above
        raise ConfigError(str(error)) from None


def _coerce(value: Any, hint: Any, key: str) -> Any:
    origin, args = get_origin(hint), get_args(hint)
    if origin is Literal:
        if not any(type(value) is type(a) and value == a for a in args):  # true is not 1, 2.0 is not 2
            raise ConfigError(f"`{key}` must be one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if origin in (tuple,):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"`{key}` must be a list, got {type(value).__name__}")
        item = args[0]
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"`{key}` must have {len(args)} entries, got {len(value)}")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))
    if args and type(None) in args:  # Optional[...]
        if value is None:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0] if len(inner) == 1 else Union[tuple(inner)], key)  # noqa: UP007
    if origin in (Union, UnionType):  # the first alternative that accepts the value
        for alternative in args:
            try:
                return _coerce(value, alternative, key)
            except ConfigError:
                pass
        lists = [a for a in args if get_origin(a) is tuple]
        if isinstance(value, (list, tuple)) and lists:  # a list with a bad entry: name the entry
            _coerce(value, lists[0], key)
        raise ConfigError(f"`{key}` must be {' or '.join(map(_describe, args))}, got {value!r}")
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"`{key}` must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"`{key}` must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"`{key}` must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"`{key}` must be a string, got {value!r}")
        return value
    raise ConfigError(f"`{key}` has an unsupported type {hint!r}")  # pragma: no cover


def _describe(hint: Any) -> str:
    """What a value of type ``hint`` looks like in a config file, for error messages."""
    if get_origin(hint) is Literal:
        return "one of " + ", ".join(map(repr, get_args(hint)))
    if get_origin(hint) is tuple:
        return "a list"
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    return names.get(hint, repr(hint))


def background_class_names(data: DataConfig) -> tuple[str, ...]:
    """The MSRC-21 classes that ``data.background_classes`` makes the background (``"stuff"`` expanded)."""
    from hiercam.datasets import MSRC21_STUFF_CLASSES

    given = data.background_classes
    return MSRC21_STUFF_CLASSES if given == "stuff" else tuple(given)
