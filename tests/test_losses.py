from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

from hiercam import OrthogonalLoss, TwoBranchLoss, TwoBranchLossOutput, TwoBranchOutput, orthogonal_loss

pytestmark = pytest.mark.usefixtures("one_thread")


REDUCTIONS = ["sum", "batchmean", "mean", "none"]


def naive_orthogonal(
    f1: torch.Tensor, f2: torch.Tensor, reduction: str, unit_norm: bool, rectify: bool = False
) -> torch.Tensor:
    """Element-by-element loop in float64: the per-sample overlap, then the reduction."""
    a = f1.detach().double().reshape(f1.shape[0], -1).tolist()
    b = f2.detach().double().reshape(f2.shape[0], -1).tolist()
    per_sample = []
    for row_a, row_b in zip(a, b, strict=True):
        if rectify:
            row_a = [max(v, 0.0) for v in row_a]
            row_b = [max(v, 0.0) for v in row_b]
        if unit_norm:
            norm_a = math.sqrt(sum(v * v for v in row_a)) or 1.0
            norm_b = math.sqrt(sum(v * v for v in row_b)) or 1.0
            row_a = [v / norm_a for v in row_a]
            row_b = [v / norm_b for v in row_b]
        per_sample.append(sum(x * y for x, y in zip(row_a, row_b, strict=True)))
    out = torch.tensor(per_sample, dtype=torch.float64)
    if reduction == "none":
        return out
    if reduction == "sum":
        return out.sum()
    if reduction == "batchmean":
        return out.sum() / f1.shape[0]
    return out.sum() / f1.numel()


@pytest.mark.parametrize("shape", [(3, 5), (2, 4, 3, 5), (1, 1, 1, 1)])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("unit_norm", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("rectify", [False, True])
def test_orthogonal_loss_matches_naive_loop(shape, reduction, unit_norm, dtype, rectify) -> None:
    g = torch.Generator().manual_seed(len(shape) * 7 + len(reduction))
    f1 = torch.randn(shape, generator=g, dtype=dtype)
    f2 = torch.randn(shape, generator=g, dtype=dtype)
    got = orthogonal_loss(f1, f2, reduction=reduction, unit_norm=unit_norm, rectify=rectify)
    expected = naive_orthogonal(f1, f2, reduction, unit_norm, rectify)
    assert got.dtype == dtype
    assert got.shape == expected.shape
    tol = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 1e-12, "atol": 1e-12}
    torch.testing.assert_close(got.double(), expected, **tol)


@pytest.mark.parametrize(
    ("reduction", "unit_norm", "expected"),
    [
        # f1 . f2 per sample: [1*3 + 2*1 + 0*5, 0*2 + 1*0 + 1*4] = [5, 4]
        ("sum", False, 9.0),
        ("batchmean", False, 4.5),
        ("mean", False, 1.5),  # 9 / 6 elements
        ("none", False, [5.0, 4.0]),
        # cosines: 5 / (sqrt(5) sqrt(35)) and 4 / (sqrt(2) sqrt(20))
        ("none", True, [5 / math.sqrt(175), 4 / math.sqrt(40)]),
        ("sum", True, 5 / math.sqrt(175) + 4 / math.sqrt(40)),
    ],
)
def test_orthogonal_loss_hand_computed(reduction, unit_norm, expected) -> None:
    f1 = torch.tensor([[1.0, 2.0, 0.0], [0.0, 1.0, 1.0]])
    f2 = torch.tensor([[3.0, 1.0, 5.0], [2.0, 0.0, 4.0]])
    got = orthogonal_loss(f1, f2, reduction=reduction, unit_norm=unit_norm)
    torch.testing.assert_close(got, torch.tensor(expected))


def test_orthogonal_loss_of_identical_unit_maps_is_one_per_sample() -> None:
    f = torch.rand(4, 3, 5, 5) + 0.1
    torch.testing.assert_close(orthogonal_loss(f, f, reduction="none", unit_norm=True), torch.ones(4))
    disjoint = torch.zeros(2, 4)
    disjoint[:, :2] = 1.0
    assert float(orthogonal_loss(disjoint, 1 - disjoint, unit_norm=True)) == 0.0


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("unit_norm", [False, True])
@pytest.mark.parametrize("weight", [1.0, 0.25])
def test_function_equals_module(reduction, unit_norm, weight) -> None:
    f1, f2 = torch.randn(2, 3, 2, 4, 4).unbind(0)
    module = OrthogonalLoss(weight=weight, reduction=reduction, unit_norm=unit_norm, rectify=True)
    expected = weight * orthogonal_loss(f1, f2, reduction=reduction, unit_norm=unit_norm, rectify=True)
    torch.testing.assert_close(module(f1, f2), expected, rtol=0, atol=0)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("unit_norm", [False, True])
