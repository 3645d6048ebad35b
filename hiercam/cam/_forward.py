"""The engine's forward pass: eval mode restored, the target-layer hooks that live only during the call."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from hiercam._validation import all_finite, format_shape, should_check, type_name
from hiercam.cam._checks import check_parameters
from hiercam.cam._heads import HeadState, translate_forward_error
from hiercam.cam.reshape import (
    ReshapeArg,
    TokenReshape,
    channels_last_to_map,
    is_channels_first,
    is_tie,
    read_as_map,
)
from hiercam.cam.targets import TargetsArg
from hiercam.protocols import MultiHeadModel

__all__ = ["as_map", "call_model", "eval_context", "head_logits", "hooked_forward"]


@contextmanager
def eval_context(model: nn.Module, images: Tensor) -> Iterator[Tensor]:
    """Eval mode restored per module, inference mode lifted, inputs usable by autograd."""
    check_parameters(model)
    modes = [(module, module.training) for module in model.modules()]
    with ExitStack() as stack:
        if torch.is_inference_mode_enabled():
            stack.enter_context(torch.inference_mode(False))
        if any(
            p.is_inference()
            for p in model.parameters()
            if not isinstance(p, nn.parameter.UninitializedParameter)  # lazy modules before their first call
        ):
            raise ValueError(
                "`model` has inference-mode parameters (created or loaded under torch.inference_mode()); "
                "CAMs need autograd: build the model outside inference mode"
            )
        inputs = images.clone() if images.is_inference() else images
        try:
            model.eval()
            yield inputs
        finally:
            for module, training in modes:
                module.training = training


def call_model(model: nn.Module, inputs: Tensor, images: Tensor | None = None) -> Any:
    """``model(inputs)``; torch's errors on bad inputs are translated naming ``images`` (the caller's)."""
    try:
        return model(inputs)
    except RuntimeError as error:
        clear = translate_forward_error(error, inputs if images is None else images, model)
        if clear is None:
            raise
        raise clear from error


def hooked_forward(
    call: Callable[[Tensor], Any],
    heads: Sequence[HeadState],
    inputs: Tensor,
    input_size: tuple[int, int],
    reshape: ReshapeArg,
    *,
    with_graph: bool,
) -> Any:
    """``call(inputs)``, each head's target layer hooked for the call only; the heads keep the activations.

    A head whose output's shape cannot tell its layout (``h == w == C``) and that has no autograd graph to
    show it (a forward under ``no_grad``: the closed form, gradient-free methods) gets its evidence from one
    probe forward with a graph, kept per input size.
    """
    undecided: list[tuple[HeadState, Tensor]] = []
    output = _hooked_forward(call, heads, inputs, input_size, reshape, with_graph, undecided)
    for head, activation in undecided:
        _probe_layout(call, head, inputs, input_size)
        _read(head, activation, reshape, input_size, head.channels_first[input_size])
    return output


def _probe_layout(
    call: Callable[[Tensor], Any], head: HeadState, inputs: Tensor, input_size: tuple[int, int]
) -> None:
    """Record ``is_channels_first`` for the head's output from one forward of one image with a graph."""
    captured: list[tuple[nn.Module, Tensor]] = []
    if head.layer is None:  # pragma: no cover - checked by _hooked_forward
        raise RuntimeError("the target layer was not chosen")
    handle = head.layer.register_forward_hook(lambda module, _i, out: captured.append((module, out)))
    try:
        with torch.enable_grad():
            call(inputs[:1].detach().requires_grad_())
    finally:
        handle.remove()
    head.channels_first[input_size] = bool(captured) and is_channels_first(captured[-1][1], captured[-1][0])


def _hooked_forward(
    call: Callable[[Tensor], Any],
    heads: Sequence[HeadState],
    inputs: Tensor,
    input_size: tuple[int, int],
    reshape: ReshapeArg,
    with_graph: bool,
    undecided: list[tuple[HeadState, Tensor]],
) -> Any:
    handles = []
    try:
        for head in heads:
            if head.layer is None:  # pragma: no cover - _choose_layer runs first
                raise RuntimeError("the target layer was not chosen")
            hook = _capture(head, reshape, input_size, with_graph, undecided)
            handles.append(head.layer.register_forward_hook(hook))
        for head in heads:
            head.activation = None
        with torch.enable_grad() if with_graph else torch.no_grad():
            output = call(inputs)
    finally:
        for handle in handles:
            handle.remove()
    for head in heads:
        if head.activation is None:
            raise ValueError(f"`target_layer` {head.name!r} was not reached by the forward pass of `model`")
    return output


