"""Hierarchical class grouping (paper section 3.3): K-means on class vectors, then on the group centres.

Level 0 is the ``K`` original classes. Level 1 clusters the class vectors into ``N1`` groups with K-means
(Eq. 2-3); level ``l > 1`` clusters the ``N(l-1)`` centres of the previous level into ``Nl`` groups. Each
level becomes a multi-label classification problem whose targets are given by
[`ClassHierarchy.remap_targets`][hiercam.ClassHierarchy.remap_targets].
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from hiercam._io import atomic_write_json
from hiercam._validation import (
    check_binary,
    check_finite,
    check_int,
    check_tensor,
    check_threshold,
    format_shape,
    type_name,
)
from hiercam.similarity import class_embeddings

__all__ = ["ClassHierarchy", "HierarchicalKMeans", "group_classes"]

_FORMAT = "hiercam.ClassHierarchy"
_FORMAT_VERSION = 1
_NAMES_SHOWN = 8


class ClassHierarchy:
    """An immutable hierarchy of class groups: level 0 holds the classes, level ``l`` holds ``N_l`` groups.

    Every group at level ``l`` is a union of groups at level ``l - 1`` (the hierarchy is nested).

    Args:
        assignments: one sequence per group level ``1..L``, each of length ``K``: the group index
            (``0..N_l-1``, every group non-empty) of each class at that level.
        class_names: ``K`` names; defaults to ``"class 0"``, ``"class 1"``, ...

    Raises:
        TypeError: an assignment is not an integer.
        ValueError: lengths differ, a group is empty, group counts do not strictly decrease, or the levels are
            not nested.

    Examples:
        >>> h = ClassHierarchy([[0, 0, 1, 2], [0, 0, 1, 1]], class_names=["cat", "dog", "car", "bus"])
        >>> h.level_sizes
        (4, 3, 2)
        >>> h.group_names(1)
        ['{cat, dog}', '{car}', '{bus}']
        >>> h.remap_targets(torch.tensor([[1, 0, 0, 1]]), level=2)
        tensor([[1, 1]])
    """

    __slots__ = ("_assignments", "_class_names", "_sizes")

    def __init__(
        self, assignments: Sequence[Sequence[int]], class_names: Sequence[str] | None = None
    ) -> None:
        if not isinstance(assignments, Sequence) or not assignments:
            raise ValueError("`assignments` must be a non-empty sequence with one assignment per group level")
        levels = [tuple(_as_index_list(a, f"assignments[{i}]")) for i, a in enumerate(assignments)]
        num_classes = len(levels[0])
        names = _class_names(class_names, num_classes)
        sizes = [num_classes]
        for i, level in enumerate(levels, start=1):
            if len(level) != num_classes:
                raise ValueError(f"`assignments[{i - 1}]` must have {num_classes} entries, got {len(level)}")
            count = max(level) + 1
            missing = sorted(set(range(count)) - set(level))
            if missing:
                raise ValueError(f"`assignments[{i - 1}]` leaves group(s) {missing} of level {i} empty")
            if count >= sizes[-1]:
                raise ValueError(
                    f"group counts must strictly decrease from level to level, got {count} groups "
                    f"at level {i} after {sizes[-1]} at level {i - 1}"
                )
            finer = levels[i - 2] if i > 1 else tuple(range(num_classes))
            parent: dict[int, int] = {}
            for child, group in zip(finer, level, strict=True):
                if parent.setdefault(child, group) != group:
                    raise ValueError(
                        f"`assignments[{i - 1}]` is not nested: group {child} of level {i - 1} is split "
                        f"between groups {parent[child]} and {group} of level {i}"
                    )
            sizes.append(count)
        self._assignments: tuple[tuple[int, ...], ...] = tuple(levels)
        self._class_names: tuple[str, ...] = names
        self._sizes: tuple[int, ...] = tuple(sizes)

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

    def remap_targets(self, targets: Tensor, level: int) -> Tensor:
        """Turn multi-hot class targets into multi-hot group targets: a group is present when any member is.

        Args:
            targets: 0/1 targets of shape ``(B, K)``, any dtype (bool included).
            level: the level whose groups are the new classes.

        Returns:
            Group targets ``(B, N_level)``, same device and dtype as ``targets`` (a copy at level 0).

        Raises:
            TypeError: ``targets`` is not a tensor.
            ValueError: ``targets`` is not ``(B, K)`` or holds values other than 0 and 1.
        """
        self._check_level(level)
        check_tensor(targets, "targets", dims="B, K")
        if targets.shape[1] != self.num_classes:
            raise ValueError(
                f"`targets` must have shape (B, {self.num_classes}), got {format_shape(targets.shape)}"
            )
        check_binary(targets, "targets")
        if level == 0:
            return targets.clone()
        index = torch.tensor(self._assignment_list(level), device=targets.device)
        membership = torch.nn.functional.one_hot(index, self.num_groups(level)).to(torch.float32)
        return (targets.to(torch.float32) @ membership > 0).to(targets.dtype)

    def group_presence(self, targets: Tensor, level: int) -> Tensor:
        """Fraction of images in which each group of ``level`` is present: ``(N_level,)`` float32.

        A group present in almost every training image gives a near-constant target, so its model learns
        little about where it is (its map carries little signal).

        Args:
            targets: 0/1 class targets ``(B, K)``, e.g. a whole training set's.
            level: the level whose groups are counted.

        Returns:
            ``(N_level,)`` fractions in ``[0, 1]`` on the device of ``targets``.

        Examples:
            >>> h = ClassHierarchy([[0, 0, 1]])
            >>> h.group_presence(torch.tensor([[1, 0, 0], [0, 1, 1], [0, 0, 1]]), level=1)
            tensor([0.6667, 0.6667])
        """
        remapped = self.remap_targets(targets, level)
        if remapped.shape[0] == 0:
            raise ValueError("`targets` must hold at least one image")
        return remapped.to(torch.float32).mean(dim=0)

    def drop_saturated_levels(self, targets: Tensor, max_presence: float) -> ClassHierarchy:
        """The hierarchy without the group levels that have a group present in more than ``max_presence``.

        Such a level turns into a near-constant classification problem for at least one group (not in the
        paper). The remaining levels stay nested; level 0 is always kept.

        Args:
            targets: 0/1 training targets ``(B, K)``.
            max_presence: the largest allowed fraction of images in which a group is present, in (0, 1).

        Returns:
            A new hierarchy with the kept levels (``self`` is unchanged).

        Raises:
            ValueError: every group level is saturated (raise ``max_presence``), or bad ``targets``.

        Examples:
            >>> h = ClassHierarchy([[0, 0, 1, 2], [0, 0, 0, 1]], class_names=["cat", "dog", "car", "bus"])
            >>> targets = torch.tensor([[1, 0, 0, 0], [0, 0, 1, 0], [0, 1, 0, 1]])
            >>> h.group_presence(targets, 2)  # {cat, dog, car} is in every image
            tensor([1.0000, 0.3333])
            >>> h.drop_saturated_levels(targets, max_presence=0.9).level_sizes
            (4, 3)
            >>> h.drop_saturated_levels(targets, max_presence=0.5).level_sizes
            Traceback (most recent call last):
                ...
            ValueError: every group level has a group present in more than 50% of the images ...
        """
        limit = check_threshold(max_presence, "max_presence")
        kept = [
            level
            for level in range(1, self.num_levels)
            if float(self.group_presence(targets, level).max()) <= limit
        ]
        if not kept:
            raise ValueError(
                f"every group level has a group present in more than {limit:.0%} of the images "
                "(raise `max_presence`)"
            )
        return ClassHierarchy([self._assignments[level - 1] for level in kept], self._class_names)

    # ----------------------------------------------------------------------------------------- persistence
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready description (see [`from_dict`][hiercam.ClassHierarchy.from_dict])."""
        return {
            "format": _FORMAT,
            "version": _FORMAT_VERSION,
            "class_names": list(self._class_names),
            "assignments": [list(level) for level in self._assignments],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ClassHierarchy:
        """Rebuild a hierarchy from [`to_dict`][hiercam.ClassHierarchy.to_dict] output, validating it."""
        if not isinstance(data, Mapping):
            raise TypeError(f"`data` must be a mapping, got {type_name(data)}")
        if data.get("format") != _FORMAT or data.get("version") != _FORMAT_VERSION:
            raise ValueError(
                f"`data` is not a {_FORMAT} version {_FORMAT_VERSION} description "
                f"(format={data.get('format')!r}, version={data.get('version')!r})"
            )
        return cls(data["assignments"], data["class_names"])

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the hierarchy as JSON, atomically (a temporary file renamed into place)."""
        return atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ClassHierarchy:
        """Read a hierarchy written by ``save`` (plain JSON: nothing is executed)."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ValueError(f"{os.fspath(path)!r} is not valid JSON: {error}") from None
        return cls.from_dict(data)

    # ----------------------------------------------------------------------------------------- display
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ClassHierarchy):
            return NotImplemented
        return self._assignments == other._assignments and self._class_names == other._class_names

    def __hash__(self) -> int:
        return hash((self._assignments, self._class_names))

    def __repr__(self) -> str:
        sizes = " -> ".join(str(s) for s in self._sizes)
        return f"ClassHierarchy({self.num_classes} classes, levels {sizes})"

    def __str__(self) -> str:
        lines = [repr(self)]
        top = self.num_levels - 1
        for group in range(self.num_groups(top)):
            self._describe(top, group, depth=0, lines=lines)
        return "\n".join(lines)

    def _describe(self, level: int, group: int, depth: int, lines: list[str]) -> None:
        members = self.groups(level)[group]
        size = f"{len(members)} class" + ("" if len(members) == 1 else "es")
        line = f"{'  ' * depth}level {level} group {group} ({size})"
        if level == 1:
            names = [self._class_names[c] for c in members[:_NAMES_SHOWN]]
            more = len(members) - len(names)
            line += ": " + ", ".join(names) + (f", ... ({more} more)" if more else "")
        lines.append(line)
        if level > 1:
            finer = self._assignment_list(level - 1)
            children = sorted({finer[c] for c in members})
            for child in children:
                self._describe(level - 1, child, depth + 1, lines)

    # ----------------------------------------------------------------------------------------- helpers
    def _check_level(self, level: int) -> int:
        return check_int(level, "level", minimum=0, maximum=self.num_levels - 1)

    def _assignment_list(self, level: int) -> tuple[int, ...]:
        if self._check_level(level) == 0:
            return tuple(range(self.num_classes))
        return self._assignments[level - 1]


