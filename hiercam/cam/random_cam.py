"""RandomCAM: channel weights drawn at random, the sanity baseline of the faithfulness metrics."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from hiercam._validation import all_finite, check_generator, should_check
from hiercam.cam._heads import HeadState, MapPlan
from hiercam.cam._pca import smoothed_maps
from hiercam.cam.eigen import non_finite_activation
from hiercam.cam.engine import BaseCAM
from hiercam.cam.methods import _weighted_sum, _weighted_terms
from hiercam.cam.reshape import ReshapeArg
from hiercam.cam.targets import OutputArg

__all__ = ["RandomCAM"]


class RandomCAM(BaseCAM):
    """RandomCAM: ``ReLU(sum_c w_c * A_c)`` with random channel weights ``w_c ~ U(-1, 1)``.

    A map that knows nothing of the model's decision, only the layout of its features: the baseline a
    faithfulness metric ([`deletion_insertion`][hiercam.deletion_insertion], [`road`][hiercam.road],
    [`confidence_change`][hiercam.confidence_change]) must beat for any other method's figure to mean
    something. Each call draws weights ``(K, B, C)`` for every class of the model and every image, on the
    CPU in float32 (``2 * torch.rand((K, B, C)) - 1``), moved to the activation's device, and uses the rows
    of the requested classes: a seeded generator gives the same maps on every device, and a class's map does
    not depend on which other classes are requested (``top_k`` equals slicing the all-class maps). With
    ``targets`` one row ``(1, B, C)`` is drawn. One forward pass under ``no_grad``; no gradient
    (pytorch-grad-cam runs a backward it does not use).

    Args:
        model: the classifier (see [`BaseCAM`][hiercam.BaseCAM]; each head of a multi-head model draws its
            own weights, heads in order).
        target_layer: the layer explained, as for [`BaseCAM`][hiercam.BaseCAM].
        generator: the CPU ``torch.Generator`` of the weights, advanced by every call, for reproducible
            maps (``torch.Generator().manual_seed(0)``); ``None``: torch's global generator.
        eigen_smooth: as for [`BaseCAM`][hiercam.BaseCAM] (the principal component of ``w_c * A_c``).
        reshape: as for [`BaseCAM`][hiercam.BaseCAM].
        output: as for [`BaseCAM`][hiercam.BaseCAM]; with ``targets`` each image gets one map.

    Raises:
        TypeError, ValueError: ``generator`` is not a CPU ``torch.Generator`` or ``None`` (and as for
            [`BaseCAM`][hiercam.BaseCAM]).

    Examples:
        >>> import torch
        >>> from torchvision.models import resnet18
        >>> model, images = resnet18(num_classes=3), torch.randn(2, 3, 64, 64)
        >>> first = RandomCAM(model, "layer4", generator=torch.Generator().manual_seed(0))(images)
        >>> again = RandomCAM(model, "layer4", generator=torch.Generator().manual_seed(0))(images)
        >>> first.shape, bool(torch.equal(first, again))
        (torch.Size([2, 3, 64, 64]), True)
    """

    _needs_graph: ClassVar[bool] = False

    def __init__(
        self,
        model: nn.Module,
        target_layer: nn.Module | str | None = None,
        *,
        generator: torch.Generator | None = None,
        eigen_smooth: bool = False,
        reshape: ReshapeArg = "auto",
        output: OutputArg = None,
    ) -> None:
        self.generator = check_generator(generator)
        super().__init__(
            model, target_layer, closed_form=False, eigen_smooth=eigen_smooth, reshape=reshape, output=output
        )

    def _extra_repr(self) -> str:
        return "weights=U(-1, 1)" + (", seeded" if self.generator is not None else "")

    def _head_maps(self, head: HeadState, logits: Tensor, plan: MapPlan) -> Tensor:
        _, features = self._features(head)
        resolved = plan.resolved
        count = resolved.count if resolved.indices else 0
        if should_check() and not all_finite(features):
            raise non_finite_activation(head)
        rows = 1 if plan.targets is not None else int(logits.shape[1])  # every class: (K, B, C)
        shape = (rows, features.shape[0], features.shape[1])
        drawn = (2 * torch.rand(shape, generator=self.generator) - 1).to(features.device)
        if plan.targets is not None:
            weights = drawn
        elif resolved.per_image is not None:  # (k, B, C): row j holds each image's j-th class
            columns = torch.arange(shape[1], device=drawn.device)
            weights = drawn[resolved.per_image.to(drawn.device).T, columns]
        else:
            weights = drawn[resolved.indices]
        if not self.eigen_smooth or not count:
            return _weighted_sum(weights, features)
        return smoothed_maps(lambda part: _weighted_terms(weights[part], features), count)
