from __future__ import annotations

import json
import shutil
import statistics
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from hiercam import ClassHierarchy, HierarchicalKMeans, SmallConvNet, TwoBranchNet
from hiercam.cli import main
from hiercam.pipeline import (
    ConfigError,
    ModelKey,
    PipelineConfig,
    RunResult,
    Variant,
    demo_config,
    load_config,
    run_bench,
    run_pipeline,
)
from hiercam.pipeline.stages import training as stage_module


def png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", header[16:24])
    return width, height


def is_nested(hierarchy: ClassHierarchy) -> bool:
    for level in range(1, hierarchy.num_levels):
        finer = hierarchy.groups(level - 1)
        for group in map(set, hierarchy.groups(level)):
            if set().union(*[set(g) for g in finer if set(g) & group]) != group:
                return False
    return True


def test_quick_demo_writes_every_artifact(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--preset", "paper", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| Grad-CAM baseline (single branch, no grouping) |" in printed
    for name in ("report.md", "metrics.json", "config.json", "run.json", "hierarchy.json", "hierarchy.txt"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics["variants"]) == [
        "baseline",
        "ensemble",
        "two_branch",
        "grouping",
        "full",
        "level_1",
        "level_2",
    ]
    for entry in metrics["variants"].values():
        assert entry["threshold"] in metrics["thresholds"]
        for split in ("val", "test"):
            figures = dict(entry[split])
            assert len(figures.pop("max_box_acc_per_iou")) == 3  # IoU 0.3, 0.5, 0.7
            if split == "val":  # deletion / insertion: on test images only
                assert figures.pop("deletion") is None
                assert figures.pop("insertion") is None
            for value in figures.values():
                assert 0.0 <= value <= 1.0  # fractions
            assert all(0.0 <= v <= 1.0 for v in entry[split]["max_box_acc_per_iou"])
    for split in ("val", "test"):
        for value in metrics["classification_map"][split].values():
            assert 0.0 <= value <= 1.0
    # the typed result reads metrics.json back whole, and writes the same JSON
    result = RunResult.load(out / "metrics.json")
    assert result.to_json() == metrics
    assert [v.name for v in result.variants] == list(metrics["variants"])
    assert result.variant("level_2").variant == Variant("level", 2)
    assert set(result.classification_map["val"]) == {
        ModelKey("base"),
        ModelKey("ensemble"),
        ModelKey("two_branch", 0),
        ModelKey("two_branch", 1),
        ModelKey("two_branch", 2),
        ModelKey("single", 1),
        ModelKey("single", 2),
    }
    # the report prints the stored fractions in percent
    full = result.variant("full").splits["test"]
    assert f"| {100 * full.miou:.2f} |" in (out / "report.md").read_text()
    hierarchy = ClassHierarchy.load(out / "hierarchy.json")
    assert hierarchy.level_sizes == (10, 4, 2)
    assert is_nested(hierarchy)
    assert ClassHierarchy.from_dict(metrics["hierarchy"]) == hierarchy
    sizes = {name: png_size(out / "figures" / name) for name in ("hierarchy.png", "cams.png", "training.png")}
    assert sizes["cams.png"][0] > 600  # 7 panels per row
    assert sizes["cams.png"][1] > 1000  # 8 scenes
    assert sizes["hierarchy.png"][0] > 500
    assert sizes["training.png"][0] > 400
    report = (out / "report.md").read_text()
    assert "M0' = `max`" in report
    assert "figures/cams.png" in report
    run = json.loads((out / "run.json").read_text())
    assert run["seed"] == 0
    assert run["seconds"]["total"] > 0
    assert PipelineConfig.from_dict(json.loads((out / "config.json").read_text())) == demo_config(quick=True)


def figures(result: RunResult) -> dict[str, object]:
    """A run's metrics.json without the training histories (which hold timings)."""
    return {key: value for key, value in result.to_json().items() if key != "histories"}


@pytest.fixture(scope="module")
def tiny_run(
    tmp_path_factory: pytest.TempPathFactory, tiny_config: Callable[..., PipelineConfig]
) -> tuple[PipelineConfig, Path, RunResult]:
    """``tiny_config()`` run once for the module, uninterrupted: its config, folder and result."""
    config, out = tiny_config(), tmp_path_factory.mktemp("whole")
    return config, out, run_pipeline(config, out, progress=False, log=lambda _: None)


def test_an_interrupted_run_resumes_without_redoing_finished_stages(
    tiny_run: tuple[PipelineConfig, Path, RunResult], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config, _, uninterrupted = tiny_run

    def crash(*_args: object, **_kwargs: object) -> None:
        raise KeyboardInterrupt("simulated interruption after stage 1")

    with monkeypatch.context() as patch:
        patch.setattr("hiercam.pipeline.run.train_levels", crash)
        with pytest.raises(KeyboardInterrupt):
            run_pipeline(config, tmp_path / "resumed", progress=False, log=lambda _: None)
    assert (tmp_path / "resumed" / "hierarchy.json").is_file()
    assert not (tmp_path / "resumed" / "metrics.json").exists()

    trained: list[str] = []
    original = stage_module.fit

    def counting_fit(model: torch.nn.Module, *args: object, **kwargs: object) -> object:
        trained.append(type(model).__name__)
        return original(model, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(stage_module, "fit", counting_fit)
    lines: list[str] = []
    resumed = run_pipeline(config, tmp_path / "resumed", progress=False, log=lines.append)
    assert "  base: up to date, loaded" in lines
    assert trained.count("Branch") == 2  # the two single-branch level models; not the base classifier
    assert trained.count("TwoBranchNet") == 3
    assert figures(resumed) == figures(uninterrupted)  # histories hold timings

    trained.clear()
    again = run_pipeline(config, tmp_path / "resumed", progress=False, log=lambda _: None)
    assert trained == []  # everything up to date
    assert figures(again) == figures(uninterrupted)


def test_validation_only_runs_never_touch_test(
    tmp_path: Path, tiny_run: tuple[PipelineConfig, Path, RunResult]
) -> None:
    config, whole, _ = tiny_run
    shutil.copytree(whole / "models", tmp_path / "models")  # the same models, loaded instead of trained
    metrics = run_pipeline(config, tmp_path, progress=False, log=lambda _: None, test=False)
    assert metrics.splits == ("val",)
    assert all(set(scores.splits) == {"val"} for scores in metrics.variants.values())
    assert not list((tmp_path / "cams").glob("test-*"))
    assert "| n/a |" in (tmp_path / "report.md").read_text()


def test_bench_aggregates_the_seeds(tmp_path: Path, tiny_config: Callable[..., PipelineConfig]) -> None:
    result = run_bench(tiny_config(ablation=False), [0, 1], tmp_path, log=lambda _: None)
    per_seed = [json.loads((tmp_path / f"seed_{s}" / "metrics.json").read_text()) for s in (0, 1)]
    values = [run["variants"]["full"]["test"]["miou"] for run in per_seed]
    stats = result["variants"]["full"]["test"]["miou"]
    assert stats["mean"] == pytest.approx(statistics.fmean(values))
    assert stats["std"] == pytest.approx(statistics.stdev(values))
    assert (stats["min"], stats["max"]) == (min(values), max(values))
    assert "± " in (tmp_path / "bench.md").read_text()


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_config_files_load_and_validate(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path / "ok.toml",
            'seed = 3\n[method]\nlevels = [5, 2]\northogonal_weight = 1e-6\nrest_reduction = "mean"\n',
        )
    )
    assert (
        config.seed,
        config.method.levels,
        config.method.orthogonal_weight,
        config.method.rest_reduction,
    ) == (
        3,
        (5, 2),
        1e-6,
        "mean",
    )
    assert load_config(write(tmp_path / "ok.json", json.dumps(config.to_dict()))) == config
    cases = {
        "sede = 1\n": "unknown config key\\(s\\): sede",
        "[method]\nlevel = [4]\n": "unknown config key\\(s\\) in \\[method\\]: level",
        "[method]\nlevels = [4, 6]\n": "`method.levels` must be strictly decreasing",
        "[method]\northogonal_weight = -1e-4\n": (
            "`method.orthogonal_weight` must be a non-negative number, got -0.0001"
        ),
        '[method]\nrest_reduction = "min"\n': (
            "`method.rest_reduction` must be one of 'max', 'mean', 'none', got 'min'"
        ),
        "[train]\nepochs = 0\n": "`train.epochs` must be >= 1, got 0",
        '[train]\nepochs = "5"\n': "`train.epochs` must be an integer",
        '[data]\ndataset = "voc"\n': "`data.root` must name the VOCdevkit folder",
        '[data]\nroot = ""\n': "`data.root` must name a folder or be left out, got an empty string",
        "[method]\nthresholds = [0.1, 1.5]\n": "`method.thresholds\\[1\\]` must be between 0 and 1",
        "[data\n": "cannot parse",
    }
    for text, message in cases.items():
        with pytest.raises(ConfigError, match=message):
            load_config(write(tmp_path / "bad.toml", text))
    with pytest.raises(FileNotFoundError):
        load_config(tmp_path / "missing.toml")


def test_bad_config_on_the_command_line_fails_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stage_module, "fit", lambda *a, **k: pytest.fail("training started"))
    bad = write(tmp_path / "bad.toml", "[method]\nlevels = [3, 3]\n")
    assert main(["run", str(bad), "--out", str(tmp_path / "run")]) == 2
    assert "`method.levels` must be strictly decreasing" in capsys.readouterr().err
    missing = write(tmp_path / "missing.toml", f'[data]\nroot = "{tmp_path / "nowhere"}"\n')
    assert main(["run", str(missing), "--out", str(tmp_path / "run")]) == 2
    assert "nowhere" in capsys.readouterr().err


def test_hierarchy_command_reads_checkpoints(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from torchvision.models import resnet18

    torch.manual_seed(0)
    model = resnet18(num_classes=12)
    torch.save(model.state_dict(), tmp_path / "resnet.pt")
    assert (
        main(
            [
                "hierarchy",
                str(tmp_path / "resnet.pt"),
                "--levels",
                "6",
                "3",
                "--out",
                str(tmp_path / "h.json"),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "ClassHierarchy(12 classes, levels 12 -> 6 -> 3)" in printed
    expected = HierarchicalKMeans((6, 3)).fit(model.fc.weight.detach())
    assert ClassHierarchy.load(tmp_path / "h.json") == expected
    net = TwoBranchNet(lambda: SmallConvNet(width=4), num_classes=6)
    torch.save({"format": "hiercam.fit", "model": net.state_dict()}, tmp_path / "fit.pt")
    names = write(tmp_path / "names.txt", "\n".join(f"c{i}" for i in range(6)))
    assert main(["hierarchy", str(tmp_path / "fit.pt"), "--levels", "2", "--names", str(names)]) == 0
    assert "c0" in capsys.readouterr().out
    assert main(["hierarchy", str(tmp_path / "resnet.pt"), "--levels", "3", "--layer", "layer9"]) == 2
    assert "`layer` 'layer9'" in capsys.readouterr().err
    assert main(["hierarchy", str(tmp_path / "resnet.pt"), "--levels", "12"]) == 2
    assert "`levels` must ask for fewer groups than the 12 classes" in capsys.readouterr().err


def test_beyond_the_paper_options_run_and_are_chosen_on_validation(
    tmp_path: Path, tiny_config: Callable[..., PipelineConfig]
) -> None:
    from hiercam.pipeline.evaluation import FUSION_GRID

    config = tiny_config(
        method__orthogonal_mode="cam",
        method__orthogonal_weight=0.1,
        method__orthogonal_reduction="batchmean",
        method__choose_fusion_weights=True,
        method__levels=(4, 2),
        method__max_group_presence=0.97,
    )
    metrics = run_pipeline(config, tmp_path, progress=False, log=lambda _: None).to_json()
    chosen = metrics["fusion_weights"]["full_tuned"]
    assert tuple(chosen) in FUSION_GRID
    tried = metrics["fusion_weights"]["tried"]
    assert len(tried) == len(FUSION_GRID)
    assert tried[",".join(f"{w:g}" for w in chosen)] == max(tried.values())
    # the tuned variant's validation mIoU at its best threshold is the chosen candidate's
    assert max(metrics["scores"]["val"]["full_tuned"]["miou"]) == pytest.approx(max(tried.values()))
    assert "full_tuned" in metrics["variants"]
    presence = json.loads((tmp_path / "hierarchy_presence.json").read_text())
    hierarchy = ClassHierarchy.load(tmp_path / "hierarchy.json")
    assert all(max(shares) <= 0.97 for shares in presence.values())
    # the oracle: the hierarchy of the saved base classifier, saturated levels dropped by hand
    from hiercam.pipeline.data import load_split

    base = torch.load(next((tmp_path / "models").glob("base-*.pt")), weights_only=True)
    full = HierarchicalKMeans((4, 2), seed=0).fit(
        base["classifier.weight"].float(), class_names=hierarchy.class_names
    )
    targets = load_split(config, "train").labels
    # saturated groups split first, then the levels still saturated dropped
    assert hierarchy == full.split_saturated_groups(targets, 0.97).drop_saturated_levels(targets, 0.97)
    two_branch = json.loads(next((tmp_path / "models").glob("two_branch_L0-*.json")).read_text())
    assert two_branch["history"][0]["train_orthogonal"] > 0
