"""The ClassHierarchy type: its levels, label remapping, JSON form and tree views.

The methods about saturated groups live in ``hiercam.hierarchy.saturation``; the checks, the JSON
form and the tree views are private modules of this package.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from hiercam._io import atomic_write_json
from hiercam._validation import (
    check_binary,
    check_class_names,
    check_int,
    check_tensor,
    format_shape,
    type_name,
)
from hiercam.hierarchy._checks import (
    as_index_list,
    assignment_of_groups,
    check_assignment,
    check_singletons,
)
from hiercam.hierarchy._io import FORMAT, FORMAT_VERSION, from_mapping, read_json
from hiercam.hierarchy._tree import render_html, render_text
from hiercam.hierarchy.saturation import SaturationMethods

__all__ = ["ClassHierarchy"]


class ClassHierarchy(SaturationMethods):
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
        self._check_labels(labels)
        if level == 0:
            return labels.clone()
        index = torch.tensor(self._assignment_list(level), device=labels.device)
        membership = torch.nn.functional.one_hot(index, self.num_groups(level)).to(torch.float32)
        return (labels.to(torch.float32) @ membership > 0).to(labels.dtype)

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

    @classmethod
    def from_groups(
        cls,
        levels: Sequence[Sequence[Sequence[str]]],
        class_names: Sequence[str],
        *,
        singletons: Sequence[str] = (),
    ) -> ClassHierarchy:
        """A hierarchy written by hand: each group level as its groups of class names (e.g. from WordNet).

        The groups of a level are numbered in the order given. Everything else is checked as the constructor
        checks it (nested levels, strictly fewer groups per level).

        Args:
            levels: one sequence per group level ``1..L``; each holds that level's groups, each group a
                non-empty sequence of names from ``class_names``; every class in exactly one group per level.
            class_names: the ``K`` class names, in the classifier's order.
            singletons: names of the classes kept out of the grouping (alone in their group at every level).

        Returns:
            The hierarchy; ``to_dict`` / ``save`` give its JSON (``grouping_source = "file"`` reads it).

        Raises:
            TypeError: a level, group, name or singleton has the wrong type.
            ValueError: a name is not a class, a class is in two groups of a level or in none, a group is
                empty, or the constructor refuses the levels; the message names the level and the group.

        Examples:
            >>> h = ClassHierarchy.from_groups(
            ...     [[["cat", "dog"], ["car", "bus"]]], class_names=["cat", "car", "dog", "bus"]
            ... )
            >>> h.assignments(1)
            tensor([0, 1, 0, 1])
            >>> h.group_names(1)
            ['{cat, dog}', '{car, bus}']
        """
        if isinstance(class_names, str) or not isinstance(class_names, Sequence):
            raise TypeError(f"`class_names` must be a sequence of strings, got {type_name(class_names)}")
        names = check_class_names(class_names, len(class_names))
        if len(set(names)) != len(names):
            raise ValueError("`class_names` must not repeat a name (groups name their classes)")
        if isinstance(levels, (str, bytes)) or not isinstance(levels, Sequence):
            raise TypeError(f"`levels` must be a sequence of group levels, got {type_name(levels)}")
        assignments = [assignment_of_groups(groups, i, names) for i, groups in enumerate(levels)]
        if isinstance(singletons, str) or not isinstance(singletons, Sequence):
            raise TypeError(f"`singletons` must be a sequence of class names, got {type_name(singletons)}")
        if not all(isinstance(name, str) for name in singletons):
            raise TypeError("`singletons` must hold class names (str)")
        unknown = [name for name in singletons if name not in names]
        if unknown:
            raise ValueError(f"`singletons` names {unknown[0]!r}, which is not one of `class_names`")
        return cls(assignments, names, singletons=[names.index(name) for name in singletons])

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

    def _check_labels(self, labels: Tensor) -> None:
        """``labels`` is a 0/1 tensor ``(B, K)``."""
        check_tensor(labels, "labels", dims="B, K")
        if labels.shape[1] != self.num_classes:
            raise ValueError(
                f"`labels` must have shape (B, {self.num_classes}), got {format_shape(labels.shape)}"
            )
        check_binary(labels, "labels")

    def _assignment_list(self, level: int) -> tuple[int, ...]:
        if self._check_level(level) == 0:
            return tuple(range(self.num_classes))
        return self._assignments[level - 1]
