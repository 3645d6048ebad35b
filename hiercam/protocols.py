"""Public types between models, the CAM engine and the losses: the multi-head protocol, the two-branch output.

A model with several parallel classifier heads over the same classes (hiercam's
[`TwoBranchNet`][hiercam.TwoBranchNet], an ensemble, a multi-exit network...) implements
[`MultiHeadModel`][hiercam.MultiHeadModel]: a ``cam_heads()`` method returning one
[`CAMHead`][hiercam.CAMHead] per head. The CAM extractors then compute each head's maps from its own feature
layer and its own logits and average them (paper section 3.4.2).
[`TwoBranchOutput`][hiercam.TwoBranchOutput] is what a two-branch network returns and what
[`TwoBranchLoss`][hiercam.TwoBranchLoss] reads.

This module sits below ``models``, ``losses`` and ``cam``, so that a model can implement the protocol without
importing the CAM engine, the engine reads any model without importing model classes, and the losses take
tensors without importing models. (The engine's own record of each head, with its closed-form state, is the
private ``hiercam.cam._heads.HeadState``.)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, runtime_checkable

from torch import Tensor, nn

__all__ = ["CAMHead", "MultiHeadModel", "TwoBranchOutput"]


@dataclass(frozen=True)
class CAMHead:
    """One head of a multi-head model, as the CAM engine reads it.

    Attributes:
        layer: the head's feature layer, a submodule of the model whose output ``(B, C, h, w)`` is explained
            when the extractor is given no ``target_layer``.
        name: dotted name of ``layer`` in the model (``model.get_submodule(name) is layer``).
        logits: maps the model's output (whatever ``model(images)`` returns) to this head's logits ``(B, K)``.
        classifier: the head's ``nn.Linear`` of weight ``(K, C)``, for the closed form and
            [`CAM`][hiercam.CAM]; ``None`` if the head has none (the general path is then used).
        scope: dotted name of the submodule inside which a ``target_layer`` name given to the extractor is
            looked up for this head (e.g. ``"branches.0"``); ``""`` looks it up in the whole model.

    Examples:
        >>> import torch
        >>> head = CAMHead(torch.nn.Conv2d(3, 4, 3), "conv", logits=lambda output: output[0])
        >>> head.name, head.classifier, head.scope
        ('conv', None, '')
    """

    layer: nn.Module
    name: str
    logits: Callable[[Any], Tensor]
    classifier: nn.Linear | None = None
    scope: str = ""


@runtime_checkable
class MultiHeadModel(Protocol):
    """A model with parallel classifier heads over the same ``K`` classes, each explained on its own.

    The CAM extractors ([`GradCAM`][hiercam.GradCAM] and family) call ``cam_heads()`` once, when they are
    built, and return the mean of the heads' maps
    ([`average_branch_maps`][hiercam.average_branch_maps]); ``logits`` is the mean of the heads' logits.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> class Pair(nn.Module):
        ...     def __init__(self) -> None:
        ...         super().__init__()
        ...         self.convs = nn.ModuleList(nn.Conv2d(3, 4, 3) for _ in range(2))
        ...         self.fcs = nn.ModuleList(nn.Linear(4, 5) for _ in range(2))
        ...     def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        ...         return [fc(conv(x).mean(dim=(2, 3))) for conv, fc in zip(self.convs, self.fcs)]
        ...     def cam_heads(self) -> list[CAMHead]:
        ...         return [
        ...             CAMHead(self.convs[i], f"convs.{i}", lambda out, i=i: out[i], self.fcs[i])
        ...             for i in range(2)
        ...         ]
        >>> isinstance(Pair(), MultiHeadModel)
        True
    """

    def cam_heads(self) -> Sequence[CAMHead]:
        """One [`CAMHead`][hiercam.CAMHead] per head, in a fixed order."""
        ...


class TwoBranchOutput(NamedTuple):
    """Output of [`TwoBranchNet`][hiercam.TwoBranchNet], read by [`TwoBranchLoss`][hiercam.TwoBranchLoss].

    Examples:
        >>> import torch
        >>> logits = torch.zeros(2, 4, 3)  # (2, B, K)
        >>> output = TwoBranchOutput(logits, (torch.ones(4, 8, 2, 2), torch.ones(4, 8, 2, 2)), logits.mean(0))
        >>> output.mean_logits.shape
        torch.Size([4, 3])
    """

    logits: Tensor
    """``(2, B, K)``: the logits of branch 1 and branch 2, stacked."""
    features: tuple[Tensor, Tensor]
    """The two branches' feature maps before pooling, each ``(B, C, h, w)``."""
    mean_logits: Tensor
    """``(B, K)``: the mean of the two branches' logits, for prediction."""
