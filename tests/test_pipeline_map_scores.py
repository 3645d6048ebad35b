"""The evaluation stage's threshold-free figures (MaxBoxAccV2, PxAP, deletion, insertion); multiscale."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from hiercam.cam import GradCAM, MultiScaleCAM
from hiercam.hierarchy import ClassHierarchy
from hiercam.metrics import deletion_insertion, max_box_acc, pxap
from hiercam.pipeline import (
    ConfigError,
    ExtractedMaps,
    MapScores,
    ModelKey,
    ModelMaps,
    PipelineConfig,
    RunResult,
    Variant,
    apply_preset,
    demo_config,
    run_pipeline,
)
from hiercam.pipeline.artifacts import digest, load_tensors
from hiercam.pipeline.context import RunContext
from hiercam.pipeline.data import InMemorySplit
from hiercam.pipeline.evaluation import choose_thresholds, score_maps, score_split, variant_maps
from hiercam.pipeline.keys import data_key
from hiercam.pipeline.report import bench_markdown, compare_markdown, seed_stats
from hiercam.pipeline.stages import build_hierarchy, train_base, train_levels


class ColumnCounter(nn.Module):
    """Class 0's logit: how many pixels of column 0 of channel 0 are 1 (0..4); class 1's: 0."""

    def forward(self, images: Tensor) -> Tensor:
        column = images[:, 0, :, 0].sum(-1)
        return torch.stack([column, torch.zeros_like(column)], 1)


def toy() -> tuple[ExtractedMaps, InMemorySplit]:
    """Two white 4 x 4 images with class 0 in column 0: image 0's map is that column, image 1's all ones."""
    maps = torch.zeros(2, 2, 4, 4)
    maps[0, 0, :, 0] = 1.0
    maps[1, 0] = 1.0
    labels = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    extracted = ExtractedMaps(labels, {ModelKey("base"): ModelMaps(maps.half(), torch.zeros(2, 2))})
    masks = torch.zeros(2, 4, 4, dtype=torch.uint8)
    masks[:, :, 0] = 1
    boxes = [torch.tensor([[0.0, 0.0, 0.0, 1.0, 4.0]])] * 2  # (class, x1, y1, x2, y2), exclusive far edges
    images = torch.full((2, 3, 4, 4), 255, dtype=torch.uint8)
    return extracted, InMemorySplit(images, labels, masks, boxes)


def _area(scores: list[float]) -> float:
    """Trapezoidal area over the fractions 0, 1/4, ..., 1."""
    return sum((a + b) / 2 for a, b in itertools.pairwise(scores)) / (len(scores) - 1)


def test_threshold_free_figures_by_hand() -> None:
    config = PipelineConfig(device="cpu").replace(
        method__levels=(1,), evaluation__faithfulness_images=2, evaluation__faithfulness_steps=4
    )
    extracted, data = toy()
    baseline = Variant("baseline")
    hierarchy = ClassHierarchy([[0, 0]])
    scores = score_maps(config, data, extracted, hierarchy, [baseline], model=ColumnCounter())[baseline]
    # image 0: its one region is the column, box (0, 0, 1, 3) after clamping: wsolevaluation's IoU with
    # (0, 0, 1, 4) is 8 / 10 >= 0.7; image 1: a constant map is all zero after min-max, box (0, 0, 0, 0),
    # IoU 1 / 10: one correct trial in two at every IoU
    assert scores.max_box_acc_per_iou == pytest.approx((0.5, 0.5, 0.5))
    assert scores.max_box_acc == pytest.approx(0.5)
    # PxAP: 8 foreground and 24 background pixels; at t = 1 the 4 of image 0 (precision 1, recall 1/2),
    # at t = 0 all 32 (precision 8 / 32, recall 1): 1 * 1/2 + 1/4 * 1/2
    assert scores.pxap == pytest.approx(0.625)
    # deletion / insertion with 16 pixels in 4 steps of 4 pixels, sigmoid of the count of column-0 pixels:
    # image 0 removes / restores the column first; image 1's ties go in row-major order, a row at a time
    sig = [1 / (1 + math.exp(-n)) for n in range(5)]
    deletion = (_area([sig[4], sig[0], sig[0], sig[0], sig[0]]) + _area(sig[::-1])) / 2
    insertion = (_area([sig[0], sig[4], sig[4], sig[4], sig[4]]) + _area(sig)) / 2
    assert scores.deletion == pytest.approx(deletion)
    assert scores.insertion == pytest.approx(insertion)
    # only the first `faithfulness_images` images: image 0 alone
    first = config.replace(evaluation__faithfulness_images=1)
    alone = score_maps(first, data, extracted, hierarchy, [baseline], model=ColumnCounter())[baseline]
    assert alone.deletion == pytest.approx(_area([sig[4], sig[0], sig[0], sig[0], sig[0]]))
    assert alone.max_box_acc == scores.max_box_acc  # MaxBoxAccV2 and PxAP still cover the whole split
    # turned off: NaN, no model called
    off = config.replace(evaluation__faithfulness_images=0, evaluation__wsol=False)
    nothing = score_maps(off, data, extracted, hierarchy, [baseline], model=ColumnCounter())[baseline]
    assert nothing == MapScores()
    # the figures reach the typed results and metrics.json
    curves = {"val": score_split(config, data, extracted, hierarchy, [baseline])}
    split = choose_thresholds(config, curves, {"val": {baseline: scores}})[baseline].splits["val"]
    assert (split.max_box_acc, split.pxap, split.deletion, split.insertion) == (
        scores.max_box_acc,
        scores.pxap,
        scores.deletion,
        scores.insertion,
    )


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"evaluation__faithfulness_images": -1}, "`evaluation.faithfulness_images` must be >= 0"),
        ({"evaluation__faithfulness_steps": 0}, "`evaluation.faithfulness_steps` must be >= 1"),
        ({"evaluation__wsol": 1}, "`evaluation.wsol` must be true or false"),
        ({"method__multiscale": []}, "`method.multiscale` must list at least one scale"),
        ({"method__multiscale": [1.0, 0.0]}, r"`method.multiscale\[1\]` must be a positive number"),
        ({"method__multiscale": [1.0, math.inf]}, r"`method.multiscale\[1\]` must be a positive number"),
        ({"method__multiscale": ["1"]}, r"`method.multiscale\[0\]` must be a number"),
        ({"method__flip": "yes"}, "`method.flip` must be true or false"),
    ],
)
def test_bad_evaluation_and_multiscale_keys_are_config_errors(changes: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        demo_config().replace(**changes)


def test_multiscale_preset_is_the_refinement_alone() -> None:
    config = apply_preset(demo_config(), "multiscale")
    assert config.method.multiscale == (1.0, 0.5, 1.5, 2.0)  # IRN's scales, without the mirror images
    assert not config.method.flip
    assert config.method.branches == 1  # on the single-branch method: its baseline row is Grad-CAM + scales
    assert apply_preset(config, "paper") == demo_config()  # the paper's settings turn it off again


def test_run_figures_equal_the_functional_metrics_on_the_stored_maps(
    tmp_path: Path, tiny_config: Callable[..., PipelineConfig], one_thread: None
) -> None:
    config = tiny_config(
        ablation=False,
        ensemble=False,
        evaluation__faithfulness_images=6,
        evaluation__faithfulness_steps=4,
        method__multiscale=[1.0, 0.5],
        method__flip=True,
    )
    out = tmp_path / "run"
    result = run_pipeline(config, out, progress=False, log=lambda _: None)
    ctx = RunContext(config, out, progress=False, log=lambda _: None)
    base = train_base(ctx)  # up to date: loaded from the run's models
    test = ctx.data("test")
    (cache,) = (out / "cams").glob("test-*.pt")
    stored = ExtractedMaps.from_tensors(load_tensors(cache), cache)
    rows, images, labels, masks, boxes = next(test.batches(len(test)))
    # the maps with method.multiscale are MultiScaleCAM's on the stored model, at the plain feature size
    with GradCAM(base.model) as plain:
        size = plain(images, size="feature", normalize=None).shape[-2:]
        direct = MultiScaleCAM(plain, (1.0, 0.5), flip=True)(images, size=tuple(size), normalize=None)
    torch.testing.assert_close(stored.models[ModelKey("base")].maps.float(), direct, rtol=2e-3, atol=1e-3)
    # the run's figures are the functional metrics on the stored maps
    baseline, full = Variant("baseline"), Variant("full")
    hierarchy = result.hierarchy
    shape = (int(images.shape[-2]), int(images.shape[-1]))
    maps = dict(variant_maps(stored, rows, hierarchy, labels, shape, [baseline, full], "max"))
    for variant in (baseline, full):
        figures = result.variants[variant].splits["test"]
        boxes_result = max_box_acc(maps[variant], labels, boxes=boxes)
        assert figures.max_box_acc == pytest.approx(float(boxes_result.value))
        assert figures.max_box_acc_per_iou == pytest.approx(tuple(boxes_result.per_iou.tolist()))
        assert figures.pxap == pytest.approx(float(pxap(maps[variant], labels, masks=masks)))
        areas = deletion_insertion(
            maps[variant][:6], labels[:6], images=images[:6], model=base.model, steps=4, score="sigmoid"
        )
        assert figures.deletion == pytest.approx(float(areas.deletion))
        assert figures.insertion == pytest.approx(float(areas.insertion))
        assert math.isnan(result.variants[variant].splits["val"].deletion)  # test split only
        assert not math.isnan(result.variants[variant].splits["val"].pxap)
    # metrics.json carries them and reads back; the report shows the columns
    back = RunResult.load(out / "metrics.json")
    assert back.variants[full].splits["test"] == result.variants[full].splits["test"]
    report = (out / "report.md").read_text()
    assert "| test MaxBoxAccV2 | test PxAP | test deletion | test insertion |" in report
    assert "| MaxBoxAcc@0.3 | MaxBoxAcc@0.5 | MaxBoxAcc@0.7 |" in report


def test_multiscale_enters_the_map_cache_key_only_when_set(
    tmp_path: Path, tiny_config: Callable[..., PipelineConfig], one_thread: None
) -> None:
    config = tiny_config(ablation=False, ensemble=False, evaluation__faithfulness_images=0)
    out, lines = tmp_path / "run", []
    run_pipeline(config, out, progress=False, log=lambda _: None, test=False)
    (plain,) = (out / "cams").glob("val-*.pt")
    # the key of the plain maps is the one of earlier versions: the multi-scale entry is absent
    ctx = RunContext(config, out, progress=False, log=lambda _: None)
    base = train_base(ctx)
    hierarchy, key = build_hierarchy(ctx, base)
    models = {base.identity: base, **train_levels(ctx, hierarchy, key)}
    earlier = digest(
        {
            "models": {m.identity.name: m.content_key for m in models.values()},
            "data": data_key(config),
            "split": "val",
            "layout": 2,
        }
    )
    assert plain.name == f"val-{earlier[:16]}.pt"
    multi = config.replace(method__multiscale=[1.0, 2.0], evaluation__wsol=False)
    run_pipeline(multi, out, progress=False, log=lines.append, test=False)
    assert not any("training" in line for line in lines)  # the models are not retrained
    assert len(list((out / "cams").glob("val-*.pt"))) == 2  # a map cache of its own
    report = (out / "report.md").read_text()  # with nothing measured, the report says so
    assert "MaxBoxAccV2 and PxAP were not measured (`evaluation.wsol = false`)" in report
    assert "Deletion and insertion were not measured (`evaluation.faithfulness_images = 0`)" in report
    assert "## Localisation without a threshold" not in report
    flipped = config.replace(method__flip=True)  # flip alone: scale 1 and its mirror, a third cache
    run_pipeline(flipped, out, progress=False, log=lambda _: None, test=False)
    assert len(list((out / "cams").glob("val-*.pt"))) == 3


def test_bench_and_compare_tables_show_the_new_columns_in_percent() -> None:
    stats = seed_stats
    test = {
        "miou": stats([0.25, 0.35]),
        "miou_at_val_threshold": stats([0.3, 0.4]),
        "loc_error": stats([0.5, 0.5]),
        "max_box_acc": stats([0.125, 0.375]),
        "pxap": stats([0.5, 0.5]),
        "deletion": stats([0.1, 0.2]),
        # no "insertion": a result written before it existed
    }
    bench = {
        "seeds": [0, 1],
        "rest_reduction": "max",
        "variants": {"baseline": {"val": test, "test": test}},
        "classification_map": {"val": {"base": stats([0.5, 0.5])}, "test": {"base": stats([0.5, 0.5])}},
        "branch_cam_correlation": {"test": {}},
    }
    row = bench_markdown(bench).splitlines()[4]
    assert row.endswith(
        "| 25.00 ± 17.68 [12.50, 37.50] | 50.00 ± 0.00 [50.00, 50.00] | 15.00 ± 7.07 [10.00, 20.00] | n/a |"
    )
    compared = compare_markdown({"seeds": [0, 1], "presets": {"paper": bench}}).splitlines()
    assert compared[2].count("|") == compared[3].count("|") == compared[4].count("|")  # one cell per column
    assert "| 25.00 ± 17.68 [12.50, 37.50] | 50.00 ± 0.00 [50.00, 50.00] |" in compared[4]
