"""The pipeline's controls and options around the grouping: the shuffled hierarchy, the n-model ensemble,
grouping sources, and the prototype row (LPCAM).

Oracles: the shuffled hierarchy is ``shuffled_hierarchy(hierarchy, seed)``; the prototype row's cached maps
are recomputed from the saved base classifier with the public ``GradCAM``, ``PrototypeCAM`` and
``prototype_cam``; the grouping sources are checked on labels whose groups can be read off by hand.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import hiercam
from hiercam.datasets import FashionScenes
from hiercam.hierarchy import ClassHierarchy
from hiercam.pipeline import (
    PRESETS,
    ConfigError,
    PipelineConfig,
    RunResult,
    Variant,
    apply_preset,
    bench_config,
    demo_config,
    run_pipeline,
)
from hiercam.pipeline.artifacts import load_tensors
from hiercam.pipeline.context import RunContext
from hiercam.pipeline.data import load_split
from hiercam.pipeline.evaluation import variants_of
from hiercam.pipeline.keys import ModelKey
from hiercam.pipeline.networks import build_classifier
from hiercam.pipeline.prototypes import PROTOTYPE_OPTIONS
from hiercam.pipeline.stages import (
    TrainedModel,
    build_hierarchy,
    ensemble_size,
    train_base,
    train_levels,
    train_shuffled_levels,
)


@pytest.fixture(scope="module")
def single_run(
    tmp_path_factory: pytest.TempPathFactory, quick_config: Callable[..., PipelineConfig]
) -> tuple[PipelineConfig, Path, RunResult]:
    """``single_branch`` with levels 10 -> 4 -> 2, both controls and the prototype row ("others")."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("controls")
    config = apply_preset(quick_config(shuffled_control=True), "prototype")
    return config, out, run_pipeline(config, out, progress=False, log=lambda _: None)


def silent_context(config: PipelineConfig, out: Path) -> RunContext:
    return RunContext(config, out, progress=False, log=lambda _: None)


# ------------------------------------------------------------------------------------------- the controls
def test_single_branch_run_has_both_controls_and_the_prototype_row(single_run) -> None:
    config, out, result = single_run
    levels = result.hierarchy.num_levels - 1
    assert levels == 2
    names = [v.name for v in result.variants]
    assert names[:4] == ["baseline", "ensemble", "grouping", "shuffled"]
    assert "prototype" in names
    ensemble = sorted(key for key in result.histories if key.kind == "ensemble")
    assert ensemble == [ModelKey("ensemble"), ModelKey("ensemble", member=2)]  # base + one per level
    assert ensemble_size(config, result.hierarchy) == 1 + levels
    shuffled = {key for key in result.histories if key.kind == "shuffled_single"}
    assert shuffled == {ModelKey("shuffled_single", 1), ModelKey("shuffled_single", 2)}
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"ensemble", "shuffled", "prototype"} <= set(metrics["variants"])
    assert {"ensemble_2", "shuffled_single_L1", "shuffled_single_L2"} <= set(metrics["histories"])
    report = (out / "report.md").read_text()
    for kind in ("ensemble", "shuffled", "prototype"):
        assert f"| {Variant(kind).description} |" in report  # type: ignore[arg-type]
    assert "averages the Grad-CAMs of 3 single-branch models" in report
    assert RunResult.load(out / "metrics.json").variants.keys() == result.variants.keys()


def test_shuffled_models_have_their_own_cache_keys(single_run) -> None:
    config, out, result = single_run
    ctx = silent_context(config, out)
    base = train_base(ctx)  # every model is loaded from the run's cache
    hierarchy, key = build_hierarchy(ctx, base)
    shuffled_hierarchy = hiercam.shuffled_hierarchy(hierarchy, seed=config.seed)
    assert shuffled_hierarchy != hierarchy
    real = train_levels(ctx, hierarchy, key)
    shuffled = train_shuffled_levels(ctx, hierarchy)
    assert set(shuffled) == {ModelKey("shuffled_single", 1), ModelKey("shuffled_single", 2)}
    assert not {m.content_key for m in real.values()} & {m.content_key for m in shuffled.values()}
    assert len(list((out / "models").glob("single_L1-*.pt"))) == 2  # the real and the shuffled model
    # the control is scored as the method's row: Eq. 6 over the shuffled hierarchy's models
    assert result.variants[Variant("shuffled")].splits["test"].miou >= 0


