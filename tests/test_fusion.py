from __future__ import annotations

import numpy as np
import pytest
import torch

from hiercam import ClassHierarchy, fuse, fuse_hierarchy, normalize_maps, rest_maps

# 6 classes -> 4 groups -> 2 groups
HIERARCHY = ClassHierarchy([[0, 0, 1, 2, 3, 3], [0, 0, 0, 1, 1, 1]])


def np_normalize(m: np.ndarray, mode: str | None) -> np.ndarray:
    if mode is None:
        return m
    if mode == "max":
        return m / m.max() if m.max() > 0 else np.zeros_like(m)
    span = m.max() - m.min()
    return (m - m.min()) / span if span > 0 else np.zeros_like(m)


def eq6_by_hand(
    base: np.ndarray, levels: list[np.ndarray], rest: np.ndarray | None, clamp: bool, normalize: str | None
) -> np.ndarray:
    """Eq. 6 written out map by map: M = M0 + (1/(k-1)) sum_i M_i - M0'."""
    out = np.zeros_like(base)
    for index in np.ndindex(*base.shape[:-2]):
        m = base[index] + sum(level[index] for level in levels) / len(levels)
        if rest is not None:
            m = m - rest[index]
        if clamp:
            m = np.maximum(m, 0.0)
        out[index] = np_normalize(m, normalize)
    return out


def fuse_hierarchy_by_hand(
    base: np.ndarray,
    level_maps: list[np.ndarray],
    hierarchy: ClassHierarchy,
    labels: np.ndarray,
    rest: str | None,
    normalize_inputs: str | None,
) -> np.ndarray:
    batch, num_classes = base.shape[:2]
    out = np.zeros_like(base)
    for b in range(batch):
        for k in range(num_classes):
            m0 = np_normalize(base[b, k], normalize_inputs)
            maps = [
                np_normalize(cams[b, hierarchy.group_of(k, level)], normalize_inputs)
                for level, cams in enumerate(level_maps, start=1)
            ]
            others = [
                np_normalize(base[b, j], normalize_inputs)
                for j in range(num_classes)
                if j != k and labels[b, j]
            ]
            m = m0 + sum(maps) / len(maps)
            if rest == "max" and others:
                m = m - np.max(others, axis=0)
            elif rest == "mean" and others:
                m = m - np.mean(others, axis=0)
            out[b, k] = np_normalize(np.maximum(m, 0.0), "max")
    return out


def random_inputs(batch: int = 3, size: int = 5) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
    base = torch.rand(batch, 6, size, size, dtype=torch.float64) * 3
    levels = [torch.rand(batch, n, size, size, dtype=torch.float64) for n in HIERARCHY.level_sizes[1:]]
    labels = torch.tensor([[1, 0, 1, 0, 0, 1], [0, 0, 0, 1, 0, 0], [0, 0, 0, 0, 0, 0]][:batch])
    return base, levels, labels


# -------------------------------------------------------------------------------------- fuse


@pytest.mark.parametrize("shape", [(4, 5), (2, 3, 6, 6)])
@pytest.mark.parametrize("clamp", [True, False])
@pytest.mark.parametrize("normalize", ["max", "minmax", None])
@pytest.mark.parametrize("with_rest", [True, False])
def test_fuse_matches_eq6_by_hand(
    shape: tuple[int, ...], clamp: bool, normalize: str | None, with_rest: bool
) -> None:
    base = torch.rand(shape, dtype=torch.float64)
    levels = [torch.rand(shape, dtype=torch.float64) for _ in range(3)]
    rest = torch.rand(shape, dtype=torch.float64) if with_rest else None
    got = fuse(base, levels, rest, clamp=clamp, normalize=normalize)  # type: ignore[arg-type]
    expected = eq6_by_hand(
        base.numpy(),
        [level.numpy() for level in levels],
        None if rest is None else rest.numpy(),
        clamp,
        normalize,
    )
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12, atol=1e-12)
    stacked = fuse(base, torch.stack(levels), rest, clamp=clamp, normalize=normalize)  # type: ignore[arg-type]
    torch.testing.assert_close(stacked, got)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_fuse_keeps_dtype_and_all_zero_gives_zero(dtype: torch.dtype) -> None:
    base = torch.zeros(2, 4, 4, dtype=dtype)
    out = fuse(base, [base.clone()], base.clone())
    assert out.dtype == dtype
    assert torch.count_nonzero(out) == 0
    assert torch.isfinite(out).all()
    peaked = fuse(torch.rand(2, 4, 4).to(dtype), [torch.rand(2, 4, 4).to(dtype)])
    assert peaked.dtype == dtype
    torch.testing.assert_close(peaked.amax(dim=(-2, -1)), torch.ones(2, dtype=dtype))


