"""First principal component of weighted activations: EigenCAM and the ``eigen_smooth`` option."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from hiercam._validation import check_tensor, format_shape

__all__ = ["principal_component_maps", "smoothed_maps"]

_TERMS_BYTES = 256 * 2**20  # memory budget for one chunk of weighted activations (B, k, C, h, w)


def principal_component_maps(activations: Tensor) -> Tensor:
    """The projection of every position on the first principal component of the channels.

    For each map ``X (C, h, w)`` (the activations of one image, or one class's weighted activations), the
    ``h * w`` positions are the samples and the ``C`` channels the features: the positions are centred (the
    mean over positions of each channel is subtracted), ``v`` is the first right singular vector of the
    centred ``(h * w, C)`` matrix, and the map is the projection of each centred position on ``v``. This is
    pytorch-grad-cam's ``get_2d_projection`` (EigenCAM, ``eigen_smooth``), batched in torch.

    **Sign.** A principal axis has no sign of its own; pytorch-grad-cam keeps whatever sign LAPACK returns
    (then applies a ReLU, so a map may come out as the negative part). hiercam orients ``v`` so that its
    entries sum to a non-negative number, which is the same as asking the map to correlate non-negatively
    with the plain sum over channels (the map of the method without smoothing, or the mean activation for
    EigenCAM): ``p . centred(X.sum(C)) = s1^2 * sum(v)``. Where LAPACK's sign agrees, the maps are equal.
    Where that correlation is zero to rounding (``|p . r| <= sqrt(eps) |p| sqrt(C) |X|``; e.g. the outputs
    of a LayerNorm, whose channels sum to the same value at every position), the entry of largest magnitude
    is made positive, as scikit-learn's ``svd_flip`` does.

    Args:
        activations: ``(..., C, h, w)``, floating point, finite.

    Returns:
        Projections ``(..., h, w)`` (not ReLU'd), in the dtype of ``activations``.

    Raises:
        TypeError: ``activations`` is not a floating-point tensor.
        ValueError: ``activations`` has fewer than 3 dimensions.

    Examples:
        >>> import torch
        >>> a = torch.zeros(2, 2, 2)
        >>> a[0] = torch.tensor([[4.0, 0.0], [0.0, 0.0]])  # channel 0 peaks top-left
        >>> a[1] = 0.5 * a[0]  # channel 1 is the same pattern
        >>> principal_component_maps(a).round(decimals=3)
        tensor([[ 3.3540, -1.1180],
                [-1.1180, -1.1180]])
    """
    check_tensor(activations, "activations", floating=True)
    if activations.ndim < 3:
        raise ValueError(
            f"`activations` must have shape (..., C, h, w), got {format_shape(activations.shape)}"
        )
    *lead, channels, height, width = activations.shape
    samples = activations.reshape(-1, channels, height * width).transpose(1, 2)  # (N, hw, C)
    centred = samples - samples.mean(dim=1, keepdim=True)
    if centred.numel() == 0:
        return centred.new_zeros(*lead, height, width)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    projection = (centred @ vh[:, 0, :, None]).squeeze(-1)  # (N, hw)
    return orient_projections(projection, centred).reshape(*lead, height, width)


def orient_projections(projections: Tensor, centred: Tensor) -> Tensor:
    """Projections ``(N, n)`` of centred positions ``(N, n, C)``, signed to correlate with the channel sum.

    Each projection correlates non-negatively with the sum over channels of its positions.

    Where that correlation is zero to rounding (``|p . r| <= sqrt(eps) * |p| * sqrt(C) * |X|``, ``r`` the
    channel sum, which ``sqrt(C) * |X|`` bounds: e.g. LayerNorm outputs, whose channels sum to the same value
    at every position, so that ``r`` is rounding noise), its sign would change with the LAPACK build; the
    entry of largest magnitude is made positive instead (scikit-learn's ``svd_flip`` rule).
    """
    reference = centred.sum(dim=-1)
    direction = (projections * reference).sum(dim=-1)
    bound = projections.norm(dim=-1) * centred.shape[-1] ** 0.5 * centred.flatten(1).norm(dim=-1)
    decided = direction.abs() > torch.finfo(projections.dtype).eps ** 0.5 * bound
    largest = projections.gather(-1, projections.abs().argmax(dim=-1, keepdim=True)).squeeze(-1)
    flip = torch.where(decided, direction < 0, largest < 0)
    return torch.where(flip[:, None], -projections, projections)


def smoothed_maps(terms_of: Callable[[slice], Tensor], count: int) -> Tensor:
    """Eigen-smoothed maps ``(B, K', h, w)`` from ``terms_of(classes) -> (B, k, C, h, w)``, by class chunks.

    The weighted activations of all classes at once would take ``B * K' * C * h * w`` values; they are built
    and projected a few classes at a time (about 256 MiB each).
    """
    first = terms_of(slice(0, 1))
    chunk = max(1, _TERMS_BYTES // max(1, first.numel() * first.element_size()))
    pieces = [principal_component_maps(first)]
    del first
    for start in range(1, count, chunk):
        pieces.append(principal_component_maps(terms_of(slice(start, start + chunk))))
    return torch.cat(pieces, dim=1)
