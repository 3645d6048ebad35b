"""Shared argument and shape checks, and the switch of the value checks.

Every public function validates its inputs here before any work starts, so that messages have one form:
``ValueError: `cams` must have shape (B, K, H, W), got (4, 7, 7).``

Two kinds of checks: those of types, shapes, dtypes and options read only Python objects and tensor
metadata and always run; the **value checks** read tensor values (finite, 0/1, in ``[0, 1]``) into a Python
``bool``, which on an accelerator waits for the device (one host synchronisation per check). Those run when
[`should_check`][hiercam._validation.should_check] says so: the global switch
([`set_checks`][hiercam.set_checks], [`checks`][hiercam.checks], the ``HIERCAM_CHECKS`` environment variable
read at import), a per-call ``validate_args``, and the tensors a caller has checked already
([`values_checked`][hiercam._validation.values_checked]).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Collection, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar
from numbers import Integral, Real
from typing import Any, SupportsFloat, SupportsInt, TypeGuard, TypeVar

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "check_scales",
    "checks",
    "checks_enabled",
    "set_checks",
    "should_check",
    "values_checked",
    "all_finite",
    "check_tensor",
    "check_finite",
    "check_binary",
    "check_unit_interval",
    "check_choice",
    "is_int",
    "is_real",
    "check_int",
    "check_float",
    "check_threshold",
    "check_class_names",
    "check_same_shape",
    "format_shape",
    "type_name",
]

T = TypeVar("T")

CHECKS_VARIABLE = "HIERCAM_CHECKS"
_OFF = ("0", "false", "off", "no")
_ON = ("", "1", "true", "on", "yes")


def _checks_from_environment() -> bool:
    """The switch's value at import: off for ``HIERCAM_CHECKS=0`` (or false/off/no), on otherwise."""
    raw = os.environ.get(CHECKS_VARIABLE, "").strip().lower()
    if raw in _OFF:
        return False
    if raw not in _ON:
        warnings.warn(
            f"{CHECKS_VARIABLE}={raw!r} is not one of 0/1, false/true, off/on, no/yes; value checks stay on",
            RuntimeWarning,
            stacklevel=2,
        )
    return True


_enabled: bool = _checks_from_environment()
# tensors whose values a caller up the stack has checked (identity, not equality): see values_checked
_checked: ContextVar[tuple[Tensor, ...]] = ContextVar("hiercam_checked_values", default=())


# --------------------------------------------------------------------------------------------- the switch
def checks_enabled() -> bool:
    """Whether hiercam's value checks run: the global switch set by [`set_checks`][hiercam.set_checks].

    Returns:
        ``True`` (the default) unless value checks were switched off by ``set_checks(False)``, inside
        ``checks(False)``, or by ``HIERCAM_CHECKS=0`` in the environment when hiercam was imported.

    Examples:
        >>> import hiercam
        >>> hiercam.checks_enabled()
        True
    """
    return _enabled


def set_checks(enabled: bool) -> None:
    """Switch hiercam's value checks on or off for the whole process (kornia-style).

    Value checks are those that read tensor values: finite maps, images, features and logits; 0/1 labels
    and masks; maps in ``[0, 1]``; the negative-feature warning of the orthogonal loss and the warning of
    [`TwoBranchLoss`][hiercam.TwoBranchLoss] when its orthogonal term swamps the classification; non-finite
    outputs of the CAM engine and the fusion; 0/1 labels and finite loss and logits in every step of
    [`fit`][hiercam.fit]. Each turns a tensor into a Python ``bool``, which on a GPU waits for the device:
    one host synchronisation per check. Checks of types, shapes, dtypes, devices and options, and the
    range of class indices and mask labels (which decide where a count or a gather lands), always run.

    Off, invalid values are not refused: NaN flows through, labels other than 0/1 are read as they come,
    ``fit`` no longer stops on a non-finite loss. Switch them off once the data and the model are trusted,
    e.g. for a long GPU run. The switch is one process-wide flag (threads share it); a worker process
    started with ``spawn`` reads ``HIERCAM_CHECKS`` again. A per-call ``validate_args`` (as in
    [`normalize_maps`][hiercam.maps.normalize_maps]) overrides it for that call.

    Args:
        enabled: ``True`` to run the value checks (the default), ``False`` to skip them.

    Raises:
        TypeError: ``enabled`` is not a bool.

    Examples:
        >>> import torch, hiercam
        >>> nan_maps = torch.full((1, 2, 2), float("nan"))
        >>> hiercam.set_checks(False)
        >>> hiercam.normalize_maps(nan_maps).shape  # not refused
        torch.Size([1, 2, 2])
        >>> hiercam.set_checks(True)
    """
    global _enabled
    _enabled = _check_flag(enabled)


