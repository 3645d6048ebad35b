"""Saturated groups in the pipeline: the grouping adapts (splits, drops, falls back) and never stops a run."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from hiercam import ClassHierarchy
from hiercam.cli import main
from hiercam.hierarchy import GroupSplit
from hiercam.pipeline import (
    FusionWeights,
    GroupingAdaptation,
    PipelineConfig,
    RunResult,
    SplitScores,
    ThresholdCurve,
    Variant,
    VariantScores,
    apply_preset,
    run_pipeline,
)
from hiercam.pipeline.evaluation import variants_of
from hiercam.pipeline.keys import ModelKey
from hiercam.pipeline.report import write_report
from hiercam.pipeline.stages.grouping import _kept_out


@pytest.fixture(scope="module")
def saturated(tiny_config: Callable[..., PipelineConfig]) -> Callable[..., PipelineConfig]:
    """``recommended`` on FashionScenes scenes of 3 or 4 garments, one level of 2 groups: both saturated."""

    def make(**changes: object) -> PipelineConfig:
        config = tiny_config(
            ablation=False,
            ensemble=False,
            evaluation__wsol=False,
            evaluation__faithfulness_images=0,
            method__levels=[2],
            data__items=[3, 4],
        )
        return apply_preset(config, "recommended").replace(**changes)

    return make


def test_a_saturated_level_is_rescued_by_splitting_and_the_report_names_the_groups(
    tmp_path: Path, saturated: Callable[..., PipelineConfig], one_thread: None
) -> None:
    lines: list[str] = []
    result = run_pipeline(saturated(), tmp_path, progress=False, log=lines.append)
    grouping = result.grouping
    assert grouping is not None
    assert grouping.fallback is None
    assert grouping.splits  # every level had a group in more than 90 % of the training images
    assert all(split.presence > 0.9 and split.level == 1 for split in grouping.splits)
    hierarchy = result.hierarchy
    assert hierarchy is not None
    assert hierarchy.num_levels == 2
    assert hierarchy.num_groups(1) == 2 + len(grouping.splits)  # one more group per split
    train = torch.tensor(json.loads((tmp_path / "hierarchy_presence.json").read_text())["1"])
    assert float(train.max()) <= 0.9  # the level is kept: no group saturates it any more
    # the level models were trained on the split groups, and Eq. 6 used them
    assert ModelKey("two_branch", 1) in result.histories
    assert [v.name for v in result.variants] == ["baseline", "full", "level_1"]
    report = (tmp_path / "report.md").read_text()
    assert "## How the grouping adapted" in report
    first = grouping.splits[0]
    names = hierarchy.class_names
    group = "{" + ", ".join(names[c] for c in first.group) + "}"
    half = "{" + ", ".join(names[c] for c in first.halves[0]) + "}"
    assert f"{group} ({first.presence:.0%} of the training images) split into {half}" in report
    assert any(f"{group} (" in line and "split into" in line for line in lines)  # the log says it too
    stored = json.loads((tmp_path / "metrics.json").read_text())["grouping"]
    assert stored["adapted"] is True
    assert stored["splits"][0]["group"] == list(first.group)
    assert RunResult.load(tmp_path / "metrics.json").grouping == grouping


#: Runs whose grouping keeps no level: the changes to ``saturated()`` and the reason the run gives.
FALLBACKS: dict[str, tuple[dict[str, object], str]] = {
    # every pair of garments is in about 87 % of 6-garment scenes: split down to the classes
    "split_to_classes": (
        {"data__items": [6, 6], "method__max_group_presence": 0.8},
        "every level held the same groups as the level below it (every class alone)",
    ),
    # every class is in about 60 % of them: all kept out of the grouping, none left to group
    "all_kept_out": (
        {"data__items": [6, 6], "method__max_class_presence": 0.5},
        "`method.max_class_presence` = 0.5 keeps 10 of the 10 classes out of the grouping",
    ),
}

FallbackRun = tuple[PipelineConfig, Path, RunResult, list[str]]


@pytest.fixture(scope="module")
def fallback_run(
    tmp_path_factory: pytest.TempPathFactory, saturated: Callable[..., PipelineConfig]
) -> Callable[[str], FallbackRun]:
    """``fallback_run(name)``: the run of ``FALLBACKS[name]`` (with the ablation and the ensemble control),
    done once for the module: its config, folder, result and log lines."""
    runs: dict[str, FallbackRun] = {}

    def run(name: str) -> FallbackRun:
        if name not in runs:
            config = saturated(ablation=True, ensemble=True, **FALLBACKS[name][0])
            out, lines = tmp_path_factory.mktemp(name), []
            result = run_pipeline(config, out, progress=False, log=lines.append)
            runs[name] = (config, out, result, lines)
        return runs[name]

    return run


@pytest.mark.parametrize("name", list(FALLBACKS))
def test_no_surviving_level_falls_back_to_the_baseline_and_says_why(
    fallback_run: Callable[[str], FallbackRun], one_thread: None, name: str
) -> None:
    _, tmp_path, result, lines = fallback_run(name)
    reason = FALLBACKS[name][1]
    assert result.hierarchy is None
    assert result.grouping is not None
    assert result.grouping.fallback is not None
    assert reason in result.grouping.fallback
    # no level model: the base classifier and the ensemble control's partner only
    assert set(result.histories) == {ModelKey("base"), ModelKey("ensemble")}
    assert [v.name for v in result.variants] == ["baseline", "ensemble", "grouping", "full"]
    for name in ("grouping", "full"):  # the Eq. 6 rows are the baseline maps
        assert (
            result.curves["test"][result.variant(name).variant]
            == result.curves["test"][result.variant("baseline").variant]
        )
    assert result.group_presence == {}
    assert any("no group level left" in line for line in lines)
    report = (tmp_path / "report.md").read_text()
    assert "**No group level is left**" in report
    assert reason in report
    assert "(no group level: the baseline maps)" in report
    assert not (tmp_path / "hierarchy.json").exists()
    assert reason in (tmp_path / "hierarchy.txt").read_text()
    stored = json.loads((tmp_path / "metrics.json").read_text())
    assert stored["hierarchy"] is None
    assert reason in stored["grouping"]["fallback"]
    assert RunResult.load(tmp_path / "metrics.json").to_json() == stored


def test_a_fallback_run_resumes_from_its_marker(
    fallback_run: Callable[[str], FallbackRun], one_thread: None
) -> None:
    config, tmp_path, first, _ = fallback_run("split_to_classes")
    lines: list[str] = []
    again = run_pipeline(config, tmp_path, progress=False, log=lines.append)
    assert not any("split into" in line for line in lines)  # the stage was not redone
    assert any("base: up to date, loaded" in line for line in lines)
    assert again.grouping == first.grouping
    assert again.hierarchy is None
    assert "**No group level is left**" in (tmp_path / "report.md").read_text()


def test_the_command_line_run_of_the_recommended_preset_never_stops_on_saturated_groups(
    tmp_path: Path, saturated: Callable[..., PipelineConfig], one_thread: None
) -> None:
    config_file = tmp_path / "scenes.json"
    config_file.write_text(json.dumps(saturated(data__items=[6, 6]).to_dict()))
    out = tmp_path / "run"
    assert main(["run", str(config_file), "--preset", "recommended", "--out", str(out)]) == 0
    assert "## How the grouping adapted" in (out / "report.md").read_text()


# ------------------------------------------------------------------------------------ without training
def test_kept_out_levels_are_trimmed_raised_or_none() -> None:
    # classes 0 and 1 are in every image, the others in one of four
    labels = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 0, 1, 0], [1, 1, 0, 0, 1], [1, 1, 0, 0, 0]])
    names = tuple("abcde")
    lines: list[str] = []
    assert _kept_out(0.9, (3, 2), labels, names, lines.append) == ([0, 1], (3,), None)
    assert "levels [3, 2] -> [3]: a level needs more groups than the kept-out classes" in lines[-1]
    # no level above the 2 kept-out classes: 2 more groups each, below the 5 classes
    assert _kept_out(0.9, (2, 1), labels, names, lines.append) == ([0, 1], (4, 3), None)
    assert "levels [2, 1] -> [4, 3]: every level had no more groups than the 2 kept-out classes" in lines[-1]
    singletons, levels, reason = _kept_out(0.2, (2,), labels, names, lines.append)
    assert (singletons, levels) == ([0, 1, 2, 3, 4], ())
    assert reason is not None
    assert "keeps 5 of the 5 classes out of the grouping, which leaves 0 classes to group" in reason
    assert _kept_out(None, (2,), labels, names, lines.append) == ([], (2,), None)
    assert torch.equal(labels[:, 0], torch.ones(4, dtype=torch.long))  # labels not modified


def test_variants_without_a_hierarchy_have_no_two_branch_or_level_row() -> None:
    config = PipelineConfig(device="cpu")
    hierarchy = ClassHierarchy([[0, 0, 1]])
    assert [v.name for v in variants_of(config, hierarchy)] == [
        "baseline",
        "ensemble",
        "two_branch",
        "grouping",
        "full",
        "level_1",
    ]
    assert [v.name for v in variants_of(config, None)] == ["baseline", "ensemble", "grouping", "full"]
    single = config.replace(method__branches=1, ensemble=False)
    assert [v.name for v in variants_of(single, None)] == ["baseline", "grouping"]


def _adaptation(**changes: object) -> GroupingAdaptation:
    split = GroupSplit(1, (0, 1, 2), 0.95, ((0,), (1, 2)), (0.5, 0.75))
    record = GroupingAdaptation(
        ("a", "b", "c", "d"), (2,), (2,), (), 0.9, 0.9, splits=(split,), removed_levels=(), dropped_levels=()
    )
    return GroupingAdaptation(**{**record.__dict__, **changes})  # type: ignore[arg-type]


def test_the_adaptation_record_reads_back_and_reads_out() -> None:
    record = _adaptation()
    assert GroupingAdaptation.from_json(json.loads(json.dumps(record.to_json()))) == record
    assert record.adapted
    assert record.notes() == [
        "level 1 (2 groups): {a, b, c} (95% of the training images) split into {a} (50%) and {b, c} (75%)"
    ]
    assert not _adaptation(splits=()).adapted
    assert _adaptation(splits=(), levels=(3,), kept_out=(3,), requested_levels=(1,)).notes() == [
        "kept out of the grouping (in more than 90% of the training images): d",
        "levels [1] -> [3]: every level had no more groups than the 1 kept-out classes; each got 1 more (the "
        "kept-out classes alone, and the groups asked for the others)",
    ]
    dropped = _adaptation(dropped_levels=(1,), fallback="reason").saturation_notes()
    assert dropped[1] == (
        "level 1 (2 groups) dropped: after splitting, a class grouped alone is still present in more than "
        "90% of the training images"
    )
    assert dropped[2].startswith("no group level left (reason): the method falls back to the baseline")
    with pytest.raises(ValueError, match="expected a list of integers"):
        GroupingAdaptation.from_json({**record.to_json(), "levels": ["2"]})


def _result(variant_names: list[str], grouping: GroupingAdaptation | None, miou: float = 0.4) -> RunResult:
    """A small finished result with the given rows (every figure ``miou`` or 0.5)."""
    scores = {"val": SplitScores(miou, 0.5, miou, 0.5), "test": SplitScores(miou, 0.5, miou, 0.5)}
    curve = ThresholdCurve((miou, miou), (0.5, 0.5))
    variants = [Variant.from_name(name) for name in variant_names]
    return RunResult(
        thresholds=(0.15, 0.5),
        threshold=0.15,
        variants={v: VariantScores(v, 0.15, scores) for v in variants},
        curves={split: dict.fromkeys(variants, curve) for split in ("val", "test")},
        classification_map={split: {ModelKey("base"): 0.75} for split in ("val", "test")},
        branch_correlation={"val": {}, "test": {}},
        rest_reduction="max",
        fusion_weights=FusionWeights((1.0, 1.0, 1.0)),
        hierarchy=None if grouping is not None and grouping.fallback else ClassHierarchy([[0, 0, 1, 2]]),
        group_presence={},
        histories={ModelKey("base"): [{"epoch": 1.0, "val_map": 0.75}]},
        grouping=grouping,
    )


def test_a_bench_whose_seeds_adapt_differently_aggregates_every_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, saturated: Callable[..., PipelineConfig]
) -> None:
    import hiercam.pipeline.run as run_module

    # seed 0 keeps its group level, seed 1 falls back (no level row)
    runs = {
        0: _result(["baseline", "full", "level_1"], _adaptation(), miou=0.4),
        1: _result(["baseline", "full"], _adaptation(splits=(), fallback="no room"), miou=0.2),
    }
    monkeypatch.setattr(run_module, "run_pipeline", lambda config, *_, **__: runs[config.seed])
    result = run_module.run_bench(saturated(), [0, 1], tmp_path, log=lambda _: None)
    level = result["variants"]["level_1"]["test"]["miou"]
    assert level["mean"] == pytest.approx(0.4)
    assert math.isnan(level["values"][1])
    assert math.isnan(result["variants"]["level_1"]["threshold"][1])
    stored = json.loads((tmp_path / "bench.json").read_text())["variants"]["level_1"]
    assert stored["test"]["miou"]["values"] == [pytest.approx(0.4), None]  # NaN is null in bench.json
    assert result["variants"]["full"]["test"]["miou"]["mean"] == pytest.approx(0.3)
    assert "level 1 model alone" in (tmp_path / "bench.md").read_text()


def test_a_result_without_hierarchy_gives_its_class_names_and_a_report(
    tmp_path: Path, saturated: Callable[..., PipelineConfig]
) -> None:
    fallback = _adaptation(splits=(), fallback="no room")
    result = _result(["baseline", "full"], fallback)
    assert result.class_names == ("a", "b", "c", "d")
    back = RunResult.from_json(json.loads(json.dumps(result.to_json())))
    assert back.hierarchy is None
    assert back.grouping == fallback
    report = write_report(saturated(), result, tmp_path).read_text()
    assert "Levels (4,) (no group level: see below)" in report
    assert "- no group level left (no room)" in report
    assert "both: two-branch + grouping, Eq. 6 (no group level: the baseline maps)" in report
    result.grouping = None
    with pytest.raises(ValueError, match="its class names are unknown"):
        _ = result.class_names
