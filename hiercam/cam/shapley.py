"""ShapleyCAM: Grad-CAM whose gradients carry a second-order (Hessian-vector product) term.

Cai (2025, "CAMs as Shapley value-based explainers", arXiv:2501.06261) reads CAM weights as a Taylor
expansion of the class score around the activation ``A``: the first-order term is the gradient ``G``, the
second-order term the Hessian-vector product ``H A`` (``H`` the Hessian of the score with respect to ``A``).
Its channel weights are ``mean_hw(G - H A / 2)``; the map is ``ReLU(sum_c w_c A_c)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from hiercam.cam._autograd import is_batching_failure
from hiercam.cam._classes import ClassesArg
from hiercam.cam._heads import HeadState
from hiercam.cam.methods import GradCAM
from hiercam.cam.targets import TargetsArg

__all__ = ["ShapleyCAM"]

_GRADIENT_BYTES = 128 * 2**20  # memory budget of one chunk of classes (the second-order graph is kept too)


class ShapleyCAM(GradCAM):
    """ShapleyCAM (Cai, 2025): channel weights ``mean_hw(G - H A / 2)``, ``H A`` a Hessian-vector product.

    ``G`` is the gradient of the class score with respect to the target activation ``A`` and ``H A`` the
    product of the score's Hessian (with respect to ``A``) with ``A`` itself, ``H A = d(G . A) / dA`` with
    the second ``A`` held fixed, as pytorch-grad-cam's ``ShapleyCAM`` computes it. The map is
    ``ReLU(sum_c mean_hw(G_c - (H A)_c / 2) A_c)``.

    Every requested class takes part in two batched backward passes (``is_grads_batched``): the gradients
    with their graph kept (``create_graph``), then the Hessian-vector products of all classes. Where the path
    from the layer to the scores is piecewise linear (ReLU, max pool, batch norm in eval mode, linear
    layers) the Hessian is zero and the maps equal Grad-CAM's; a smooth activation (GELU, SiLU, Hardswish,
    a sigmoid gate) or a softmax target makes the second-order term count. Where the closed form of
    [`BaseCAM`][hiercam.BaseCAM] is verified (an affine path: the Hessian is exactly zero) it is used.
    ``softmax_over`` is refused: its exact gradients are derived from first-order terms only.

    Args:
        model: the classifier (see [`BaseCAM`][hiercam.BaseCAM]).
        target_layer: the layer explained, as for [`BaseCAM`][hiercam.BaseCAM].
        classifier: as for [`BaseCAM`][hiercam.BaseCAM].
        closed_form: as for [`BaseCAM`][hiercam.BaseCAM].
        reshape: as for [`BaseCAM`][hiercam.BaseCAM].
        output: as for [`BaseCAM`][hiercam.BaseCAM].
        eigen_smooth: as for [`BaseCAM`][hiercam.BaseCAM].

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.GELU(), nn.Conv2d(8, 8, 3), nn.GELU(),
        ...                       nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
        >>> ShapleyCAM(model, "1")(torch.randn(2, 3, 16, 16), [0, 3]).shape
        torch.Size([2, 2, 16, 16])
    """

    def _gradients(self, scores: Tensor, activation: Tensor, head: HeadState) -> Tensor:
        return shapley_gradients(scores, activation, head.name)

    def _check_softmax_over(
        self, value: Tensor, batch: int, classes: ClassesArg, targets: TargetsArg
    ) -> Tensor:
        raise ValueError(
            "`softmax_over` is not available for ShapleyCAM: its second-order term would need the Hessian "
            "of the softmax target"
        )


def shapley_gradients(scores: Tensor, activation: Tensor, layer: str | None) -> Tensor:
    """``G - H A / 2`` ``(K', B, ...)`` for each column of ``scores (B, K')`` with respect to ``activation``.

    As in the engine's batched gradients, each column is summed over the batch (samples do not interact in
    eval mode, so every image keeps its own gradient and its own Hessian block); both backward passes are
    batched over the columns, by chunks, and fall back to one column at a time only where an op has no
    batching rule.
    """
    if not scores.requires_grad:
        raise ValueError(f"the logits of `model` do not depend on `target_layer` {layer!r} through autograd")
    count = scores.shape[1]
    chunk = max(1, _GRADIENT_BYTES // max(1, 4 * activation.numel() * activation.element_size()))
    pieces = []
    for start in range(0, count, chunk):
        part = scores[:, start : start + chunk]
        try:
            try:
                pieces.append(_batched(part, activation, layer))
            except RuntimeError as error:
                if not is_batching_failure(error):
                    raise
                pieces.extend(_batched(part[:, j : j + 1], activation, layer) for j in range(part.shape[1]))
        except RuntimeError as error:
            if "is not implemented" not in str(error) or "derivative for" not in str(error):
                raise
            raise ValueError(
                f"ShapleyCAM needs second derivatives of `model` after `target_layer` {layer!r}, and torch "
                f"has none for one of its ops ({error}); choose a later `target_layer` or another method"
            ) from error
    return torch.cat(pieces)


def _batched(part: Tensor, activation: Tensor, layer: str | None) -> Tensor:
    """``G - H A / 2`` of the columns of ``part (B, n)``, two batched backward passes."""
    batch, n = part.shape
    batched = n > 1  # one column: a plain backward (no vmap)
    seeds = (
        torch.eye(n, dtype=part.dtype, device=part.device)[:, None, :].expand(n, batch, n).contiguous()
        if batched
        else torch.ones_like(part)
    )
    gradients: Tensor | None = torch.autograd.grad(
        part,
        activation,
        seeds,
        retain_graph=True,
        create_graph=True,
        allow_unused=True,
        is_grads_batched=batched,
    )[0]
    if gradients is None:
        raise ValueError(f"`target_layer` {layer!r} does not influence the logits of `model`")
    if not batched:
        gradients = gradients[None]
    if not gradients.requires_grad:  # the scores are affine in the activation: H = 0
        return gradients.detach().float()
    inner = (gradients * activation.detach()).flatten(1).sum(dim=1)  # (n,): G_k . A, A held fixed
    products: Tensor | None = torch.autograd.grad(
        inner,
        activation,
        torch.eye(n, dtype=inner.dtype, device=inner.device) if batched else torch.ones_like(inner),
        retain_graph=True,
        allow_unused=True,
        is_grads_batched=batched,
    )[0]
    if products is None:
        return gradients.detach().float()
    if not batched:
        products = products[None]
    return gradients.detach().float() - 0.5 * products.detach().float()
