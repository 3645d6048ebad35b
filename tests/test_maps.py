from __future__ import annotations

import numpy as np
import pytest
import torch

from hiercam.maps import normalize_maps


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