def test_fuse_clamp_removes_negatives_and_input_untouched() -> None:
    base = torch.tensor([[0.1, 0.9], [0.0, 0.5]])
    rest = torch.tensor([[0.8, 0.0], [0.0, 0.9]])
    levels = [torch.zeros(2, 2)]
    before = (base.clone(), rest.clone(), levels[0].clone())
    raw = fuse(base, levels, rest, clamp=False, normalize=None)
    torch.testing.assert_close(raw, base - rest)
    clamped = fuse(base, levels, rest, normalize=None)
    torch.testing.assert_close(clamped, (base - rest).clamp_min(0))
    assert torch.equal(base, before[0])
    assert torch.equal(rest, before[1])
    assert torch.equal(levels[0], before[2])


def test_fuse_gradcheck() -> None:
    base = torch.rand(2, 4, 4, dtype=torch.float64, requires_grad=True)
    levels = torch.rand(3, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    rest = (torch.rand(2, 4, 4, dtype=torch.float64) * 0.3).requires_grad_()
    assert torch.autograd.gradcheck(lambda b, lv, r: fuse(b, lv, r), (base, levels, rest))
    assert torch.autograd.gradcheck(lambda b, lv: fuse(b, [lv[0], lv[1]], normalize=None), (base, levels))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_fuse_on_cuda_matches_cpu() -> None:
    base, levels, labels = random_inputs()
    expected = fuse_hierarchy(base, levels, HIERARCHY, labels)
    got = fuse_hierarchy(base.cuda(), [lv.cuda() for lv in levels], HIERARCHY, labels.cuda())
    assert got.device.type == "cuda"
    torch.testing.assert_close(got.cpu(), expected)


def test_fuse_bad_input() -> None:
    base = torch.rand(4, 4)
    with pytest.raises(TypeError, match="`base` must be a torch.Tensor"):
        fuse(np.zeros((4, 4)), [base])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"`base` must have shape \(\.\.\., H, W\), got \(4,\)"):
        fuse(torch.rand(4), [torch.rand(4)])
    with pytest.raises(ValueError, match="`levels` must hold at least one map"):
        fuse(base, [])
    with pytest.raises(
        ValueError, match=r"`levels\[1\]` must have the shape of `base` \(4, 4\), got \(4, 5\)"
    ):
        fuse(base, [base, torch.rand(4, 5)])
    with pytest.raises(ValueError, match=r"`levels` as a tensor must have shape \(L, \*base.shape\)"):
        fuse(base, torch.rand(2, 4, 5))
    with pytest.raises(ValueError, match=r"`levels` as a tensor must have shape"):
        fuse(base, torch.rand(0, 4, 4))
    with pytest.raises(ValueError, match="`rest` must have the dtype of `base`"):
        fuse(base, [base], base.double())
    with pytest.raises(TypeError, match="`levels` must be a tensor or a sequence of tensors, got int"):
        fuse(base, 3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"`levels\[0\]` must be a floating-point tensor"):
        fuse(base, [torch.ones(4, 4, dtype=torch.long)])
    with pytest.raises(ValueError, match="`normalize` must be one of"):
        fuse(base, [base], normalize="sum")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- fuse_hierarchy


@pytest.mark.parametrize("rest", ["max", "mean", None])
@pytest.mark.parametrize("normalize_inputs", ["max", None])
def test_fuse_hierarchy_matches_loop_by_hand(rest: str | None, normalize_inputs: str | None) -> None:
    base, levels, labels = random_inputs()
    base[0, 2] = 0.0  # an all-zero map of a present class
    got = fuse_hierarchy(
        base,
        levels,
        HIERARCHY,
        labels,
        rest_reduction=rest,  # type: ignore[arg-type]
        normalize_inputs=normalize_inputs,  # type: ignore[arg-type]
    )
    expected = fuse_hierarchy_by_hand(
        base.numpy(), [lv.numpy() for lv in levels], HIERARCHY, labels.numpy(), rest, normalize_inputs
    )
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12, atol=1e-12)
    assert torch.isfinite(got).all()