def test_two_branch_shuffled_control_retrains_two_branch_level_models(
    tmp_path: Path, quick_config: Callable[..., PipelineConfig]
) -> None:
    torch.set_num_threads(1)
    config = quick_config(
        shuffled_control=True, ablation=False, method__levels=(4,), train__epochs=1, data__train_scenes=128
    )
    result = run_pipeline(config, tmp_path, progress=False, log=lambda _: None)
    assert {ModelKey("shuffled_two_branch", 1), ModelKey("two_branch", 1)} <= set(result.histories)
    assert not any(key.kind == "shuffled_single" for key in result.histories)
    assert sum(key.kind in ("base", "ensemble") for key in result.histories) == 2  # the paper's control
    assert [v.name for v in result.variants][:4] == ["baseline", "ensemble", "full", "shuffled"]
    assert "| shuffled-hierarchy control" in (tmp_path / "report.md").read_text()


def test_controls_are_listed_where_configured() -> None:
    hierarchy = ClassHierarchy([[0, 0, 1]])
    config = PipelineConfig(device="cpu")
    assert "shuffled" not in [v.name for v in variants_of(config, hierarchy)]
    on = [v.name for v in variants_of(config.replace(shuffled_control=True), hierarchy)]
    assert on.index("shuffled") == on.index("full") + 1
    assert bench_config().shuffled_control
    assert not demo_config().shuffled_control
    prototype = config.replace(method__prototype_context="own")
    assert [v.name for v in variants_of(prototype, hierarchy)][-2:] == ["prototype", "level_1"]


def test_model_keys_of_the_controls_round_trip() -> None:
    for key in (
        ModelKey("ensemble", member=3),
        ModelKey("shuffled_two_branch", 2),
        ModelKey("shuffled_single", 1),
    ):
        assert ModelKey.from_name(key.name) == key
    assert ModelKey("ensemble", member=1) == ModelKey("ensemble")
    assert repr(ModelKey("ensemble", member=2)) == "ModelKey(kind='ensemble', level=0, member=2)"
    with pytest.raises(ValueError, match="member"):
        ModelKey("base", member=2)
    with pytest.raises(ValueError, match="member"):
        ModelKey("ensemble", member=0)
    with pytest.raises(ValueError, match="not a model name"):
        ModelKey.from_name("ensemble_1")  # member 1 is written "ensemble"
    assert Variant.from_name("shuffled").fused
    assert not Variant("prototype").fused


# ------------------------------------------------------------------------------------------- prototype row
@pytest.mark.filterwarnings("ignore:classes .* have no foreground feature")  # a rare class of the tiny run
def test_prototype_maps_are_lpcam_of_the_saved_base_classifier(single_run) -> None:
    config, out, _result = single_run
    (weights,) = (out / "models").glob("base-*.pt")
    model = build_classifier(config.model, 10, 0, input_norm=config.data.input_norm)
    model.load_state_dict(load_tensors(weights))
    model.eval()
    train = load_split(config, "train")
    gradcam = hiercam.GradCAM(model)
    features, maps, labels = [], [], []
    for _, images, image_labels, *_ in train.batches(64):
        maps.append(hiercam.normalize_maps(gradcam(images, size="feature", normalize=None)))
        with torch.no_grad():
            features.append(model.forward_features(images))
        labels.append(image_labels)
    gradcam.remove()
    cam = hiercam.PrototypeCAM(
        model.classifier.weight.detach(),
        classifier_bias=model.classifier.bias.detach(),
        seed=config.seed,
        **PROTOTYPE_OPTIONS,
    )
    cam.fit(torch.cat(features), torch.cat(maps), torch.cat(labels))
    own = [p.float() for p in cam.class_prototypes_]
    context = [
        torch.cat([c.float(), *(own[j] for j in range(10) if j != k)])
        for k, c in enumerate(cam.context_prototypes_)
    ]
    test = load_split(config, "test")
    with torch.no_grad():
        test_features = torch.cat([model.forward_features(images) for _, images, *_ in test.batches(64)])
    expected = hiercam.prototype_cam(test_features, own, context, normalize=None)
    (cache,) = (out / "cams").glob("prototype-test-*.pt")
    got = load_tensors(cache)["maps"].float()
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=2e-3, atol=2e-3)
    own_only = hiercam.prototype_cam(
        test_features, own, [c.float() for c in cam.context_prototypes_], normalize=None
    )
    assert not torch.allclose(own_only, expected, atol=1e-3)  # the context option did something


