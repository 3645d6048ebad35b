from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

# Imported from the package: pytest's doctest collection of hiercam/hierarchy/core.py may execute that file a
# second time under the same module name, which gives a second, distinct ClassHierarchy class.
from hiercam import ClassHierarchy, HierarchicalKMeans


def test_level_zero_is_identity_and_accessors_agree() -> None:
    h = ClassHierarchy([[0, 1, 0, 2, 1], [0, 1, 0, 0, 1]], class_names=list("abcde"))
    assert torch.equal(h.assignments(0), torch.arange(5))
    assert h.assignments(1).dtype == torch.long
    assert h.groups(1) == [[0, 2], [1, 4], [3]]
    assert h.groups(2) == [[0, 2, 3], [1, 4]]
    assert [h.group_of(c, 2) for c in range(5)] == [0, 1, 0, 0, 1]
    assert h.group_names(0) == list("abcde")
    assert h.group_names(2) == ["{a, c, d}", "{b, e}"]
    assert (h.num_classes, h.num_levels, h.num_groups(1)) == (5, 3, 3)


def test_str_is_a_tree_with_group_sizes() -> None:
    h = ClassHierarchy([[0, 1, 0, 2, 1], [0, 1, 0, 0, 1]], class_names=list("abcde"))
    assert str(h) == "\n".join(
        [
            "ClassHierarchy(5 classes, levels 5 -> 3 -> 2)",
            "level 2 group 0 (3 classes)",
            "  level 1 group 0 (2 classes): a, c",
            "  level 1 group 2 (1 class): d",
            "level 2 group 1 (2 classes)",
            "  level 1 group 1 (2 classes): b, e",
        ]
    )


def test_str_truncates_long_member_lists() -> None:
    h = ClassHierarchy([[0] * 19 + [1]])
    shown = ", ".join(f"class {i}" for i in range(8))
    assert f"level 1 group 0 (19 classes): {shown}, ... (11 more)" in str(h)


def test_json_round_trip(tmp_path: Path) -> None:
    vectors = torch.randn(20, 16, generator=torch.Generator().manual_seed(0))
    names = [f"c{i}" for i in range(20)]
    h = HierarchicalKMeans((12, 8, 5)).fit(vectors, class_names=names)
    path = h.save(tmp_path / "sub" / "hierarchy.json")
    assert [p.name for p in path.parent.iterdir()] == ["hierarchy.json"]  # no temporary file left behind
    loaded = ClassHierarchy.load(path)
    assert loaded == h
    assert loaded.class_names == tuple(names)
    assert ClassHierarchy.from_dict(json.loads(json.dumps(h.to_dict()))) == h


def test_load_rejects_other_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="is not valid JSON"):
        ClassHierarchy.load(bad)
    other = {"format": "something else", "version": 1, "class_names": [], "assignments": []}
    bad.write_text(json.dumps(other))
    with pytest.raises(ValueError, match="bad.json': key 'format' must be 'hiercam.ClassHierarchy'"):
        ClassHierarchy.load(bad)


def naive_remap(targets: np.ndarray, assignment: list[int], num_groups: int) -> np.ndarray:
    out = np.zeros((targets.shape[0], num_groups), dtype=targets.dtype)
    for b in range(targets.shape[0]):
        for k, group in enumerate(assignment):
            if targets[b, k]:
                out[b, group] = 1
    return out


@st.composite
def hierarchies(draw: st.DrawFn) -> ClassHierarchy:
    num_classes = draw(st.integers(2, 12))
    assignments: list[list[int]] = []
    current = list(range(num_classes))
    count = num_classes
    while count > 1 and (not assignments or draw(st.booleans())):
        new_count = draw(st.integers(1, count - 1))
        # a random surjection from the current groups onto new_count groups
        parent = list(range(new_count)) + [
            draw(st.integers(0, new_count - 1)) for _ in range(count - new_count)
        ]
        parent = draw(st.permutations(parent))
        current = [parent[g] for g in current]
        assignments.append(current)
        count = new_count
    return ClassHierarchy(assignments)


