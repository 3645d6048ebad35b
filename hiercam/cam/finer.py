"""FinerCAM: explain what sets a class apart from the classes the model finds most similar to it.

Zhang et al. (2025, "Finer-CAM: Spotting the Difference Reveals Finer Details for Visual Explanation",
arXiv:2501.11309) replace the explained score of class ``k`` by a softmax-weighted difference between its
logit and the logits of its most similar classes, so that the features the similar classes share cancel out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from hiercam._validation import is_int, type_name
from hiercam.cam._classes import ClassesArg
from hiercam.cam._heads import LayerArg, MapPlan
from hiercam.cam.engine import BaseCAM
from hiercam.cam.methods import GradCAM
from hiercam.cam.reshape import ReshapeArg
from hiercam.cam.targets import OutputArg, TargetsArg

__all__ = ["FinerCAM"]

_DENOMINATOR_EPS = 1e-9  # pytorch-grad-cam's FinerWeightedTarget guard


class FinerCAM(BaseCAM):
    """Finer-CAM (Zhang et al., 2025): ``method``'s map of a score comparing ``k`` with its neighbours.

    For class ``k`` of an image with logits ``z`` and probabilities ``p = softmax(z)``, the classes are ranked
    by ``|z_j - z_k|`` (``k`` itself first); ``S_k`` holds the classes at the ranks in ``comparisons``
    (``1`` is the most similar other class). The explained score is pytorch-grad-cam's
    ``FinerWeightedTarget``:

        ``s_k = sum_{j in S_k} p_j (z_k - alpha z_j) / (sum_{j in S_k} p_j + 1e-9)``

    and the map is ``method``'s (Grad-CAM by default) with the gradients of ``s_k`` instead of ``z_k``. The
    ranking is read from the logits of the forward pass (no gradient flows through it); the gradient flows
    through ``p`` and ``z``. With ``alpha=0`` the score is ``z_k``: the plain method.

    Every requested class of every image gets its own ``S_k``, and all their scores go through one batched
    backward. ``top_k=1`` explains each image's predicted class, pytorch-grad-cam's default (its
    ``target_idx=None``); ``logits`` keeps the model's logits. ``targets=`` are explained as given, with
    ``method`` alone (pytorch-grad-cam's ``FinerCAM`` does the same). Where two logits are exactly equal the
    ranking puts ``k`` first and the lower class index before the higher (pytorch-grad-cam's ``argsort``
    leaves ties in no defined order).

    Args:
        model: the classifier (see [`BaseCAM`][hiercam.BaseCAM]).
        target_layer: the layer explained, as for [`BaseCAM`][hiercam.BaseCAM].
        method: the gradient method whose map is computed: a class among ``GradCAM``, ``GradCAMPlusPlus``,
            ``XGradCAM``, ``LayerCAM``, ``HiResCAM``, ``GradCAMElementWise``, ``EigenGradCAM`` (any
            [`BaseCAM`][hiercam.BaseCAM] subclass that only combines ``A`` and ``G``).
        comparisons: the ranks of the compared classes, distinct ints ``>= 1`` (default ``(1, 2, 3)``, the
            three most similar classes); ranks ``>= K`` are dropped, as pytorch-grad-cam does.
        alpha: the strength of the comparison, a finite number (default 1).
        eigen_smooth: as for [`BaseCAM`][hiercam.BaseCAM] (where ``method`` takes it).
        reshape: as for [`BaseCAM`][hiercam.BaseCAM].
        output: as for [`BaseCAM`][hiercam.BaseCAM].

    Raises:
        TypeError, ValueError: a ``method`` that is not such a class, ``comparisons`` that are not distinct
            ints ``>= 1``, a non-finite ``alpha`` (and as for [`BaseCAM`][hiercam.BaseCAM]); at the call, a
            model with a single class (nothing to compare with).

    Examples:
        >>> import torch
        >>> from torchvision.models import resnet18
        >>> cam = FinerCAM(resnet18(num_classes=6), "layer4", comparisons=(1, 2), alpha=0.8)
        >>> cam(torch.randn(2, 3, 64, 64), top_k=1).shape
        torch.Size([2, 1, 64, 64])
    """

    def __init__(
        self,
        model: nn.Module,
        target_layer: LayerArg = None,
        *,
        method: type[BaseCAM] = GradCAM,
        comparisons: Sequence[int] = (1, 2, 3),
        alpha: float = 1.0,
        eigen_smooth: bool = False,
        reshape: ReshapeArg = "auto",
        output: OutputArg = None,
    ) -> None:
        _check_method(method)
        self.comparisons = _check_comparisons(comparisons)
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
            raise TypeError(f"`alpha` must be a finite number, got {type_name(alpha)}")
        if not math.isfinite(alpha):
            raise ValueError(f"`alpha` must be a finite number, got {alpha!r}")
        self.alpha = float(alpha)
        super().__init__(
            model, target_layer, closed_form=False, eigen_smooth=eigen_smooth, reshape=reshape, output=output
        )
        options = {"eigen_smooth": True} if eigen_smooth else {}
        # the method's instance only combines A and G (its own hooks and heads are never used)
        self.method: BaseCAM = method(model, None, reshape=reshape, output=output, **options)  # type: ignore[arg-type]

    def _extra_repr(self) -> str:
        return f"method={type(self.method).__name__}, comparisons={self.comparisons}, alpha={self.alpha}"

    def __repr__(self) -> str:
        return f"{super().__repr__()[:-1]}, {self._extra_repr()})"

    def _scores(self, logits: Tensor, plan: MapPlan) -> Tensor:
        if plan.targets is not None:
            return super()._scores(logits, plan)
        resolved = plan.resolved
        if resolved.per_image is not None:
            classes = resolved.per_image.to(logits.device)
        else:
            classes = torch.tensor(resolved.indices, device=logits.device).expand(logits.shape[0], -1)
        return finer_scores(logits, classes, self.comparisons, self.alpha)

    def _maps(self, activations: Tensor, gradients: Tensor) -> Tensor:
        return self.method._maps(activations, gradients)

    def _check_softmax_over(
        self, value: Tensor, batch: int, classes: ClassesArg, targets: TargetsArg
    ) -> Tensor:
        raise ValueError("`softmax_over` is not available for FinerCAM: it explains its own comparison score")


def finer_scores(logits: Tensor, classes: Tensor, comparisons: Sequence[int], alpha: float) -> Tensor:
    """The scores ``(B, K')`` of the classes ``classes (B, K')``: each compared with its nearest logits.

    See [`FinerCAM`][hiercam.FinerCAM] for the formula; differentiable in ``logits (B, K)``.
    """
    num_classes = int(logits.shape[1])
    ranks = [rank for rank in comparisons if rank < num_classes]
    if not ranks:
        raise ValueError(
            f"FinerCAM compares each class with others, but `model` has {num_classes} class(es) and "
            f"`comparisons` {tuple(comparisons)} names no rank below {num_classes}"
        )
    z = logits.float()
    own = z.gather(1, classes)  # (B, K')
    with torch.no_grad():
        distance = (z[:, None, :] - own[:, :, None]).abs()  # (B, K', K)
        distance.scatter_(2, classes[:, :, None], -1.0)  # the class itself ranks first
        order = distance.argsort(dim=2, stable=True)
        compared = order[:, :, ranks]  # (B, K', m)
    probabilities = z.softmax(dim=1)
    expanded = (-1, classes.shape[1], -1)
    weights = probabilities[:, None, :].expand(expanded).gather(2, compared)
    others = z[:, None, :].expand(expanded).gather(2, compared)
    numerator = (weights * (own[:, :, None] - alpha * others)).sum(dim=2)
    return numerator / (weights.sum(dim=2) + _DENOMINATOR_EPS)


def _check_method(method: object) -> None:
    if not isinstance(method, type) or not issubclass(method, BaseCAM):
        raise TypeError(f"`method` must be a CAM class such as hiercam.GradCAM, got {method!r}")
    combines_only = (
        method._needs_graph
        and method._uses_gradients
        and method._head_maps is BaseCAM._head_maps
        and method._scores is BaseCAM._scores
        and method._gradients is BaseCAM._gradients
        and method._combine is not BaseCAM._combine
    )
    if not combines_only:
        raise ValueError(
            f"`method` must be a gradient method that combines the activations and gradients of the target "
            f"layer (GradCAM, GradCAMPlusPlus, XGradCAM, LayerCAM, HiResCAM, ...), got {method.__name__}"
        )


def _check_comparisons(comparisons: object) -> tuple[int, ...]:
    if isinstance(comparisons, (str, bytes)) or not isinstance(comparisons, Sequence):
        raise TypeError(f"`comparisons` must be a sequence of ints >= 1, got {type_name(comparisons)}")
    if not comparisons:
        raise ValueError("`comparisons` must name at least one rank, got an empty sequence")
    for rank in comparisons:
        if not is_int(rank) or isinstance(rank, bool):
            raise TypeError(f"`comparisons` must hold ints, got {type_name(rank)}")
        if int(rank) < 1:
            raise ValueError(f"`comparisons` must be ranks >= 1 (0 is the class itself), got {int(rank)}")
    ranks = tuple(int(rank) for rank in comparisons)
    if len(set(ranks)) != len(ranks):
        raise ValueError(f"`comparisons` must be distinct ranks, got {ranks}")
    return ranks
