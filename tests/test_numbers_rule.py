"""The rule for numbers (issue 26, item 11).

Wherever a Python int or float is accepted, so are NumPy integer / floating scalars and 0-d tensors, with
the same result; bools and invalid values raise ``TypeError`` / ``ValueError`` naming the argument.

The oracle is the same call with the Python number. Each case is a public callable, the name of its number
argument, whether it takes ints or floats, a strategy of valid values and a list of invalid ones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import hiercam
from hiercam._validation import check_float, check_int, is_int, is_real
from hiercam.cam.targets import ClassifierOutputTarget
from hiercam.metrics import (
    MeanIoU,
    deletion_insertion,
    localization_error,
    maps_to_masks,
    max_box_acc,
    mean_iou,
    noisy_linear_impute,
    pxap,
    road,
)

torch.manual_seed(0)
MAPS, LABELS = torch.rand(2, 2, 6, 6), torch.tensor([[1, 0], [1, 1]])
MASKS = torch.randint(0, 3, (2, 6, 6))
BOXES = [torch.tensor([[0, 0, 0, 3, 3]]), torch.tensor([[0, 1, 1, 5, 5], [1, 0, 0, 2, 2]])]
IMAGES = torch.rand(2, 1, 6, 6)


def model(x: torch.Tensor) -> torch.Tensor:
    return torch.stack([x[:, 0, :3].sum((1, 2)), x[:, 0, 3:].sum((1, 2))], dim=1)


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5)
    )


@dataclass(frozen=True)
class Case:
    name: str  # the argument, as named in messages
    kind: type  # int or float
    valid: st.SearchStrategy[Any]
    call: Callable[[Any], Any]
    invalid: tuple[Any, ...] = ()


CASES = [
    Case(
        "interval",
        float,
        st.floats(1e-3, 0.5),
        lambda v: pxap(MAPS, LABELS, masks=MASKS, interval=v),
        (0.0, 1.0, 1e-9),
    ),
    Case(
        "interval",
        float,
        st.floats(1e-2, 0.5),
        lambda v: max_box_acc(MAPS, LABELS, boxes=BOXES, interval=v),
        (-0.1, float("nan")),
    ),
    Case(
        "thresholds",
        float,
        st.floats(0.01, 0.99),
        lambda v: mean_iou(MAPS, LABELS, masks=MASKS, thresholds=v),
        (0.0, 1.5),
    ),
    Case(
        "iou",
        float,
        st.floats(0.01, 0.99),
        lambda v: localization_error(MAPS, LABELS, boxes=BOXES, iou=v),
        (1.0,),
    ),
    Case(
        "threshold",
        float,
        st.floats(0.01, 0.99),
        lambda v: maps_to_masks(MAPS, LABELS, threshold=v),
        (0.0, 2.0),
    ),
    Case(
        "percentages",
        float,
        st.floats(5.0, 80.0),
        lambda v: road(MAPS, LABELS, images=IMAGES, model=model, percentages=v, noise=0.0, score="logit"),
        (0.0, 100.0, float("inf")),
    ),
    Case(
        "noise",
        float,
        st.floats(0.0, 1.0),
        lambda v: noisy_linear_impute(
            IMAGES, MAPS[:, 0] > 0.7, noise=v, generator=torch.Generator().manual_seed(0)
        ),
        (-1.0, float("nan"), float("inf")),
    ),
    Case(
        "steps",
        int,
        st.integers(1, 40),
        lambda v: deletion_insertion(MAPS, LABELS, images=IMAGES, model=model, steps=v, score="logit"),
        (0, -3),
    ),
    Case("num_classes", int, st.integers(2, 6), lambda v: MeanIoU(v).confmat.shape, (1, 10**6)),
    Case("category", int, st.integers(0, 4), lambda v: ClassifierOutputTarget(v)(torch.arange(5.0)), (-1,)),
]


def _forms(value: Any, kind: type) -> list[Any]:
    """The same number as NumPy scalars of every width and as 0-d tensors."""
    if kind is int:
        numpy = [
            t(value)
            for t in (np.int8, np.int16, np.int32, np.int64, np.uint8)
            if np.iinfo(t).min <= value <= np.iinfo(t).max
        ]
        return [*numpy, torch.tensor(value), torch.tensor(value, dtype=torch.int32)]
    return [
        np.float64(value),
        np.float32(value),
        torch.tensor(value, dtype=torch.float64),
        torch.tensor(value),
    ]


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b) or bool(torch.allclose(a.double(), b.double(), atol=1e-6, equal_nan=True))
    if isinstance(a, tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def _near(value: float) -> float:
    """``value`` rounded to float32 so that ``np.float32(value)`` is the same number."""
    return float(np.float32(value))


@pytest.mark.parametrize("case", CASES, ids=[f"{c.name}-{i}" for i, c in enumerate(CASES)])
@settings(max_examples=8, deadline=None, derandomize=True)
@given(data=st.data())
def test_numpy_scalars_and_0d_tensors_give_the_python_result(case: Case, data: st.DataObject) -> None:
    value = data.draw(case.valid)
    if case.kind is float:
        value = _near(value)
    expected = case.call(value)
    for form in _forms(value, case.kind):
        assert _same(case.call(form), expected), (case.name, type(form), form)


@pytest.mark.parametrize("case", CASES, ids=[f"{c.name}-{i}" for i, c in enumerate(CASES)])
def test_bools_and_invalid_values_are_refused_naming_the_argument(case: Case) -> None:
    for bad in (True, False, np.bool_(True), torch.tensor(True), "1", None, torch.tensor([1, 2]), 1j):
        with pytest.raises((TypeError, ValueError), match=f"`{case.name}"):
            case.call(bad)
    if case.kind is int:
        with pytest.raises(TypeError, match=f"`{case.name}"):
            case.call(2.0)  # a float is not an int, in any form
        with pytest.raises(TypeError, match=f"`{case.name}"):
            case.call(np.float64(2.0))
    for bad in case.invalid:
        for form in [bad, *(_forms(bad, case.kind) if case.kind is float or abs(bad) < 100 else [])]:
            with pytest.raises(ValueError, match=f"`{case.name}"):
                case.call(form)


@given(st.integers(-(2**31), 2**31))
def test_is_int_and_check_int_take_every_integer_form(value: int) -> None:
    for form in (value, np.int64(value), torch.tensor(value)):
        assert is_int(form)
        assert is_real(form)
        assert check_int(form, "n") == value
    for form in (True, np.True_, torch.tensor(True), float(value), np.float32(1.0), torch.tensor(1.0)):
        assert not is_int(form)


@given(st.floats(allow_nan=False, allow_infinity=False, width=32))
def test_check_float_takes_every_real_form(value: float) -> None:
    for form in (value, np.float32(value), np.float64(value), torch.tensor(value)):
        assert check_float(form, "x") == value
    for bad in (True, np.bool_(False), "0.5", torch.zeros(2), torch.tensor(1 + 1j)):
        with pytest.raises(TypeError, match="`x`"):
            check_float(bad, "x")
    for bad in (float("nan"), np.float32("inf"), torch.tensor(float("-inf"))):
        with pytest.raises(ValueError, match="`x` must be finite"):
            check_float(bad, "x")


def test_a_numpy_class_index_selects_the_same_map_as_a_python_int() -> None:
    net, images = tiny_net(), torch.rand(1, 3, 8, 8)
    with hiercam.GradCAM(net, "0") as cam:
        expected = cam(images, classes=3)
        for form in (np.int64(3), np.int32(3), torch.tensor(3)):
            torch.testing.assert_close(cam(images, classes=form), expected)
        torch.testing.assert_close(cam(images, classes=[np.int64(1), 3]), cam(images, classes=[1, 3]))
        torch.testing.assert_close(cam(images, top_k=np.int64(2)), cam(images, top_k=2))
        with pytest.raises(TypeError, match="`classes`"):
            cam(images, classes=[True])
