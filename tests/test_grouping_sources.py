"""Grouping sources that no training seed changes; the controls of a grouping (shuffle, ARI, consensus)."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from hiercam.grouping import (
    HierarchicalKMeans,
    PrototypeEmbeddings,
    coassociation_matrix,
    consensus_hierarchy,
    cooccurrence_embeddings,
    hierarchy_agreement,
    mean_pairwise_agreement,
    pairwise_agreement,
    prototype_embeddings,
    shuffled_hierarchy,
)
from hiercam.hierarchy import ClassHierarchy

LABELS = torch.tensor([[1, 1, 0], [1, 1, 0], [1, 0, 1], [0, 0, 1]])


def partition(groups: list[list[int]]) -> set[frozenset[int]]:
    return {frozenset(g) for g in groups}


def scene_labels(images: int, seed: int) -> torch.Tensor:
    """Two kinds of scene: classes 0-2 appear together, classes 3-5 together, class 6 anywhere."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.zeros(images, 7, dtype=torch.long)
    for b in range(images):
        start = 0 if b % 2 == 0 else 3
        members = torch.rand(3, generator=generator) < 0.7
        members[int(torch.randint(3, (1,), generator=generator))] = True
        labels[b, start : start + 3] = members.long()
        labels[b, 6] = int(torch.rand(1, generator=generator) < 0.5)
    return labels


def tree(seed: int = 0) -> ClassHierarchy:
    """20 classes, levels 20 -> 8 -> 4 -> 2, class 7 kept out of the grouping."""
    vectors = torch.randn(20, 6, generator=torch.Generator().manual_seed(seed))
    names = [f"c{i}" for i in range(20)]
    return HierarchicalKMeans((8, 4, 2), singletons=[7], n_init=2, seed=seed).fit(vectors, names)


# --------------------------------------------------------------------------------------------- co-occurrence
def test_cooccurrence_conditional_matches_hand_values() -> None:
    # counts: n0 = 3, n1 = 2, n2 = 2; n01 = 2, n02 = 1, n12 = 0
    expected = torch.tensor([[1, 2 / 3, 1 / 3], [1, 1, 0], [1 / 2, 0, 1]])
    result = cooccurrence_embeddings(LABELS)
    assert result.dtype == torch.float32
    torch.testing.assert_close(result, expected)


def test_cooccurrence_npmi_matches_hand_values_and_formula() -> None:
    expected = torch.tensor(
        [
            [1.0, math.log(4 / 3) / math.log(2), math.log(2 / 3) / math.log(4)],
            [math.log(4 / 3) / math.log(2), 1.0, -1.0],
            [math.log(2 / 3) / math.log(4), -1.0, 1.0],
        ]
    )
    torch.testing.assert_close(cooccurrence_embeddings(LABELS, normalize="npmi"), expected)
    # independent classes give 0; two classes in every image give 1
    independent = torch.tensor([[1, 1, 1], [1, 0, 1], [0, 1, 1], [0, 0, 1]])
    npmi = cooccurrence_embeddings(independent, normalize="npmi")
    assert abs(float(npmi[0, 1])) < 1e-6
    assert float(cooccurrence_embeddings(torch.ones(3, 2), normalize="npmi")[0, 1]) == 1.0


def test_cooccurrence_random_labels_match_a_naive_loop() -> None:
    labels = (torch.rand(40, 6) < 0.4).long()
    labels[0] = 1  # every class occurs
    result = cooccurrence_embeddings(labels)
    for i, j in itertools.product(range(6), repeat=2):
        with_i = [b for b in range(40) if labels[b, i]]
        expected = sum(int(labels[b, j]) for b in with_i) / len(with_i)
        assert float(result[i, j]) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("normalize", ["conditional", "npmi"])
def test_cooccurrence_groups_classes_that_appear_together(normalize: str) -> None:
    labels = scene_labels(60, seed=1)
    embeddings = cooccurrence_embeddings(labels, normalize=normalize)  # type: ignore[arg-type]
    hierarchy = HierarchicalKMeans((3,), n_init=4).fit(embeddings)
    assert partition(hierarchy.groups(1)) == {frozenset({0, 1, 2}), frozenset({3, 4, 5}), frozenset({6})}


def test_cooccurrence_accepts_bool_labels_and_leaves_them_unchanged() -> None:
    labels = LABELS.bool()
    before = labels.clone()
    torch.testing.assert_close(cooccurrence_embeddings(labels), cooccurrence_embeddings(LABELS))
    assert torch.equal(labels, before)