def checks(enabled: bool) -> AbstractContextManager[None]:
    """Value checks on or off inside a ``with`` block; the previous state comes back after it, also on error.

    See [`set_checks`][hiercam.set_checks] for what the value checks are.

    Args:
        enabled: ``True`` to run the value checks inside the block, ``False`` to skip them.

    Returns:
        A context manager.

    Raises:
        TypeError: ``enabled`` is not a bool.

    Examples:
        >>> import torch, hiercam
        >>> with hiercam.checks(False):
        ...     hiercam.checks_enabled()
        False
        >>> hiercam.checks_enabled()
        True
    """
    return _switched(_check_flag(enabled))


@contextmanager
def _switched(enabled: bool) -> Iterator[None]:
    global _enabled
    previous, _enabled = _enabled, enabled
    try:
        yield
    finally:
        _enabled = previous


def _check_flag(enabled: object) -> bool:
    if not isinstance(enabled, bool):
        raise TypeError(f"`enabled` must be a bool, got {type_name(enabled)}")
    return enabled


def should_check(value: Tensor | None = None, validate_args: bool | None = None) -> bool:
    """Whether a value check runs now: every value check of hiercam goes through this one function.

    Args:
        value: the tensor whose values would be read; ``False`` when it is one that a caller marked
            with [`values_checked`][hiercam._validation.values_checked].
        validate_args: the caller's per-call override: ``True`` or ``False`` decide; ``None`` (the usual
            default) follows the global switch [`checks_enabled`][hiercam.checks_enabled].
    """
    if validate_args is not None:
        return validate_args
    if not _enabled:
        return False
    return value is None or not any(value is done for done in _checked.get())


@contextmanager
def values_checked(*values: Tensor | None) -> Iterator[None]:
    """Inside the block, the value checks of these exact tensor objects are skipped: the caller checked them.

    For a function that checked its inputs and hands them to another checking function (``fit`` to the
    loss, an extractor to itself per scale). Only the same objects are skipped, not tensors equal to them;
    the marks belong to the calling thread (a ``ContextVar``).
    """
    token = _checked.set(_checked.get() + tuple(v for v in values if v is not None))
    try:
        yield
    finally:
        _checked.reset(token)


def all_finite(value: Tensor) -> bool:
    """Whether every entry of ``value`` is finite, from one ``aminmax`` (no full-size boolean mask).

    ``aminmax`` propagates NaN and shows infinities, so checking its two values is equivalent to
    ``isfinite(value).all()`` (about 10x faster on CAMs (16, 20, 224, 224)). Always reads the values (it is
    the predicate, not a check): callers ask [`should_check`][hiercam._validation.should_check] first.
    """
    if not value.is_floating_point() or value.numel() == 0:
        return True
    return bool(torch.isfinite(torch.stack(torch.aminmax(value.detach()))).all())


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


def check_finite(value: Tensor, name: str, *, validate_args: bool | None = None) -> Tensor:
    """A value check: raise ``ValueError`` if ``value`` holds NaN or infinite entries (one ``aminmax``).

    Skipped as [`should_check`][hiercam._validation.should_check] says (switch, ``validate_args``, marks).
    """
    if should_check(value, validate_args) and not all_finite(value):
        raise ValueError(f"`{name}` must be finite, got NaN or infinite values")
    return value