class HierarchicalKMeans:
    """Cluster classes into a hierarchy of groups with K-means, level by level (paper Eq. 2-3).

    Level 1 runs scikit-learn's ``KMeans`` on the class vectors; each next level runs it on the previous
    level's cluster centres, as the paper does.

    The paper's plain variant can be very unbalanced: on an ImageNet MobileNetV2 (1000 classes) at levels
    ``(100, 20, 5)`` it put 981 classes into one of the 20 groups. ``normalize`` and ``weighted`` reduce
    that; ``ClassHierarchy.__str__`` shows the group sizes.

    Group indices are canonical: groups are numbered in the order of their smallest class index, so the
    result does not depend on K-means' arbitrary label order.

    Args:
        levels: group counts after the base level, strictly decreasing, e.g. ``(12, 8, 5)`` for 20 -> 12 ->
            8 -> 5.
        normalize: L2-normalise the class vectors first (compare directions only).
        weighted: weight each centre by the number of classes it holds when clustering centres, so that a
            centre is the mean of all its classes' vectors rather than the mean of its sub-centres.
        n_init: K-means restarts per level.
        random_state: seed of K-means; the result is deterministic for a fixed seed.

    Attributes:
        centers_: after [`fit`][hiercam.HierarchicalKMeans.fit], the group centres of each level,
            ``[(N_1, D), (N_2, D), ...]``.

    Raises:
        TypeError, ValueError: ``levels`` empty, not integers, < 1 or not strictly decreasing.

    Examples:
        >>> import torch
        >>> vectors = torch.tensor([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0], [5.1, 5.0], [9.0, 0.0]])
        >>> HierarchicalKMeans(levels=(3, 2)).fit(vectors).groups(1)
        [[0, 1], [2, 3], [4]]
    """

    def __init__(
        self,
        levels: Sequence[int],
        *,
        normalize: bool = False,
        weighted: bool = False,
        n_init: int = 10,
        random_state: int = 0,
    ) -> None:
        self.levels = _check_levels(levels)
        self.normalize = bool(normalize)
        self.weighted = bool(weighted)
        self.n_init = check_int(n_init, "n_init", minimum=1)
        self.random_state = check_int(random_state, "random_state", minimum=0)
        self.centers_: list[Tensor] = []

    def fit(self, embeddings: Tensor, class_names: Sequence[str] | None = None) -> ClassHierarchy:
        """Build the hierarchy from class vectors.

        Args:
            embeddings: class vectors ``(K, D)`` (e.g. [`class_embeddings`][hiercam.class_embeddings]).
            class_names: optional ``K`` names.

        Returns:
            The [`ClassHierarchy`][hiercam.ClassHierarchy] with ``len(levels)`` group levels.

        Raises:
            ValueError: ``embeddings`` is not 2-D or not finite, a level asks for ``>= K`` groups or for more
                groups than there are distinct points, or K-means leaves a group empty.
        """
        from sklearn.cluster import KMeans  # imported here: scikit-learn is slow to import

        check_tensor(embeddings, "embeddings", dims="K, D", floating=True)
        check_finite(embeddings, "embeddings")
        num_classes = embeddings.shape[0]
        if self.levels[0] >= num_classes:
            raise ValueError(
                f"`levels` must ask for fewer groups than the {num_classes} classes, got {self.levels[0]}"
            )
        names = _class_names(class_names, num_classes)
        points = embeddings.detach().to(device="cpu", dtype=torch.float64).numpy()
        if self.normalize:
            points = points / np.maximum(np.linalg.norm(points, axis=1, keepdims=True), 1e-12)
        weights = np.ones(num_classes)
        class_to_group = np.arange(num_classes)
        assignments: list[list[int]] = []
        self.centers_ = []
        for depth, count in enumerate(self.levels, start=1):
            distinct = len(np.unique(points, axis=0))
            if count > distinct:
                raise ValueError(
                    f"`levels` asks for {count} groups at level {depth}, but there are only {distinct} "
                    "distinct points to cluster there"
                )
            kmeans = KMeans(n_clusters=count, n_init=self.n_init, random_state=self.random_state)
            labels = kmeans.fit_predict(points, sample_weight=weights if self.weighted else None)
            sizes = np.bincount(labels, minlength=count)
            if (sizes == 0).any():
                raise ValueError(
                    f"K-means left {int((sizes == 0).sum())} of the {count} groups at level {depth} empty"
                )
            class_labels = labels[class_to_group]
            order = _first_appearance(class_labels, count)  # old label -> canonical label
            class_to_group = order[class_labels]
            assignments.append(class_to_group.tolist())
            points = kmeans.cluster_centers_[np.argsort(order)]
            weights = np.bincount(class_to_group, minlength=count).astype(np.float64)
            self.centers_.append(torch.from_numpy(points).to(torch.float32))
        return ClassHierarchy(assignments, names)

    def __repr__(self) -> str:
        return (
            f"HierarchicalKMeans(levels={self.levels}, normalize={self.normalize}, weighted={self.weighted}, "
            f"n_init={self.n_init}, random_state={self.random_state})"
        )


