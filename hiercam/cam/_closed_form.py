"""The closed form of the CAM engine: when it holds (verification) and the gradients it gives.

See the module docstring of ``hiercam.cam.engine`` (step 4) for what is verified and why.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hiercam.cam._autograd import is_affine_path
from hiercam.cam._classes import ResolvedClasses
from hiercam.cam._heads import HeadState

__all__ = ["classifier_for", "closed_form_gradients", "forward_identity_holds", "verify"]


def verify(
    model: nn.Module,
    head: HeadState,
    logits: Tensor,
    gradients: Tensor,
    resolved: ResolvedClasses,
    input_size: tuple[int, int],
) -> None:
    """Set the head's closed-form state from the general path's gradients (module docstring, step 4)."""
    activation = head.activation
    holds = (
        activation is not None
        and forward_identity_holds(model, head, logits)
        and _gradients_match(model, head, activation, logits, gradients, resolved)
        and is_affine_path(logits, activation)
    )
    if not holds:
        head.state = "general"
        return
    same_size = head.state == "verified" and head.verified_size == input_size
    head.verified_classes = (head.verified_classes if same_size else frozenset()) | set(resolved.indices)
    head.verified_size = input_size
    head.state = "verified"


def classifier_for(model: nn.Module, head: HeadState, logits: Tensor, activation: Tensor) -> nn.Linear | None:
    """The head's ``nn.Linear`` of shape ``(K, C)``: its own, or the only one of that shape in ``model``."""
    shape = (logits.shape[1], activation.shape[1])
    if head.classifier is not None:
        return head.classifier if tuple(head.classifier.weight.shape) == shape else None
    matches = [m for m in model.modules() if isinstance(m, nn.Linear) and tuple(m.weight.shape) == shape]
    return matches[0] if len(matches) == 1 else None


def closed_form_gradients(
    model: nn.Module, head: HeadState, activation: Tensor, logits: Tensor, resolved: ResolvedClasses
) -> Tensor:
    """``W[k] / (h * w)`` broadcast to ``(K', B, C, h, w)`` without copying (stride 0 over space).

    ``k`` runs over the requested classes, or is each image's own class (``K' = 1``).
    """
    classifier = classifier_for(model, head, logits, activation)
    if classifier is None:  # pragma: no cover - verified heads have a classifier
        raise RuntimeError("no classifier for the closed form")
    batch, _, height, width = activation.shape
    weight = resolved.weight_rows(classifier.weight.detach().float()) / (height * width)
    return weight[..., None, None].expand(weight.shape[0], batch, -1, height, width)


def forward_identity_holds(model: nn.Module, head: HeadState, logits: Tensor) -> bool:
    """Whether ``logits == W @ mean_hw(A) + b`` for this head's classifier, within the dtype tolerance."""
    activation = head.activation
    if activation is None:
        return False
    classifier = classifier_for(model, head, logits, activation)
    if classifier is None:
        return False
    pooled = activation.detach().float().mean(dim=(-2, -1))
    predicted = F.linear(pooled, classifier.weight.detach().float(), _float_or_none(classifier.bias))
    error = (predicted - logits.detach().float()).abs().amax()
    return bool(error <= _tolerance(activation) * logits.detach().float().abs().amax().clamp_min(1.0))


def _gradients_match(
    model: nn.Module,
    head: HeadState,
    activation: Tensor,
    logits: Tensor,
    gradients: Tensor,
    resolved: ResolvedClasses,
) -> bool:
    expected = closed_form_gradients(model, head, activation, logits, resolved)
    error = (gradients - expected).abs().amax()
    return bool(error <= _tolerance(activation) * expected.abs().amax() + 1e-12)


def _tolerance(activation: Tensor) -> float:
    return 1e-4 if activation.dtype in (torch.float32, torch.float64) else 2e-2


def _float_or_none(bias: Tensor | None) -> Tensor | None:
    return None if bias is None else bias.detach().float()