def test_rest_max_excludes_the_class_itself_and_handles_ties() -> None:
    base = torch.zeros(1, 6, 2, 2, dtype=torch.float64)
    base[0, 0] = torch.tensor([[1.0, 0.2], [0.0, 0.0]])
    base[0, 1] = torch.tensor([[1.0, 0.2], [0.0, 0.0]])  # the same map: a tie at every pixel
    base[0, 2] = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    levels = [torch.zeros(1, n, 2, 2, dtype=torch.float64) for n in HIERARCHY.level_sizes[1:]]
    labels = torch.tensor([[1, 1, 0, 0, 0, 0]])
    fused = fuse_hierarchy(base, levels, HIERARCHY, labels, normalize=None)
    # Each of the tied classes loses the other's (identical) map: nothing is left.
    assert torch.count_nonzero(fused[0, :2]) == 0
    # Class 2 is absent: its map is still computed, minus the max over all present classes.
    torch.testing.assert_close(fused[0, 2], torch.tensor([[0.0, 0.0], [1.0, 1.0]], dtype=torch.float64))
    # Without M0' the tied classes keep their maps.
    plain = fuse_hierarchy(base, levels, HIERARCHY, rest_reduction=None, normalize=None)
    torch.testing.assert_close(plain[0, 0], base[0, 0])


def test_single_present_class_has_zero_rest() -> None:
    base, levels, _ = random_inputs(batch=1)
    labels = torch.tensor([[0, 0, 0, 1, 0, 0]])
    with_rest = fuse_hierarchy(base, levels, HIERARCHY, labels, rest_reduction="max")
    without = fuse_hierarchy(base, levels, HIERARCHY, rest_reduction=None)
    torch.testing.assert_close(with_rest[0, 3], without[0, 3])


def test_fuse_hierarchy_gradcheck_and_inputs_untouched() -> None:
    base, levels, labels = random_inputs(batch=2, size=3)
    base.requires_grad_()
    for level in levels:
        level.requires_grad_()
    before = [t.detach().clone() for t in (base, *levels)]
    for rest in ("max", "mean"):
        assert torch.autograd.gradcheck(
            lambda b, l1, l2, rest=rest: fuse_hierarchy(b, [l1, l2], HIERARCHY, labels, rest_reduction=rest),
            (base, *levels),
        )
    for tensor, copy in zip((base, *levels), before, strict=True):
        assert torch.equal(tensor.detach(), copy)
        assert tensor.grad is None


def test_fuse_hierarchy_keeps_dtype_under_no_grad() -> None:
    base, levels, labels = random_inputs()
    with torch.no_grad():
        out = fuse_hierarchy(base.float(), [lv.float() for lv in levels], HIERARCHY, labels.bool())
    assert out.dtype == torch.float32
    assert out.shape == (3, 6, 5, 5)
    # The image with no present class: M0' is zero and the fused maps are M0 + mean_i M_i, normalised.
    level_maps = [normalize_maps(lv[2].float())[HIERARCHY.assignments(i)] for i, lv in enumerate(levels, 1)]
    expected = normalize_maps(normalize_maps(base[2].float()) + (level_maps[0] + level_maps[1]) / 2)
    torch.testing.assert_close(out[2], expected)


