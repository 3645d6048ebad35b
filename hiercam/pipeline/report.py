"""The run report and the bench tables, in Markdown: ``report.md``, ``bench.md``, ``compare.md``.

The report only renders: everything it shows is in the finished [`RunResult`][hiercam.pipeline.RunResult]
(and the config that produced it). Figures are fractions in results and percent here. The report's images
are drawn by ``hiercam.pipeline.figures`` (matplotlib, the ``viz`` extra).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hiercam._io import atomic_write_text
from hiercam.pipeline.config import PipelineConfig
from hiercam.pipeline.figures import write_figures
from hiercam.pipeline.keys import Variant
from hiercam.pipeline.results import RunResult, SplitScores

__all__ = [
    "write_report",
    "bench_markdown",
    "compare_markdown",
    "ablation_rows",
    "map_score_rows",
    "stage_time_rows",
    "seed_stats",
]


def ablation_rows(result: RunResult) -> list[str]:
    """Markdown rows: one per variant, mIoU and localisation error on val and test, in percent.

    Then, on the test split (val in validation-only runs), the threshold-free figures: MaxBoxAccV2, PxAP,
    and the deletion (lower is better) and insertion (higher is better) areas of the base classifier's
    score; ``n/a`` where not measured.
    """
    last = result.splits[-1]
    lines = [
        "| variant | val mIoU@0.15 | test mIoU@0.15 | val LocErr@0.15 | test LocErr@0.15 | t* (val) "
        f"| test mIoU@t* | test LocErr@t* | {last} MaxBoxAccV2 | {last} PxAP | {last} deletion | "
        f"{last} insertion |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for variant, scores in result.variants.items():
        val, test = scores.splits["val"], scores.splits.get("test")

        def percent(split: SplitScores | None, figure: str) -> str:
            return "n/a" if split is None else _number(100 * getattr(split, figure))

        cells = [
            percent(val, "miou"),
            percent(test, "miou"),
            percent(val, "loc_error"),
            percent(test, "loc_error"),
            _number(scores.threshold),
            percent(test, "miou_at_chosen"),
            percent(test, "loc_error_at_chosen"),
        ]
        cells += [percent(scores.splits[last], f) for f in ("max_box_acc", "pxap", "deletion", "insertion")]
        lines.append(f"| {_description(result, variant)} | " + " | ".join(cells) + " |")
    return lines


def _description(result: RunResult, variant: Variant) -> str:
    """A row's first cell: the variant in words, and that it is the baseline when the grouping fell back."""
    fell_back = result.grouping is not None and result.grouping.fallback is not None
    suffix = " (no group level: the baseline maps)" if fell_back and variant.fused else ""
    return variant.description + suffix


def _controls_note(config: PipelineConfig, result: RunResult) -> str:
    """What the control rows and the prototype row are, for the rows the run has."""
    notes = []
    level_heads = config.method.level_heads
    if Variant("heads") in result.variants:
        notes.append(
            "The level-heads row is Eq. 6 over the heads of one LevelHeadsNet (one backbone, one linear head "
            "per hierarchy level, trained jointly): its level-0 head's Grad-CAMs are M0, its other heads' "
            "the level maps."
        )
    if Variant("ensemble") in result.variants:
        count = 1 + sum(key.kind == "ensemble" for key in result.histories)
        if level_heads:
            notes.append(
                f"The ensemble control averages the Grad-CAMs of {count} single-branch models trained from "
                f"{count} seeds: the level-heads method trains one model (its LevelHeadsNet) beside the base "
                "classifier that builds the hierarchy, so the control has the method's training compute."
            )
        else:
            notes.append(
                f"The ensemble control averages the Grad-CAMs of {count} single-branch models trained from "
                f"{count} seeds (as many models as the method trains"
                + (
                    ", the training compute of one two-branch model)."
                    if config.method.branches == 2
                    else ")."
                )
            )
    if Variant("shuffled") in result.variants:
        kind = (
            "the heads of one LevelHeadsNet"
            if level_heads
            else "two-branch level models"
            if config.method.branches == 2
            else "single-branch level models"
        )
        notes.append(
            f"The shuffled control is the method's Eq. 6 over {kind} trained on a shuffled "
            "hierarchy (the same group sizes, the classes placed at random): the method's gain over it is "
            "what the grouping's content adds."
        )
    if Variant("prototype") in result.variants:
        context = {
            "own": "its own context prototypes (LPCAM as published)",
            "siblings": "its own context prototypes and the class prototypes of its level-1 siblings",
            "others": "its own context prototypes and the class prototypes of every other class",
        }[config.method.prototype_context]
        notes.append(
            "The prototype row is LPCAM of the base classifier (prototypes from the training split), each "
            f"class's context set holding {context}."
        )
    if Variant("subcategory") in result.variants:
        notes.append(
            "The sub-category row is SC-CAM: the Grad-CAMs of the class head of one net trained on the "
            "classes and on K-means sub-categories of each class (pooled image features), one model's "
            "training."
            + (
                " Its control trains the same net on the sub-categories permuted over each class's images "
                "(the same sizes): the row's gain over it is what the sub-categories' content adds."
                if Variant("subcategory_shuffled") in result.variants
                else ""
            )
        )
    return " ".join(notes)


