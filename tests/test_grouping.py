from __future__ import annotations

import numpy as np
import pytest
import torch

from hiercam import ClassHierarchy, HierarchicalKMeans, class_embeddings, group_classes


def partition(groups: list[list[int]]) -> set[frozenset[int]]:
    return {frozenset(g) for g in groups}


def planted(seed: int) -> tuple[torch.Tensor, list[list[list[int]]]]:
    """Class vectors with tight groups inside super-groups; returns vectors and the planted partitions."""
    rng = np.random.default_rng(seed)
    num_supers = int(rng.integers(2, 4))
    groups_per_super = [int(rng.integers(2, 4)) for _ in range(num_supers)]
    vectors, level1, level2 = [], [], []
    cls = 0
    for n_groups in groups_per_super:
        super_centre = rng.normal(size=32) * 100
        members_of_super = []
        for _ in range(n_groups):
            group_centre = super_centre + rng.normal(size=32) * 10
            size = int(rng.integers(1, 5))
            members = list(range(cls, cls + size))
            cls += size
            vectors.extend(group_centre + rng.normal(size=32) * 0.5 for _ in members)
            level1.append(members)
            members_of_super.extend(members)
        level2.append(members_of_super)
    # shuffle class order so that groups are not contiguous
    perm = rng.permutation(cls)
    inverse = np.argsort(perm)
    shuffled = torch.tensor(np.array(vectors)[perm], dtype=torch.float32)
    relabel = lambda groups: [sorted(int(inverse[c]) for c in g) for g in groups]  # noqa: E731
    return shuffled, [relabel(level1), relabel(level2)]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize(("unit_norm", "weighted"), [(False, False), (False, True)])
def test_planted_hierarchy_is_recovered_at_every_level(seed: int, unit_norm: bool, weighted: bool) -> None:
    vectors, truth = planted(seed)
    levels = (len(truth[0]), len(truth[1]))
    hierarchy = HierarchicalKMeans(levels, unit_norm=unit_norm, weighted=weighted, seed=seed).fit(vectors)
    assert hierarchy.level_sizes == (len(vectors), *levels)
    for level, expected in enumerate(truth, start=1):
        assert partition(hierarchy.groups(level)) == partition(expected)


def test_groups_are_numbered_by_smallest_member() -> None:
    vectors, truth = planted(3)
    hierarchy = HierarchicalKMeans((len(truth[0]), len(truth[1]))).fit(vectors)
    for level in (1, 2):
        firsts = [min(g) for g in hierarchy.groups(level)]
        assert firsts == sorted(firsts)
        assert hierarchy.group_of(0, level) == 0


def is_nested(hierarchy: ClassHierarchy) -> bool:
    for level in range(1, hierarchy.num_levels):
        finer = hierarchy.groups(level - 1)
        for group in map(set, hierarchy.groups(level)):
            touched = [set(g) for g in finer if set(g) & group]
            if set().union(*touched) != group:
                return False
    return True


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("options", [{}, {"unit_norm": True}, {"weighted": True}])
def test_random_vectors_give_nested_deterministic_hierarchies(seed: int, options: dict) -> None:
    vectors = torch.randn(20, 16, generator=torch.Generator().manual_seed(seed))
    first = HierarchicalKMeans((12, 8, 5), seed=seed, **options).fit(vectors)
    second = HierarchicalKMeans((12, 8, 5), seed=seed, **options).fit(vectors.clone())
    assert first == second
    assert first.level_sizes == (20, 12, 8, 5)
    assert is_nested(first)
    assert all(len(g) > 0 for level in range(4) for g in first.groups(level))


