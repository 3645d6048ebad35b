"""Sub-categories: the class hierarchy grown downwards, by K-means of each class's image features (SC-CAM).

SC-CAM (Chang et al., "Weakly-Supervised Semantic Segmentation via Sub-category Exploration", CVPR 2020)
splits every class into sub-categories: K-means over the pooled image features of the training images that
hold the class, each image's cluster becoming a sub-category label. A classifier trained on the classes and,
through an auxiliary head, on the sub-categories must tell apart the kinds of each class, which spreads its
class maps over more of the object. The grouping here runs on features you give: those of a frozen
pretrained backbone do not depend on the training seed (the issue with FC-weight groups on real photos).

[`cluster_subcategories`][hiercam.grouping.cluster_subcategories] fits the clusters and returns
[`SubCategories`][hiercam.grouping.SubCategories], which assigns images (its own and new ones) and turns
the assignments into the auxiliary head's multi-hot targets;
[`shuffle_subcategories`][hiercam.grouping.shuffle_subcategories] is the control: the same sub-category
sizes, the images assigned at random. The loss is [`SubCategoryLoss`][hiercam.losses.SubCategoryLoss], the
model [`SubCategoryNet`][hiercam.models.SubCategoryNet].

Departures from the authors' code (``Juliachang/SC-CAM``, ``create_pseudo_label.py``): one round instead of
three (their rounds re-extract the features from the model just trained; features of a frozen backbone do not
change); and a class seen in few images gets fewer clusters, ``min(clusters, n_k // min_size)`` (at least
one), where the authors split every one of PASCAL VOC's classes into 10.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from hiercam._validation import (
    check_binary,
    check_finite,
    check_int,
    check_tensor,
    format_shape,
    type_name,
)

__all__ = ["SubCategories", "cluster_subcategories", "shuffle_subcategories"]


@dataclass(frozen=True, eq=False)
class SubCategories:
    """The sub-categories of every class: their cluster centres and the class each belongs to.

    Sub-category ``s`` belongs to class ``parents[s]``; the sub-categories of class ``k`` are consecutive
    and in class order (class 0's first). An assignment tensor ``(N, K)`` holds, for every image and class
    it contains, the index of its sub-category, and ``-1`` for the classes it does not contain.

    Attributes:
        centers: ``(S, D)`` float32 cluster centres, in the feature space given to
            [`cluster_subcategories`][hiercam.grouping.cluster_subcategories] (L2-normalised rows when
            ``unit_norm``).
        parents: the class of each of the ``S`` sub-categories.
        num_classes: ``K``.
        unit_norm: whether features are L2-normalised before the distances to the centres.

    Examples:
        >>> sub = SubCategories(torch.tensor([[0.0], [4.0], [9.0]]), (0, 0, 1), 2, False)
        >>> features = torch.tensor([[1.0], [3.5], [8.0]])
        >>> labels = torch.tensor([[1, 1], [1, 0], [0, 1]])
        >>> assignments = sub.assign(features, labels)  # nearest centre among the class's own
        >>> assignments
        tensor([[ 0,  2],
                [ 1, -1],
                [-1,  2]])
        >>> sub.targets(assignments)
        tensor([[1., 0., 1.],
                [0., 1., 0.],
                [0., 0., 1.]])
    """

    centers: Tensor
    parents: tuple[int, ...]
    num_classes: int
    unit_norm: bool

    @property
    def num_subcategories(self) -> int:
        """``S``, the total number of sub-categories."""
        return len(self.parents)

    @property
    def counts(self) -> tuple[int, ...]:
        """The number of sub-categories of each class, ``K`` ints."""
        return tuple(self.parents.count(k) for k in range(self.num_classes))

    def assign(self, features: Tensor, labels: Tensor) -> Tensor:
        """Each image's sub-category for every class it holds: the nearest of that class's centres.

        Args:
            features: ``(N, D)`` image features, in the space of the centres (pooled features of the same
                backbone).
            labels: ``(N, K)`` 0/1 image-level labels.

        Returns:
            ``(N, K)`` int64 on the device of ``features``: a sub-category index in ``0..S-1`` where
            ``labels`` is 1, ``-1`` elsewhere.

        Raises:
            TypeError: ``features`` or ``labels`` is not a tensor, or ``features`` not floating point.
            ValueError: wrong shapes, non-finite features, or labels other than 0/1.
        """
        features, labels = _check_inputs(features, labels, self.num_classes)
        if features.shape[1] != self.centers.shape[1]:
            raise ValueError(
                f"`features` must have D = {self.centers.shape[1]} columns like the centres, got "
                f"{format_shape(features.shape)}"
            )
        points = _prepared(features, self.unit_norm)
        centers = self.centers.to(points.device)
        distances = torch.cdist(points, centers)  # (N, S)
        parents = torch.tensor(self.parents, device=points.device)
        assignments = torch.full(labels.shape, -1, dtype=torch.long, device=points.device)
        for k in range(self.num_classes):
            own = (parents == k).nonzero().flatten()
            if own.numel() == 0:
                continue
            nearest = own[distances[:, own].argmin(1)]
            assignments[:, k] = torch.where(labels[:, k].to(points.device) > 0, nearest, -1)
        return assignments

    def targets(self, assignments: Tensor) -> Tensor:
        """The auxiliary head's multi-hot targets ``(N, S)`` float32: 1 at every assigned sub-category.

        Args:
            assignments: ``(N, K)`` integer sub-category indices, ``-1`` where a class is absent (from
                ``assign`` or [`shuffle_subcategories`][hiercam.grouping.shuffle_subcategories]).

        Raises:
            TypeError: ``assignments`` is not an integer tensor.
            ValueError: not ``(N, K)``, or an index outside ``-1..S-1`` or of another class.
        """
        _check_assignments(assignments, self)
        targets = torch.zeros(len(assignments), self.num_subcategories, device=assignments.device)
        rows, classes = (assignments >= 0).nonzero(as_tuple=True)
        targets[rows, assignments[rows, classes]] = 1.0
        return targets


def cluster_subcategories(
    features: Tensor,
    labels: Tensor,
    *,
    clusters: int = 10,
    min_size: int = 5,
    unit_norm: bool = False,
    seed: int = 0,
) -> SubCategories:
    """K-means of each class's image features into sub-categories (SC-CAM's pseudo sub-category labels).

    For class ``k`` held by ``n_k`` of the images, scikit-learn's ``KMeans(n_clusters=c_k, n_init=10,
    random_state=seed)`` clusters their features into ``c_k = max(1, min(clusters, n_k // min_size))``
    sub-categories (so that no sub-category is expected to hold fewer than about ``min_size`` images; the
    authors' VOC setting is ``clusters=10``). An image holding several classes is clustered once per class.

    Args:
        features: ``(N, D)`` floating-point image features, e.g. the globally pooled feature maps of a frozen
            pretrained backbone (seed-independent) or of a trained classifier (SC-CAM's own choice).
        labels: ``(N, K)`` 0/1 image-level labels; every class must be held by at least one image.
        clusters: the most sub-categories of a class, ``>= 1``.
        min_size: images per sub-category below which a class gets fewer clusters, ``>= 1``.
        unit_norm: L2-normalise the features first (cosine geometry).
        seed: K-means seed.

    Returns:
        [`SubCategories`][hiercam.grouping.SubCategories]; its ``assign(features, labels)`` gives back the
        K-means labels of these images.

    Raises:
        TypeError: ``features`` or ``labels`` is not a tensor, ``features`` not floating point, or an int
            argument of another type.
        ValueError: wrong shapes, non-finite features, labels other than 0/1, a class held by no image, or
            ``clusters`` / ``min_size`` below 1.

    Examples:
        >>> features = torch.tensor([[0.0], [0.1], [5.0], [5.1], [9.0], [9.2]])
        >>> labels = torch.tensor([[1, 0], [1, 0], [1, 0], [1, 1], [0, 1], [0, 1]])
        >>> sub = cluster_subcategories(features, labels, clusters=2, min_size=2)
        >>> sub.parents, sub.counts
        ((0, 0, 1), (2, 1))
        >>> sub.assign(features, labels)[:, 0].tolist()  # two kinds of class 0: near 0 and near 5
        [0, 0, 1, 1, -1, -1]
    """
    from sklearn.cluster import KMeans

    clusters = check_int(clusters, "clusters", minimum=1)
    min_size = check_int(min_size, "min_size", minimum=1)
    seed = check_int(seed, "seed", minimum=0)
    if not isinstance(unit_norm, bool):
        raise TypeError(f"`unit_norm` must be a bool, got {type_name(unit_norm)}")
    features, labels = _check_inputs(features, labels, None)
    present = labels.sum(0)
    absent = (present == 0).nonzero().flatten().tolist()
    if absent:
        raise ValueError(f"every class must be held by at least one image; classes {absent} are in none")
    points = _prepared(features, unit_norm).double().cpu().numpy()
    held = labels.bool().cpu()
    centers, parents = [], []
    for k in range(labels.shape[1]):
        rows = points[held[:, k].numpy()]
        count = max(1, min(clusters, len(rows) // min_size))
        # the centres are ordered by the cluster's first image, so that equal data give equal indices
        fit = KMeans(n_clusters=count, n_init=10, random_state=seed).fit(rows)
        order = list(dict.fromkeys(fit.labels_.tolist()))
        order += [c for c in range(count) if c not in order]
        centers.append(torch.as_tensor(fit.cluster_centers_[order], dtype=torch.float32))
        parents += [k] * count
    return SubCategories(torch.cat(centers), tuple(parents), labels.shape[1], unit_norm)


def shuffle_subcategories(assignments: Tensor, seed: int) -> Tensor:
    """The control: every class's sub-category assignments permuted over its images (the same sizes).

    For each class, the sub-categories of the images that hold it are permuted at random (a
    ``torch.Generator`` seeded with ``seed``; the same seed gives the same result on every platform): each
    sub-category keeps its number of images, but which images it holds no longer follows their features.
    A model trained on the result has the same targets' statistics and compute as the real sub-categories.

    Args:
        assignments: ``(N, K)`` integer sub-category indices, ``-1`` where a class is absent (not modified).
        seed: seed of the permutations, ``>= 0``.

    Returns:
        A new ``(N, K)`` int64 tensor on the same device.

    Raises:
        TypeError: ``assignments`` is not an integer tensor, or ``seed`` not an int.
        ValueError: ``assignments`` is not 2-D, or ``seed`` is negative.

    Examples:
        >>> assignments = torch.tensor([[0, -1], [0, 2], [1, 2], [1, 3]])
        >>> shuffled = shuffle_subcategories(assignments, seed=0)
        >>> [sorted(shuffled[:, k].tolist()) == sorted(assignments[:, k].tolist()) for k in range(2)]
        [True, True]
        >>> (shuffled == -1).equal(assignments == -1)
        True
    """
    _check_integer_assignments(assignments)
    seed = check_int(seed, "seed", minimum=0)
    generator = torch.Generator().manual_seed(seed)
    shuffled = assignments.detach().to("cpu", torch.long).clone()
    for k in range(shuffled.shape[1]):
        rows = (shuffled[:, k] >= 0).nonzero().flatten()
        shuffled[rows, k] = shuffled[rows[torch.randperm(len(rows), generator=generator)], k]
    return shuffled.to(assignments.device)


def _prepared(features: Tensor, unit_norm: bool) -> Tensor:
    points = features.detach().float()
    return torch.nn.functional.normalize(points, dim=1) if unit_norm else points


def _check_inputs(features: Tensor, labels: Tensor, num_classes: int | None) -> tuple[Tensor, Tensor]:
    check_tensor(features, "features", dims="N, D", floating=True)
    check_tensor(labels, "labels", dims="N, K")
    if len(features) != len(labels):
        raise ValueError(
            f"`features` {format_shape(features.shape)} and `labels` {format_shape(labels.shape)} must have "
            "the same number of images N"
        )
    if num_classes is not None and labels.shape[1] != num_classes:
        raise ValueError(f"`labels` must have K = {num_classes} columns, got {format_shape(labels.shape)}")
    check_finite(features, "features")
    check_binary(labels, "labels")
    return features, labels


def _check_assignments(assignments: Tensor, sub: SubCategories) -> None:
    _check_integer_assignments(assignments)
    if assignments.shape[1] != sub.num_classes:
        raise ValueError(
            f"`assignments` must have K = {sub.num_classes} columns, got {format_shape(assignments.shape)}"
        )
    parents = torch.tensor((*sub.parents, -1), device=assignments.device)
    index = assignments.long()
    if bool(((index < -1) | (index >= sub.num_subcategories)).any()):
        raise ValueError(f"`assignments` must hold indices in -1..{sub.num_subcategories - 1}")
    columns = torch.arange(sub.num_classes, device=assignments.device).expand_as(index)
    wrong = (index >= 0) & (parents[index] != columns)
    if bool(wrong.any()):
        raise ValueError("`assignments` holds a sub-category of another class (column k must hold class k's)")


def _check_integer_assignments(assignments: Tensor) -> None:
    check_tensor(assignments, "assignments", dims="N, K")
    if assignments.is_floating_point() or assignments.is_complex() or assignments.dtype == torch.bool:
        raise TypeError(f"`assignments` must be an integer tensor, got dtype {assignments.dtype}")
