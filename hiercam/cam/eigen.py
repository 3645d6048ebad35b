"""EigenCAM: the first principal component of the target layer's activations (no gradients, no classes)."""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor, nn

from hiercam._validation import all_finite, should_check
from hiercam.cam._heads import HeadState, MapPlan
from hiercam.cam._pca import principal_component_maps
from hiercam.cam.engine import BaseCAM
from hiercam.cam.reshape import ReshapeArg
from hiercam.cam.targets import OutputArg

__all__ = ["EigenCAM", "principal_component_maps"]


def non_finite_activation(head: HeadState) -> ValueError:
    """The error for a target layer whose output holds NaN or Inf (gradient-free methods)."""
    return ValueError(
        f"the output of `target_layer` {head.name!r} holds NaN or infinite values for finite `images`"
    )


class EigenCAM(BaseCAM):
    """EigenCAM (Muhammad & Yeasin, 2020): ``ReLU`` of the activations' first principal component.

    The ``h * w`` positions of the target activation ``A (C, h, w)`` of each image are projected on the
    first principal component of its channels
    ([`principal_component_maps`][hiercam.principal_component_maps], oriented to correlate non-negatively
    with the mean activation), as pytorch-grad-cam's ``EigenCAM`` does. The map does not depend on the class:
    every requested class gets the same map (``classes`` still selects how many, and a ``(B, K)`` mask
    still zeroes absent classes). One forward pass under ``no_grad``; no gradient, no classifier.

    Args:
        model: the classifier (see [`BaseCAM`][hiercam.BaseCAM]; multi-head models average the heads' maps).
        target_layer: the layer explained, as for [`BaseCAM`][hiercam.BaseCAM].
        reshape: as for [`BaseCAM`][hiercam.BaseCAM] (token and channels-last outputs are read as maps).
        output: as for [`BaseCAM`][hiercam.BaseCAM].

    Examples:
        >>> import torch
        >>> from torchvision.models import resnet18
        >>> cam = EigenCAM(resnet18(num_classes=3), "layer4")
        >>> maps = cam(torch.randn(2, 3, 64, 64), [0, 2])
        >>> maps.shape, bool(torch.equal(maps[:, 0], maps[:, 1]))
        (torch.Size([2, 2, 64, 64]), True)
    """

    _needs_graph: ClassVar[bool] = False

    def __init__(
        self,
        model: nn.Module,
        target_layer: nn.Module | str | None = None,
        *,
        reshape: ReshapeArg = "auto",
        output: OutputArg = None,
    ) -> None:
        super().__init__(model, target_layer, closed_form=False, reshape=reshape, output=output)

    def _extra_repr(self) -> str:
        return "class_agnostic=True"

    def _head_maps(self, head: HeadState, logits: Tensor, plan: MapPlan) -> Tensor:
        _, features = self._features(head)
        if should_check() and not all_finite(features):
            raise non_finite_activation(head)
        projection = principal_component_maps(features)  # (B, h, w)
        resolved = plan.resolved
        return projection[:, None].expand(-1, resolved.count if resolved.indices else 0, -1, -1)
