from __future__ import annotations

import io
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from hiercam import ClassHierarchy, FashionScenes, normalize_maps
from hiercam.viz import hierarchy_figure, overlay, show_scenes


@pytest.fixture(scope="module")
def data() -> FashionScenes:
    return FashionScenes("val", num_scenes=6, image_size=48, seed=2)


def test_show_scenes_draws_every_box_at_pixel_edges_with_its_class_name(data: FashionScenes) -> None:
    figure = show_scenes(data, 5, columns=3)
    assert isinstance(figure, Figure)
    assert len(figure.axes) == 5
    for index, ax in enumerate(figure.axes):
        sample = data[index]
        image = ax.get_images()[0].get_array()
        np.testing.assert_allclose(np.asarray(image), sample["image"].permute(1, 2, 0).numpy())
        rectangles = [p for p in ax.patches if isinstance(p, Rectangle)]
        assert len(rectangles) == len(sample["boxes"])
        for rectangle, (_cls, x1, y1, x2, y2) in zip(rectangles, sample["boxes"].tolist(), strict=True):
            # pixel i covers [i - 0.5, i + 0.5] in imshow coordinates; x2/y2 are exclusive
            assert rectangle.get_xy() == pytest.approx((x1 - 0.5, y1 - 0.5))
            assert (rectangle.get_width(), rectangle.get_height()) == pytest.approx((x2 - x1, y2 - y1))
        texts = [t.get_text() for t in ax.texts]
        assert texts == [FashionScenes.classes[int(c)] for c in sample["boxes"][:, 0]]


def test_show_scenes_options(data: FashionScenes) -> None:
    figure = show_scenes(data, indices=[4, 1], masks=True, class_names=[f"c{k}" for k in range(10)])
    assert len(figure.axes) == 2
    assert len(figure.axes[0].get_images()) == 2  # image and label map
    assert figure.axes[0].get_title() == "#4"
    assert all(t.get_text().startswith("c") for t in figure.axes[1].texts)
    with pytest.raises(ValueError, match="the dataset has 6 samples, asked for sample 6"):
        show_scenes(data, 7)
    with pytest.raises(ValueError, match="`n` must be >= 1"):
        show_scenes(data, 0)
    with pytest.raises(TypeError, match="must be a mapping with 'image' and 'boxes'"):
        show_scenes([torch.zeros(3, 8, 8)], 1)


def test_overlay_blends_the_coloured_normalised_map() -> None:
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(3, 32, 24, generator=generator)
    cam = torch.rand(4, 3, generator=generator) * 5
    np.testing.assert_allclose(overlay(image, cam, alpha=0.0), image.permute(1, 2, 0).numpy(), atol=1e-6)
    resized = F.interpolate(cam[None, None], size=(32, 24), mode="bilinear", align_corners=False)[0, 0]
    heat = matplotlib.colormaps["viridis"](normalize_maps(resized).numpy())[..., :3]
    np.testing.assert_allclose(overlay(image, cam, alpha=1.0, colormap="viridis"), heat, atol=1e-6)
    half = overlay(image, cam, alpha=0.5, colormap="viridis")
    np.testing.assert_allclose(half, 0.5 * image.permute(1, 2, 0).numpy() + 0.5 * heat, atol=1e-6)
    assert half.shape == (32, 24, 3)
    assert half.dtype == np.float32


def test_overlay_zero_map_grey_image_and_inputs_left_alone() -> None:
    image, cam = torch.rand(16, 16), torch.zeros(4, 4)
    before = (image.clone(), cam.clone())
    result = overlay(image, cam, colormap="gray")
    assert not np.isnan(result).any()
    np.testing.assert_allclose(result, 0.5 * image[..., None].expand(16, 16, 3).numpy(), atol=1e-6)
    assert torch.equal(image, before[0])
    assert torch.equal(cam, before[1])