@settings(max_examples=60, deadline=None)
@given(hierarchy=hierarchies(), data=st.data())
def test_remap_labels_matches_naive_loop(hierarchy: ClassHierarchy, data: st.DataObject) -> None:
    batch = data.draw(st.integers(0, 5))
    bits = data.draw(
        st.lists(
            st.integers(0, 1), min_size=batch * hierarchy.num_classes, max_size=batch * hierarchy.num_classes
        )
    )
    targets = np.array(bits, dtype=np.int64).reshape(batch, hierarchy.num_classes)
    level = data.draw(st.integers(0, hierarchy.num_levels - 1))
    got = hierarchy.remap_labels(torch.from_numpy(targets), level)
    expected = naive_remap(targets, hierarchy.assignments(level).tolist(), hierarchy.num_groups(level))
    np.testing.assert_array_equal(got.numpy(), expected)


@pytest.mark.parametrize("dtype", [torch.bool, torch.float16, torch.float32, torch.int64, torch.uint8])
def test_remap_keeps_dtype_and_does_not_modify_input(dtype: torch.dtype) -> None:
    h = ClassHierarchy([[0, 1, 0, 2, 1]])
    targets = torch.tensor([[1, 0, 0, 0, 1], [0, 0, 0, 0, 0]]).to(dtype)
    before = targets.clone()
    got = h.remap_labels(targets, 1)
    assert got.dtype == dtype
    assert torch.equal(got.long(), torch.tensor([[1, 1, 0], [0, 0, 0]]))
    assert torch.equal(targets, before)
    copy = h.remap_labels(targets, 0)
    assert torch.equal(copy, targets)
    assert copy.data_ptr() != targets.data_ptr()


def test_bad_targets() -> None:
    h = ClassHierarchy([[0, 1, 0, 1]])
    with pytest.raises(ValueError, match=r"`labels` must have shape \(B, 4\), got \(2, 3\)"):
        h.remap_labels(torch.zeros(2, 3), 1)
    with pytest.raises(ValueError, match=r"`labels` must have shape \(B, K\), got \(4,\)"):
        h.remap_labels(torch.zeros(4), 1)
    with pytest.raises(ValueError, match="`labels` must hold only 0/1 values"):
        h.remap_labels(torch.tensor([[0.0, 0.5, 1.0, 0.0]]), 1)
    with pytest.raises(TypeError, match="`labels` must be a torch.Tensor, got list"):
        h.remap_labels([[0, 1, 0, 1]], 1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`level` must be <= 1, got 2"):
        h.remap_labels(torch.zeros(1, 4), 2)


def test_bad_hierarchies() -> None:
    with pytest.raises(ValueError, match="is not nested: group 1 of level 1 is split"):
        ClassHierarchy([[0, 1, 1, 2], [0, 0, 1, 1]])
    with pytest.raises(ValueError, match=r"leaves group\(s\) \[1\] of level 1 empty"):
        ClassHierarchy([[0, 2, 2, 0]])
    with pytest.raises(ValueError, match="must strictly decrease"):
        ClassHierarchy([[0, 1, 2, 3]])
    with pytest.raises(ValueError, match=r"`assignments\[1\]` must have 4 entries, got 3"):
        ClassHierarchy([[0, 0, 1, 1], [0, 0, 0]])
    with pytest.raises(TypeError, match=r"`assignments\[0\]` must be an int, got float"):
        ClassHierarchy([[0.0, 1.0, 1.0]])
    with pytest.raises(ValueError, match="`class_index` must be <= 3, got 4"):
        ClassHierarchy([[0, 0, 1, 1]]).group_of(4, 1)


def test_saved_files_get_the_usual_permissions(tmp_path: Path) -> None:
    import os

    path = ClassHierarchy([[0, 0, 1]]).save(tmp_path / "h.json")
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_group_presence_and_dropping_saturated_levels() -> None:
    h = ClassHierarchy([[0, 1, 1, 2, 3], [0, 0, 0, 1, 2], [0, 0, 0, 0, 1]])
    targets = torch.tensor([[1, 0, 0, 0, 0], [0, 1, 0, 0, 1], [0, 0, 1, 1, 0], [0, 0, 0, 1, 0]])
    torch.testing.assert_close(h.group_presence(targets, 1), torch.tensor([0.25, 0.5, 0.5, 0.25]))
    torch.testing.assert_close(h.group_presence(targets, 2), torch.tensor([0.75, 0.5, 0.25]))
    torch.testing.assert_close(h.group_presence(targets, 3), torch.tensor([1.0, 0.25]))
    assert h.drop_saturated_levels(targets, 0.9).level_sizes == (5, 4, 3)  # level 3 has a group in 100%
    assert h.drop_saturated_levels(targets, 0.6).level_sizes == (5, 4)
    kept = h.drop_saturated_levels(targets, 0.8)
    assert kept.assignments(2).tolist() == h.assignments(2).tolist()
    assert kept.class_names == h.class_names
    with pytest.raises(ValueError, match="every group level has a group present in more than 40%"):
        h.drop_saturated_levels(targets, 0.4)
    with pytest.raises(ValueError, match="`max_presence` must be between 0 and 1"):
        h.drop_saturated_levels(targets, 1.5)


def test_hierarchy_lives_in_its_own_package_and_users_do_not_import_grouping() -> None:
    import ast

    import hiercam
    import hiercam.grouping
    import hiercam.hierarchy

    assert ClassHierarchy.__module__ == "hiercam.hierarchy.core"
    assert hiercam.hierarchy.ClassHierarchy is ClassHierarchy
    assert "ClassHierarchy" not in hiercam.grouping.__all__
    package = Path(hiercam.__file__).parent
    users = [package / "fusion.py", package / "pipeline" / "report.py", *(package / "datasets").glob("*.py")]
    for path in users:
        imported = {
            node.module for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.ImportFrom)
        }
        assert not any(module and module.startswith("hiercam.grouping") for module in imported), path
    # the data type and its parts (checks, JSON form, tree views, splits) need no clustering or torch.nn
    parts = sorted((package / "hierarchy").glob("*.py"))
    assert {part.name for part in parts} >= {"core.py", "saturation.py", "_checks.py", "_io.py", "_tree.py"}
    hierarchy_imports = {
        node.module
        for part in parts
        for node in ast.walk(ast.parse(part.read_text()))
        if isinstance(node, ast.ImportFrom)
    }
    internal = {module for module in hierarchy_imports if module and module.startswith("hiercam")}
    own = {"hiercam.hierarchy", *(f"hiercam.hierarchy.{part.stem}" for part in parts)}
    assert internal <= {"hiercam._io", "hiercam._validation", *own}
    assert not any(module.startswith("torch.nn") for module in hierarchy_imports if module)


