"""The automatic choice of the target layer (``target_layer=None``): only a layer that is a real feature map.

One probe forward and backward on two images (the first image twice for a batch of one, so that the batch
dimension can be told apart from windows or heads) records every module's output. A module is a candidate
when its output can be read as a map of the input (see ``hiercam.cam.reshape``) and the scores depend on its
spatial positions (for tokens: on its patch tokens, not only on the class token). Spatial sizes equal to a
token count seen in the same forward (attention maps ``(B, heads, N, N)``, per-head tokens
``(B, heads, N, head_dim)``) never count as a grid.

The choice is the last candidate in execution order. If that is a ``(B, C, h, w)`` map, it is taken (CNNs,
torchvision's Swin, whose last layer permutes to channels-first). If it is a token or channels-last output,
the model is a transformer: with ``reshape="auto"`` the last candidate whose channel count is the model's
token width (that of the last token output, e.g. the final norm) is taken, e.g. ``blocks.11.norm1`` of a timm
ViT (its patch tokens feed the class token only through that block's attention) and ``norm`` of a timm Swin;
otherwise the choice is an error that names ``reshape`` and ``target_layer``.

An output that reads as a map in several ways (``hiercam.cam.reshape.readings``: a token count that fits two
patch grids, e.g. 26 tokens of an 80 x 80 input are 5 x 5 + 1 or 4 x 4 + 10; a 4-D output with ``h == w ==
C``) is a candidate too, of unknown reading: when it would be chosen, the choice raises the ambiguity error
that the same layer gets when passed explicitly, never falling back to an earlier layer (such as a ViT's
``patch_embed``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from hiercam._validation import format_shape
from hiercam.cam.reshape import ReshapeArg, ambiguity_error, is_channels_first, readings

__all__ = ["choose_layer"]

_PROBE = 2


@dataclass
class _Record:
    name: str
    module: nn.Module
    output: Tensor
    kind: str = ""  # "map", "channels_last", "tokens", "ambiguous" or "" (not a candidate)
    prefix: int = 0
    channels: int = 0


def choose_layer(
    model: nn.Module,
    inputs: Tensor,
    call_model: Callable[[Tensor], Any],
    scores_of: Callable[[Any], Tensor],
    reshape: ReshapeArg,
) -> tuple[str, nn.Module]:
    """``(name, module)`` of the automatically chosen target layer (see the module docstring)."""
    probe = inputs[:_PROBE] if inputs.shape[0] >= _PROBE else inputs[:1].expand(_PROBE, *inputs.shape[1:])
    probe = probe.detach().clone().requires_grad_(True)
    input_size = (int(inputs.shape[-2]), int(inputs.shape[-1]))
    records: list[_Record] = []

    def record(name: str, module: nn.Module) -> Callable[[nn.Module, Any, Any], None]:
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            if (
                isinstance(output, Tensor)
                and output.ndim in (3, 4)
                and output.shape[0] == _PROBE
                and output.is_floating_point()
                and output.requires_grad
            ):
                records.append(_Record(name, module, output))

        return hook

    handles = [
        m.register_forward_hook(record(n, m))
        for n, m in model.named_modules()
        if n and not isinstance(m, torch.jit.ScriptModule)  # TorchScript modules cannot be hooked
    ]
    try:
        with torch.enable_grad():
            score = scores_of(call_model(probe)).float().sum()
    finally:
        for handle in handles:
            handle.remove()
    tokens = frozenset(int(r.output.shape[1]) for r in records if r.output.ndim == 3)
    for item in records:
        _classify(item, input_size, tokens, reshape)
    candidates = [r for r in records if r.kind]
    readable, reached = len(candidates), 0
    if candidates and score.requires_grad:
        grads = torch.autograd.grad(score, [r.output for r in candidates], allow_unused=True)
        reached = sum(g is not None for g in grads)
        candidates = [r for r, g in zip(candidates, grads, strict=True) if _influences(r, g)]
    else:
        candidates = []
    if not candidates:
        hint = (
            f" ({readable} layers can be read as maps, but the gradients of the scores are zero at all of "
            "them: is the classifier initialised to zeros, like torchvision's VisionTransformer head?)"
            if reached
            else f" ({readable} layers can be read as maps, but the scores do not depend on them through "
            "autograd)"
            if readable
            else ""
        )
        raise ValueError(
            "no layer of `model` outputs a feature map (B, C, h, w) of the input (or tokens or a "
            f"channels-last map that `reshape='auto'` can read) on which the scores depend{hint}; pass "
            "`target_layer`"
        )
    last = candidates[-1]
    if last.kind == "map":
        return last.name, last.module
    if reshape != "auto":
        raise ValueError(
            f"`model` looks like a transformer: its last layers output tokens or channels-last maps "
            f"({last.name!r}: {format_shape(last.output.shape)}); with `reshape={_describe(reshape)}` no "
            "layer can be chosen automatically: pass `reshape='auto'`, or `target_layer` with a `reshape` "
            "callable"
        )
    width = next(r.channels for r in reversed(records) if r.kind in ("tokens", "channels_last", "ambiguous"))
    chosen = [r for r in candidates if r.kind != "map" and r.channels == width] or [last]
    if chosen[-1].kind == "ambiguous":
        raise _ambiguous(chosen[-1], input_size)
    return chosen[-1].name, chosen[-1].module


def _ambiguous(item: _Record, input_size: tuple[int, int]) -> ValueError:
    """The explicit layer's ambiguity error, for the layer the automatic choice would take."""
    where = f"the automatic choice of `target_layer` would take {item.name!r}, which outputs"
    return ambiguity_error(tuple(item.output.shape), input_size, where)


def _describe(reshape: ReshapeArg) -> str:
    return "None" if reshape is None else "a callable"


def _classify(
    item: _Record, input_size: tuple[int, int], tokens: frozenset[int], reshape: ReshapeArg
) -> None:
    shape = tuple(int(s) for s in item.output.shape)
    # a spatial size equal to a token count is attention: (B, heads, N, N or head_dim); 1 x 1 is no grid
    found = [
        (layout, grid)
        for layout, grid in readings(shape, input_size, exclude=tokens if len(shape) == 4 else frozenset())
        if len(shape) == 3 or (shape[2] * shape[3] if layout == "map" else shape[1] * shape[2]) > 1
    ]
    if (
        len(found) > 1
        and len(shape) == 4
        and (reshape is None or is_channels_first(item.output, item.module))
    ):
        found = [("map", None)]  # `reshape=None` says so, or the graph shows a convolution, norm or pooling
    if not found:
        return
    if len(found) > 1:
        item.kind, item.channels = "ambiguous", shape[2] if len(shape) == 3 else 0
        item.prefix = min(grid.prefix for _, grid in found if grid is not None) if len(shape) == 3 else 0
        return
    layout, grid = found[0]
    item.kind = layout
    if grid is not None:
        item.prefix, item.channels = grid.prefix, shape[2]
    else:
        item.channels = shape[1] if layout == "map" else shape[3]


def _influences(item: _Record, gradient: Tensor | None) -> bool:
    """Whether the scores depend on the spatial positions (the patch tokens) of this output."""
    if gradient is None:
        return False
    if item.output.ndim == 3:
        gradient = gradient[:, item.prefix :]
    return bool(gradient.detach().abs().amax() > 0)