def map_score_rows(result: RunResult) -> list[str]:
    """Markdown rows: MaxBoxAcc at each box IoU, MaxBoxAccV2 and PxAP of every variant on every split."""
    lines = [
        "| variant | split | MaxBoxAcc@0.3 | MaxBoxAcc@0.5 | MaxBoxAcc@0.7 | MaxBoxAccV2 | PxAP |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for variant, scores in result.variants.items():
        for split, figures in scores.splits.items():
            per_iou = list(figures.max_box_acc_per_iou) or [math.nan] * 3
            cells = [_number(100 * v) for v in (*per_iou, figures.max_box_acc, figures.pxap)]
            lines.append(f"| {_description(result, variant)} | {split} | " + " | ".join(cells) + " |")
    return lines


def _number(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.2f}"


def _evaluated_at(size: int | tuple[int, int] | None) -> str:
    """``"; evaluated at H x W"`` for a run with ``data.eval_image_size``, else nothing."""
    return "" if size is None else f"; evaluated at {_size_text(size)} px"


def _size_text(size: int | tuple[int, int]) -> str:
    """``80`` or ``48 x 64`` (H x W)."""
    return f"{size[0]} x {size[1]}" if isinstance(size, tuple) else str(size)


def write_report(config: PipelineConfig, result: RunResult, out: str | Path) -> Path:
    """Write ``report.md`` and ``figures/*.png`` (when matplotlib is installed) into ``out``.

    Returns:
        The path of ``report.md``.
    """
    out = Path(out)
    hierarchy = result.hierarchy
    names = result.class_names
    figures = write_figures(out, result)
    method = config.method
    normalised = ", unit-norm" if method.orthogonal_unit_norm else ""
    data = config.data
    sizes = (
        f"{data.train_scenes} train / {data.val_scenes} val / {data.test_scenes} test images"
        if data.dataset == "fashion_scenes"
        else "images"
    )
    lines = [
        "# hiercam run report",
        "",
        f"Dataset `{data.dataset}`{f' at `{data.root}`' if data.dataset == 'folder' else ''} "
        f"({sizes} of {_size_text(data.image_size)} px{_evaluated_at(data.eval_image_size)}), backbone "
        f"`{config.model.backbone}`, {config.train.epochs} epochs per model, seed {config.seed}. "
        f"Levels {(len(names),) if hierarchy is None else hierarchy.level_sizes}"
        f"{' (no group level: see below)' if hierarchy is None else ''}, orthogonal loss weight "
        f"{method.orthogonal_weight:g} "
        f"({method.orthogonal_reduction}{normalised}), "
        f"M0' = `{result.rest_reduction}` (pixel-wise {result.rest_reduction} of the base maps "
        "of the other classes present in the image; the paper does not define it). "
        "Full config: `config.json`.",
        "",
        *_no_masks_note(result),
        *_grouping_section(result),
        "## Ablation (the paper's Table 4)" if config.ablation else "## The method against Grad-CAM",
        "",
        *(
            []
            if config.ablation or hierarchy is None
            else [
                'Row "both": Eq. 6 over the two-branch models with this run\'s method settings (above); '
                "the single-branch rows of the paper's ablation are left out (`ablation = false`; "
                "`hiercam bench` runs them).",
                "",
            ]
        ),
        "mIoU and localisation error (LocErr: % of (image, class) pairs whose largest CAM box has IoU < 0.5 "
        "with every ground-truth box of the class) in percent; mIoU: higher is better, LocErr: lower. "
        "t* is the threshold with the best validation mIoU, then applied to test. "
        + _scored_note(result)
        + _controls_note(config, result),
        "",
        *ablation_rows(result),
        "",
        _map_score_note(config, result),
        "",
        *(_map_score_section(result) if config.evaluation.wsol and result.has_masks else []),
        "## Class hierarchy",
        "",
        *(
            ["No group level (see *How the grouping adapted* above).", ""]
            if hierarchy is None
            else [
                "```",
                str(hierarchy),
                "```",
                "",
                "Fraction of training images in which each group is present (a group present in almost "
                "every image gives near-constant targets and carries little signal):",
                "",
            ]
        ),
    ]
    if hierarchy is not None:
        for level, presence in result.group_presence.items():
            shown = zip(hierarchy.group_names(level), presence, strict=True)
            lines.append(
                f"- level {level}: " + ", ".join(f"{name} {100 * share:.0f}%" for name, share in shown)
            )
    lines += [
        "",
        "## Models",
        "",
        "| model | level | groups | val mAP | test mAP | CAM r between branches |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    last = result.splits[-1]
    for key in result.histories:
        test_map = result.classification_map.get("test", {}).get(key)
        correlation = result.branch_correlation[last].get(key)
        groups = len(names) if hierarchy is None else hierarchy.num_groups(key.level)
        lines.append(
            f"| {key.name} | {key.level} | {groups} | "
            f"{result.classification_map['val'][key]:.3f} | "
            f"{'n/a' if test_map is None else f'{test_map:.3f}'} | "
            f"{'' if correlation is None else f'{correlation:.3f}'} |"
        )
    lines += ["", "## Figures", ""]
    if figures:
        lines += [f"![{caption}](figures/{file})\n\n{caption}\n" for file, caption in figures]
    else:
        lines.append("matplotlib is not installed (`pip install hiercam[viz]`), so no figures were drawn.")
    lines += ["", "## Stage times", "", *stage_time_rows(result.seconds)]
    return atomic_write_text(out / "report.md", "\n".join(lines) + "\n")


#: The report's words for the steps timed in ``RunResult.seconds`` (``run.json``), in the run's order.
_STAGES = {
    "stage1_base_and_hierarchy": "1. base classifier and class hierarchy",
    "stage2_levels": "2. level models",
    "stage3_cams": "3. class activation maps",
    "prototypes": "3. of which LPCAM prototypes",
    "stage4_evaluation": "4. evaluation",
    "stage4_fusion_weights": "4. of which fusion weights chosen on val",
    "stage4_scoring": "4. of which mIoU and localisation error",
    "stage4_wsol": "4. of which MaxBoxAccV2 and PxAP",
    "stage4_faithfulness": "4. of which deletion and insertion",
}


def stage_time_rows(seconds: dict[str, float]) -> list[str]:
    """Markdown rows: the time of each stage and of its timed steps, with their share of the whole run.

    ``seconds`` is [`RunResult.seconds`][hiercam.pipeline.RunResult] (as in ``run.json``): the four stages
    first, then the other steps (reading a split, ``data_<split>``; training a model, ``train_<model>``),
    then the total. A run that read its models or maps from the cache shows short stages.

    Example:
        >>> for row in stage_time_rows({"train_base": 1.0, "stage3_cams": 3.0, "total": 6.0})[2:]:
        ...     print(row)
        | 3. class activation maps | `stage3_cams` | 3.0 | 50% |
        | training base | `train_base` | 1.0 | 17% |
        | whole run | `total` | 6.0 | 100% |
    """
    total = seconds.get("total", math.nan)
    ordered = [step for step in _STAGES if step in seconds]
    ordered += [step for step in seconds if step not in _STAGES and step != "total"]
    ordered += ["total"] * ("total" in seconds)
    lines = ["| stage | step (`run.json`) | seconds | share of the run |", "| --- | --- | ---: | ---: |"]
    for step in ordered:
        value = seconds[step]
        share = "n/a" if not total or math.isnan(total) else f"{100 * value / total:.0f}%"
        lines.append(f"| {_step_words(step)} | `{step}` | {value:.1f} | {share} |")
    return lines


def _step_words(step: str) -> str:
    """A timed step in words: ``train_base`` is "training base", ``data_val`` "reading the val split"."""
    if step in _STAGES:
        return _STAGES[step]
    if step == "total":
        return "whole run"
    if step.startswith("train_"):
        return f"training {step.removeprefix('train_')}"
    if step.startswith("data_"):
        return f"reading the {step.removeprefix('data_')} split"
    return step


def _no_masks_note(result: RunResult) -> list[str]:
    """The report's one note that the data had no masks, so every mask and box figure reads n/a."""
    if result.has_masks:
        return []
    return [
        "**The dataset has no masks: mask metrics skipped.** The mIoU, the localisation error, the threshold "
        "t* chosen on validation mIoU, MaxBoxAccV2 and PxAP need ground-truth masks or boxes, so they read "
        "n/a below (they were not measured, and the fusion weights were not tuned); the deletion and "
        "insertion areas need none and are measured.",
        "",
    ]


def _grouping_section(result: RunResult) -> list[str]:
    """The report's section on how the grouping adapted (when it did): kept-out classes, splits, fallback."""
    grouping = result.grouping
    if grouping is None or not grouping.adapted:
        return []
    lines = [
        "## How the grouping adapted",
        "",
        "Classes or groups present in almost every training image give near-constant targets, so the "
        "grouping adapted (`method.max_class_presence`, `method.max_group_presence`; see the pipeline "
        "guide):",
        "",
        *(f"- {note}" for note in grouping.notes()),
        "",
    ]
    if grouping.fallback is not None:
        lines += [
            "**No group level is left**, so the method fell back to the baseline: no level model was "
            "trained, and the rows of Eq. 6 below are the baseline Grad-CAM maps (with this run's "
            "refinements).",
            "",
        ]
    return lines


def _map_score_section(result: RunResult) -> list[str]:
    """The report's section on MaxBoxAcc per IoU, MaxBoxAccV2 and PxAP (when measured)."""
    return [
        "## Localisation without a threshold",
        "",
        "MaxBoxAcc (Choe et al., CVPR 2020): % of (image, class) pairs with a box of the map's regions at "
        "IoU >= 0.3 / 0.5 / 0.7 with a ground-truth box, at the best map threshold; MaxBoxAccV2 is their "
        "mean. PxAP: pixel average precision against the masks (void ignored). Higher is better.",
        "",
        *map_score_rows(result),
        "",
    ]


def _map_score_note(config: PipelineConfig, result: RunResult) -> str:
    """How the threshold-free columns of the ablation table were measured."""
    evaluation = config.evaluation
    last = result.splits[-1]
    wsol = (
        "MaxBoxAccV2 and PxAP were not measured (no masks). "
        if not result.has_masks
        else "MaxBoxAccV2 and PxAP: threshold-free localisation (see below). "
        if evaluation.wsol
        else "MaxBoxAccV2 and PxAP were not measured (`evaluation.wsol = false`). "
    )
    if evaluation.faithfulness_images == 0:
        return wsol + "Deletion and insertion were not measured (`evaluation.faithfulness_images = 0`)."
    return (
        wsol + f"Deletion / insertion: faithfulness of each variant's maps to the base classifier (the "
        "single-branch model the baseline explains, for fused maps too): area under its sigmoid class score "
        f"as pixels are removed from the image (deletion, lower is better) or added to a black image "
        f"(insertion, higher is better) in the maps' order, {evaluation.faithfulness_steps} steps, on the "
        f"first {evaluation.faithfulness_images} {last} images, in percent."
    )


def _scored_note(result: RunResult) -> str:
    """What the mIoU averages, when it is not every label."""
    scored = result.scored_labels
    every = tuple(range(len(result.class_names) + 1))
    if scored is None or tuple(scored) == every:
        return ""
    left_out = [label for label in every if label not in scored]
    names = ("background", *result.class_names)
    named = ", ".join(names[label] for label in left_out)
    return f"The mIoU averages {len(scored)} labels; left out: {named} (no pixel of the data has it). "


def bench_markdown(result: dict[str, Any]) -> str:
    """The ablation table over seeds, in percent: ``mean ± std [min, max]``.

    ``result`` is [`run_bench`][hiercam.pipeline.run_bench]'s (``bench.json``): figures are fractions.
    """
    seeds = result["seeds"]
    lines = [
        f"Mean ± standard deviation [min, max] over seeds {', '.join(map(str, seeds))}, in percent; "
        f"M0' = `{result['rest_reduction']}`.",
        "",
        "| variant | val mIoU@0.15 | test mIoU@0.15 | test mIoU@t* | val LocErr@0.15 | test LocErr@0.15 "
        "| test MaxBoxAccV2 | test PxAP | test deletion | test insertion |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    wanted = (
        ("val", "miou"),
        ("test", "miou"),
        ("test", "miou_at_val_threshold"),
        ("val", "loc_error"),
        ("test", "loc_error"),
        ("test", "max_box_acc"),
        ("test", "pxap"),
        ("test", "deletion"),
        ("test", "insertion"),
    )
    for name, entry in result["variants"].items():
        cells = [_figure_cell(entry.get(split, {}), figure) for split, figure in wanted]
        lines.append(f"| {Variant.from_name(name).description} | " + " | ".join(cells) + " |")
    lines += ["", "| model | val mAP | test mAP |", "| --- | ---: | ---: |"]
    maps = result["classification_map"]
    for model, val in maps["val"].items():
        test = maps["test"][model]
        lines.append(
            f"| {model} | {val['mean']:.3f} ± {val['std']:.3f} | {test['mean']:.3f} ± {test['std']:.3f} |"
        )
    seconds = result.get("seconds")
    if seconds:
        shown = ", ".join(f"seed {seed}: {_minutes(value)}" for seed, value in seconds.items())
        lines += ["", f"Time per seed (whole run): {shown}."]
    return "\n".join(lines) + "\n"


def _minutes(seconds: float | None) -> str:
    return "n/a" if seconds is None or math.isnan(seconds) else f"{seconds / 60:.1f} min"


FUSED = (Variant("full"), Variant("full_tuned"))

#: The fused rows of a run whose level models are single-branch (``method.branches = 1``), or the heads of
#: one level-heads model (``method.level_heads``): a run has one of them.
SINGLE_BRANCH_FUSED = (Variant("grouping"), Variant("heads"))

#: The controls shown next to the baseline in ``compare_markdown``.
CONTROLS = (Variant("ensemble"),)

#: The rows of a preset's own controls and alternatives, shown after its method in ``compare_markdown``.
PRESET_CONTROLS = (
    Variant("shuffled"),
    Variant("prototype"),
    Variant("subcategory"),
    Variant("subcategory_shuffled"),
)


def compare_markdown(result: dict[str, Any]) -> str:
    """Presets side by side on test data, in percent: each one's fused method against the baseline Grad-CAM.

    Δ is the paired difference to the baseline of the same seed and preset (test mIoU in points), at 0.15 and
    at the validation-chosen threshold t*; "apart" says whether the seeds' ranges of the two do not overlap.
    The ensemble control (single-branch models averaged, as many as the preset's method trains) is shown
    under the baseline, with its Δ. A preset's baseline row is shown when its baseline differs from the
    first preset's (models trained again, e.g. with another number of threads, are not bitwise equal), its
    ensemble row when the ensemble differs from the last one shown. Each preset's shuffled-hierarchy
    control (``shuffled``) and prototype row (``prototype``), when it has them, follow its method. ``result``
    is
    [`run_preset_bench`][hiercam.pipeline.run_preset_bench]'s (``compare.json``): figures are fractions.
    """
    seeds = result["seeds"]
    lines = [
        f"Test split; mean ± standard deviation [min, max] over seeds {', '.join(map(str, seeds))}, in "
        "percent. Every choice (thresholds t*, fusion weights, the presets' settings) was made on validation "
        "data.",
        "",
        "| preset | method | test mIoU@0.15 | Δ vs baseline | apart | test mIoU@t* | Δ@t* vs baseline | "
        "apart@t* | test LocErr@0.15 | test MaxBoxAccV2 | test PxAP | test deletion | test insertion | "
        "mAP (level 0) | CAM r between branches |",
        "| --- | --- | ---: | ---: | :---: | ---: | ---: | :---: | ---: | ---: | ---: | ---: | ---: | ---: "
        "| ---: |",
    ]
    first_baseline, shown_ensemble = None, None
    baseline_variant = Variant("baseline")
    for preset, bench in result["presets"].items():
        if "error" in bench:
            lines.append(f"| {preset} | not run: {bench['error']} |" + " |" * 13)
            continue
        variants = {Variant.from_name(name): entry["test"] for name, entry in bench["variants"].items()}
        baseline = variants[baseline_variant]
        shown = [variant for variant in FUSED if variant in variants]
        if not shown:  # `method.branches` = 1: the method is Eq. 6 over single-branch models
            shown = [variant for variant in SINGLE_BRANCH_FUSED if variant in variants]
        fused_model = (
            "level_heads"
            if shown == [Variant("heads")]
            else "base"
            if shown == [Variant("grouping")]
            else "two_branch_L0"
        )
        controls = [variant for variant in CONTROLS if variant in variants]
        ensemble = variants.get(Variant("ensemble"), {}).get("miou")
        if ensemble is None or ensemble == shown_ensemble:  # the same ensemble as the last one shown
            controls = [variant for variant in controls if variant != Variant("ensemble")]
        else:
            shown_ensemble = ensemble
        if first_baseline is None:
            first_baseline = baseline["miou"]
            controls = [baseline_variant, *controls]
        elif baseline["miou"] != first_baseline:  # the base models were trained again
            controls = [baseline_variant, *controls]
        shown = controls + shown + [variant for variant in PRESET_CONTROLS if variant in variants]
        for variant in shown:
            entry = variants[variant]
            cells = [_cell(_percent(entry["miou"]))]
            for figure in ("miou", "miou_at_val_threshold"):
                if figure != "miou":
                    cells.append(_cell(_percent(entry[figure])))
                is_baseline = variant == baseline_variant
                cells += ["", ""] if is_baseline else _versus(entry[figure], baseline[figure])
            model = {
                baseline_variant: "base",
                Variant("ensemble"): "ensemble",
                Variant("grouping"): "base",  # Eq. 6 over single-branch models: level 0 is the base
                # the level-heads method's shuffled control is a level-heads net of its own
                Variant("shuffled"): "shuffled_level_heads" if fused_model == "level_heads" else fused_model,
                Variant("prototype"): "base",  # LPCAM of the base classifier
                Variant("subcategory"): "subcategory",
                Variant("subcategory_shuffled"): "shuffled_subcategory",
            }.get(variant, fused_model)
            correlation = bench["branch_cam_correlation"]["test"].get(model)  # none for the base
            cells += [
                _cell(_percent(entry["loc_error"])),
                *(_figure_cell(entry, f) for f in ("max_box_acc", "pxap", "deletion", "insertion")),
                _cell(_percent(bench["classification_map"]["test"].get(model, _NO_FIGURE))),
                "" if correlation is None else _cell(correlation, digits=3),
            ]
            lines.append(f"| {preset} | {variant.description} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


_NO_FIGURE = {"mean": math.nan, "std": math.nan, "min": math.nan, "max": math.nan}


def _versus(stats: dict[str, Any], baseline: dict[str, Any]) -> list[str]:
    """The paired difference per seed (in points), and whether the seeds' ranges do not overlap."""
    delta = [100 * (a - b) for a, b in zip(stats["values"], baseline["values"], strict=True)]
    apart = stats["min"] > baseline["max"] or stats["max"] < baseline["min"]
    return [_cell(seed_stats(delta)), "yes" if apart else "no"]


def seed_stats(values: Sequence[float | None]) -> dict[str, Any]:
    """A figure over seeds: its ``values``, and the mean, sample std, min and max of the finite ones.

    All four are NaN when no value is finite (``None``, a figure read back from JSON, counts as NaN).
    """
    finite = [v for v in values if v is not None and not math.isnan(v)]
    if not finite:
        return {"values": list(values), "mean": math.nan, "std": math.nan, "min": math.nan, "max": math.nan}
    return {
        "values": list(values),
        "mean": statistics.fmean(finite),
        "std": statistics.stdev(finite) if len(finite) > 1 else 0.0,
        "min": min(finite),
        "max": max(finite),
    }


def _figure_cell(entry: dict[str, Any], figure: str) -> str:
    """A figure's cell in percent, ``n/a`` when absent (results of older versions) or never measured."""
    stats = entry.get(figure)
    if stats is None or stats["mean"] is None or math.isnan(stats["mean"]):
        return "n/a"
    return _cell(_percent(stats))


def _percent(stats: dict[str, Any]) -> dict[str, float]:
    return {key: 100 * stats[key] for key in ("mean", "std", "min", "max")}


def _cell(stats: dict[str, float], digits: int = 2) -> str:
    d = digits
    return f"{stats['mean']:.{d}f} ± {stats['std']:.{d}f} [{stats['min']:.{d}f}, {stats['max']:.{d}f}]"
