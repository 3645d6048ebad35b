"""FEM, the feature explanation method: channels weighted by how often they fire far above their own mean."""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor, nn

from hiercam._validation import all_finite, check_float, check_tensor, should_check
from hiercam.cam._heads import HeadState, MapPlan
from hiercam.cam._pca import smoothed_maps
from hiercam.cam.eigen import non_finite_activation
from hiercam.cam.engine import BaseCAM
from hiercam.cam.methods import _weighted_sum, _weighted_terms
from hiercam.cam.reshape import ReshapeArg
from hiercam.cam.targets import OutputArg

__all__ = ["FEM", "fem_weights"]


def fem_weights(activations: Tensor, k: float = 2.0) -> Tensor:
    """FEM's channel weights: the fraction of positions where a channel exceeds its mean by ``k`` std.

    For each image ``b`` and channel ``c``, with ``mu`` and ``sigma`` the mean and the population standard
    deviation (``ddof = 0``, NumPy's ``np.std``) of ``A_bc`` over the ``h * w`` positions, the weight is
    ``mean_hw(A_bc > mu + k * sigma)``: the share of positions in the channel's upper tail (the k-sigma rule).

    Args:
        activations: ``(B, C, h, w)``, floating point.
        k: how many standard deviations above the mean a position must be, any finite real number.

    Returns:
        Weights ``(B, C)`` in ``[0, 1]``, in the dtype of ``activations``.

    Raises:
        TypeError: ``activations`` is not a floating-point tensor, or ``k`` not a real number.
        ValueError: ``activations`` is not 4-dimensional, or ``k`` is not finite.

    Examples:
        >>> import torch
        >>> a = torch.zeros(1, 2, 2, 2)
        >>> a[0, 0, 0, 0] = 4.0  # one outlier among four positions
        >>> fem_weights(a, k=1.0)  # 4 > mean 1 + std 1.73; the constant channel never exceeds its mean
        tensor([[0.2500, 0.0000]])
    """
    check_tensor(activations, "activations", dims="B, C, h, w", floating=True)
    k = check_float(k, "k")
    mean = activations.mean(dim=(-2, -1), keepdim=True)
    std = activations.std(dim=(-2, -1), keepdim=True, correction=0)
    return (activations > mean + k * std).to(activations.dtype).mean(dim=(-2, -1))


class FEM(BaseCAM):
    """FEM (Fuad et al., 2020): ``ReLU(sum_c w_c * A_c)`` with [`fem_weights`][hiercam.fem_weights].

    The feature explanation method weights each channel of the target activation ``A (B, C, h, w)`` by the
    fraction of its positions that lie more than ``k`` standard deviations above the channel's mean, as
    pytorch-grad-cam's ``FEM`` does. No gradient and no classifier: the map does not depend on the class, and
    every requested class gets the same map (``classes`` still selects how many, and a ``(B, K)`` mask still
    zeroes absent classes). One forward pass under ``no_grad``.

    The largest z-score among ``n`` values is ``sqrt(n - 1)``: with ``k = 2`` a layer needs at least 6
    positions for any weight to be non-zero (ResNet's ``layer4`` at a 64 x 64 input has 4, and all-zero
    maps); lower ``k`` for tiny maps.

    Args:
        model: the classifier (see [`BaseCAM`][hiercam.BaseCAM]; multi-head models average the heads' maps).
        target_layer: the layer explained, as for [`BaseCAM`][hiercam.BaseCAM].
        k: the threshold in standard deviations above each channel's mean (pytorch-grad-cam's default 2).
        eigen_smooth: as for [`BaseCAM`][hiercam.BaseCAM] (the principal component of ``w_c * A_c``).
        reshape: as for [`BaseCAM`][hiercam.BaseCAM].
        output: as for [`BaseCAM`][hiercam.BaseCAM].

    Raises:
        TypeError, ValueError: ``k`` is not a finite real number (and as for [`BaseCAM`][hiercam.BaseCAM]).

    Examples:
        >>> import torch
        >>> from torchvision.models import resnet18
        >>> maps = FEM(resnet18(num_classes=3), "layer3")(torch.randn(2, 3, 64, 64), [0, 2])
        >>> maps.shape, bool(torch.equal(maps[:, 0], maps[:, 1]))
        (torch.Size([2, 2, 64, 64]), True)
    """

    _needs_graph: ClassVar[bool] = False

    def __init__(
        self,
        model: nn.Module,
        target_layer: nn.Module | str | None = None,
        *,
        k: float = 2.0,
        eigen_smooth: bool = False,
        reshape: ReshapeArg = "auto",
        output: OutputArg = None,
    ) -> None:
        self.k = check_float(k, "k")
        super().__init__(
            model, target_layer, closed_form=False, eigen_smooth=eigen_smooth, reshape=reshape, output=output
        )

    def _extra_repr(self) -> str:
        return f"k={self.k}, class_agnostic=True"

    def _head_maps(self, head: HeadState, logits: Tensor, plan: MapPlan) -> Tensor:
        _, features = self._features(head)
        count = plan.resolved.count if plan.resolved.indices else 0
        if should_check() and not all_finite(features):
            raise non_finite_activation(head)
        weights = fem_weights(features, self.k)[None]  # (1, B, C): one map for every class
        if self.eigen_smooth:
            maps = smoothed_maps(lambda part: _weighted_terms(weights[part], features), 1)
        else:
            maps = _weighted_sum(weights, features)
        return maps.expand(-1, count, -1, -1) if count else maps[:, :0]
