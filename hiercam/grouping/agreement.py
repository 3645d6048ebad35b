"""Whether a class grouping is more than chance: a shuffled control, agreement between hierarchies, consensus.

A grouping that changes with the training seed is arbitrary. These tools measure that and work around it:

* [`hierarchy_agreement`][hiercam.hierarchy_agreement]: the adjusted Rand index (ARI) of
  two hierarchies' groups at one level (1 for the same groups, about 0 for unrelated ones);
  [`pairwise_agreement`][hiercam.pairwise_agreement] and
  [`mean_pairwise_agreement`][hiercam.mean_pairwise_agreement] over several (e.g. seeds);
* [`shuffled_hierarchy`][hiercam.shuffled_hierarchy]: the same tree with the classes
  placed at random, the control that any result depending on the grouping must beat;
* [`coassociation_matrix`][hiercam.coassociation_matrix] and
  [`consensus_hierarchy`][hiercam.consensus_hierarchy]: the groups that several
  hierarchies agree on.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations

import numpy as np
import torch
from torch import Tensor

from hiercam._validation import check_int, type_name
from hiercam.grouping._shared import check_levels, first_appearance
from hiercam.hierarchy import ClassHierarchy

__all__ = [
    "hierarchy_agreement",
    "pairwise_agreement",
    "mean_pairwise_agreement",
    "shuffled_hierarchy",
    "coassociation_matrix",
    "consensus_hierarchy",
]


def hierarchy_agreement(
    a: ClassHierarchy, b: ClassHierarchy, level: int, *, exclude_singletons: bool = True
) -> float:
    """The adjusted Rand index of the groups of two hierarchies at ``level``.

    The ARI (scikit-learn's ``adjusted_rand_score``) counts the pairs of classes that both hierarchies put in
    the same group or both in different groups, corrected for chance: 1 for the same groups (whatever their
    numbering), about 0 for groupings no closer than chance (e.g. a
    [`shuffled_hierarchy`][hiercam.shuffled_hierarchy]), negative below chance.

    Args:
        a: a hierarchy.
        b: a hierarchy of the same classes (same ``class_names``).
        level: the level compared, ``0..min(a.num_levels, b.num_levels) - 1`` (level 0 always gives 1).
        exclude_singletons: leave out the classes kept out of the grouping in *both* hierarchies (their
            common ``singletons``): they are alone by choice, not grouped, and would add agreement that says
            nothing about the grouping.

    Returns:
        The ARI, a Python float in ``[-0.5, 1]``.

    Raises:
        TypeError: ``a`` or ``b`` is not a ``ClassHierarchy``, or ``level`` is not an int.
        ValueError: the two hierarchies have different classes, or ``level`` is out of range for either.

    Examples:
        >>> a = ClassHierarchy([[0, 0, 1, 1, 2]])
        >>> hierarchy_agreement(a, ClassHierarchy([[2, 2, 0, 0, 1]]), level=1)  # the same groups
        1.0
        >>> round(hierarchy_agreement(a, ClassHierarchy([[0, 1, 0, 1, 2]]), level=1), 4)
        -0.25
    """
    _check_hierarchy(a, "a")
    _check_same_classes(b, a, "b", "a")
    top = min(a.num_levels, b.num_levels) - 1
    level = check_int(level, "level", minimum=0, maximum=top)
    common = set(a.singletons) & set(b.singletons) if exclude_singletons else set()
    classes = [c for c in range(a.num_classes) if c not in common]
    return _ari(a.assignments(level)[classes], b.assignments(level)[classes])


def pairwise_agreement(
    hierarchies: Sequence[ClassHierarchy], level: int, *, exclude_singletons: bool = True
) -> Tensor:
    """The ARI of every pair of hierarchies at ``level``: a symmetric ``(M, M)`` float64 matrix, diagonal 1.

    Args:
        hierarchies: ``M >= 2`` hierarchies of the same classes, e.g. grouped from classifiers trained with
            ``M`` seeds.
        level: the level compared (it must exist in every hierarchy).
        exclude_singletons: as in [`hierarchy_agreement`][hiercam.hierarchy_agreement].

    Returns:
        ``(M, M)`` float64 ARIs on the CPU.

    Raises:
        TypeError: ``hierarchies`` is not a sequence of ``ClassHierarchy``.
        ValueError: fewer than 2 hierarchies, different classes, or ``level`` out of range.

    Examples:
        >>> seeds = [ClassHierarchy([[0, 0, 1, 1]]), ClassHierarchy([[0, 0, 1, 1]])]
        >>> seeds.append(ClassHierarchy([[0, 1, 0, 1]]))
        >>> pairwise_agreement(seeds, level=1)
        tensor([[ 1.0000,  1.0000, -0.5000],
                [ 1.0000,  1.0000, -0.5000],
                [-0.5000, -0.5000,  1.0000]], dtype=torch.float64)
    """
    items = _check_hierarchies(hierarchies, minimum=2)
    top = min(h.num_levels for h in items) - 1
    level = check_int(level, "level", minimum=0, maximum=top)
    scores = torch.eye(len(items), dtype=torch.float64)
    for i, j in combinations(range(len(items)), 2):
        value = hierarchy_agreement(items[i], items[j], level, exclude_singletons=exclude_singletons)
        scores[i, j] = scores[j, i] = value
    return scores


def mean_pairwise_agreement(
    hierarchies: Sequence[ClassHierarchy], level: int, *, exclude_singletons: bool = True
) -> float:
    """The mean ARI over the ``M (M - 1) / 2`` pairs of hierarchies at ``level``: the stability of a grouping.

    About 0 when the grouping changes arbitrarily from seed to seed, 1 when every seed gives the same groups.
    Arguments and errors as in [`pairwise_agreement`][hiercam.pairwise_agreement].

    Examples:
        >>> seeds = [ClassHierarchy([[0, 0, 1, 1]]), ClassHierarchy([[0, 0, 1, 1]])]
        >>> seeds.append(ClassHierarchy([[0, 1, 0, 1]]))
        >>> mean_pairwise_agreement(seeds, level=1)  # (1 - 0.5 - 0.5) / 3
        0.0
    """
    scores = pairwise_agreement(hierarchies, level, exclude_singletons=exclude_singletons)
    upper = torch.triu_indices(len(scores), len(scores), offset=1)
    return float(scores[upper[0], upper[1]].mean())


def shuffled_hierarchy(hierarchy: ClassHierarchy, seed: int) -> ClassHierarchy:
    """The same tree with the grouped classes placed at random: the control for any grouping.

    The grouped classes (all but the ``singletons``) are permuted by a random permutation drawn from a
    ``torch.Generator`` seeded with ``seed``: class ``c`` takes the place (the group at every level) of class
    ``perm(c)``. Group ``g`` of every level keeps its size and its parent group, so the result has the same
    level sizes, the same group sizes and a valid nesting; the classes kept out of the grouping stay alone in
    their own groups, and class names stay attached to their class indices. The same ``seed`` gives the same
    result on every platform. With few classes a draw can give back the original groups.

    Args:
        hierarchy: the hierarchy to shuffle (not modified).
        seed: seed of the permutation, ``>= 0``.

    Returns:
        A new [`ClassHierarchy`][hiercam.ClassHierarchy].

    Raises:
        TypeError: ``hierarchy`` is not a ``ClassHierarchy`` or ``seed`` is not an int.
        ValueError: ``seed`` is negative.

    Examples:
        >>> h = ClassHierarchy([[0, 0, 1, 1, 2, 3], [0, 0, 0, 0, 1, 2]], singletons=[5])
        >>> shuffled = shuffled_hierarchy(h, seed=0)
        >>> h.groups(1), shuffled.groups(1)
        ([[0, 1], [2, 3], [4], [5]], [[1, 2], [3, 4], [0], [5]])
        >>> shuffled.groups(2)
        [[1, 2, 3, 4], [0], [5]]
        >>> [len(g) for g in shuffled.groups(1)] == [len(g) for g in h.groups(1)]
        True
    """
    _check_hierarchy(hierarchy, "hierarchy")
    seed = check_int(seed, "seed", minimum=0)
    kept = set(hierarchy.singletons)
    grouped = [c for c in range(hierarchy.num_classes) if c not in kept]
    draw = torch.randperm(len(grouped), generator=torch.Generator().manual_seed(seed)).tolist()
    source = list(range(hierarchy.num_classes))
    for slot, pick in zip(grouped, draw, strict=True):
        source[slot] = grouped[pick]
    levels = []
    for level in range(1, hierarchy.num_levels):
        old = hierarchy.assignments(level).tolist()
        levels.append([old[source[c]] for c in range(hierarchy.num_classes)])
    return ClassHierarchy(levels, hierarchy.class_names, singletons=hierarchy.singletons)


def coassociation_matrix(hierarchies: Sequence[ClassHierarchy], level: int | None = None) -> Tensor:
    """How often two classes share a group: the fraction of hierarchies (and levels) that put them together.

    With ``level=None``, each hierarchy contributes the fraction of its group levels ``1..L`` at which the two
    classes share a group (1 if they are together from level 1, ``1/L`` if only at the top level), and the
    matrix is the mean over the hierarchies: classes merged early count as closer than classes merged late.
    With an int ``level``, it is the fraction of hierarchies that put the two classes in one group at that
    level.

    Args:
        hierarchies: ``M >= 1`` hierarchies of the same classes.
        level: a group level present in every hierarchy, or ``None`` for the mean over each one's levels.

    Returns:
        ``(K, K)`` float64 values in ``[0, 1]`` on the CPU, symmetric, diagonal 1.

    Raises:
        TypeError: ``hierarchies`` is not a sequence of ``ClassHierarchy``, or ``level`` is not an int.
        ValueError: no hierarchy, different classes, or ``level`` outside ``1..num_levels - 1`` of one of
            them.

    Examples:
        >>> a = ClassHierarchy([[0, 0, 1, 2], [0, 0, 1, 1]])
        >>> b = ClassHierarchy([[0, 1, 1, 2], [0, 0, 0, 1]])
        >>> coassociation_matrix([a, b], level=1)
        tensor([[1.0000, 0.5000, 0.0000, 0.0000],
                [0.5000, 1.0000, 0.5000, 0.0000],
                [0.0000, 0.5000, 1.0000, 0.0000],
                [0.0000, 0.0000, 0.0000, 1.0000]], dtype=torch.float64)
    """
    items = _check_hierarchies(hierarchies, minimum=1)
    if level is not None:
        top = min(h.num_levels for h in items) - 1
        level = check_int(level, "level", minimum=1, maximum=top)
    total = torch.zeros(items[0].num_classes, items[0].num_classes, dtype=torch.float64)
    for hierarchy in items:
        chosen = [level] if level is not None else list(range(1, hierarchy.num_levels))
        for depth in chosen:
            groups = hierarchy.assignments(depth)
            total += (groups[:, None] == groups[None, :]).to(torch.float64) / len(chosen)
    return total / len(items)


def consensus_hierarchy(
    hierarchies: Sequence[ClassHierarchy], levels: Sequence[int], *, level: int | None = None
) -> ClassHierarchy:
    """One hierarchy that several agree on, e.g. the groupings of classifiers trained with several seeds.

    Average-linkage agglomerative clustering (SciPy) on ``1 -`` the
    [`coassociation_matrix`][hiercam.coassociation_matrix] of ``hierarchies`` (``level``
    as there), cut after the merges that leave ``levels[l]`` groups: one tree cut at several heights, so the
    levels are nested by construction. Classes kept out of the grouping in *every* hierarchy stay kept out
    (alone at every level, counted in ``levels`` as in [`HierarchicalKMeans`][hiercam.HierarchicalKMeans]).
    The consensus of identical hierarchies has their groups; the result is deterministic, its group indices
    numbered in the order of their smallest class, and its class names are those of the hierarchies.

    Args:
        hierarchies: ``M >= 1`` hierarchies of the same classes.
        levels: group counts after the base level, strictly decreasing, each larger than the number of common
            singletons and the first smaller than ``K``.
        level: which levels make the co-association, see
            [`coassociation_matrix`][hiercam.coassociation_matrix].

    Returns:
        A new [`ClassHierarchy`][hiercam.ClassHierarchy] with level sizes ``(K, *levels)``.

    Raises:
        TypeError: ``hierarchies`` is not a sequence of ``ClassHierarchy``, or ``levels``/``level`` not ints.
        ValueError: no hierarchy, different classes, ``levels`` empty, not strictly decreasing, not below
            ``K`` or not above the number of common singletons, or ``level`` out of range.

    Examples:
        >>> seeds = [
        ...     ClassHierarchy([[0, 0, 1, 1, 2], [0, 0, 1, 1, 1]]),
        ...     ClassHierarchy([[0, 0, 1, 1, 2], [0, 0, 0, 0, 1]]),
        ...     ClassHierarchy([[0, 0, 1, 2, 2], [0, 0, 1, 1, 1]]),
        ... ]
        >>> consensus = consensus_hierarchy(seeds, levels=(3, 2))
        >>> consensus.groups(1), consensus.groups(2)
        ([[0, 1], [2, 3], [4]], [[0, 1], [2, 3, 4]])
    """
    items = _check_hierarchies(hierarchies, minimum=1)
    counts = check_levels(levels)
    similarity = coassociation_matrix(items, level).numpy()
    num_classes = items[0].num_classes
    kept = sorted(set.intersection(*(set(h.singletons) for h in items)))
    if counts[0] >= num_classes:
        raise ValueError(
            f"`levels` must ask for fewer groups than the {num_classes} classes, got {counts[0]}"
        )
    if counts[-1] <= len(kept):
        raise ValueError(
            f"`levels` counts the {len(kept)} classes kept out of the grouping in every hierarchy as groups, "
            f"so every level needs more groups than that, got levels {counts}"
        )
    grouped = [c for c in range(num_classes) if c not in set(kept)]
    cuts = _average_linkage_cuts(1.0 - similarity[np.ix_(grouped, grouped)], [n - len(kept) for n in counts])
    assignments = []
    for count, cut in zip(counts, cuts, strict=True):
        full = np.empty(num_classes, dtype=np.int64)
        full[grouped] = cut
        full[kept] = count - len(kept) + np.arange(len(kept))
        assignments.append(first_appearance(full, count)[full].tolist())
    return ClassHierarchy(assignments, items[0].class_names, singletons=kept)


def _average_linkage_cuts(distances: np.ndarray, counts: list[int]) -> list[np.ndarray]:
    """Cluster labels ``(K',)`` with exactly ``counts[l]`` clusters each, from one average-linkage tree."""
    from scipy.cluster.hierarchy import linkage  # imported here: SciPy's cluster module is slow to import
    from scipy.spatial.distance import squareform

    size = len(distances)
    np.fill_diagonal(distances, 0.0)
    merges = linkage(squareform(distances, checks=False), method="average") if size > 1 else np.empty((0, 4))
    members: dict[int, list[int]] = {c: [c] for c in range(size)}
    cuts = []
    done = 0
    for count in counts:  # strictly decreasing: each cut continues the merges of the previous one
        for step in range(done, size - count):
            left, right = int(merges[step, 0]), int(merges[step, 1])
            members[size + step] = members.pop(left) + members.pop(right)
        done = size - count
        labels = np.empty(size, dtype=np.int64)
        for group, points in enumerate(members.values()):
            labels[points] = group
        cuts.append(labels)
    return cuts


def _ari(first: Tensor, second: Tensor) -> float:
    from sklearn.metrics import adjusted_rand_score  # imported here: scikit-learn is slow to import

    return float(adjusted_rand_score(first.numpy(), second.numpy()))


def _check_hierarchy(value: object, name: str) -> ClassHierarchy:
    if not isinstance(value, ClassHierarchy):
        raise TypeError(f"`{name}` must be a ClassHierarchy, got {type_name(value)}")
    return value


def _check_same_classes(value: object, reference: ClassHierarchy, name: str, reference_name: str) -> None:
    hierarchy = _check_hierarchy(value, name)
    if hierarchy.num_classes != reference.num_classes:
        raise ValueError(
            f"`{name}` must group the same classes as `{reference_name}`, got {hierarchy.num_classes} "
            f"classes against {reference.num_classes}"
        )
    if hierarchy.class_names != reference.class_names:
        index = next(
            i
            for i, (x, y) in enumerate(zip(hierarchy.class_names, reference.class_names, strict=True))
            if x != y
        )
        raise ValueError(
            f"`{name}` must group the same classes as `{reference_name}`, in the same order: class "
            f"{index} is {hierarchy.class_names[index]!r} against {reference.class_names[index]!r}"
        )


def _check_hierarchies(hierarchies: object, minimum: int) -> list[ClassHierarchy]:
    if isinstance(hierarchies, (str, bytes, ClassHierarchy)) or not isinstance(hierarchies, Sequence):
        raise TypeError(f"`hierarchies` must be a sequence of ClassHierarchy, got {type_name(hierarchies)}")
    items = list(hierarchies)
    if len(items) < minimum:
        raise ValueError(f"`hierarchies` must hold at least {minimum}, got {len(items)}")
    _check_hierarchy(items[0], "hierarchies[0]")
    for index, hierarchy in enumerate(items[1:], start=1):
        _check_same_classes(hierarchy, items[0], f"hierarchies[{index}]", "hierarchies[0]")
    return items
