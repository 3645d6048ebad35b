"""Reading a target layer's output as a feature map ``(B, C, h, w)``: token outputs and channels-last maps.

Vision transformers output tokens ``(B, N, C)``: a few prefix tokens (the class token, a distillation token,
register tokens) followed by the ``h x w`` patch tokens in row-major order. Swin-style models and
ConvNeXt-style norms output channels-last maps ``(B, h, w, C)``. The CAM extractors read both through their
``reshape`` option:

* ``"auto"`` (the default) reads a ``(B, C, h, w)`` output as it is, a channels-last ``(B, h, w, C)`` output
  by permuting it, and tokens ``(B, N, C)`` by dropping the prefix tokens and folding the rest into the patch
  grid. The grid comes from the token count and the input size (``h = H / p``, ``w = W / p`` for a patch
  size ``p`` that divides both sides, with at most ``MAX_PREFIX`` prefix tokens); when two grids fit, or
  none, it refuses with an error naming ``reshape``.
* a callable, like pytorch-grad-cam's ``reshape_transform``: it receives the layer's output (and, with the
  same leading batch dimension, the gradients) and returns ``(B, C, h, w)``;
  [`TokenReshape`][hiercam.TokenReshape] is one for a known grid.
* ``None``: the output must already be ``(B, C, h, w)``.

A spatial grid ``(h, w)`` is read as one of an ``H x W`` input only if ``1 <= h <= 2 H``, ``1 <= w <= 2 W``
and the two strides ``H / h`` and ``W / w`` agree within a factor 1.5: attention tensors
``(B, heads, tokens, head_dim)`` and the ``C`` of a channels-last map fail this test. When both readings of a
4-D output pass, the one whose strides agree better wins (channels-first on a tie): ``(B, 56, 56, 64)`` of a
224 x 224 input is channels-last.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from torch import Tensor

from hiercam._validation import format_shape, type_name

__all__ = [
    "MAX_PREFIX",
    "ReshapeArg",
    "TokenReshape",
    "channels_last_to_map",
    "four_d_reading",
    "is_grid",
    "read_as_map",
    "stride_mismatch",
    "token_grids",
]

ReshapeArg = Literal["auto"] | Callable[[Tensor], Tensor] | None

MAX_PREFIX = 10
"""The most prefix tokens (class, distillation, register tokens) the automatic reshape considers."""

_STRIDE_RATIO = 1.5


def stride_mismatch(height: int, width: int, input_size: tuple[int, int]) -> float | None:
    """How much the strides of a ``(height, width)`` grid of an ``input_size`` input disagree (1: not at all).

    ``None`` when it is no grid of that input (see the module docstring).

    Examples:
        >>> stride_mismatch(7, 7, (224, 224)), round(stride_mismatch(56, 64, (224, 224)), 3)
        (1.0, 1.143)
        >>> stride_mismatch(7, 768, (224, 224)) is None  # w = 768 > 2 W
        True
    """
    full_h, full_w = input_size
    if not (1 <= height <= 2 * full_h and 1 <= width <= 2 * full_w):
        return None
    stride_h, stride_w = full_h / height, full_w / width
    mismatch = max(stride_h, stride_w) / min(stride_h, stride_w)
    return mismatch if mismatch <= _STRIDE_RATIO else None


def is_grid(height: int, width: int, input_size: tuple[int, int]) -> bool:
    """Whether ``(height, width)`` can be the spatial size of a feature map of an input of ``input_size``.

    Examples:
        >>> is_grid(7, 7, (224, 224)), is_grid(197, 64, (224, 224)), is_grid(7, 768, (224, 224))
        (True, False, False)
    """
    return stride_mismatch(height, width, input_size) is not None


def four_d_reading(
    shape: tuple[int, ...], input_size: tuple[int, int]
) -> Literal["map", "channels_last"] | None:
    """How a 4-D output reads as a map of the input: ``(B, C, h, w)``, ``(B, h, w, C)``, or not at all.

    Examples:
        >>> four_d_reading((2, 512, 7, 7), (224, 224)), four_d_reading((2, 7, 7, 768), (224, 224))
        ('map', 'channels_last')
        >>> four_d_reading((2, 56, 56, 64), (224, 224)), four_d_reading((2, 3, 197, 64), (224, 224))
        ('channels_last', None)
    """
    first = stride_mismatch(shape[2], shape[3], input_size)
    last = stride_mismatch(shape[1], shape[2], input_size)
    if first is not None and (last is None or first <= last):
        return "map"
    return "channels_last" if last is not None else None


@dataclass(frozen=True)
class TokenReshape:
    """Tokens ``(B, N, C)`` to a map ``(B, C, h, w)``: drop ``prefix`` tokens, fold the rest into ``grid``.

    Pass it as ``reshape=`` to a CAM extractor when the automatic reshape cannot tell the grid (or to fix
    it). Like pytorch-grad-cam's ``reshape_transform`` it is applied to the layer's output and its gradients.

    Args:
        grid: the patch grid ``(h, w)``; the patch tokens are in row-major order.
        prefix: the number of tokens before the patch tokens (1 for a class token, 5 with four registers).

    Raises:
        ValueError: ``grid`` or ``prefix`` is not positive (non-negative), or, when called, the tokens are not
            ``(B, prefix + h * w, C)``.

    Examples:
        >>> import torch
        >>> tokens = torch.randn(2, 1 + 3 * 4, 8)  # class token + a 3 x 4 grid of 8-channel tokens
        >>> TokenReshape((3, 4), prefix=1)(tokens).shape
        torch.Size([2, 8, 3, 4])
    """

    grid: tuple[int, int]
    prefix: int = 0

    def __post_init__(self) -> None:
        grid = self.grid
        if (
            not isinstance(grid, tuple)
            or len(grid) != 2
            or not all(isinstance(g, int) and not isinstance(g, bool) and g > 0 for g in grid)
        ):
            raise ValueError(f"`grid` must be a (h, w) tuple of positive ints, got {grid!r}")
        if isinstance(self.prefix, bool) or not isinstance(self.prefix, int) or self.prefix < 0:
            raise ValueError(f"`prefix` must be a non-negative int, got {self.prefix!r}")

    def __call__(self, tokens: Tensor) -> Tensor:
        """The patch tokens of ``tokens (B, N, C)`` as a map ``(B, C, h, w)`` (a view)."""
        height, width = self.grid
        count = self.prefix + height * width
        if not isinstance(tokens, Tensor) or tokens.ndim != 3 or tokens.shape[1] != count:
            got = format_shape(tokens.shape) if isinstance(tokens, Tensor) else type_name(tokens)
            raise ValueError(
                f"`reshape` TokenReshape(grid={self.grid}, prefix={self.prefix}) needs tokens "
                f"(B, {self.prefix + height * width}, C), got {got}"
            )
        patches: Tensor = tokens[:, self.prefix :].unflatten(1, (height, width))
        return patches.permute(0, 3, 1, 2)


def channels_last_to_map(values: Tensor) -> Tensor:
    """A channels-last map ``(B, h, w, C)`` as ``(B, C, h, w)`` (a view).

    Examples:
        >>> import torch
        >>> channels_last_to_map(torch.randn(2, 7, 7, 768)).shape
        torch.Size([2, 768, 7, 7])
    """
    return values.permute(0, 3, 1, 2)


def token_grids(num_tokens: int, input_size: tuple[int, int]) -> list[TokenReshape]:
    """Every ``(prefix, grid)`` that explains ``num_tokens`` tokens of an input of ``input_size``.

    A grid is ``(H / p, W / p)`` for a patch size ``p`` that divides both sides; a 1 x 1 grid is never one.

    Examples:
        >>> token_grids(197, (224, 224))
        [TokenReshape(grid=(14, 14), prefix=1)]
        >>> token_grids(16, (48, 48))  # 4 x 4 patches of 12 pixels, or 3 x 3 of 16 and 7 prefix tokens
        [TokenReshape(grid=(4, 4), prefix=0), TokenReshape(grid=(3, 3), prefix=7)]
    """
    full_h, full_w = input_size
    found = []
    for patch in range(1, min(full_h, full_w) + 1):
        if full_h % patch or full_w % patch:
            continue
        grid = (full_h // patch, full_w // patch)
        prefix = num_tokens - grid[0] * grid[1]
        if 0 <= prefix <= MAX_PREFIX and grid[0] * grid[1] > 1:
            found.append(TokenReshape(grid, prefix))
    return found


Layout = Literal["map", "channels_last", "tokens"]


def layout_of(
    shape: tuple[int, ...], input_size: tuple[int, int]
) -> tuple[Layout, TokenReshape | None] | None:
    """How the automatic reshape reads an output of ``shape``; ``None`` if it cannot or it is ambiguous."""
    if len(shape) == 4:
        reading = four_d_reading(shape, input_size)
        return None if reading is None else (reading, None)
    if len(shape) == 3:
        grids = token_grids(shape[1], input_size)
        return ("tokens", grids[0]) if len(grids) == 1 else None
    return None


def read_as_map(
    output: Tensor, reshape: ReshapeArg, input_size: tuple[int, int], layer: str | None
) -> Callable[[Tensor], Tensor] | None:
    """The function that turns the target layer's ``output`` into ``(B, C, h, w)`` (``None``: as it is).

    Raises:
        ValueError: the output cannot be read as a map, naming ``reshape`` and ``target_layer``.
    """
    shape = tuple(output.shape)
    if len(shape) not in (3, 4) and not callable(reshape):
        raise ValueError(
            f"`target_layer` {layer!r} must output a (B, C, H, W) tensor (or tokens (B, N, C) or a "
            f"channels-last map with `reshape`), got {format_shape(shape)}"
        )
    if reshape is None:
        if len(shape) != 4:
            raise ValueError(
                f"`target_layer` {layer!r} must output a (B, C, H, W) tensor, got {format_shape(shape)}; "
                "pass `reshape='auto'` or a callable to read token (B, N, C) or channels-last outputs"
            )
        return None
    if callable(reshape):
        return reshape
    layout = layout_of(shape, input_size)
    if layout is None:
        where = f"`target_layer` {layer!r} outputs {format_shape(shape)}"
        size = f"{input_size[0]}x{input_size[1]}"
        if len(shape) == 3:
            grids = token_grids(shape[1], input_size)
            found = ", ".join(f"TokenReshape({g.grid}, prefix={g.prefix})" for g in grids)
            why = (
                f"{shape[1]} tokens fit several patch grids of a {size} input ({found})"
                if grids
                else f"{shape[1]} tokens are no patch grid of a {size} input plus at most {MAX_PREFIX} "
                "prefix tokens"
            )
        else:
            why = (
                f"this is neither (B, C, h, w) nor channels-last (B, h, w, C) for a {size} input (pass "
                "`reshape=None` to take it as (B, C, h, w) anyway)"
            )
        raise ValueError(
            f"{where}: {why}; pass `reshape=` a callable returning (B, C, h, w) (e.g. "
            "hiercam.TokenReshape(grid, prefix)) or choose another `target_layer`"
        )
    kind, tokens = layout
    if kind == "map":
        return None
    if kind == "channels_last":
        return channels_last_to_map
    return tokens