def group_classes(
    model_or_weights: nn.Module | Tensor,
    levels: Sequence[int],
    class_names: Sequence[str] | None = None,
    *,
    layer: str | None = None,
    normalize: bool = False,
    weighted: bool = False,
    n_init: int = 10,
    random_state: int = 0,
) -> ClassHierarchy:
    """Class vectors of a trained classifier, clustered into a hierarchy: the one-liner for notebooks.

    Equivalent to ``HierarchicalKMeans(levels, ...).fit(class_embeddings(model_or_weights, layer))``.

    Args:
        model_or_weights: a classifier, an ``nn.Linear`` or a ``(K, D)`` weight tensor.
        levels: group counts after the base level, strictly decreasing.
        class_names: optional ``K`` names.
        layer: dotted name of the classifier layer when it cannot be found automatically.
        normalize: L2-normalise the class vectors first (see
            [`HierarchicalKMeans`][hiercam.HierarchicalKMeans]).
        weighted: weight centres by their class counts (see
            [`HierarchicalKMeans`][hiercam.HierarchicalKMeans]).
        n_init: K-means restarts per level.
        random_state: K-means seed.

    Returns:
        The [`ClassHierarchy`][hiercam.ClassHierarchy].

    Examples:
        >>> from torchvision.models import resnet18
        >>> group_classes(resnet18(num_classes=10), levels=(4, 2)).level_sizes
        (10, 4, 2)
    """
    clusterer = HierarchicalKMeans(
        levels, normalize=normalize, weighted=weighted, n_init=n_init, random_state=random_state
    )
    return clusterer.fit(class_embeddings(model_or_weights, layer), class_names)


