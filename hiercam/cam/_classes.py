"""Parsing of the ``classes`` and ``top_k`` arguments of the CAM extractors.

Per-image requests (a ``(B,)`` class tensor, or ``top_k``) are held as ``per_image`` ``(B, k)``: column ``j``
is the class of map ``j`` of each image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from hiercam._validation import check_binary, format_shape, is_int, type_name

__all__ = ["ClassRequest", "ClassesArg", "ResolvedClasses", "parse_classes", "take", "to_device"]

ClassesArg = int | Sequence[int] | Tensor | None


@dataclass(frozen=True)
class ResolvedClasses:
    """The classes to compute, ``indices`` (K',), and how their maps fill the output.

    With a mask, ``num_outputs`` is ``K`` and ``mask`` is ``(B, K')`` (bool): the maps of the K' classes
    present somewhere in the batch go to their slots, multiplied by the mask; every other slot is zero.
    """

    indices: list[int]
    mask: Tensor | None
    num_outputs: int
    per_image: Tensor | None = None

    def scores(self, logits: Tensor) -> Tensor:
        """The scores ``(B, K')`` whose gradients make the maps: one class per image, or ``indices``."""
        if self.per_image is not None:
            return logits.gather(1, to_device(self.per_image, logits.device))
        return take(logits, 1, self.indices)

    @property
    def count(self) -> int:
        """``K'``: the number of maps per image this request computes (``k`` for per-image classes)."""
        return int(self.per_image.shape[1]) if self.per_image is not None else len(self.indices)

    def class_indices(self, batch: int) -> Tensor:
        """The class of every map, ``(B, num_outputs)`` int64 on the CPU (what ``BaseCAM.classes`` holds)."""
        if self.per_image is not None:
            return self.per_image.clone()
        every = range(self.num_outputs) if self.mask is not None else self.indices
        return torch.tensor(list(every), dtype=torch.int64).expand(batch, -1).clone()

    def per_image_rows(self, values: Tensor) -> Tensor:
        """Values ``(len(indices), B, ...)`` of every class in ``indices`` as ``(K', B, ...)``.

        With per-image classes ``(B, k)``, row ``j`` holds each image's ``j``-th class, ``(k, B, ...)``;
        else ``values``.
        """
        if self.per_image is None:
            return values
        position = {k: i for i, k in enumerate(self.indices)}
        rows = to_device(
            torch.tensor([[position[int(k)] for k in row] for row in self.per_image.tolist()]), values.device
        )  # (B, k)
        return values[rows.T, torch.arange(values.shape[1], device=values.device)[None]]

    def weight_rows(self, weight: Tensor) -> Tensor:
        """The classifier rows ``(K', B or 1, C)`` of the requested classes (per image: ``(k, B, C)``)."""
        if self.per_image is not None:
            return weight[to_device(self.per_image, weight.device)].transpose(0, 1)
        return take(weight, 0, self.indices)[:, None]

    def place(self, maps: Tensor) -> Tensor:
        """Arrange maps ``(B, K', h, w)`` of ``indices`` into the output ``(B, num_outputs, h, w)``."""
        if self.mask is None:
            return maps
        full = maps.new_zeros(maps.shape[0], self.num_outputs, *maps.shape[2:])
        masked = maps * self.mask.to(device=maps.device, dtype=maps.dtype)[:, :, None, None]
        return full.index_copy_(
            1, to_device(torch.tensor(self.indices, dtype=torch.int64), maps.device), masked
        )


@dataclass(frozen=True)
class ClassRequest:
    """Which maps to compute: ``indices`` (K',) of classes for every image, and an optional per-image mask.

    ``mask`` is ``(B, K')`` (bool) when the caller gave a ``(B, K)`` multi-hot mask: maps where it is False
    are zeroed. ``indices is None`` means all classes (known only after the forward pass). ``per_image``
    ``(B, k)`` gives each image its own classes; ``top_k`` asks for each image's ``k`` highest logits
    (known only after the forward pass).
    """

    indices: tuple[int, ...] | None
    mask: Tensor | None = None
    per_image: Tensor | None = None
    top_k: int | None = None

    def planned(self, num_classes: int) -> frozenset[int]:
        """The classes a call will compute, assuming the model still has ``num_classes`` classes.

        For ``top_k`` every class may be chosen: all of them.
        """
        if self.per_image is not None:
            return frozenset(self.per_image.flatten().tolist())
        if self.mask is not None:
            return frozenset(self.mask.any(dim=0).nonzero().flatten().tolist())
        return frozenset(range(num_classes) if self.indices is None else self.indices)

    def resolve(self, logits: Tensor) -> ResolvedClasses:
        """Final class list and mask, once the logits ``(B, K)`` of the forward pass are known."""
        num_classes = int(logits.shape[1])
        if self.top_k is not None:
            if self.top_k > num_classes:
                raise ValueError(
                    f"`top_k` must be <= {num_classes} (the model has {num_classes} classes), "
                    f"got {self.top_k}"
                )
            chosen = logits.detach().float().topk(self.top_k, dim=1).indices.cpu()  # highest score first
            return ResolvedClasses(sorted(set(chosen.flatten().tolist())), None, self.top_k, chosen)
        if self.mask is not None:
            if self.mask.shape[1] != num_classes:
                raise ValueError(
                    f"`classes` mask must have shape (B, {num_classes}) for a model with {num_classes} "
                    f"classes, got {format_shape(self.mask.shape)}"
                )
            present = self.mask.any(dim=0).nonzero().flatten().tolist()
            return ResolvedClasses(present, take(self.mask, 1, present), num_classes)
        if self.per_image is not None:
            wrong = self.per_image[self.per_image >= num_classes]
            if wrong.numel():
                raise ValueError(
                    f"`classes` must be class indices in [0, {num_classes}), got {int(wrong[0])} "
                    f"(the model has {num_classes} classes)"
                )
            indices = sorted(set(self.per_image.flatten().tolist()))
            return ResolvedClasses(indices, None, int(self.per_image.shape[1]), self.per_image)
        indices = list(range(num_classes)) if self.indices is None else list(self.indices)
        out_of_range = [k for k in indices if k >= num_classes]
        if out_of_range:
            raise ValueError(
                f"`classes` must be class indices in [0, {num_classes}), got {out_of_range[0]} "
                f"(the model has {num_classes} classes)"
            )
        return ResolvedClasses(indices, None, len(indices))


def to_device(indices: Tensor, device: torch.device) -> Tensor:
    """Host ``indices`` on ``device``, copied without waiting for the device (``non_blocking``).

    A blocking copy from the host waits for every kernel queued before it; a non-blocking one from ordinary
    (pageable) memory is staged by the driver before the call returns, so ``indices`` may be freed at once.
    """
    return indices.to(device, non_blocking=True)


def take(values: Tensor, dim: int, indices: Sequence[int]) -> Tensor:
    """The slices ``indices`` of ``values`` along ``dim``, without a host synchronisation.

    All of them in order is ``values`` itself, a run of consecutive indices a view (``narrow``); any other
    list goes to the device as an index tensor, copied without blocking (``to_device``), where indexing with
    a Python list would copy it with a wait.
    """
    count = len(indices)
    if count and list(indices) == list(range(indices[0], indices[0] + count)):
        return values if count == values.shape[dim] else values.narrow(dim, indices[0], count)
    index = to_device(torch.tensor(list(indices), dtype=torch.int64), values.device)
    return values.index_select(dim, index)


def parse_classes(classes: Any, batch_size: int, top_k: Any = None) -> ClassRequest:
    """Validate the form of ``classes`` and ``top_k`` before any work starts.

    The range is checked after the forward, against the model's number of classes.
    """
    if top_k is not None:
        if classes is not None:
            raise ValueError("pass either `classes` or `top_k`, not both")
        if not is_int(top_k):
            raise TypeError(f"`top_k` must be an int >= 1 or None, got {type_name(top_k)}")
        top_k = int(top_k)
        if top_k < 1:
            raise ValueError(f"`top_k` must be an int >= 1 or None, got {top_k}")
        return ClassRequest(None, top_k=top_k)
    if classes is None:
        return ClassRequest(None)
    if isinstance(classes, bool):
        raise TypeError("`classes` must be None, an int, a list of ints or a (B, K) mask, got bool")
    if is_int(classes) and not isinstance(classes, Tensor):
        return ClassRequest((_non_negative(int(classes)),))
    if isinstance(classes, Tensor):
        if classes.ndim == 2:
            if classes.shape[0] != batch_size:
                raise ValueError(
                    f"`classes` mask must have shape (B, K) with B = {batch_size} images, "
                    f"got {format_shape(classes.shape)}"
                )
            check_binary(classes, "classes")
            return ClassRequest(None, classes.to(dtype=torch.bool))
        if classes.ndim <= 1 and not classes.is_floating_point() and not classes.is_complex():
            if classes.dtype == torch.bool:
                raise ValueError(
                    "`classes` (B,) tensor must hold integer class indices, got dtype torch.bool"
                )
            if classes.ndim == 0:
                return ClassRequest((_non_negative(int(classes)),))
            if classes.shape[0] != batch_size:
                raise ValueError(
                    f"`classes` (B,) tensor must hold one class per image (B = {batch_size}), got shape "
                    f"{format_shape(classes.shape)}; for the same classes in every image pass a list"
                )
            per_image = classes.detach().to("cpu", torch.int64)  # one copy to the host: checked there
            if bool((per_image < 0).any()):
                raise ValueError(f"`classes` must be non-negative class indices, got {int(per_image.min())}")
            return ClassRequest(None, None, per_image[:, None])
        raise ValueError(
            "`classes` tensor must be a (B,) tensor of one class index per image or a (B, K) multi-hot "
            f"mask, got shape {format_shape(classes.shape)} and dtype {classes.dtype}"
        )
    if isinstance(classes, Sequence) and not isinstance(classes, str):
        if not classes:
            raise ValueError("`classes` must not be an empty list")
        for k in classes:
            if not is_int(k):
                raise TypeError(f"`classes` must hold ints, got {type_name(k)}")
        return ClassRequest(tuple(_non_negative(int(k)) for k in classes))
    raise TypeError(
        f"`classes` must be None, an int, a list of ints or a (B, K) mask, got {type_name(classes)}"
    )


def _non_negative(index: int) -> int:
    if index < 0:
        raise ValueError(f"`classes` must be non-negative class indices, got {index}")
    return index
