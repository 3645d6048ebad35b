"""Autograd helpers of the CAM engine: the batched gradients and the structural check of the closed form."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["batched_gradients", "is_batching_failure", "is_affine_path"]

_GRADIENT_BYTES = 256 * 2**20  # memory budget for one batched gradient chunk

# Phrases of the errors that torch raises when a backward op cannot run under the vmap of
# ``is_grads_batched`` (no batching rule, or the legacy fallback refusing it). Out-of-memory and every other
# error propagate.
_BATCHING_PHRASES = ("batching rule", "vmap", "batchedfallback", "batched tensor", "batchedtensor")

# Autograd nodes whose output is affine in all of their inputs jointly.
_AFFINE = frozenset(
    {
        "AddBackward0",
        "AddBackward1",
        "SubBackward0",
        "SubBackward1",
        "NegBackward0",
        "MulBackward1",  # by a Python number
        "DivBackward1",  # by a Python number
        "MeanBackward0",
        "MeanBackward1",
        "SumBackward0",
        "SumBackward1",
        "ViewBackward0",
        "UnsafeViewBackward0",
        "ReshapeAliasBackward0",
        "AliasBackward0",
        "UnsqueezeBackward0",
        "UnsqueezeBackward1",
        "SqueezeBackward0",
        "SqueezeBackward1",
        "SqueezeBackward2",
        "SqueezeBackward3",
        "SqueezeBackward4",
        "TBackward0",
        "TransposeBackward0",
        "TransposeBackward1",
        "PermuteBackward0",
        "ExpandBackward0",
        "CloneBackward0",
        "SelectBackward0",
        "SliceBackward0",
        "IndexBackward0",
        "StackBackward0",
        "CatBackward0",
        "SplitBackward0",
        "SplitWithSizesBackward0",
        "UnbindBackward0",
        "AsStridedBackward0",  # views of channels-last tensors
        "AsStridedBackward1",
        "RepeatBackward0",
        "FlipBackward0",
        "IndexSelectBackward0",
        "ConstantPadNdBackward0",
        "AdaptiveAvgPool2DBackward0",
        "AvgPool2DBackward0",
        "ToCopyBackward0",
    }
)
# Nodes that are affine in each input but not jointly: allowed with one input on the path (a layer's weight).
_BILINEAR = frozenset(
    {"MulBackward0", "MmBackward0", "AddmmBackward0", "MvBackward0", "BmmBackward0", "LinearBackward0"}
)


def is_batching_failure(error: RuntimeError) -> bool:
    """Whether ``error`` says that the vmapped backward lacks a batching rule for some op (nothing else)."""
    message = str(error).lower()
    return any(phrase in message for phrase in _BATCHING_PHRASES)


def batched_gradients(scores: Tensor, activation: Tensor, layer: str | None) -> Tensor:
    """Gradients ``(K', B, C, h, w)`` of each column of ``scores (B, K')`` summed over the batch, w.r.t. A.

    Samples do not interact in eval mode, so the gradient of ``scores[:, k].sum()`` holds every image's own
    gradient. All columns go through one vmapped backward (``is_grads_batched``), chunked to bound memory.
    Only when that backward has no batching rule for some op do the columns run one backward each; any other
    error (out of memory above all) propagates.
    """
    if not scores.requires_grad:
        raise ValueError(f"the logits of `model` do not depend on `target_layer` {layer!r} through autograd")
    batch, count = scores.shape
    chunk = max(1, _GRADIENT_BYTES // max(1, activation.numel() * 4))
    pieces = []
    for start in range(0, count, chunk):
        part = scores[:, start : start + chunk]
        n = part.shape[1]
        seeds = (
            torch.eye(n, dtype=part.dtype, device=part.device)[:, None, :].expand(n, batch, n).contiguous()
        )
        grads: Tensor | None
        try:
            grads = torch.autograd.grad(
                part, activation, seeds, retain_graph=True, allow_unused=True, is_grads_batched=True
            )[0]
        except RuntimeError as error:
            if not is_batching_failure(error):
                raise
            columns = [
                torch.autograd.grad(part[:, j].sum(), activation, retain_graph=True, allow_unused=True)[0]
                for j in range(n)
            ]
            grads = None if any(c is None for c in columns) else torch.stack(columns)
        if grads is None:
            raise ValueError(f"`target_layer` {layer!r} does not influence the logits of `model`")
        pieces.append(grads.float())
    return torch.cat(pieces)


def is_affine_path(output: Tensor, source: Tensor) -> bool:
    """Whether ``output`` is an affine function of ``source`` along every autograd path between them.

    Every node of the graph that lies on a path from ``output`` down to ``source`` must be a known affine
    op (views, sums and means, average pooling, concatenation, dtype casts...), or a product with only one
    factor on the path (a linear layer's input times its weight). Anything else (ReLU, GELU, max pooling,
    batch norm, an unknown op) makes it ``False``. An affine path has a constant Jacobian, so the closed
    form that matches the gradients at one input matches them at every input of that shape.
    """
    root = output.grad_fn
    if root is None:
        return False
    target = torch.autograd.graph.get_gradient_edge(source).node
    reaches: dict[Any, bool] = {}
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        node, expanded = stack.pop()
        if node in reaches:
            continue
        if node is target:
            reaches[node] = True
            continue
        children = [child for child, _ in node.next_functions]
        if not expanded:
            stack.append((node, True))
            stack.extend((c, False) for c in children if c is not None and c not in reaches)
            continue
        on_path = [c is not None and reaches[c] for c in children]
        reaches[node] = any(on_path)
        if reaches[node] and not _affine_node(type(node).__name__, on_path):
            return False
    return reaches.get(root, False)


def _affine_node(name: str, on_path: list[bool]) -> bool:
    if name in _AFFINE:
        return True
    if name == "DivBackward0":  # x / y: affine in the numerator only
        return on_path[0] and not any(on_path[1:])
    return name in _BILINEAR and sum(on_path) == 1
