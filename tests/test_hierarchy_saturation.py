"""ClassHierarchy.split_saturated_groups: hand-computed hierarchies and presences, and its invariants."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

# Imported from the package (see tests/test_hierarchy.py: doctest collection may import the module twice).
from hiercam import ClassHierarchy
from hiercam.hierarchy import GroupSplit


def _labels(present: dict[int, range | list[int]], num_classes: int, images: int = 10) -> torch.Tensor:
    """``(images, K)`` labels with class ``k`` present in the images ``present[k]``."""
    labels = torch.zeros(images, num_classes, dtype=torch.long)
    for cls, rows in present.items():
        labels[list(rows), cls] = 1
    return labels


def _assert_splits(found: tuple[GroupSplit, ...], expected: list[tuple]) -> None:
    assert len(found) == len(expected)
    for split, (level, group, presence, halves, shares) in zip(found, expected, strict=True):
        assert (split.level, split.group, split.halves) == (level, group, halves)
        assert split.presence == pytest.approx(presence)
        assert split.half_presence == pytest.approx(shares)


def test_a_saturated_group_is_split_into_balanced_halves_and_the_level_above_follows() -> None:
    # level 1: {a, b, c} {d, e} {f}; level 2: {a, b, c, d, e} {f}
    h = ClassHierarchy([[0, 0, 0, 1, 1, 2], [0, 0, 0, 0, 0, 1]], class_names=list("abcdef"))
    # a 40 %, b 30 %, c 30 % (disjoint: {a, b, c} is in every image); d, e: images 0-6; f 10 %
    labels = _labels({0: range(4), 1: range(4, 7), 2: range(7, 10), 3: range(5), 4: [5, 6], 5: [9]}, 6)
    torch.testing.assert_close(h.group_presence(labels, 1), torch.tensor([1.0, 0.7, 0.1]))
    torch.testing.assert_close(h.group_presence(labels, 2), torch.tensor([1.0, 0.1]))
    result = h.saturated_splits(labels, 0.9)
    # level 1: a (40 %) to the first half; b: {a, b} would be 70 %, alone 30 %: second half; c: {a, c} 70 %
    # against {b, c} 60 %: second half. Level 2's children are then {a}, {b, c}, {d, e} (40, 60, 70 %):
    # {d, e} first; {b, c}: with {d, e} 100 %, apart 70 %: second; {a}: with {d, e} 70 % (the larger half
    # 70 %), with {b, c} 100 %: first. The half holding `a` comes first.
    _assert_splits(
        result.splits,
        [
            (1, (0, 1, 2), 1.0, ((0,), (1, 2)), (0.4, 0.6)),
            (2, (0, 1, 2, 3, 4), 1.0, ((0, 3, 4), (1, 2)), (0.7, 0.6)),
        ],
    )
    split = result.hierarchy
    assert split is not None
    assert result.removed_levels == ()
    assert split.level_sizes == (6, 4, 3)
    assert split.assignments(1).tolist() == [0, 1, 1, 2, 2, 3]
    assert split.assignments(2).tolist() == [0, 1, 1, 0, 0, 2]
    assert split.group_names(2) == ["{a, d, e}", "{b, c}", "{f}"]
    torch.testing.assert_close(split.group_presence(labels, 2), torch.tensor([0.7, 0.6, 0.1]))
    assert h.split_saturated_groups(labels, 0.9) == split
    assert h.level_sizes == (6, 3, 2)  # self is unchanged


def test_a_level_split_into_the_level_below_is_removed() -> None:
    # level 1: {a, b} {c} {d} (80 %, 20 %, 10 %); level 2: {a, b, c} {d}, {a, b, c} in every image
    h = ClassHierarchy([[0, 0, 1, 2], [0, 0, 0, 1]], class_names=list("abcd"))
    labels = _labels({0: range(4), 1: range(4, 8), 2: [8, 9], 3: [0]}, 4)
    result = h.saturated_splits(labels, 0.9)
    # its children {a, b} and {c} become its halves: level 2 is then level 1
    _assert_splits(result.splits, [(2, (0, 1, 2), 1.0, ((0, 1), (2,)), (0.8, 0.2))])
    assert result.removed_levels == (2,)
    assert result.hierarchy == ClassHierarchy([[0, 0, 1, 2]], class_names=list("abcd"))


def test_no_level_left_is_a_value_error_and_a_none_hierarchy() -> None:
    # a and b are in every image: {a, b} splits into the classes at level 1, and so does level 2
    h = ClassHierarchy([[0, 0, 1], [0, 0, 0]], class_names=list("abc"))
    labels = _labels({0: range(10), 1: range(10), 2: [3]}, 3)
    result = h.saturated_splits(labels, 0.9)
    assert result.hierarchy is None
    assert result.removed_levels == (1, 2)
    # level 2: a first; b ties (100 % either way), goes to the emptier half; c then joins the half with
    # fewer children... the first ({a, c}, 100 %), which is split again
    _assert_splits(
        result.splits,
        [
            (1, (0, 1), 1.0, ((0,), (1,)), (1.0, 1.0)),
            (2, (0, 1, 2), 1.0, ((0, 2), (1,)), (1.0, 1.0)),
            (2, (0, 2), 1.0, ((0,), (2,)), (1.0, 0.1)),
        ],
    )
    with pytest.raises(ValueError, match="removes every group level: each ends up with the same groups"):
        h.split_saturated_groups(labels, 0.9)


def test_singletons_stay_alone_and_ties_go_to_the_half_with_fewer_children() -> None:
    # e is kept out of the grouping and in every image; level 1: {a, b} {c, d} {e}; level 2: {a-d} {e}
    h = ClassHierarchy([[0, 0, 1, 1, 2], [0, 0, 0, 0, 1]], class_names=list("abcde"), singletons=[4])
    labels = _labels({0: range(5), 1: range(5, 10), 2: range(3), 3: range(3, 6), 4: range(10)}, 5)
    result = h.saturated_splits(labels, 0.9)
    # level 2's children: {a} 50 %, {b} 50 %, {c, d} 60 %. {c, d} first; {a}: the larger half is 60 % on
    # either side, so it goes to the empty half; {b}: 100 % on either side, equal children: the first half,
    # {b, c, d} (100 %), split again into {b} and {c, d}: level 2 is then level 1, and is removed.
    _assert_splits(
        result.splits,
        [
            (1, (0, 1), 1.0, ((0,), (1,)), (0.5, 0.5)),
            (2, (0, 1, 2, 3), 1.0, ((0,), (1, 2, 3)), (0.5, 1.0)),
            (2, (1, 2, 3), 1.0, ((1,), (2, 3)), (0.5, 0.6)),
        ],
    )
    assert result.removed_levels == (2,)
    split = result.hierarchy
    assert split is not None
    assert split.groups(1) == [[0], [1], [2, 3], [4]]
    assert split.singletons == (4,)


def test_a_group_saturated_by_one_class_stays_and_drop_saturated_levels_then_drops_it() -> None:
    h = ClassHierarchy([[0, 0, 1, 1]], class_names=list("abcd"))
    labels = _labels({0: range(10), 1: [1, 2], 2: range(4), 3: range(4, 8)}, 4)
    split = h.split_saturated_groups(labels, 0.9)
    assert split.groups(1) == [[0], [1], [2, 3]]
    torch.testing.assert_close(split.group_presence(labels, 1), torch.tensor([1.0, 0.2, 0.8]))
    with pytest.raises(ValueError, match="'a' is in more than 90% of them: keep it out of the grouping"):
        split.drop_saturated_levels(labels, 0.9)


def test_nothing_saturated_gives_an_equal_hierarchy() -> None:
    h = ClassHierarchy([[0, 0, 1, 2], [0, 0, 1, 1]], class_names=list("abcd"))
    labels = _labels({0: [0], 1: [1], 2: [2], 3: [3]}, 4)
    result = h.saturated_splits(labels, 0.9)
    assert result.hierarchy == h
    assert (result.splits, result.removed_levels) == ((), ())


def test_labels_are_not_modified_and_any_binary_dtype_gives_the_same_hierarchy() -> None:
    h = ClassHierarchy([[0, 0, 0, 1, 1, 2], [0, 0, 0, 0, 0, 1]])
    labels = _labels({0: range(4), 1: range(4, 7), 2: range(7, 10), 3: range(5), 4: [5, 6], 5: [9]}, 6)
    before = labels.clone()
    expected = h.split_saturated_groups(labels, 0.9)
    assert torch.equal(labels, before)
    for dtype in (torch.bool, torch.float32, torch.float64, torch.uint8):
        assert h.split_saturated_groups(labels.to(dtype), 0.9) == expected
    assert h.split_saturated_groups(labels=labels, max_presence=0.9) == expected


@pytest.mark.parametrize(
    ("labels", "max_presence", "error", "match"),
    [
        ([[1, 0, 0]], 0.9, TypeError, "`labels` must be a torch.Tensor"),
        (torch.ones(2, 4), 0.9, ValueError, r"`labels` must have shape \(B, 3\), got \(2, 4\)"),
        (torch.ones(3), 0.9, ValueError, "`labels` must have shape"),
        (torch.zeros(0, 3), 0.9, ValueError, "`labels` must hold at least one image"),
        (torch.full((2, 3), 0.5), 0.9, ValueError, "`labels` must hold only 0/1 values"),
        (torch.ones(2, 3), 1.5, ValueError, "`max_presence` must be between 0 and 1"),
        (torch.ones(2, 3), 0.0, ValueError, "`max_presence` must be between 0 and 1"),
        (torch.ones(2, 3), True, TypeError, "`max_presence` must be a float"),
        (torch.ones(2, 3), "0.9", TypeError, "`max_presence` must be a float"),
    ],
)
def test_bad_arguments_name_the_argument(
    labels: object, max_presence: object, error: type, match: str
) -> None:
    h = ClassHierarchy([[0, 0, 1]])
    with pytest.raises(error, match=match):
        h.split_saturated_groups(labels, max_presence)  # type: ignore[arg-type]


def _random_hierarchy(rng: np.random.Generator, num_classes: int) -> ClassHierarchy:
    """Nested levels drawn at random: each level merges the groups of the one below at random."""
    levels: list[list[int]] = []
    finer = list(range(num_classes))
    count = num_classes
    while count > 1 and len(levels) < 3:
        fewer = int(rng.integers(1, count))
        parent = rng.permutation(np.arange(count) % fewer)  # every parent used
        levels.append([int(parent[g]) for g in finer])
        finer, count = levels[-1], fewer
    return ClassHierarchy(levels)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), limit=st.floats(0.05, 0.95))
def test_split_levels_are_nested_refinements_with_no_splittable_saturated_group(
    seed: int, limit: float
) -> None:
    rng = np.random.default_rng(seed)
    num_classes = int(rng.integers(2, 9))
    h = _random_hierarchy(rng, num_classes)
    labels = torch.from_numpy(rng.random((int(rng.integers(1, 13)), num_classes)) < 0.4).long()
    result = h.saturated_splits(labels, limit)
    kept = [level for level in range(1, h.num_levels) if level not in result.removed_levels]
    if result.hierarchy is None:
        assert kept == []
        return
    split = result.hierarchy
    assert split.num_levels == len(kept) + 1  # the constructor checked the nesting and the strict decrease
    for new, old in enumerate(kept, start=1):
        # a refinement of the original level, with one more group per split at that level
        for group in split.groups(new):
            assert len({h.group_of(c, old) for c in group}) == 1
        assert split.num_groups(new) == h.num_groups(old) + sum(s.level == old for s in result.splits)
        # a group still saturated is a single group of the level below (a class, at level 1)
        presence = split.group_presence(labels, new)
        below = split.assignments(new - 1)
        for group, members in enumerate(split.groups(new)):
            if float(presence[group]) > limit:
                assert len({int(below[c]) for c in members}) == 1
    for s in result.splits:
        assert s.presence > limit
        assert sorted(s.halves[0] + s.halves[1]) == list(s.group)
        assert s.halves[0][0] == s.group[0]
