"""The typed stage results: identities, the map cache layout, metrics.json, the evaluation stage's figures."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch

from hiercam import ClassHierarchy
from hiercam.pipeline import (
    ExtractedMaps,
    FusionWeights,
    ModelKey,
    ModelMaps,
    PipelineConfig,
    RunResult,
    SplitScores,
    ThresholdCurve,
    Variant,
    VariantScores,
)
from hiercam.pipeline.data import InMemorySplit
from hiercam.pipeline.evaluation import choose_thresholds, score_split


def test_model_keys_and_variants_round_trip_through_their_names() -> None:
    keys = [ModelKey("base"), ModelKey("two_branch", 0), ModelKey("two_branch", 12), ModelKey("single", 3)]
    assert [k.name for k in keys] == ["base", "two_branch_L0", "two_branch_L12", "single_L3"]
    assert [ModelKey.from_name(k.name) for k in keys] == keys
    variants = [Variant("baseline"), Variant("full_tuned"), Variant("level", 2)]
    assert [v.name for v in variants] == ["baseline", "full_tuned", "level_2"]
    assert [Variant.from_name(v.name) for v in variants] == variants
    assert [v.fused for v in variants] == [False, True, False]
    assert Variant("level", 2).description == "level 2 model alone"


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: ModelKey.from_name("two_branch_1"), "'two_branch_1' is not a model name"),
        (lambda: ModelKey.from_name("base_L0"), "'base_L0' is not a model name"),
        (lambda: ModelKey("base", 1), "the base classifier is a level-0 model"),
        (lambda: ModelKey("triple", 0), "`kind` must be one of"),  # type: ignore[arg-type]
        (lambda: ModelKey("single", -1), "`level` must be an integer >= 0"),
        (lambda: Variant.from_name("level"), "'level' is not a variant name"),
        (lambda: Variant.from_name("level_x"), "'level_x' is not a variant name"),
        (lambda: Variant("level", 0), "a `level` variant needs `level` >= 1"),
        (lambda: Variant("full", 1), "only a `level` variant has a level"),
    ],
)
def test_bad_identities_are_refused(build: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build()  # type: ignore[operator]


def extracted() -> ExtractedMaps:
    """Two 4 x 4 images with class 0 in both: image 0's map is right, image 1's covers everything."""
    maps = torch.zeros(2, 2, 4, 4)
    maps[0, 0, :, 0] = 1.0  # exactly the garment's column
    maps[1, 0] = 1.0  # the whole image
    labels = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    return ExtractedMaps(labels, {ModelKey("base"): ModelMaps(maps.half(), torch.zeros(2, 2))})


def split() -> InMemorySplit:
    masks = torch.zeros(2, 4, 4, dtype=torch.uint8)
    masks[:, :, 0] = 1  # class 0 (label 1) in column 0
    boxes = [torch.tensor([[0.0, 0.0, 0.0, 1.0, 4.0]])] * 2  # (class, x1, y1, x2, y2), exclusive far edges
    images = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    return InMemorySplit(images, torch.tensor([[1.0, 0.0], [1.0, 0.0]]), masks, boxes)


def test_scores_are_fractions_computed_over_the_whole_split() -> None:
    config = PipelineConfig(device="cpu").replace(method__levels=(1,), method__thresholds=(0.15, 0.5))
    hierarchy = ClassHierarchy([[0, 0]])
    curves = score_split(config, split(), extracted(), hierarchy, [Variant("baseline")])
    curve = curves[Variant("baseline")]
    # by hand, accumulated over both images: class 0: intersection 4 + 4, union 4 + 16 -> 0.4;
    # background: intersection 12 + 0, union 12 + 12 -> 0.5; mIoU 0.45 at both thresholds
    assert curve.miou == pytest.approx((0.45, 0.45))
    # image 0's box is the garment's (IoU 1), image 1's the whole image (IoU 4/16 < 0.5): 1 error in 2 pairs
    assert curve.loc_error == pytest.approx((0.5, 0.5))
    scores = choose_thresholds(config, {"val": curves})[Variant("baseline")]
    assert scores.threshold == 0.15  # ties go to the first threshold
    assert scores.splits["val"] == SplitScores(
        pytest.approx(0.45), pytest.approx(0.5), pytest.approx(0.45), pytest.approx(0.5)
    )


def test_extracted_maps_round_trip_and_a_tampered_cache_names_the_file(tmp_path: Path) -> None:
    maps = extracted()
    maps.models[ModelKey("two_branch", 1)] = ModelMaps(
        torch.rand(2, 1, 4, 4), torch.rand(2, 1), torch.tensor([[0.5], [math.nan]])
    )
    flat = maps.to_tensors()
    back = ExtractedMaps.from_tensors(flat, tmp_path / "cams.pt")
    assert list(back.models) == list(maps.models)
    torch.testing.assert_close(
        back.models[ModelKey("two_branch", 1)].branch_correlation,
        torch.tensor([[0.5], [math.nan]]),
        equal_nan=True,
    )
    source = tmp_path / "val-0123.pt"
    bad = {
        "no labels": ({k: v for k, v in flat.items() if k != "labels"}, "no \\(N, K\\) `labels` tensor"),
        "unknown model": ({**flat, "triple_L0/maps": torch.zeros(2)}, "entry 'triple_L0/maps'"),
        "unknown part": ({**flat, "base/extra": torch.zeros(2)}, "entry 'base/extra' is not a maps"),
        "rows": ({**flat, "base/logits": torch.zeros(3, 2)}, "entry 'base/logits' has 3 rows, `labels` 2"),
        "no logits": (
            {k: v for k, v in flat.items() if k != "base/logits"},
            "model 'base' lacks its maps or",
        ),
        "not a tensor": ({**flat, "base/maps": [1, 2]}, "entry 'base/maps' is not a maps"),
    }
    for tampered, match in bad.values():  # each ends in a ValueError naming the file
        with pytest.raises(ValueError, match=f"{re.escape(str(source))}: {match}"):
            ExtractedMaps.from_tensors(tampered, source)


def result() -> RunResult:
    variant = Variant("full")
    return RunResult(
        thresholds=(0.15, 0.5),
        threshold=0.15,
        variants={variant: VariantScores(variant, 0.5, {"val": SplitScores(0.4, math.nan, 0.5, 0.25)})},
        curves={"val": {variant: ThresholdCurve((0.4, 0.5), (math.nan, 0.25))}},
        classification_map={"val": {ModelKey("base"): 0.75}},
        branch_correlation={"val": {ModelKey("two_branch", 0): 0.125}},
        rest_reduction="none",
        fusion_weights=FusionWeights((1.0, 1.0, 1.0), (1.0, 0.5, 0.0), {"1,0.5,0": 0.5}),
        hierarchy=ClassHierarchy([[0, 0, 1]]),
        group_presence={1: [1.0, 0.5]},
        histories={ModelKey("base"): [{"epoch": 1.0, "val_map": 0.75}]},
    )


def test_metrics_json_is_strict_json_and_reads_back(tmp_path: Path) -> None:
    path = result().save(tmp_path / "metrics.json")
    text = path.read_text()
    assert "NaN" not in text  # strict JSON: NaN is null
    data = json.loads(text)
    assert data["variants"]["full"]["val"] == {
        "miou": 0.4,
        "loc_error": None,
        "miou_at_val_threshold": 0.5,
        "loc_error_at_val_threshold": 0.25,
        "max_box_acc": None,  # not measured: NaN, written as null
        "max_box_acc_per_iou": [],
        "pxap": None,
        "deletion": None,
        "insertion": None,
    }
    assert data["fusion_weights"] == {
        "configured": [1, 1, 1],
        "full_tuned": [1, 0.5, 0],
        "tried": {"1,0.5,0": 0.5},
    }
    back = RunResult.load(path)
    assert back.to_json() == data
    assert math.isnan(back.variant("full").splits["val"].loc_error)
    assert back.classification_map == {"val": {ModelKey("base"): 0.75}}
    # a metrics.json written before the threshold-free figures existed reads back with NaN for them
    for name in ("max_box_acc", "max_box_acc_per_iou", "pxap", "deletion", "insertion"):
        del data["variants"]["full"]["val"][name]
    older = RunResult.from_json(data).variant("full").splits["val"]
    assert math.isnan(older.pxap)
    assert math.isnan(older.deletion)
    assert older.max_box_acc_per_iou == ()


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda d: d.pop("variants"), "missing key 'variants'"),
        (lambda d: d.update(version=1), "`version` must be 2"),
        (lambda d: d.update(version=True), "`version` must be 2"),
        (lambda d: d["variants"].update(lvl_1=d["variants"]["full"]), "'lvl_1' is not a variant name"),
        (lambda d: d["classification_map"]["val"].update(bas=0.1), "'bas' is not a model name"),
        (lambda d: d["variants"]["full"]["val"].update(miou="0.4"), "a figure must be a number or null"),
        (lambda d: d["fusion_weights"].update(configured=[1, 1]), "fusion weights must be a list of 3"),
        (lambda d: d["hierarchy"].pop("assignments"), "metrics.json"),
    ],
)
def test_a_tampered_metrics_json_is_a_clear_error_naming_the_file(
    tmp_path: Path, change: object, match: str
) -> None:
    data = result().to_json()
    change(data)  # type: ignore[operator]
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=match) as info:
        RunResult.load(path)
    assert str(path) in str(info.value)
    path.write_text("{not json")
    with pytest.raises(ValueError, match=f"{re.escape(str(path))}: not JSON"):
        RunResult.load(path)
