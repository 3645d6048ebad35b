"""The softmax-over-present-classes target, in closed form from the gradients of the logits.

Grad-CAM explains a class by the gradient of its logit ``z_c``. On images with several classes, the
features that several of them share (a cow on grass, a boat on water) raise every one of their logits, so
each class's map also covers the others. Explaining instead

``t_c = log softmax(z restricted to S_c)[c] = z_c - logsumexp_{j in S_c} z_j``, with ``S_c`` the image's
present classes plus ``c``,

subtracts from each class's gradient the softmax-weighted gradients of the classes it competes with in that
image:

``d t_c / dA = d z_c / dA - sum_{j in S_c} p_j d z_j / dA``, ``p = softmax(z restricted to S_c)``.

This is the chain rule, exact for every gradient-based method (the method then combines these gradients with
the activations as it does with any target's), and it costs one ``einsum`` over the gradients of all
classes that the engine computes anyway: no extra forward or backward pass. A class with no competitor in
its image (``S_c = {c}``) would have the constant log-probability 0 and no map: it keeps the gradient of its
logit, i.e. its plain map.

What the published methods do, and how this differs: ReCAM (Chen et al., CVPR 2022) trains an extra
softmax cross-entropy head on CAM-weighted features and reads the CAMs of the re-trained network; this is
training-free and changes only the target that is explained. pytorch-grad-cam's
``ClassifierOutputSoftmaxTarget`` uses the softmax over all ``K`` classes; here only the classes present in
the image compete, so classes that are absent (and usually have very low logits) do not dilute it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from hiercam._validation import format_shape, should_check, type_name

__all__ = ["check_softmax_over", "softmax_over_gradients"]


def check_softmax_over(value: object, batch: int) -> Tensor:
    """Validate a ``softmax_over`` argument: a ``(B, K)`` bool or 0/1 tensor; returned as bool."""
    if not isinstance(value, Tensor):
        raise TypeError(f"`softmax_over` must be a (B, K) tensor of 0/1 labels, got {type_name(value)}")
    if value.ndim != 2 or value.shape[0] != batch:
        raise ValueError(
            f"`softmax_over` must have shape (B, K) with B = {batch} images, got {format_shape(value.shape)}"
        )
    if value.dtype != torch.bool:
        if value.is_complex() or (should_check(value) and not bool(((value == 0) | (value == 1)).all())):
            raise ValueError("`softmax_over` must hold 0/1 labels (or bools)")
        value = value != 0
    return value


def softmax_over_gradients(gradients: Tensor, logits: Tensor, present: Tensor) -> Tensor:
    """The gradients of ``log softmax`` over each image's present classes, from those of the logits.

    Args:
        gradients: ``(K, B, ...)``: the gradient of every class's logit (the first dimension, in class
            order) for each image.
        logits: ``(B, K)`` logits of the forward pass.
        present: ``(B, K)`` bool: the classes of each image.

    Returns:
        ``(K, B, ...)`` float32: ``d z_c - sum_{j in S_c} p_j d z_j`` with ``S_c`` the image's classes plus
        ``c`` and ``p`` the softmax of the logits over ``S_c``; ``d z_c`` itself where ``S_c = {c}``.

    Raises:
        ValueError: the shapes do not agree.

    Examples:
        >>> import torch
        >>> grads = torch.eye(2).reshape(2, 1, 2)  # d z_0 = (1, 0), d z_1 = (0, 1), one image
        >>> softmax_over_gradients(grads, torch.zeros(1, 2), torch.tensor([[True, True]]))[:, 0]
        tensor([[ 0.5000, -0.5000],
                [-0.5000,  0.5000]])
    """
    num_classes, batch = int(logits.shape[1]), int(logits.shape[0])
    if logits.ndim != 2 or tuple(present.shape) != (batch, num_classes):
        raise ValueError(
            f"`logits` {format_shape(logits.shape)} and `present` {format_shape(present.shape)} must both be "
            "(B, K)"
        )
    if gradients.ndim < 2 or tuple(gradients.shape[:2]) != (num_classes, batch):
        raise ValueError(
            f"`gradients` must be (K, B, ...) = ({num_classes}, {batch}, ...), "
            f"got {format_shape(gradients.shape)}"
        )
    own = torch.eye(num_classes, dtype=torch.bool, device=logits.device).unsqueeze(1)  # (c, 1, j)
    members = present.to(logits.device).unsqueeze(0) | own  # (c, b, j): S_c of each image
    scores = logits.float().unsqueeze(0).expand(num_classes, -1, -1)
    weights = torch.softmax(scores.masked_fill(~members, -torch.inf), dim=-1)  # (c, b, j)
    alone = members.sum(-1, keepdim=True) == 1  # no competitor: the logit's own gradient
    weights = weights.masked_fill(alone, 0.0)
    flat = gradients.float().flatten(2)  # (j, b, n)
    mixed = torch.einsum("cbj,jbn->cbn", weights, flat)
    return (flat - mixed).view_as(gradients)
