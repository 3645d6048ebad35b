"""Map handling: normalise (a naive loop), resize (F.interpolate), boxes of masks and maps (a flood fill)."""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torchvision.ops import box_iou

import hiercam
from hiercam.maps import cam_boxes, mask_boxes, normalize_maps, resize_maps

# --------------------------------------------------------------------------------- normalize_maps


def naive(maps: np.ndarray, mode: str) -> np.ndarray:
    out = np.zeros_like(maps)
    for index in np.ndindex(*maps.shape[:-2]):
        m = maps[index]
        if mode == "max":
            out[index] = m / m.max() if m.max() > 0 else 0.0
        else:
            span = m.max() - m.min()
            out[index] = (m - m.min()) / span if span > 0 else 0.0
    return out


@pytest.mark.parametrize("mode", ["max", "minmax"])
@pytest.mark.parametrize("shape", [(5, 6), (3, 4, 5), (2, 3, 7, 7)])
def test_matches_naive_loop(mode: str, shape: tuple[int, ...]) -> None:
    maps = torch.randn(shape, dtype=torch.float64)
    if len(shape) > 2:
        maps[..., 0, :, :] = 0.0  # include all-zero maps
    got = normalize_maps(maps, normalize=mode)  # type: ignore[arg-type]
    np.testing.assert_allclose(got.numpy(), naive(maps.numpy(), mode), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("mode", ["max", "minmax"])
def test_all_zero_and_constant_maps_give_zeros_without_nan(dtype: torch.dtype, mode: str) -> None:
    maps = torch.zeros(2, 3, 4, 4, dtype=dtype, requires_grad=True)
    out = normalize_maps(maps, mode)
    assert out.dtype == dtype
    assert torch.count_nonzero(out) == 0
    out.sum().backward()
    assert maps.grad is not None
    assert torch.isfinite(maps.grad).all()
    constant = torch.full((4, 4), 3.0, dtype=dtype)
    expected_peak = 1.0 if mode == "max" else 0.0
    assert torch.all(normalize_maps(constant, mode) == expected_peak)


def test_peak_is_one_and_input_untouched() -> None:
    maps = torch.rand(4, 9, 9) * 7
    before = maps.clone()
    out = normalize_maps(maps)
    torch.testing.assert_close(out.amax(dim=(-2, -1)), torch.ones(4))
    assert torch.equal(maps, before)
    assert normalize_maps(maps, None) is maps


def test_gradcheck() -> None:
    maps = torch.rand(2, 3, 3, dtype=torch.float64, requires_grad=True)
    for mode in ("max", "minmax"):
        assert torch.autograd.gradcheck(lambda m, mode=mode: normalize_maps(m, mode), (maps,))


def test_bad_input() -> None:
    with pytest.raises(TypeError, match="`maps` must be a floating-point tensor"):
        normalize_maps(torch.zeros(3, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"`maps` must have shape \(..., H, W\), got \(3,\)"):
        normalize_maps(torch.zeros(3))
    with pytest.raises(ValueError, match="`normalize` must be one of 'max', 'minmax', None, got 'mean'"):
        normalize_maps(torch.zeros(3, 3), "mean")  # type: ignore[arg-type]


def test_keyword_normalize() -> None:
    maps = torch.tensor([[1.0, 3.0], [2.0, 5.0]])
    torch.testing.assert_close(
        normalize_maps(maps=maps, normalize="minmax"), torch.tensor([[0.0, 0.5], [0.25, 1.0]])
    )
    torch.testing.assert_close(normalize_maps(maps, normalize="max"), maps / 5)


def test_validate_args_false_skips_the_checks_only() -> None:
    maps = torch.rand(2, 3, 5, 5)
    for mode in ("max", "minmax"):
        torch.testing.assert_close(
            normalize_maps(maps, mode, validate_args=False), normalize_maps(maps, mode)
        )
    with pytest.raises(ValueError, match="`maps` must be finite"):
        normalize_maps(torch.full((2, 2), float("nan")))
    normalize_maps(torch.full((2, 2), float("nan")), "minmax", validate_args=False)  # not refused


# --------------------------------------------------------------------------------- resize_maps


@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (4, 5, 7), (5, 7), (1, 2, 3, 5, 7)])
def test_resize_maps_is_one_bilinear_interpolate(shape: tuple[int, ...]) -> None:
    maps = torch.rand(shape, dtype=torch.float64, requires_grad=True)
    out = resize_maps(maps, (9, 4))
    flat = maps.reshape(-1, 1, *shape[-2:])
    expected = F.interpolate(flat, size=(9, 4), mode="bilinear", align_corners=False).reshape(
        *shape[:-2], 9, 4
    )
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    assert out.dtype == torch.float64
    out.sum().backward()  # differentiable
    assert maps.grad is not None


