"""The two-branch training loss of Eq. 5: both branches' BCE plus the weighted orthogonal term."""

from __future__ import annotations

import warnings
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hiercam._validation import (
    check_binary,
    check_choice,
    check_tensor,
    format_shape,
    should_check,
    type_name,
)
from hiercam.losses.orthogonal import (
    OrthogonalLoss,
    OrthogonalMode,
    Reduction,
    check_features,
    check_weight,
)
from hiercam.protocols import TwoBranchOutput

__all__ = ["TwoBranchLoss", "TwoBranchLossOutput"]

#: The weighted orthogonal term "swamps" the classification loss above this many times the two BCE terms.
SWAMP_RATIO = 10.0
#: How many training calls (module in training mode, gradients on) of a loss are watched for a swamping term.
SWAMP_CALLS = 10


class TwoBranchLossOutput(NamedTuple):
    """The loss of a two-branch network and its parts, all scalar tensors.

    ``total`` is the one to backpropagate; the other fields are for logging (they stay attached to the
    graph, so they can also be recombined).
    """

    total: Tensor
    """``classification_1 + classification_2 + weight * orthogonal`` (Eq. 5)."""
    classification_1: Tensor
    """BCE-with-logits of branch 1, averaged over the ``B x K`` entries."""
    classification_2: Tensor
    """BCE-with-logits of branch 2, averaged over the ``B x K`` entries."""
    orthogonal: Tensor
    """``L_o`` before weighting by ``weight`` (detached from the graph when ``weight == 0``)."""


