"""The run report: ``report.md`` with the ablation table, and figures (matplotlib, the ``viz`` extra)."""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from hiercam._io import atomic_write, atomic_write_text
from hiercam.grouping import ClassHierarchy
from hiercam.pipeline.evaluation import ABLATION
from hiercam.pipeline.stages import RunContext, TrainedModel

__all__ = ["write_report", "bench_markdown", "compare_markdown", "ablation_rows"]

_FIGURE_SCENES = 8


def ablation_rows(metrics: dict[str, Any]) -> list[str]:
    """Markdown rows: one per variant, mIoU and localisation error on val and test."""
    lines = [
        "| variant | val mIoU@0.15 | test mIoU@0.15 | val LocErr@0.15 | test LocErr@0.15 | t* (val) "
        "| test mIoU@t* | test LocErr@t* |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, entry in metrics["variants"].items():
        label = ABLATION.get(name, f"level {name.split('_')[-1]} model alone")
        val, test = entry["val"], entry.get("test", {})
        cells = [
            _number(val.get("miou")),
            _number(test.get("miou")),
            _number(val.get("loc_error")),
            _number(test.get("loc_error")),
            _number(entry["threshold"]),
            _number(test.get("miou_at_val_threshold")),
            _number(test.get("loc_error_at_val_threshold")),
        ]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def write_report(
    ctx: RunContext,
    hierarchy: ClassHierarchy,
    models: dict[str, TrainedModel],
    cams: dict[str, dict[str, Tensor]],
    metrics: dict[str, Any],
) -> None:
    """Write ``report.md`` and ``figures/*.png`` into the run directory."""
    config = ctx.config
    figure_split = "test" if "test" in cams else "val"
    figures = _figures(ctx, hierarchy, models, cams[figure_split], figure_split)
    presence = json.loads((ctx.out / "hierarchy_presence.json").read_text())
    normalised = ", normalised" if config.method.orthogonal_unit_norm else ""
    lines = [
        "# hiercam run report",
        "",
        f"Dataset `{config.data.dataset}` ({config.data.train_scenes} train / {config.data.val_scenes} val / "
        f"{config.data.test_scenes} test images of {config.data.image_size} px), backbone "
        f"`{config.model.backbone}`, {config.train.epochs} epochs per model, seed {config.seed}. "
        f"Levels {hierarchy.level_sizes}, orthogonal loss weight {config.method.orthogonal_weight:g} "
        f"({config.method.orthogonal_reduction}{normalised}), "
        f"M0' = `{config.method.rest_reduction}` (pixel-wise {config.method.rest_reduction} of the base maps "
        "of the other classes present in the image; the paper does not define it). "
        "Full config: `config.json`.",
        "",
        "## Ablation (the paper's Table 4)",
        "",
        "mIoU and localisation error (LocErr: % of (image, class) pairs whose largest CAM box has IoU < 0.5 "
        "with every ground-truth box of the class) in percent; mIoU: higher is better, LocErr: lower. "
        "t* is the threshold with the best validation mIoU, then applied to test.",
        "",
        *ablation_rows(metrics),
        "",
        "## Class hierarchy",
        "",
        "```",
        str(hierarchy),
        "```",
        "",
        "Fraction of training images in which each group is present (a group present in almost every image "
        "gives near-constant targets and carries little signal):",
        "",
    ]
    for level in range(1, hierarchy.num_levels):
        shares = ", ".join(
            f"{name} {100 * share:.0f}%"
            for name, share in zip(hierarchy.group_names(level), presence[str(level)], strict=True)
        )
        lines.append(f"- level {level}: {shares}")
    lines += [
        "",
        "## Models",
        "",
        "| model | level | groups | val mAP | test mAP | CAM r between branches |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, trained in models.items():
        correlation = (
            metrics["branch_cam_correlation"].get("test", metrics["branch_cam_correlation"]["val"]).get(name)
        )
        lines.append(
            f"| {name} | {trained.level} | {hierarchy.num_groups(trained.level)} | "
            f"{metrics['classification_map']['val'][name]:.3f} | "
            f"{_number(metrics['classification_map'].get('test', {}).get(name))} | "
            f"{'' if correlation is None else f'{correlation:.3f}'} |"
        )
    lines += ["", "## Figures", ""]
    if figures:
        lines += [f"![{caption}](figures/{file})\n\n{caption}\n" for file, caption in figures]
    else:
        lines.append("matplotlib is not installed (`pip install hiercam[viz]`), so no figures were drawn.")
    timings = (
        json.loads((ctx.out / "run.json").read_text())["seconds"] if (ctx.out / "run.json").is_file() else {}
    )
    lines += ["", "## Timings", "", "| step | seconds |", "| --- | ---: |"]
    lines += [f"| {step} | {seconds:.1f} |" for step, seconds in timings.items()]
    atomic_write_text(ctx.out / "report.md", "\n".join(lines) + "\n")


def bench_markdown(result: dict[str, Any]) -> str:
    """The ablation table over seeds: ``mean ± std [min, max]``."""
    seeds = result["seeds"]
    lines = [
        f"Mean ± standard deviation [min, max] over seeds {', '.join(map(str, seeds))}; "
        f"M0' = `{result['rest']}`.",
        "",
        "| variant | val mIoU@0.15 | test mIoU@0.15 | test mIoU@t* | val LocErr@0.15 | test LocErr@0.15 |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, entry in result["variants"].items():
        label = ABLATION.get(name, f"level {name.split('_')[-1]} model alone")
        cells = [
            _cell(entry[key])
            for key in (
                "val/miou",
                "test/miou",
                "test/miou_at_val_threshold",
                "val/loc_error",
                "test/loc_error",
            )
        ]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "| model | val mAP | test mAP |", "| --- | ---: | ---: |"]
    models = sorted({key.split("/", 1)[1] for key in result["classification_map"]})
    for model in models:
        val, test = (
            result["classification_map"][f"val/{model}"],
            result["classification_map"][f"test/{model}"],
        )
        lines.append(
            f"| {model} | {val['mean']:.3f} ± {val['std']:.3f} | {test['mean']:.3f} ± {test['std']:.3f} |"
        )
    return "\n".join(lines) + "\n"


FUSED = ("full", "full_tuned")


def compare_markdown(result: dict[str, Any]) -> str:
    """Presets side by side on test data: each one's fused method against the baseline Grad-CAM.

    Δ is the paired difference to the baseline of the same seed and preset (test mIoU in points), at 0.15 and
    at the validation-chosen threshold t*; "apart" says whether the seeds' ranges of the two do not overlap.
    A preset's baseline row is shown when it differs from the first preset's (models trained again, e.g.
    with another number of threads, are not bitwise equal).
    """
    seeds = result["seeds"]
    lines = [
        f"Test split; mean ± standard deviation [min, max] over seeds {', '.join(map(str, seeds))}. "
        "Every choice (thresholds t*, fusion weights, the presets' settings) was made on validation data.",
        "",
        "| preset | method | test mIoU@0.15 | Δ vs baseline | apart | test mIoU@t* | Δ@t* vs baseline | "
        "apart@t* | test LocErr@0.15 | mAP (level 0) | CAM r between branches |",
        "| --- | --- | ---: | ---: | :---: | ---: | ---: | :---: | ---: | ---: | ---: |",
    ]
    first_baseline = None
    for preset, bench in result["presets"].items():
        if "error" in bench:
            lines.append(f"| {preset} | not run: {bench['error']} |" + " |" * 9)
            continue
        variants = bench["variants"]
        baseline = variants["baseline"]
        names = [name for name in FUSED if name in variants]
        if first_baseline is None:
            first_baseline = baseline["test/miou"]
            names.insert(0, "baseline")
        elif baseline["test/miou"] != first_baseline:  # the base models were trained again
            names.insert(0, "baseline")
        for name in names:
            entry = variants[name]
            cells = [_cell(entry["test/miou"])]
            for figure in ("test/miou", "test/miou_at_val_threshold"):
                if figure != "test/miou":
                    cells.append(_cell(entry[figure]))
                cells += ["", ""] if name == "baseline" else _versus(entry[figure], baseline[figure])
            model = "base" if name == "baseline" else "two_branch_L0"
            correlation = bench["branch_cam_correlation"].get(f"test/{model}")  # none for the base
            cells += [
                _cell(entry["test/loc_error"]),
                _cell(_percent(bench["classification_map"][f"test/{model}"])),
                "" if correlation is None else _cell(correlation, digits=3),
            ]
            lines.append(f"| {preset} | {ABLATION.get(name, name)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _versus(stats: dict[str, Any], baseline: dict[str, Any]) -> list[str]:
    """The paired difference per seed, and whether the seeds' ranges do not overlap."""
    delta = [a - b for a, b in zip(stats["values"], baseline["values"], strict=True)]
    apart = stats["min"] > baseline["max"] or stats["max"] < baseline["min"]
    return [_cell(seed_stats(delta)), "yes" if apart else "no"]


def seed_stats(values: Sequence[float]) -> dict[str, Any]:
    """A figure over seeds: its ``values``, and the mean, sample std, min and max of the finite ones.

    All four are NaN when no value is finite.
    """
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return {"values": list(values), "mean": math.nan, "std": math.nan, "min": math.nan, "max": math.nan}
    return {
        "values": list(values),
        "mean": statistics.fmean(finite),
        "std": statistics.stdev(finite) if len(finite) > 1 else 0.0,
        "min": min(finite),
        "max": max(finite),
    }


def _percent(stats: dict[str, Any]) -> dict[str, float]:
    return {key: 100 * stats[key] for key in ("mean", "std", "min", "max")}


def _cell(stats: dict[str, float], digits: int = 2) -> str:
    d = digits
    return f"{stats['mean']:.{d}f} ± {stats['std']:.{d}f} [{stats['min']:.{d}f}, {stats['max']:.{d}f}]"


# ------------------------------------------------------------------------------------------------ figures
def _figures(
    ctx: RunContext,
    hierarchy: ClassHierarchy,
    models: dict[str, TrainedModel],
    cams: dict[str, Tensor],
    split: str,
) -> list[tuple[str, str]]:
    try:
        import matplotlib
    except ImportError:
        return []
    matplotlib.use("Agg", force=False)
    folder = ctx.out / "figures"
    folder.mkdir(exist_ok=True)
    drawn = [
        (
            "hierarchy.png",
            "The class hierarchy found from the base classifier's class vectors.",
            _hierarchy_figure(hierarchy),
        ),
        (
            "cams.png",
            f"{split.capitalize()} scenes: input, the CAM of one present class from each level's two-branch "
            "model (its group's map), the fused map (Eq. 6), the baseline Grad-CAM, the ground-truth mask.",
            _cam_figure(ctx, hierarchy, cams, split),
        ),
        ("training.png", "Validation mAP per epoch of every model.", _training_figure(models)),
    ]
    for file, _, figure in drawn:
        _save_png(folder / file, figure)
    return [(file, caption) for file, caption, _ in drawn]


def _save_png(path: Any, figure: Any) -> None:
    def write(handle: Any) -> None:
        figure.savefig(handle, format="png", dpi=100)

    atomic_write(path, write)


def _hierarchy_figure(hierarchy: ClassHierarchy) -> Any:
    from matplotlib.figure import Figure

    top = hierarchy.num_levels - 1
    order: list[int] = []

    def visit(level: int, group: int) -> None:
        members = hierarchy.groups(level)[group]
        if level == 0:
            order.extend(members)
            return
        below = hierarchy.assignments(level - 1)
        for child in sorted({int(below[c]) for c in members}):
            visit(level - 1, child)

    for group in range(hierarchy.num_groups(top)):
        visit(top, group)
    x_of_class = {cls: x for x, cls in enumerate(order)}
    figure = Figure(figsize=(max(6.0, 0.9 * hierarchy.num_classes), 1.4 * hierarchy.num_levels + 1))
    axis = figure.add_subplot()
    positions: dict[tuple[int, int], float] = {}
    for level in range(hierarchy.num_levels):
        for group, members in enumerate(hierarchy.groups(level)):
            positions[(level, group)] = sum(x_of_class[c] for c in members) / len(members)
    for level in range(1, hierarchy.num_levels):
        below = hierarchy.assignments(level - 1)
        parent_of = hierarchy.assignments(level)
        for child in range(hierarchy.num_groups(level - 1)):
            member = int((below == child).nonzero()[0])
            parent = int(parent_of[member])
            axis.plot(
                [positions[(level - 1, child)], positions[(level, parent)]], [level - 1, level], color="0.6"
            )
    for (level, group), x in positions.items():
        if level == 0:
            axis.text(x, -0.15, hierarchy.class_names[group], rotation=45, ha="right", va="top", fontsize=9)
            axis.plot([x], [0], "o", color="tab:blue")
        else:
            size = len(hierarchy.groups(level)[group])
            axis.text(
                x,
                level,
                f"{size}",
                ha="center",
                va="center",
                fontsize=8,
                bbox={"boxstyle": "round", "facecolor": "tab:orange", "alpha": 0.8},
            )
    axis.set_yticks(
        range(hierarchy.num_levels), [f"level {lv} ({n})" for lv, n in enumerate(hierarchy.level_sizes)]
    )
    axis.set_xticks([])
    axis.set_ylim(-1.6, top + 0.5)
    for side in ("top", "right", "bottom"):
        axis.spines[side].set_visible(False)
    figure.tight_layout()
    return figure


def _cam_figure(ctx: RunContext, hierarchy: ClassHierarchy, cams: dict[str, Tensor], split: str) -> Any:
    from matplotlib.figure import Figure

    from hiercam.pipeline.evaluation import variant_maps
    from hiercam.viz import overlay

    data = ctx.data(split)
    count = min(_FIGURE_SCENES, len(data))
    rows, images, targets, masks, _ = next(data.batches(count, range(count)))
    size = (int(images.shape[-2]), int(images.shape[-1]))
    levels = list(range(1, hierarchy.num_levels))
    wanted = ["two_branch", "full", "baseline", *[f"level_{level}" for level in levels]]
    maps = dict(variant_maps(cams, rows, hierarchy, targets, size, wanted, ctx.config.method.rest_reduction))
    level0 = maps["two_branch"]
    columns = [
        "input",
        "level 0",
        *[f"level {level}" for level in levels],
        "fused",
        "baseline",
        "ground truth",
    ]
    figure = Figure(figsize=(1.6 * len(columns), 1.7 * count))
    for row in range(count):
        areas = torch.stack([(masks[row] == k + 1).sum() for k in range(hierarchy.num_classes)])
        cls = int(torch.where(targets[row] > 0, areas, torch.full_like(areas, -1)).argmax())
        panels = [images[row].permute(1, 2, 0).numpy(), overlay(images[row], level0[row, cls])]
        panels += [overlay(images[row], maps[f"level_{level}"][row, cls]) for level in levels]
        panels += [
            overlay(images[row], maps["full"][row, cls]),
            overlay(images[row], maps["baseline"][row, cls]),
        ]
        panels.append((masks[row] == cls + 1).float().numpy())
        for column, panel in enumerate(panels):
            axis = figure.add_subplot(count, len(columns), row * len(columns) + column + 1)
            axis.imshow(panel, cmap="gray" if panel.ndim == 2 else None, vmin=0, vmax=1)
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                axis.set_title(columns[column], fontsize=9)
            if column == 0:
                axis.set_ylabel(hierarchy.class_names[cls], fontsize=8)
    figure.tight_layout()
    return figure


def _training_figure(models: dict[str, TrainedModel]) -> Any:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 3.5))
    axis = figure.add_subplot()
    for name, trained in models.items():
        epochs = [record["epoch"] for record in trained.history]
        axis.plot(
            epochs,
            [record.get("val_map", float("nan")) for record in trained.history],
            marker=".",
            label=name,
        )
    axis.set_xlabel("epoch")
    axis.set_ylabel("validation mAP")
    axis.legend(fontsize=7)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    return figure
