"""Groups present in (almost) every image: find the classes behind them, drop or split saturated levels.

A group present in nearly every training image gives its level a near-constant target (not in the paper).
[`frequent_classes`][hiercam.frequent_classes] finds the classes to keep out of the grouping, and the
[`ClassHierarchy`][hiercam.ClassHierarchy] methods defined here measure a group's presence and remove
([`drop_saturated_levels`][hiercam.ClassHierarchy.drop_saturated_levels]) or split
([`split_saturated_groups`][hiercam.ClassHierarchy.split_saturated_groups]) what saturates.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import torch
from torch import Tensor

from hiercam._validation import check_binary, check_tensor, check_threshold
from hiercam.hierarchy._split import SaturatedSplits, split_levels

if TYPE_CHECKING:
    from hiercam.hierarchy.core import ClassHierarchy

__all__ = ["frequent_classes"]


class SaturationMethods:
    """The methods of [`ClassHierarchy`][hiercam.ClassHierarchy] about saturated groups (its one subclass)."""

    __slots__ = ()

    def group_presence(self, labels: Tensor, level: int) -> Tensor:
        """Fraction of images in which each group of ``level`` is present: ``(N_level,)`` float32.

        A group present in almost every training image gives a near-constant target, so its model learns
        little about where it is (its map carries little signal).

        Args:
            labels: 0/1 class labels ``(B, K)``, e.g. a whole training set's.
            level: the level whose groups are counted.

        Returns:
            ``(N_level,)`` fractions in ``[0, 1]`` on the device of ``labels``.

        Examples:
            >>> from hiercam.hierarchy import ClassHierarchy
            >>> h = ClassHierarchy([[0, 0, 1]])
            >>> h.group_presence(torch.tensor([[1, 0, 0], [0, 1, 1], [0, 0, 1]]), level=1)
            tensor([0.6667, 0.6667])
        """
        remapped = _hierarchy(self).remap_labels(labels, level)
        if remapped.shape[0] == 0:
            raise ValueError("`labels` must hold at least one image")
        return remapped.to(torch.float32).mean(dim=0)

    def drop_saturated_levels(self, labels: Tensor, max_presence: float) -> ClassHierarchy:
        """The hierarchy without the group levels that have a group present in more than ``max_presence``.

        Such a level turns into a near-constant classification problem for at least one group (not in the
        paper). The groups of the classes kept out of the grouping
        ([`singletons`][hiercam.ClassHierarchy.singletons]) are not counted: they are frequent by choice, and
        at level 0 already. The remaining levels stay
        nested; level 0 and the singletons are always kept.

        A class present in almost every image saturates every group that holds it: keep it out of the
        grouping, ``group_classes(..., singletons=frequent_classes(labels, max_presence))``, and this never
        fails because of it.

        Args:
            labels: 0/1 training labels ``(B, K)``.
            max_presence: the largest allowed fraction of images in which a group is present, in (0, 1).

        Returns:
            A new hierarchy with the kept levels (``self`` is unchanged).

        Raises:
            ValueError: every group level is saturated (the message names the classes present in more than
                ``max_presence`` of the images that are not kept out, if any), or bad ``labels``.

        Examples:
            >>> from hiercam.hierarchy import ClassHierarchy
            >>> h = ClassHierarchy([[0, 0, 1, 2], [0, 0, 0, 1]], class_names=["cat", "dog", "car", "bus"])
            >>> labels = torch.tensor([[1, 0, 0, 0], [0, 0, 1, 0], [0, 1, 0, 1]])
            >>> h.group_presence(labels, 2)  # {cat, dog, car} is in every image
            tensor([1.0000, 0.3333])
            >>> h.drop_saturated_levels(labels, max_presence=0.9).level_sizes
            (4, 3)
            >>> h.drop_saturated_levels(labels, max_presence=0.5).level_sizes
            Traceback (most recent call last):
                ...
            ValueError: every group level has a group present in more than 50% of the images ...
        """
        hierarchy = _hierarchy(self)
        limit = check_threshold(max_presence, "max_presence")
        kept = []
        for level in range(1, hierarchy.num_levels):
            presence = self.group_presence(labels, level)
            groups = hierarchy.groups(level)
            counted = [g for g, members in enumerate(groups) if members[0] not in hierarchy.singletons]
            if float(presence[counted].max()) <= limit:
                kept.append(level)
        if not kept:
            frequent = [c for c in frequent_classes(labels, limit) if c not in hierarchy.singletons]
            if frequent:
                named = ", ".join(repr(hierarchy.class_names[c]) for c in frequent)
                one = len(frequent) == 1
                hint = (
                    f"; {named} {'is' if one else 'are'} in more than {limit:.0%} of them: keep "
                    f"{'it' if one else 'them'} out of the grouping with "
                    "group_classes(..., singletons=frequent_classes(labels, max_presence))"
                )
            else:
                hint = " (raise `max_presence`)"
            raise ValueError(
                f"every group level has a group present in more than {limit:.0%} of the images{hint}"
            )
        return type(hierarchy)(
            [hierarchy._assignments[level - 1] for level in kept],
            hierarchy.class_names,
            singletons=hierarchy.singletons,
        )

    def split_saturated_groups(self, labels: Tensor, max_presence: float) -> ClassHierarchy:
        """The hierarchy with every saturated group split into halves of its children (not in the paper).

        A group present in more than ``max_presence`` of the images is cut in two, level by level from the
        finest up: its *children* (the groups of the level below, already split; classes at level 1) are
        shared between two halves, and a half still saturated with two children or more is cut again. A
        group of one child stays as it is (a class kept out of the grouping, see
        [`singletons`][hiercam.ClassHierarchy.singletons], is alone at every level and stays alone). The
        levels stay nested. A level that ends up with as many groups as the level below it (the same
        groups; every class alone, at level 1) is removed. Where
        [`drop_saturated_levels`][hiercam.ClassHierarchy.drop_saturated_levels] gives a level up, this
        keeps it with more, smaller groups; a group saturated by one class alone stays saturated (keep such a
        class out of the grouping, see [`frequent_classes`][hiercam.frequent_classes]).

        **The halves.** The children are taken in order of decreasing presence (ties: the child holding the
        smaller class index first), and each goes to the half for which the larger of the two halves'
        presences, once it is added, is smaller; on a tie, to the half with fewer children, then to the
        first. Presences are those of the union (a half is present in an image when any of its classes is),
        computed exactly from ``labels``. The rule is greedy and deterministic: the same inputs give the same
        hierarchy. Each group's halves take its place in the group order (the half holding its first class
        first).

        Args:
            labels: 0/1 training labels ``(B, K)``, ``B >= 1``, any dtype (not modified).
            max_presence: the largest allowed fraction of images in which a group is present, in (0, 1).

        Returns:
            A new hierarchy (``self`` is unchanged); see
            [`saturated_splits`][hiercam.ClassHierarchy.saturated_splits] for the splits it made.

        Raises:
            TypeError: ``labels`` is not a tensor, or ``max_presence`` is not a number.
            ValueError: ``labels`` is not ``(B, K)`` with ``B >= 1`` or holds values other than 0 and 1,
                ``max_presence`` is not in (0, 1), or every group level was removed (split down to the level
                below it).

        Examples:
            >>> from hiercam.hierarchy import ClassHierarchy
            >>> h = ClassHierarchy([[0, 0, 0, 1]], class_names=["cat", "dog", "car", "bus"])
            >>> labels = torch.tensor([[1, 0, 0, 0], [0, 1, 0, 1], [0, 0, 1, 0], [1, 0, 0, 0]])
            >>> h.group_presence(labels, 1)  # {cat, dog, car} is in every image
            tensor([1.0000, 0.2500])
            >>> split = h.split_saturated_groups(labels, max_presence=0.9)
            >>> split.group_names(1), split.group_presence(labels, 1)
            (['{cat}', '{dog, car}', '{bus}'], tensor([0.5000, 0.5000, 0.2500]))
        """
        result = self.saturated_splits(labels, max_presence)
        if result.hierarchy is None:
            raise ValueError(
                f"splitting the groups present in more than {max_presence:.0%} of the images removes every "
                "group level: each ends up with the same groups as the level below it"
            )
        return result.hierarchy

    def saturated_splits(self, labels: Tensor, max_presence: float) -> SaturatedSplits:
        """[`split_saturated_groups`][hiercam.ClassHierarchy.split_saturated_groups], with what it did.

        Args:
            labels: 0/1 training labels ``(B, K)``, ``B >= 1`` (not modified).
            max_presence: the largest allowed fraction of images in which a group is present, in (0, 1).

        Returns:
            The new hierarchy (``None`` when every group level was removed), every split and the removed
            levels, as a [`SaturatedSplits`][hiercam.hierarchy.SaturatedSplits].

        Raises:
            TypeError, ValueError: as ``split_saturated_groups``, except that no level being left is not an
                error here.

        Examples:
            >>> from hiercam.hierarchy import ClassHierarchy
            >>> h = ClassHierarchy([[0, 0, 1]], class_names=["cat", "dog", "car"])
            >>> result = h.saturated_splits(torch.tensor([[1, 1, 0], [1, 1, 1]]), max_presence=0.9)
            >>> result.hierarchy is None, result.removed_levels  # {cat}, {dog}, {car}: the classes
            (True, (1,))
            >>> result.splits[0].group, result.splits[0].halves, result.splits[0].half_presence
            ((0, 1), ((0,), (1,)), (1.0, 1.0))
        """
        hierarchy = _hierarchy(self)
        limit = check_threshold(max_presence, "max_presence")
        hierarchy._check_labels(labels)
        if labels.shape[0] == 0:
            raise ValueError("`labels` must hold at least one image")
        kept, splits, removed = split_levels(hierarchy._assignments, labels.detach().cpu() != 0, limit)
        rebuilt = (
            type(hierarchy)(kept, hierarchy.class_names, singletons=hierarchy.singletons) if kept else None
        )
        return SaturatedSplits(rebuilt, tuple(splits), tuple(removed))


def _hierarchy(methods: SaturationMethods) -> ClassHierarchy:
    """``methods`` as the ``ClassHierarchy`` it is, for the type checker (no copy, no check)."""
    return cast("ClassHierarchy", methods)


def frequent_classes(labels: Tensor, max_presence: float = 0.9) -> list[int]:
    """The classes present in more than ``max_presence`` of the images, to keep out of the grouping.

    A class present in almost every training image (e.g. "building" in 97 % of street scenes) makes every
    group that holds it near-constant; pass the result as ``singletons`` to
    [`group_classes`][hiercam.group_classes] or [`HierarchicalKMeans`][hiercam.HierarchicalKMeans] so that it
    stays its own group at every level.

    Args:
        labels: 0/1 class labels ``(B, K)`` of the training images, ``B >= 1``, any dtype.
        max_presence: the largest fraction of images a grouped class may be present in, in (0, 1); the same
            limit as [`drop_saturated_levels`][hiercam.ClassHierarchy.drop_saturated_levels]'s.

    Returns:
        The sorted indices of the classes present in strictly more than ``max_presence`` of the rows.

    Raises:
        TypeError: ``labels`` is not a tensor.
        ValueError: ``labels`` is not ``(B, K)`` with ``B >= 1``, holds values other than 0 and 1, or
            ``max_presence`` is not in (0, 1).

    Examples:
        >>> labels = torch.tensor([[1, 0, 1], [1, 1, 0], [1, 0, 0], [0, 0, 1]])
        >>> frequent_classes(labels, max_presence=0.7)  # class 0 is in 3 of 4 images
        [0]
    """
    check_tensor(labels, "labels", dims="B, K")
    limit = check_threshold(max_presence, "max_presence")
    if labels.shape[0] == 0:
        raise ValueError("`labels` must hold at least one image")
    check_binary(labels, "labels")
    presence = labels.to(torch.float64).mean(dim=0)
    return [int(c) for c in torch.nonzero(presence > limit).flatten().tolist()]