def _check_levels(levels: Sequence[int]) -> tuple[int, ...]:
    if isinstance(levels, (str, bytes)) or not isinstance(levels, Sequence):
        raise TypeError(f"`levels` must be a sequence of ints, got {type_name(levels)}")
    if not levels:
        raise ValueError("`levels` must name at least one group level, got an empty sequence")
    checked = tuple(check_int(n, "levels", minimum=1) for n in levels)
    if any(a <= b for a, b in pairwise(checked)):
        raise ValueError(f"`levels` must be strictly decreasing, got {checked}")
    return checked


def _class_names(names: Sequence[str] | None, count: int) -> tuple[str, ...]:
    if names is None:
        return tuple(f"class {i}" for i in range(count))
    if isinstance(names, str) or not all(isinstance(n, str) for n in names):
        raise TypeError("`class_names` must be a sequence of strings")
    if len(names) != count:
        raise ValueError(f"`class_names` must have {count} entries, got {len(names)}")
    return tuple(names)


def _as_index_list(values: Any, name: str) -> list[int]:
    if isinstance(values, Tensor):
        values = values.tolist()
    if isinstance(values, np.ndarray):
        values = values.tolist()
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise TypeError(f"`{name}` must be a sequence of ints, got {type_name(values)}")
    return [check_int(v, name, minimum=0) for v in values]


def _first_appearance(labels: np.ndarray, count: int) -> np.ndarray:
    """Map each label to its rank of first appearance in ``labels``."""
    _, first = np.unique(labels, return_index=True)
    order = np.empty(count, dtype=np.int64)
    order[np.argsort(first)] = np.arange(count)
    return order