class TwoBranchLoss(nn.Module):
    """The two-branch loss of Eq. 5: ``L_all = L_c1 + L_c2 + weight * L_o`` from a ``TwoBranchOutput``.

    ``L_c1`` and ``L_c2`` are multi-label BCE-with-logits losses of each branch's logits (mean over the
    ``B x K`` entries, as in ``nn.BCEWithLogitsLoss``); ``L_o`` is
    [`orthogonal_loss`][hiercam.orthogonal_loss] of the two branches' feature maps before pooling. The
    defaults are the paper's (``weight=1e-4``, the paper's ``lambda``, raw sum), whose scale depends on the
    batch size, the feature size and the backbone; ``reduction="batchmean"`` and ``unit_norm=True`` make it
    scale-free, and ``weight`` should then be chosen on validation data. With ``weight=0`` the branches train
    independently and ``orthogonal`` is only logged.

    In its first 10 training calls (the loss module in training mode, gradients enabled), the loss warns
    once (a ``UserWarning``, once per loss object) when ``weight * L_o`` exceeds 10 times
    ``L_c1 + L_c2``: the orthogonal term then swamps the classification loss (the paper's ``1e-4`` on a
    ResNet-18 at 96 px, batch 8, gives ``weight * L_o`` = 6.1 against 1.4), and the message gives the largest
    ``weight`` that keeps the two about equal. Reading the two values costs a host synchronisation on an
    accelerator, so it is a value check: off with [`hiercam.set_checks(False)`][hiercam.set_checks].

    Under ``DistributedDataParallel`` (gradients averaged over ``W`` processes, equal shards) the BCE terms
    and the ``"batchmean"``/``"mean"`` orthogonal term match one process on the concatenated batch; ``"sum"``
    gives ``1 / W`` of its orthogonal gradient.

    Args:
        weight: non-negative weight ``lambda`` of the orthogonal term (paper: ``1e-4``).
        reduction: reduction of the orthogonal term, ``"sum"`` (paper), ``"batchmean"`` or ``"mean"``.
        unit_norm: L2-normalise each sample's features in the orthogonal term (not in the paper).
        mode: where orthogonality acts (see [`orthogonal_loss`][hiercam.orthogonal_loss]): ``"feature"`` (the
            paper), ``"spatial"`` or ``"cam"``.
        heads: for ``mode="cam"``, the two branch classifiers, e.g. ``net.classifier_heads()``: their weights
            are read at every call (so the loss follows training) and the labels come from the call.
        rectify: what the orthogonal term multiplies in ``"feature"``/``"spatial"`` modes: ``True``:
            ``ReLU(f1)`` and ``ReLU(f2)``, the choice for backbones whose features can be negative (ConvNeXt,
            ViT); ``False``: the features as given; ``None`` (default): as given, with a ``UserWarning`` when
            they hold negative values (see [`orthogonal_loss`][hiercam.orthogonal_loss]).

    Raises:
        TypeError: ``weight`` is not a real number, ``unit_norm`` not a bool, ``rectify`` not a bool or
            None, or ``heads`` not two linear layers.
        ValueError: ``weight`` is negative or not finite, ``reduction`` or ``mode`` is unknown, ``heads``
            is missing for ``mode="cam"``, or ``rectify=True`` with ``mode="cam"``.

    Examples:
        >>> import torch
        >>> from hiercam.protocols import TwoBranchOutput
        >>> logits = torch.zeros(2, 4, 3)  # (2, B, K)
        >>> features = (torch.ones(4, 8, 2, 2), torch.ones(4, 8, 2, 2))
        >>> output = TwoBranchOutput(logits, features, logits.mean(0))
        >>> parts = TwoBranchLoss(weight=0.01, reduction="batchmean")(output, torch.ones(4, 3))
        >>> [round(float(x), 4) for x in parts]  # total = 2 * log(2) + 0.01 * 32
        [1.7063, 0.6931, 0.6931, 32.0]
    """

    def __init__(
        self,
        weight: float = 1e-4,
        *,
        reduction: Reduction = "sum",
        unit_norm: bool = False,
        mode: OrthogonalMode = "feature",
        heads: tuple[nn.Linear, nn.Linear] | None = None,
        rectify: bool | None = None,
    ) -> None:
        super().__init__()
        self.weight = check_weight(weight, "weight")
        check_choice(reduction, "reduction", ("sum", "batchmean", "mean"))
        self.orthogonal = OrthogonalLoss(1.0, reduction, unit_norm, mode=mode, rectify=rectify)
        if mode == "cam":
            if heads is None:
                raise ValueError(
                    "mode='cam' needs `heads`, the two branch classifiers (net.classifier_heads())"
                )
            if not (
                isinstance(heads, (tuple, list))
                and len(heads) == 2
                and all(isinstance(h, nn.Linear) for h in heads)
            ):
                raise TypeError(f"`heads` must be two nn.Linear classifiers, got {type_name(heads)}")
        # a plain tuple: the heads belong to the network, not to the loss (no parameters registered here)
        self._heads: tuple[nn.Linear, ...] = tuple(heads) if heads is not None else ()
        self._watched = 0  # training calls watched for a swamping orthogonal term (up to SWAMP_CALLS)
        self._warned = False

    def forward(self, output: TwoBranchOutput, labels: Tensor) -> TwoBranchLossOutput:
        """Loss of a two-branch output against multi-hot image labels.

        Args:
            output: a ``TwoBranchOutput`` (or any object with ``logits`` ``(2, B, K)`` and ``features``, a
                pair of equal-shaped ``(B, C, H, W)`` or ``(B, D)`` tensors).
            labels: multi-hot image labels ``(B, K)`` of 0/1 values (bool, integer or floating). Checking
                the values costs one pass over the ``B x K`` entries and, on an accelerator, one device
                synchronisation per call: a value check, skipped with
                [`hiercam.set_checks(False)`][hiercam.set_checks] and inside [`fit`][hiercam.fit], which
                checked the labels of the batch already.

        Returns:
            ``TwoBranchLossOutput(total, classification_1, classification_2, orthogonal)``, scalars in float32
            (float64 for float64 logits).

        Raises:
            TypeError: ``output`` lacks ``logits``/``features`` or they are not tensors.
            ValueError: the shapes of the logits, features and labels do not fit together, or ``labels``
                holds values other than 0 and 1.
        """
        logits, (f1, f2) = _check_output(output)
        check_tensor(labels, "labels", dims="B, K")
        if labels.shape != logits.shape[1:]:
            raise ValueError(
                f"`labels` must have shape (B, K) = {format_shape(logits.shape[1:])} to match "
                f"`output.logits` {format_shape(logits.shape)}, got {format_shape(labels.shape)}"
            )
        check_binary(labels, "labels")
        dtype = torch.promote_types(logits.dtype, torch.float32)
        with torch.autocast(device_type=logits.device.type, enabled=False):
            logits = logits.to(dtype)
            labels = labels.to(dtype)
            bce_1 = F.binary_cross_entropy_with_logits(logits[0], labels)
            bce_2 = F.binary_cross_entropy_with_logits(logits[1], labels)
        extra = {}
        if self.orthogonal.mode == "cam":
            extra = {"classifier_weights": (self._heads[0].weight, self._heads[1].weight), "labels": labels}
        if self.weight == 0.0:
            with torch.no_grad():
                orthogonal = self.orthogonal(f1, f2, **extra)
            total = bce_1 + bce_2
        else:
            orthogonal = self.orthogonal(f1, f2, **extra)
            total = bce_1 + bce_2 + self.weight * orthogonal
            self._watch_scale(bce_1 + bce_2, orthogonal)
        return TwoBranchLossOutput(total, bce_1, bce_2, orthogonal)

    def _watch_scale(self, classification: Tensor, orthogonal: Tensor) -> None:
        """Warn once when ``weight * orthogonal`` swamps ``classification`` in the first training calls."""
        if self._warned or self._watched >= SWAMP_CALLS or not (self.training and torch.is_grad_enabled()):
            return
        self._watched += 1
        if not should_check():  # reading the values waits for the device
            return
        bce, term = torch.stack([classification.detach(), orthogonal.detach()]).tolist()  # one device read
        weighted = self.weight * term
        if not weighted > SWAMP_RATIO * bce:  # NaN never warns here (fit refuses a non-finite loss)
            return
        self._warned = True
        warnings.warn(
            f"TwoBranchLoss: the weighted orthogonal term `weight` * L_o = {self.weight:g} * {term:.4g} = "
            f"{weighted:.4g} is {weighted / bce:.0f} times the classification loss L_c1 + L_c2 = {bce:.4g}: "
            f"it swamps the classification and the branches learn little of their classes. Lower `weight` "
            f"(at most about {self.weight * bce / term:.2g} makes the two equal here), or use the scale-free "
            '`TwoBranchLoss(weight=0.1, reduction="batchmean", unit_norm=True)`. Shown once per loss.',
            UserWarning,
            stacklevel=5,  # the line calling loss(...), past forward and Module.__call__
        )

    def extra_repr(self) -> str:  # noqa: D102
        return f"weight={self.weight}, mode={self.orthogonal.mode!r}, rectify={self.orthogonal.rectify}"


def _check_output(output: object) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    if not (hasattr(output, "logits") and hasattr(output, "features")):
        raise TypeError(
            f"`output` must be a TwoBranchOutput (with `logits` and `features`), got {type_name(output)}"
        )
    logits = check_tensor(output.logits, "output.logits", dims="2, B, K", floating=True)
    if logits.shape[0] != 2:
        raise ValueError(f"`output.logits` must have shape (2, B, K), got {format_shape(logits.shape)}")
    features = output.features
    if not isinstance(features, (tuple, list)) or len(features) != 2:
        raise TypeError(f"`output.features` must be a pair of tensors, got {type_name(features)}")
    f1, f2 = features
    check_features(f1, f2)
    if f1.shape[0] != logits.shape[1]:
        raise ValueError(
            f"`output.features` must have batch size B = {logits.shape[1]} like `output.logits` "
            f"{format_shape(logits.shape)}, got {format_shape(f1.shape)}"
        )
    return logits, (f1, f2)