@pytest.mark.parametrize(
    ("image", "cam", "kwargs", "error", "match"),
    [
        (
            torch.rand(4, 8, 8),
            torch.rand(2, 2),
            {},
            ValueError,
            r"`image` must have shape \(3, H, W\) or \(H, W\)",
        ),
        (torch.rand(3, 8, 8), torch.rand(1, 2, 2), {}, ValueError, r"`cam` must have shape \(h, w\)"),
        (torch.rand(3, 8, 8), torch.ones(2, 2).int(), {}, TypeError, "`cam` must be a floating-point tensor"),
        (torch.rand(3, 8, 8), torch.full((2, 2), float("nan")), {}, ValueError, "`cam` must be finite"),
        (
            torch.rand(3, 8, 8),
            torch.rand(2, 2),
            {"alpha": 1.5},
            ValueError,
            "`alpha` must be between 0 and 1",
        ),
        (torch.rand(3, 8, 8), torch.rand(2, 2), {"colormap": "nope"}, ValueError, "`colormap` must be"),
    ],
)
def test_overlay_rejects_bad_input(image, cam, kwargs, error, match) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(error, match=match):
        overlay(image, cam, **kwargs)


def test_hierarchy_figure_places_groups_over_their_adjacent_members() -> None:
    # classes 0..5; level 1: {0, 3}, {1, 4}, {2, 5}; level 2: {0, 3, 1, 4}, {2, 5}
    hierarchy = ClassHierarchy([[0, 1, 2, 0, 1, 2], [0, 0, 1, 0, 0, 1]], list("abcdef"))
    figure = hierarchy_figure(hierarchy)
    (axis,) = figure.axes
    # classes along x in tree order: a, d, b, e (group 0 of level 2), then c, f
    names = sorted(
        (text.get_position()[0], text.get_text()) for text in axis.texts if text.get_text().isalpha()
    )
    assert [name for _, name in names] == list("adbecf")
    # group labels are their sizes, at the mean x of their members (level 1: 0.5, 2.5, 4.5; level 2: 1.5, 4.5)
    sizes = sorted(
        (text.get_position()[1], text.get_position()[0], text.get_text())
        for text in axis.texts
        if text.get_text().isdigit()
    )
    assert sizes == [(1, 0.5, "2"), (1, 2.5, "2"), (1, 4.5, "2"), (2, 1.5, "4"), (2, 4.5, "2")]
    assert [tick.get_text() for tick in axis.get_yticklabels()] == [
        "level 0 (6)",
        "level 1 (3)",
        "level 2 (2)",
    ]
    with pytest.raises(TypeError, match="`hierarchy` must be a ClassHierarchy"):
        hierarchy_figure([[0, 1]])  # type: ignore[arg-type]


def test_figures_render_as_png_for_notebooks(data: FashionScenes) -> None:
    """Bare Figures (no pyplot) print as text in Jupyter; ours carry ``_repr_png_`` with the figure itself."""
    from PIL import Image

    for figure in (
        show_scenes(data, n=2, columns=2),
        hierarchy_figure(ClassHierarchy([[0, 0, 1]], class_names=["a", "b", "c"])),
    ):
        png = figure._repr_png_()
        assert png.startswith(b"\x89PNG\r\n\x1a\n")
        width, height = Image.open(io.BytesIO(png)).size
        assert width > 50
        assert height > 50


def test_a_figure_or_a_hierarchy_on_a_cells_last_line_displays_in_a_notebook(tmp_path: Path) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [
        nbformat.v4.new_code_cell(
            "import hiercam\nfrom hiercam.viz import hierarchy_figure\n"
            "hierarchy = hiercam.ClassHierarchy([[0, 0, 1]], class_names=['shirt', 'coat', 'bag'])\n"
            "hierarchy_figure(hierarchy)"
        ),
        nbformat.v4.new_code_cell("hierarchy"),
    ]
    nbclient.NotebookClient(
        notebook, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    figure_output, tree_output = (cell.outputs[-1] for cell in notebook.cells)
    assert "image/png" in figure_output["data"]
    assert "coat" in tree_output["data"]["text/html"]
