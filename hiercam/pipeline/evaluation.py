"""Stage 4: the CAM variants of the ablation, scored with mIoU and localisation error on val and test.

The variants (the paper's Table 4 rows, and diagnostics):

* ``baseline``: Grad-CAM of the single-branch classifier on the ``K`` classes (no grouping, no orthogonal
  loss);
* ``two_branch``: the branch average of the level-0 two-branch model (orthogonal loss only);
* ``grouping``: Eq. 6 over single-branch models (grouping only);
* ``full``: Eq. 6 over the two-branch models (both; the paper's method);
* ``level_l``: the two-branch level-``l`` model's map of each class's group, alone (a diagnostic).

Every map is upsampled (bilinear) to the image size and max-normalised before fusion and scoring. mIoU and
localisation error are computed at every threshold of ``method.thresholds`` in one pass; the threshold with
the best validation mIoU is then applied to test, so test data never chooses anything.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch.nn.functional as F
from torch import Tensor

from hiercam.fusion import RestMode, fuse_hierarchy
from hiercam.grouping import ClassHierarchy
from hiercam.maps import normalize_maps
from hiercam.metrics import LocalizationError, MeanIoU
from hiercam.pipeline.config import PipelineConfig
from hiercam.pipeline.data import Split

__all__ = ["ABLATION", "variant_names", "variant_maps", "score_split", "choose_thresholds"]

ABLATION = {
    "baseline": "Grad-CAM baseline (single branch, no grouping)",
    "two_branch": "+ orthogonal two-branch only",
    "grouping": "+ grouping only",
    "full": "both (the paper's method)",
    "full_tuned": "both, fusion weights chosen on val",
}


def variant_names(config: PipelineConfig, hierarchy: ClassHierarchy) -> list[str]:
    """The variants a run evaluates (ablation rows need ``config.ablation``)."""
    names = ["baseline", "two_branch", "grouping", "full"] if config.ablation else ["baseline", "full"]
    return names + [f"level_{level}" for level in range(1, hierarchy.num_levels)]


def _upsample(maps: Tensor, size: tuple[int, int]) -> Tensor:
    return normalize_maps(F.interpolate(maps.float(), size=size, mode="bilinear", align_corners=False))


def variant_maps(
    cams: dict[str, Tensor],
    rows: Tensor,
    hierarchy: ClassHierarchy,
    labels: Tensor,
    size: tuple[int, int],
    names: list[str],
    rest: RestMode,
    weights: dict[str, tuple[float, float, float]] | None = None,
) -> Iterator[tuple[str, Tensor]]:
    """``(name, maps (B, K, H, W))`` of each variant for the images ``rows`` of a split.

    ``weights`` gives the fusion weights ``(a, b, c)`` of the fused variants (default: the paper's ``(1, 1,
    1)``); ``full_tuned`` is the ``full`` variant with its own weights.
    """
    weights = weights or {}
    levels = range(1, hierarchy.num_levels)
    cache: dict[str, Tensor] = {}

    def get(model: str) -> Tensor:
        if model not in cache:
            cache[model] = _upsample(cams[model][rows], size)
        return cache[model]

    for name in names:
        if name == "baseline":
            yield name, get("base")
        elif name == "two_branch":
            yield name, get("two_branch_L0")
        elif name in ("grouping", "full", "full_tuned"):
            prefix = "single" if name == "grouping" else "two_branch"
            base = get("base") if name == "grouping" else get("two_branch_L0")
            level_maps = [get(f"{prefix}_L{level}") for level in levels]
            fused = fuse_hierarchy(
                base,
                level_maps,
                hierarchy,
                labels,
                rest=rest,
                weights=weights.get(name, (1.0, 1.0, 1.0)),
            )
            yield name, fused
        else:
            level = int(name.split("_")[1])
            yield name, get(f"two_branch_L{level}")[:, hierarchy.assignments(level)]


def score_split(
    config: PipelineConfig,
    data: Split,
    cams: dict[str, Tensor],
    hierarchy: ClassHierarchy,
    names: list[str],
    indices: list[int] | None = None,
    weights: dict[str, tuple[float, float, float]] | None = None,
    *,
    localization: bool = True,
) -> dict[str, dict[str, list[float]]]:
    """Score every variant at every threshold: ``{variant: {"miou": [...], "loc_error": [...]}}``.

    ``indices`` is this process's shard of the images (all by default); under ``torchrun`` the metrics sum
    their states over the processes, so every process gets the figures of the whole split. ``weights`` are
    the fused variants' fusion weights (see ``variant_maps``); ``localization=False`` skips the localisation
    error (mIoU only, faster).
    """
    method = config.method
    thresholds = list(method.thresholds)
    num_classes = hierarchy.num_classes
    iou = {name: MeanIoU(num_classes + 1, thresholds=thresholds, ignore_index=255) for name in names}
    loc = {name: LocalizationError(iou=method.iou, thresholds=thresholds) for name in names}
    for rows, images, targets, masks, boxes in data.batches(64, indices):
        size = (int(images.shape[-2]), int(images.shape[-1]))
        for name, maps in variant_maps(
            cams, rows, hierarchy, targets, size, names, method.rest_reduction, weights
        ):
            iou[name].update(maps, masks, targets)
            if localization:
                loc[name].update(maps, targets, boxes)
    return {
        name: {
            "miou": [100 * float(v) for v in iou[name].compute().miou],
            "loc_error": [float(value) for value in loc[name].compute()] if localization else [],
        }
        for name in names
    }


#: Candidate fusion weights ``(a, b, c)``: the base map kept at 1, the level maps and ``M0'`` weighed 0-2.
FUSION_GRID: tuple[tuple[float, float, float], ...] = tuple(
    (1.0, b, c) for b in (0.0, 0.5, 1.0, 2.0) for c in (0.0, 0.5, 1.0, 2.0)
)


def choose_fusion_weights(
    config: PipelineConfig,
    data: Split,
    cams: dict[str, Tensor],
    hierarchy: ClassHierarchy,
    indices: list[int] | None = None,
) -> tuple[tuple[float, float, float], dict[str, float]]:
    """The fusion weights of the ``full`` variant with the best validation mIoU (over the threshold grid too).

    Only validation data is used. Returns the chosen ``(a, b, c)`` and every candidate's best validation mIoU.
    """
    tried: dict[str, float] = {}
    best: tuple[float, tuple[float, float, float]] = (-1.0, FUSION_GRID[0])
    for candidate in FUSION_GRID:
        scores = score_split(
            config, data, cams, hierarchy, ["full"], indices, {"full": candidate}, localization=False
        )
        value = max(scores["full"]["miou"])
        tried[",".join(f"{w:g}" for w in candidate)] = value
        if value > best[0]:
            best = (value, candidate)
    return best[1], tried


def choose_thresholds(
    config: PipelineConfig, scores: dict[str, dict[str, dict[str, list[float]]]]
) -> dict[str, Any]:
    """Per variant: figures at the paper's threshold and at the threshold with the best validation mIoU.

    ``scores`` is ``{split: score_split(...)}`` for ``"val"`` and ``"test"``.
    """
    thresholds = list(config.method.thresholds)
    paper = thresholds.index(config.method.threshold)
    summary: dict[str, Any] = {}
    for name, val in scores["val"].items():
        best = max(range(len(thresholds)), key=lambda i: val["miou"][i])
        entry: dict[str, Any] = {"threshold": thresholds[best]}
        for split, by_name in scores.items():
            figures = by_name[name]
            entry[split] = {
                "miou": figures["miou"][paper],
                "loc_error": figures["loc_error"][paper],
                "miou_at_val_threshold": figures["miou"][best],
                "loc_error_at_val_threshold": figures["loc_error"][best],
            }
        summary[name] = entry
    return summary
