"""The training loop's contracts and one pass over a loader, shared by ``fit`` and ``evaluate``.

Batch contract: a mapping with ``"image"`` and ``"labels"`` keys, or an ``(images, labels, ...)`` tuple/list.
Model contract: a logits tensor ``(B, K)``, or an object with a ``mean_logits`` (``TwoBranchOutput``) or a
``class_logits`` (``LevelHeadsOutput``) tensor ``(B, K)``. Loss
contract: a scalar tensor or a NamedTuple of scalar tensors whose first field is the total.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hiercam._distributed import sync_sum
from hiercam._validation import format_shape, should_check, type_name, values_checked
from hiercam.metrics import MeanAveragePrecision

__all__ = ["LossFn", "Step", "bce_loss", "output_logits", "run_pass", "split_batch"]

LossFn = Callable[[Any, Tensor], Any]


def split_batch(batch: Any) -> tuple[Any, Tensor]:
    """Images and labels of a batch: a mapping with ``"image"``/``"labels"`` or ``(images, labels, ...)``.

    Raises:
        TypeError: the batch has neither form, or the labels are not a tensor.
    """
    if isinstance(batch, Mapping) and "image" in batch and "labels" in batch:
        images, labels = batch["image"], batch["labels"]
    elif isinstance(batch, Sequence) and not isinstance(batch, str) and len(batch) >= 2:
        images, labels = batch[0], batch[1]
    else:
        raise TypeError(
            "a batch must be a mapping with 'image' and 'labels' keys or an (images, labels, ...) "
            f"tuple, got {type_name(batch)}"
        )
    if not isinstance(labels, Tensor):
        raise TypeError(f"batch labels must be a torch.Tensor, got {type_name(labels)}")
    return images, labels


def output_logits(output: Any) -> Tensor:
    """The ``(B, K)`` logits of a model output: the tensor, or its ``mean_logits`` or ``class_logits``."""
    if isinstance(output, Tensor):
        return output
    for name in ("mean_logits", "class_logits"):
        logits = getattr(output, name, None)
        if isinstance(logits, Tensor):
            return logits
    raise TypeError(
        "the model must return a logits tensor (B, K) or an object with a `mean_logits` or `class_logits` "
        f"tensor, got {type_name(output)}"
    )


def bce_loss(output: Any, labels: Tensor) -> Tensor:
    """The default loss: BCE with logits on a logits tensor."""
    if not isinstance(output, Tensor):
        raise TypeError(
            f"the default loss (BCE with logits) needs a model that returns a logits tensor, got "
            f"{type_name(output)}; pass `loss=` (e.g. hiercam.TwoBranchLoss for a TwoBranchNet, "
            "hiercam.losses.LevelHeadsLoss for a LevelHeadsNet)"
        )
    return F.binary_cross_entropy_with_logits(output.float(), labels)  # float32 also under autocast


def _loss_terms(result: Any) -> dict[str, Tensor]:
    """``{"loss": total, **named fields}`` from a scalar tensor or a NamedTuple of scalar tensors."""
    if isinstance(result, Tensor):
        terms = {"loss": result}
    elif isinstance(result, tuple) and hasattr(result, "_asdict") and len(result) > 0:
        terms = {"loss": result[0], **result._asdict()}
    else:
        raise TypeError(
            f"`loss` must return a scalar tensor or a NamedTuple of them, got {type_name(result)}"
        )
    for name, value in terms.items():
        if not isinstance(value, Tensor) or value.ndim != 0:
            shape = format_shape(value.shape) if isinstance(value, Tensor) else type_name(value)
            raise TypeError(f"`loss` term {name!r} must be a scalar tensor, got {shape}")
    return terms


def _check_logits(logits: Tensor, labels: Tensor) -> None:
    if logits.ndim != 2 or logits.shape != labels.shape:
        raise ValueError(
            f"model logits {format_shape(logits.shape)} and labels {format_shape(labels.shape)} must both "
            "be (B, K) with the same K (a level model needs `labels_transform`)"
        )


class Step:
    """What one epoch needs: model, loss, device, AMP and label handling."""

    def __init__(
        self,
        model: nn.Module,
        loss: LossFn,
        device: torch.device,
        amp: bool,
        labels_transform: Callable[[Tensor], Tensor] | None,
        amp_dtype: torch.dtype = torch.float16,
    ) -> None:
        self.model, self.loss, self.device, self.amp = model, loss, device, amp
        self.amp_dtype = amp_dtype
        self.labels_transform = labels_transform

    def __call__(self, batch: Any, where: str = "") -> tuple[dict[str, Tensor], Tensor, Tensor, Any]:
        """Forward one batch: loss terms, logits, labels (on the device) and the images given to the model."""
        images, labels = split_batch(batch)
        if self.labels_transform is not None:
            labels = self.labels_transform(labels)
            if not isinstance(labels, Tensor):
                raise TypeError(f"`labels_transform` must return a torch.Tensor, got {type_name(labels)}")
        _check_labels(labels, where)
        labels = labels.to(self.device, torch.float32, non_blocking=True)
        if isinstance(images, Tensor):
            images = images.to(self.device, non_blocking=True)
        with torch.autocast(device_type=self.device.type, dtype=self.amp_dtype, enabled=self.amp):
            output = self.model(images)
            logits = output_logits(output)
            _check_logits(logits, labels)
            with values_checked(labels):  # a hiercam loss does not check them again on the device
                terms = _loss_terms(self.loss(output, labels))
        return terms, logits, labels, images


def _check_labels(labels: Tensor, where: str) -> None:
    """0/1 multi-hot labels: a comparison over ``B x K`` (a device sync only for labels on an accelerator).

    A value check (skipped when ``hiercam.set_checks(False)``), like ``_check_finite``.
    """
    if (
        labels.dtype != torch.bool
        and should_check(labels)
        and not bool(((labels == 0) | (labels == 1)).all())
    ):
        bad = labels[(labels != 0) & (labels != 1)].flatten()[:3].tolist()
        raise ValueError(
            f"`labels` must hold only 0/1 values (multi-hot image labels), got {bad} in {where} "
            "(after `labels_transform`, if any)"
        )


def _check_finite(terms: dict[str, Tensor], logits: Tensor, images: Any, where: str) -> None:
    """Raise when the loss or the logits are not finite: one reduction over ``B x K`` and one sync a step.

    The diagnosis (which term, the logits or the images) runs only when the check fails.
    """
    if not should_check():
        return
    flags = torch.stack([torch.isfinite(terms["loss"].detach()), torch.isfinite(logits.detach()).all()])
    loss_ok, logits_ok = (bool(flag) for flag in flags.tolist())
    if loss_ok and logits_ok:
        return
    bad_terms = [name for name, value in terms.items() if not bool(torch.isfinite(value.detach()))]
    if logits_ok:
        cause = "the logits are finite: the loss produced it (check the loss and the labels)"
    elif isinstance(images, Tensor) and images.is_floating_point() and not bool(torch.isfinite(images).all()):
        cause = "the batch's images hold NaN or infinite values"
    else:
        cause = (
            "the model's logits hold NaN or infinite values from finite images (diverged weights: lower "
            "`lr`, or train without autocast)"
        )
    what = (
        f"loss terms {bad_terms}"
        if logits_ok
        else "logits" + (f" and loss terms {bad_terms}" if bad_terms else "")
    )
    raise ValueError(
        f"non-finite {what} in {where}: {cause}; stopped before the optimizer step, so this batch did not "
        "change the weights"
    )


def run_pass(
    step: Step,
    loader: Iterable[Any],
    bar: Any,
    optimizer: torch.optim.Optimizer | None = None,
    scaler: torch.amp.GradScaler | None = None,
    where: str = "evaluate",
) -> tuple[dict[str, float], Tensor]:
    """One pass over ``loader``: sample-weighted mean of every loss term, and mAP (validation only).

    Every batch's labels must be 0/1 and its loss and logits finite (``ValueError`` naming ``where`` and the
    batch otherwise), so that no step trains on NaN and validation never scores non-finite logits.
    """
    sums: dict[str, Tensor] = {}
    seen = 0
    metric = MeanAveragePrecision() if optimizer is None else None
    for number, batch in enumerate(loader):
        place = f"{where}, batch {number + 1}"
        terms, logits, labels, images = step(batch, place)
        _check_finite(terms, logits, images, place)
        if optimizer is not None:
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(terms["loss"]).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                terms["loss"].backward()
                optimizer.step()
        elif metric is not None:
            scores = logits.float()
            with values_checked(scores, labels):  # checked by _check_finite and the step
                metric.update(scores, labels)
        size = labels.shape[0]
        seen += size
        for name, value in terms.items():
            sums[name] = sums.get(name, 0) + value.detach().float() * size
        if bar is not None and number % 10 == 0:
            bar.set_postfix(loss=f"{sums['loss'].item() / seen:.4f}", refresh=False)
        if bar is not None:
            bar.update(1)
    if seen == 0:
        raise ValueError(
            "a loader yielded no batch (loaders must be re-iterable every epoch: a DataLoader or a list, "
            "not a generator)"
        )
    # under torch.distributed every process saw its own shard: means over all of them
    names = list(sums)
    totals = sync_sum(
        torch.stack(
            [
                *(sums[name].reshape(()) for name in names),
                torch.tensor(float(seen), device=sums[names[0]].device),
            ]
        )
    )
    means = {name: float(totals[i]) / float(totals[-1]) for i, name in enumerate(names)}
    return means, (metric.compute() if metric is not None else torch.tensor(math.nan))
