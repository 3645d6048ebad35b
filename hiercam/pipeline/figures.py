"""The run report's figures (matplotlib, the ``viz`` extra, imported when a figure is drawn).

Every figure is drawn from the finished [`RunResult`][hiercam.pipeline.RunResult]; without matplotlib
``write_figures`` draws nothing and the report says so.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from hiercam._io import atomic_write
from hiercam.pipeline.keys import ModelKey, Variant
from hiercam.pipeline.results import FigureScenes, RunResult

__all__ = ["write_figures", "panel_grid", "largest_labelled_class"]

#: The fused map shown in the CAM figure: the first of these the run has (the method's Eq. 6 row).
_FUSED = (Variant("full"), Variant("full_tuned"), Variant("grouping"), Variant("heads"))


def write_figures(out: str | Path, result: RunResult) -> list[tuple[str, str]]:
    """Draw the report's figures into ``out/figures``: the hierarchy, the CAMs of a few scenes, training.

    Returns:
        ``(file name, caption)`` of every figure drawn; empty when matplotlib is not installed.
    """
    try:
        import matplotlib
    except ImportError:
        return []
    from hiercam.viz import hierarchy_figure

    matplotlib.use("Agg", force=False)
    folder = Path(out) / "figures"
    folder.mkdir(parents=True, exist_ok=True)
    drawn = [
        ("training.png", "Validation mAP per epoch of every model.", _training_figure(result.histories)),
    ]
    if result.hierarchy is not None:
        caption = "The class hierarchy found from the base classifier's class vectors."
        drawn.insert(0, ("hierarchy.png", caption, hierarchy_figure(result.hierarchy)))
    else:
        (folder / "hierarchy.png").unlink(missing_ok=True)  # of an earlier run in the same folder
    scenes = result.figure_scenes
    if scenes is not None:
        caption = (
            f"{scenes.split.capitalize()} scenes: input, the CAM of one present class from each level's "
            "two-branch model (its group's map), the fused map (Eq. 6), the baseline Grad-CAM, the "
            "ground-truth mask."
        )
        drawn.insert(len(drawn) - 1, ("cams.png", caption, _cam_figure(result, scenes)))
    for file, _, figure in drawn:
        _save_png(folder / file, figure)
    return [(file, caption) for file, caption, _ in drawn]


def _save_png(path: Path, figure: Any) -> None:
    def write(handle: Any) -> None:
        figure.savefig(handle, format="png", dpi=100)

    atomic_write(path, write)


def largest_labelled_class(labels: Tensor, mask: Tensor) -> int:
    """The labelled class of ``labels`` ``(K,)`` with the most pixels in ``mask`` (class k is label k + 1)."""
    areas = torch.stack([(mask == k + 1).sum() for k in range(labels.shape[0])])
    return int(torch.where(labels > 0, areas, torch.full_like(areas, -1)).argmax())


def panel_grid(
    panels: Sequence[Sequence[Any]],
    columns: Sequence[str],
    row_labels: Sequence[str],
    panel_size: tuple[float, float] = (1.6, 1.7),
) -> Any:
    """A figure of image panels in rows (the report's CAM figure, ``benchmarks/real_photos_figure.py``).

    ``panels`` holds RGB ``(H, W, 3)`` or grey ``(H, W)`` arrays in [0, 1]; ``columns`` title the first row
    and ``row_labels`` label each row; ``panel_size`` is one panel's (width, height) in inches.
    """
    from matplotlib.figure import Figure

    figure = Figure(figsize=(panel_size[0] * len(columns), panel_size[1] * len(panels)))
    for row, row_panels in enumerate(panels):
        for column, panel in enumerate(row_panels):
            axis = figure.add_subplot(len(panels), len(columns), row * len(columns) + column + 1)
            axis.imshow(panel, cmap="gray" if panel.ndim == 2 else None, vmin=0, vmax=1)
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                axis.set_title(columns[column], fontsize=9)
            if column == 0:
                axis.set_ylabel(row_labels[row], fontsize=8)
    figure.tight_layout()
    return figure


def _cam_figure(result: RunResult, scenes: FigureScenes) -> Any:
    from hiercam.viz import overlay

    levels = [variant for variant in scenes.maps if variant.kind == "level"]
    level_zero = [Variant("two_branch")] if Variant("two_branch") in scenes.maps else []
    fused = next(v for v in _FUSED if v in scenes.maps)
    shown = [*level_zero, *levels, fused, Variant("baseline")]
    columns = [
        "input",
        *(["level 0"] if level_zero else []),
        *[f"level {v.level}" for v in levels],
        "fused",
        "baseline",
        "ground truth",
    ]
    panels, names = [], []
    for row in range(len(scenes.images)):
        image, mask = scenes.images[row], scenes.masks[row]
        cls = largest_labelled_class(scenes.labels[row], mask)
        panels.append(
            [
                image.permute(1, 2, 0).numpy(),
                *(overlay(image, scenes.maps[variant][row, cls]) for variant in shown),
                (mask == cls + 1).float().numpy(),
            ]
        )
        names.append(result.class_names[cls])
    return panel_grid(panels, columns, names)


def _training_figure(histories: dict[ModelKey, list[dict[str, float]]]) -> Any:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 3.5))
    axis = figure.add_subplot()
    for key, history in histories.items():
        epochs = [record["epoch"] for record in history]
        values = [record.get("val_map", math.nan) for record in history]
        axis.plot(epochs, [math.nan if v is None else v for v in values], marker=".", label=key.name)
    axis.set_xlabel("epoch")
    axis.set_ylabel("validation mAP")
    axis.legend(fontsize=7)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    return figure