def test_fuse_hierarchy_bad_input() -> None:
    base, levels, labels = random_inputs()
    with pytest.raises(ValueError, match=r"`labels` \(B, K\) is required with rest_reduction='max'"):
        fuse_hierarchy(base, levels, HIERARCHY)
    with pytest.raises(ValueError, match=r"`labels` \(B, K\) is required with rest_reduction='mean'"):
        fuse_hierarchy(base, levels, HIERARCHY, rest_reduction="mean")
    with pytest.raises(
        ValueError, match=r"one tensor per group level of the hierarchy \(2, levels 1..2\), got 1"
    ):
        fuse_hierarchy(base, levels[:1], HIERARCHY, labels)
    with pytest.raises(ValueError, match=r"`level_maps\[1\]` \(level 2\) must have shape \(3, 2, 5, 5\)"):
        fuse_hierarchy(base, [levels[0], levels[0]], HIERARCHY, labels)
    with pytest.raises(ValueError, match=r"`base_maps` must have shape \(B, 6, H, W\) for this hierarchy"):
        fuse_hierarchy(base[:, :5], levels, HIERARCHY, labels)
    with pytest.raises(ValueError, match=r"`base_maps` must have shape \(B, K, H, W\), got \(6, 5, 5\)"):
        fuse_hierarchy(base[0], levels, HIERARCHY, labels)
    with pytest.raises(ValueError, match=r"`labels` must have shape \(3, 6\), got \(2, 6\)"):
        fuse_hierarchy(base, levels, HIERARCHY, labels[:2])
    with pytest.raises(ValueError, match="`labels` must hold only 0/1 values"):
        fuse_hierarchy(base, levels, HIERARCHY, labels * 2)
    with pytest.raises(ValueError, match=r"`level_maps\[0\]` must have the dtype and device of `base_maps`"):
        fuse_hierarchy(base, [levels[0].float(), levels[1]], HIERARCHY, labels)
    with pytest.raises(TypeError, match="`level_maps` must be a list"):
        fuse_hierarchy(base, levels[0], HIERARCHY, labels)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="`hierarchy` must be a ClassHierarchy, got list"):
        fuse_hierarchy(base, levels, [[0, 0, 1]], labels)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`rest_reduction` must be one of 'max', 'mean', None, got 'min'"):
        fuse_hierarchy(base, levels, HIERARCHY, labels, rest_reduction="min")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`rest_reduction` must be one of 'max', 'mean', None, got 'none'"):
        fuse_hierarchy(base, levels, HIERARCHY, labels, rest_reduction="none")  # type: ignore[arg-type]


def test_fusion_weights_generalise_eq6() -> None:
    g = torch.Generator().manual_seed(4)
    base, rest = torch.rand(2, 3, 5, 5, generator=g), torch.rand(2, 3, 5, 5, generator=g)
    levels = [torch.rand(2, 3, 5, 5, generator=g) for _ in range(3)]
    for a, b, c in [(1.0, 1.0, 1.0), (1.0, 0.5, 0.0), (2.0, 0.0, 1.5), (0.0, 1.0, 0.0)]:
        expected = (a * base + b * (levels[0] + levels[1] + levels[2]) / 3 - c * rest).clamp_min(0)
        got = fuse(base, levels, rest, weights=(a, b, c), normalize=None)
        torch.testing.assert_close(got, expected)
    assert torch.equal(fuse(base, levels, rest), fuse(base, levels, rest, weights=(1, 1, 1)))
    h = ClassHierarchy([[0, 0, 1]])
    labels = torch.tensor([[1, 0, 1], [1, 1, 0]])
    level = [torch.rand(2, 2, 5, 5, generator=g)]
    one = fuse_hierarchy(base, level, h, labels, weights=(1.0, 2.0, 0.5), normalize=None)
    two = fuse_hierarchy(base, level, h, labels, weights=(1.0, 1.0, 1.0), normalize=None)
    assert not torch.allclose(one, two)
    with pytest.raises(ValueError, match=r"`weights` must be three finite numbers >= 0, got \(1.0, -1.0"):
        fuse(base, levels, rest, weights=(1.0, -1.0, 1.0))
    with pytest.raises(TypeError, match="`weights` must be three numbers"):
        fuse(base, levels, rest, weights=(1.0, 1.0))  # type: ignore[arg-type]


def test_fuse_hierarchy_keyword_names() -> None:
    base, levels, labels = random_inputs()
    by_keyword = fuse_hierarchy(
        base_maps=base, level_maps=levels, hierarchy=HIERARCHY, labels=labels, rest_reduction="mean"
    )
    expected = fuse_hierarchy_by_hand(
        base.numpy(), [lv.numpy() for lv in levels], HIERARCHY, labels.numpy(), "mean", "max"
    )
    np.testing.assert_allclose(by_keyword.numpy(), expected, rtol=1e-12, atol=1e-12)
    none = fuse_hierarchy(base_maps=base, level_maps=levels, hierarchy=HIERARCHY, rest_reduction=None)
    expected_none = fuse_hierarchy_by_hand(
        base.numpy(), [lv.numpy() for lv in levels], HIERARCHY, labels.numpy(), None, "max"
    )
    np.testing.assert_allclose(none.numpy(), expected_none, rtol=1e-12, atol=1e-12)