def test_resize_maps_same_size_none_and_no_class() -> None:
    maps = torch.rand(2, 3, 6, 6)
    assert resize_maps(maps, None) is maps
    assert resize_maps(maps, (6, 6)) is maps
    empty = resize_maps(torch.zeros(2, 0, 4, 4), (8, 8))
    assert empty.shape == (2, 0, 8, 8)
    assert "resize_maps" in hiercam.maps.__all__


def test_resize_maps_bad_input() -> None:
    with pytest.raises(TypeError, match="`maps` must be a floating-point tensor"):
        resize_maps(torch.zeros(1, 1, 3, 3, dtype=torch.long), (4, 4))
    with pytest.raises(ValueError, match=r"`maps` must have shape \(..., h, w\), got \(3,\)"):
        resize_maps(torch.zeros(3), (4, 4))
    with pytest.raises(TypeError, match="`size` must be a pair of ints"):
        resize_maps(torch.zeros(1, 1, 3, 3), 4)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`size\\[1\\]` must be >= 1, got 0"):
        resize_maps(torch.zeros(1, 1, 3, 3), (4, 0))


# --------------------------------------------------------------------------------- cam_boxes


def naive_components(mask: np.ndarray) -> list[tuple[int, list[int]]]:
    """8-connected components by breadth-first search, in row-major order of their first pixel.

    Returns (pixel count, [x1, y1, x2, y2] with exclusive far edges) per component.
    """
    height, width = mask.shape
    seen = np.zeros_like(mask, dtype=bool)
    found = []
    for y0 in range(height):
        for x0 in range(width):
            if not mask[y0, x0] or seen[y0, x0]:
                continue
            queue, pixels = deque([(y0, x0)]), []
            seen[y0, x0] = True
            while queue:
                y, x = queue.popleft()
                pixels.append((y, x))
                for dy in (-1, 0, 1):
                    for dx in (-1, 0, 1):
                        ny, nx = y + dy, x + dx
                        if 0 <= ny < height and 0 <= nx < width and mask[ny, nx] and not seen[ny, nx]:
                            seen[ny, nx] = True
                            queue.append((ny, nx))
            ys = [p[0] for p in pixels]
            xs = [p[1] for p in pixels]
            found.append((len(pixels), [min(xs), min(ys), max(xs) + 1, max(ys) + 1]))
    return found


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), height=st.integers(1, 12), width=st.integers(1, 12))
def test_cam_boxes_match_a_flood_fill(seed: int, height: int, width: int) -> None:
    rng = np.random.default_rng(seed)
    cam = torch.from_numpy(rng.random((height, width)) ** 3)
    found = naive_components((cam / cam.max() > 0.3).numpy())
    everything = cam_boxes(cam, 0.3, components="all")
    assert everything.tolist() == [box for _, box in found]
    largest = cam_boxes(cam, 0.3)
    sizes = [size for size, _ in found]
    assert largest.tolist() == ([found[sizes.index(max(sizes))][1]] if found else [])
    assert largest.dtype == torch.float32
    assert largest.shape == (min(1, len(found)), 4)


def test_cam_boxes_by_hand() -> None:
    cam = torch.zeros(5, 6)
    cam[1:3, 2:5] = 0.8  # rows 1-2, columns 2-4
    cam[4, 0] = 0.2  # a weak pixel, above 0.15 * 0.8 after max-normalisation
    assert cam_boxes(cam, 0.15, "all").tolist() == [[2, 1, 5, 3], [0, 4, 1, 5]]
    assert cam_boxes(cam, 0.3, "all").tolist() == [[2, 1, 5, 3]]  # 0.2 / 0.8 = 0.25 is not above 0.3
    assert cam_boxes(cam * 10, 0.15).tolist() == [[2, 1, 5, 3]]  # the scale does not matter
    assert cam_boxes(torch.zeros(4, 4)).shape == (0, 4)
    exactly = torch.tensor([[1.0, 0.25]])
    assert cam_boxes(exactly, 0.25, "all").tolist() == [[0, 0, 1, 1]]  # at the threshold: background


