"""KPCA-CAM: the first kernel principal component of the target layer's activations (no gradients)."""

from __future__ import annotations

from typing import ClassVar, Literal, get_args

import torch
from torch import Tensor, nn

from hiercam._validation import all_finite, check_choice, check_float, check_int, check_tensor, should_check
from hiercam.cam._heads import HeadState, MapPlan
from hiercam.cam._pca import orient_projections
from hiercam.cam.eigen import non_finite_activation
from hiercam.cam.engine import BaseCAM
from hiercam.cam.reshape import ReshapeArg
from hiercam.cam.targets import OutputArg

__all__ = ["KPCACAM", "Kernel", "kernel_principal_component_maps"]

Kernel = Literal["sigmoid", "rbf", "poly", "linear", "cosine"]
"""The kernels of scikit-learn's ``KernelPCA`` that KPCA-CAM offers."""


def _kernel_matrix(samples: Tensor, kernel: Kernel, gamma: float, degree: int, coef0: float) -> Tensor:
    """``(N, n, n)`` kernel of the rows of ``samples (N, n, C)``, with scikit-learn's ``pairwise_kernels``."""
    if kernel == "rbf":
        return torch.exp(-gamma * torch.cdist(samples, samples).square())
    if kernel == "cosine":
        unit = samples / samples.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(samples.dtype).tiny)
        return torch.matmul(unit, unit.transpose(-1, -2))
    dot = torch.matmul(samples, samples.transpose(-1, -2))
    if kernel == "linear":
        return dot
    if kernel == "poly":
        return (gamma * dot + coef0) ** degree
    return torch.tanh(gamma * dot + coef0)


def kernel_principal_component_maps(
    activations: Tensor,
    kernel: Kernel = "sigmoid",
    gamma: float | None = None,
    *,
    degree: int = 3,
    coef0: float = 1.0,
) -> Tensor:
    """The projection of every position on the first kernel principal component of the channels.

    For each map ``X (C, h, w)``, the ``n = h * w`` positions are the samples and the ``C`` channels the
    features. As pytorch-grad-cam's ``get_2d_projection_kernel`` does, the positions are centred first; the
    kernel matrix ``K (n, n)`` of the centred positions is centred in feature space
    (``K - 1K - K1 + 1K1``, ``1`` the ``n x n`` matrix of ``1 / n``), and the projection is ``sqrt(l) * u``,
    ``l`` the largest eigenvalue of the centred kernel and ``u`` its unit eigenvector (0 where ``l <= 0``):
    what scikit-learn's ``KernelPCA(n_components=1).fit_transform`` returns. The kernels are scikit-learn's:
    ``"sigmoid"`` ``tanh(gamma <x, y> + coef0)``, ``"rbf"`` ``exp(-gamma |x - y|^2)``, ``"poly"``
    ``(gamma <x, y> + coef0)^degree``, ``"linear"`` ``<x, y>`` and ``"cosine"``; ``gamma=None`` is ``1 / C``.

    **Sign.** An eigenvector has no sign of its own. scikit-learn makes the entry of largest magnitude
    positive; hiercam orients ``u`` as [`principal_component_maps`][hiercam.principal_component_maps]
    orients its axis, so that the map correlates non-negatively with the sum over channels of the centred
    positions (where that sum carries no sign, the entry of largest magnitude is made positive). With the
    linear kernel the result is then exactly ``principal_component_maps`` (EigenCAM).

    Cost: one ``n x n`` kernel and one symmetric eigendecomposition (``O(n^3)``) per map; fine for a last
    convolutional layer (``7 x 7`` to ``28 x 28`` positions), slow for early, large layers (``56 x 56``
    positions: a ``3136 x 3136`` matrix per image).

    Args:
        activations: ``(..., C, h, w)``, floating point, finite.
        kernel: ``"sigmoid"`` (pytorch-grad-cam's default), ``"rbf"``, ``"poly"``, ``"linear"`` or
            ``"cosine"``.
        gamma: the kernel coefficient of ``"sigmoid"``, ``"rbf"`` and ``"poly"``, ``> 0``; ``None``:
            ``1 / C``.
        degree: the degree of ``"poly"``, ``>= 1``.
        coef0: the constant of ``"sigmoid"`` and ``"poly"``.

    Returns:
        Projections ``(..., h, w)`` (not ReLU'd), in the dtype of ``activations``.

    Raises:
        TypeError: ``activations`` is not a floating-point tensor, or an option has the wrong type.
        ValueError: ``activations`` has fewer than 3 dimensions, ``kernel`` is unknown, ``gamma`` is not
            positive or ``degree`` below 1.

    Examples:
        >>> import torch
        >>> a = torch.zeros(2, 2, 2)
        >>> a[0] = torch.tensor([[4.0, 0.0], [0.0, 0.0]])  # channel 0 peaks top-left
        >>> a[1] = 0.5 * a[0]  # channel 1 is the same pattern
        >>> kernel_principal_component_maps(a, "linear").round(decimals=3)  # EigenCAM's projection
        tensor([[ 3.3540, -1.1180],
                [-1.1180, -1.1180]])
        >>> bool(kernel_principal_component_maps(a, "rbf").argmax() == 0)
        True
    """
    check_tensor(activations, "activations", floating=True)
    if activations.ndim < 3:
        raise ValueError(f"`activations` must have shape (..., C, h, w), got {tuple(activations.shape)}")
    kernel, gamma, degree, coef0 = _check_kernel(kernel, gamma, degree, coef0)
    *lead, channels, height, width = activations.shape
    samples = activations.reshape(-1, channels, height * width).transpose(1, 2)  # (N, n, C)
    if samples.numel() == 0:
        return activations.new_zeros(*lead, height, width)
    centred = samples - samples.mean(dim=1, keepdim=True)
    matrix = _kernel_matrix(centred, kernel, 1.0 / channels if gamma is None else gamma, degree, coef0)
    matrix = matrix - matrix.mean(dim=1, keepdim=True)
    matrix = matrix - matrix.mean(dim=2, keepdim=True)  # K - 1K - K1 + 1K1
    values, vectors = torch.linalg.eigh((matrix + matrix.transpose(-1, -2)) / 2)
    top, vector = values[:, -1].clamp_min(0), vectors[:, :, -1]  # (N,), (N, n)
    projection: Tensor = orient_projections(vector, centred) * top.sqrt()[:, None]
    return projection.reshape(*lead, height, width)


