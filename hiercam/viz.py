"""Pictures: a grid of dataset scenes with their boxes, a CAM laid over an image, a class hierarchy's tree.

matplotlib is an optional dependency (``pip install hiercam[viz]``); it is imported inside the functions, so
``import hiercam`` never needs it. Figures are built with ``matplotlib.figure.Figure`` directly, not
pyplot: no GUI backend is touched, nothing global changes, and the caller saves or shows the figure.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import Tensor

from hiercam._io import atomic_write
from hiercam._validation import check_finite, check_int, check_tensor, format_shape, is_real, type_name
from hiercam.maps import NormalizeMode, normalize_maps

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from hiercam.hierarchy import ClassHierarchy

__all__ = ["show_scenes", "overlay", "save_overlay", "hierarchy_figure"]


def _new_figure(**options: Any) -> Figure:
    """A ``Figure`` that shows itself as a PNG when it is a notebook cell's last line.

    A bare ``matplotlib.figure.Figure`` (no pyplot) only prints ``<Figure size ...>`` in Jupyter unless
    pyplot's inline backend happens to be active; ``_repr_png_`` makes the display independent of it.
    """
    from matplotlib.figure import Figure

    class NotebookFigure(Figure):
        def _repr_png_(self) -> bytes:
            buffer = io.BytesIO()
            self.savefig(buffer, format="png", bbox_inches="tight")
            return buffer.getvalue()

    return NotebookFigure(**options)


def _image_array(image: Tensor, name: str) -> npt.NDArray[np.float32]:
    """A ``(3, H, W)`` or ``(H, W)`` float image in [0, 1] as an ``(H, W, 3)`` array."""
    check_tensor(image, name, ndim=(2, 3), floating=True)
    if image.ndim == 3 and image.shape[0] != 3:
        raise ValueError(f"`{name}` must have shape (3, H, W) or (H, W), got {format_shape(image.shape)}")
    rgb = image.detach().to("cpu", torch.float32)
    rgb = rgb.expand(3, *rgb.shape) if rgb.ndim == 2 else rgb
    return np.ascontiguousarray(rgb.clamp(0, 1).permute(1, 2, 0).numpy())


def overlay(
    image: Tensor,
    cam: Tensor,
    *,
    alpha: float = 0.5,
    colormap: str = "jet",
    normalize: NormalizeMode | None = "max",
) -> npt.NDArray[np.float32]:
    """Blend a class activation map, coloured with a matplotlib colormap, over an image.

    The map is resized to the image with bilinear interpolation, rescaled to [0, 1] with
    [`hiercam.normalize_maps`][hiercam.normalize_maps] (an all-zero map stays zero: no NaN), coloured, and
    blended: ``(1 - alpha) * image + alpha * colour(cam)``.

    Args:
        image: ``(3, H, W)`` RGB or ``(H, W)`` grey image, floating point in [0, 1] (values are clipped).
        cam: ``(h, w)`` map, any resolution, floating point, finite.
        alpha: weight of the coloured map, in [0, 1].
        colormap: a matplotlib colormap name.
        normalize: how the map is rescaled to [0, 1] before colouring (``"max"``, ``"minmax"``, or ``None``
            for a map already in [0, 1]; values are clipped).

    Returns:
        An ``(H, W, 3)`` float32 NumPy array in [0, 1], ready for ``ax.imshow``.

    Raises:
        TypeError: non-tensor or non-floating inputs.
        ValueError: wrong shapes, non-finite map, ``alpha`` outside [0, 1], unknown colormap.

    Examples:
        >>> import torch
        >>> overlay(torch.zeros(3, 32, 32), torch.rand(4, 4)).shape
        (32, 32, 3)
    """
    import matplotlib

    rgb = _image_array(image, "image")
    check_tensor(cam, "cam", dims="h, w", floating=True)
    check_finite(cam, "cam")
    if not is_real(alpha):
        raise TypeError(f"`alpha` must be a float, got {type_name(alpha)}")
    alpha = float(alpha)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"`alpha` must be between 0 and 1, got {alpha}")
    if colormap not in matplotlib.colormaps:
        raise ValueError(f"`colormap` must be a matplotlib colormap name, got {colormap!r}")
    height, width = rgb.shape[:2]
    heat = cam.detach().to("cpu", torch.float32)[None, None]
    heat = F.interpolate(heat, size=(height, width), mode="bilinear", align_corners=False)[0, 0]
    heat = normalize_maps(heat, normalize, validate_args=False).clamp(0, 1)  # `cam` checked above
    coloured = matplotlib.colormaps[colormap](heat.numpy())[..., :3].astype(np.float32)
    blended: npt.NDArray[np.float32] = ((1 - alpha) * rgb + alpha * coloured).astype(np.float32)
    return blended


def save_overlay(
    path: str | os.PathLike[str],
    image: Tensor,
    cam: Tensor,
    *,
    alpha: float = 0.5,
    colormap: str = "jet",
    normalize: NormalizeMode | None = "max",
) -> Path:
    """Write a class activation map over an image as a PNG file (the [`overlay`][hiercam.viz.overlay]).

    Args:
        path: the PNG file to write (atomically: a crash never leaves half a file); its folder must exist.
        image: ``(3, H, W)`` or ``(1, 3, H, W)`` RGB image in [0, 1] (e.g.
            ``hiercam.load_image(path, input_norm="none")``), or ``(H, W)`` grey.
        cam: ``(h, w)`` map, or ``(1, h, w)`` / ``(1, 1, h, w)``, any resolution.
        alpha: weight of the coloured map, as for [`overlay`][hiercam.viz.overlay].
        colormap: a matplotlib colormap name.
        normalize: how the map is rescaled to [0, 1], as for [`overlay`][hiercam.viz.overlay].

    Returns:
        The path written.

    Raises:
        TypeError, ValueError: as for [`overlay`][hiercam.viz.overlay]; a ``path`` of the wrong type.

    Examples:
        >>> import tempfile, torch
        >>> from pathlib import Path
        >>> out = save_overlay(Path(tempfile.mkdtemp()) / "cam.png", torch.rand(3, 32, 48), torch.rand(4, 6))
        >>> out.name, out.stat().st_size > 0
        ('cam.png', True)
    """
    from PIL import Image

    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"`path` must be a file path, got {type_name(path)}")
    if isinstance(image, Tensor) and image.ndim == 4 and image.shape[0] == 1:
        image = image[0]
    if isinstance(cam, Tensor) and cam.ndim in (3, 4) and all(s == 1 for s in cam.shape[:-2]):
        cam = cam.reshape(cam.shape[-2:])
    blended = overlay(image, cam, alpha=alpha, colormap=colormap, normalize=normalize)
    buffer = io.BytesIO()
    Image.fromarray(np.round(blended * 255).astype(np.uint8)).save(buffer, format="PNG")
    return atomic_write(path, lambda handle: handle.write(buffer.getvalue()))


def show_scenes(
    dataset: Any,
    n: int = 8,
    *,
    columns: int = 4,
    indices: Sequence[int] | None = None,
    class_names: Sequence[str] | None = None,
    masks: bool = False,
    panel_size: float = 2.5,
) -> Figure:
    """A grid of dataset samples with their instance boxes and class names.

    Each sample must be a mapping with an ``"image"`` ``(3, H, W)`` in [0, 1] and ``"boxes"`` ``(M, 5)`` rows
    ``(class, x1, y1, x2, y2)`` with exclusive ``x2``/``y2`` (the [`FashionScenes`][hiercam.FashionScenes]
    form); with ``masks=True`` also a ``"mask"`` ``(H, W)`` label map, drawn translucent over the image.
    A box is drawn along the outer edges of its first and last pixels.

    Args:
        dataset: an indexable dataset of such samples.
        n: number of samples, the first ``n`` unless ``indices`` is given.
        columns: panels per row.
        indices: which samples to show (overrides ``n``).
        class_names: names for the box labels; default ``dataset.classes`` if present, else class indices.
        masks: overlay the label map.
        panel_size: size of one panel in inches.

    Returns:
        A ``matplotlib.figure.Figure`` (not attached to pyplot): save it with ``fig.savefig(path)``.

    Raises:
        TypeError, ValueError: bad ``n``/``columns``/``indices``, an index outside the dataset, or samples
            without the expected keys.

    Examples:
        >>> from hiercam.datasets import FashionScenes
        >>> figure = show_scenes(FashionScenes("val", num_scenes=4, image_size=64), n=4, columns=2)
        >>> len(figure.axes)
        4
    """
    from matplotlib.patches import Rectangle

    columns = check_int(columns, "columns", minimum=1)
    if indices is None:
        chosen = list(range(check_int(n, "n", minimum=1)))
    else:
        chosen = [check_int(i, "indices", minimum=0) for i in indices]
        if not chosen:
            raise ValueError("`indices` must name at least one sample, got an empty sequence")
    size = len(dataset)
    if max(chosen) >= size:
        raise ValueError(f"the dataset has {size} samples, asked for sample {max(chosen)}")
    names = class_names if class_names is not None else getattr(dataset, "classes", None)
    rows = -(-len(chosen) // columns)
    figure = _new_figure(
        figsize=(panel_size * min(columns, len(chosen)), panel_size * rows), layout="constrained"
    )
    for panel, index in enumerate(chosen):
        sample = dataset[index]
        if not isinstance(sample, Mapping) or "image" not in sample or "boxes" not in sample:
            raise TypeError(
                f"sample {index} must be a mapping with 'image' and 'boxes', got {type_name(sample)}"
            )
        ax = figure.add_subplot(rows, min(columns, len(chosen)), panel + 1)
        ax.imshow(_image_array(sample["image"], "image"), interpolation="nearest")
        if masks:
            label_map = sample["mask"].detach().cpu().numpy()
            ax.imshow(
                np.ma.masked_where(label_map == 0, label_map), cmap="tab10", vmin=1, vmax=10, alpha=0.45
            )
        for row in sample["boxes"].tolist():
            cls, x1, y1, x2, y2 = row
            colour = f"C{int(cls) % 10}"
            ax.add_patch(Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1, y2 - y1, fill=False, lw=1.5, ec=colour))
            label = names[int(cls)] if names is not None else str(int(cls))
            ax.text(
                x1 - 0.5,
                y1 - 1.0,
                label,
                color="white",
                fontsize=7,
                va="bottom",
                bbox={"fc": colour, "pad": 1, "lw": 0},
            )
        ax.set_title(f"#{index}", fontsize=8)
        ax.set_axis_off()
    return figure


def hierarchy_figure(hierarchy: ClassHierarchy) -> Figure:
    """The tree of a class hierarchy: classes at the bottom, each level's groups above, edges to parents.

    Classes are ordered so that every group's members are adjacent; a group is drawn at the mean position of
    its members and labelled with its size.

    Args:
        hierarchy: a [`ClassHierarchy`][hiercam.ClassHierarchy] (levels nested, as built by
            [`group_classes`][hiercam.group_classes]).

    Returns:
        A ``matplotlib.figure.Figure`` (not attached to pyplot) with one axis.

    Raises:
        TypeError: ``hierarchy`` is not a ``ClassHierarchy``.

    Examples:
        >>> from hiercam import ClassHierarchy
        >>> figure = hierarchy_figure(ClassHierarchy([[0, 0, 1, 1]], ["a", "b", "c", "d"]))
        >>> len(figure.axes)
        1
    """
    from hiercam.hierarchy import ClassHierarchy

    if not isinstance(hierarchy, ClassHierarchy):
        raise TypeError(f"`hierarchy` must be a ClassHierarchy, got {type_name(hierarchy)}")
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
    figure = _new_figure(figsize=(max(6.0, 0.9 * hierarchy.num_classes), 1.4 * hierarchy.num_levels + 1))
    axis = figure.add_subplot()
    positions: dict[tuple[int, int], float] = {}
    for level in range(hierarchy.num_levels):
        for group, members in enumerate(hierarchy.groups(level)):
            positions[(level, group)] = sum(x_of_class[c] for c in members) / len(members)
    for level in range(1, hierarchy.num_levels):
        below, parent_of = hierarchy.assignments(level - 1), hierarchy.assignments(level)
        for child in range(hierarchy.num_groups(level - 1)):
            member = int((below == child).nonzero()[0])
            parent = int(parent_of[member])
            xs = [positions[(level - 1, child)], positions[(level, parent)]]
            axis.plot(xs, [level - 1, level], color="0.6")
    for (level, group), x in positions.items():
        if level == 0:
            axis.text(x, -0.15, hierarchy.class_names[group], rotation=45, ha="right", va="top", fontsize=9)
            axis.plot([x], [0], "o", color="tab:blue")
        else:
            size = len(hierarchy.groups(level)[group])
            box = {"boxstyle": "round", "facecolor": "tab:orange", "alpha": 0.8}
            axis.text(x, level, f"{size}", ha="center", va="center", fontsize=8, bbox=box)
    sizes = hierarchy.level_sizes
    axis.set_yticks(range(hierarchy.num_levels), [f"level {lv} ({n})" for lv, n in enumerate(sizes)])
    axis.set_xticks([])
    axis.set_ylim(-1.6, top + 0.5)
    for side in ("top", "right", "bottom"):
        axis.spines[side].set_visible(False)
    figure.tight_layout()
    return figure
