"""The sections of the pipeline's config: data, model, training, method, evaluation; the config's error.

Each section is a frozen dataclass with defaults; [`PipelineConfig`][hiercam.pipeline.PipelineConfig]
(``hiercam.pipeline.config.core``) holds one of each and checks them together when it is built.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = [
    "DataConfig",
    "ModelConfig",
    "TrainConfig",
    "MethodConfig",
    "EvaluationConfig",
    "ConfigError",
    "background_class_names",
    "folder_classes",
]


class ConfigError(ValueError):
    """A configuration that cannot run: an unknown key, a wrong type or an invalid value."""


@dataclass(frozen=True)
class DataConfig:
    """Which data, and how much of it.

    Attributes:
        dataset: ``"fashion_scenes"`` (bundled), ``"voc"`` (PASCAL VOC 2012 under ``root``), ``"msrc21"``
            (MSRC-21 under ``root``, see [`MSRC21`][hiercam.datasets.MSRC21]) or ``"folder"`` (your own
            segmentation folder under ``root``, see
            [`SegmentationFolder`][hiercam.datasets.SegmentationFolder] and ``docs/howto/own-dataset.md``).
        root: data folder: full Fashion-MNIST IDX files (optional), ``VOCdevkit`` (required for VOC), the
            MSRC-21 folder or your own folder (required for them). A relative path is relative to the working
            directory.
        image_size: the size of the images fed to the models: a side ``S`` (square), or ``[H, W]`` for
            ``"msrc21"`` and ``"folder"`` (e.g. ``[240, 320]`` for 4:3 photos: stretching them to a square
            shrinks small objects). At most 4096 pixels a side (``MAX_IMAGE_SIDE``).
        eval_image_size: ``"msrc21"`` and ``"folder"``: the size of the validation and test images (and so
            of their masks and maps), a side or ``[H, W]``; unset: ``image_size``. A larger size than the
            training one gives a fully convolutional backbone's CAMs more feature-map cells for small objects
            (the models are trained at ``image_size`` and see the same scene larger).
        train_scenes, val_scenes, test_scenes: FashionScenes sizes (ignored for the other datasets).
        items: FashionScenes garments per scene, ``(min, max)``.
        num_workers: DataLoader workers.
        min_box_area: MSRC-21 and folders: the smallest connected component, in pixels at ``image_size``, that
            gets a ground-truth box (``MSRC21(min_box_area=...)``).
        background_classes: MSRC-21 and folders: class names to treat as background (label 0; they are
            neither trained nor scored); ``[]`` (default: every class is scored, label 0 left out of the
            mean); for MSRC-21 also ``"stuff"`` (building, grass, tree, sky, water and road are the
            background, the 15 object classes are scored). A folder's names are those of its
            ``classes.json``.
        min_pixels, min_fraction: folders without ``image_labels.json``: a class is present in an image when
            its mask holds at least ``min_pixels`` pixels and ``min_fraction`` of the image of it; smaller
            regions are void (``SegmentationFolder(min_pixels=..., min_fraction=...)``).
        input_norm: how images in ``[0, 1]`` are scaled before the backbone: ``"imagenet"`` (mean/std of
            torchvision's weights), ``"tanh"`` (``2 x - 1``, i.e. ``x / 127.5 - 1`` on 0..255: TensorFlow's
            MobileNets) or ``"none"``; unset: ``"imagenet"`` for torchvision and timm backbones, ``"none"``
            for ``small_convnet``.
    """

    dataset: Literal["fashion_scenes", "voc", "msrc21", "folder"] = "fashion_scenes"
    root: str | None = None
    image_size: int | tuple[int, int] = 80
    eval_image_size: int | tuple[int, int] | None = None
    train_scenes: int = 10000
    val_scenes: int = 500
    test_scenes: int = 500
    items: tuple[int, int] = (1, 4)
    num_workers: int = 0
    min_box_area: int = 100
    background_classes: Literal["stuff"] | tuple[str, ...] = ()
    input_norm: Literal["imagenet", "tanh", "none"] | None = None
    min_pixels: int = 1
    min_fraction: float = 0.0


@dataclass(frozen=True)
class ModelConfig:
    """The backbone every model is built from.

    Attributes:
        backbone: ``"small_convnet"``, or a name of the model factory
            ([`build_model`][hiercam.models.build_model]): a torchvision classification model (``"resnet50"``,
            ``"vgg16"``...) or ``"timm:<name>"``. An unknown name is refused before any work, with its close
            matches.
        width: channel width of ``small_convnet``, 1..512 (``MAX_WIDTH``).
        norm: normalisation of ``small_convnet``: ``"batch"`` or ``"group"`` (batch-independent).
        pretrained: start torchvision and timm backbones from their ImageNet weights (they must already be in
            the library's cache, torch hub's or Hugging Face's: nothing is downloaded unless the user allowed
            it).
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
            [`MultiScaleCAM`][hiercam.MultiScaleCAM]); ``None`` (default): one pass at the input size. Each
            scale must turn ``data.image_size`` into images of 1 to 4096 pixels a side (checked when the
            config is built, before any training).
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
        subcategories: also evaluate sub-category CAMs (row ``subcategory``; SC-CAM, Chang et al., CVPR
            2020): every class split into at most this many sub-categories by K-means of the pooled image
            features of its training images (of the frozen pretrained backbone when the model has
            pretrained weights, else of the base classifier), and one
            [`SubCategoryNet`][hiercam.models.SubCategoryNet] trained on the classes and the sub-categories;
            its class head's maps make the row. ``0`` (default): off; SC-CAM's setting is 10. With
            ``shuffled_control`` the net is also trained on the sub-categories permuted over each class's
            images (row ``subcategory_shuffled``). The inference refinements (``multiscale``, ``flip``,
            ``softmax_over_labels``) apply to it as to every model.
        subcategory_min_size: a class held by ``n`` training images gets ``min(subcategories, n //
            subcategory_min_size)`` sub-categories (at least one), ``>= 1``.
        subcategory_weight: the sub-category term's weight in
            [`SubCategoryLoss`][hiercam.losses.SubCategoryLoss], finite and ``>= 0`` (SC-CAM's 5 by default).
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
    subcategories: int = 0
    subcategory_min_size: int = 5
    subcategory_weight: float = 5.0


@dataclass(frozen=True)
class EvaluationConfig:
    """What the evaluation stage reports besides mIoU and localisation error.

    Attributes:
        wsol: report MaxBoxAccV2 and PxAP (Choe et al., CVPR 2020; [`MaxBoxAcc`][hiercam.MaxBoxAcc],
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


def background_class_names(data: DataConfig) -> tuple[str, ...]:
    """The classes that ``data.background_classes`` makes the background (MSRC-21's ``"stuff"`` expanded)."""
    from hiercam.datasets import MSRC21_STUFF_CLASSES

    given = data.background_classes
    return MSRC21_STUFF_CLASSES if given == "stuff" else tuple(given)


def folder_classes(data: DataConfig) -> tuple[str, ...]:
    """The class names of ``data.root/classes.json`` (checked); a ``ConfigError`` when it cannot be read."""
    from pathlib import Path

    from hiercam.datasets import read_folder_classes

    if data.root is None:
        raise ConfigError("`data.root` must name your dataset folder when `data.dataset` is 'folder'")
    try:
        return read_folder_classes(Path(data.root) / "classes.json").names
    except (FileNotFoundError, ValueError) as error:
        raise ConfigError(f"`data.root`: {error}") from None