def _check_kernel(
    kernel: object, gamma: object, degree: object, coef0: object
) -> tuple[Kernel, float | None, int, float]:
    chosen = check_choice(kernel, "kernel", get_args(Kernel))
    scale = None if gamma is None else check_float(gamma, "gamma", minimum=0.0, exclusive=True)
    return chosen, scale, check_int(degree, "degree", minimum=1), check_float(coef0, "coef0")


class KPCACAM(BaseCAM):
    """KPCA-CAM (Karmani et al., 2024): ``ReLU`` of the activations' first kernel principal component.

    EigenCAM with a kernel: the ``h * w`` positions of the target activation ``A (C, h, w)`` of each image
    are projected on the first principal component of their kernel matrix
    ([`kernel_principal_component_maps`][hiercam.kernel_principal_component_maps]), as pytorch-grad-cam's
    ``KPCA_CAM`` does with scikit-learn's ``KernelPCA``, batched here in torch on the activation's device.
    The map does not depend on the class: every requested class gets the same map (``classes`` still
    selects how many, and a ``(B, K)`` mask still zeroes absent classes). One forward pass under
    ``no_grad``; no gradient, no classifier.

    Args:
        model: the classifier (see [`BaseCAM`][hiercam.BaseCAM]; multi-head models average the heads' maps).
        target_layer: the layer explained, as for [`BaseCAM`][hiercam.BaseCAM].
        kernel: ``"sigmoid"`` (the default, as in pytorch-grad-cam), ``"rbf"``, ``"poly"``, ``"linear"``
            (EigenCAM) or ``"cosine"``.
        gamma: the kernel coefficient, ``> 0``; ``None``: ``1 / C`` (scikit-learn's default).
        degree: the degree of the ``"poly"`` kernel (scikit-learn's default 3).
        coef0: the constant of the ``"sigmoid"`` and ``"poly"`` kernels (scikit-learn's default 1).
        reshape: as for [`BaseCAM`][hiercam.BaseCAM].
        output: as for [`BaseCAM`][hiercam.BaseCAM].

    Raises:
        TypeError, ValueError: an unknown ``kernel``, a ``gamma`` that is not positive, a ``degree`` below 1
            (and as for [`BaseCAM`][hiercam.BaseCAM]).

    Examples:
        >>> import torch
        >>> from torchvision.models import resnet18
        >>> cam = KPCACAM(resnet18(num_classes=3), "layer3", kernel="rbf")
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
        kernel: Kernel = "sigmoid",
        gamma: float | None = None,
        degree: int = 3,
        coef0: float = 1.0,
        reshape: ReshapeArg = "auto",
        output: OutputArg = None,
    ) -> None:
        self.kernel, self.gamma, self.degree, self.coef0 = _check_kernel(kernel, gamma, degree, coef0)
        super().__init__(model, target_layer, closed_form=False, reshape=reshape, output=output)

    def _extra_repr(self) -> str:
        return f"kernel={self.kernel!r}, gamma={self.gamma}, class_agnostic=True"

    def _head_maps(self, head: HeadState, logits: Tensor, plan: MapPlan) -> Tensor:
        _, features = self._features(head)
        if should_check() and not all_finite(features):
            raise non_finite_activation(head)
        projection = kernel_principal_component_maps(
            features, self.kernel, self.gamma, degree=self.degree, coef0=self.coef0
        )
        resolved = plan.resolved
        return projection[:, None].expand(-1, resolved.count if resolved.indices else 0, -1, -1)
