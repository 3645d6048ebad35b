"""The training loop's contracts and one pass over a loader, shared by ``fit`` and ``evaluate``.

Batch contract: a mapping with ``"image"`` and ``"targets"`` keys, or an ``(images, targets, ...)``
tuple/list. Model contract: a logits tensor ``(B, K)`` or an object with a ``mean_logits`` tensor ``(B, K)``.
Loss contract: a scalar tensor or a NamedTuple of scalar tensors whose first field is the total.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hiercam._distributed import sync_sum
from hiercam._validation import format_shape, type_name
from hiercam.metrics.average_precision import MeanAveragePrecision

__all__ = ["LossFn", "Step", "bce_loss", "output_logits", "run_pass", "split_batch"]

LossFn = Callable[[Any, Tensor], Any]


def split_batch(batch: Any) -> tuple[Any, Tensor]:
    """Images and targets of a batch: a mapping with ``"image"``/``"targets"`` or ``(images, targets, ...)``.

    Raises:
        TypeError: the batch has neither form, or the targets are not a tensor.
    """
    if isinstance(batch, Mapping) and "image" in batch and "targets" in batch:
        images, targets = batch["image"], batch["targets"]
    elif isinstance(batch, Sequence) and not isinstance(batch, str) and len(batch) >= 2:
        images, targets = batch[0], batch[1]
    else:
        raise TypeError(
            "a batch must be a mapping with 'image' and 'targets' keys or an (images, targets, ...) "
            f"tuple, got {type_name(batch)}"
        )
    if not isinstance(targets, Tensor):
        raise TypeError(f"batch targets must be a torch.Tensor, got {type_name(targets)}")
    return images, targets


def output_logits(output: Any) -> Tensor:
    """The ``(B, K)`` logits of a model output: the tensor itself, or its ``mean_logits`` attribute."""
    if isinstance(output, Tensor):
        return output
    mean = getattr(output, "mean_logits", None)
    if isinstance(mean, Tensor):
        return mean
    raise TypeError(
        "the model must return a logits tensor (B, K) or an object with a `mean_logits` tensor, "
        f"got {type_name(output)}"
    )


def bce_loss(output: Any, targets: Tensor) -> Tensor:
    """The default loss: BCE with logits on a logits tensor."""
    if not isinstance(output, Tensor):
        raise TypeError(
            f"the default loss (BCE with logits) needs a model that returns a logits tensor, got "
            f"{type_name(output)}; pass `loss=` (e.g. hiercam.TwoBranchLoss for a TwoBranchNet)"
        )
    return F.binary_cross_entropy_with_logits(output, targets)


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


def _check_logits(logits: Tensor, targets: Tensor) -> None:
    if logits.ndim != 2 or logits.shape != targets.shape:
        raise ValueError(
            f"model logits {format_shape(logits.shape)} and targets {format_shape(targets.shape)} must both "
            "be (B, K) with the same K (a level model needs `targets_transform`)"
        )


class Step:
    """What one epoch needs: model, loss, device, AMP and target handling."""

    def __init__(
        self,
        model: nn.Module,
        loss: LossFn,
        device: torch.device,
        amp: bool,
        targets_transform: Callable[[Tensor], Tensor] | None,
        amp_dtype: torch.dtype = torch.float16,
    ) -> None:
        self.model, self.loss, self.device, self.amp = model, loss, device, amp
        self.amp_dtype = amp_dtype
        self.targets_transform = targets_transform

    def __call__(self, batch: Any) -> tuple[dict[str, Tensor], Tensor, Tensor]:
        """Forward one batch: loss terms, logits and targets (on the device)."""
        images, targets = split_batch(batch)
        if self.targets_transform is not None:
            targets = self.targets_transform(targets)
        targets = targets.to(self.device, torch.float32, non_blocking=True)
        if isinstance(images, Tensor):
            images = images.to(self.device, non_blocking=True)
        with torch.autocast(device_type=self.device.type, dtype=self.amp_dtype, enabled=self.amp):
            output = self.model(images)
            logits = output_logits(output)
            _check_logits(logits, targets)
            terms = _loss_terms(self.loss(output, targets))
        return terms, logits, targets


def run_pass(
    step: Step,
    loader: Iterable[Any],
    bar: Any,
    optimizer: torch.optim.Optimizer | None = None,
    scaler: torch.amp.GradScaler | None = None,
) -> tuple[dict[str, float], Tensor]:
    """One pass over ``loader``: sample-weighted mean of every loss term, and mAP (validation only)."""
    sums: dict[str, Tensor] = {}
    seen = 0
    metric = MeanAveragePrecision() if optimizer is None else None
    for number, batch in enumerate(loader):
        terms, logits, targets = step(batch)
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
            metric.update(logits.float(), targets)
        size = targets.shape[0]
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