def check_binary(value: Tensor, name: str, *, validate_args: bool | None = None) -> Tensor:
    """A value check: raise ``ValueError`` unless every entry of ``value`` is 0 or 1 (any dtype, bool too).

    Skipped as [`should_check`][hiercam._validation.should_check] says (switch, ``validate_args``, marks).
    """
    if (
        value.dtype != torch.bool
        and should_check(value, validate_args)
        and not bool(((value == 0) | (value == 1)).all())
    ):
        raise ValueError(f"`{name}` must hold only 0/1 values (multi-hot), got other values")
    return value


def check_unit_interval(
    value: Tensor, name: str, *, validate_args: bool | None = None, hint: str = ""
) -> Tensor:
    """A value check: raise ``ValueError`` unless every entry of ``value`` is in ``[0, 1]`` (NaN refused).

    Skipped as [`should_check`][hiercam._validation.should_check] says (switch, ``validate_args``, marks).
    ``hint`` is added to the message (e.g. how to bring the values into range).
    """
    if value.numel() and should_check(value, validate_args):
        low, high = (float(v) for v in torch.aminmax(value.detach()))
        if not 0.0 <= low <= high <= 1.0:  # also refuses NaN
            raise ValueError(
                f"`{name}` must hold values in [0, 1]{hint}, got values in [{low:.4g}, {high:.4g}]"
            )
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


# ------------------------------------------------------------------------------------- the rule for numbers
# One rule for every public argument that is a number: a Python int (float) is accepted, and so is a NumPy
# integer (floating) scalar and a 0-d tensor of an integer (floating) dtype; bools (Python, NumPy, bool
# tensors) are refused. Every check of a number goes through is_int / is_real.
def _scalar_tensor(value: object) -> Tensor | None:
    """``value`` when it is a 0-d tensor that is not bool, complex or on the meta device, else ``None``."""
    if (
        isinstance(value, Tensor)
        and value.ndim == 0
        and value.dtype != torch.bool
        and not value.is_complex()
        and not value.is_meta
    ):
        return value
    return None


def is_int(value: object) -> TypeGuard[SupportsInt]:
    """Whether ``value`` is an integer by the rule for numbers: ``int``, ``np.integer``, 0-d integer tensor.

    Bools (``True``, ``np.True_``, bool tensors) are not integers here.

    Examples:
        >>> import numpy as np, torch
        >>> is_int(3), is_int(np.int64(3)), is_int(torch.tensor(3)), is_int(True), is_int(3.0)
        (True, True, True, False, False)
    """
    if isinstance(value, (bool, np.bool_)):
        return False
    if isinstance(value, Integral):
        return True
    scalar = _scalar_tensor(value)
    return scalar is not None and not scalar.is_floating_point()


def is_real(value: object) -> TypeGuard[SupportsFloat]:
    """Whether ``value`` is a real number by the rule for numbers.

    Real numbers are any :func:`is_int` value, ``float``, ``np.floating`` (``np.float32``, ...) and 0-d
    floating tensors. Bools are not numbers here.

    Examples:
        >>> import numpy as np, torch
        >>> is_real(0.5), is_real(np.float32(0.5)), is_real(torch.tensor(0.5)), is_real(False)
        (True, True, True, False)
    """
    if isinstance(value, (bool, np.bool_)):
        return False
    return isinstance(value, Real) or _scalar_tensor(value) is not None