def test_cooccurrence_names_the_classes_that_never_occur() -> None:
    labels = torch.tensor([[1, 0, 0, 1], [1, 0, 0, 0]])
    with pytest.raises(ValueError, match=r"`labels`: class\(es\) 1, 2 never occur"):
        cooccurrence_embeddings(labels)


@pytest.mark.parametrize(
    ("labels", "normalize", "error", "match"),
    [
        ([[1, 0]], "conditional", TypeError, "`labels` must be a torch.Tensor"),
        (torch.ones(2, 3, 1), "conditional", ValueError, r"`labels` must have shape \(B, K\)"),
        (torch.ones(0, 3), "conditional", ValueError, "`labels` must hold at least one image"),
        (torch.tensor([[1, 2]]), "conditional", ValueError, "`labels` must hold only 0/1"),
        (torch.ones(2, 3), "pmi", ValueError, "`normalize` must be one of"),
    ],
)
def test_cooccurrence_bad_inputs(labels: object, normalize: str, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        cooccurrence_embeddings(labels, normalize=normalize)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------- prototypes
def naive_prototypes(features: torch.Tensor, maps: torch.Tensor, labels: torch.Tensor, threshold: float):
    batch, channels, height, width = features.shape
    result = torch.zeros(maps.shape[1], channels, dtype=torch.float64)
    for k in range(maps.shape[1]):
        picked = [
            features[b, :, y, x].double()
            for b in range(batch)
            if labels[b, k]
            for y in range(height)
            for x in range(width)
            if maps[b, k, y, x] >= threshold
        ]
        result[k] = torch.stack(picked).mean(dim=0)
    return result


def random_batch(batch: int = 6, classes: int = 4, channels: int = 5, size: int = 3):
    features = torch.randn(batch, channels, size, size)
    maps = torch.rand(batch, classes, size, size)
    labels = (torch.rand(batch, classes) < 0.6).long()
    labels[0] = 1
    maps[0, :, 0, 0] = 1.0  # every class has a selected position
    return features, maps, labels


@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.5])
def test_prototypes_match_a_naive_loop(threshold: float) -> None:
    features, maps, labels = random_batch()
    result = prototype_embeddings(features, maps, labels, threshold=threshold)
    assert result.shape == (4, 5)
    assert result.dtype == torch.float32
    torch.testing.assert_close(result, naive_prototypes(features, maps, labels, threshold).float())
    from_double = prototype_embeddings(features.double(), maps.double(), labels, threshold=threshold)
    assert from_double.dtype == torch.float32
    torch.testing.assert_close(from_double, result)


def test_prototypes_streamed_over_split_batches_equal_one_call() -> None:
    features, maps, labels = random_batch(batch=9)
    streaming = PrototypeEmbeddings(threshold=0.4)
    for part in (slice(0, 2), slice(2, 3), slice(3, 9)):
        streaming.update(features[part], maps[part], labels[part])
    torch.testing.assert_close(streaming.compute(), prototype_embeddings(features, maps, labels, 0.4))
    assert streaming.counts is not None
    expected_counts = ((maps >= 0.4) & labels.bool()[:, :, None, None]).sum(dim=(0, 2, 3))
    assert torch.equal(streaming.counts, expected_counts)
    streaming.reset()
    assert streaming.sums is None
    with pytest.raises(RuntimeError, match="before any update"):
        streaming.compute()


def test_prototypes_leave_inputs_unchanged_and_detach() -> None:
    features, maps, labels = random_batch()
    features.requires_grad_(True)
    copies = [t.detach().clone() for t in (features, maps, labels)]
    result = prototype_embeddings(features, maps, labels)
    assert not result.requires_grad
    for given, copy in zip((features, maps, labels), copies, strict=True):
        assert torch.equal(given.detach(), copy)


def test_prototypes_whole_image_maps_give_the_mean_feature_of_labelled_images() -> None:
    features = torch.randn(4, 3, 2, 2)
    labels = torch.tensor([[1, 0], [1, 1], [0, 1], [0, 1]])
    result = prototype_embeddings(features, features.new_ones(4, 2, 2, 2), labels, threshold=0.0)
    torch.testing.assert_close(result[0], features[:2].mean(dim=(0, 2, 3)))
    torch.testing.assert_close(result[1], features[1:].mean(dim=(0, 2, 3)))


def test_prototypes_name_the_class_without_positions() -> None:
    features, maps, labels = random_batch()
    labels[:, 2] = 0
    with pytest.raises(ValueError, match=r"class\(es\) 2 have no position"):
        prototype_embeddings(features, maps, labels)


