"""Hierarchical class grouping (paper section 3.3, Eq. 2-3): K-means on class vectors, then on the centres.

Level 0 is the ``K`` original classes. Level 1 clusters the class vectors into ``N1`` groups with K-means
(Eq. 2-3); level ``l > 1`` clusters the ``N(l-1)`` centres of the previous level into ``Nl`` groups. The
result is a [`ClassHierarchy`][hiercam.ClassHierarchy] (package ``hiercam.hierarchy``), the data type that
fusion, datasets and reports use without importing this clustering package.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from hiercam._validation import check_class_names, check_finite, check_int, check_tensor, type_name
from hiercam.grouping._shared import check_levels, first_appearance
from hiercam.grouping.similarity import class_embeddings
from hiercam.hierarchy import ClassHierarchy

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

    **Classes kept out of the grouping.** A class present in almost every training image (e.g. "building"
    in 97 % of street scenes) makes every group that holds it near-constant, so every level would have a
    saturated group (see
    [`ClassHierarchy.drop_saturated_levels`][hiercam.ClassHierarchy.drop_saturated_levels]).
    ``singletons`` (e.g. from [`frequent_classes`][hiercam.frequent_classes]) keeps such classes alone: each
    is its own group at every level, and K-means groups the other classes exactly as it would without them,
    into ``levels[l] - len(singletons)`` groups at level ``l`` (``levels`` counts all groups, so the
    hierarchy's shape is ``(K, *levels)`` whichever classes are kept out).

    Args:
        levels: group counts after the base level, strictly decreasing, e.g. ``(12, 8, 5)`` for 20 -> 12 ->
            8 -> 5; each must exceed ``len(singletons)``.
        singletons: indices of classes kept out of the grouping (their own group at every level).
        unit_norm: L2-normalise the class vectors first (compare directions only).
        weighted: weight each centre by the number of classes it holds when clustering centres, so that a
            centre is the mean of all its classes' vectors rather than the mean of its sub-centres.
        n_init: K-means restarts per level.
        seed: seed of K-means; the result is deterministic for a fixed seed.

    Attributes:
        centers_: after [`fit`][hiercam.HierarchicalKMeans.fit], the group centres of each level,
            ``[(N_1, D), (N_2, D), ...]``.

    Raises:
        TypeError: ``levels`` or ``singletons`` is not a sequence of integers (``int``, NumPy integers, or a
            1-D integer array), or ``unit_norm``/``weighted`` is not a bool.
        ValueError: ``levels`` is empty, holds a value < 1 or is not strictly decreasing; ``singletons`` holds
            a negative or repeated index, or as many classes as ``levels[-1]`` (no group left for the others).

    Examples:
        >>> import torch
        >>> vectors = torch.tensor([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0], [5.1, 5.0], [9.0, 0.0]])
        >>> HierarchicalKMeans(levels=(3, 2)).fit(vectors).groups(1)
        [[0, 1], [2, 3], [4]]
        >>> kept_out = HierarchicalKMeans(levels=(3, 2), singletons=[2]).fit(vectors)  # class 2 alone
        >>> kept_out.groups(1), kept_out.groups(2)
        ([[0, 1], [2], [3, 4]], [[0, 1, 3, 4], [2]])
    """

    def __init__(
        self,
        levels: Sequence[int],
        *,
        singletons: Sequence[int] = (),
        unit_norm: bool = False,
        weighted: bool = False,
        n_init: int = 10,
        seed: int = 0,
    ) -> None:
        self.levels = check_levels(levels)
        self.singletons = _check_singletons(singletons)
        if len(self.singletons) >= self.levels[-1]:
            raise ValueError(
                f"`levels` counts the {len(self.singletons)} classes kept out of the grouping (`singletons`) "
                f"as groups, so every level needs more groups than that, got levels {self.levels}"
            )
        self.unit_norm = _check_bool(unit_norm, "unit_norm")
        self.weighted = _check_bool(weighted, "weighted")
        self.n_init = check_int(n_init, "n_init", minimum=1)
        self.seed = check_int(seed, "seed", minimum=0)
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
                groups than there are distinct points, a class of ``singletons`` is ``>= K``, or K-means
                leaves a group empty.
        """
        check_tensor(embeddings, "embeddings", dims="K, D", floating=True)
        check_finite(embeddings, "embeddings")
        num_classes = embeddings.shape[0]
        if self.levels[0] >= num_classes:
            raise ValueError(
                f"`levels` must ask for fewer groups than the {num_classes} classes, got {self.levels[0]}"
            )
        if self.singletons and self.singletons[-1] >= num_classes:
            raise ValueError(
                f"`singletons` must be class indices 0..{num_classes - 1}, got {self.singletons[-1]}"
            )
        names = check_class_names(class_names, num_classes)
        points = embeddings.detach().to(device="cpu", dtype=torch.float64).numpy()
        if self.unit_norm:
            points = points / np.maximum(np.linalg.norm(points, axis=1, keepdims=True), 1e-12)
        alone = list(self.singletons)
        grouped = [c for c in range(num_classes) if c not in set(alone)]
        counts = [count - len(alone) for count in self.levels]
        assignments, centers = self._cluster(points[grouped], counts)
        # the kept-out classes get the group ids after the others', then all ids are made canonical again
        self.centers_ = []
        levels: list[list[int]] = []
        for level, (groups, center) in enumerate(zip(assignments, centers, strict=True)):
            full = np.empty(num_classes, dtype=np.int64)
            full[grouped] = groups
            full[alone] = counts[level] + np.arange(len(alone))
            order = first_appearance(full, self.levels[level])
            levels.append(order[full].tolist())
            all_centers = np.concatenate([center, points[alone]])
            self.centers_.append(torch.from_numpy(all_centers[np.argsort(order)]).to(torch.float32))
        return ClassHierarchy(levels, names, singletons=alone)

    def _cluster(self, points: np.ndarray, counts: list[int]) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """K-means level by level on ``(K', D)`` points: canonical group ids ``(K',)``, centres, per level."""
        from sklearn.cluster import KMeans  # imported here: scikit-learn is slow to import

        num_classes = len(points)
        weights = np.ones(num_classes)
        class_to_group = np.arange(num_classes)
        assignments: list[np.ndarray] = []
        centers: list[np.ndarray] = []
        for depth, count in enumerate(counts, start=1):
            distinct = len(np.unique(points, axis=0))
            if count > distinct:
                raise ValueError(
                    f"`levels` asks for {count} groups at level {depth}, but there are only {distinct} "
                    "distinct points to cluster there"
                )
            kmeans = KMeans(n_clusters=count, n_init=self.n_init, random_state=self.seed)
            labels = kmeans.fit_predict(points, sample_weight=weights if self.weighted else None)
            sizes = np.bincount(labels, minlength=count)
            if (sizes == 0).any():
                raise ValueError(
                    f"K-means left {int((sizes == 0).sum())} of the {count} groups at level {depth} empty"
                )
            class_labels = labels[class_to_group]
            order = first_appearance(class_labels, count)  # old label -> canonical label
            class_to_group = order[class_labels]
            assignments.append(class_to_group)
            points = kmeans.cluster_centers_[np.argsort(order)]
            weights = np.bincount(class_to_group, minlength=count).astype(np.float64)
            centers.append(points)
        return assignments, centers

    def __repr__(self) -> str:
        alone = f"singletons={self.singletons}, " if self.singletons else ""
        return (
            f"HierarchicalKMeans(levels={self.levels}, {alone}unit_norm={self.unit_norm}, "
            f"weighted={self.weighted}, n_init={self.n_init}, seed={self.seed})"
        )


def group_classes(
    model_or_weights: nn.Module | Tensor,
    levels: Sequence[int],
    class_names: Sequence[str] | None = None,
    *,
    layer: str | None = None,
    singletons: Sequence[int] = (),
    unit_norm: bool = False,
    weighted: bool = False,
    n_init: int = 10,
    seed: int = 0,
) -> ClassHierarchy:
    """Class vectors of a trained classifier, clustered into a hierarchy: the one-liner for notebooks.

    Equivalent to ``HierarchicalKMeans(levels, ...).fit(class_embeddings(model_or_weights, layer))``.

    Args:
        model_or_weights: a classifier, an ``nn.Linear`` or a ``(K, D)`` weight tensor.
        levels: group counts after the base level, strictly decreasing.
        class_names: optional ``K`` names.
        layer: dotted name of the classifier layer when it cannot be found automatically.
        singletons: classes kept out of the grouping, their own group at every level, e.g.
            ``frequent_classes(train_labels, 0.9)`` (see [`HierarchicalKMeans`][hiercam.HierarchicalKMeans]).
        unit_norm: L2-normalise the class vectors first (see
            [`HierarchicalKMeans`][hiercam.HierarchicalKMeans]).
        weighted: weight centres by their class counts (see
            [`HierarchicalKMeans`][hiercam.HierarchicalKMeans]).
        n_init: K-means restarts per level.
        seed: K-means seed.

    Returns:
        The [`ClassHierarchy`][hiercam.ClassHierarchy].

    Examples:
        >>> from torchvision.models import resnet18
        >>> group_classes(resnet18(num_classes=10), levels=(4, 2)).level_sizes
        (10, 4, 2)
    """
    clusterer = HierarchicalKMeans(
        levels,
        singletons=singletons,
        unit_norm=unit_norm,
        weighted=weighted,
        n_init=n_init,
        seed=seed,
    )
    return clusterer.fit(class_embeddings(model_or_weights, layer), class_names)


def _check_singletons(singletons: Sequence[int]) -> tuple[int, ...]:
    """Sorted distinct non-negative class indices (``int``, NumPy integers, or a 1-D integer array)."""
    given: object = singletons
    if isinstance(given, (np.ndarray, Tensor)) and given.ndim == 1:
        given = given.tolist()
    if isinstance(given, (str, bytes)) or not isinstance(given, Sequence):
        raise TypeError(f"`singletons` must be a sequence of class indices, got {type_name(singletons)}")
    checked = [check_int(c, "singletons", minimum=0) for c in given]
    if len(set(checked)) != len(checked):
        raise ValueError(f"`singletons` must not repeat a class, got {checked}")
    return tuple(sorted(checked))


def _check_bool(value: object, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"`{name}` must be a bool, got {type_name(value)}")
    return bool(value)
