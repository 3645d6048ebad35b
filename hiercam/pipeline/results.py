"""The typed results that the pipeline's stages hand each other, and a run's result with its JSON form.

Every model of a run has a [`ModelKey`][hiercam.pipeline.ModelKey] (its kind and level) and every evaluated
map a [`Variant`][hiercam.pipeline.Variant]; the stages pass dataclasses keyed by them, never strings that are
parsed back. Names such as ``"two_branch_L1"`` and ``"level_2"`` exist only in files (``metrics.json``, the
model and map caches) and are read back with ``from_name``, which refuses anything else.

Every figure is a fraction in ``[0, 1]`` (mIoU, localisation error, mAP, MaxBoxAccV2, PxAP, and the
deletion and insertion areas, which are areas under curves of sigmoid class scores); reports print percent.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor

from hiercam._io import atomic_write_json
from hiercam.hierarchy import ClassHierarchy
from hiercam.pipeline.adaptation import GroupingAdaptation
from hiercam.pipeline.keys import ModelKey, Variant

__all__ = [
    "ModelMaps",
    "ExtractedMaps",
    "ThresholdCurve",
    "MapScores",
    "SplitScores",
    "VariantScores",
    "FusionWeights",
    "FigureScenes",
    "RunResult",
    "RESULT_VERSION",
]

#: Version of the ``metrics.json`` layout that [`RunResult`][hiercam.pipeline.RunResult] writes and reads.
RESULT_VERSION = 2


@dataclass
class ModelMaps:
    """What stage 3 extracts from one model on one split.

    Attributes:
        maps: ``(N, N_l, h, w)`` float16 Grad-CAMs at feature resolution, not normalised; for a
            level-heads model every head's, ``(N, K + N_1 + ... + N_L, h, w)``, level 0 first.
        logits: ``(N, N_l)`` float32 classifier scores (a level-heads model: its level-0 head's).
        branch_correlation: ``(N, N_l)`` Pearson r between the two branches' maps of each group
            (two-branch models; NaN where a map is constant), else ``None``.
    """

    maps: Tensor
    logits: Tensor
    branch_correlation: Tensor | None = None


@dataclass
class ExtractedMaps:
    """Stage 3's output for one split: every model's maps and logits, and the images' labels.

    Attributes:
        labels: ``(N, K)`` multi-hot labels of the images.
        models: per model, its [`ModelMaps`][hiercam.pipeline.ModelMaps].
        prototype: ``(N, K, h, w)`` LPCAM maps of the base classifier at feature resolution, not normalised
            (``method.prototype_context``; ``None`` when not computed). Cached on its own
            (``hiercam.pipeline.prototypes``), not by ``to_tensors``.

    Example:
        >>> import torch
        >>> base = ModelMaps(torch.rand(2, 3, 4, 4), torch.rand(2, 3))
        >>> maps = ExtractedMaps(torch.ones(2, 3), {ModelKey("base"): base})
        >>> sorted(maps.to_tensors())
        ['base/logits', 'base/maps', 'labels']
        >>> list(ExtractedMaps.from_tensors(maps.to_tensors(), "cams.pt").models)
        [ModelKey(kind='base', level=0)]
    """

    labels: Tensor
    models: dict[ModelKey, ModelMaps]
    prototype: Tensor | None = None

    def to_tensors(self) -> dict[str, Tensor]:
        """A flat ``{str: Tensor}`` for the map cache (``hiercam.pipeline.artifacts.save_tensors``)."""
        flat = {"labels": self.labels}
        for key, extracted in self.models.items():
            flat[f"{key.name}/maps"] = extracted.maps
            flat[f"{key.name}/logits"] = extracted.logits
            if extracted.branch_correlation is not None:
                flat[f"{key.name}/branch_correlation"] = extracted.branch_correlation
        return flat

    @classmethod
    def from_tensors(cls, flat: Mapping[str, Any], source: str | Path) -> ExtractedMaps:
        """Read back ``to_tensors``' output, checking its layout.

        Raises:
            ValueError: naming ``source``, when an entry is missing, unknown or not a tensor.
        """
        labels = flat.get("labels")
        if not isinstance(labels, Tensor) or labels.ndim != 2:
            raise ValueError(
                f"{source}: no (N, K) `labels` tensor; the file is not a map cache of this version"
            )
        parts: dict[ModelKey, dict[str, Tensor]] = {}
        for name, value in flat.items():
            if name == "labels":
                continue
            model, _, part = str(name).partition("/")
            try:
                key = ModelKey.from_name(model)
            except ValueError as error:
                raise ValueError(f"{source}: entry {name!r}: {error}") from None
            if part not in ("maps", "logits", "branch_correlation") or not isinstance(value, Tensor):
                raise ValueError(
                    f"{source}: entry {name!r} is not a maps, logits or branch_correlation tensor"
                )
            if len(value) != len(labels):
                raise ValueError(f"{source}: entry {name!r} has {len(value)} rows, `labels` {len(labels)}")
            parts.setdefault(key, {})[part] = value
        models = {}
        for key, found in parts.items():
            if "maps" not in found or "logits" not in found:
                raise ValueError(f"{source}: model {key.name!r} lacks its maps or logits")
            models[key] = ModelMaps(found["maps"], found["logits"], found.get("branch_correlation"))
        return cls(labels, models)


@dataclass(frozen=True)
class ThresholdCurve:
    """One variant's figures on one split at every threshold of ``method.thresholds`` (fractions)."""

    miou: tuple[float, ...]
    loc_error: tuple[float, ...] = ()


@dataclass(frozen=True)
class MapScores:
    """One variant's threshold-free figures on one split (fractions in ``[0, 1]``; NaN where not measured).

    Attributes:
        max_box_acc: MaxBoxAccV2, the mean of ``max_box_acc_per_iou`` (higher is better).
        max_box_acc_per_iou: MaxBoxAcc at the box IoUs 0.3, 0.5 and 0.7 (empty when not measured).
        pxap: PxAP, the pixel average precision against the masks (higher is better).
        deletion: deletion area of the base classifier's sigmoid score (lower is better).
        insertion: insertion area (higher is better).
    """

    max_box_acc: float = math.nan
    max_box_acc_per_iou: tuple[float, ...] = ()
    pxap: float = math.nan
    deletion: float = math.nan
    insertion: float = math.nan


@dataclass(frozen=True)
class SplitScores:
    """One variant's figures on one split (fractions in ``[0, 1]``; NaN where undefined).

    Attributes:
        miou: mIoU at the paper's threshold (``method.threshold``, 0.15).
        loc_error: localisation error at the paper's threshold.
        miou_at_chosen: mIoU at the threshold chosen on validation data (t*).
        loc_error_at_chosen: localisation error at t*.
        max_box_acc, max_box_acc_per_iou, pxap, deletion, insertion: the threshold-free figures of
            [`MapScores`][hiercam.pipeline.MapScores] (NaN, or empty, where not measured).
    """

    miou: float
    loc_error: float
    miou_at_chosen: float
    loc_error_at_chosen: float
    max_box_acc: float = math.nan
    max_box_acc_per_iou: tuple[float, ...] = ()
    pxap: float = math.nan
    deletion: float = math.nan
    insertion: float = math.nan


@dataclass(frozen=True)
class VariantScores:
    """One variant's result: the threshold chosen on validation data and the figures per split.

    Attributes:
        variant: which maps.
        threshold: t*, the threshold with the best validation mIoU (NaN when no mIoU was measured: no masks).
        splits: ``{"val": ..., "test": ...}`` (no ``"test"`` in validation-only runs).
    """

    variant: Variant
    threshold: float
    splits: dict[str, SplitScores]


@dataclass(frozen=True)
class FusionWeights:
    """The fusion weights ``(a, b, c)`` of the run.

    Attributes:
        configured: ``method.fusion_weights``.
        tuned: the weights of ``full_tuned``, chosen on validation data (``None`` unless asked for).
        tried: every candidate's best validation mIoU, keyed ``"a,b,c"`` (empty unless tuned).
    """

    configured: tuple[float, float, float]
    tuned: tuple[float, float, float] | None = None
    tried: dict[str, float] = field(default_factory=dict)


@dataclass
class FigureScenes:
    """A few scenes and their maps, for the report's CAM figure (computed by the evaluation stage).

    Attributes:
        split: the split the scenes come from.
        images: ``(S, 3, H, W)`` in ``[0, 1]``.
        labels: ``(S, K)`` multi-hot.
        masks: ``(S, H, W)`` label maps (0 background, ``k + 1`` class ``k``, 255 void).
        maps: per variant, ``(S, K, H, W)`` max-normalised maps.
    """

    split: str
    images: Tensor
    labels: Tensor
    masks: Tensor
    maps: dict[Variant, Tensor]


@dataclass
class RunResult:
    """Everything a run found; ``metrics.json`` is its JSON form (``to_json`` / ``from_json``).

    Attributes:
        thresholds: the threshold grid (``method.thresholds``).
        threshold: the paper's threshold (``method.threshold``).
        variants: the ablation rows, in order.
        curves: ``{split: {variant: figures at every threshold}}``.
        classification_map: ``{split: {model: mAP}}`` against each model's level labels.
        branch_correlation: ``{split: {model: mean r}}`` for two-branch models.
        rest_reduction: how ``M0'`` was built (``"max"``, ``"mean"``, ``"none"``).
        fusion_weights: configured and chosen fusion weights.
        hierarchy: the class hierarchy; ``None`` when the grouping left no group level (see ``grouping``).
        group_presence: ``{level: share of training images in which each group is present}``.
        histories: per model, its training history (one record per epoch).
        seconds: time per step.
        figure_scenes: scenes for the CAM figure (not saved in ``metrics.json``).
        scored_labels: the mask labels whose IoUs the mIoU averages (0 the background, ``k + 1`` class
            ``k``); ``None`` in files written before it was recorded (every label).
        grouping: how the grouping adapted to frequent classes and saturated groups, and whether it fell
            back to the baseline; ``None`` in files written before it was recorded.
        has_masks: whether the data had masks and boxes; without them every mask and box figure (mIoU,
            localisation error, t*, MaxBoxAccV2, PxAP) is NaN, not measured (``True`` in files written
            before it was recorded).
    """

    thresholds: tuple[float, ...]
    threshold: float
    variants: dict[Variant, VariantScores]
    curves: dict[str, dict[Variant, ThresholdCurve]]
    classification_map: dict[str, dict[ModelKey, float]]
    branch_correlation: dict[str, dict[ModelKey, float]]
    rest_reduction: str
    fusion_weights: FusionWeights
    hierarchy: ClassHierarchy | None
    group_presence: dict[int, list[float]]
    histories: dict[ModelKey, list[dict[str, float]]]
    seconds: dict[str, float] = field(default_factory=dict)
    figure_scenes: FigureScenes | None = None
    scored_labels: tuple[int, ...] | None = None
    grouping: GroupingAdaptation | None = None
    has_masks: bool = True

    @property
    def class_names(self) -> tuple[str, ...]:
        """The ``K`` class names, from the hierarchy or, when there is none, from ``grouping``.

        Raises:
            ValueError: the result holds neither.
        """
        if self.hierarchy is not None:
            return self.hierarchy.class_names
        if self.grouping is not None:
            return self.grouping.class_names
        raise ValueError(
            "the result holds no hierarchy and no `grouping` record: its class names are unknown"
        )

    @property
    def splits(self) -> tuple[str, ...]:
        """The scored splits, ``("val", "test")`` or ``("val",)``."""
        return tuple(self.curves)

    def variant(self, name: str) -> VariantScores:
        """The scores of the variant written ``name`` (``"full"``, ``"level_1"``...)."""
        return self.variants[Variant.from_name(name)]

    def to_json(self) -> dict[str, Any]:
        """The JSON-ready form written to ``metrics.json`` (names as keys, fractions, NaN as ``null``).

        Timings (``seconds``) are left out, so that a resumed run writes the same file; they are in
        ``run.json``.
        """
        fusion: dict[str, Any] = {"configured": list(self.fusion_weights.configured)}
        if self.fusion_weights.tuned is not None:
            fusion.update(full_tuned=list(self.fusion_weights.tuned), tried=self.fusion_weights.tried)
        data = {
            "version": RESULT_VERSION,
            "units": "fraction",
            "thresholds": list(self.thresholds),
            "threshold": self.threshold,
            "variants": {
                variant.name: {
                    "threshold": scores.threshold,
                    **{
                        split: {
                            "miou": figures.miou,
                            "loc_error": figures.loc_error,
                            "miou_at_val_threshold": figures.miou_at_chosen,
                            "loc_error_at_val_threshold": figures.loc_error_at_chosen,
                            "max_box_acc": figures.max_box_acc,
                            "max_box_acc_per_iou": list(figures.max_box_acc_per_iou),
                            "pxap": figures.pxap,
                            "deletion": figures.deletion,
                            "insertion": figures.insertion,
                        }
                        for split, figures in scores.splits.items()
                    },
                }
                for variant, scores in self.variants.items()
            },
            "scores": {
                split: {
                    variant.name: {"miou": list(curve.miou), "loc_error": list(curve.loc_error)}
                    for variant, curve in by_variant.items()
                }
                for split, by_variant in self.curves.items()
            },
            "classification_map": _by_name(self.classification_map),
            "branch_cam_correlation": _by_name(self.branch_correlation),
            "rest_reduction": self.rest_reduction,
            "fusion_weights": fusion,
            "hierarchy": None if self.hierarchy is None else self.hierarchy.to_dict(),
            "group_presence": {str(level): shares for level, shares in self.group_presence.items()},
            "histories": {key.name: history for key, history in self.histories.items()},
            "scored_labels": None if self.scored_labels is None else list(self.scored_labels),
            "grouping": None if self.grouping is None else self.grouping.to_json(),
            "has_masks": self.has_masks,
        }
        cleaned: dict[str, Any] = strict_json(data)
        return cleaned

    @classmethod
    def from_json(cls, data: Mapping[str, Any], source: str | Path = "metrics.json") -> RunResult:
        """Read back ``to_json``'s output (``seconds`` and ``figure_scenes`` are not stored).

        Raises:
            ValueError: naming ``source`` and the key, when the layout is not that of this version.
        """
        try:
            if data.get("version") != RESULT_VERSION:
                raise ValueError(
                    f"`version` must be {RESULT_VERSION} (this hiercam's layout), got {data.get('version')!r}"
                )
            variants, curves = {}, {}
            for name, entry in data["variants"].items():
                variant = Variant.from_name(name)
                splits = {
                    split: SplitScores(
                        _float(figures["miou"]),
                        _float(figures["loc_error"]),
                        _float(figures["miou_at_val_threshold"]),
                        _float(figures["loc_error_at_val_threshold"]),
                        # figures added after the layout's version 2: absent in older files (NaN)
                        _float(figures.get("max_box_acc")),
                        tuple(map(_float, figures.get("max_box_acc_per_iou", []))),
                        _float(figures.get("pxap")),
                        _float(figures.get("deletion")),
                        _float(figures.get("insertion")),
                    )
                    for split, figures in entry.items()
                    if split != "threshold"
                }
                variants[variant] = VariantScores(variant, _float(entry["threshold"]), splits)
            for split, by_name in data["scores"].items():
                curves[split] = {
                    Variant.from_name(name): ThresholdCurve(
                        tuple(map(_float, figures["miou"])), tuple(map(_float, figures["loc_error"]))
                    )
                    for name, figures in by_name.items()
                }
            fusion = data["fusion_weights"]
            tuned = fusion.get("full_tuned")
            return cls(
                thresholds=tuple(float(t) for t in data["thresholds"]),
                threshold=float(data["threshold"]),
                variants=variants,
                curves=curves,
                classification_map=_by_key(data["classification_map"]),
                branch_correlation=_by_key(data["branch_cam_correlation"]),
                rest_reduction=str(data["rest_reduction"]),
                fusion_weights=FusionWeights(
                    _triple(fusion["configured"]),
                    None if tuned is None else _triple(tuned),
                    {str(k): float(v) for k, v in fusion.get("tried", {}).items()},
                ),
                hierarchy=None if data["hierarchy"] is None else ClassHierarchy.from_dict(data["hierarchy"]),
                group_presence={int(k): [float(x) for x in v] for k, v in data["group_presence"].items()},
                histories={ModelKey.from_name(k): list(v) for k, v in data["histories"].items()},
                scored_labels=_labels(data.get("scored_labels")),
                grouping=None
                if data.get("grouping") is None
                else GroupingAdaptation.from_json(data["grouping"]),
                has_masks=_flag(data.get("has_masks", True), "has_masks"),
            )
        except KeyError as error:
            raise ValueError(f"{source}: missing key {error}") from None
        except (TypeError, ValueError, AttributeError) as error:
            raise ValueError(f"{source}: {error}") from None

    def save(self, path: str | Path) -> Path:
        """Write ``to_json()`` atomically (strict JSON: NaN is written as ``null``)."""
        return atomic_write_json(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> RunResult:
        """Read a ``metrics.json``.

        Raises:
            FileNotFoundError: no such file.
            ValueError: naming the file, when it is not JSON or not this version's layout.
        """
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:
            raise ValueError(f"{path}: not JSON: {error}") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: must hold a JSON object, got {type(data).__name__}")
        return cls.from_json(data, path)


def _by_name(table: Mapping[str, Mapping[ModelKey, float]]) -> dict[str, dict[str, float]]:
    return {split: {key.name: value for key, value in row.items()} for split, row in table.items()}


def _by_key(table: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[ModelKey, float]]:
    return {
        split: {ModelKey.from_name(name): _float(value) for name, value in row.items()}
        for split, row in table.items()
    }


def _float(value: Any) -> float:
    """A figure read from JSON: ``null`` is NaN."""
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"a figure must be a number or null, got {value!r}")
    return float(value)


def _flag(value: Any, name: str) -> bool:
    """A boolean read from JSON."""
    if not isinstance(value, bool):
        raise ValueError(f"`{name}` must be true or false, got {value!r}")
    return value


def _labels(value: Any) -> tuple[int, ...] | None:
    """``scored_labels`` read from JSON: absent or ``null`` is ``None``."""
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise ValueError(f"`scored_labels` must be a list of integers, got {value!r}")
    return tuple(value)


def _triple(value: Any) -> tuple[float, float, float]:
    if not isinstance(value, list) or len(value) != 3:
        raise ValueError(f"fusion weights must be a list of 3 numbers, got {value!r}")
    return (float(value[0]), float(value[1]), float(value[2]))


def strict_json(value: Any) -> Any:
    """``value`` with every non-finite float replaced by ``None`` (strict JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: strict_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(item) for item in value]
    return value