def test_streaming_refuses_a_batch_with_other_sizes() -> None:
    features, maps, labels = random_batch()
    streaming = PrototypeEmbeddings()
    streaming.update(features, maps, labels)
    before = streaming.sums.clone()  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="K = 4 classes and C = 5"):
        streaming.update(features[:, :3], maps, labels)
    assert torch.equal(streaming.sums, before)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        (lambda f, m, lab: (f.long(), m, lab), TypeError, "`features` must be a floating-point"),
        (lambda f, m, lab: (f[0], m, lab), ValueError, r"`features` must have shape \(B, C, h, w\)"),
        (lambda f, m, lab: (f, m[:, :, :2], lab), ValueError, "must share B, h and w"),
        (lambda f, m, lab: (f, m, lab[:, :3]), ValueError, r"`labels` must have shape \(6, 4\)"),
        (lambda f, m, lab: (f, m * 2, lab), ValueError, r"`maps` must hold values in \[0, 1\]"),
        (lambda f, m, lab: (f, m.masked_fill(m > 0.9, math.nan), lab), ValueError, "`maps` must hold"),
        (lambda f, m, lab: (f * math.inf, m, lab), ValueError, "`features` must be finite"),
        (lambda f, m, lab: (f, m, lab * 2), ValueError, "`labels` must hold only 0/1"),
        (lambda f, m, lab: (f, [m], lab), TypeError, "`maps` must be a torch.Tensor"),
    ],
)
def test_prototypes_bad_inputs(change, error: type, match: str) -> None:  # type: ignore[no-untyped-def]
    features, maps, labels = change(*random_batch())
    with pytest.raises(error, match=match):
        prototype_embeddings(features, maps, labels)
    with pytest.raises(error, match=match):
        PrototypeEmbeddings().update(features, maps, labels)


@pytest.mark.parametrize(("threshold", "error"), [(1.5, ValueError), (-0.1, ValueError), ("0.5", TypeError)])
def test_prototypes_bad_threshold(threshold: object, error: type) -> None:
    with pytest.raises(error, match="`threshold`"):
        PrototypeEmbeddings(threshold)  # type: ignore[arg-type]
    with pytest.raises(error, match="`threshold`"):
        prototype_embeddings(*random_batch(), threshold=threshold)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------- shuffled
def test_shuffled_hierarchy_keeps_sizes_nesting_singletons_and_names() -> None:
    original = tree()
    shuffled = shuffled_hierarchy(original, seed=5)
    assert shuffled.level_sizes == original.level_sizes
    assert shuffled.class_names == original.class_names
    assert shuffled.singletons == original.singletons == (7,)
    for level in range(1, original.num_levels):
        assert [len(g) for g in shuffled.groups(level)] == [len(g) for g in original.groups(level)]
        assert shuffled.group_of(7, level) == original.group_of(7, level)
        assert len(shuffled.groups(level)[shuffled.group_of(7, level)]) == 1
    for level in range(1, original.num_levels - 1):  # group g keeps its parent group
        for groups in (original, shuffled):
            parents = {groups.group_of(members[0], level + 1) for members in groups.groups(level)}
            assert len(parents) == groups.num_groups(level + 1)
        for g in range(original.num_groups(level)):
            first_shuffled, first_original = shuffled.groups(level)[g][0], original.groups(level)[g][0]
            assert shuffled.group_of(first_shuffled, level + 1) == original.group_of(
                first_original, level + 1
            )
    assert partition(shuffled.groups(1)) != partition(original.groups(1))


def test_shuffled_hierarchy_is_deterministic_and_leaves_the_original() -> None:
    original = tree()
    copy = ClassHierarchy.from_dict(original.to_dict())
    assert shuffled_hierarchy(original, seed=3) == shuffled_hierarchy(original, seed=3)
    assert shuffled_hierarchy(original, seed=3) != shuffled_hierarchy(original, seed=4)
    assert original == copy


def test_shuffled_hierarchies_agree_with_the_original_at_chance() -> None:
    original = tree()
    for level in (1, 2):
        scores = [hierarchy_agreement(original, shuffled_hierarchy(original, s), level) for s in range(150)]
        assert abs(float(np.mean(scores))) < 0.03
        assert max(scores) < 1.0


@pytest.mark.parametrize(("seed", "error"), [(-1, ValueError), (True, TypeError), (1.0, TypeError)])
def test_shuffled_hierarchy_bad_seed(seed: object, error: type) -> None:
    with pytest.raises(error, match="`seed`"):
        shuffled_hierarchy(tree(), seed)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="`hierarchy` must be a ClassHierarchy"):
        shuffled_hierarchy([[0, 0, 1]], 0)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------- agreement
