"""The class hierarchy: levels of nested class groups (paper section 3.3), as one immutable data type.

Level 0 is the ``K`` original classes; level ``l`` holds ``N_l`` groups, each a union of groups of level
``l - 1``. Each group level becomes a multi-label classification problem whose labels are given by
[`ClassHierarchy.remap_labels`][hiercam.ClassHierarchy.remap_labels]. The clustering that builds a hierarchy
lives in [`hiercam.grouping`][hiercam.HierarchicalKMeans]; fusion, datasets and reports need only this module.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from hiercam._hierarchy_checks import as_index_list, check_assignment, check_class_names, check_singletons
from hiercam._hierarchy_io import FORMAT, FORMAT_VERSION, from_mapping, read_json
from hiercam._hierarchy_split import GroupSplit, SaturatedSplits, split_levels
from hiercam._hierarchy_tree import render_html, render_text
from hiercam._io import atomic_write_json
from hiercam._validation import (
    check_binary,
    check_int,
    check_tensor,
    check_threshold,
    format_shape,
    type_name,
)

__all__ = ["ClassHierarchy", "GroupSplit", "SaturatedSplits", "frequent_classes"]


class ClassHierarchy:
    """An immutable hierarchy of class groups: level 0 holds the classes, level ``l`` holds ``N_l`` groups.

    Every group at level ``l`` is a union of groups at level ``l - 1`` (the hierarchy is nested).

    Classes *kept out of the grouping* (``singletons``, e.g. a class present in almost every image; see
    [`frequent_classes`][hiercam.frequent_classes]) are alone in their group at every level. The tree views
    mark them, and [`drop_saturated_levels`][hiercam.ClassHierarchy.drop_saturated_levels] does not let their
    groups veto a level.

    Args:
        assignments: one sequence per group level ``1..L``, each of length ``K``: the group index
            (``0..N_l-1``, every group non-empty) of each class at that level.
        class_names: ``K`` names; defaults to ``"class 0"``, ``"class 1"``, ...
        singletons: indices of the classes kept out of the grouping; each must be alone in its group at
            every level.

    Raises:
        TypeError: an assignment or a singleton is not an integer (``int`` or a NumPy integer; bools are
            refused).
        ValueError: lengths differ, a group id is outside ``0..N_l-1`` or a group is empty, group counts do
            not strictly decrease, the levels are not nested, ``class_names`` has the wrong length, or a
            singleton is out of range, repeated or shares a group. All is checked in time and memory
            proportional to ``K`` times the number of levels, before anything else is built.

    Examples:
        >>> h = ClassHierarchy([[0, 0, 1, 2], [0, 0, 1, 1]], class_names=["cat", "dog", "car", "bus"])
        >>> h.level_sizes
        (4, 3, 2)
        >>> h.group_names(1)
        ['{cat, dog}', '{car}', '{bus}']
        >>> h.remap_labels(torch.tensor([[1, 0, 0, 1]]), level=2)
        tensor([[1, 1]])
    """

    __slots__ = ("_assignments", "_class_names", "_singletons", "_sizes")

    def __init__(
        self,
        assignments: Sequence[Sequence[int]],
        class_names: Sequence[str] | None = None,
        *,
        singletons: Sequence[int] = (),
    ) -> None:
        given: object = assignments
        if isinstance(given, (Tensor, np.ndarray)):
            given = given.tolist()
        if isinstance(given, (str, bytes)) or not isinstance(given, Sequence):
            raise TypeError(
                f"`assignments` must be a sequence of per-level assignments, got {type_name(given)}"
            )
        if not given:
            raise ValueError("`assignments` must hold at least one group level, got an empty sequence")
        levels = [tuple(as_index_list(a, f"assignments[{i}]")) for i, a in enumerate(given)]
        num_classes = len(levels[0])
        if num_classes == 0:
            raise ValueError("`assignments[0]` must hold the group of every class, got an empty sequence")
        names = check_class_names(class_names, num_classes)
        sizes = [num_classes]
        finer = tuple(range(num_classes))
        for i, level in enumerate(levels, start=1):
            sizes.append(check_assignment(level, i, finer, sizes[-1]))
            finer = level
        alone = check_singletons(singletons, levels, names)
        self._assignments: tuple[tuple[int, ...], ...] = tuple(levels)
        self._class_names: tuple[str, ...] = names
        self._sizes: tuple[int, ...] = tuple(sizes)
        self._singletons: tuple[int, ...] = alone

    # ----------------------------------------------------------------------------------------- structure
    @property
    def num_classes(self) -> int:
        """``K``, the number of original classes."""
        return self._sizes[0]

    @property
    def class_names(self) -> tuple[str, ...]:
        """The ``K`` class names."""
        return self._class_names

    @property
    def singletons(self) -> tuple[int, ...]:
        """The classes kept out of the grouping (alone in their group at every level), sorted."""
        return self._singletons

    @property
    def num_levels(self) -> int:
        """Number of levels, level 0 (the classes) included: valid levels are ``0..num_levels-1``."""
        return len(self._sizes)

    @property
    def level_sizes(self) -> tuple[int, ...]:
        """Group counts per level, ``(K, N_1, ..., N_L)``."""
        return self._sizes

    def num_groups(self, level: int) -> int:
        """``N_level``, the number of groups at ``level`` (``K`` at level 0)."""
        return self._sizes[self._check_level(level)]

    def assignments(self, level: int) -> Tensor:
        """Group index of every class at ``level`` as a ``LongTensor (K,)``; level 0 is the identity."""
        return torch.tensor(self._assignment_list(level), dtype=torch.long)

    def groups(self, level: int) -> list[list[int]]:
        """The classes of each group at ``level``: ``N_level`` sorted lists of class indices."""
        members: list[list[int]] = [[] for _ in range(self.num_groups(level))]
        for cls, group in enumerate(self._assignment_list(level)):
            members[group].append(cls)
        return members

    def group_of(self, class_index: int, level: int) -> int:
        """Index of the group holding class ``class_index`` at ``level``."""
        check_int(class_index, "class_index", minimum=0, maximum=self.num_classes - 1)
        return self._assignment_list(level)[class_index]

    def group_names(self, level: int) -> list[str]:
        """Readable group names: class names at level 0, ``"{cat, dog}"`` at group levels."""
        if self._check_level(level) == 0:
            return list(self._class_names)
        return [
            "{" + ", ".join(self._class_names[c] for c in members) + "}" for members in self.groups(level)
        ]

    def remap_labels(self, labels: Tensor, level: int) -> Tensor:
        """Turn multi-hot class labels into multi-hot group labels: a group is present when any member is.

        Args:
            labels: 0/1 labels of shape ``(B, K)``, any dtype (bool included).
            level: the level whose groups are the new classes.

        Returns:
            Group labels ``(B, N_level)``, same device and dtype as ``labels`` (a copy at level 0).

        Raises:
            TypeError: ``labels`` is not a tensor.
            ValueError: ``labels`` is not ``(B, K)`` or holds values other than 0 and 1.
        """
        self._check_level(level)
        check_tensor(labels, "labels", dims="B, K")
        if labels.shape[1] != self.num_classes:
            raise ValueError(
                f"`labels` must have shape (B, {self.num_classes}), got {format_shape(labels.shape)}"
            )
        check_binary(labels, "labels")
        if level == 0:
            return labels.clone()
        index = torch.tensor(self._assignment_list(level), device=labels.device)
        membership = torch.nn.functional.one_hot(index, self.num_groups(level)).to(torch.float32)
        return (labels.to(torch.float32) @ membership > 0).to(labels.dtype)

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
            >>> h = ClassHierarchy([[0, 0, 1]])
            >>> h.group_presence(torch.tensor([[1, 0, 0], [0, 1, 1], [0, 0, 1]]), level=1)
            tensor([0.6667, 0.6667])
        """
        remapped = self.remap_labels(labels, level)
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
        limit = check_threshold(max_presence, "max_presence")
        kept = []
        for level in range(1, self.num_levels):
            presence = self.group_presence(labels, level)
            groups = self.groups(level)
            counted = [g for g, members in enumerate(groups) if members[0] not in self._singletons]
            if float(presence[counted].max()) <= limit:
                kept.append(level)
        if not kept:
            frequent = [c for c in frequent_classes(labels, limit) if c not in self._singletons]
            if frequent:
                named = ", ".join(repr(self._class_names[c]) for c in frequent)
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
        return ClassHierarchy(
            [self._assignments[level - 1] for level in kept], self._class_names, singletons=self._singletons
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
            >>> h = ClassHierarchy([[0, 0, 1]], class_names=["cat", "dog", "car"])
            >>> result = h.saturated_splits(torch.tensor([[1, 1, 0], [1, 1, 1]]), max_presence=0.9)
            >>> result.hierarchy is None, result.removed_levels  # {cat}, {dog}, {car}: the classes
            (True, (1,))
            >>> result.splits[0].group, result.splits[0].halves, result.splits[0].half_presence
            ((0, 1), ((0,), (1,)), (1.0, 1.0))
        """
        limit = check_threshold(max_presence, "max_presence")
        check_tensor(labels, "labels", dims="B, K")
        if labels.shape[1] != self.num_classes:
            raise ValueError(
                f"`labels` must have shape (B, {self.num_classes}), got {format_shape(labels.shape)}"
            )
        if labels.shape[0] == 0:
            raise ValueError("`labels` must hold at least one image")
        check_binary(labels, "labels")
        kept, splits, removed = split_levels(self._assignments, labels.detach().cpu() != 0, limit)
        hierarchy = ClassHierarchy(kept, self._class_names, singletons=self._singletons) if kept else None
        return SaturatedSplits(hierarchy, tuple(splits), tuple(removed))

    # ----------------------------------------------------------------------------------------- persistence
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready description (see [`from_dict`][hiercam.ClassHierarchy.from_dict])."""
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "class_names": list(self._class_names),
            "assignments": [list(level) for level in self._assignments],
            "singletons": list(self._singletons),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ClassHierarchy:
        """Rebuild a hierarchy from [`to_dict`][hiercam.ClassHierarchy.to_dict] output, validating it.

        Raises:
            TypeError: ``data`` is not a mapping.
            ValueError: a key is missing or has the wrong type or value; the message names the key.
        """
        if not isinstance(data, Mapping):
            raise TypeError(f"`data` must be a mapping, got {type_name(data)}")
        return from_mapping(cls, data, "`data`")

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the hierarchy as JSON, atomically (a temporary file renamed into place)."""
        return atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ClassHierarchy:
        """Read a hierarchy written by ``save`` (plain JSON: nothing is executed).

        Everything is validated before the hierarchy is built (see
        [`ClassHierarchy`][hiercam.ClassHierarchy]): a tampered file costs time and memory proportional to its
        size, never more.

        Raises:
            FileNotFoundError, PermissionError: the file cannot be read (the message holds the path).
            ValueError: the file is not UTF-8 JSON, or a key is missing or wrong; the message names the file
                and the key.
        """
        where = repr(os.fspath(path))
        return from_mapping(cls, read_json(path, where), where)

    # ----------------------------------------------------------------------------------------- display
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ClassHierarchy):
            return NotImplemented
        return (
            self._assignments == other._assignments
            and self._class_names == other._class_names
            and self._singletons == other._singletons
        )

    def __hash__(self) -> int:
        return hash((self._assignments, self._class_names, self._singletons))

    def __repr__(self) -> str:
        """One line: ``ClassHierarchy(5 classes, levels 5 -> 3 -> 2)``, the group count of every level.

        Classes kept out of the grouping are counted: ``ClassHierarchy(5 classes, levels 5 -> 3 -> 2, 1 kept
        out of the grouping)``.
        """
        sizes = " -> ".join(str(s) for s in self._sizes)
        alone = f", {len(self._singletons)} kept out of the grouping" if self._singletons else ""
        return f"ClassHierarchy({self.num_classes} classes, levels {sizes}{alone})"

    def __str__(self) -> str:
        """The tree, top level first: one line per group with its size; level-1 groups name their classes.

        At most 8 names are shown per group, then a count of the others. The group of a class kept out of
        the grouping says so: ``level 2 group 1 (1 class, kept out of the grouping)``.
        """
        return render_text(self)

    def _repr_html_(self) -> str:
        """The tree as nested HTML lists, shown by Jupyter when a hierarchy is a cell's last line.

        Each group is a collapsible ``<details>`` element holding its sub-groups; level-1 groups list all
        their class names (HTML-escaped).
        """
        return render_html(self)

    # ----------------------------------------------------------------------------------------- helpers
    def _check_level(self, level: int) -> int:
        return check_int(level, "level", minimum=0, maximum=self.num_levels - 1)

    def _assignment_list(self, level: int) -> tuple[int, ...]:
        if self._check_level(level) == 0:
            return tuple(range(self.num_classes))
        return self._assignments[level - 1]


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
