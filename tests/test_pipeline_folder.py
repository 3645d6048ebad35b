"""The pipeline on your own segmentation folder: its names in every table and file, [H, W] images, the config
checked against the folder's classes, and classes absent from training refused with their names."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from hiercam import ClassHierarchy
from hiercam.datasets import MSRC21_CLASSES
from hiercam.pipeline import ConfigError, PipelineConfig, RunResult, load_config, run_pipeline
from hiercam.pipeline.data import class_names, load_split

SCORED = ("road", "car", "person", "bicycle")  # the street folder's classes without sign (background)


def _folder_config(root: Path, **data: Any) -> PipelineConfig:
    return PipelineConfig.from_dict(
        {
            "device": "cpu",
            "ensemble": False,
            "data": {
                "dataset": "folder",
                "root": str(root),
                "image_size": [48, 64],
                "min_box_area": 4,
                **data,
            },
            "model": {"width": 4, "norm": "group"},
            "train": {"epochs": 1, "batch_size": 8},
            "method": {"levels": [2]},
            "evaluation": {"wsol": False, "faithfulness_images": 0},
        }
    )


@pytest.fixture(scope="module")
def street_root(tmp_path_factory: pytest.TempPathFactory, street_writer: Callable[..., Path]) -> Path:
    return street_writer(tmp_path_factory.mktemp("street"))


@pytest.fixture(scope="module")
def folder_run(street_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[PipelineConfig, Path]:
    """One run on the street folder (sign as background; 1 epoch, tiny models), shared by the tests below."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    config = _folder_config(street_root, background_classes=["sign"])
    out = tmp_path_factory.mktemp("run")
    run_pipeline(config, out, progress=False, log=lambda _: None)
    torch.set_num_threads(threads)
    return config, out


def test_the_report_and_hierarchy_use_the_folder_names(folder_run: tuple[PipelineConfig, Path]) -> None:
    config, out = folder_run
    assert class_names(config) == SCORED
    hierarchy = ClassHierarchy.load(out / "hierarchy.json")
    assert hierarchy.class_names == SCORED
    assert hierarchy.level_sizes == (4, 2)
    text = (out / "hierarchy.txt").read_text()
    report = (out / "report.md").read_text()
    for name in SCORED:
        assert name in text
        assert name in report
    msrc_only = set(MSRC21_CLASSES) - set(SCORED)  # "car", "bicycle"... are MSRC names too
    assert not any(f" {name}" in text for name in msrc_only)
    assert "Dataset `folder` at" in report
    assert "of 48 x 64 px" in report
    metrics = json.loads((out / "metrics.json").read_text())
    assert "baseline" in json.dumps(metrics)
    assert (out / "figures" / "cams.png").is_file() or not _has_matplotlib()


def _has_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:  # pragma: no cover - matplotlib is a test dependency
        return False
    return True


def test_splits_are_non_square_with_background_label(folder_run: tuple[PipelineConfig, Path]) -> None:
    config, _ = folder_run
    split = load_split(config, "val")
    _, images, labels, masks, _ = next(split.batches(4))
    assert images.shape == (4, 3, 48, 64)
    assert masks.shape == (4, 48, 64)
    assert labels.shape == (4, 4)
    assert split.scored_labels == (0, 1, 2, 3, 4)  # sign is the background, label 0
    assert (masks[0, 4:12, 50:58] == 0).all()  # v0's sign rectangle


def test_a_class_absent_from_training_is_refused_by_name(street_root: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"the class 'sign' is present in no training image"):
        run_pipeline(_folder_config(street_root), tmp_path, progress=False, log=lambda _: None)