def test_agreement_hand_values() -> None:
    a = ClassHierarchy([[0, 0, 1, 1, 2]])
    assert hierarchy_agreement(a, a, 1) == 1.0
    assert hierarchy_agreement(a, ClassHierarchy([[2, 2, 0, 0, 1]]), 1) == 1.0  # relabelled groups
    # index 0, expected 2 * 2 / 10 = 0.4, max 2: (0 - 0.4) / (2 - 0.4)
    assert hierarchy_agreement(a, ClassHierarchy([[0, 1, 0, 1, 2]]), 1) == pytest.approx(-0.25)
    assert hierarchy_agreement(a, ClassHierarchy([[0, 1, 0, 1, 2]]), 0) == 1.0


@pytest.mark.parametrize("seed", range(4))
def test_agreement_matches_sklearn(seed: int) -> None:
    a, b = tree(seed), tree(seed + 10)
    for level in range(a.num_levels):
        groups_a, groups_b = a.assignments(level).numpy(), b.assignments(level).numpy()
        grouped = [c for c in range(20) if c != 7]  # class 7 is kept out of the grouping in both
        expected = adjusted_rand_score(groups_a[grouped], groups_b[grouped])
        assert hierarchy_agreement(a, b, level) == pytest.approx(expected, abs=1e-12)
        everything = adjusted_rand_score(groups_a, groups_b)
        assert hierarchy_agreement(a, b, level, exclude_singletons=False) == pytest.approx(
            everything, abs=1e-12
        )


def test_pairwise_and_mean_agreement() -> None:
    hierarchies = [tree(seed) for seed in range(3)]
    scores = pairwise_agreement(hierarchies, 1)
    assert scores.shape == (3, 3)
    assert torch.equal(scores, scores.T)
    assert torch.equal(scores.diagonal(), torch.ones(3, dtype=torch.float64))
    assert float(scores[0, 2]) == hierarchy_agreement(hierarchies[0], hierarchies[2], 1)
    pairs = [float(scores[i, j]) for i, j in [(0, 1), (0, 2), (1, 2)]]
    assert mean_pairwise_agreement(hierarchies, 1) == pytest.approx(sum(pairs) / 3)
    assert mean_pairwise_agreement([hierarchies[0]] * 4, 2) == 1.0


def test_agreement_errors_name_the_argument() -> None:
    a = ClassHierarchy([[0, 0, 1]], class_names=["cat", "dog", "car"])
    with pytest.raises(ValueError, match="`b` must group the same classes as `a`, got 4"):
        hierarchy_agreement(a, ClassHierarchy([[0, 0, 1, 2]]), 1)
    with pytest.raises(ValueError, match="class 2 is 'bus' against 'car'"):
        hierarchy_agreement(a, ClassHierarchy([[0, 0, 1]], class_names=["cat", "dog", "bus"]), 1)
    with pytest.raises(ValueError, match="`level` must be <= 1"):
        hierarchy_agreement(a, a, 2)
    with pytest.raises(TypeError, match="`a` must be a ClassHierarchy"):
        hierarchy_agreement(None, a, 1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`hierarchies` must hold at least 2"):
        pairwise_agreement([a], 1)
    with pytest.raises(TypeError, match="`hierarchies` must be a sequence"):
        mean_pairwise_agreement(a, 1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"`hierarchies\[1\]` must group the same classes"):
        mean_pairwise_agreement([a, ClassHierarchy([[0, 1, 1, 1]])], 1)


# --------------------------------------------------------------------------------------------- consensus
def test_coassociation_over_levels_hand_values() -> None:
    a = ClassHierarchy([[0, 0, 1, 2], [0, 0, 1, 1]])  # {0, 1} from level 1, {2, 3} from level 2
    b = ClassHierarchy([[0, 0, 1, 2]])
    expected = torch.tensor(
        [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0.25], [0, 0, 0.25, 1]],
        dtype=torch.float64,
    )
    torch.testing.assert_close(coassociation_matrix([a, b]), expected)
    with pytest.raises(ValueError, match="`level` must be <= 1"):
        coassociation_matrix([a, b], level=2)


@pytest.mark.parametrize("seed", range(3))
def test_consensus_of_identical_hierarchies_is_that_hierarchy(seed: int) -> None:
    original = tree(seed)
    hierarchies = [original, ClassHierarchy.from_dict(original.to_dict()), original]
    consensus = consensus_hierarchy(hierarchies, levels=(8, 4, 2))
    assert consensus.level_sizes == original.level_sizes
    assert consensus.singletons == original.singletons
    assert consensus.class_names == original.class_names
    for level in range(1, 4):
        assert hierarchy_agreement(consensus, original, level, exclude_singletons=False) == 1.0
    assert consensus == consensus_hierarchy(hierarchies, levels=(8, 4, 2))
    assert hierarchies == [original] * 3


