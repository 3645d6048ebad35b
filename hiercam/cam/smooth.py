"""Smooth Grad-CAM++: Grad-CAM++ with the gradients' moments averaged over noisy copies of the images."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor, nn

from hiercam._validation import all_finite, check_float, check_generator, check_int, should_check
from hiercam.cam._autograd import batched_gradients
from hiercam.cam._checks import non_finite_origin
from hiercam.cam._classes import ClassesArg
from hiercam.cam._heads import HeadState, MapPlan
from hiercam.cam._pca import smoothed_maps
from hiercam.cam.engine import BaseCAM
from hiercam.cam.methods import _weighted_sum, _weighted_terms
from hiercam.cam.reshape import ReshapeArg
from hiercam.cam.targets import OutputArg, TargetsArg, target_scores

__all__ = ["SmoothGradCAMPlusPlus"]

_EPS = 1e-8  # torchcam's guard in the denominator of alpha


class _Moments(NamedTuple):
    """A head's clean activation ``(B, C, h, w)``; the means of G, G^2, G^3 ``(K', B, C, h, w)``."""

    features: Tensor
    first: Tensor
    second: Tensor
    third: Tensor


class SmoothGradCAMPlusPlus(BaseCAM):
    """Smooth Grad-CAM++ (Omeiza et al., 2019): Grad-CAM++ weights from gradients averaged over noisy inputs.

    For ``n = num_samples`` copies ``x + e_m`` of the images, ``e_m ~ N(0, std^2)`` element-wise, the
    gradients ``G_m`` of the requested class scores at the target layer give the means
    ``D1 = mean_m(G_m)``, ``D2 = mean_m(G_m^2)``, ``D3 = mean_m(G_m^3)``; with ``A`` the activation of the
    images themselves,

    ``alpha = D2 / (2 D2 + sum_hw(A) D3 + 1e-8)``, ``w_c = sum_hw(alpha ReLU(D1_c))``, map
    ``ReLU(sum_c w_c A_c)``.

    This is torchcam's ``SmoothGradCAMpp`` as its docstring writes it (the numerator of alpha is ``D2``,
    torchcam's correction to the paper's ``D1``). Its code departs from that formula in three ways, which
    hiercam does not copy (``tests/test_cam_smooth.py`` reproduces each and gives the agreement): the map
    is taken on the activation of the *last noisy copy* (the forward hook keeps overwriting it), ``ReLU``
    is applied to the *last noisy copy's* gradient instead of ``D1``, and the ``sum_hw(A) D3`` term is
    computed as ``sum_hw(A D3)``. Where the target layer feeds a global average pool and a linear
    classifier (ResNet's ``layer4``) the gradients are constant and only the first difference remains.

    Every requested class of the batch comes from the same ``n`` noisy forwards, each with one batched
    backward for all classes (torchcam runs them once per class). The forward of the images themselves runs
    under ``no_grad`` (only its activation and logits are used); ``top_k`` is chosen from its logits.

    Args:
        model: the classifier (see [`BaseCAM`][hiercam.BaseCAM]; the heads of a multi-head model, or
            several target layers, share the same noisy forwards).
        target_layer: the layer explained, as for [`BaseCAM`][hiercam.BaseCAM].
        num_samples: noisy copies per call, ``>= 1`` (torchcam's default 4).
        std: the standard deviation of the Gaussian noise, in the units of the model's input, ``> 0``
            (torchcam's default 0.3).
        generator: the CPU ``torch.Generator`` of the noise, advanced by every call, for reproducible maps;
            ``None``: torch's global generator. The noise is drawn on the CPU in float32 (the ``m``-th
            copy's noise is the ``m``-th ``torch.randn(images.shape) * std``), then moved to the images'
            device and dtype, so a seeded generator gives the same noise on every device.
        eigen_smooth: as for [`BaseCAM`][hiercam.BaseCAM] (the principal component of ``w_c * A_c``).
        reshape: as for [`BaseCAM`][hiercam.BaseCAM].
        output: as for [`BaseCAM`][hiercam.BaseCAM]; ``targets`` are scored on every noisy copy.

    Raises:
        TypeError, ValueError: ``num_samples`` is not an int ``>= 1``, ``std`` not a positive number,
            ``generator`` not a CPU ``torch.Generator`` (and as for [`BaseCAM`][hiercam.BaseCAM]).

    Examples:
        >>> import torch
        >>> from torchvision.models import resnet18
        >>> model, images = resnet18(num_classes=3), torch.randn(2, 3, 64, 64)
        >>> cam = SmoothGradCAMPlusPlus(model, "layer3", generator=torch.Generator().manual_seed(0))
        >>> cam(images).shape  # 4 noisy forwards, each with one backward for the 3 classes
        torch.Size([2, 3, 64, 64])
    """

    _needs_graph: ClassVar[bool] = False

    def __init__(
        self,
        model: nn.Module,
        target_layer: nn.Module | str | None = None,
        *,
        num_samples: int = 4,
        std: float = 0.3,
        generator: torch.Generator | None = None,
        eigen_smooth: bool = False,
        reshape: ReshapeArg = "auto",
        output: OutputArg = None,
    ) -> None:
        self.num_samples = check_int(num_samples, "num_samples", minimum=1)
        self.std = check_float(std, "std", minimum=0.0, exclusive=True)
        self.generator = check_generator(generator)
        super().__init__(
            model, target_layer, closed_form=False, eigen_smooth=eigen_smooth, reshape=reshape, output=output
        )
        self._moments: list[_Moments] | None = None
        self._autocast: tuple[str, bool, torch.dtype] = ("cpu", False, torch.bfloat16)

    def _extra_repr(self) -> str:
        return f"num_samples={self.num_samples}, std={self.std}"

    def _check_softmax_over(
        self, value: Tensor, batch: int, classes: ClassesArg, targets: TargetsArg
    ) -> Tensor:
        raise ValueError("`softmax_over` is not supported by SmoothGradCAMPlusPlus")

    @contextmanager
    def _call_context(self, images: Tensor) -> Iterator[Tensor]:
        self._moments = None
        try:
            with super()._call_context(images) as inputs:
                yield inputs
        finally:
            self._moments = None

    def _run(self, inputs: Tensor, input_size: tuple[int, int], *, with_graph: bool) -> Any:
        # the caller's autocast state, for the noisy forwards (the engine turns it off for the maps)
        device = inputs.device.type
        self._autocast = (device, torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))
        return super()._run(inputs, input_size, with_graph=with_graph)

    def _head_maps(self, head: HeadState, logits: Tensor, plan: MapPlan) -> Tensor:
        if not plan.resolved.indices:
            features = self._features(head)[1]
            return features.new_zeros(features.shape[0], 0, *features.shape[-2:])
        if self._moments is None:  # the first head of the call: the noisy passes serve every head
            self._moments = self._noisy_moments(plan)
        index = next(i for i, other in enumerate(self._heads) if other is head)
        features, first, second, third = self._moments[index]
        total = features.sum(dim=(-2, -1), keepdim=True)
        alpha = second / (2 * second + total * third + _EPS)
        weights = (alpha * first.relu()).sum(dim=(-2, -1))  # (K', B, C)
        if not self.eigen_smooth or not (all_finite(features) and all_finite(weights)):
            maps = _weighted_sum(weights, features)
        else:
            maps = smoothed_maps(lambda part: _weighted_terms(weights[part], features), weights.shape[0])
        if should_check() and not all_finite(maps):
            raise ValueError(non_finite_origin(head, features, third))
        return maps

    def _noisy_moments(self, plan: MapPlan) -> list[_Moments]:
        """The clean activation of every head and its gradients' moments over the noisy copies."""
        inputs = self._inputs
        if inputs is None:  # pragma: no cover - the engine sets it
            raise RuntimeError("no images kept for the noisy copies")
        clean = [self._features(head)[1] for head in self._heads]
        sums: list[list[Tensor]] = []
        for _ in range(self.num_samples):
            noise = torch.randn(inputs.shape, generator=self.generator) * self.std
            noisy = inputs.detach() + noise.to(device=inputs.device, dtype=inputs.dtype)
            device, enabled, dtype = self._autocast
            with torch.autocast(device, dtype=dtype, enabled=enabled):
                output = super()._run(noisy, plan.input_size, with_graph=True)
            for index, head in enumerate(self._heads):
                gradients = self._noisy_gradients(head, output, plan)
                powers = [gradients, gradients.square(), gradients.pow(3)]
                if len(sums) <= index:
                    sums.append(powers)
                else:
                    sums[index] = [
                        total.add_(power) for total, power in zip(sums[index], powers, strict=True)
                    ]
        n = self.num_samples
        moments = [
            _Moments(features, first / n, second / n, third / n)
            for features, (first, second, third) in zip(clean, sums, strict=True)
        ]
        for head in self._heads:
            head.activation = None
        return moments

    def _noisy_gradients(self, head: HeadState, output: Any, plan: MapPlan) -> Tensor:
        """``(K', B, C, h, w)``: the gradients of the requested scores of one noisy forward, float32."""
        logits = self._head_logits(head, output, plan.targets)
        if head.activation is None:  # pragma: no cover - the forward hook sets it
            raise RuntimeError("no activation captured")
        scores = (
            target_scores(logits, plan.targets) if plan.targets is not None else plan.resolved.scores(logits)
        )
        raw = batched_gradients(scores, head.activation, head.name)
        gradients: Tensor = self._as_map(head, raw.flatten(0, 1)).unflatten(0, raw.shape[:2])
        return gradients.float()
