"""The shared engine of the methods that explain the input, not one target layer (GuidedBackprop, FullGrad).

They use [`BaseCAM`][hiercam.BaseCAM]'s call (checks, eval mode, classes, ``top_k``, ``targets``, ``output``,
multi-head models, resizing and normalisation) but no target layer: the forward pass runs with the method's
own hooks (``_hooks``, registered for the forward only) on an input that autograd tracks, and ``_input_maps``
turns the scores of the requested classes into maps at the input's resolution.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import Tensor, nn

from hiercam._validation import all_finite, should_check
from hiercam.cam._classes import ClassesArg, ClassRequest
from hiercam.cam._heads import HeadState, MapPlan
from hiercam.cam.engine import BaseCAM
from hiercam.cam.targets import OutputArg, TargetsArg

__all__ = ["InputGradientCAM"]


class InputGradientCAM(BaseCAM):
    """Base of the methods whose maps come from gradients with respect to the input ``(B, C, H, W)``.

    Subclasses define ``_input_maps(head, scores (B, K'), inputs, plan) -> (B, K', H, W)`` (before the
    ReLU) and may define ``_hooks()``, a context manager around the forward pass. ``size="feature"`` is the
    input's resolution. ``eigen_smooth`` and ``softmax_over`` are not taken.
    """

    def __init__(self, model: nn.Module, target_layer: None = None, *, output: OutputArg = None) -> None:
        if target_layer is not None:
            raise ValueError(
                f"{type(self).__name__} explains the input through the whole model and takes no "
                f"`target_layer`, got {target_layer!r}"
            )
        super().__init__(model, None, closed_form=False, reshape=None, output=output)
        self._tracked: Tensor | None = None  # the call's input, tracked by autograd, during the call

    @property
    def target_layer(self) -> str | None:
        """``None``: the method has no target layer."""
        return None

    @property
    def target_layers(self) -> list[str | None]:
        """``[]``: the method has no target layer."""
        return []

    def __repr__(self) -> str:
        extra = self._extra_repr()
        return f"{type(self).__name__}(input gradients{', ' + extra if extra else ''})"

    def _hooks(self) -> AbstractContextManager[Any]:
        return nullcontext()

    def _input_maps(self, head: HeadState, scores: Tensor, inputs: Tensor, plan: MapPlan) -> Tensor:
        raise NotImplementedError

    # --------------------------------------------------------------------------------- engine overrides
    def _explain(
        self,
        images: Tensor,
        request: ClassRequest,
        targets: TargetsArg,
        out_size: tuple[int, int] | None,
        normalize: Any,
        softmax_over: Tensor | None,
    ) -> Tensor:
        try:
            return super()._explain(images, request, targets, out_size, normalize, softmax_over)
        finally:
            self._tracked = None

    def _choose_layer(self, inputs: Tensor, targets: TargetsArg) -> None:
        """No layer to choose."""

    def _run(self, inputs: Tensor, input_size: tuple[int, int], *, with_graph: bool) -> Any:
        self._tracked = inputs.detach().requires_grad_()
        with torch.enable_grad(), self._hooks():
            return self._call_model(self._tracked, inputs)

    def _head_maps(self, head: HeadState, logits: Tensor, plan: MapPlan) -> Tensor:
        tracked = self._tracked
        if tracked is None:  # pragma: no cover - _run sets it
            raise RuntimeError("no input tracked")
        if not plan.resolved.indices:
            return tracked.new_zeros(tracked.shape[0], 0, *tracked.shape[-2:]).float()
        maps = self._input_maps(head, self._scores(logits, plan), tracked, plan)
        if should_check() and not all_finite(maps):
            raise ValueError(
                f"{type(self).__name__}: the gradients of the scores are NaN or infinite for finite `images` "
                "and finite logits (an operation of `model` with an infinite derivative, e.g. sqrt at 0)"
            )
        return maps

    def _check_softmax_over(
        self, value: Tensor, batch: int, classes: ClassesArg, targets: TargetsArg
    ) -> Tensor:
        raise ValueError(f"`softmax_over` is not available for {type(self).__name__}")
