"""Shared parts of the perturbation (faithfulness) metrics: input checks, the model's class scores.

The faithfulness metrics score the model on modified images: every (image, present class) pair of a batch is
one *trial*, and the perturbed images of all trials go through the model in chunks of ``batch_size``
(never one class at a time). The model runs in eval mode under ``torch.inference_mode()``; the ``training``
flags of its modules are restored afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Literal, NamedTuple

import torch
from torch import Tensor, nn

from hiercam._validation import (
    all_finite,
    check_choice,
    check_finite,
    check_int,
    check_tensor,
    format_shape,
    should_check,
    type_name,
)
from hiercam.metrics._base import Metric
from hiercam.metrics._inputs import check_maps_and_labels

__all__ = [
    "MeanMetric",
    "Reduction",
    "check_reduction",
    "reduce_trials",
    "Model",
    "ScoreMode",
    "Trials",
    "check_images",
    "check_common",
    "trials",
    "class_scores",
    "trial_scores",
    "as_float64",
]

Model = Callable[[Tensor], object]
ScoreMode = Literal["softmax", "sigmoid", "logit"]
Reduction = Literal["mean", "none"]
_SCORES: tuple[ScoreMode, ...] = ("softmax", "sigmoid", "logit")


class Trials(NamedTuple):
    """The (image, map) pairs with ``labels[b, k] = 1``, in row-major order, and the model's class of each.

    ``num_classes`` is the number of scores the model must return (``K``, the maps' count), or ``None`` when
    ``classes`` gave each map its class among the model's outputs (any count that holds them).
    """

    images: Tensor  # (P,) int64, on the images' device
    classes: Tensor  # (P,) int64: the model's output index of each trial's class
    maps: Tensor  # (P, H, W), detached, on the images' device
    num_classes: int | None


def check_images(images: Tensor, maps: Tensor) -> Tensor:
    """Images ``(B, C, H, W)``, floating point and finite, with the batch and spatial size of ``maps``."""
    check_tensor(images, "images", dims="B, C, H, W", floating=True)
    if images.shape[0] != maps.shape[0] or images.shape[2:] != maps.shape[2:]:
        raise ValueError(
            f"`images` (B, C, H, W) must match `maps` (B, K, H, W) in B, H and W, got "
            f"{format_shape(images.shape)} and {format_shape(maps.shape)}; upsample the maps to the image "
            "size first (torch.nn.functional.interpolate)"
        )
    check_finite(images, "images")
    return images


def check_common(model: object, score: ScoreMode, batch_size: int) -> tuple[ScoreMode, int]:
    """The options every faithfulness metric takes."""
    if not callable(model):
        raise TypeError(f"`model` must be a callable classifier (e.g. an nn.Module), got {type_name(model)}")
    mode = check_choice(score, "score", _SCORES)
    return mode, check_int(batch_size, "batch_size", minimum=1)


def trials(maps: Tensor, labels: Tensor, images: Tensor, classes: Tensor | None = None) -> Trials:
    """Check ``maps``, ``labels``, ``images`` and ``classes`` together and list the trials."""
    check_maps_and_labels(maps, labels)
    check_images(images, maps)
    if classes is not None:
        check_tensor(classes, "classes", dims="B, K")
        if classes.is_floating_point() or classes.is_complex() or classes.dtype == torch.bool:
            raise TypeError(f"`classes` must hold integer class indices, got dtype {classes.dtype}")
        if classes.shape != maps.shape[:2]:
            raise ValueError(
                f"`classes` must give the model's class of every map, shape (B, K) = "
                f"{format_shape(maps.shape[:2])}, got {format_shape(classes.shape)}"
            )
        if classes.numel() and int(classes.min()) < 0:
            raise ValueError(f"`classes` must be non-negative class indices, got {int(classes.min())}")
    present = labels.to(device=images.device, dtype=torch.bool)
    index_b, index_k = torch.nonzero(present, as_tuple=True)
    chosen = maps.detach().to(images.device)[index_b, index_k]
    if classes is None:
        return Trials(index_b, index_k, chosen, int(maps.shape[1]))
    model_classes = classes.to(device=images.device, dtype=torch.int64)[index_b, index_k]
    return Trials(index_b, model_classes, chosen, None)


@contextmanager
def _eval_mode(model: object) -> Iterator[None]:
    """``model.eval()`` inside the block; every module's ``training`` flag restored after."""
    if not isinstance(model, nn.Module):
        yield
        return
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, flag in flags:
            module.training = flag


def _logits(model: Model, inputs: Tensor, num_classes: int | None, classes: Tensor) -> Tensor:
    """The model's ``(N, K)`` output (a tensor, or an object with ``mean_logits`` as ``TwoBranchNet``'s).

    ``num_classes`` is the ``K`` it must have, or ``None``: any ``K`` that holds every index of ``classes``.
    """
    if isinstance(model, nn.Module):
        weight = next((p for p in model.parameters() if p.is_floating_point()), None)
        if weight is not None and weight.dtype != inputs.dtype and not torch.is_autocast_enabled():
            raise ValueError(
                f"`images` are {inputs.dtype} but `model`'s parameters are {weight.dtype}: convert one to "
                f"the other (e.g. images.to({weight.dtype}))"
            )
    output = model(inputs)
    if not isinstance(output, Tensor):
        output = getattr(output, "mean_logits", output)
    if not isinstance(output, Tensor):
        raise TypeError(
            f"`model` must return class scores (B, K) as a tensor, got {type_name(output)}; "
            "wrap it, e.g. `lambda x: net(x).logits`"
        )
    if num_classes is None:
        if output.ndim != 2 or output.shape[0] != inputs.shape[0]:
            raise ValueError(
                f"`model` must return class scores (B, K) for a batch of {inputs.shape[0]} images, got "
                f"{format_shape(output.shape)}"
            )
        if classes.numel() and int(classes.max()) >= output.shape[1]:
            raise ValueError(
                f"`classes` holds class {int(classes.max())} but `model` returns {output.shape[1]} scores"
            )
    elif output.shape != (inputs.shape[0], num_classes):
        raise ValueError(
            f"`model` must return class scores (B, K) = ({inputs.shape[0]}, {num_classes}) for a batch of "
            f"{inputs.shape[0]} images and K = {num_classes} maps, got {format_shape(output.shape)}"
        )
    return output


def _to_scores(logits: Tensor, score: ScoreMode, images: str) -> Tensor:
    """The ``score`` of ``logits`` ``(N, K)`` as float32, refused when not finite (a value check).

    ``images`` names the model's inputs in the message (``"the original images"``, ``"the perturbed
    images"``): a model that divides by an image's spread gives NaN on a fully deleted (constant) image.
    """
    logits = logits.float()
    if score == "softmax":
        scores = logits.softmax(dim=1)
    elif score == "sigmoid":
        scores = logits.sigmoid()
    else:
        scores = logits
    if should_check(logits) and not all_finite(scores):
        raise ValueError(
            f"`model` returned non-finite class scores (NaN or infinite, score={score!r}) on {images}; "
            "a model that normalises an image by its own spread gives NaN on a constant (fully deleted) image"
        )
    return scores


def class_scores(
    model: Model,
    make_inputs: Callable[[Tensor], Tensor],
    classes: Tensor,
    num_classes: int | None,
    score: ScoreMode,
    batch_size: int,
) -> Tensor:
    """Scores ``(N,)`` float32 of ``classes[n]`` on ``make_inputs(rows)``, in chunks of ``batch_size``.

    ``make_inputs`` builds the perturbed images of the rows ``rows`` (an int64 index tensor) only when
    their chunk is due, so at most ``batch_size`` perturbed images exist at a time.
    """
    total = int(classes.shape[0])
    result = torch.empty(total, dtype=torch.float32, device=classes.device)
    with _eval_mode(model), torch.inference_mode():
        for start in range(0, total, batch_size):
            rows = torch.arange(start, min(start + batch_size, total), device=classes.device)
            inputs = make_inputs(rows)
            scores = _to_scores(
                _logits(model, inputs, num_classes, classes[rows]), score, "the perturbed images"
            )
            result[rows] = scores.gather(1, classes[rows, None].to(scores.device))[:, 0].to(result.device)
    return result


def trial_scores(
    model: Model,
    images: Tensor,
    found: Trials,
    score: ScoreMode,
    batch_size: int,
    name: str = "the original images",
) -> Tensor:
    """Scores ``(P,)`` float32 of every trial's class on its image of ``images`` (one forward per image).

    ``name`` says what the images are in the message of non-finite scores.
    """
    batch = int(images.shape[0])
    parts = []
    with _eval_mode(model), torch.inference_mode():
        for start in range(0, batch, batch_size):
            chunk = images.detach()[start : start + batch_size]
            logits = _logits(model, chunk, found.num_classes, found.classes)
            parts.append(_to_scores(logits, score, name).to(images.device))
    return torch.cat(parts)[found.images, found.classes]


def as_float64(values: Tensor) -> Tensor:
    """``values`` as float64 on their device (no copy to the host), on the CPU for MPS (no float64 there)."""
    return values.cpu().double() if values.device.type == "mps" else values.double()


def reduce_trials(values: Tensor, reduction: Reduction) -> Tensor:
    """Per-trial values ``(P, ...)`` as they are, or their mean over trials (NaN without trials)."""
    if reduction == "none":
        return values
    return values.mean(dim=0) if values.shape[0] else torch.full(values.shape[1:], torch.nan).double()


def check_reduction(reduction: Reduction) -> Reduction:
    return check_choice(reduction, "reduction", ("mean", "none"))


class MeanMetric(Metric):
    """A perturbation metric's model and options, the sums of per-trial values and the number of trials.

    ``_means`` gives the means (NaN without trials). Subclasses call ``_add_states`` with the shape of one
    trial's values once their own options are checked.
    """

    sums: Tensor
    count: Tensor
    model: Model

    def __init__(self, model: Model, *, score: ScoreMode, batch_size: int, sync_on_compute: bool) -> None:
        super().__init__(sync_on_compute=sync_on_compute)
        self.score, self.batch_size = check_common(model, score, batch_size)
        self.__dict__["model"] = model  # a plain attribute: not a submodule, not in state_dict

    def _add_states(self, *shape: int) -> None:
        self.add_state("sums", torch.zeros(shape, dtype=torch.float64), "sum")
        self.add_state("count", torch.zeros((), dtype=torch.long), "sum")

    def _add(self, values: Tensor) -> None:
        self.sums = self.sums + values.sum(dim=0).to(self.sums.device)
        self.count = self.count + values.shape[0]

    def _means(self) -> Tensor:
        if int(self.count) == 0:
            return torch.full_like(self.sums, torch.nan)
        return self.sums / self.count
