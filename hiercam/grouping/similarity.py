"""Class similarity (paper section 3.2): class vectors from the last linear layer, Euclidean distances.

Each class ``k`` is represented by row ``k`` of the weight matrix of the classifier's last fully connected
layer (Eq. 1 uses these rows, ``x_i``), and classes are compared by the Euclidean distance between rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from hiercam._validation import all_finite, check_finite, check_tensor, format_shape, should_check, type_name

__all__ = ["class_embeddings", "class_distances", "MultiHeadClassifier"]


@runtime_checkable
class MultiHeadClassifier(Protocol):
    """A model with several parallel classifier heads over the same classes (e.g. ``TwoBranchNet``).

    [`class_embeddings`][hiercam.class_embeddings] averages the weights of the heads it returns.
    """

    def classifier_heads(self) -> Sequence[nn.Linear]:
        """The parallel ``nn.Linear`` heads, each of weight shape ``(K, D)``."""
        ...


def class_embeddings(source: nn.Module | Tensor, layer: str | None = None) -> Tensor:
    """Class vectors of Eq. 1: the rows of a classifier's last ``nn.Linear`` weight.

    ``source`` may be:

    * a weight tensor of shape ``(K, D)``;
    * an ``nn.Linear`` (its ``weight``);
    * a model. With ``layer=None`` the classifier is found automatically: a model with several parallel
      heads ([`MultiHeadClassifier`][hiercam.grouping.MultiHeadClassifier], e.g. ``TwoBranchNet``) gives
      the mean of its heads; a timm model
      its ``get_classifier()``; any other model (torchvision ResNet, VGG, MobileNet, DenseNet,
      EfficientNet, ConvNeXt, a plain ``nn.Sequential``...) its last registered ``nn.Linear``. If another
      linear layer of the same shape sits in a different place (parallel heads), the choice is ambiguous
      and a ``ValueError`` asks for ``layer``.

    The bias is not part of the class vector, as in the paper.

    Args:
        source: weight tensor ``(K, D)``, ``nn.Linear`` or model.
        layer: dotted name of the linear layer inside ``source`` (e.g. ``"fc"``, ``"classifier.6"``,
            ``"branches.0.classifier"``), to bypass the automatic choice.

    Returns:
        A detached float32 copy of shape ``(K, D)``, on the device of ``source``.

    Raises:
        TypeError: ``source`` is neither a tensor nor a module, or ``layer`` does not name an ``nn.Linear``.
        ValueError: a weight tensor that is not 2-D, a missing ``layer``, no linear layer, or several.

    Examples:
        >>> import torch
        >>> from torchvision.models import resnet18
        >>> class_embeddings(resnet18(num_classes=20)).shape
        torch.Size([20, 512])
        >>> head = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(8, 3))
        >>> torch.equal(class_embeddings(head), head[1].weight)
        True
    """
    if isinstance(source, Tensor):
        weight = check_tensor(source, "source", dims="K, D", floating=True)
    elif isinstance(source, nn.Module):
        if layer is not None:
            weight = _named_linear(source, layer).weight
        elif isinstance(source, MultiHeadClassifier):
            weight = torch.stack([head.weight.detach().float() for head in source.classifier_heads()]).mean(0)
        else:
            weight = _find_classifier(source).weight
    else:
        raise TypeError(f"`source` must be an nn.Module or a (K, D) tensor, got {type_name(source)}")
    return weight.detach().to(dtype=torch.float32, copy=True)


def class_distances(embeddings: Tensor) -> Tensor:
    """Pairwise Euclidean distances between class vectors (Eq. 1): ``d(x_i, x_j) = ||x_i - x_j||_2``.

    Computed from the differences (not through ``|x|^2 + |y|^2 - 2 x.y``), so the result is exactly
    symmetric with an exact zero diagonal. The vectors are divided by their largest magnitude and the
    distances computed in float64 (float32 on Apple's MPS, which has no float64), then scaled back and cast to
    the input dtype: finite input gives finite, accurate distances at any scale (float32 vectors of 1e30 or
    1e-30, float16 and bfloat16 vectors included), unless a distance itself exceeds the input dtype's range.

    Args:
        embeddings: class vectors of shape ``(K, D)``, e.g. from
            [`class_embeddings`][hiercam.class_embeddings]; any floating dtype.

    Returns:
        Distances of shape ``(K, K)``, in the dtype and on the device of ``embeddings``; differentiable.

    Raises:
        TypeError: ``embeddings`` is not a floating-point tensor.
        ValueError: ``embeddings`` is not 2-D or holds NaN/inf, or a distance exceeds the largest value of
            its dtype (pass float64 vectors then).

    Examples:
        >>> import torch
        >>> class_distances(torch.tensor([[0.0, 0.0], [3.0, 4.0]]))
        tensor([[0., 5.],
                [5., 0.]])
        >>> class_distances(torch.tensor([[0.0, 0.0], [3e30, 4e30]]))
        tensor([[0.0000e+00, 5.0000e+30],
                [5.0000e+30, 0.0000e+00]])
    """
    check_tensor(embeddings, "embeddings", dims="K, D", floating=True)
    check_finite(embeddings, "embeddings")
    work = torch.float32 if embeddings.device.type == "mps" else torch.float64
    points = embeddings.to(work)
    scale = points.detach().abs().amax() if points.numel() else points.new_zeros(())
    if bool(scale > 0):
        points = points / scale
    else:
        scale = points.new_ones(())
    distances = torch.cdist(points, points, compute_mode="donot_use_mm_for_euclid_dist") * scale
    result = distances.to(embeddings.dtype)
    if should_check() and not all_finite(result):
        raise ValueError(
            f"the distances between `embeddings` exceed the largest {embeddings.dtype} value "
            f"({torch.finfo(embeddings.dtype).max:.4g}); pass the vectors in float64"
        )
    return result


def _named_linear(model: nn.Module, layer: str) -> nn.Linear:
    try:
        module = model.get_submodule(layer)
    except AttributeError:
        raise ValueError(f"`layer` {layer!r} does not name a submodule of {type_name(model)}") from None
    if not isinstance(module, nn.Linear):
        raise TypeError(f"`layer` {layer!r} must name an nn.Linear, got {type_name(module)}")
    return module


def _find_classifier(model: nn.Module) -> nn.Linear:
    get_classifier = getattr(model, "get_classifier", None)
    if callable(get_classifier):  # timm's convention
        head = get_classifier()
        if isinstance(head, nn.Linear):
            return head
    linears = [(name, module) for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not linears:
        raise ValueError(
            f"no nn.Linear layer found in {type_name(model)}; pass `layer` to name the classifier"
        )
    last_name, last = linears[-1]
    rivals = [
        name
        for name, module in linears[:-1]
        if module.weight.shape == last.weight.shape and not _chained_in_sequential(model, name, last_name)
    ]
    if rivals:
        names = ", ".join(repr(n) for n in [*rivals, last_name])
        raise ValueError(
            f"several linear layers of shape {format_shape(last.weight.shape)} qualify as the classifier "
            f"of {type_name(model)} ({names}); pass `layer` to choose one"
        )
    return last


def _chained_in_sequential(model: nn.Module, first: str, second: str) -> bool:
    """Whether two layers are children of the same ``nn.Sequential``, so data flows from one to the other."""
    parent, _, _ = first.rpartition(".")
    other_parent, _, _ = second.rpartition(".")
    return parent == other_parent and isinstance(model.get_submodule(parent), nn.Sequential)