def test_a_toml_config_with_h_w(street_root: Path, tmp_path: Path) -> None:
    path = tmp_path / "street.toml"
    path.write_text(
        f'[data]\ndataset = "folder"\nroot = "{street_root}"\nimage_size = [48, 64]\n'
        'background_classes = ["sign"]\n[method]\nlevels = [2]\n'
    )
    config = load_config(path)
    assert config.data.image_size == (48, 64)
    assert config.data.background_classes == ("sign",)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"background_classes": ["grass"]}, "unknown class(es) 'grass'; the classes are road, car, person"),
        ({"background_classes": "stuff"}, "names MSRC-21's classes"),
        ({"background_classes": ["road", "car", "person", "bicycle"]}, "at least two classes to score"),
        ({"min_pixels": 0}, "`data.min_pixels` must be >= 1"),
        ({"min_fraction": 1.0}, "`data.min_fraction` must be in [0, 1)"),
        ({"image_size": [48, 0]}, "`data.image_size` must be >= 1"),
    ],
)
def test_folder_keys_are_checked_against_the_folder(
    street_root: Path, data: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        _folder_config(street_root, **data)
    assert message in str(info.value)


def test_a_folder_without_classes_json(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"`data.root`: .*classes\.json not found"):
        _folder_config(tmp_path)


def test_levels_count_the_folder_classes(street_root: Path) -> None:
    with pytest.raises(ConfigError, match="fewer groups than the 4 classes of 'folder'"):
        _folder_config(street_root, background_classes=["sign"]).replace(method__levels=[4])


def test_a_larger_evaluation_size_reads_val_and_test_larger(street_root: Path, tmp_path: Path) -> None:
    """``data.eval_image_size``: training at 48 x 64, validation and test (images, masks, maps) at 96 x 128;
    unset, the cache key of the data is what it was."""
    from hiercam.pipeline.keys import data_key

    config = _folder_config(street_root, background_classes=["sign"], eval_image_size=[96, 128])
    train, val = load_split(config, "train"), load_split(config, "val")
    assert next(train.batches(2))[1].shape[-2:] == (48, 64)
    _, images, _, masks, _ = next(val.batches(4))
    assert images.shape[-2:] == (96, 128)
    assert masks.shape[-2:] == (96, 128)
    assert (masks[0, 8:24, 100:116] == 0).all()  # v0's sign rectangle, twice as large
    plain = _folder_config(street_root, background_classes=["sign"])
    assert "eval_image_size" not in data_key(plain)["data"]
    assert data_key(config) != data_key(plain)
    out = tmp_path / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = run_pipeline(config.replace(ensemble=False), out, progress=False, log=lambda _: None)
    finally:
        torch.set_num_threads(threads)
    assert "evaluated at 96 x 128 px" in (out / "report.md").read_text()
    assert all(0.0 <= scores.splits["test"].miou <= 1.0 for scores in result.variants.values())
    with pytest.raises(ConfigError, match="`data.eval_image_size` applies to 'msrc21' and 'folder' only"):
        PipelineConfig().replace(data__eval_image_size=96)
    with pytest.raises(ConfigError, match="`data.eval_image_size` must be at most 4096"):
        config.replace(data__eval_image_size=[96, 5000])


def test_h_w_sizes_only_for_folders() -> None:
    with pytest.raises(ConfigError, match=r"\[H, W\] applies to 'msrc21' and 'folder' only"):
        PipelineConfig().replace(data__image_size=[48, 64])


# ------------------------------------------------------------------------------- a folder without masks
MASK_FIGURES = (
    "miou",
    "loc_error",
    "miou_at_val_threshold",
    "loc_error_at_val_threshold",
    "max_box_acc",
    "pxap",
)


@pytest.fixture(scope="module")
def no_mask_run(
    tmp_path_factory: pytest.TempPathFactory, street_writer: Callable[..., Path]
) -> tuple[PipelineConfig, Path, list[str]]:
    """One run on the street folder without ``masks/`` (labels from ``image_labels.json``), with WSOL figures,
    tuned fusion weights and deletion / insertion on 2 test images asked for; its log lines kept."""
    root = street_writer(tmp_path_factory.mktemp("street_no_masks"), masks=False)
    config = _folder_config(root, background_classes=["sign"]).replace(
        evaluation__wsol=True,
        evaluation__faithfulness_images=2,
        evaluation__faithfulness_steps=4,
        method__choose_fusion_weights=True,
    )
    out = tmp_path_factory.mktemp("run_no_masks")
    lines: list[str] = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_pipeline(config, out, progress=False, log=lines.append)
    finally:
        torch.set_num_threads(threads)
    return config, out, lines


def test_without_masks_every_mask_figure_is_null_not_100_percent(
    no_mask_run: tuple[PipelineConfig, Path, list[str]],
) -> None:
    _, out, _ = no_mask_run
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["has_masks"] is False
    assert "full_tuned" not in metrics["fusion_weights"]  # no mIoU to tune the weights on
    assert len(metrics["variants"]) >= 3
    for name, entry in metrics["variants"].items():
        assert entry["threshold"] is None, name  # t*: nothing chose it
        for split in ("val", "test"):
            for figure in MASK_FIGURES:
                assert entry[split][figure] is None, (name, split, figure)
        # deletion / insertion need no mask: measured on the test images
        assert 0.0 <= entry["test"]["deletion"] <= 1.0
        assert 0.0 <= entry["test"]["insertion"] <= 1.0
        assert entry["val"]["deletion"] is None
    for split in ("val", "test"):
        for curve in metrics["scores"][split].values():
            assert set(curve["miou"]) == {None}
            assert set(curve["loc_error"]) == {None}
    result = RunResult.load(out / "metrics.json")
    assert result.has_masks is False
    assert all(math.isnan(scores.threshold) for scores in result.variants.values())


def test_without_masks_the_report_says_so_once_and_reads_n_a(
    no_mask_run: tuple[PipelineConfig, Path, list[str]],
) -> None:
    _, out, lines = no_mask_run
    report = (out / "report.md").read_text()
    assert report.count("The dataset has no masks: mask metrics skipped.") == 1
    table = [line for line in report.splitlines() if line.startswith("| ") and "baseline" in line]
    assert table
    first = table[0].split(" | ")
    # val/test mIoU, val/test LocErr, t*, test mIoU@t*, LocErr@t*, MaxBoxAccV2, PxAP: n/a (LocErr was 100.00)
    assert first[1:10] == ["n/a"] * 9
    assert "100.00" not in report
    assert "## Localisation without a threshold" not in report  # its table would be all n/a
    assert any("mask metrics skipped" in line for line in lines)
    assert not any(line.startswith("  scoring ") for line in lines)  # the mIoU pass did not run


def test_the_faithfulness_stage_logs_its_progress_and_the_report_its_time(
    no_mask_run: tuple[PipelineConfig, Path, list[str]],
) -> None:
    _, out, lines = no_mask_run
    metrics = json.loads((out / "metrics.json").read_text())
    variants = len(metrics["variants"])
    expected = (
        rf"  deletion / insertion, 2 images x {variants} variants \(test\): {2 * variants} maps in .* s"
    )
    assert [line for line in lines if re.fullmatch(expected, line)], lines
    assert not any("deletion / insertion" in line and "(val)" in line for line in lines)
    report = (out / "report.md").read_text()
    assert "## Stage times" in report
    run = json.loads((out / "run.json").read_text())
    for step in ("stage1_base_and_hierarchy", "stage3_cams", "stage4_evaluation", "stage4_faithfulness"):
        assert step in run["seconds"]
        assert f"| `{step}` | {run['seconds'][step]:.1f} |" in report
    assert re.search(
        r"\| 4\. of which deletion and insertion \| `stage4_faithfulness` \| [\d.]+ \| \d+% \|", report
    )
    assert "| whole run | `total` |" in report
    # the parts of stage 4 are within it
    parts = sum(
        run["seconds"].get(f"stage4_{p}", 0.0) for p in ("fusion_weights", "scoring", "wsol", "faithfulness")
    )
    assert parts <= run["seconds"]["stage4_evaluation"]


def test_with_masks_no_note_and_stage_times(folder_run: tuple[PipelineConfig, Path]) -> None:
    _, out = folder_run
    report = (out / "report.md").read_text()
    assert "no masks" not in report
    assert "## Stage times" in report
    assert json.loads((out / "metrics.json").read_text())["has_masks"] is True
