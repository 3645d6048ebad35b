"""The pipeline's method options beyond the paper: single-branch level models and the CAM refinements.

Oracles: the maps the pipeline caches are recomputed from the trained models it saved with the public
extractors (``GradCAM``, ``MultiScaleCAM``, ``softmax_over=``); the variants and models are checked by name.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import hiercam
from hiercam.pipeline import ConfigError, PipelineConfig, RunResult, apply_preset, demo_config, run_pipeline
from hiercam.pipeline.artifacts import load_tensors
from hiercam.pipeline.data import load_split
from hiercam.pipeline.keys import ModelKey
from hiercam.pipeline.networks import build_classifier
from hiercam.pipeline.results import ExtractedMaps
from hiercam.pipeline.run import _read_seed_record, _write_seed_record


@pytest.fixture(scope="module")
def refined_run(
    tmp_path_factory: pytest.TempPathFactory, quick_config: Callable[..., PipelineConfig]
) -> tuple[PipelineConfig, Path, RunResult]:
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("refined")
    config = apply_preset(quick_config(method__levels=(4,)), "refined")
    config = config.replace(method__multiscale=(1.0, 2.0), method__flip=True)
    return config, out, run_pipeline(config, out, progress=False, log=lambda _: None)


def test_single_branch_runs_train_no_two_branch_model(refined_run) -> None:
    _, _, result = refined_run
    assert set(result.histories) == {ModelKey("base"), ModelKey("ensemble"), ModelKey("single", 1)}
    assert [v.name for v in result.variants] == ["baseline", "ensemble", "grouping", "level_1"]
    assert result.branch_correlation["test"] == {}


@pytest.mark.parametrize("model_name", ["base", "single_L1"])
def test_cached_maps_are_the_refined_extractors_maps(refined_run, model_name: str) -> None:
    config, out, result = refined_run
    (cache,) = (out / "cams").glob("test-*.pt")
    extracted = ExtractedMaps.from_tensors(load_tensors(cache), cache)
    identity = ModelKey.from_name(model_name)
    (weights,) = (out / "models").glob(f"{model_name}-*.pt")
    groups = result.hierarchy.num_groups(identity.level)
    model = build_classifier(config.model, groups, 0, input_norm=config.data.input_norm)
    model.load_state_dict(load_tensors(weights))
    model.eval()
    cam = hiercam.MultiScaleCAM(hiercam.GradCAM(model), scales=(1.0, 2.0), flip=True)
    split = load_split(config, "test")
    _, images, labels, *_ = next(split.batches(16))
    present = result.hierarchy.remap_labels(labels, identity.level) if identity.level else labels
    feature = hiercam.GradCAM(model)(images[:1], size="feature").shape[-1]
    expected = cam(images, size=(2 * feature, 2 * feature), normalize=None, softmax_over=present)
    got = extracted.models[identity].maps[:16].float()
    assert got.shape[-1] == 2 * feature  # kept at the largest scale's resolution
    scale = expected.abs().amax()
    torch.testing.assert_close(got, expected, rtol=2e-3, atol=2e-3 * float(scale))
    plain = hiercam.GradCAM(model)(images, size=(2 * feature, 2 * feature), normalize=None)
    assert not torch.allclose(plain, expected, atol=1e-3 * float(scale))  # the option did something


def test_branches_must_be_one_or_two() -> None:
    base = demo_config(quick=True).to_dict()
    for bad in (True, 3, 2.0, "1"):
        base["method"]["branches"] = bad
        with pytest.raises(ConfigError, match="branches"):
            PipelineConfig.from_dict(base)


def test_tuned_fusion_needs_two_branch_models(quick_config: Callable[..., PipelineConfig]) -> None:
    with pytest.raises(ConfigError, match="choose_fusion_weights"):
        apply_preset(quick_config(), "single_branch").replace(method__choose_fusion_weights=True)


def test_a_seed_record_from_before_a_field_existed_is_read_back(refined_run, tmp_path: Path) -> None:
    config, _, result = refined_run
    path = tmp_path / "seed_0.json"
    _write_seed_record(path, config, result)
    data = json.loads(path.read_text())
    del data["config"]["method"]["branches"]  # a record written before the field existed...
    path.write_text(json.dumps(data))
    assert _read_seed_record(path, config) is None  # ...made with 1 is not this config's
    default = config.replace(method__branches=2, ablation=True)
    data["config"] = default.to_dict()
    del data["config"]["method"]["branches"]
    path.write_text(json.dumps(data))
    assert _read_seed_record(path, default) is not None  # the default it had then is read back


def test_multiscale_extraction_batches_keep_a_plain_batchs_memory() -> None:
    from hiercam.pipeline.stages.extraction import _extraction_batch

    assert _extraction_batch(None, False) == 64
    assert _extraction_batch((1.0, 0.5, 1.5, 2.0), True) == 8  # scale 2: 4x the pixels, and the mirror images
    assert _extraction_batch((0.5,), False) == 64
    assert _extraction_batch((16.0,), True) == 1


def test_largest_labelled_class_counts_only_the_images_classes() -> None:
    from hiercam.pipeline.figures import largest_labelled_class

    mask = torch.tensor([[1, 1, 1], [2, 2, 0], [3, 255, 0]])  # class 0: 3 pixels, class 1: 2, class 2: 1
    assert largest_labelled_class(torch.tensor([1, 1, 1]), mask) == 0
    assert largest_labelled_class(torch.tensor([0, 1, 1]), mask) == 1  # class 0 is not labelled
    assert largest_labelled_class(torch.tensor([0, 0, 1]), mask) == 2
