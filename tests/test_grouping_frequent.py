"""Grouping that survives frequent classes: classes kept out of the grouping, and frequent_classes."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch

from hiercam import ClassHierarchy, HierarchicalKMeans, frequent_classes, group_classes

NAMES = ["building", "pedestrian", "bicyclist", "pole", "sign", "tree", "car", "fence"]


def _embeddings(seed: int = 0) -> torch.Tensor:
    """Eight class vectors in three loose clusters; class 0 ("building") sits between them."""
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0, 0.0, 4.0], [4.0, 0.0, 0.0], [0.0, 4.0, 0.0]])
    cluster = [1, 0, 0, 1, 1, 2, 2, 2]
    points = centres[cluster] + rng.normal(scale=0.6, size=(8, 3))
    points[0] = [1.5, 1.5, 1.5]
    return torch.tensor(points, dtype=torch.float32)


def _street_labels(seed: int = 0, rows: int = 200) -> torch.Tensor:
    """Training labels where class 0 is in 97 % of the images and the others in 20-50 %."""
    rng = np.random.default_rng(seed)
    labels = (rng.random((rows, 8)) < np.array([0.0, 0.5, 0.2, 0.4, 0.4, 0.5, 0.5, 0.3])).astype(np.int64)
    labels[:, 0] = 0
    labels[: round(0.97 * rows), 0] = 1
    rng.shuffle(labels)
    return torch.from_numpy(labels)


# --------------------------------------------------------------------------------------- frequent_classes
def test_frequent_classes_against_a_count() -> None:
    labels = _street_labels()
    assert float(labels[:, 0].float().mean()) == pytest.approx(0.97)
    assert frequent_classes(labels, 0.9) == [0]
    naive = [k for k in range(8) if sum(int(row[k]) for row in labels.tolist()) / len(labels) > 0.45]
    assert frequent_classes(labels, 0.45) == naive
    assert len(naive) > 1  # the oracle is not trivial
    assert frequent_classes(labels.bool(), 0.9) == [0]


def test_frequent_classes_is_strict() -> None:
    labels = torch.tensor([[1, 1], [1, 0], [1, 1], [0, 0]])  # presence 0.75, 0.5
    assert frequent_classes(labels, 0.75) == []
    assert frequent_classes(labels, 0.74) == [0]


@pytest.mark.parametrize(
    ("labels", "presence", "error", "match"),
    [
        ([[1, 0]], 0.9, TypeError, "labels"),
        (torch.tensor([1, 0]), 0.9, ValueError, r"\(B, K\)"),
        (torch.zeros(0, 3), 0.9, ValueError, "at least one image"),
        (torch.tensor([[2, 0]]), 0.9, ValueError, "labels"),
        (torch.tensor([[1, 0]]), 1.0, ValueError, "max_presence"),
        (torch.tensor([[1, 0]]), 0.0, ValueError, "max_presence"),
    ],
)
def test_frequent_classes_bad_inputs(
    labels: object, presence: float, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        frequent_classes(labels, presence)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------- the grouping
@pytest.mark.parametrize("unit_norm", [False, True])
@pytest.mark.parametrize("weighted", [False, True])
def test_kept_out_class_is_alone_and_the_others_are_grouped_as_without_it(
    unit_norm: bool, weighted: bool
) -> None:
    vectors = _embeddings()
    singletons = frequent_classes(_street_labels(), 0.9)
    assert singletons == [0]
    clusterer = HierarchicalKMeans((5, 3, 2), singletons=singletons, unit_norm=unit_norm, weighted=weighted)
    h = clusterer.fit(vectors, NAMES)
    assert h.level_sizes == (8, 5, 3, 2)
    assert h.singletons == (0,)
    # oracle: the paper's K-means on the seven other classes alone, one group fewer per level
    rest = list(range(1, 8))
    reference = HierarchicalKMeans((4, 2, 1), unit_norm=unit_norm, weighted=weighted)
    oracle = reference.fit(vectors[rest])
    own = vectors[0] / vectors[0].norm() if unit_norm else vectors[0]
    for level in (1, 2, 3):
        assert [0] in h.groups(level)
        expected = sorted([rest[c] for c in group] for group in oracle.groups(level))
        assert sorted(g for g in h.groups(level) if g != [0]) == expected
        centres = clusterer.centers_[level - 1]
        assert centres.shape == (h.num_groups(level), 3)
        torch.testing.assert_close(centres[h.group_of(0, level)], own)  # the class's own (unit) vector
        for group, members in enumerate(oracle.groups(level)):
            mine = h.group_of(rest[members[0]], level)
            torch.testing.assert_close(centres[mine], reference.centers_[level - 1][group])


def test_group_classes_passes_singletons() -> None:
    weights = _embeddings()
    h = group_classes(weights, (5, 3), NAMES, singletons=[0, 3])
    assert h.singletons == (0, 3)
    assert h.level_sizes == (8, 5, 3)
    assert h.groups(2) == [[0], [1, 2, 4, 5, 6, 7], [3]]
    assert group_classes(weights, (4, 2), singletons=np.array([0])).singletons == (0,)


def test_without_singletons_nothing_changes() -> None:
    vectors = _embeddings()
    plain = HierarchicalKMeans((5, 3)).fit(vectors, NAMES)
    assert plain.singletons == ()
    assert HierarchicalKMeans((5, 3), singletons=[]).fit(vectors, NAMES) == plain
    assert "kept out" not in str(plain)
    assert "kept out" not in repr(plain)


# --------------------------------------------------------------------------------------- the saturation rule
def test_a_ubiquitous_class_no_longer_makes_the_rule_fail() -> None:
    vectors, labels = _embeddings(), _street_labels()
    plain = HierarchicalKMeans((5, 3)).fit(vectors, NAMES)
    assert all(float(plain.group_presence(labels, level).max()) > 0.9 for level in (1, 2))
    with pytest.raises(
        ValueError,
        match=r"images; 'building' is in more than 90% of them: keep it out .* singletons=frequent_classes",
    ):
        plain.drop_saturated_levels(labels, 0.9)
    kept_out = group_classes(vectors, (5, 3), NAMES, singletons=frequent_classes(labels, 0.9))
    dropped = kept_out.drop_saturated_levels(labels, 0.9)  # no error
    rows = labels.tolist()

    def naive_presence(members: list[int]) -> float:
        return sum(any(row[c] for c in members) for row in rows) / len(rows)

    expected = [
        level for level in (1, 2) if max(naive_presence(g) for g in kept_out.groups(level) if g != [0]) <= 0.9
    ]
    assert expected  # level 1 survives once "building" is alone
    assert dropped.level_sizes == (8, *(kept_out.num_groups(level) for level in expected))
    assert dropped.singletons == (0,)
    assert dropped.groups(1) == kept_out.groups(expected[0])


def test_saturated_levels_are_still_dropped_around_singletons() -> None:
    # level 2 merges every other class into one group, present in every image: that level goes
    h = ClassHierarchy([[0, 1, 1, 2, 2, 3], [0, 1, 1, 1, 1, 1]], singletons=[0])
    labels = torch.tensor([[1, 1, 0, 0, 0, 0], [1, 0, 0, 1, 0, 0], [1, 0, 0, 0, 0, 1], [0, 0, 1, 0, 1, 0]])
    assert h.group_presence(labels, 1).tolist() == [0.75, 0.5, 0.5, 0.25]
    kept = h.drop_saturated_levels(labels, 0.9)
    assert kept.level_sizes == (6, 4)
    assert kept.singletons == (0,)
    with pytest.raises(ValueError, match=r"raise `max_presence`"):
        h.drop_saturated_levels(labels, 0.4)


# --------------------------------------------------------------------------------------- the report
def test_text_and_html_trees_show_the_kept_out_classes() -> None:
    h = ClassHierarchy(
        [[0, 1, 1, 2], [0, 1, 1, 1]], class_names=["building", "cat", "dog", "car"], singletons=[0]
    )
    assert repr(h) == "ClassHierarchy(4 classes, levels 4 -> 3 -> 2, 1 kept out of the grouping)"
    assert str(h).splitlines() == [
        repr(h),
        "level 2 group 0 (1 class, kept out of the grouping)",
        "  level 1 group 0 (1 class, kept out of the grouping): building",
        "level 2 group 1 (3 classes)",
        "  level 1 group 1 (2 classes): cat, dog",
        "  level 1 group 2 (1 class): car",
    ]
    html = ET.fromstring(h._repr_html_())
    items = ["".join(li.itertext()) for li in html.iter("li")]
    assert "level 1 group 0 (1 class, kept out of the grouping): building" in items
    assert "level 1 group 2 (1 class): car" in items


def test_singletons_survive_save_and_load(tmp_path: Path) -> None:
    h = ClassHierarchy([[0, 1, 1, 2], [0, 1, 1, 1]], singletons=[0])
    assert ClassHierarchy.load(h.save(tmp_path / "h.json")) == h
    assert h != ClassHierarchy([[0, 1, 1, 2], [0, 1, 1, 1]])
    older = {key: value for key, value in h.to_dict().items() if key != "singletons"}
    assert ClassHierarchy.from_dict(older).singletons == ()  # files written before the key existed


# --------------------------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize(
    ("singletons", "error", "match"),
    [
        ("0", TypeError, "singletons"),
        (0, TypeError, "singletons"),
        ([0.5], TypeError, "singletons"),
        ([True], TypeError, "singletons"),
        ([-1], ValueError, "singletons"),
        ([1, 1], ValueError, "repeat"),
        ([0, 1], ValueError, r"more groups than that"),
    ],
)
def test_bad_singletons_for_the_clusterer(singletons: object, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        HierarchicalKMeans((4, 2), singletons=singletons)  # type: ignore[arg-type]


def test_singleton_out_of_range_at_fit() -> None:
    with pytest.raises(ValueError, match=r"`singletons` must be class indices 0..7, got 8"):
        HierarchicalKMeans((4, 2), singletons=[8]).fit(_embeddings())


@pytest.mark.parametrize(
    ("singletons", "error", "match"),
    [
        ([4], ValueError, "0..3"),
        ([1], ValueError, r"class 1 \('class 1'\) is kept out of the grouping but shares group 1 of level 1"),
        ([3, 3], ValueError, "repeat"),
        (["a"], TypeError, "singletons"),
        ("0", TypeError, "singletons"),
    ],
)
def test_bad_singletons_for_the_hierarchy(singletons: object, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        ClassHierarchy([[0, 1, 1, 2], [0, 1, 1, 1]], singletons=singletons)  # type: ignore[arg-type]


def test_singleton_sharing_a_group_at_a_higher_level() -> None:
    with pytest.raises(ValueError, match="shares group 1 of level 2 with class 1"):
        ClassHierarchy([[0, 1, 1, 2], [0, 1, 1, 1]], singletons=[3])


@pytest.mark.parametrize("bad", ["x", [0.5], [True], {"a": 1}])
def test_hierarchy_file_with_bad_singletons(tmp_path: Path, bad: object) -> None:
    data = ClassHierarchy([[0, 1, 1, 2]]).to_dict()
    data["singletons"] = bad
    path = tmp_path / "h.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"h\.json.*'singletons'"):
        ClassHierarchy.load(path)


def test_hierarchy_file_with_a_grouped_singleton(tmp_path: Path) -> None:
    data = ClassHierarchy([[0, 1, 1, 2]]).to_dict()
    data["singletons"] = [1]
    path = tmp_path / "h.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"h\.json.*'singletons' is invalid.*shares group 1"):
        ClassHierarchy.load(path)
