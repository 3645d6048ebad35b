"""Guided backpropagation and Guided Grad-CAM: input gradients through ReLUs that pass only positive signals.

Guided backpropagation (Springenberg et al., 2015, "Striving for Simplicity: The All Convolutional Net")
replaces the backward pass of every ReLU: a gradient goes through where the ReLU's input was positive
(as in the plain backward) **and** the gradient itself is positive. Guided Grad-CAM (Selvaraju et al.,
2017) multiplies that input gradient by the upsampled Grad-CAM map of the same class.

The ReLUs are the model's ``nn.ReLU`` modules (subclasses included), as in pytorch-grad-cam; a ReLU called as
a function (``torch.relu``, ``F.relu``) keeps its plain backward. Nothing in the model is replaced: a forward
hook, registered for the forward pass only, hands the rest of the model a copy of each ReLU's output whose
gradient is clipped at zero (a tensor hook) when guided gradients are taken. The copies cost one ReLU output
each (pytorch-grad-cam's guided ReLU allocates as much).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hiercam._validation import all_finite, should_check
from hiercam.cam._autograd import batched_gradients
from hiercam.cam._classes import ClassesArg, ClassRequest, ResolvedClasses
from hiercam.cam._heads import HeadState, LayerArg, MapPlan
from hiercam.cam._input_gradients import InputGradientCAM
from hiercam.cam.methods import GradCAM
from hiercam.cam.reshape import ReshapeArg
from hiercam.cam.targets import OutputArg, TargetsArg
from hiercam.maps import NormalizeMode, normalize_maps

__all__ = ["GuidedBackprop", "GuidedGradCAM"]


class _Switch:
    """Whether the guided ReLUs of the current graph clip gradients (read during the backward pass)."""

    def __init__(self) -> None:
        self.active = False


@contextmanager
def guided_relus(model: nn.Module, switch: _Switch) -> Iterator[int]:
    """Forward hooks on every ``nn.ReLU`` of ``model`` during the block; yields how many there are.

    A ReLU's backward already multiplies by ``input > 0``; a copy of its output, handed to the rest of the
    model, clips the incoming gradient at zero while ``switch.active`` (a tensor hook), so the two give
    guided backpropagation's ``gradient * (input > 0) * (gradient > 0)``.
    """

    def clip(gradient: Tensor) -> Tensor | None:
        return gradient.clamp(min=0) if switch.active else None

    def hook(_module: nn.Module, _inputs: Any, output: Any) -> Any:
        if isinstance(output, Tensor) and output.requires_grad:
            copy = output.clone()  # a copy, so that later in-place ops leave the hooked tensor alone
            copy.register_hook(clip)
            return copy
        return None

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.ReLU)]
    try:
        yield len(handles)
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def _active(switch: _Switch) -> Iterator[None]:
    switch.active = True
    try:
        yield
    finally:
        switch.active = False


class GuidedBackprop(InputGradientCAM):
    """Guided backpropagation (Springenberg et al., 2015): the input gradient through guided ReLUs.

    The gradient of each requested class score with respect to the images, where every ``nn.ReLU`` passes
    a gradient only where its input and the gradient are both positive. The gradients of every class come
    from one batched backward; they are kept in ``gradients``, ``(B, K', C, H, W)`` (pytorch-grad-cam's
    ``GuidedBackpropReLUModel`` returns the first image's, ``(H, W, C)``, for one class per call). The map
    of a class is the largest absolute gradient over the colour channels (the reduction of Simonyan et al.,
    2014), at the input's resolution (``size="feature"`` too). A model without ``nn.ReLU`` gets plain
    input gradients.

    Args:
        model: the classifier (see [`BaseCAM`][hiercam.BaseCAM]; a multi-head model averages its heads).
        target_layer: must be ``None``: the method explains the input through the whole model.
        output: as for [`BaseCAM`][hiercam.BaseCAM].

    Examples:
        >>> import torch
        >>> from torchvision.models import resnet18
        >>> cam = GuidedBackprop(resnet18(num_classes=3))
        >>> maps = cam(torch.randn(2, 3, 32, 32), [0, 2])
        >>> maps.shape, cam.gradients.shape
        (torch.Size([2, 2, 32, 32]), torch.Size([2, 2, 3, 32, 32]))
    """

    def __init__(self, model: nn.Module, target_layer: None = None, *, output: OutputArg = None) -> None:
        super().__init__(model, target_layer, output=output)
        self._switch = _Switch()
        self.gradients: Tensor | None = None
        self._pieces: list[tuple[Tensor, ResolvedClasses]] = []

    def _hooks(self) -> Any:
        return guided_relus(self.model, self._switch)

    def _input_maps(self, head: HeadState, scores: Tensor, inputs: Tensor, plan: MapPlan) -> Tensor:
        with _active(self._switch):
            gradients = batched_gradients(scores, inputs, "images").transpose(0, 1)  # (B, K', C, H, W)
        self._pieces.append((gradients, plan.resolved))
        return gradients.abs().amax(dim=2)

    def _explain(
        self,
        images: Tensor,
        request: ClassRequest,
        targets: TargetsArg,
        out_size: tuple[int, int] | None,
        normalize: NormalizeMode | None,
        softmax_over: Tensor | None,
    ) -> Tensor:
        explain = partial(super()._explain, images, request, targets, out_size, normalize, softmax_over)
        maps, self.gradients = _collecting(self._pieces, explain)
        return maps

    def remove(self) -> None:
        """Release the extractor (as ``BaseCAM.remove``) and drop ``gradients``."""
        super().remove()
        self.gradients = None


class GuidedGradCAM(GradCAM):
    """Guided Grad-CAM (Selvaraju et al., 2017): guided backpropagation times the upsampled Grad-CAM map.

    One forward pass gives both factors: the Grad-CAM maps ``M (B, K', h, w)`` from the plain gradients at the
    target layer, and the guided-backpropagation gradients ``R (B, K', C, H, W)`` of the same scores with
    respect to the images (see [`GuidedBackprop`][hiercam.GuidedBackprop]), each from one batched backward.
    ``guided`` keeps pytorch-grad-cam's Guided Grad-CAM image, ``minmax(up(ReLU(M)))[:, :, None] * R``
    (``up``: bilinear to ``(H, W)``), ``(B, K', C, H, W)``; the returned map is its largest absolute value
    over the colour channels, at the input's resolution (``size="feature"`` too), then normalised as asked.
    The closed form is not used (the guided gradients need the graph).

    Args:
        model: as for [`BaseCAM`][hiercam.BaseCAM].
        target_layer: as for [`BaseCAM`][hiercam.BaseCAM].
        classifier: as for [`BaseCAM`][hiercam.BaseCAM].
        reshape: as for [`BaseCAM`][hiercam.BaseCAM].
        output: as for [`BaseCAM`][hiercam.BaseCAM].

    Examples:
        >>> import torch
        >>> from torchvision.models import resnet18
        >>> cam = GuidedGradCAM(resnet18(num_classes=3), "layer4")
        >>> maps = cam(torch.randn(1, 3, 64, 64), top_k=2)
        >>> maps.shape, cam.guided.shape
        (torch.Size([1, 2, 64, 64]), torch.Size([1, 2, 3, 64, 64]))
    """

    def __init__(
        self,
        model: nn.Module,
        target_layer: LayerArg = None,
        *,
        classifier: nn.Linear | str | None = None,
        reshape: ReshapeArg = "auto",
        output: OutputArg = None,
    ) -> None:
        super().__init__(
            model, target_layer, classifier=classifier, closed_form=False, reshape=reshape, output=output
        )
        self._switch = _Switch()
        self._tracked: Tensor | None = None
        self._pieces: list[tuple[Tensor, ResolvedClasses]] = []
        self.guided: Tensor | None = None

    def _run(self, inputs: Tensor, input_size: tuple[int, int], *, with_graph: bool) -> Any:
        self._tracked = inputs.detach().requires_grad_()
        with guided_relus(self.model, self._switch):
            return super()._run(self._tracked, input_size, with_graph=True)

    def _head_maps(self, head: HeadState, logits: Tensor, plan: MapPlan) -> Tensor:
        tracked = self._tracked
        if tracked is None:  # pragma: no cover - _run sets it
            raise RuntimeError("no input tracked")
        size = (int(tracked.shape[-2]), int(tracked.shape[-1]))
        if not plan.resolved.indices:
            return tracked.new_zeros(tracked.shape[0], 0, *size).float()
        cam = super()._head_maps(head, logits, plan).relu()  # the plain gradients: the switch is off
        cam = normalize_maps(F.interpolate(cam, size=size, mode="bilinear", align_corners=False), "minmax")
        with _active(self._switch):
            gradients = batched_gradients(self._scores(logits, plan), tracked, head.name)
        if should_check() and not all_finite(gradients):
            raise ValueError(
                "GuidedGradCAM: the guided gradients of the scores are NaN or infinite for finite `images` "
                "and finite logits (an operation of `model` with an infinite derivative, e.g. sqrt at 0)"
            )
        guided = cam[:, :, None] * gradients.transpose(0, 1)
        self._pieces.append((guided, plan.resolved))
        return guided.abs().amax(dim=2)

    def _explain(
        self,
        images: Tensor,
        request: ClassRequest,
        targets: TargetsArg,
        out_size: tuple[int, int] | None,
        normalize: NormalizeMode | None,
        softmax_over: Tensor | None,
    ) -> Tensor:
        explain = partial(super()._explain, images, request, targets, out_size, normalize, softmax_over)
        try:
            maps, self.guided = _collecting(self._pieces, explain)
        finally:
            self._tracked = None
        return maps

    def _check_softmax_over(
        self, value: Tensor, batch: int, classes: ClassesArg, targets: TargetsArg
    ) -> Tensor:
        raise ValueError("`softmax_over` is not available for GuidedGradCAM")

    def remove(self) -> None:
        """Release the extractor (as ``BaseCAM.remove``) and drop ``guided``."""
        super().remove()
        self.guided = None


def _collecting(
    pieces: list[tuple[Tensor, ResolvedClasses]], explain: Callable[[], Tensor]
) -> tuple[Tensor, Tensor | None]:
    """``explain()``'s maps and the mean of the per-head images it put in ``pieces`` (emptied around it)."""
    pieces.clear()
    try:
        return explain(), _placed_mean(pieces)
    finally:
        pieces.clear()


def _placed_mean(pieces: list[tuple[Tensor, ResolvedClasses]]) -> Tensor | None:
    """The mean over heads of per-head images ``(B, K', C, H, W)``, placed as the maps are (class masks)."""
    if not pieces:
        return None
    placed = []
    for values, resolved in pieces:
        flat = resolved.place(values.flatten(2, 3))  # (B, K', C * H, W): place() reads dims 0 and 1
        placed.append(flat.unflatten(2, values.shape[2:4]))
    return placed[0] if len(placed) == 1 else torch.stack(placed).mean(dim=0)