def test_gradcheck_float64(reduction, unit_norm) -> None:
    f1 = torch.randn(3, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    f2 = torch.randn(3, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda a, b: orthogonal_loss(a, b, reduction=reduction, unit_norm=unit_norm, rectify=False), (f1, f2)
    )


def test_half_inputs_accumulate_in_float32_under_autocast() -> None:
    # 2 x 16 x 32 x 32 products of 4 * 4 = 16 each: 262144 per sample, beyond float16's 65504.
    f1 = torch.full((2, 16, 32, 32), 4.0, dtype=torch.float16)
    f2 = f1.clone()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = orthogonal_loss(f1, f2)
        per_sample = orthogonal_loss(f1.bfloat16(), f2.bfloat16(), reduction="none")
    assert got.dtype == torch.float32
    assert float(got) == 2 * 16 * 32 * 32 * 16
    assert per_sample.dtype == torch.float32
    torch.testing.assert_close(per_sample, torch.full((2,), 16 * 32 * 32 * 16.0))


def test_all_zero_features_give_zero_loss_and_finite_gradients() -> None:
    f1 = torch.zeros(2, 3, 4, 4, requires_grad=True)
    f2 = torch.randn(2, 3, 4, 4, requires_grad=True)
    loss = orthogonal_loss(f1, f2, reduction="batchmean", unit_norm=True, rectify=False)
    loss.backward()
    assert float(loss.detach()) == 0.0
    assert f1.grad is not None
    assert f2.grad is not None
    assert torch.isfinite(f1.grad).all()
    assert torch.isfinite(f2.grad).all()


def test_inputs_are_not_modified() -> None:
    f1 = torch.randn(2, 3, 4, 4, requires_grad=True)
    f2 = torch.randn(2, 3, 4, 4)
    before = (f1.detach().clone(), f2.clone())
    orthogonal_loss(f1, f2, unit_norm=True, rectify=True).backward()
    assert torch.equal(f1.detach(), before[0])
    assert torch.equal(f2, before[1])
    assert not f2.requires_grad


@pytest.mark.parametrize(
    ("f1", "f2", "error", "match"),
    [
        (
            torch.zeros(2, 3),
            torch.zeros(2, 4),
            ValueError,
            r"`f1` and `f2` must have the same shape, got \(2, 3\)",
        ),
        (
            torch.zeros(2, 3, 4),
            torch.zeros(2, 3, 4),
            ValueError,
            r"`f1` must have shape \(B, C, H, W\) or \(B, D\)",
        ),
        (
            torch.zeros(2, 3),
            torch.zeros(3),
            ValueError,
            r"`f2` must have shape \(B, C, H, W\) or \(B, D\), got \(3,\)",
        ),
        ([[1.0]], torch.zeros(1, 1), TypeError, r"`f1` must be a torch.Tensor, got list"),
        (torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3), TypeError, r"`f1` must be a floating-point"),
        (torch.zeros(0, 3), torch.zeros(0, 3), ValueError, r"must hold at least one sample"),
    ],
)
def test_bad_features(f1, f2, error, match) -> None:
    with pytest.raises(error, match=match):
        orthogonal_loss(f1, f2)


def test_bad_options() -> None:
    f = torch.zeros(2, 3)
    with pytest.raises(
        ValueError, match=r"`reduction` must be one of 'sum', 'batchmean', 'mean', 'none', got 'max'"
    ):
        orthogonal_loss(f, f, reduction="max")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"`unit_norm` must be a bool, got int"):
        orthogonal_loss(f, f, unit_norm=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"`weight` must be a finite number >= 0, got -1"):
        OrthogonalLoss(weight=-1.0)
    with pytest.raises(TypeError, match=r"`weight` must be a float, got str"):
        OrthogonalLoss(weight="1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"`reduction` must be one of"):
        OrthogonalLoss(reduction="avg")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"`weight` must be a finite number >= 0, got nan"):
        TwoBranchLoss(float("nan"))
    with pytest.raises(TypeError, match=r"`weight` must be a float, got bool"):
        TwoBranchLoss(True)  # type: ignore[arg-type]
    with pytest.raises(
        ValueError, match=r"`reduction` must be one of 'sum', 'batchmean', 'mean', got 'none'"
    ):
        TwoBranchLoss(reduction="none")  # type: ignore[arg-type]