def test_repr_is_one_line_with_the_level_sizes() -> None:
    h = ClassHierarchy([[0, 1, 0, 2, 1], [0, 1, 0, 0, 1]], class_names=list("abcde"))
    assert repr(h) == "ClassHierarchy(5 classes, levels 5 -> 3 -> 2)"
    assert repr(ClassHierarchy([[0, 0, 1]])) == "ClassHierarchy(3 classes, levels 3 -> 2)"


def _html_tree(node: ET.Element | None) -> list[tuple[str | None, list]]:
    """(text, children) for every <li> of an <ul>, read back from the rendered HTML."""
    assert node is not None
    tree: list[tuple[str | None, list]] = []
    for item in node.findall("li"):
        details = item.find("details")
        if details is None:
            tree.append((item.text, []))
        else:
            summary = details.find("summary")
            assert summary is not None
            tree.append((summary.text, _html_tree(details.find("ul"))))
    return tree


def test_repr_html_is_the_nested_tree_with_escaped_class_names() -> None:
    names = ["a", "<b>", "c & d", "d", "e"]
    h = ClassHierarchy([[0, 1, 0, 2, 1], [0, 1, 0, 0, 1]], class_names=names)
    html = h._repr_html_()
    assert "<b>" not in html  # a class name never becomes markup
    root = ET.fromstring(html)  # well-formed: parses as XML
    assert root.tag == "div"
    assert "5 classes, levels 5 \u2192 3 \u2192 2" in "".join(root.itertext())
    assert _html_tree(root.find("ul")) == [
        (
            "level 2 group 0 (3 classes)",
            [("level 1 group 0 (2 classes): a, c & d", []), ("level 1 group 2 (1 class): d", [])],
        ),
        ("level 2 group 1 (2 classes)", [("level 1 group 1 (2 classes): <b>, e", [])]),
    ]


