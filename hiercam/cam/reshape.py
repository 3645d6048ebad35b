"""Reading a target layer's output as a feature map ``(B, C, h, w)``: token outputs and channels-last maps.

Vision transformers output tokens ``(B, N, C)``: a few prefix tokens (the class token, a distillation token,
register tokens) followed by the ``h x w`` patch tokens in row-major order. Swin-style models and
ConvNeXt-style norms output channels-last maps ``(B, h, w, C)``. The CAM extractors read both through their
``reshape`` option:

* ``"auto"`` (the default) reads a ``(B, C, h, w)`` output as it is, a channels-last ``(B, h, w, C)`` output
  by permuting it, and tokens ``(B, N, C)`` by dropping the prefix tokens and folding the rest into the patch
  grid. The grid comes from the token count and the input size (``h = H / p``, ``w = W / p`` for a patch
  size ``p`` that divides both sides, with at most ``MAX_PREFIX`` prefix tokens); when two grids fit, or
  none, it refuses with an error naming ``reshape``: an ambiguous output is never guessed.
* a callable, like pytorch-grad-cam's ``reshape_transform``: it receives the layer's output (and, with the
  same leading batch dimension, the gradients) and returns ``(B, C, h, w)``;
  [`TokenReshape`][hiercam.TokenReshape] is one for a known grid.
* ``None``: the output must already be ``(B, C, h, w)``.

A spatial grid ``(h, w)`` is read as one of an ``H x W`` input only if ``1 <= h <= 2 H``, ``1 <= w <= 2 W``
and the two strides ``H / h`` and ``W / w`` agree within a factor 1.5: attention tensors
``(B, heads, tokens, head_dim)`` and the ``C`` of a channels-last map fail this test. When both readings of a
4-D output pass, the one whose strides agree better wins: ``(B, 56, 56, 64)`` of a 224 x 224 input is
channels-last. When they agree equally well (``(B, 8, 8, 8)`` of a 64 x 64 input: ``h == w == C``), the shape
cannot tell, and the output is read channels-first only on evidence (``is_channels_first``: the layer is a
2-D convolution, norm, pooling or upsampling layer, or its output comes from one through elementwise
operations in the autograd graph); without evidence ``"auto"`` refuses it, naming ``reshape=None``
(channels-first) and ``reshape=channels_last_to_map``. Nothing is guessed.

``readings`` (with ``is_channels_first`` for ties) is the one rule: the explicit target layer
(``read_as_map``) and the automatic choice of the layer (``hiercam.cam._layers``) both read an output through
it, and both refuse an ambiguous one with ``ambiguity_error``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from torch import Tensor, nn

from hiercam._validation import format_shape, type_name

__all__ = [
    "MAX_PREFIX",
    "Layout",
    "Reading",
    "ReshapeArg",
    "TokenReshape",
    "ambiguity_error",
    "channels_last_to_map",
    "four_d_reading",
    "is_channels_first",
    "is_grid",
    "is_tie",
    "read_as_map",
    "readings",
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
    """How a 4-D output reads as a map of the input: ``(B, C, h, w)``, ``(B, h, w, C)``, or ``None``.

    ``None`` also when the output is ambiguous (both readings fit equally well, see ``readings``).

    Examples:
        >>> four_d_reading((2, 512, 7, 7), (224, 224)), four_d_reading((2, 7, 7, 768), (224, 224))
        ('map', 'channels_last')
        >>> four_d_reading((2, 56, 56, 64), (224, 224)), four_d_reading((2, 3, 197, 64), (224, 224))
        ('channels_last', None)
        >>> four_d_reading((2, 8, 8, 8), (64, 64)) is None  # h == w == C: ambiguous
        True
    """
    found = readings(shape, input_size)
    if len(found) != 1 or found[0][0] == "tokens":
        return None
    return "map" if found[0][0] == "map" else "channels_last"


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
"""How an output reads as a map: ``(B, C, h, w)``, channels-last ``(B, h, w, C)`` or tokens ``(B, N, C)``."""

Reading = tuple[Layout, TokenReshape | None]
"""One reading of an output: its layout, and for tokens the prefix and grid."""


def readings(
    shape: tuple[int, ...], input_size: tuple[int, int], exclude: frozenset[int] = frozenset()
) -> list[Reading]:
    """The best readings of an output of ``shape`` as a map of an ``input_size`` input: one rule for all.

    No reading: it is no map of the input. One: it is read so. Several: the output is **ambiguous** (two
    patch grids fit the token count, or both 4-D readings fit equally well) and is never guessed.

    Args:
        shape: the output's shape ``(B, N, C)`` or ``(B, d1, d2, d3)``.
        input_size: the input's ``(H, W)``.
        exclude: spatial sizes that never count as a grid side (token counts: attention maps).

    Returns:
        ``(layout, tokens)`` pairs, ``tokens`` the ``TokenReshape`` of a token reading (else ``None``).

    Examples:
        >>> readings((2, 512, 7, 7), (224, 224)), readings((2, 56, 56, 64), (224, 224))
        ([('map', None)], [('channels_last', None)])
        >>> [layout for layout, _ in readings((2, 8, 8, 8), (64, 64))]  # h == w == C
        ['map', 'channels_last']
        >>> len(readings((2, 197, 192), (224, 224))), len(readings((2, 10, 192), (48, 48)))
        (1, 2)
    """
    if len(shape) == 3:
        return [("tokens", grid) for grid in token_grids(int(shape[1]), input_size)]
    if len(shape) != 4:
        return []
    fits: list[tuple[float, Layout]] = []
    sides: tuple[tuple[Layout, int, int], ...] = (
        ("map", shape[2], shape[3]),
        ("channels_last", shape[1], shape[2]),
    )
    for layout, height, width in sides:
        mismatch = stride_mismatch(int(height), int(width), input_size)
        if mismatch is not None and not {int(height), int(width)} & exclude:
            fits.append((mismatch, layout))
    best = min((mismatch for mismatch, _ in fits), default=None)
    return [(layout, None) for mismatch, layout in fits if mismatch == best]


def ambiguity_error(shape: tuple[int, ...], input_size: tuple[int, int], where: str) -> ValueError:
    """The error for an output of ``shape`` that ``reshape="auto"`` cannot read, or reads in several ways.

    It names ``reshape=`` and ``target_layer`` and, for an ambiguous output, the readings to choose from.
    ``where`` says whose output it is (e.g. "`target_layer` 'norm' outputs").

    Examples:
        >>> error = ambiguity_error((2, 8, 8, 8), (64, 64), "`target_layer` 'conv' outputs")
        >>> print(str(error)[:80])
        `target_layer` 'conv' outputs (2, 8, 8, 8): it reads both as (B, C, h, w) and as
    """
    size = f"{input_size[0]}x{input_size[1]}"
    found = readings(shape, input_size)
    if len(shape) == 3:
        grids = ", ".join(f"TokenReshape({t.grid}, prefix={t.prefix})" for _, t in found if t is not None)
        why = (
            f"{shape[1]} tokens fit several patch grids of a {size} input ({grids})"
            if found
            else f"{shape[1]} tokens are no patch grid of a {size} input plus at most {MAX_PREFIX} "
            "prefix tokens"
        )
    elif len(found) > 1:
        why = (
            f"it reads both as (B, C, h, w) and as channels-last (B, h, w, C) of a {size} input, and "
            "nothing shows which (no 2-D convolution, norm or pooling produces it) (pass `reshape=None` for "
            "(B, C, h, w), or `reshape=hiercam.cam.reshape.channels_last_to_map` for (B, h, w, C))"
        )
    else:
        why = (
            f"this is neither (B, C, h, w) nor channels-last (B, h, w, C) for a {size} input (pass "
            "`reshape=None` to take it as (B, C, h, w) anyway)"
        )
    return ValueError(
        f"{where} {format_shape(shape)}: {why}; pass `reshape=` a callable returning (B, C, h, w) (e.g. "
        "hiercam.TokenReshape(grid, prefix)) or choose another `target_layer`"
    )


_CHANNELS_FIRST_LAYERS = (
    nn.Conv2d,
    nn.ConvTranspose2d,
    nn.BatchNorm2d,
    nn.InstanceNorm2d,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.Upsample,
)
# autograd nodes (names without the version digit) of ops whose 4-D output is (B, C, h, w) ...
_CHANNELS_FIRST_OPS = frozenset(
    {
        "Convolution",
        "CudnnConvolution",
        "MkldnnConvolution",
        "NativeBatchNorm",
        "CudnnBatchNorm",
        "MiopenBatchNorm",
        "NativeGroupNorm",
        "MaxPool2DWithIndices",
        "AvgPool2D",
        "AdaptiveAvgPool2D",
        "AdaptiveMaxPool2D",
        "UpsampleBilinear2D",
        "UpsampleNearest2D",
        "UpsampleBicubic2D",
    }
)
# ... and of elementwise ops, which keep the layout of their inputs
_ELEMENTWISE_OPS = frozenset(
    (
        *("Relu", "Threshold", "LeakyRelu", "Elu", "Gelu", "Silu", "Mish", "Sigmoid", "Tanh", "Hardswish"),
        *("Hardsigmoid", "Hardtanh", "Softplus", "Clamp", "Add", "Sub", "Mul", "Div", "Neg", "Clone"),
        *("Cat", "ToCopy"),
    )
)
_MAX_NODES = 256


def is_channels_first(output: Tensor, module: nn.Module | None = None) -> bool:
    """Evidence that a 4-D ``output`` is ``(B, C, h, w)``, for shapes that cannot tell (``h == w == C``).

    ``True`` when ``module`` is a 2-D convolution, batch or instance norm, pooling or upsampling layer, or
    when the autograd graph of ``output`` reaches such an operation through elementwise operations only
    (activations, additions, products, ``cat``, copies). Without a graph (a forward under ``no_grad``) only
    the layer's type counts.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> conv = nn.Conv2d(3, 8, 8, stride=8)
        >>> features = torch.relu(conv(torch.randn(1, 3, 64, 64)))  # (1, 8, 8, 8)
        >>> is_channels_first(features), is_channels_first(features.permute(0, 2, 3, 1))
        (True, False)
    """
    if isinstance(module, _CHANNELS_FIRST_LAYERS):
        return True
    pending, seen = [output.grad_fn], 0
    while pending and seen < _MAX_NODES:
        node = pending.pop()
        seen += 1
        if node is None:
            continue
        name = type(node).__name__.rstrip("0123456789").removesuffix("Backward")
        if name in _CHANNELS_FIRST_OPS:
            return True
        if name in _ELEMENTWISE_OPS:
            pending.extend(parent for parent, _ in node.next_functions)
    return False


def is_tie(shape: tuple[int, ...], input_size: tuple[int, int]) -> bool:
    """Whether a 4-D output reads equally well as ``(B, C, h, w)`` and as ``(B, h, w, C)``.

    Examples:
        >>> is_tie((2, 8, 8, 8), (64, 64)), is_tie((2, 512, 7, 7), (224, 224))
        (True, False)
    """
    return len(shape) == 4 and len(readings(shape, input_size)) == 2


def read_as_map(
    output: Tensor,
    reshape: ReshapeArg,
    input_size: tuple[int, int],
    layer: str | None,
    channels_first: bool = False,
) -> Callable[[Tensor], Tensor] | None:
    """The function that turns the target layer's ``output`` into ``(B, C, h, w)`` (``None``: as it is).

    ``channels_first``: the evidence of ``is_channels_first`` for an output whose shape is a tie.

    Raises:
        ValueError: the output cannot be read as a map, or is ambiguous (``readings``), naming ``reshape``
            and ``target_layer``.
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
    found = readings(shape, input_size)
    if channels_first and is_tie(shape, input_size):
        return None
    if len(found) != 1:
        raise ambiguity_error(shape, input_size, f"`target_layer` {layer!r} outputs")
    layout, tokens = found[0]
    if layout == "map":
        return None
    if layout == "channels_last":
        return channels_last_to_map
    return tokens