def make_output(b: int = 4, k: int = 3, c: int = 5, dtype: torch.dtype = torch.float32) -> TwoBranchOutput:
    g = torch.Generator().manual_seed(b * k * c)
    logits = torch.randn(2, b, k, generator=g, dtype=dtype, requires_grad=True)
    f1 = torch.randn(b, c, 3, 3, generator=g, dtype=dtype).relu().requires_grad_()
    f2 = torch.randn(b, c, 3, 3, generator=g, dtype=dtype).relu().requires_grad_()
    return TwoBranchOutput(logits, (f1, f2), logits.mean(0))


@pytest.mark.parametrize("reduction", ["sum", "batchmean", "mean"])
@pytest.mark.parametrize("unit_norm", [False, True])
@pytest.mark.parametrize("lam", [1e-4, 0.5])
# lam = 0.5 swamps the classification on purpose: its warning is expected
@pytest.mark.filterwarnings("ignore:TwoBranchLoss. the weighted orthogonal term:UserWarning")
def test_two_branch_loss_is_bce_plus_weighted_orthogonal(reduction, unit_norm, lam) -> None:
    output = make_output()
    targets = (torch.rand(4, 3) < 0.5).float()
    parts = TwoBranchLoss(weight=lam, reduction=reduction, unit_norm=unit_norm)(output, targets)
    assert isinstance(parts, TwoBranchLossOutput)
    assert parts._fields[0] == "total"
    bce = nn.BCEWithLogitsLoss()
    expected_1 = bce(output.logits[0], targets)
    expected_2 = bce(output.logits[1], targets)
    expected_o = naive_orthogonal(*output.features, reduction, unit_norm).float()
    torch.testing.assert_close(parts.classification_1, expected_1)
    torch.testing.assert_close(parts.classification_2, expected_2)
    torch.testing.assert_close(parts.orthogonal, expected_o)
    torch.testing.assert_close(parts.total, expected_1 + expected_2 + lam * expected_o)
    assert all(part.ndim == 0 for part in parts)


def test_two_branch_loss_gradients_follow_eq_5() -> None:
    output = make_output()
    targets = torch.ones(4, 3)
    TwoBranchLoss(0.1).forward(output, targets).total.backward()
    f1, f2 = output.features
    # d(weight * sum(f1 * f2)) / d f1 = weight * f2, where f1 is a leaf of the graph.
    torch.testing.assert_close(f1.grad, 0.1 * f2.detach())
    torch.testing.assert_close(f2.grad, 0.1 * f1.detach())
    assert output.logits.grad is not None
    torch.testing.assert_close(output.logits.grad, (torch.sigmoid(output.logits.detach()) - 1) / 12)


def test_weight_zero_trains_branches_independently_and_logs_the_overlap() -> None:
    output = make_output()
    parts = TwoBranchLoss(0.0)(output, torch.zeros(4, 3))
    torch.testing.assert_close(parts.total, parts.classification_1 + parts.classification_2, rtol=0, atol=0)
    assert parts.orthogonal.grad_fn is None
    torch.testing.assert_close(parts.orthogonal, orthogonal_loss(*output.features).detach())


@pytest.mark.parametrize("target_dtype", [torch.bool, torch.long, torch.float16, torch.float32])
def test_labels_of_any_multi_hot_dtype(target_dtype) -> None:
    output = make_output()
    targets = torch.tensor([[1, 0, 1], [0, 0, 0], [1, 1, 1], [0, 1, 0]]).to(target_dtype)
    reference = TwoBranchLoss()(output, targets.float())
    got = TwoBranchLoss()(output, targets)
    torch.testing.assert_close(got.total, reference.total)


def test_float64_output_gives_float64_loss() -> None:
    parts = TwoBranchLoss()(make_output(dtype=torch.float64), torch.ones(4, 3))
    assert all(part.dtype == torch.float64 for part in parts)


def test_two_branch_loss_under_bfloat16_autocast_is_float32() -> None:
    output = make_output()
    half = TwoBranchOutput(
        output.logits.bfloat16(), tuple(f.bfloat16() for f in output.features), output.mean_logits
    )
    with torch.autocast("cpu", dtype=torch.bfloat16):
        parts = TwoBranchLoss(1e-2)(half, torch.ones(4, 3))
    assert all(part.dtype == torch.float32 for part in parts)


