"""The maps of every level of a level-heads model in one pass, ready for ``fuse_hierarchy`` (Eq. 6).

A model whose output is a sequence of logits, one ``(B, N_l)`` tensor per hierarchy level with level 0 first
(hiercam's [`LevelHeadsNet`][hiercam.models.LevelHeadsNet], or any model of yours), is explained at every
level by one extractor: its ``output`` concatenates the levels' logits into ``(B, K + N_1 + ... + N_L)``, so
one forward pass and one batched backward give the maps of every class and every group, which are then split
per level. The maps equal those of one extractor per level (``GradCAM(model, layer, output=level)``), since
each map depends only on its own score.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from hiercam._validation import format_shape, type_name
from hiercam.cam.engine import BaseCAM, SizeArg
from hiercam.cam.methods import GradCAM
from hiercam.hierarchy import ClassHierarchy
from hiercam.maps import NormalizeMode

__all__ = ["LevelHeadsMaps", "level_heads_maps"]


class LevelHeadsMaps(NamedTuple):
    """The maps of every level of a level-heads model: unpack as ``base, levels``."""

    base: Tensor
    """``(B, K, H', W')``: the maps of the classes (level 0)."""
    levels: tuple[Tensor, ...]
    """One ``(B, N_l, H', W')`` tensor per group level ``l = 1..L``, in level order (``fuse_hierarchy``'s
    ``level_maps``)."""


def level_heads_maps(
    model: nn.Module,
    images: Tensor,
    hierarchy: ClassHierarchy,
    *,
    method: type[BaseCAM] = GradCAM,
    target_layer: nn.Module | str | None = "features",
    size: SizeArg = "input",
    normalize: NormalizeMode | None = "max",
) -> LevelHeadsMaps:
    """All-class maps of every level of a model returning one logits tensor per level, in one pass.

    One extractor ``method(model, target_layer, output=...)`` explains the concatenated logits of all levels
    (one forward and, for gradient-based methods, one batched backward for the ``K + N_1 + ... + N_L``
    scores; the extractor is removed before returning, so no hook or stored tensor is left). Each map is
    normalised on its own, as the extractor does. Then
    ``hiercam.fuse_hierarchy(base, levels, hierarchy, labels)`` fuses them (Eq. 6).

    Args:
        model: a model whose output is a sequence of ``hierarchy.num_levels`` logits tensors ``(B, N_l)``,
            level 0 first, e.g. a [`LevelHeadsNet`][hiercam.models.LevelHeadsNet]; its training flags are
            restored (the engine runs it in eval mode).
        images: input batch ``(B, C, H, W)``, as the extractor takes it.
        hierarchy: the hierarchy the model's heads predict.
        method: an extractor class: [`GradCAM`][hiercam.GradCAM] (default) or another of the family
            (``GradCAMPlusPlus``, ``XGradCAM``, ``LayerCAM``, ``HiResCAM``), or a gradient-free one
            (``ScoreCAM``, ``AblationCAM``, ``EigenCAM``). ``CAM`` needs one linear classifier over all the
            scores and refuses (on ``features -> average pool -> linear`` heads its maps equal Grad-CAM's
            after max-normalisation anyway).
        target_layer: the explained layer: ``"features"`` (a ``LevelHeadsNet``'s shared feature maps), any
            module or dotted name of ``model``, or ``None`` to let the engine choose.
        size: ``"input"``, ``"feature"`` or ``(H, W)``, as the extractor's ``size``.
        normalize: ``"max"``, ``"minmax"`` or ``None``, as the extractor's ``normalize``.

    Returns:
        [`LevelHeadsMaps`][hiercam.cam.LevelHeadsMaps] ``(base (B, K, H', W'), levels ((B, N_1, H', W'),
        ...))``, float32 on the images' device (views into one tensor).

    Raises:
        TypeError: ``hierarchy`` is not a ``ClassHierarchy``, ``method`` not a ``BaseCAM`` subclass, or the
            model's output not a sequence of tensors.
        ValueError: the model's output does not hold one ``(B, N_l)`` tensor per level of ``hierarchy``;
            and whatever the extractor raises for its arguments.

    Examples:
        >>> import torch
        >>> from hiercam import ClassHierarchy, SmallConvNet, fuse_hierarchy
        >>> from hiercam.models import LevelHeadsNet
        >>> hierarchy = ClassHierarchy([[0, 0, 1, 2], [0, 0, 1, 1]])  # 4 classes -> 3 -> 2 groups
        >>> net = LevelHeadsNet(SmallConvNet(width=4), hierarchy)
        >>> images = torch.rand(2, 3, 32, 32)
        >>> base, levels = level_heads_maps(net, images, hierarchy)
        >>> base.shape, [tuple(m.shape) for m in levels]
        (torch.Size([2, 4, 32, 32]), [(2, 3, 32, 32), (2, 2, 32, 32)])
        >>> labels = torch.tensor([[1, 0, 1, 0], [0, 1, 0, 1]])
        >>> fuse_hierarchy(base, levels, hierarchy, labels).shape
        torch.Size([2, 4, 32, 32])
    """
    if not isinstance(hierarchy, ClassHierarchy):
        raise TypeError(f"`hierarchy` must be a ClassHierarchy, got {type_name(hierarchy)}")
    if not (isinstance(method, type) and issubclass(method, BaseCAM)):
        raise TypeError(f"`method` must be a CAM class such as hiercam.GradCAM, got {method!r}")
    sizes = hierarchy.level_sizes
    extractor = method(model, target_layer, output=_Concatenated(sizes))
    try:
        maps = extractor(images, size=size, normalize=normalize)
    finally:
        extractor.remove()
    base, *levels = maps.split(list(sizes), dim=1)
    return LevelHeadsMaps(base, tuple(levels))


class _Concatenated:
    """The engine's ``output``: the levels' logits ``(B, N_l)`` concatenated into ``(B, sum N_l)``."""

    def __init__(self, sizes: Sequence[int]) -> None:
        self.sizes = tuple(sizes)

    def __call__(self, output: Any) -> Tensor:
        if isinstance(output, Tensor) or not isinstance(output, Sequence):
            raise TypeError(
                f"`model` must return one logits tensor per level (a sequence of {len(self.sizes)}), got "
                f"{type_name(output)}"
            )
        if len(output) != len(self.sizes):
            raise ValueError(
                f"`model` returned {len(output)} outputs but `hierarchy` has {len(self.sizes)} levels "
                f"(sizes {self.sizes})"
            )
        for level, (logits, size) in enumerate(zip(output, self.sizes, strict=True)):
            if not isinstance(logits, Tensor) or logits.ndim != 2 or logits.shape[1] != size:
                got = format_shape(logits.shape) if isinstance(logits, Tensor) else type_name(logits)
                raise ValueError(
                    f"output {level} of `model` must be level {level}'s logits (B, {size}) for `hierarchy`, "
                    f"got {got}"
                )
        return torch.cat(list(output), dim=1)
