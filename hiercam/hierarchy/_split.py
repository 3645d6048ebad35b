"""Splitting the saturated groups of a ClassHierarchy: the kernel of ``split_saturated_groups``.

A group present in more than ``max_presence`` of the images is cut into two halves of its children (the groups
of the level below; classes at level 1), again and again while a saturated group has two children or more.
Levels are processed from the finest up, so that every level's children are the new groups of the level
below and the levels stay nested. Time ``O(B K^2)`` at worst for ``B`` images and ``K`` classes per level.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from hiercam.hierarchy.core import ClassHierarchy

__all__ = ["GroupSplit", "SaturatedSplits", "split_levels"]


@dataclass(frozen=True)
class GroupSplit:
    """One saturated group cut in two by ``ClassHierarchy.split_saturated_groups``.

    Attributes:
        level: the group's level in the hierarchy that was split (``1..L``).
        group: the group's classes, sorted.
        presence: the fraction of the images in which the group is present (more than ``max_presence``).
        halves: the classes of the two halves, each sorted, the half holding the group's first class first.
            A half is a union of whole children (groups of ``level - 1``), so the levels stay nested; a half
            that is still saturated is split again (a later ``GroupSplit``).
        half_presence: the fraction of the images in which each half is present.
    """

    level: int
    group: tuple[int, ...]
    presence: float
    halves: tuple[tuple[int, ...], tuple[int, ...]]
    half_presence: tuple[float, float]


@dataclass(frozen=True)
class SaturatedSplits:
    """What [`saturated_splits`][hiercam.ClassHierarchy.saturated_splits] does to a hierarchy.

    Attributes:
        hierarchy: the hierarchy with its saturated groups split and the levels that became the level below
            removed; ``None`` when no group level is left.
        splits: every split, level by level from the finest up, each group's splits in order (a half split
            again comes after the split that made it).
        removed_levels: the levels of the original hierarchy (``1..L``) removed because, once split, they held
            the same groups as the level below (every class alone, at level 1).
    """

    hierarchy: ClassHierarchy | None
    splits: tuple[GroupSplit, ...]
    removed_levels: tuple[int, ...]


def split_levels(
    levels: Sequence[tuple[int, ...]], present: Tensor, limit: float
) -> tuple[list[tuple[int, ...]], list[GroupSplit], list[int]]:
    """Split the saturated groups of every level, bottom-up.

    Args:
        levels: the assignment of every group level ``1..L`` (valid and nested).
        present: ``(B, K)`` bool labels on the CPU, ``B >= 1``.
        limit: the largest presence a splittable group may keep.

    Returns:
        The assignments of the levels kept, every split, and the removed levels (``1..L``).
    """
    num_classes = present.shape[1]
    below = [[c] for c in range(num_classes)]  # the groups (sorted class lists) of the finest level kept
    kept: list[tuple[int, ...]] = []
    splits: list[GroupSplit] = []
    removed: list[int] = []
    for depth, assignment in enumerate(levels, start=1):
        members = torch.zeros(num_classes, len(below))
        for child, classes in enumerate(below):
            members[classes, child] = 1.0
        covered = present.to(torch.float32) @ members > 0  # (B, children): where each child is present
        children: list[list[int]] = [[] for _ in range(max(assignment) + 1)]
        for child, classes in enumerate(below):  # nested: a child's classes share one group
            children[assignment[classes[0]]].append(child)
        parts: list[list[int]] = []
        for group in children:
            parts += _split_group(group, covered, below, limit, depth, splits)
        if len(parts) == len(below):  # the same groups as the level below
            removed.append(depth)
            continue
        below = [sorted(c for child in part for c in below[child]) for part in parts]
        new = [0] * num_classes
        for index, classes in enumerate(below):
            for c in classes:
                new[c] = index
        kept.append(tuple(new))
    return kept, splits, removed


def _presence(cover: Tensor) -> float:
    """The fraction of images covered, computed as ``ClassHierarchy.group_presence`` does (float32 mean)."""
    return float(cover.to(torch.float32).mean())


def _split_group(
    group: list[int],
    covered: Tensor,
    below: list[list[int]],
    limit: float,
    level: int,
    splits: list[GroupSplit],
) -> list[list[int]]:
    """The parts of one group (lists of child indices), split while saturated and splittable, in order."""
    done: list[list[int]] = []
    pending = [group]  # a stack: the first half is finished before the second
    while pending:
        part = pending.pop()
        presence = _presence(covered[:, part].any(dim=1))
        if len(part) < 2 or presence <= limit:
            done.append(part)
            continue
        halves, shares = _halves(part, covered, below)
        splits.append(
            GroupSplit(
                level,
                _classes(part, below),
                presence,
                (_classes(halves[0], below), _classes(halves[1], below)),
                shares,
            )
        )
        pending += [halves[1], halves[0]]
    return done


def _halves(
    part: list[int], covered: Tensor, below: list[list[int]]
) -> tuple[tuple[list[int], list[int]], tuple[float, float]]:
    """Two halves of ``part`` (child indices) with balanced presences, greedily (the method's rule)."""
    order = sorted(part, key=lambda child: (-_presence(covered[:, child]), below[child][0]))
    halves: tuple[list[int], list[int]] = ([], [])
    covers = [torch.zeros(covered.shape[0], dtype=torch.bool) for _ in range(2)]
    shares = [0.0, 0.0]
    for child in order:
        joined = [covers[side] | covered[:, child] for side in range(2)]
        joined_shares = [_presence(cover) for cover in joined]
        side = min(
            range(2),
            key=lambda s: (max(joined_shares[s], shares[1 - s]), len(halves[s]), s),
        )
        halves[side].append(child)
        covers[side], shares[side] = joined[side], joined_shares[side]
    first, second = (sorted(h) for h in halves)
    if min(below[c][0] for c in second) < min(below[c][0] for c in first):
        return (second, first), (shares[1], shares[0])
    return (first, second), (shares[0], shares[1])


def _classes(part: list[int], below: list[list[int]]) -> tuple[int, ...]:
    return tuple(sorted(c for child in part for c in below[child]))