def check_int(value: Any, name: str, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """Check that ``value`` is an integer within ``[minimum, maximum]`` and return it as a Python ``int``.

    Integers follow the rule for numbers (:func:`is_int`): ``int``, NumPy's ``np.int64`` and friends, 0-d
    integer tensors; bools are refused.
    """
    if not is_int(value):
        raise TypeError(f"`{name}` must be an int, got {type_name(value)}")
    number = int(value)
    if minimum is not None and number < minimum:
        raise ValueError(f"`{name}` must be >= {minimum}, got {number}")
    if maximum is not None and number > maximum:
        raise ValueError(f"`{name}` must be <= {maximum}, got {number}")
    return number


def check_float(
    value: Any,
    name: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    exclusive: bool = False,
) -> float:
    """Check that ``value`` is a finite real number in ``[minimum, maximum]`` and return it as a ``float``.

    Real numbers follow the rule for numbers (:func:`is_real`): ``int``, ``float``, NumPy integer and floating
    scalars, 0-d tensors; bools are refused. NaN and infinities are refused.

    Args:
        value: the object to check.
        name: argument name used in messages.
        minimum: the smallest accepted value, or ``None``.
        maximum: the largest accepted value, or ``None``.
        exclusive: the bounds themselves are refused (an open interval).

    Raises:
        TypeError: ``value`` is not a real number.
        ValueError: ``value`` is not finite or outside the bounds.
    """
    if not is_real(value):
        raise TypeError(f"`{name}` must be a float, got {type_name(value)}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"`{name}` must be finite, got {number}")
    below = minimum is not None and (number <= minimum if exclusive else number < minimum)
    above = maximum is not None and (number >= maximum if exclusive else number > maximum)
    if below or above:
        low = "-inf" if minimum is None else minimum
        high = "inf" if maximum is None else maximum
        interval = f"({low}, {high})" if exclusive else f"[{low}, {high}]"
        raise ValueError(f"`{name}` must be in {interval}, got {number}")
    return number


def check_generator(generator: object) -> torch.Generator | None:
    """``generator`` itself, refused unless a CPU ``torch.Generator`` or ``None`` (an int seed is not one).

    The library's random draws (ROAD's noise, RandomCAM's weights, the noise of SmoothGradCAMPlusPlus and
    SSCAM) are made on the CPU, so a seeded generator gives the same draws on every device.
    """
    if generator is None:
        return None
    if not isinstance(generator, torch.Generator):
        raise TypeError(
            f"`generator` must be a torch.Generator or None, got {type_name(generator)} "
            "(for a seed: torch.Generator().manual_seed(seed))"
        )
    if generator.device.type != "cpu":
        raise ValueError(
            f"`generator` must be a CPU generator (draws are made on the CPU), got {generator.device}"
        )
    return generator


def check_threshold(value: Any, name: str) -> float:
    """Check that ``value`` is a real number (by :func:`is_real`) strictly between 0 and 1."""
    if not is_real(value):
        raise TypeError(f"`{name}` must be a float, got {type_name(value)}")
    number = float(value)
    if not 0.0 < number < 1.0:
        raise ValueError(f"`{name}` must be between 0 and 1 (exclusive), got {number}")
    return number


def check_class_names(names: Sequence[str] | None, count: int) -> tuple[str, ...]:
    """``count`` class names as a tuple; ``None`` gives ``"class 0"``, ``"class 1"``, ..."""
    if names is None:
        return tuple(f"class {i}" for i in range(count))
    if isinstance(names, str) or not all(isinstance(n, str) for n in names):
        raise TypeError("`class_names` must be a sequence of strings")
    if len(names) != count:
        raise ValueError(f"`class_names` must have {count} entries, got {len(names)}")
    return tuple(names)


def check_scales(scales: Any) -> tuple[float, ...]:
    """Image scales for multi-scale inference: a non-empty sequence of positive finite numbers, as floats."""
    if isinstance(scales, (str, bytes)) or not isinstance(scales, Sequence):
        raise TypeError(f"`scales` must be a sequence of positive numbers, got {type_name(scales)}")
    if not scales:
        raise ValueError("`scales` must hold at least one scale, got an empty sequence")
    checked = []
    for scale in scales:
        if not is_real(scale):
            raise TypeError(f"`scales` must hold numbers, got {type_name(scale)}")
        if not math.isfinite(float(scale)) or float(scale) <= 0:
            raise ValueError(f"`scales` must be positive and finite, got {float(scale)!r}")
        checked.append(float(scale))
    return tuple(checked)
