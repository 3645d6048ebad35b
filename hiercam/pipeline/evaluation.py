"""Stage 4: the CAM variants of the ablation, scored against masks, boxes and the base classifier.

The variants are the paper's Table 4 rows and diagnostics (see [`Variant`][hiercam.pipeline.Variant]). Every
map is upsampled (bilinear) to the image size and max-normalised before fusion and scoring. mIoU and
localisation error are computed at every threshold of ``method.thresholds`` in one pass; the threshold with
the best validation mIoU is then applied to test, so test data never chooses anything.

The mIoU averages the IoUs of the split's ``scored_labels`` only (``hiercam.pipeline.data.DataSplit``): every
label with the background for FashionScenes and VOC; for MSRC-21 without background classes, the 21 classes
(label 0 never occurs in its masks, so its IoU would be 0 by construction).
The per-label IoUs come from one dataset-level confusion matrix (the IRN convention).

Next to them, threshold-free figures of the same maps ([`MapScores`][hiercam.pipeline.MapScores]):
MaxBoxAccV2 (IoUs 0.3 / 0.5 / 0.7) and PxAP on every split (``evaluation.wsol``), and the deletion and
insertion areas on the first ``evaluation.faithfulness_images`` images of the test split (val in
validation-only runs). Faithfulness is measured against the **base classifier** (the level-0 single-branch
model, the one the baseline explains) for every variant, fused maps included: a fused map is asked whether
it points at what that classifier uses, with its sigmoid class score, ``evaluation.faithfulness_steps``
intervals and a black (zeros) baseline image.

A split without masks (a segmentation folder without ``masks/``, ``DataSplit.has_masks``) has no figure
that needs masks or boxes: its mIoU, localisation error, t*, MaxBoxAccV2 and PxAP are NaN (``n/a`` in the
report, ``null`` in ``metrics.json``) and are not computed; the fusion weights are not tuned (no mIoU to
tune them on); the deletion and insertion areas, which need no masks, are measured as usual.

``score_run`` returns the finished
[`RunResult`][hiercam.pipeline.RunResult]: the report only renders it.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from hiercam.cam import average_branch_maps
from hiercam.fusion import RestReduction, fuse_hierarchy
from hiercam.hierarchy import ClassHierarchy
from hiercam.maps import normalize_maps, resize_maps
from hiercam.metrics import (
    DeletionInsertion,
    LocalizationError,
    MaxBoxAcc,
    MeanIoU,
    PxAP,
    mean_average_precision,
)
from hiercam.pipeline.config import PipelineConfig
from hiercam.pipeline.context import RunContext
from hiercam.pipeline.data import DataSplit, EvalBatch
from hiercam.pipeline.keys import ModelKey, ModelKind, Variant
from hiercam.pipeline.results import (
    ExtractedMaps,
    FigureScenes,
    FusionWeights,
    MapScores,
    RunResult,
    SplitScores,
    ThresholdCurve,
    VariantScores,
)
from hiercam.pipeline.stages import TrainedModel, shuffled_control_hierarchy, split_level_heads

__all__ = [
    "FUSION_GRID",
    "score_run",
    "variants_of",
    "variant_maps",
    "score_split",
    "score_maps",
    "wsol_scores",
    "faithfulness_scores",
    "faithfulness_images",
    "choose_fusion_weights",
    "choose_thresholds",
    "classification_map",
    "branch_correlation",
    "group_presence",
    "figure_scenes",
]

#: Candidate fusion weights ``(a, b, c)``: the base map kept at 1, the level maps and ``M0'`` weighed 0-2.
FUSION_GRID: tuple[tuple[float, float, float], ...] = tuple(
    (1.0, b, c) for b in (0.0, 0.5, 1.0, 2.0) for c in (0.0, 0.5, 1.0, 2.0)
)

Weights = Mapping[Variant, tuple[float, float, float]]

_BASE, _TWO_BRANCH_0 = ModelKey("base"), ModelKey("two_branch", 0)
_HEADS, _SHUFFLED_HEADS = ModelKey("level_heads"), ModelKey("shuffled_level_heads")
#: The sub-category rows' models (``method.subcategories``): SC-CAM's net and its shuffled control's.
_SUBCATEGORY = {
    "subcategory": ModelKey("subcategory"),
    "subcategory_shuffled": ModelKey("shuffled_subcategory"),
}
_FIGURE_SCENES = 8
#: Images per batch of the deletion / insertion pass: small, so that its progress moves every few images.
_FAITHFULNESS_BATCH = 8


def variants_of(config: PipelineConfig, hierarchy: ClassHierarchy | None) -> list[Variant]:
    """The variants a run evaluates, in table order.

    The single-branch rows need ``config.ablation``, the ensemble control ``config.ensemble``, the
    shuffled-hierarchy control (``shuffled``, after the method's rows) ``config.shuffled_control``, the
    prototype row a ``method.prototype_context`` other than ``"none"``, the sub-category rows
    ``method.subcategories`` (and ``shuffled_control`` for their control); with ``method.branches = 1`` the
    method is ``grouping`` (there is no two-branch model), and with ``method.level_heads`` it is ``heads``
    (Eq. 6 over one ``LevelHeadsNet``'s heads; no ``grouping`` row: no single-branch level model). Without
    a hierarchy (the grouping fell back: no level model) there is no ``two_branch`` row and no level row,
    and the Eq. 6 rows (``shuffled`` and ``heads`` included) are the baseline maps.
    """
    if config.method.level_heads:
        kinds: tuple[str, ...] = ("baseline", "heads")
    elif config.method.branches == 1:
        kinds = ("baseline", "grouping")
    elif config.ablation:
        kinds = ("baseline", "two_branch", "grouping", "full")
    else:
        kinds = ("baseline", "full")
    if hierarchy is None:
        kinds = tuple(kind for kind in kinds if kind != "two_branch")
    variants = [Variant(kind) for kind in kinds]  # type: ignore[arg-type]
    if config.ensemble:
        variants.insert(1, Variant("ensemble"))
    if config.method.choose_fusion_weights:
        variants.insert(variants.index(Variant("full")) + 1, Variant("full_tuned"))
    if config.shuffled_control:
        variants.append(Variant("shuffled"))
    if config.method.prototype_context != "none":
        variants.append(Variant("prototype"))
    if config.method.subcategories:
        variants.append(Variant("subcategory"))
        if config.shuffled_control:
            variants.append(Variant("subcategory_shuffled"))
    return variants + [Variant("level", level) for level in range(1, _num_levels(hierarchy))]


def _num_levels(hierarchy: ClassHierarchy | None) -> int:
    """The hierarchy's number of levels, level 0 included (1 without a hierarchy: the classes alone)."""
    return 1 if hierarchy is None else hierarchy.num_levels


def _rest(config: PipelineConfig) -> RestReduction | None:
    """``method.rest_reduction`` as the fusion takes it (``"none"`` in a config file is ``None``)."""
    rest = config.method.rest_reduction
    return None if rest == "none" else rest


def _upsample(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """Maps resized to the image size (bilinear) and max-normalised, in float32."""
    return normalize_maps(resize_maps(maps.float(), size))


def variant_maps(
    extracted: ExtractedMaps,
    rows: Tensor,
    hierarchy: ClassHierarchy | None,
    labels: Tensor,
    size: tuple[int, int],
    variants: Sequence[Variant],
    rest: RestReduction | None,
    weights: Weights | None = None,
    *,
    shuffled: ClassHierarchy | None = None,
) -> Iterator[tuple[Variant, Tensor]]:
    """``(variant, maps (B, K, H, W))`` of each variant for the images ``rows`` of a split.

    ``labels`` are the ``(B, K)`` labels of those images; ``weights`` the fusion weights ``(a, b, c)`` of the
    fused variants (default: the paper's ``(1, 1, 1)``). Without a hierarchy the fused variants are the base
    maps (no group level to fuse). ``shuffled`` is the shuffled control's hierarchy (variant ``shuffled``:
    Eq. 6 over the ``shuffled_*`` level models, with the method's level-0 model, or over the heads of the
    ``shuffled_level_heads`` model). The ``heads`` variant is Eq. 6 over the heads of the ``level_heads``
    model (its level-0 head's maps as the base maps). The ``ensemble`` variant
    averages the base classifier's maps and those of every ``ensemble`` member in ``extracted``; the
    ``prototype`` variant is ``extracted.prototype``. Every map is upsampled to ``size`` (bilinear) and
    max-normalised first.
    """
    weights = weights or {}
    cache: dict[ModelKey, Tensor] = {}

    def get(key: ModelKey) -> Tensor:
        if key not in cache:
            cache[key] = _upsample(extracted.models[key].maps[rows], size)
        return cache[key]

    def heads(key: ModelKey, groups: ClassHierarchy) -> tuple[Tensor, list[Tensor]]:
        """A level-heads model's base and level maps, each max-normalised on its own as ``get``'s."""
        return split_level_heads(get(key), groups)

    def fused(variant: Variant, groups: ClassHierarchy, source: ModelKey | ModelKind) -> Tensor:
        """Eq. 6 over the heads of the level-heads model ``source``, or over the ``source`` level models.

        The level models' base maps are the base classifier's (single-branch kinds) or the level-0
        two-branch model's.
        """
        if isinstance(source, ModelKey):
            base, level_maps = heads(source, groups)
        else:
            base = get(_BASE if source in ("single", "shuffled_single") else _TWO_BRANCH_0)
            level_maps = [get(ModelKey(source, level)) for level in range(1, groups.num_levels)]
        weight = weights.get(variant, (1.0, 1.0, 1.0))
        return fuse_hierarchy(base, level_maps, groups, labels, rest_reduction=rest, weights=weight)

    for variant in variants:
        if variant.kind == "baseline":
            yield variant, get(_BASE)
        elif variant.kind == "ensemble":
            members = sorted(key for key in extracted.models if key.kind == "ensemble")
            yield variant, average_branch_maps([get(_BASE), *(get(key) for key in members)])
        elif variant.kind == "two_branch":
            yield variant, get(_TWO_BRANCH_0)
        elif variant.kind == "prototype":
            if extracted.prototype is None:
                raise ValueError("the `prototype` variant needs `extracted.prototype` (LPCAM maps)")
            yield variant, _upsample(extracted.prototype[rows], size)
        elif variant.kind in ("subcategory", "subcategory_shuffled"):
            yield variant, get(_SUBCATEGORY[variant.kind])
        elif variant.kind == "shuffled" and hierarchy is not None:
            if shuffled is None:
                raise ValueError("the `shuffled` variant needs the shuffled hierarchy (`shuffled`)")
            control: ModelKey | ModelKind = _SHUFFLED_HEADS
            if _SHUFFLED_HEADS not in extracted.models:
                single = ModelKey("shuffled_single", 1) in extracted.models
                control = "shuffled_single" if single else "shuffled_two_branch"
            yield variant, fused(variant, shuffled, control)
        elif variant.fused:
            if hierarchy is None:  # the grouping fell back: no group level to fuse
                yield variant, get(_BASE)
                continue
            kinds: dict[str, ModelKey | ModelKind] = {"heads": _HEADS, "grouping": "single"}
            yield variant, fused(variant, hierarchy, kinds.get(variant.kind, "two_branch"))
        elif hierarchy is not None:
            level = int(variant.level or 0)
            if _HEADS in extracted.models:  # `method.level_heads`: the head of that level
                yield variant, heads(_HEADS, hierarchy)[1][level - 1][:, hierarchy.assignments(level)]
                continue
            model = ModelKey("two_branch", level)
            if model not in extracted.models:  # `method.branches` = 1: the single-branch level model
                model = ModelKey("single", level)
            yield variant, get(model)[:, hierarchy.assignments(level)]


def _batches_with_maps(
    config: PipelineConfig,
    data: DataSplit,
    extracted: ExtractedMaps,
    hierarchy: ClassHierarchy | None,
    variants: Sequence[Variant],
    indices: Sequence[int] | None,
    weights: Weights | None,
    batch_size: int = 64,
) -> Iterator[tuple[EvalBatch, Iterator[tuple[Variant, Tensor]]]]:
    """Each batch of the images ``indices`` with the (lazy) maps of every variant, at the images' size."""
    shuffled = shuffled_control_hierarchy(config, hierarchy)
    for batch in data.batches(batch_size, indices):
        rows, images, labels = batch[:3]
        size = (int(images.shape[-2]), int(images.shape[-1]))
        maps = variant_maps(
            extracted, rows, hierarchy, labels, size, variants, _rest(config), weights, shuffled=shuffled
        )
        yield batch, maps


def score_split(
    config: PipelineConfig,
    data: DataSplit,
    extracted: ExtractedMaps,
    hierarchy: ClassHierarchy | None,
    variants: Sequence[Variant],
    indices: list[int] | None = None,
    weights: Weights | None = None,
    *,
    localization: bool = True,
    on_batch: Callable[[int], None] | None = None,
) -> dict[Variant, ThresholdCurve]:
    """Score every variant at every threshold of ``method.thresholds`` (fractions).

    The mIoU is the mean IoU of the labels ``data.scored_labels`` (NaN ones, labels that neither occur nor
    are predicted, left out). ``indices`` is this process's shard of the images (all by default); under
    ``torchrun`` the metrics sum their states over the processes, so every process gets the figures of
    the whole split.
    ``localization=False`` skips the localisation error (mIoU only, faster). ``on_batch`` is called with the
    number of images of every batch scored (progress). A split without masks (``data.has_masks`` false) is
    not read: every figure is NaN.
    """
    method = config.method
    thresholds = list(method.thresholds)
    if not data.has_masks:
        nan = (math.nan,) * len(thresholds)
        return {variant: ThresholdCurve(nan, nan if localization else ()) for variant in variants}
    num_classes = extracted.labels.shape[1]
    iou = {v: MeanIoU(num_classes + 1, thresholds=thresholds, ignore_index=255) for v in variants}
    loc = {v: LocalizationError(iou=method.iou, thresholds=thresholds) for v in variants}
    for (rows, _, labels, masks, boxes), maps_of in _batches_with_maps(
        config, data, extracted, hierarchy, variants, indices, weights
    ):
        for variant, maps in maps_of:
            iou[variant].update(maps, labels, masks=masks)
            if localization:
                loc[variant].update(maps, labels, boxes=boxes)
        if on_batch is not None:
            on_batch(len(rows))
    scored = list(data.scored_labels)
    return {
        variant: ThresholdCurve(
            tuple(float(v) for v in iou[variant].compute().per_class[..., scored].nanmean(-1)),
            tuple(float(v) for v in loc[variant].compute()) if localization else (),
        )
        for variant in variants
    }


def score_maps(
    config: PipelineConfig,
    data: DataSplit,
    extracted: ExtractedMaps,
    hierarchy: ClassHierarchy | None,
    variants: Sequence[Variant],
    indices: list[int] | None = None,
    weights: Weights | None = None,
    *,
    model: nn.Module | None = None,
    device: torch.device | str = "cpu",
    on_batch: Callable[[int], None] | None = None,
    on_map: Callable[[int], None] | None = None,
) -> dict[Variant, MapScores]:
    """The threshold-free figures of every variant: MaxBoxAccV2, PxAP, deletion and insertion (fractions).

    MaxBoxAccV2 and PxAP (with their defaults: IoUs 0.3 / 0.5 / 0.7, threshold grid step 0.01, void pixels
    ignored) cover the images ``indices`` (all by default) when ``config.evaluation.wsol`` is set and the
    split has masks (``data.has_masks``). The deletion and insertion areas cover those of them among the
    first ``config.evaluation.faithfulness_images`` images of the split, scored by ``model`` (the base
    classifier; ``None``: not measured) with its sigmoid class score on ``device``. Under ``torchrun`` the
    metrics sum their states over the processes. The two passes are
    ``wsol_scores`` (``on_batch``: called with the number of images
    of every batch) and ``faithfulness_scores``
    (``on_map``: called after each variant's maps of a batch), progress hooks.
    """
    wsol = wsol_scores(config, data, extracted, hierarchy, variants, indices, weights, on_batch=on_batch)
    faithful = faithfulness_scores(
        config,
        data,
        extracted,
        hierarchy,
        variants,
        indices,
        weights,
        model=model,
        device=device,
        on_map=on_map,
    )
    return {variant: _merged(wsol.get(variant), faithful.get(variant)) for variant in variants}


def _merged(wsol: MapScores | None, faithful: MapScores | None) -> MapScores:
    """One variant's MapScores: the WSOL figures of one pass and the faithfulness areas of the other."""
    figures = wsol or MapScores()
    if faithful is not None:
        figures = dataclasses.replace(figures, deletion=faithful.deletion, insertion=faithful.insertion)
    return figures


def wsol_scores(
    config: PipelineConfig,
    data: DataSplit,
    extracted: ExtractedMaps,
    hierarchy: ClassHierarchy | None,
    variants: Sequence[Variant],
    indices: list[int] | None = None,
    weights: Weights | None = None,
    *,
    on_batch: Callable[[int], None] | None = None,
) -> dict[Variant, MapScores]:
    """MaxBoxAccV2 and PxAP of every variant on the images ``indices`` (all by default), as fractions.

    Empty (nothing measured) unless ``config.evaluation.wsol`` is set and the split has masks
    (``data.has_masks``). ``on_batch`` is called with the number of images of every batch scored.
    """
    if not (config.evaluation.wsol and data.has_masks):
        return {}
    box = {v: MaxBoxAcc() for v in variants}
    pixel = {v: PxAP(ignore_index=255) for v in variants}
    for (rows, _, labels, masks, boxes), maps_of in _batches_with_maps(
        config, data, extracted, hierarchy, variants, indices, weights
    ):
        for variant, maps in maps_of:
            box[variant].update(maps, labels, boxes=boxes)
            pixel[variant].update(maps, labels, masks=masks)
        if on_batch is not None:
            on_batch(len(rows))
    scores = {}
    for variant in variants:
        found = box[variant].compute()
        scores[variant] = MapScores(
            max_box_acc=float(found.value),
            max_box_acc_per_iou=tuple(float(v) for v in found.per_iou),
            pxap=float(pixel[variant].compute()),
        )
    return scores


def faithfulness_images(config: PipelineConfig, indices: Sequence[int]) -> list[int]:
    """Those of the images ``indices`` whose deletion and insertion areas are measured.

    They are the split's first ``config.evaluation.faithfulness_images`` images.
    """
    return [i for i in indices if i < config.evaluation.faithfulness_images]


def faithfulness_scores(
    config: PipelineConfig,
    data: DataSplit,
    extracted: ExtractedMaps,
    hierarchy: ClassHierarchy | None,
    variants: Sequence[Variant],
    indices: list[int] | None = None,
    weights: Weights | None = None,
    *,
    model: nn.Module | None = None,
    device: torch.device | str = "cpu",
    on_map: Callable[[int], None] | None = None,
) -> dict[Variant, MapScores]:
    """The deletion and insertion areas of every variant (fractions; the other MapScores fields NaN).

    They cover the images of ``indices`` (all by default) among the split's first
    ``config.evaluation.faithfulness_images``, scored by ``model`` (the base classifier) with its sigmoid
    class score on ``device``, in batches of 8 images. Empty when ``model`` is ``None`` or no image is
    chosen. ``on_map`` is called with the number of images after each variant's maps of a batch are scored
    (the pass's progress, in images x variants: this is the slow pass, ``faithfulness_steps`` forward
    passes per image and present class).
    """
    evaluation = config.evaluation
    subset = faithfulness_images(config, range(len(data)) if indices is None else indices)
    if model is None or not subset:
        return {}
    steps = evaluation.faithfulness_steps
    faithful = {v: DeletionInsertion(model, steps=steps, score="sigmoid") for v in variants}
    for (rows, images, labels, _, _), maps_of in _batches_with_maps(
        config, data, extracted, hierarchy, variants, subset, weights, _FAITHFULNESS_BATCH
    ):
        images = images.to(device)
        for variant, maps in maps_of:
            faithful[variant].update(maps, labels, images=images)
            if on_map is not None:
                on_map(len(rows))
    scores = {}
    for variant in variants:
        areas = faithful[variant].compute()
        scores[variant] = MapScores(deletion=float(areas.deletion), insertion=float(areas.insertion))
    return scores


def choose_fusion_weights(
    config: PipelineConfig,
    data: DataSplit,
    extracted: ExtractedMaps,
    hierarchy: ClassHierarchy,
    indices: list[int] | None = None,
    *,
    on_candidate: Callable[[int], None] | None = None,
) -> FusionWeights:
    """The fusion weights of ``full_tuned``: those of ``FUSION_GRID`` with the best validation mIoU.

    Only validation data is used; every candidate is scored at its best threshold. Without masks
    (``data.has_masks`` false) there is no mIoU to choose by: nothing is tuned (``tuned`` is ``None``, and
    ``full_tuned`` uses the configured weights). ``on_candidate`` is called with 1 after each candidate
    (progress).
    """
    if not data.has_masks:
        return FusionWeights(config.method.fusion_weights)
    tried: dict[str, float] = {}
    best: tuple[float, tuple[float, float, float]] = (-1.0, FUSION_GRID[0])
    full = Variant("full")
    for candidate in FUSION_GRID:
        curves = score_split(
            config, data, extracted, hierarchy, [full], indices, {full: candidate}, localization=False
        )
        value = max(curves[full].miou)
        tried[",".join(f"{w:g}" for w in candidate)] = value
        if value > best[0]:
            best = (value, candidate)
        if on_candidate is not None:
            on_candidate(1)
    return FusionWeights(config.method.fusion_weights, best[1], tried)


def choose_thresholds(
    config: PipelineConfig,
    curves: Mapping[str, Mapping[Variant, ThresholdCurve]],
    map_scores: Mapping[str, Mapping[Variant, MapScores]] | None = None,
) -> dict[Variant, VariantScores]:
    """Per variant: figures at the paper's threshold and at t*, the threshold with the best validation mIoU.

    ``curves`` is ``{split: score_split(...)}`` with ``"val"`` (and ``"test"``); ``map_scores``
    ``{split: score_maps(...)}``, whose threshold-free figures are copied (NaN where absent). When every
    validation mIoU is NaN (no masks), t* and the figures at t* are NaN: nothing chose them.
    """
    map_scores = map_scores or {}
    thresholds = list(config.method.thresholds)
    paper = thresholds.index(config.method.threshold)
    scores = {}
    for variant, val in curves["val"].items():
        best = max(
            range(len(thresholds)), key=lambda i: -math.inf if math.isnan(val.miou[i]) else val.miou[i]
        )
        chosen = not all(math.isnan(v) for v in val.miou)
        splits = {}
        for split, by_variant in curves.items():
            curve = by_variant[variant]
            loc = curve.loc_error or (math.nan,) * len(thresholds)
            extra = map_scores.get(split, {}).get(variant, MapScores())
            splits[split] = SplitScores(
                curve.miou[paper],
                loc[paper],
                curve.miou[best] if chosen else math.nan,
                loc[best] if chosen else math.nan,
                extra.max_box_acc,
                extra.max_box_acc_per_iou,
                extra.pxap,
                extra.deletion,
                extra.insertion,
            )
        scores[variant] = VariantScores(variant, thresholds[best] if chosen else math.nan, splits)
    return scores


def classification_map(
    models: Sequence[ModelKey],
    extracted: ExtractedMaps,
    hierarchy: ClassHierarchy | None,
    *,
    shuffled: ClassHierarchy | None = None,
) -> dict[ModelKey, float]:
    """Classification mAP of every model on a split, against its level's group labels.

    The shuffled control's level models (``shuffled_*``) are scored against the groups of ``shuffled``.
    """
    scores = {}
    for key in models:
        labels = extracted.labels
        groups = shuffled if key.kind.startswith("shuffled_") else hierarchy
        if key.level and groups is not None:
            labels = groups.remap_labels(labels, key.level)
        scores[key] = float(mean_average_precision(extracted.models[key].logits, labels))
    return scores


def branch_correlation(extracted: ExtractedMaps) -> dict[ModelKey, float]:
    """Mean Pearson r between the two branches' maps (finite values only) of every two-branch model."""
    means = {}
    for key, maps in extracted.models.items():
        if maps.branch_correlation is not None:
            values = maps.branch_correlation
            finite = values[torch.isfinite(values)]
            means[key] = float(finite.mean()) if finite.numel() else math.nan
    return means


def group_presence(hierarchy: ClassHierarchy | None, labels: Tensor) -> dict[int, list[float]]:
    """Per group level, the share of the images (``labels`` ``(N, K)``) in which each group is present."""
    if hierarchy is None:
        return {}
    return {
        level: hierarchy.remap_labels(labels, level).float().mean(0).tolist()
        for level in range(1, hierarchy.num_levels)
    }


def figure_scenes(
    config: PipelineConfig,
    data: DataSplit,
    extracted: ExtractedMaps,
    hierarchy: ClassHierarchy | None,
    split: str,
    count: int = _FIGURE_SCENES,
) -> FigureScenes:
    """The first ``count`` scenes of a split with the maps the report's CAM figure shows.

    The maps: ``two_branch`` (level 0), every ``level_l``, ``full`` and ``baseline``; with
    ``method.branches = 1``: ``grouping`` (``heads`` with ``method.level_heads``) instead of ``full``, and no
    ``two_branch``; without a hierarchy no ``two_branch`` and no level.
    """
    count = min(count, len(data))
    rows, images, labels, masks, _ = next(data.batches(count, range(count)))
    size = (int(images.shape[-2]), int(images.shape[-1]))
    if config.method.level_heads:
        wanted = [Variant("heads"), Variant("baseline")]
    elif config.method.branches == 1:
        wanted = [Variant("grouping"), Variant("baseline")]
    else:
        wanted = [Variant("two_branch")] * (hierarchy is not None) + [Variant("full"), Variant("baseline")]
    wanted += [Variant("level", level) for level in range(1, _num_levels(hierarchy))]
    maps = dict(variant_maps(extracted, rows, hierarchy, labels, size, wanted, _rest(config)))
    return FigureScenes(split, images, labels, masks, maps)


def score_run(
    ctx: RunContext,
    models: Mapping[ModelKey, TrainedModel],
    hierarchy: ClassHierarchy | None,
    extracted: Mapping[str, ExtractedMaps],
) -> RunResult:
    """Stage 4: score every variant on every extracted split, choose on validation data, collect the result.

    The deletion and insertion areas are measured on the test split (val in validation-only runs), against
    the ``base`` model.

    The ensemble control's row needs the ``ensemble`` members among ``models`` when ``config.ensemble`` is
    set, the shuffled control's the ``shuffled_*`` level models when ``config.shuffled_control`` is, and the
    prototype row the LPCAM maps in every ``extracted`` split (``ExtractedMaps.prototype``).

    ``extracted`` holds ``"val"`` and, unless the run is validation-only, ``"test"``. Under ``torchrun``
    every process scores its shard (the metrics sum over processes); only rank 0 prepares figure scenes.

    ``hierarchy`` is ``None`` when the grouping left no group level (``ctx.grouping`` says why): the Eq. 6
    rows are then the baseline maps and no fusion weights are chosen. The result records ``ctx.grouping``.
    """
    config = ctx.config
    started = time.perf_counter()
    variants = variants_of(config, hierarchy)
    weights: dict[Variant, tuple[float, float, float]] = {
        v: config.method.fusion_weights
        for v in variants
        if v.kind in ("grouping", "heads", "full", "shuffled")
    }
    has_masks = all(ctx.data(split).has_masks for split in extracted)
    if not has_masks:
        ctx.log("  the dataset has no masks: mask metrics skipped (mIoU, LocErr, MaxBoxAccV2, PxAP)")
    fusion = FusionWeights(config.method.fusion_weights)
    if config.method.choose_fusion_weights and hierarchy is not None and has_masks:  # on validation data
        val = ctx.data("val")
        with (
            _timed(ctx, "stage4_fusion_weights"),
            ctx.step_progress(len(FUSION_GRID), "fusion weights (val)", "candidates") as progress,
        ):
            fusion = choose_fusion_weights(
                config,
                val,
                extracted["val"],
                hierarchy,
                ctx.dist.shard(len(val)),
                on_candidate=progress.update,
            )
        weights[Variant("full_tuned")] = fusion.tuned or fusion.configured
        ctx.log(f"  fusion weights chosen on val: (a, b, c) = {fusion.tuned}")
    elif config.method.choose_fusion_weights:
        weights[Variant("full_tuned")] = fusion.configured
    curves = {}
    with _timed(ctx, "stage4_scoring"):
        for split, maps in extracted.items():
            data = ctx.data(split)
            shard = ctx.dist.shard(len(data))
            with ctx.step_progress(
                len(shard), f"scoring {len(variants)} variants ({split})", "images", enabled=has_masks
            ) as progress:
                curves[split] = score_split(
                    config, data, maps, hierarchy, variants, shard, weights, on_batch=progress.update
                )
    figure_split = "test" if "test" in extracted else "val"
    base = models.get(_BASE)
    wsol: dict[str, dict[Variant, MapScores]] = {}
    faithful: dict[str, dict[Variant, MapScores]] = {}
    with _timed(ctx, "stage4_wsol"):
        for split, maps in extracted.items():
            data = ctx.data(split)
            shard = ctx.dist.shard(len(data))
            enabled = config.evaluation.wsol and has_masks
            with ctx.step_progress(
                len(shard), f"MaxBoxAccV2, PxAP ({split})", "images", enabled=enabled
            ) as bar:
                wsol[split] = wsol_scores(
                    config, data, maps, hierarchy, variants, shard, weights, on_batch=bar.update
                )
    with _timed(ctx, "stage4_faithfulness"):
        for split, maps in extracted.items():
            data = ctx.data(split)
            shard = ctx.dist.shard(len(data))
            model = base.model if base is not None and split == figure_split else None
            count = len(faithfulness_images(config, shard)) if model is not None else 0
            with ctx.step_progress(
                count * len(variants),
                f"deletion / insertion, {count} images x {len(variants)} variants ({split})",
                "maps",
                enabled=count > 0,
            ) as bar:
                faithful[split] = faithfulness_scores(
                    config,
                    data,
                    maps,
                    hierarchy,
                    variants,
                    shard,
                    weights,
                    model=model,
                    device=ctx.device,
                    on_map=bar.update,
                )
    map_scores = {
        split: {v: _merged(wsol[split].get(v), faithful[split].get(v)) for v in variants}
        for split in extracted
    }
    scenes = (
        figure_scenes(config, ctx.data(figure_split), extracted[figure_split], hierarchy, figure_split)
        if ctx.dist.is_main
        else None
    )
    keys = list(models)
    shuffled = shuffled_control_hierarchy(config, hierarchy)
    ctx.timings["stage4_evaluation"] = time.perf_counter() - started
    return RunResult(
        thresholds=config.method.thresholds,
        threshold=config.method.threshold,
        variants=choose_thresholds(config, curves, map_scores),
        curves=curves,
        classification_map={
            s: classification_map(keys, maps, hierarchy, shuffled=shuffled) for s, maps in extracted.items()
        },
        branch_correlation={s: branch_correlation(maps) for s, maps in extracted.items()},
        rest_reduction=config.method.rest_reduction,
        fusion_weights=fusion,
        hierarchy=hierarchy,
        group_presence=group_presence(hierarchy, ctx.data("train").labels),
        histories={key: trained.history for key, trained in models.items()},
        seconds=dict(ctx.timings),
        figure_scenes=scenes,
        scored_labels=ctx.data("val").scored_labels,
        grouping=ctx.grouping,
        has_masks=has_masks,
    )


@contextmanager
def _timed(ctx: RunContext, step: str) -> Iterator[None]:
    """Add the block's seconds to ``ctx.timings[step]``."""
    start = time.perf_counter()
    try:
        yield
    finally:
        ctx.timings[step] = ctx.timings.get(step, 0.0) + time.perf_counter() - start
