"""The CAM methods: how activations and gradients combine into maps, on one engine.

All share the engine of [`BaseCAM`][hiercam.BaseCAM].

Notation: ``A`` is the target activation ``(B, C, h, w)``, ``G`` the gradients of the requested class scores
``(K', B, C, h, w)``; every map is ReLU'd afterwards. The formulas follow the original papers as implemented
by pytorch-grad-cam (``pytorch_grad_cam``) and torchcam; the tests check agreement with both.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hiercam._validation import all_finite, should_check
from hiercam.cam._heads import LayerArg
from hiercam.cam._pca import smoothed_maps
from hiercam.cam.engine import BaseCAM
from hiercam.cam.reshape import ReshapeArg
from hiercam.cam.targets import OutputArg

__all__ = [
    "GradCAM",
    "GradCAMPlusPlus",
    "XGradCAM",
    "LayerCAM",
    "HiResCAM",
    "CAM",
    "EigenGradCAM",
    "GradCAMElementWise",
]

# Guards against zero denominators, as in pytorch-grad-cam (they matter only when gradients are tiny).
_XGRAD_EPS = 1e-7
_PLUSPLUS_EPS = 1e-6


def _spatial_mean(gradients: Tensor) -> Tensor:
    """``G.mean((h, w))`` as ``(K', B, C)``; free when G is spatially constant (the closed form's view)."""
    if gradients.stride(-1) == 0 and gradients.stride(-2) == 0:
        return gradients[..., 0, 0]
    return gradients.mean(dim=(-2, -1))


def _weighted_sum(weights: Tensor, activations: Tensor) -> Tensor:
    return torch.einsum("kbc,bchw->bkhw", weights, activations)


def _weighted_terms(weights: Tensor, activations: Tensor) -> Tensor:
    """``weights (K', B, C)`` times ``A (B, C, h, w)`` per channel: ``(B, K', C, h, w)`` (eigen_smooth)."""
    return weights.transpose(0, 1)[..., None, None] * activations[:, None]


class _ChannelWeighted(BaseCAM):
    """Methods whose map is ``sum_c w_c * A_c`` with channel weights ``w (K', B, C)`` from ``_weights``."""

    def _combine(self, activations: Tensor, gradients: Tensor) -> Tensor:
        return _weighted_sum(self._weights(activations, gradients), activations)

    def _terms(self, activations: Tensor, gradients: Tensor) -> Tensor:
        return _weighted_terms(self._weights(activations, gradients), activations)

    @staticmethod
    def _weights(activations: Tensor, gradients: Tensor) -> Tensor:
        """Channel weights ``(K', B, C)`` from ``A (B, C, h, w)`` and ``G (K', B, C, h, w)``."""
        raise NotImplementedError


class _ElementWise(BaseCAM):
    """Methods whose map is ``sum_c g(G_c) * A_c`` element-wise, ``g`` given by ``_gradient_weights``."""

    def _combine(self, activations: Tensor, gradients: Tensor) -> Tensor:
        return torch.einsum("kbchw,bchw->bkhw", self._gradient_weights(gradients), activations)

    def _terms(self, activations: Tensor, gradients: Tensor) -> Tensor:
        """``g(G) (K', B, C, h, w)`` times ``A (B, C, h, w)`` element-wise: ``(B, K', C, h, w)``."""
        return self._gradient_weights(gradients).transpose(0, 1) * activations[:, None]

    @staticmethod
    def _gradient_weights(gradients: Tensor) -> Tensor:
        return gradients


class GradCAM(_ChannelWeighted):
    """Grad-CAM (Selvaraju et al., 2017), the map the paper uses: ``ReLU(sum_c mean_hw(G_c) * A_c)``.

    Examples:
        >>> import torch
        >>> from torchvision.models import resnet18
        >>> model = resnet18(num_classes=5).eval()
        >>> with GradCAM(model, "layer4") as cam:
        ...     maps = cam(torch.randn(2, 3, 64, 64))  # all 5 classes, one forward
        ...     logits = cam.logits  # the logits of that forward pass
        >>> maps.shape, logits.shape
        (torch.Size([2, 5, 64, 64]), torch.Size([2, 5]))
        >>> bool(maps.amax(dim=(-2, -1)).le(1).all())
        True
    """

    @staticmethod
    def _weights(activations: Tensor, gradients: Tensor) -> Tensor:
        return _spatial_mean(gradients)


class HiResCAM(_ElementWise):
    """HiResCAM (Draelos & Carin, 2020): ``ReLU(sum_c G_c * A_c)``, element-wise, without spatial averaging.

    Examples:
        >>> import torch
        >>> from torchvision.models import resnet18
        >>> HiResCAM(resnet18(num_classes=3), "layer4")(torch.randn(1, 3, 64, 64), 2).shape
        torch.Size([1, 1, 64, 64])
    """


class LayerCAM(_ElementWise):
    """LayerCAM (Jiang et al., 2021): ``ReLU(sum_c ReLU(G_c) * A_c)``, element-wise.

    Examples:
        >>> import torch
        >>> from torchvision.models import resnet18
        >>> LayerCAM(resnet18(num_classes=3), "layer3")(torch.randn(1, 3, 64, 64), [0, 2]).shape
        torch.Size([1, 2, 64, 64])
    """

    @staticmethod
    def _gradient_weights(gradients: Tensor) -> Tensor:
        return gradients.relu()


class XGradCAM(_ChannelWeighted):
    """XGrad-CAM (Fu et al., 2020): channel weights ``sum_hw(G_c * A_c) / sum_hw(A_c)``.

    Examples:
        >>> import torch
        >>> from torchvision.models import resnet18
        >>> XGradCAM(resnet18(num_classes=3), "layer4")(torch.randn(1, 3, 64, 64), size="feature").shape
        torch.Size([1, 3, 2, 2])
    """

    @staticmethod
    def _weights(activations: Tensor, gradients: Tensor) -> Tensor:
        return (gradients * activations).sum(dim=(-2, -1)) / (activations.sum(dim=(-2, -1)) + _XGRAD_EPS)


class GradCAMPlusPlus(_ChannelWeighted):
    """Grad-CAM++ (Chattopadhyay et al., 2018) with the usual exponential-score simplification.

    ``alpha = G^2 / (2 G^2 + sum_hw(A) G^3)`` (0 where ``G = 0``); channel weights are
    ``sum_hw(alpha * ReLU(G))``.

    Examples:
        >>> import torch
        >>> from torchvision.models import resnet18
        >>> GradCAMPlusPlus(resnet18(num_classes=3), "layer4")(torch.randn(2, 3, 64, 64)).shape
        torch.Size([2, 3, 64, 64])
    """

    @staticmethod
    def _weights(activations: Tensor, gradients: Tensor) -> Tensor:
        squared = gradients.pow(2)
        total = activations.sum(dim=(-2, -1), keepdim=True)
        alpha = squared / (2 * squared + total * squared * gradients + _PLUSPLUS_EPS)
        alpha = torch.where(gradients != 0, alpha, torch.zeros_like(alpha))
        return (alpha * gradients.relu()).sum(dim=(-2, -1))


class CAM(_ChannelWeighted):
    """Class activation mapping (Zhou et al., 2016): ``ReLU(sum_c W[k, c] * A_c)``, no gradients.

    Needs the target layer to feed a global average pool and a single linear classifier (``W`` is its
    weight); the structure is checked on every call (``logits == W @ mean(A) + b``) and a ``ValueError``
    explains when it does not hold. Where it holds, Grad-CAM gives the same maps up to the factor
    ``1 / (h * w)``.

    Examples:
        >>> import torch
        >>> from torchvision.models import resnet18
        >>> model = resnet18(num_classes=4).eval()
        >>> CAM(model, "layer4")(torch.randn(1, 3, 64, 64), normalize=None, size="feature").shape
        torch.Size([1, 4, 2, 2])
    """

    _uses_gradients = False

    @staticmethod
    def _weights(activations: Tensor, gradients: Tensor) -> Tensor:
        # the closed-form gradient is W / (h * w); CAM's weights are W itself
        return _spatial_mean(gradients) * activations.shape[-2] * activations.shape[-1]


class GradCAMElementWise(BaseCAM):
    """Element-wise Grad-CAM (pytorch-grad-cam's ``GradCAMElementWise``): ``ReLU(sum_c ReLU(G_c * A_c))``.

    Like HiResCAM, but every product of gradient and activation is clipped at zero before the channel sum,
    so negative evidence in one channel cannot cancel positive evidence in another. With ``eigen_smooth``
    the clipped products ``ReLU(G * A)`` are the weighted activations.

    Examples:
        >>> import torch
        >>> from torchvision.models import resnet18
        >>> GradCAMElementWise(resnet18(num_classes=3), "layer4")(torch.randn(1, 3, 64, 64)).shape
        torch.Size([1, 3, 64, 64])
    """

    def _combine(self, activations: Tensor, gradients: Tensor) -> Tensor:
        return (gradients * activations).relu_().sum(dim=2).transpose(0, 1)

    def _terms(self, activations: Tensor, gradients: Tensor) -> Tensor:
        return (gradients * activations).relu_().transpose(0, 1)


class EigenGradCAM(BaseCAM):
    """EigenGrad-CAM (pytorch-grad-cam's ``EigenGradCAM``): the first principal component of ``G * A``.

    EigenCAM (Muhammad & Yeasin, 2020) applied to the gradient-weighted activations ``G_c * A_c`` of each
    image and class instead of the activations, so the map depends on the class: the ``h * w`` positions
    of ``G * A (C, h, w)`` are centred and projected on their first principal component
    ([`principal_component_maps`][hiercam.principal_component_maps], oriented to correlate non-negatively
    with HiResCAM's ``sum_c G_c * A_c``; pytorch-grad-cam keeps LAPACK's arbitrary sign), then ReLU'd.
    It is HiResCAM with ``eigen_smooth=True``; the option is therefore not taken.

    Args:
        model: the classifier (see [`BaseCAM`][hiercam.BaseCAM]).
        target_layer: the layer explained, as for [`BaseCAM`][hiercam.BaseCAM].
        classifier: as for [`BaseCAM`][hiercam.BaseCAM].
        closed_form: as for [`BaseCAM`][hiercam.BaseCAM].
        reshape: as for [`BaseCAM`][hiercam.BaseCAM].
        output: as for [`BaseCAM`][hiercam.BaseCAM].

    Examples:
        >>> import torch
        >>> from torchvision.models import resnet18
        >>> EigenGradCAM(resnet18(num_classes=3), "layer3")(torch.randn(2, 3, 64, 64), [0, 2]).shape
        torch.Size([2, 2, 64, 64])
    """

    def __init__(
        self,
        model: nn.Module,
        target_layer: LayerArg = None,
        *,
        classifier: nn.Linear | str | None = None,
        closed_form: bool = True,
        reshape: ReshapeArg = "auto",
        output: OutputArg = None,
    ) -> None:
        super().__init__(
            model,
            target_layer,
            classifier=classifier,
            closed_form=closed_form,
            reshape=reshape,
            output=output,
        )

    def _combine(self, activations: Tensor, gradients: Tensor) -> Tensor:
        if should_check() and not (all_finite(activations) and all_finite(gradients)):
            return self._terms(activations, gradients).sum(dim=2)  # non-finite: the engine names them
        return smoothed_maps(lambda part: self._terms(activations, gradients[part]), gradients.shape[0])

    def _terms(self, activations: Tensor, gradients: Tensor) -> Tensor:
        return (gradients * activations).transpose(0, 1)