def test_prototype_presets_state_their_context() -> None:
    assert PRESETS["prototype"].method["prototype_context"] == "others"
    assert PRESETS["prototype_siblings"].method["prototype_context"] == "siblings"
    assert apply_preset(demo_config(), "prototype").method.branches == 1
    assert apply_preset(apply_preset(demo_config(), "prototype"), "paper").method.prototype_context == "none"


# ------------------------------------------------------------------------------------------ grouping sources
def _paired_labels() -> torch.Tensor:
    """200 images: image ``i`` holds classes ``2 (i % 5)`` and ``2 (i % 5) + 1`` (pairs always together)."""
    labels = torch.zeros(200, 10)
    for i in range(200):
        labels[i, 2 * (i % 5)] = labels[i, 2 * (i % 5) + 1] = 1
    return labels


def _hierarchy_of(
    config: PipelineConfig, out: Path, labels: torch.Tensor
) -> tuple[ClassHierarchy | None, str]:
    ctx = silent_context(config, out)
    ctx._data["train"] = SimpleNamespace(labels=labels)  # type: ignore[assignment]
    base = TrainedModel(ModelKey("base"), nn.Identity(), "no-model", [])
    return build_hierarchy(ctx, base)


def test_cooccurrence_source_groups_the_classes_seen_together(
    tmp_path: Path, quick_config: Callable[..., PipelineConfig]
) -> None:
    config = quick_config(method__levels=(5,), method__grouping_source="cooccurrence")
    hierarchy, _ = _hierarchy_of(config, tmp_path, _paired_labels())
    assert hierarchy is not None
    assert sorted(hierarchy.groups(1)) == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    assert hierarchy.class_names == tuple(FashionScenes.classes)


def test_file_source_uses_the_file_and_keys_the_hierarchy_by_it(
    tmp_path: Path, quick_config: Callable[..., PipelineConfig]
) -> None:
    given = ClassHierarchy(
        [[0, 1, 0, 1, 2, 2, 3, 3, 4, 4], [0, 0, 0, 0, 1, 1, 1, 1, 1, 1]], FashionScenes.classes
    )
    path = given.save(tmp_path / "groups.json")
    config = quick_config(
        method__levels=(5,), method__grouping_source="file", method__hierarchy_file=str(path)
    )
    hierarchy, key = _hierarchy_of(config, tmp_path / "run", _paired_labels())
    assert hierarchy == given  # the file's levels (5, 2), not `method.levels`
    cooccurrence = config.replace(method__grouping_source="cooccurrence", method__hierarchy_file=None)
    other, other_key = _hierarchy_of(cooccurrence, tmp_path / "run", _paired_labels())
    assert other != given
    assert other_key != key
    other_file = ClassHierarchy([[0, 0, 1, 1, 2, 2, 3, 3, 4, 4]], FashionScenes.classes)
    path_two = other_file.save(tmp_path / "other.json")
    third, third_key = _hierarchy_of(
        config.replace(method__hierarchy_file=str(path_two)), tmp_path / "run", _paired_labels()
    )
    assert third == other_file
    assert third_key not in (key, other_key)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "method.hierarchy_file"),
        ("not json", "method.hierarchy_file"),
        (
            ClassHierarchy([[0, 0, 1, 1, 2, 2, 3, 3, 4, 4]]).to_dict(),
            "method.hierarchy_file.*dataset's classes",
        ),
    ],
)
def test_a_bad_hierarchy_file_is_a_config_error_before_training(
    tmp_path: Path, quick_config: Callable[..., PipelineConfig], content, message: str
) -> None:
    path = tmp_path / "groups.json"
    if content is not None:
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    config = quick_config(method__grouping_source="file", method__hierarchy_file=str(path))
    with pytest.raises(ConfigError, match=message):
        run_pipeline(config, tmp_path / "run", progress=False, log=lambda _: None)
    assert not (tmp_path / "run" / "models").exists()  # nothing was trained


def test_hierarchy_file_goes_with_the_file_source(quick_config: Callable[..., PipelineConfig]) -> None:
    with pytest.raises(ConfigError, match="method.hierarchy_file"):
        quick_config(method__grouping_source="file")
    with pytest.raises(ConfigError, match="method.hierarchy_file"):
        quick_config(method__hierarchy_file="groups.json")
    with pytest.raises(ConfigError, match="method.grouping_source"):
        quick_config(method__grouping_source="labels")
    with pytest.raises(ConfigError, match="method.prototype_context"):
        quick_config(method__prototype_context="all")
