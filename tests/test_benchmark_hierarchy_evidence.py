"""``benchmarks/hierarchy_evidence.py`` on its tiny ``quick`` setting: the records the evidence tables read.

Oracles: a validation-only record and a full record of the same models (one shared cache) hold the same
validation figures; the full record's Grad-CAM figure is recomputed from its own per-threshold validation
curve; the tables print what the records hold.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "hierarchy_evidence.py"
ROWS = ["gradcam", "subcategory", "subcategory_shuffled"]


def evidence(*args: str) -> str:
    command = [sys.executable, str(SCRIPT), "--threads", "1", *args]
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, dict]:
    root = tmp_path_factory.mktemp("evidence")
    common = ["--dataset", "quick", "--seeds", "0", "--cache", str(root / "cache")]
    evidence(*common, "--rows", *ROWS, "--results", str(root / "full"), "--subcategory-weight", "0.5")
    evidence(
        *common, "--rows", *ROWS[:2], "--results", str(root / "val"), "--subcategory-weight", "0.5",
        "--validation-only",
    )  # fmt: skip
    full = json.loads((root / "full" / "hierarchy" / "quick" / "seed_0.json").read_text())
    val = json.loads((root / "val" / "hierarchy" / "quick" / "validation_seed_0.json").read_text())
    return root, full, val


def test_validation_only_records_hold_the_full_records_validation_figures(records) -> None:
    _, full, val = records
    assert val["split"] == "val"
    assert full["split"] == "test"
    assert val["subcategory_weight"] == full["subcategory_weight"] == 0.5
    assert val["rows"] == ROWS[:2]
    assert full["rows"] == ROWS
    for row in ROWS[:2]:
        assert not [key for key in val["results"][row] if key.startswith("test_")]
        for key, value in val["results"][row].items():
            assert full["results"][row][key] == pytest.approx(value, abs=1e-9), (row, key)
    curve = full["results"]["gradcam"]["val_miou_curve"]
    paper = full["thresholds"].index(0.15)
    assert full["results"]["gradcam"]["val_miou_paper"] == pytest.approx(curve[paper])
    assert "subcategory_shuffled - gradcam" in full["comparisons"]


def test_records_keep_each_trained_models_final_validation_map(records) -> None:
    root, full, val = records
    # the validation-only run trains fewer rows' models; the ones it shares are the same cached models
    assert val["val_map"] == {name: full["val_map"][name] for name in val["val_map"]}
    assert set(full["val_map"]) - set(val["val_map"]) == {"subcategory_shuffled"}
    # the oracle: the last epoch of each cached model's own training history, found by the cache file's kind
    kinds = {
        "base": "base",
        "subcategory_real": "subcategory",
        "subcategory_shuffled": "shuffled_subcategory",
    }
    assert set(full["val_map"]) == set(kinds)
    for name, kind in kinds.items():
        (path,) = (root / "cache").rglob(f"{kind}-*.json")
        history = json.loads(path.read_text())["history"]
        assert full["val_map"][name] == history[-1]["val_map"], name


def test_tables_print_the_records(records) -> None:
    root, full, val = records
    table = evidence("--table", "--results", str(root / "full"))
    gradcam = full["results"]["gradcam"]["test_miou_paper"]
    assert f"| gradcam | 0 | {gradcam:.2f} |" in table
    shown = evidence("--dataset", "quick", "--validation-table", str(root / "val"), str(root / "full"))
    ours, base = (val["results"][row]["val_miou_paper"] for row in ("subcategory", "gradcam"))
    assert f"| val | 0.5 | subcategory | 0 | {ours:.2f} | {ours - base:+.2f} |" in shown
    assert "| full | 0.5 | subcategory_shuffled | 0 |" in shown


def test_apart_hierarchy_groups_similar_classes_that_do_not_share_images() -> None:
    import torch

    from hiercam import ClassHierarchy

    script = _script()
    # classes 0 and 1 point nearly the same way but share images; class 4 is kept out of the grouping
    embeddings = torch.tensor([[1.0, 0.0], [1.0, 0.05], [0.9, 0.1], [0.95, 0.2], [0.0, 1.0]])
    labels = torch.tensor(
        [[1, 1, 0, 0, 0], [1, 0, 0, 0, 1], [0, 0, 1, 0, 0], [0, 1, 0, 1, 0], [0, 0, 1, 0, 1]]
    )
    reference = ClassHierarchy([[0, 0, 1, 1, 2]], [f"c{k}" for k in range(5)], singletons=[4])
    apart = script.apart_hierarchy(embeddings, labels, reference, rate=0.5)
    # worked by hand: cosine distances d01 .00125, d12 .00185, d23 .00469, d02 .00612, d13 .01239, d03 .02145;
    # 0-1 share an image (half of each one's images) and so do 1-3 (all of 3's): both pairs are forbidden.
    # Complete linkage merges 1-2 (.00185); {1, 2} is then 10 from 0 and from 3, so 0-3 merge (.02145)
    assert apart.groups(1) == [[0, 3], [1, 2], [4]]
    assert apart.singletons == (4,)
    # without images shared: 0-1 (.00125), then 2-3 (.00469, below {0, 1}'s complete distances .00612, .02145)
    free = script.apart_hierarchy(embeddings, torch.eye(5, dtype=torch.long), reference, rate=0.5)
    assert free.groups(1) == [[0, 1], [2, 3], [4]]


def test_group_mates_count_borrowed_and_present_mates_by_hand() -> None:
    import torch

    from hiercam import ClassHierarchy

    script = _script()
    hierarchy = ClassHierarchy([[0, 0, 0, 1, 1]])  # groups {0, 1, 2} and {3, 4}
    labels = torch.tensor([[1, 1, 0, 0, 0], [0, 0, 0, 1, 0]])
    # image 0: class 0 borrows 2 (1 is present), class 1 borrows 2; image 1: class 3 borrows 4
    # three (image, class) pairs, 3 mates borrowed, two pairs with a mate in the image
    borrowed, together = script.group_mates(hierarchy, labels)
    assert borrowed == 1.0
    assert together == 200 / 3


def test_every_group_map_row_names_its_design() -> None:
    script = _script()
    design = script.GroupMapDesign
    assert script.group_map_design("prototype_groups") == (design(), False)
    assert script.group_map_design("prototype_groups_gated_shuffled") == (
        design(labels_aware=True, fusion="product"),
        True,
    )
    assert script.group_map_design("prototype_groups_apart") == (design(True, hierarchy="apart"), False)
    rows = [row for row in script.ROWS if row.startswith("prototype_groups")]
    assert sorted(rows) == sorted(
        script.group_map_row(kind, shuffled)
        for kind in script.GROUP_MAP_DESIGNS
        for shuffled in (False, True)
    )
    # the rows on group_source's hierarchy: every design but apart, which builds its own
    assert "prototype_groups_apart" not in script.GROUP_SOURCE_ROWS
    assert {"prototype_groups_uncertain", "prototype_groups_gated_shuffled"} <= script.GROUP_SOURCE_ROWS


def test_validation_table_shows_the_sc_cam_weight_only_with_sub_category_rows(tmp_path, capsys) -> None:
    import json

    script = _script()
    figures = {"val_miou_paper": 50.0, "val_precision_paper": 60.0, "val_recall_paper": 70.0}
    record = {
        "seed": 0,
        "rows": ["gradcam", "prototype_others"],
        "subcategory_weight": 5.0,
        "results": {"gradcam": figures, "prototype_others": {**figures, "val_miou_paper": 52.5}},
    }
    where = tmp_path / "plain" / "hierarchy" / "msrc21"
    where.mkdir(parents=True)
    (where / "validation_seed_0.json").write_text(json.dumps(record))
    script.print_validation([tmp_path / "plain"], "msrc21")
    shown = capsys.readouterr().out
    assert shown.splitlines()[0].startswith("| records | row | seeds |")
    assert "| plain | prototype_others | 0 | 52.50 | +2.50 | 60.0 / 70.0 |" in shown


def test_validation_table_compares_rows_paired_by_seed(tmp_path, capsys) -> None:
    import json

    script = _script()
    where = tmp_path / "rule" / "hierarchy" / "msrc21"
    where.mkdir(parents=True)
    for seed, (a, b) in enumerate([(51.0, 50.0), (49.0, 49.5), (53.0, 50.0)]):
        results = {
            name: {"val_miou_paper": value, "val_precision_paper": 60.0, "val_recall_paper": 70.0}
            for name, value in (("gradcam", 45.0), ("grouping", a), ("ensemble_fused", b))
        }
        record = {"seed": seed, "rows": list(results), "subcategory_weight": 5.0, "results": results}
        (where / f"validation_seed_{seed}.json").write_text(json.dumps(record))
    script.print_validation([tmp_path / "rule"], "msrc21", ["grouping:ensemble_fused", "grouping:absent"])
    shown = capsys.readouterr().out
    # by hand: +1.00, -0.50, +3.00 -> mean +1.17, positive on 2 of 3; a row no record holds prints nothing
    assert "| rule | grouping - ensemble_fused | +1.17 | 2 of 3 | +1.00, -0.50, +3.00 |" in shown
    assert "absent" not in shown
    with pytest.raises(SystemExit, match="ROW:OTHER pairs, got 'grouping'"):
        script.print_validation([tmp_path / "rule"], "msrc21", ["grouping"])


def test_comparisons_on_the_test_split_read_the_test_figures(capsys) -> None:
    script = _script()
    records = [
        {
            "results": {
                "grouping": {"val_miou_paper": 0.0, "test_miou_paper": a, "test_miou_t_star": a + 2},
                "gradcam": {"test_miou_paper": b, "test_miou_t_star": b},
            }
        }
        for a, b in [(50.0, 49.0), (48.0, 48.5)]
    ]
    script.print_comparisons([("voc", records)], ["grouping:gradcam"], "test")
    shown = capsys.readouterr().out
    # by hand: +1.00, -0.50 -> mean +0.25, positive on 1 of 2
    assert "comparison (test mIoU@0.15)" in shown
    assert "| voc | grouping - gradcam | +0.25 | 1 of 2 | +1.00, -0.50 |" in shown
    # each row at its own validation-chosen threshold: +3.00, +1.50 -> mean +2.25, positive on 2 of 2
    script.print_comparisons([("voc", records)], ["grouping:gradcam"], "test", at="t_star")
    shown = capsys.readouterr().out
    assert "comparison (test mIoU@t*)" in shown
    assert "| voc | grouping - gradcam | +2.25 | 2 of 2 | +3.00, +1.50 |" in shown
    script.print_comparisons([("voc", records)], [], "test")
    assert capsys.readouterr().out == ""


def _script():
    """The script as a module (registered in ``sys.modules``: its dataclasses look their module up)."""
    import importlib.util

    if "hierarchy_evidence" not in sys.modules:
        spec = importlib.util.spec_from_file_location("hierarchy_evidence", SCRIPT)
        module = importlib.util.module_from_spec(spec)
        sys.modules["hierarchy_evidence"] = module
        spec.loader.exec_module(module)
    return sys.modules["hierarchy_evidence"]


def test_group_prototype_maps_follow_eq6_with_prototype_maps() -> None:
    import torch

    from hiercam import ClassHierarchy
    from hiercam.cam import prototype_cam
    from hiercam.maps import normalize_maps

    script = _script()
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(2, 6, 5, 5, generator=generator)
    own = [torch.randn(n, 6, generator=generator) for n in (2, 3, 1, 2)]
    context = [torch.randn(n, 6, generator=generator) for n in (1, 0, 2, 1)]
    others = [torch.cat([context[k], *(own[j] for j in range(4) if j != k)]) for k in range(4)]
    class_maps = prototype_cam(features, own, others)
    # groups {0, 2} and {1, 3}, written out by hand: each class's map plus its group's map, the group's class
    # prototypes against the class's own context prototypes and the class prototypes of the other group
    paired = script.group_prototype_maps(features, own, context, ClassHierarchy([[0, 1, 0, 1]]))
    for k, (group, outside) in enumerate(
        [((0, 2), (1, 3)), ((1, 3), (0, 2)), ((0, 2), (1, 3)), ((1, 3), (0, 2))]
    ):
        group_map = prototype_cam(
            features,
            [torch.cat([own[j] for j in group])],
            [torch.cat([context[k], *(own[j] for j in outside)])],
        )
        torch.testing.assert_close(paired[:, k : k + 1], class_maps[:, k : k + 1] + group_map)
    # the maps the rows score are max-normalised: a two-level hierarchy averages its levels' group maps
    nested = script.group_prototype_maps(features, own, context, ClassHierarchy([[0, 1, 0, 1], [0, 0, 0, 0]]))
    everything = prototype_cam(features, [torch.cat(own)], [context[1]])
    expected = class_maps[:, 1:2] + (paired[:, 1:2] - class_maps[:, 1:2] + everything) / 2
    torch.testing.assert_close(normalize_maps(nested[:, 1:2]), normalize_maps(expected))


def test_group_prototype_maps_with_labels_borrow_only_absent_group_mates() -> None:
    import pytest
    import torch

    from hiercam import ClassHierarchy
    from hiercam.cam import prototype_cam

    script = _script()
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(1, 6, 5, 5, generator=generator)
    own = [torch.randn(n, 6, generator=generator) for n in (2, 3, 1, 2, 2)]
    context = [torch.randn(n, 6, generator=generator) for n in (1, 0, 2, 1, 1)]
    hierarchy = ClassHierarchy([[0, 1, 0, 1, 0]])  # groups {0, 2, 4} and {1, 3}
    others = [torch.cat([context[k], *(own[j] for j in range(5) if j != k)]) for k in range(5)]
    class_maps = prototype_cam(features, own, others)
    labels = torch.tensor([[1, 0, 1, 1, 0]])  # classes 0, 2, 3 in the image
    borrowed = script.group_prototype_maps(features, own, context, hierarchy, labels)
    # written out by hand: class 0 borrows absent 4 (2 is present: a negative); 2 borrows 4 (0 is a negative);
    # 3 borrows absent 1; 1 and 4 (absent themselves) borrow their absent mates: 1 has 3 present, so none
    positives = {0: (0, 4), 1: (1,), 2: (2, 4), 3: (3, 1), 4: (4,)}
    for k, group in positives.items():
        outside = [j for j in range(5) if j not in group]
        group_map = prototype_cam(
            features,
            [torch.cat([own[j] for j in group])],
            [torch.cat([context[k], *(own[j] for j in outside)])],
        )
        torch.testing.assert_close(borrowed[:, k : k + 1], class_maps[:, k : k + 1] + group_map)
    # no group-mate present: the same maps as without labels
    alone = torch.tensor([[1, 1, 0, 0, 0]])
    torch.testing.assert_close(
        script.group_prototype_maps(features, own, context, hierarchy, alone)[:, :2],
        script.group_prototype_maps(features, own, context, hierarchy)[:, :2],
    )
    with pytest.raises(ValueError, match="same for every image"):
        script.group_prototype_maps(features.expand(2, -1, -1, -1), own, context, hierarchy, torch.eye(2, 5))
    # the gate: the class map times the same group term
    gated = script.group_prototype_maps(features, own, context, hierarchy, labels, fusion="product")
    torch.testing.assert_close(gated, class_maps * (borrowed - class_maps))
    with pytest.raises(ValueError, match="fusion"):
        script.group_prototype_maps(features, own, context, hierarchy, labels, fusion="max")
    # where the class maps leave the pixel uncertain: the group term weighted by 1 - (p1 - p2) over the
    # image's classes 0, 2, 3, written out pixel by pixel
    uncertain = script.group_prototype_maps(features, own, context, hierarchy, labels, fusion="uncertain")
    term = borrowed - class_maps
    for y in range(5):
        for x in range(5):
            values = sorted((float(class_maps[0, k, y, x]) for k in (0, 2, 3)), reverse=True)
            weight = 1 - (values[0] - values[1])
            torch.testing.assert_close(
                uncertain[0, :, y, x], class_maps[0, :, y, x] + weight * term[0, :, y, x]
            )
    with pytest.raises(ValueError, match="needs `labels`"):
        script.group_prototype_maps(features, own, context, hierarchy, fusion="uncertain")


def test_routed_maps_route_by_group_and_rank_siblings_by_their_contrast() -> None:
    import torch
    import torch.nn.functional as F

    script = _script()
    generator = torch.Generator().manual_seed(2)
    features = torch.randn(1, 6, 4, 4, generator=generator)
    own = [torch.randn(n, 6, generator=generator) for n in (2, 3, 1, 2, 2)]
    others = torch.rand(1, 5, 4, 4, generator=generator)
    labels = torch.tensor([[1, 1, 1, 1, 0]])  # classes 0-3 in the image
    groups = torch.tensor([0, 1, 0, 0, 1])  # {0, 2, 3, 4} and {1, 3}: present siblings {0, 2, 3}, {1} alone
    routed = script.routed_maps(features, others, own, labels, groups)
    scaled = others / others.amax(dim=(2, 3), keepdim=True)
    torch.testing.assert_close(routed[:, 1], scaled[:, 1])  # alone in its group: prototype_others' map
    assert not routed[:, 4].any()  # absent
    u = [F.normalize(p, dim=1).mean(0) for p in own]
    siblings = (0, 2, 3)
    contrast = {}
    for k in siblings:
        direction = u[k] - torch.stack([u[j] for j in siblings if j != k]).mean(0)
        values = torch.tensor(
            [
                [max(float(F.normalize(features[0, :, y, x], dim=0) @ direction), 0.0) for x in range(4)]
                for y in range(4)
            ]
        )
        contrast[k] = values / values.max()
    for y in range(4):
        for x in range(4):
            evidence = max(float(scaled[0, k, y, x]) for k in siblings)
            best = max(float(contrast[k][y, x]) for k in siblings)
            for k in siblings:
                expected = evidence * (float(contrast[k][y, x]) + 1e-6) / (best + 1e-6)
                assert abs(float(routed[0, k, y, x]) - expected) < 1e-5
    # without a hierarchy every class of the image is a sibling of every other
    flat = script.routed_maps(features, others, own, labels, None)
    assert flat[:, 1].ne(scaled[:, 1]).any()
    torch.testing.assert_close(flat.amax(dim=1), scaled[:, :4].amax(dim=1))


def test_fused_over_models_is_eq6_with_class_maps_as_levels() -> None:
    import torch

    script = _script()
    generator = torch.Generator().manual_seed(3)
    base, other = torch.rand(2, 2, 4, 3, 3, generator=generator)
    labels = torch.tensor([[1, 0, 1, 1], [0, 1, 0, 0]])
    fused = script.fused_over_models(base, [other], labels)
    scaled_base = base / base.amax(dim=(2, 3), keepdim=True)
    scaled_other = other / other.amax(dim=(2, 3), keepdim=True)
    for b in range(2):
        present = labels[b].nonzero().flatten().tolist()
        raw = torch.zeros(4, 3, 3)
        for k in range(4):
            rest = [scaled_base[b, j] for j in present if j != k]
            value = scaled_base[b, k] + scaled_other[b, k] - (torch.stack(rest).amax(0) if rest else 0)
            raw[k] = value.clamp_min(0)
        expected = raw / raw.amax(dim=(1, 2), keepdim=True).clamp_min(1e-12)
        torch.testing.assert_close(fused[b], expected)
    # the library's Eq. 6 agrees when the class maps are a hierarchy's group maps spread to its classes
    from hiercam import ClassHierarchy, fuse_hierarchy

    hierarchy = ClassHierarchy([[0, 1, 0, 1]])
    group_maps = torch.rand(2, 2, 3, 3, generator=generator)
    torch.testing.assert_close(
        script.fused_over_models(base, [group_maps[:, hierarchy.assignments(1)]], labels),
        fuse_hierarchy(base, [group_maps], hierarchy, labels),
    )


def test_plus_rows_add_a_level_model_or_a_class_model_to_the_ensemble(monkeypatch) -> None:
    """``grouping_plus`` is Eq. 6 over the ensemble with the level model, its controls the extra class model.

    Oracle: Eq. 6 written out by hand (max-normalised terms, ``M0'`` the maximum of the other present classes'
    ensemble maps, clamp at 0, max-normalised) on maps that each fake model returns.
    """
    from types import SimpleNamespace

    import torch

    script = _script()
    from hiercam import ClassHierarchy

    generator = torch.Generator().manual_seed(5)
    names = ["base", "partner", "extra", "level", "shuffled_level"]
    raw = {name: torch.rand(2, 4, 3, 3, generator=generator) + 0.01 for name in names}
    group_raw = {name: torch.rand(2, 2, 3, 3, generator=generator) + 0.01 for name in names[3:]}
    model = {name: SimpleNamespace(content_key=name * 3) for name in names}

    def fake_maps(ctx, trained, split, scales):
        name = trained.content_key[: len(trained.content_key) // 3]
        return group_raw.get(name, raw[name])

    monkeypatch.setattr(script, "gradcam_maps", fake_maps)
    hierarchy = ClassHierarchy([[0, 1, 0, 1]])
    shuffled = ClassHierarchy([[0, 0, 1, 1]])
    models = script.SeedModels(
        base=model["base"],
        partners=[model["partner"]],
        hierarchies={"fc": hierarchy, "shuffled": shuffled},
        level_models={"fc": [model["level"]], "shuffled": [model["shuffled_level"]]},
        heads={},
        subcategory={},
        recam={},
        extra_partners=[model["extra"]],
    )
    rows = ["ensemble", "ensemble_plus", "ensemble_plus_fused", "grouping_plus", "grouping_plus_shuffled"]
    makers = script.row_makers(SimpleNamespace(timings={}), models, rows, "val", print)
    index, labels, size = torch.arange(2), torch.tensor([[1, 0, 1, 1], [0, 1, 0, 0]]), (3, 3)

    def scaled(maps):
        return maps / maps.amax(dim=(-2, -1), keepdim=True)

    def average(*maps):
        return scaled(sum(scaled(m) for m in maps) / len(maps))

    def eq6(m0, level):  # by hand: a loop over images and classes
        out = torch.zeros_like(m0)
        for b in range(2):
            present = labels[b].nonzero().flatten().tolist()
            for k in range(4):
                rest = [scaled(m0)[b, j] for j in present if j != k]
                value = scaled(m0)[b, k] + scaled(level)[b, k] - (torch.stack(rest).amax(0) if rest else 0)
                out[b, k] = value.clamp_min(0)
        return out / out.amax(dim=(-2, -1), keepdim=True).clamp_min(1e-12)

    ensemble = average(raw["base"], raw["partner"])
    torch.testing.assert_close(makers["ensemble"](index, labels, size), ensemble)
    torch.testing.assert_close(
        makers["ensemble_plus"](index, labels, size), average(raw["base"], raw["partner"], raw["extra"])
    )
    fused = makers["ensemble_plus_fused"](index, labels, size)
    torch.testing.assert_close(fused, eq6(ensemble, raw["extra"]))
    spread = group_raw["level"][:, [0, 1, 0, 1]]  # each class gets its group's map
    torch.testing.assert_close(makers["grouping_plus"](index, labels, size), eq6(ensemble, spread))
    spread = group_raw["shuffled_level"][:, [0, 0, 1, 1]]
    torch.testing.assert_close(makers["grouping_plus_shuffled"](index, labels, size), eq6(ensemble, spread))
    # the cost column: the ensemble's two models and one more per level
    assert script.cost("grouping_plus", 1) == script.cost("ensemble_plus", 1) == (3, 3)
    assert script.cost("grouping_apart", 1) == script.cost("grouping", 1) == (2, 2)


def test_records_are_read_in_seed_order_not_name_order(tmp_path: Path) -> None:
    script = _script()
    for seed in (9, 10, 40, 5):
        (tmp_path / f"seed_{seed}.json").write_text("{}")
        (tmp_path / f"validation_seed_{seed}.json").write_text("{}")
    # by name, seed_10 sorts before seed_5 and seed_9
    assert min(p.name for p in tmp_path.glob("seed_*.json")) == "seed_10.json"
    assert [p.name for p in script.in_seed_order(tmp_path.glob("seed_*.json"))] == [
        "seed_5.json",
        "seed_9.json",
        "seed_10.json",
        "seed_40.json",
    ]
    ordered = script.in_seed_order(tmp_path.glob("validation_seed_*.json"))
    assert [p.stem for p in ordered] == [f"validation_seed_{s}" for s in (5, 9, 10, 40)]


def test_given_hierarchy_groups_msrc_objects_by_their_wordnet_hypernyms(monkeypatch) -> None:
    """Rule 7's hierarchy file holds the groups written in docs/benchmarks.md, for the VOC-style classes.

    Oracles: the groups spelled out by hand; the class list of MSRC-21 without its stuff classes; the row's
    maps against ``fused_over_models`` (itself checked against Eq. 6 by hand above) with each class given its
    group's map.
    """
    from types import SimpleNamespace

    import torch

    from hiercam import ClassHierarchy
    from hiercam.datasets._msrc_layout import MSRC21_CLASSES, MSRC21_STUFF_CLASSES

    script = _script()
    objects = tuple(name for name in MSRC21_CLASSES if name not in MSRC21_STUFF_CLASSES)
    given = script.given_hierarchy(ClassHierarchy([[0] * len(objects)], list(objects)))
    wordnet = [
        ["cow", "sheep", "cat", "dog"],
        ["aeroplane", "car", "bicycle", "boat"],
        ["face", "body"],
        ["flower"],
        ["sign", "book", "chair"],
        ["bird"],
    ]
    assert given == ClassHierarchy.from_groups([wordnet], objects)
    assert given.singletons == ()
    with pytest.raises(SystemExit, match="none of"):
        script.given_hierarchy(ClassHierarchy([[0, 0, 1]], ["cat", "dog", "car"]))

    generator = torch.Generator().manual_seed(7)
    base = torch.rand(2, 4, 3, 3, generator=generator) + 0.01
    group_raw = {name: torch.rand(2, 2, 3, 3, generator=generator) + 0.01 for name in ("given", "shuffled")}
    monkeypatch.setattr(
        script, "gradcam_maps", lambda ctx, trained, split, scales: group_raw.get(trained.content_key, base)
    )
    hierarchies = {"given": ClassHierarchy([[0, 1, 1, 0]]), "given_shuffled": ClassHierarchy([[0, 0, 1, 1]])}
    models = script.SeedModels(
        base=SimpleNamespace(content_key="base"),
        partners=[],
        hierarchies=hierarchies,
        level_models={
            "given": [SimpleNamespace(content_key="given")],
            "given_shuffled": [SimpleNamespace(content_key="shuffled")],
        },
        heads={},
        subcategory={},
        recam={},
    )
    rows = ["grouping_given", "grouping_given_shuffled"]
    makers = script.row_makers(SimpleNamespace(timings={}), models, rows, "val", print)
    index, labels, size = torch.arange(2), torch.tensor([[1, 1, 0, 1], [0, 1, 0, 0]]), (3, 3)
    for row, name, key in zip(rows, ("given", "given_shuffled"), ("given", "shuffled"), strict=True):
        spread = group_raw[key][:, hierarchies[name].assignments(1)]
        expected = script.fused_over_models(base, [spread], labels)
        torch.testing.assert_close(makers[row](index, labels, size), expected)
    assert script.cost("grouping_given", 1) == script.cost("grouping", 1) == (2, 2)
    assert script.CONTROLS["grouping_given"][:4] == ("gradcam", "ensemble", "ensemble_fused", rows[1])