def test_box_convention_agrees_with_torchvision_and_ground_truth() -> None:
    # A map that fills exactly the ground-truth box (x1, y1, x2, y2) = (2, 1, 6, 4), exclusive far edges:
    # columns 2..5 and rows 1..3, i.e. 4 x 3 = 12 pixels.
    cam = torch.zeros(8, 8, dtype=torch.float64)
    cam[1:4, 2:6] = 1.0
    box = cam_boxes(cam)
    truth = torch.tensor([[2.0, 1.0, 6.0, 4.0]])
    assert float(box_iou(box, truth)) == 1.0
    area = (box[0, 2] - box[0, 0]) * (box[0, 3] - box[0, 1])
    assert int(area) == int((cam > 0).sum())


def test_cam_boxes_bad_input() -> None:
    with pytest.raises(ValueError, match=r"`map` must have shape \(H, W\), got \(1, 4, 4\)"):
        cam_boxes(torch.rand(1, 4, 4))
    with pytest.raises(TypeError, match="`map` must be a floating-point tensor"):
        cam_boxes(torch.ones(4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"`threshold` must be between 0 and 1 \(exclusive\), got -0.1"):
        cam_boxes(torch.rand(4, 4), -0.1)
    with pytest.raises(ValueError, match="`components` must be one of 'largest', 'all', got 'biggest'"):
        cam_boxes(torch.rand(4, 4), components="biggest")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`map` must be finite"):
        cam_boxes(torch.full((4, 4), float("nan")))
    with pytest.raises(TypeError, match="`map` must be a torch.Tensor"):
        cam_boxes([[0.0, 1.0]])  # type: ignore[arg-type]


def test_mask_boxes_min_area_and_components() -> None:
    mask = torch.zeros(6, 8, dtype=torch.bool)
    mask[0:3, 0:3] = True  # 9 pixels
    mask[4:6, 5:8] = True  # 6 pixels
    mask[5, 0] = True  # 1 pixel
    assert mask_boxes(mask).tolist() == [[0, 0, 3, 3], [5, 4, 8, 6], [0, 5, 1, 6]]
    assert mask_boxes(mask, min_area=2).tolist() == [[0, 0, 3, 3], [5, 4, 8, 6]]
    assert mask_boxes(mask, min_area=7).tolist() == [[0, 0, 3, 3]]
    assert mask_boxes(mask, "largest", min_area=10).shape == (0, 4)
    assert mask_boxes(mask, "largest").tolist() == [[0, 0, 3, 3]]
    assert mask_boxes(torch.zeros(3, 3, dtype=torch.bool)).shape == (0, 4)
    assert mask_boxes(mask).dtype == torch.float32


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), height=st.integers(1, 10), width=st.integers(1, 10))
def test_mask_boxes_match_a_flood_fill(seed: int, height: int, width: int) -> None:
    mask = np.random.default_rng(seed).random((height, width)) > 0.6
    assert mask_boxes(torch.from_numpy(mask)).tolist() == [box for _, box in naive_components(mask)]


def test_mask_boxes_bad_input() -> None:
    with pytest.raises(TypeError, match="`mask` must be a boolean tensor, got dtype torch.float32"):
        mask_boxes(torch.zeros(3, 3))
    with pytest.raises(ValueError, match=r"`mask` must have shape \(H, W\), got \(1, 3, 3\)"):
        mask_boxes(torch.zeros(1, 3, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="`min_area` must be >= 0, got -1"):
        mask_boxes(torch.zeros(3, 3, dtype=torch.bool), min_area=-1)
    with pytest.raises(ValueError, match="`components` must be one of 'largest', 'all', got 'some'"):
        mask_boxes(torch.zeros(3, 3, dtype=torch.bool), "some")  # type: ignore[arg-type]