def test_two_branch_loss_bad_input() -> None:
    loss = TwoBranchLoss()
    output = make_output()
    with pytest.raises(ValueError, match=r"`labels` must have shape \(B, K\) = \(4, 3\) to match"):
        loss(output, torch.ones(4, 2))
    with pytest.raises(ValueError, match=r"`labels` must have shape \(B, K\), got \(4,\)"):
        loss(output, torch.ones(4))
    with pytest.raises(TypeError, match=r"`output` must be a TwoBranchOutput .*, got tuple"):
        loss((output.logits,), torch.ones(4, 3))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"`output.logits` must have shape \(2, B, K\), got \(3, 4, 3\)"):
        loss(output._replace(logits=torch.zeros(3, 4, 3)), torch.ones(4, 3))
    with pytest.raises(ValueError, match=r"`output.logits` must have shape \(2, B, K\), got \(4, 3\)"):
        loss(output._replace(logits=torch.zeros(4, 3)), torch.ones(4, 3))
    with pytest.raises(TypeError, match=r"`output.features` must be a pair of tensors"):
        loss(output._replace(features=output.features[0]), torch.ones(4, 3))
    with pytest.raises(ValueError, match=r"`f1` and `f2` must have the same shape"):
        loss(output._replace(features=(torch.zeros(4, 5, 3, 3), torch.zeros(4, 5, 2, 2))), torch.ones(4, 3))
    with pytest.raises(ValueError, match=r"`output.features` must have batch size B = 4"):
        loss(output._replace(features=(torch.zeros(2, 5), torch.zeros(2, 5))), torch.ones(4, 3))


# ---------------------------------------------------------------- a weighted orthogonal term swamping the BCE
def _swamp_case(scale: float = 1.0) -> tuple[TwoBranchOutput, torch.Tensor]:
    """Zero logits (each BCE = log 2), features of ones (raw-sum L_o = B * C * H * W = 4 * 8 * 4 = 128)."""
    logits = torch.zeros(2, 4, 3)
    features = (torch.full((4, 8, 2, 2), scale), torch.full((4, 8, 2, 2), scale))
    return TwoBranchOutput(logits, features, logits.mean(0)), torch.ones(4, 3)


def _swamp_warnings(loss: TwoBranchLoss, calls: int, scale: float = 1.0) -> list[str]:
    output, labels = _swamp_case(scale)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(calls):
            loss(output, labels)
    return [str(w.message) for w in caught if issubclass(w.category, UserWarning)]


def test_a_swamping_orthogonal_term_warns_once_naming_weight() -> None:
    # weight 1: 1 * 128 against 2 log 2 = 1.386, 92 times; the weight that makes them equal is 1.386 / 128
    loss = TwoBranchLoss(weight=1.0)
    found = _swamp_warnings(loss, calls=3)
    assert len(found) == 1  # once per loss object, not once per call
    message = found[0]
    assert "`weight` * L_o = 1 * 128 = 128 is 92 times the classification loss L_c1 + L_c2 = 1.386" in message
    assert f"at most about {2 * math.log(2) / 128:.2g}" in message  # 0.011
    assert 'reduction="batchmean", unit_norm=True' in message
    assert _swamp_warnings(loss, calls=3) == []  # the same loss later: never again
    assert len(_swamp_warnings(TwoBranchLoss(weight=1.0), calls=1)) == 1  # another loss object warns again


@pytest.mark.parametrize(
    ("weight", "warns"),
    [(0.11, True), (0.1, False), (0.0, False)],  # 14.08 > 13.86 = 10 x 1.386 > 12.8; weight 0: no term
)
def test_swamp_warning_fires_above_ten_times_the_classification_loss(weight: float, warns: bool) -> None:
    assert len(_swamp_warnings(TwoBranchLoss(weight=weight), calls=1)) == int(warns)


def test_swamp_warning_only_in_the_first_training_calls() -> None:
    loss = TwoBranchLoss(weight=1.0)
    assert _swamp_warnings(loss.eval(), calls=2) == []  # a loss in eval mode: validation
    loss.train()
    with torch.no_grad():  # no gradients: not a training step
        assert _swamp_warnings(loss, calls=2) == []
    assert _swamp_warnings(loss, calls=10, scale=0.01) == []  # 10 training calls with a small term
    assert _swamp_warnings(loss, calls=1) == []  # the 11th call is not watched any more


def test_swamp_warning_is_a_value_check() -> None:
    import hiercam

    loss = TwoBranchLoss(weight=1.0)
    with hiercam.checks(False):  # the values are not read: no host synchronisation, no warning
        assert _swamp_warnings(loss, calls=1) == []
    assert len(_swamp_warnings(loss, calls=1)) == 1  # checks back on, within the first 10 calls