def test_repr_html_lists_every_class_of_a_single_level() -> None:
    h = ClassHierarchy([[0] * 19 + [1]])
    tree = _html_tree(ET.fromstring(h._repr_html_()).find("ul"))
    assert tree == [
        ("level 1 group 0 (19 classes): " + ", ".join(f"class {i}" for i in range(19)), []),
        ("level 1 group 1 (1 class): class 19", []),
    ]


def test_label_methods_take_labels_by_keyword() -> None:
    h = ClassHierarchy([[0, 0, 1]])
    labels = torch.tensor([[1, 0, 0], [0, 1, 1]])
    assert h.remap_labels(labels=labels, level=1).tolist() == [[1, 0], [1, 1]]
    torch.testing.assert_close(h.group_presence(labels=labels, level=1), torch.tensor([1.0, 0.5]))
    with pytest.raises(ValueError, match="every group level has a group present in more than 50%"):
        h.drop_saturated_levels(labels=labels, max_presence=0.5)


def test_from_groups_numbers_named_groups_in_their_order() -> None:
    """Oracle: the integer assignments written by hand for the same groups."""
    names = ["cat", "car", "dog", "bus", "tree"]
    levels = [[["cat", "dog"], ["car", "bus"], ["tree"]], [["car", "bus"], ["cat", "dog", "tree"]]]
    h = ClassHierarchy.from_groups(levels, names, singletons=[])
    assert h == ClassHierarchy([[0, 1, 0, 1, 2], [1, 0, 1, 0, 1]], names)
    kept = ClassHierarchy.from_groups(levels[:1], names, singletons=["tree"])
    assert kept.singletons == (4,)
    assert ClassHierarchy.from_dict(kept.to_dict()) == kept


@pytest.mark.parametrize(
    ("levels", "error", "match"),
    [
        ([[["cat"], ["dog", "cow"]]], ValueError, r"levels\[0\]\[1\]` names 'cow'"),
        ([[["cat", "dog"], ["dog"]]], ValueError, r"puts 'dog' in groups 0 and 1"),
        ([[["cat"], []]], ValueError, r"levels\[0\]\[1\]` is an empty group"),
        ([[["cat"]]], ValueError, r"leaves class\(es\) 'dog', 'car' out"),
        ([[["cat", "dog"], ["car"]], [["cat"], ["dog", "car"]]], ValueError, "must strictly decrease"),
        ([["cat", "dog", "car"]], TypeError, r"levels\[0\]\[0\]` must be a sequence of class names"),
        ([[["cat", 1], ["dog", "car"]]], TypeError, "must hold class names"),
        ("cat", TypeError, "`levels` must be a sequence"),
    ],
)
def test_from_groups_names_the_level_and_group_it_refuses(levels, error, match) -> None:
    with pytest.raises(error, match=match):
        ClassHierarchy.from_groups(levels, ["cat", "dog", "car"])


def test_from_groups_refuses_unknown_or_repeated_class_names() -> None:
    with pytest.raises(TypeError, match="`singletons` must hold class names"):
        ClassHierarchy.from_groups([[["cat", "dog"], ["car"]]], ["cat", "dog", "car"], singletons=[2])
    with pytest.raises(ValueError, match="must not repeat"):
        ClassHierarchy.from_groups([[["cat"], ["dog"]]], ["cat", "cat"])
    with pytest.raises(ValueError, match="`singletons` names 'cow'"):
        ClassHierarchy.from_groups([[["cat", "dog"], ["car"]]], ["cat", "dog", "car"], singletons=["cow"])
    with pytest.raises(ValueError, match="kept out of the grouping but shares"):
        ClassHierarchy.from_groups([[["cat", "dog"], ["car"]]], ["cat", "dog", "car"], singletons=["cat"])
    split = [[["cat", "dog"], ["car"], ["bus"]], [["cat", "car"], ["dog", "bus"]]]
    with pytest.raises(ValueError, match="not nested"):
        ClassHierarchy.from_groups(split, ["cat", "dog", "car", "bus"])