# -------------------------------------------------------------------------------------- rest_maps


def rest_by_hand(base: np.ndarray, labels: np.ndarray, reduction: str) -> np.ndarray:
    """M0' written out class by class: the other present classes' maps, max or mean, else 0."""
    out = np.zeros_like(base)
    for b in range(base.shape[0]):
        for k in range(base.shape[1]):
            others = [base[b, j] for j in range(base.shape[1]) if j != k and labels[b, j]]
            if others:
                out[b, k] = np.max(others, axis=0) if reduction == "max" else np.mean(others, axis=0)
    return out


@pytest.mark.parametrize("reduction", ["max", "mean"])
def test_rest_maps_match_the_loop_by_hand_and_leave_inputs_untouched(reduction: str) -> None:
    g = torch.Generator().manual_seed(7)
    base = torch.randn(5, 6, 4, 3, generator=g, dtype=torch.float64)  # negative values too
    labels = torch.tensor(
        [[1, 0, 1, 0, 0, 1], [0, 0, 0, 1, 0, 0], [0, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1], [0, 1, 1, 0, 0, 0]]
    )
    before = base.clone(), labels.clone()
    got = rest_maps(base, labels, reduction)  # type: ignore[arg-type]
    np.testing.assert_allclose(got.numpy(), rest_by_hand(base.numpy(), labels.numpy(), reduction), atol=1e-12)
    assert torch.equal(base, before[0])
    assert torch.equal(labels, before[1])
    # the M0' that fuse_hierarchy subtracts: fuse with the gathered level maps gives its figures
    _, levels, _ = random_inputs(batch=5, size=1)
    levels = [lv.expand(-1, -1, 4, 3).contiguous() for lv in levels]
    gathered = [normalize_maps(lv)[:, HIERARCHY.assignments(i)] for i, lv in enumerate(levels, start=1)]
    scaled = normalize_maps(base)
    torch.testing.assert_close(
        fuse(scaled, gathered, rest_maps(scaled, labels.bool(), reduction)),  # type: ignore[arg-type]
        fuse_hierarchy(base, levels, HIERARCHY, labels, rest_reduction=reduction),  # type: ignore[arg-type]
    )


def test_rest_maps_single_class_dtype_and_gradient() -> None:
    one = torch.rand(2, 1, 3, 3)
    assert torch.equal(rest_maps(one, torch.ones(2, 1)), torch.zeros_like(one))  # no other class: zero
    half = torch.rand(2, 3, 4, 4, dtype=torch.float16)
    assert rest_maps(half, torch.tensor([[1, 1, 0], [0, 0, 1]], dtype=torch.bool)).dtype == torch.float16
    base = torch.rand(2, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([[1, 1, 1], [1, 0, 1]])
    for reduction in ("max", "mean"):
        assert torch.autograd.gradcheck(lambda b, r=reduction: rest_maps(b, labels, r), (base,))


def test_rest_maps_bad_input() -> None:
    base, labels = torch.rand(2, 3, 4, 4), torch.tensor([[1, 0, 1], [0, 1, 0]])
    with pytest.raises(ValueError, match=r"`labels` must have shape \(2, 3\) .*got \(2, 4\)"):
        rest_maps(base, torch.ones(2, 4))
    with pytest.raises(ValueError, match=r"`base_maps` must have shape \(B, K, H, W\), got \(3, 4, 4\)"):
        rest_maps(base[0], labels)
    with pytest.raises(ValueError, match="`labels` must hold only 0/1 values"):
        rest_maps(base, labels * 2)
    with pytest.raises(ValueError, match="`reduction` must be one of 'max', 'mean', got 'min'"):
        rest_maps(base, labels, "min")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="`base_maps` must be"):
        rest_maps(base.long(), labels)
    with pytest.raises(TypeError, match="`labels` must be"):
        rest_maps(base, [[1, 0, 1], [0, 1, 0]])  # type: ignore[arg-type]
    nan = base.clone()
    nan[1, 2, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="`base_maps`.*NaN"):
        rest_maps(nan, labels)