def _layout_evidence(
    head: HeadState, module: nn.Module, output: Tensor, reshape: ReshapeArg, input_size: tuple[int, int]
) -> bool | None:
    """``is_channels_first`` for an output whose shape is a tie (else False), kept per input size.

    ``None``: a tie without a graph and not known yet (``hooked_forward`` probes for it).
    """
    if reshape != "auto" or not is_tie(tuple(output.shape), input_size):
        return False
    known = head.channels_first.get(input_size)
    if known is not None:
        return known
    if is_channels_first(output, module):
        head.channels_first[input_size] = True
        return True
    if output.grad_fn is None:
        return None
    head.channels_first[input_size] = False
    return False


def _read(
    head: HeadState, output: Tensor, reshape: ReshapeArg, input_size: tuple[int, int], evidence: bool
) -> None:
    head.to_map = read_as_map(output, reshape, input_size, head.name, evidence)
    head.reading = _reading(head.to_map)
    if head.to_map is not None:
        head.state = "general"  # the closed form reads (B, C, h, w) activations only


def _capture(
    head: HeadState,
    reshape: ReshapeArg,
    input_size: tuple[int, int],
    with_graph: bool,
    undecided: list[tuple[HeadState, Tensor]],
) -> Callable[[nn.Module, Any, Any], Any]:
    def hook(module: nn.Module, _inputs: Any, output: Any) -> Any:
        if not isinstance(output, Tensor):
            raise ValueError(
                f"`target_layer` {head.name!r} must output a (B, C, H, W) tensor, got {type_name(output)}"
            )
        evidence = _layout_evidence(head, module, output, reshape, input_size)
        if evidence is None:
            undecided.append((head, output))
        else:
            _read(head, output, reshape, input_size, evidence)
        if with_graph and not output.requires_grad:
            # Frozen layers upstream: start the graph here so that gradients reach the activation; the
            # model goes on with a copy, which later in-place ops may modify.
            head.activation = output.detach().requires_grad_()
            head.version = head.activation._version
            return head.activation.clone()
        head.activation = output
        head.version = output._version
        return output.clone() if head.copy_activation else None

    return hook


def _reading(to_map: Callable[[Tensor], Tensor] | None) -> str:
    """How a head's output is read, for ``repr``."""
    if to_map is None:
        return "map"
    if to_map is channels_last_to_map:
        return "channels-last"
    if isinstance(to_map, TokenReshape):
        return f"tokens(grid={to_map.grid}, prefix={to_map.prefix})"
    return "reshape callable"


def head_logits(model: nn.Module, head: HeadState, output: Any, targets: TargetsArg = None) -> Tensor:
    """The head's logits ``(B, K)`` (any output with ``targets``), checked to be finite (a value check)."""
    logits = head.logits_of(output)
    if targets is not None and isinstance(logits, Tensor) and logits.ndim >= 1:
        if should_check() and not all_finite(logits):
            raise ValueError("`model` returned NaN or infinite outputs for finite `images`")
        return logits
    if not isinstance(logits, Tensor) or logits.ndim != 2:
        got = format_shape(logits.shape) if isinstance(logits, Tensor) else type_name(logits)
        if isinstance(model, MultiHeadModel):
            raise ValueError(f"the logits of `model` for {head.name!r} must have shape (B, K), got {got}")
        raise ValueError(
            f"`model` must return logits of shape (B, K), got {got}; pass `targets` to explain another "
            "output (e.g. hiercam.SemanticSegmentationTarget for a segmentation map)"
        )
    if should_check() and not all_finite(logits):
        raise ValueError(
            f"`model` returned NaN or infinite logits (head {head.name!r}) for finite `images`: the "
            "model itself overflows or holds non-finite weights"
        )
    return logits


def as_map(head: HeadState, values: Tensor) -> Tensor:
    """The target layer's output (or its gradients, batch-flattened) as ``(B, C, h, w)``."""
    if head.to_map is None:
        return values
    mapped = head.to_map(values)
    if not isinstance(mapped, Tensor) or mapped.ndim != 4 or mapped.shape[0] != values.shape[0]:
        got = format_shape(mapped.shape) if isinstance(mapped, Tensor) else type_name(mapped)
        raise ValueError(
            f"`reshape` must turn the output {format_shape(values.shape)} of `target_layer` "
            f"{head.name!r} into (B, C, h, w) with the same B, got {got}"
        )
    return mapped
