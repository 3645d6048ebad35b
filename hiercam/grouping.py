"""Hierarchical class grouping (paper section 3.3): K-means on class vectors, then on the group centres.

Level 0 is the ``K`` original classes. Level 1 clusters the class vectors into ``N1`` groups with K-means
(Eq. 2-3); level ``l > 1`` clusters the ``N(l-1)`` centres of the previous level into ``Nl`` groups. The
result is a [`ClassHierarchy`][hiercam.ClassHierarchy] (module ``hiercam.hierarchy``), the data type that
fusion, datasets and reports use without importing this clustering module.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import numpy as np
import torch
from torch import Tensor, nn

from hiercam._validation import check_finite, check_int, check_tensor, type_name
from hiercam.hierarchy import ClassHierarchy, _class_names
from hiercam.similarity import class_embeddings

__all__ = ["HierarchicalKMeans", "group_classes"]


class HierarchicalKMeans:
    """Cluster classes into a hierarchy of groups with K-means, level by level (paper Eq. 2-3).

    Level 1 runs scikit-learn's ``KMeans`` on the class vectors; each next level runs it on the previous
    level's cluster centres, as the paper does.

    The paper's plain variant can be very unbalanced: on an ImageNet MobileNetV2 (1000 classes) at levels
    ``(100, 20, 5)`` it put 981 classes into one of the 20 groups. ``unit_norm`` and ``weighted`` reduce
    that; ``ClassHierarchy.__str__`` shows the group sizes.

    Group indices are canonical: groups are numbered in the order of their smallest class index, so the
    result does not depend on K-means' arbitrary label order.

    Args:
        levels: group counts after the base level, strictly decreasing, e.g. ``(12, 8, 5)`` for 20 -> 12 ->
            8 -> 5.
        unit_norm: L2-normalise the class vectors first (compare directions only).
        weighted: weight each centre by the number of classes it holds when clustering centres, so that a
            centre is the mean of all its classes' vectors rather than the mean of its sub-centres.
        n_init: K-means restarts per level.
        random_state: seed of K-means; the result is deterministic for a fixed seed.

    Attributes:
        centers_: after [`fit`][hiercam.HierarchicalKMeans.fit], the group centres of each level,
            ``[(N_1, D), (N_2, D), ...]``.

    Raises:
        TypeError: ``levels`` is not a sequence of integers (``int``, NumPy integers, or a 1-D integer array),
            or ``unit_norm``/``weighted`` is not a bool.
        ValueError: ``levels`` is empty, holds a value < 1 or is not strictly decreasing.

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
        unit_norm: bool = False,
        weighted: bool = False,
        n_init: int = 10,
        random_state: int = 0,
    ) -> None:
        self.levels = _check_levels(levels)
        self.unit_norm = _check_bool(unit_norm, "unit_norm")
        self.weighted = _check_bool(weighted, "weighted")
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
        if self.unit_norm:
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
            f"HierarchicalKMeans(levels={self.levels}, unit_norm={self.unit_norm}, weighted={self.weighted}, "
            f"n_init={self.n_init}, random_state={self.random_state})"
        )


def group_classes(
    model_or_weights: nn.Module | Tensor,
    levels: Sequence[int],
    class_names: Sequence[str] | None = None,
    *,
    layer: str | None = None,
    unit_norm: bool = False,
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
        unit_norm: L2-normalise the class vectors first (see
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
        levels, unit_norm=unit_norm, weighted=weighted, n_init=n_init, random_state=random_state
    )
    return clusterer.fit(class_embeddings(model_or_weights, layer), class_names)


def _check_levels(levels: Sequence[int]) -> tuple[int, ...]:
    given: object = levels
    if isinstance(given, (np.ndarray, Tensor)) and given.ndim == 1:
        given = given.tolist()  # NumPy or torch integers, e.g. np.array([12, 8, 5])
    if isinstance(given, (str, bytes)) or not isinstance(given, Sequence):
        raise TypeError(f"`levels` must be a sequence of ints, got {type_name(levels)}")
    levels = given
    if not levels:
        raise ValueError("`levels` must name at least one group level, got an empty sequence")
    checked = tuple(check_int(n, "levels", minimum=1) for n in levels)
    if any(a <= b for a, b in pairwise(checked)):
        raise ValueError(f"`levels` must be strictly decreasing, got {checked}")
    return checked


def _check_bool(value: object, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"`{name}` must be a bool, got {type_name(value)}")
    return bool(value)


def _first_appearance(labels: np.ndarray, count: int) -> np.ndarray:
    """Map each label to its rank of first appearance in ``labels``."""
    _, first = np.unique(labels, return_index=True)
    order = np.empty(count, dtype=np.int64)
    order[np.argsort(first)] = np.arange(count)
    return order
