"""Shared argument and shape checks.

Every public function validates its inputs here before any work starts, so that messages have one form:
``ValueError: `cams` must have shape (B, K, H, W), got (4, 7, 7).``
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from numbers import Integral
from typing import Any, TypeVar

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "check_tensor",
    "check_finite",
    "check_binary",
    "check_choice",
    "check_int",
    "check_threshold",
    "check_same_shape",
    "format_shape",
    "type_name",
]

T = TypeVar("T")


def type_name(value: object) -> str:
    """Name of the type of ``value``, as shown in error messages."""
    return type(value).__name__


def format_shape(shape: Sequence[int]) -> str:
    """Format a shape as a tuple: ``(4, 7, 7)``, ``(3,)``."""
    return str(tuple(int(size) for size in shape))


def check_tensor(
    value: Any,
    name: str,
    *,
    dims: str | None = None,
    ndim: int | Collection[int] | None = None,
    floating: bool = False,
) -> Tensor:
    """Check that ``value`` is a tensor of the expected rank.

    Args:
        value: the object to check.
        name: argument name used in messages.
        dims: the expected dimensions in the shape alphabet, e.g. ``"B, K, H, W"``; fixes the rank unless
            ``ndim`` is also given.
        ndim: accepted rank(s), when they differ from the number of names in ``dims``.
        floating: require a floating-point dtype.

    Returns:
        ``value``, unchanged.

    Raises:
        TypeError: ``value`` is not a tensor, or not floating point when required.
        ValueError: the rank is wrong.
    """
    if not isinstance(value, Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {type_name(value)}")
    if ndim is None and dims is not None:
        ndim = len([d for d in dims.split(",") if d.strip()])
    if ndim is not None:
        accepted = {ndim} if isinstance(ndim, int) else set(ndim)
        if value.ndim not in accepted:
            expected = f"({dims})" if dims is not None else f"{sorted(accepted)} dimensions"
            raise ValueError(f"`{name}` must have shape {expected}, got {format_shape(value.shape)}")
    if floating and not value.is_floating_point():
        raise TypeError(f"`{name}` must be a floating-point tensor, got dtype {value.dtype}")
    return value


def check_finite(value: Tensor, name: str) -> Tensor:
    """Raise ``ValueError`` if ``value`` holds NaN or infinite entries.

    ``aminmax`` propagates NaN and shows infinities, so checking its two values is equivalent to
    ``isfinite(value).all()`` without a full-size boolean mask (about 10x faster on CAMs (16, 20, 224, 224)).
    """
    if value.is_floating_point() and value.numel():
        extremes = torch.stack(torch.aminmax(value.detach()))
        if not bool(torch.isfinite(extremes).all()):
            raise ValueError(f"`{name}` must be finite, got NaN or infinite values")
    return value


def check_binary(value: Tensor, name: str) -> Tensor:
    """Raise ``ValueError`` unless every entry of ``value`` is 0 or 1 (any dtype, bool included)."""
    if value.dtype != torch.bool and not bool(((value == 0) | (value == 1)).all()):
        raise ValueError(f"`{name}` must hold only 0/1 values (multi-hot), got other values")
    return value


def check_same_shape(a: Tensor, b: Tensor, name_a: str, name_b: str) -> None:
    """Raise ``ValueError`` unless two tensors have the same shape."""
    if a.shape != b.shape:
        raise ValueError(
            f"`{name_a}` and `{name_b}` must have the same shape, "
            f"got {format_shape(a.shape)} and {format_shape(b.shape)}"
        )


def check_choice(value: T, name: str, choices: Collection[T]) -> T:
    """Raise ``ValueError`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        options = ", ".join(repr(c) for c in choices)
        raise ValueError(f"`{name}` must be one of {options}, got {value!r}")
    return value


def check_int(value: Any, name: str, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """Check that ``value`` is an integer within ``[minimum, maximum]`` and return it as a Python ``int``.

    Any ``numbers.Integral`` is accepted (``int``, NumPy's ``np.int64`` and friends); bools are refused.
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, Integral):
        raise TypeError(f"`{name}` must be an int, got {type_name(value)}")
    number = int(value)
    if minimum is not None and number < minimum:
        raise ValueError(f"`{name}` must be >= {minimum}, got {number}")
    if maximum is not None and number > maximum:
        raise ValueError(f"`{name}` must be <= {maximum}, got {number}")
    return number


def check_threshold(value: Any, name: str) -> float:
    """Check that ``value`` is a real number strictly between 0 and 1."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"`{name}` must be a float, got {type_name(value)}")
    if not 0.0 < float(value) < 1.0:
        raise ValueError(f"`{name}` must be between 0 and 1 (exclusive), got {value}")
    return float(value)