def test_consensus_follows_the_majority() -> None:
    truth = ClassHierarchy([[0, 0, 1, 1, 2, 2], [0, 0, 0, 0, 1, 1]])
    odd = ClassHierarchy([[0, 1, 0, 1, 2, 2], [0, 0, 0, 0, 1, 1]])
    consensus = consensus_hierarchy([truth, odd, truth], levels=(3, 2))
    for level in (1, 2):
        assert hierarchy_agreement(consensus, truth, level) == 1.0


def test_consensus_of_two_conflicting_hierarchies_keeps_what_they_share() -> None:
    a = ClassHierarchy([[0, 0, 1, 1, 2, 2]])
    b = ClassHierarchy([[0, 0, 1, 2, 1, 2]])  # both: {0, 1} and {2..5} apart; they disagree inside {2..5}
    consensus = consensus_hierarchy([a, b], levels=(3, 2))
    assert consensus.group_of(0, 1) == consensus.group_of(1, 1)
    assert all(consensus.group_of(c, 1) != consensus.group_of(0, 1) for c in range(2, 6))
    assert partition(consensus.groups(2)) == {frozenset({0, 1}), frozenset({2, 3, 4, 5})}
    assert hierarchy_agreement(consensus, a, 1) > 0
    assert hierarchy_agreement(consensus, b, 1) > 0


def test_consensus_of_noisy_seeds_recovers_the_planted_groups() -> None:
    planted = ClassHierarchy([[0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]])
    generator = torch.Generator().manual_seed(0)
    seeds = []
    for _ in range(7):  # each seed swaps two classes of different groups
        groups = planted.assignments(1).clone()
        i, j = torch.randperm(12, generator=generator)[:2].tolist()
        groups[[i, j]] = groups[[j, i]]
        seeds.append(ClassHierarchy([groups.tolist()]))
    assert mean_pairwise_agreement(seeds, 1) < 1.0
    assert hierarchy_agreement(consensus_hierarchy(seeds, levels=(4,)), planted, 1) == 1.0


def test_consensus_bad_arguments() -> None:
    h = tree()
    with pytest.raises(ValueError, match="`levels` must ask for fewer groups than the 20 classes"):
        consensus_hierarchy([h], levels=(20, 4))
    with pytest.raises(ValueError, match="`levels` counts the 1 classes kept out"):
        consensus_hierarchy([h], levels=(4, 1))
    with pytest.raises(ValueError, match="`levels` must be strictly decreasing"):
        consensus_hierarchy([h], levels=(4, 4))
    with pytest.raises(ValueError, match="`hierarchies` must hold at least 1"):
        consensus_hierarchy([], levels=(4,))
    with pytest.raises(TypeError, match=r"`hierarchies\[1\]` must be a ClassHierarchy"):
        consensus_hierarchy([h, "h"], levels=(4,))  # type: ignore[list-item]


# --------------------------------------------------------------------------------------------- user-given
def test_a_hand_written_hierarchy_file_loads_and_is_validated(tmp_path: Path) -> None:
    names = ["cat", "dog", "horse", "car", "bus", "bicycle"]
    groups = {"animal": ["cat", "dog", "horse"], "motor vehicle": ["car", "bus"], "bicycle": ["bicycle"]}
    level1 = [next(i for i, members in enumerate(groups.values()) if name in members) for name in names]
    level2 = [0 if group == 0 else 1 for group in level1]  # animals, vehicles
    document = {
        "format": "hiercam.ClassHierarchy",
        "version": 1,
        "class_names": names,
        "assignments": [level1, level2],
    }
    path = tmp_path / "wordnet.json"
    path.write_text(json.dumps(document), encoding="utf-8")
    hierarchy = ClassHierarchy.load(path)
    assert hierarchy.group_names(1) == ["{cat, dog, horse}", "{car, bus}", "{bicycle}"]
    assert hierarchy.level_sizes == (6, 3, 2)
    document["assignments"] = [level1, [0, 0, 1, 1, 0, 1]]  # splits {car, bus}
    path.write_text(json.dumps(document), encoding="utf-8")
    with pytest.raises(ValueError, match=r"wordnet\.json.*not nested"):
        ClassHierarchy.load(path)
