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

__all__ = [
    "classifier_for",
    "closed_form_gradients",
    "forward_identity_holds",
    "same_modules",
    "unless_identity_holds",
    "verify",
]

_VERIFIED_SIZES = 32  # input sizes whose verified classes a head keeps


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
    if head.state != "verified" or not same_modules(model, head):
        head.verified = {}
    known = head.verified.pop(input_size, frozenset())
    while len(head.verified) >= _VERIFIED_SIZES:  # the oldest size goes
        head.verified.pop(next(iter(head.verified)))
    head.verified[input_size] = known | set(resolved.indices)
    head.modules = tuple(model.modules())
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
    """Whether ``logits == W @ mean_hw(A) + b`` for this head's classifier, within the dtype tolerance.

    One host read (a value check of every closed-form call while the checks are on).
    """
    holds = _identity_per_image(model, head, logits)
    return holds is not None and bool(holds.all())


def unless_identity_holds(model: nn.Module, head: HeadState, logits: Tensor, maps: Tensor) -> Tensor:
    """``maps (B, K', h, w)``, NaN for the images whose logits break ``W @ mean_hw(A) + b``; no host read.

    The closed form's check of every call with the value checks off: the host cannot fall back to the
    general path without reading the check, so an image whose closed-form maps may be wrong gets NaN maps
    (never a normal-looking one).
    """
    holds = _identity_per_image(model, head, logits)
    if holds is None:  # pragma: no cover - verified heads have a classifier and an activation
        return torch.full_like(maps, torch.nan)
    return torch.where(holds[:, None, None, None], maps, torch.nan)


def same_modules(model: nn.Module, head: HeadState) -> bool:
    """Whether ``model`` has the very modules it had when the head's closed form was verified (host only).

    A module replaced, added or removed since (a new classifier head, say) sends the next call back to the
    general path and its verification, also with the value checks off.
    """
    modules = tuple(model.modules())
    return len(modules) == len(head.modules) and all(
        a is b for a, b in zip(modules, head.modules, strict=True)
    )


def _identity_per_image(model: nn.Module, head: HeadState, logits: Tensor) -> Tensor | None:
    """``(B,)`` bool on the device: each image's logits equal ``W @ mean_hw(A) + b`` within the tolerance."""
    activation = head.activation
    if activation is None:
        return None
    classifier = classifier_for(model, head, logits, activation)
    if classifier is None:
        return None
    pooled = activation.detach().float().mean(dim=(-2, -1))
    predicted = F.linear(pooled, classifier.weight.detach().float(), _float_or_none(classifier.bias))
    observed = logits.detach().float()
    error = (predicted - observed).abs().amax(dim=1)
    return error <= _tolerance(activation) * observed.abs().amax().clamp_min(1.0)


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
