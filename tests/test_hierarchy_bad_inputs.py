"""Bad and borderline inputs to the hierarchy, grouping, fusion, similarity and map functions (issue 15).

Every bad input must end in a ``TypeError``/``ValueError`` that names the argument (or the file and the key),
raised before any work; every valid borderline input (huge or tiny magnitudes, float16, NumPy integers) must
give the answer of an independent oracle.
"""

from __future__ import annotations

import json
import re
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist

from hiercam import (
    ClassHierarchy,
    HierarchicalKMeans,
    class_distances,
    fuse,
    fuse_hierarchy,
    group_classes,
    normalize_maps,
)

HIERARCHY = ClassHierarchy([[0, 1, 0, 2, 1, 3], [0, 1, 0, 0, 1, 1]])  # 6 -> 4 -> 2
NON_FINITE = [float("nan"), float("inf"), float("-inf")]


def poisoned(tensor: torch.Tensor, value: float) -> torch.Tensor:
    """A copy of ``tensor`` with one entry set to ``value``."""
    copy = tensor.clone()
    copy.view(-1)[copy.numel() // 2] = value
    return copy


def fusion_inputs() -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    base = torch.rand(2, 6, 5, 5, generator=g)
    levels = [torch.rand(2, n, 5, 5, generator=g) for n in HIERARCHY.level_sizes[1:]]
    labels = torch.tensor([[1, 0, 1, 0, 0, 1], [0, 1, 0, 0, 0, 0]])
    return base, levels, labels


# ------------------------------------------------------------------------ NaN / Inf in, clear error out


@pytest.mark.parametrize("value", NON_FINITE)
@pytest.mark.parametrize("normalize", ["max", "minmax", None])
def test_normalize_maps_refuses_non_finite_maps(value: float, normalize: Any) -> None:
    maps = poisoned(torch.rand(2, 3, 4, 4), value)
    with pytest.raises(ValueError, match="`maps` must be finite, got NaN or infinite values"):
        normalize_maps(maps, normalize)


@pytest.mark.parametrize("value", NON_FINITE)
@pytest.mark.parametrize("where", ["base", "levels[1]", "levels", "rest"])
def test_fuse_refuses_non_finite_input_naming_it(value: float, where: str) -> None:
    base, rest = torch.rand(3, 4, 4), torch.rand(3, 4, 4)
    levels: Any = [torch.rand(3, 4, 4), torch.rand(3, 4, 4)]
    if where == "base":
        base = poisoned(base, value)
    elif where == "levels[1]":
        levels[1] = poisoned(levels[1], value)
    elif where == "levels":
        levels = poisoned(torch.stack(levels), value)
    else:
        rest = poisoned(rest, value)
    with pytest.raises(ValueError, match="^`" + re.escape(where) + "` must be finite"):
        fuse(base, levels, rest)


def test_fuse_refuses_a_sum_that_overflows_instead_of_returning_nan() -> None:
    big = torch.full((2, 2), 3e38)
    with pytest.raises(ValueError, match="overflows torch.float32"):
        fuse(big, [big], normalize=None)
    # The same maps in float64 are fused exactly (oracle: the sum by hand, then max-normalised).
    wide = big.double()
    torch.testing.assert_close(
        fuse(wide, [wide], normalize=None), torch.full((2, 2), 6e38, dtype=torch.float64)
    )


@pytest.mark.parametrize("value", NON_FINITE)
@pytest.mark.parametrize("where", ["base_maps", "level_maps[0]", "level_maps[1]"])
@pytest.mark.parametrize("normalize_inputs", ["max", None])
def test_fuse_hierarchy_refuses_non_finite_maps_naming_them(
    value: float, where: str, normalize_inputs: Any
) -> None:
    base, levels, labels = fusion_inputs()
    if where == "base_maps":
        base = poisoned(base, value)
    else:
        index = int(where[-2])
        levels[index] = poisoned(levels[index], value)
    with pytest.raises(ValueError, match="^`" + re.escape(where) + "` must be finite"):
        fuse_hierarchy(base, levels, HIERARCHY, labels, normalize_inputs=normalize_inputs)


def test_fuse_hierarchy_of_huge_finite_maps_is_finite_and_scale_free() -> None:
    # Oracle: max-normalised inputs make the result independent of the scale of each model's maps.
    base, levels, labels = fusion_inputs()
    expected = fuse_hierarchy(base, levels, HIERARCHY, labels)
    huge = fuse_hierarchy(base * 1e37, [lv * 1e37 for lv in levels], HIERARCHY, labels)
    tiny = fuse_hierarchy(base * 1e-37, [lv * 1e-37 for lv in levels], HIERARCHY, labels)
    torch.testing.assert_close(huge, expected)
    torch.testing.assert_close(tiny, expected)


# ------------------------------------------------------------------------ class_distances at any scale


@pytest.mark.parametrize("scale", [1e30, 1e-30, 1e-40, 3e37])
def test_class_distances_of_extreme_float32_vectors_match_float64_scipy(scale: float) -> None:
    g = torch.Generator().manual_seed(1)
    vectors = (torch.randn(7, 16, generator=g, dtype=torch.float64) * scale).float()
    got = class_distances(vectors)
    assert got.dtype == torch.float32
    assert torch.isfinite(got).all()
    exact = cdist(vectors.double().numpy() / scale, vectors.double().numpy() / scale) * scale
    np.testing.assert_allclose(got.double().numpy(), exact, rtol=2e-6, atol=0)
    assert float(got.min()) == 0.0
    assert torch.equal(got, got.T)


def test_class_distances_of_huge_float64_vectors_match_scaled_scipy() -> None:
    vectors = torch.randn(5, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 1e200
    got = class_distances(vectors)
    exact = cdist(vectors.numpy() / 1e200, vectors.numpy() / 1e200) * 1e200  # plain scipy overflows to inf
    np.testing.assert_allclose(got.numpy(), exact, rtol=1e-13)


@pytest.mark.parametrize(("dtype", "rtol"), [(torch.float16, 1e-3), (torch.bfloat16, 8e-3)])
def test_class_distances_of_half_precision_vectors(dtype: torch.dtype, rtol: float) -> None:
    vectors = torch.randn(6, 12, generator=torch.Generator().manual_seed(3)).to(dtype)
    got = class_distances(vectors)
    assert got.dtype == dtype
    exact = cdist(vectors.double().numpy(), vectors.double().numpy())  # the same (rounded) vectors, exactly
    np.testing.assert_allclose(got.double().numpy(), exact, rtol=rtol, atol=0)


def test_class_distances_beyond_the_dtype_range_is_an_error_not_inf() -> None:
    vectors = torch.tensor([[60000.0, 0.0], [-60000.0, 0.0]], dtype=torch.float16)  # distance 120000
    with pytest.raises(ValueError, match=r"exceed the largest torch.float16 value \(6.55e\+04\)"):
        class_distances(vectors)
    torch.testing.assert_close(class_distances(vectors.float())[0, 1], torch.tensor(120000.0))


def test_class_distances_gradient_is_exact_after_rescaling() -> None:
    vectors = (torch.randn(4, 3, dtype=torch.float64) * 1e3).requires_grad_()
    assert torch.autograd.gradcheck(lambda v: class_distances(v).triu(1).sum(), (vectors,))


@pytest.mark.parametrize("value", NON_FINITE)
def test_class_distances_refuses_non_finite_vectors(value: float) -> None:
    with pytest.raises(ValueError, match="`embeddings` must be finite"):
        class_distances(poisoned(torch.rand(4, 3), value))


# ------------------------------------------------------------------------ hostile hierarchies, checked first


def peak_bytes(call: Callable[[], object]) -> int:
    """Peak Python memory allocated while ``call`` runs (its exception swallowed)."""
    tracemalloc.start()
    try:
        call()
    except (TypeError, ValueError):
        pass
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return peak


@pytest.mark.parametrize(
    "assignments",
    [[[0, 0, 10**8]], [[0, 10**9, 0]], [[0, 0, 1, 2], [0, 0, 10**9, 0]], [[2**62, 0, 0]]],
    ids=["1e8", "1e9", "second-level", "2^62"],
)
def test_huge_group_ids_are_refused_before_allocating(assignments: list[list[int]]) -> None:
    with pytest.raises(
        ValueError, match=r"leaves group\(s\) \[1\] of level \d empty: the 2 groups of a level"
    ):
        ClassHierarchy(assignments)
    assert peak_bytes(lambda: ClassHierarchy(assignments)) < 1_000_000  # was 19.7 GB, then an OOM kill


def test_a_gap_in_group_ids_lists_the_empty_groups() -> None:
    with pytest.raises(ValueError, match=r"leaves group\(s\) \[1, 2\] of level 1 empty.*got the group id 4"):
        ClassHierarchy([[0, 4, 3, 0, 0]])


VALID = {
    "format": "hiercam.ClassHierarchy",
    "version": 1,
    "class_names": ["a", "b", "c"],
    "assignments": [[0, 0, 1]],
}


def tampered(**changes: Any) -> dict[str, Any]:
    data = dict(VALID)
    for key, value in changes.items():
        if value is KeyError:
            del data[key]
        else:
            data[key] = value
    return data


BAD_FILES: dict[str, tuple[dict[str, Any], str]] = {
    "no-format": (tampered(format=KeyError), "has no key 'format'"),
    "no-version": (tampered(version=KeyError), "has no key 'version'"),
    "no-class_names": (tampered(class_names=KeyError), "has no key 'class_names'"),
    "no-assignments": (tampered(assignments=KeyError), "has no key 'assignments'"),
    "other-format": (
        tampered(format="pickle"),
        "key 'format' must be 'hiercam.ClassHierarchy', got 'pickle'",
    ),
    "version-bool": (tampered(version=True), "key 'version' must be an int, got bool True"),
    "version-float": (tampered(version=1.0), "key 'version' must be an int, got float 1.0"),
    "version-str": (tampered(version="1"), "key 'version' must be an int, got str '1'"),
    "version-2": (tampered(version=2), "key 'version' is 2; this hiercam reads version 1 only"),
    "names-str": (tampered(class_names="abc"), "key 'class_names' must be a list of strings"),
    "names-ints": (tampered(class_names=[1, 2, 3]), "key 'class_names' must be a list of strings"),
    "names-count": (tampered(class_names=["a", "b"]), "`class_names` must have 3 entries, got 2"),
    "assignments-dict": (tampered(assignments={"0": [0, 0, 1]}), "key 'assignments' must be a list of lists"),
    "assignments-flat": (tampered(assignments=[0, 0, 1]), "key 'assignments' must be a list of lists"),
    "assignments-empty": (tampered(assignments=[]), "`assignments` must hold at least one group level"),
    "level-empty": (tampered(assignments=[[]], class_names=[]), r"`assignments\[0\]` must hold the group"),
    "group-1e9": (tampered(assignments=[[0, 10**9, 1]]), r"`assignments\[0\]` leaves group\(s\) \[2\]"),
    "group-negative": (tampered(assignments=[[0, -1, 1]]), r"`assignments\[0\]` must be >= 0, got -1"),
    "group-float": (tampered(assignments=[[0, 0.0, 1]]), r"`assignments\[0\]` must be an int, got float"),
    "group-bool": (tampered(assignments=[[0, True, 1]]), r"`assignments\[0\]` must be an int, got bool"),
    "group-str": (tampered(assignments=[[0, "0", 1]]), r"`assignments\[0\]` must be an int, got str"),
    "not-nested": (
        tampered(assignments=[[0, 1, 1, 2], [0, 0, 1, 1]], class_names=list("abcd")),
        r"`assignments\[1\]` is not nested",
    ),
    "level-length": (
        tampered(assignments=[[0, 0, 1, 1], [0, 0, 0]], class_names=list("abcd")),
        r"`assignments\[1\]` must have 4 entries, got 3",
    ),
    "not-decreasing": (tampered(assignments=[[0, 1, 2]]), "group counts must strictly decrease"),
}


@pytest.mark.parametrize("case", BAD_FILES, ids=list(BAD_FILES))
def test_tampered_hierarchy_file_names_the_file_and_the_key(case: str, tmp_path: Path) -> None:
    data, message = BAD_FILES[case]
    path = tmp_path / "hierarchy.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=message) as error:
        ClassHierarchy.load(path)
    assert str(error.value).startswith(repr(str(path)))  # the file, first
    with pytest.raises(ValueError, match=message):
        ClassHierarchy.from_dict(data)  # the same checks without a file


RAW_FILES: dict[str, tuple[bytes, str]] = {
    "empty": (b"", "is not valid JSON"),
    "truncated": (json.dumps(VALID).encode()[:-7], "is not valid JSON"),
    "not-utf8": (b'{"format": "\xff\xfe"}', "is not UTF-8 text"),
    "nan-token": (
        json.dumps(tampered(version=float("nan"))).encode(),
        "key 'version' must be an int, got float",
    ),
    "list": (b"[1, 2, 3]", "must hold a JSON object, got a JSON list"),
    "null": (b"null", "must hold a JSON object, got a JSON NoneType"),
    "deep": (b"[" * 200_000 + b"]" * 200_000, "is not valid JSON"),
    "huge-int": (b'{"version": ' + b"9" * 5000 + b"}", "is not valid JSON"),
}


@pytest.mark.parametrize("case", RAW_FILES, ids=list(RAW_FILES))
def test_garbage_hierarchy_file_is_a_clear_error_naming_the_file(case: str, tmp_path: Path) -> None:
    content, message = RAW_FILES[case]
    path = tmp_path / "hierarchy.json"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message) as error:
        ClassHierarchy.load(path)
    assert repr(str(path)) in str(error.value)


def test_tampered_file_with_a_huge_group_id_is_refused_without_allocating(tmp_path: Path) -> None:
    path = tmp_path / "hierarchy.json"
    path.write_text(json.dumps(tampered(assignments=[[0, 10**9, 1]])))
    assert peak_bytes(lambda: ClassHierarchy.load(path)) < 1_000_000


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere.json"):
        ClassHierarchy.load(tmp_path / "nowhere.json")


@pytest.mark.parametrize("data", [[1, 2], "hierarchy", None], ids=["list", "str", "None"])
def test_from_dict_of_a_non_mapping_is_a_type_error(data: Any) -> None:
    with pytest.raises(TypeError, match="`data` must be a mapping"):
        ClassHierarchy.from_dict(data)


@pytest.mark.parametrize(
    ("assignments", "error", "match"),
    [
        ("0012", TypeError, "`assignments` must be a sequence of per-level assignments, got str"),
        (7, TypeError, "`assignments` must be a sequence of per-level assignments, got int"),
        ([[True, False, False]], TypeError, r"`assignments\[0\]` must be an int, got bool"),
        ([[np.bool_(True), 0, 0]], TypeError, r"`assignments\[0\]` must be an int, got bool"),
        ([np.array([0.0, 0.0, 1.0])], TypeError, r"`assignments\[0\]` must be an int, got float"),
        ([[]], ValueError, r"`assignments\[0\]` must hold the group of every class"),
    ],
    ids=["str", "int", "bool", "np.bool_", "float-array", "no-classes"],
)
def test_bad_assignments_in_memory(assignments: Any, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        ClassHierarchy(assignments)


# ------------------------------------------------------------------------ NumPy integers are integers


def test_numpy_and_torch_integers_build_the_same_hierarchy() -> None:
    expected = ClassHierarchy([[0, 0, 1, 2], [0, 0, 1, 1]])
    assert (
        ClassHierarchy([[np.int64(g) for g in level] for level in [[0, 0, 1, 2], [0, 0, 1, 1]]]) == expected
    )
    assert ClassHierarchy(np.array([[0, 0, 1, 2], [0, 0, 1, 1]])) == expected
    assert ClassHierarchy(torch.tensor([[0, 0, 1, 2], [0, 0, 1, 1]])) == expected
    assert ClassHierarchy([np.array([0, 0, 1, 2], dtype=np.int32), torch.tensor([0, 0, 1, 1])]) == expected


def test_numpy_integers_as_levels_and_class_indices() -> None:
    h = ClassHierarchy([[0, 1, 0, 2, 1], [0, 1, 0, 0, 1]])
    assert h.group_of(np.int64(3), np.int64(1)) == 2
    assert h.num_groups(np.int32(2)) == 2
    assert h.assignments(np.int64(2)).tolist() == [0, 1, 0, 0, 1]
    assert h.groups(np.uint8(1)) == [[0, 2], [1, 4], [3]]
    labels = torch.tensor([[1, 0, 0, 1, 0]])
    assert h.remap_labels(labels, np.int64(1)).tolist() == [[1, 0, 1]]
    torch.testing.assert_close(h.group_presence(labels, np.int64(2)), torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="`level` must be <= 2, got 3"):
        h.num_groups(np.int64(3))
    with pytest.raises(TypeError, match="`level` must be an int, got bool"):
        h.num_groups(np.bool_(True))  # type: ignore[arg-type]


def test_numpy_levels_cluster_like_python_levels() -> None:
    vectors = torch.randn(12, 5, generator=torch.Generator().manual_seed(4))
    expected = HierarchicalKMeans((4, 2)).fit(vectors)
    assert HierarchicalKMeans((np.int64(4), np.int64(2))).fit(vectors) == expected
    assert HierarchicalKMeans(np.array([4, 2])).fit(vectors) == expected  # type: ignore[arg-type]
    assert group_classes(vectors, torch.tensor([4, 2])) == expected  # type: ignore[arg-type]
    assert HierarchicalKMeans(np.array([4, 2])).levels == (4, 2)  # type: ignore[arg-type]
    assert all(type(n) is int for n in HierarchicalKMeans((np.int64(4), np.int64(2))).levels)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"levels": (True,)}, TypeError, "`levels` must be an int, got bool"),
        ({"levels": np.array([[4, 2]])}, TypeError, "`levels` must be a sequence of ints, got ndarray"),
        ({"levels": np.array([4.0, 2.0])}, TypeError, "`levels` must be an int, got float"),
        ({"levels": (4, 2), "unit_norm": "yes"}, TypeError, "`unit_norm` must be a bool, got str"),
        ({"levels": (4, 2), "weighted": 1}, TypeError, "`weighted` must be a bool, got int"),
        ({"levels": (4, 2), "n_init": np.int64(0)}, ValueError, "`n_init` must be >= 1, got 0"),
    ],
    ids=["bool-level", "2d-array", "float-array", "unit_norm-str", "weighted-int", "n_init-0"],
)
def test_bad_clustering_options(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        HierarchicalKMeans(**kwargs)


def test_float16_vectors_cluster_like_their_float32_values() -> None:
    vectors = torch.randn(12, 5, generator=torch.Generator().manual_seed(5)).half()
    assert HierarchicalKMeans((4, 2)).fit(vectors) == HierarchicalKMeans((4, 2)).fit(vectors.float())