def test_weighted_centres_are_means_of_member_classes() -> None:
    vectors = torch.randn(20, 8, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    clusterer = HierarchicalKMeans((6, 3), weighted=True)
    hierarchy = clusterer.fit(vectors)
    for level in (1, 2):
        expected = torch.stack([vectors[g].mean(0) for g in hierarchy.groups(level)]).float()
        torch.testing.assert_close(clusterer.centers_[level - 1], expected, atol=1e-5, rtol=1e-5)


def test_unweighted_centres_are_means_of_sub_centres() -> None:
    vectors = torch.randn(20, 8, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    clusterer = HierarchicalKMeans((6, 3))
    hierarchy = clusterer.fit(vectors)
    level1 = clusterer.centers_[0]
    torch.testing.assert_close(level1, torch.stack([vectors[g].mean(0) for g in hierarchy.groups(1)]).float())
    parents = hierarchy.assignments(2)[[g[0] for g in hierarchy.groups(1)]]  # level-1 group -> level-2 group
    expected = torch.stack([level1[parents == p].mean(0) for p in range(3)])
    torch.testing.assert_close(clusterer.centers_[1], expected, atol=1e-5, rtol=1e-5)


def test_unit_norm_uses_directions_only() -> None:
    directions = torch.randn(12, 6, generator=torch.Generator().manual_seed(1))
    scales = torch.rand(12, 1, generator=torch.Generator().manual_seed(2)) * 10 + 0.1
    a = HierarchicalKMeans((4, 2), unit_norm=True).fit(directions)
    b = HierarchicalKMeans((4, 2), unit_norm=True).fit(directions * scales)
    assert a == b


def test_group_classes_one_liner_equals_the_pieces() -> None:
    from torchvision.models import resnet18

    model = resnet18(num_classes=10)
    expected = HierarchicalKMeans((5, 2), weighted=True).fit(class_embeddings(model))
    assert group_classes(model, (5, 2), weighted=True) == expected


@pytest.mark.parametrize(
    ("levels", "error", "match"),
    [
        ((5, 8), ValueError, r"`levels` must be strictly decreasing, got \(5, 8\)"),
        ((5, 5), ValueError, "strictly decreasing"),
        ((0,), ValueError, "`levels` must be >= 1, got 0"),
        ((), ValueError, "`levels` must name at least one group level"),
        ((2.5,), TypeError, "`levels` must be an int, got float"),
        (3, TypeError, "`levels` must be a sequence of ints, got int"),
    ],
)
def test_bad_levels(levels, error, match) -> None:
    with pytest.raises(error, match=match):
        HierarchicalKMeans(levels)


def test_bad_fit_input() -> None:
    with pytest.raises(ValueError, match="`levels` must ask for fewer groups than the 6 classes, got 6"):
        HierarchicalKMeans((6,)).fit(torch.randn(6, 3))
    with pytest.raises(ValueError, match=r"`embeddings` must have shape \(K, D\), got \(6,\)"):
        HierarchicalKMeans((2,)).fit(torch.randn(6))
    with pytest.raises(ValueError, match="`embeddings` must be finite"):
        HierarchicalKMeans((2,)).fit(torch.tensor([[0.0, 1.0], [float("nan"), 0.0], [1.0, 1.0]]))
    duplicates = torch.tensor([[0.0, 0.0], [0.0, 0.0], [1.0, 1.0], [1.0, 1.0], [0.0, 0.0], [1.0, 1.0]])
    with pytest.raises(
        ValueError, match="asks for 3 groups at level 1, but there are only 2 distinct points"
    ):
        HierarchicalKMeans((3,)).fit(duplicates)
    with pytest.raises(ValueError, match="`class_names` must have 6 entries, got 2"):
        HierarchicalKMeans((2,)).fit(torch.randn(6, 3), class_names=["a", "b"])


def test_unit_norm_is_stored_and_shown() -> None:
    clusterer = HierarchicalKMeans((2,), unit_norm=True)
    assert clusterer.unit_norm is True
    assert "unit_norm=True" in repr(clusterer)
    vectors = torch.tensor([[1.0, 0.0], [0.0, 1.0], [20.0, 0.0], [0.0, 21.0]])
    assert group_classes(vectors, (2,), unit_norm=True).groups(1) == [[0, 2], [1, 3]]  # directions only
    # Euclidean: SSE of {0, 1, 2} + {3} is 254.7, of {0, 1, 3} + {2} 281.3, of {0, 1} + {2, 3} 421.5
    assert group_classes(vectors, (2,), unit_norm=False).groups(1) == [[0, 1, 2], [3]]
