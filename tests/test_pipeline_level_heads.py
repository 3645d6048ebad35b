"""The pipeline's level-heads option (``method.level_heads``, preset ``level_heads``): row ``heads``.

Oracle: the cached maps and the row's fused maps are recomputed from the saved ``LevelHeadsNet`` with the
public ``level_heads_maps`` and ``fuse_hierarchy``, and the images' own upsampling and max-normalisation.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import hiercam
from hiercam.cam import level_heads_maps
from hiercam.hierarchy import ClassHierarchy
from hiercam.models import LevelHeadsNet
from hiercam.pipeline import (
    PRESETS,
    ConfigError,
    PipelineConfig,
    RunResult,
    Variant,
    apply_preset,
    demo_config,
    run_pipeline,
)
from hiercam.pipeline.artifacts import load_tensors
from hiercam.pipeline.context import RunContext
from hiercam.pipeline.data import load_split
from hiercam.pipeline.evaluation import variant_maps, variants_of
from hiercam.pipeline.keys import ModelKey
from hiercam.pipeline.networks import backbone_factory
from hiercam.pipeline.results import ExtractedMaps, ModelMaps
from hiercam.pipeline.stages import (
    build_hierarchy,
    ensemble_size,
    train_base,
    train_levels,
    train_shuffled_levels,
)

_HEADS, _SHUFFLED = ModelKey("level_heads"), ModelKey("shuffled_level_heads")


@pytest.fixture(scope="module")
def heads_run(
    tmp_path_factory: pytest.TempPathFactory, quick_config: Callable[..., PipelineConfig]
) -> tuple[PipelineConfig, Path, RunResult]:
    """Preset ``level_heads``, levels 10 -> 4 -> 2, the ensemble and the shuffled control."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("level_heads")
    config = apply_preset(quick_config(shuffled_control=True), "level_heads")
    return config, out, run_pipeline(config, out, progress=False, log=lambda _: None)


def saved_net(config: PipelineConfig, out: Path, hierarchy: ClassHierarchy, key: str) -> LevelHeadsNet:
    """A fresh ``LevelHeadsNet`` with the weights the run saved under the content key ``key``."""
    net = LevelHeadsNet(backbone_factory(config.model, config.data.input_norm)(), hierarchy)
    (weights,) = (out / "models").glob(f"*-{key[:16]}.pt")
    net.load_state_dict(load_tensors(weights))
    return net.eval()


def test_heads_row_is_the_method_in_metrics_and_report(heads_run) -> None:
    config, out, result = heads_run
    assert config.method.level_heads
    assert config.method.branches == 1
    names = [v.name for v in result.variants]
    assert names[:4] == ["baseline", "ensemble", "heads", "shuffled"]
    assert "grouping" not in names
    assert names[4:] == ["level_1", "level_2"]
    kinds = sorted(key.name for key in result.histories)
    assert kinds == ["base", "ensemble", "level_heads", "shuffled_level_heads"]  # no single_L<l> model
    assert ensemble_size(config, result.hierarchy) == 2
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"heads", "shuffled", "ensemble"} <= set(metrics["variants"])
    assert {"level_heads", "shuffled_level_heads"} <= set(metrics["histories"])
    report = (out / "report.md").read_text()
    assert f"| {Variant('heads').description} |" in report
    assert "the level-heads method trains one model" in report
    assert "over the heads of one LevelHeadsNet trained on a shuffled hierarchy" in report
    assert RunResult.load(out / "metrics.json").variants.keys() == result.variants.keys()


def test_heads_maps_are_level_heads_maps_of_the_saved_net_fused(heads_run) -> None:
    config, out, result = heads_run
    ctx = RunContext(config, out, progress=False, log=lambda _: None)
    hierarchy, key = build_hierarchy(ctx, train_base(ctx))
    assert hierarchy == result.hierarchy
    trained = train_levels(ctx, hierarchy, key)[_HEADS]  # loaded from the run's cache
    net = saved_net(config, out, hierarchy, trained.content_key)
    test = load_split(config, "test")
    rows, images, labels, *_ = next(test.batches(len(test)))
    base, levels = level_heads_maps(net, images, hierarchy, size="feature", normalize=None)

    (cache,) = (out / "cams").glob("test-*.pt")
    stored = load_tensors(cache)
    cached = stored["level_heads/maps"].float()
    torch.testing.assert_close(cached, torch.cat([base, *levels], 1), rtol=2e-3, atol=2e-3)
    with torch.no_grad():
        torch.testing.assert_close(stored["level_heads/logits"], net(images)[0])

    size = (int(images.shape[-2]), int(images.shape[-1]))

    def upsample(maps: torch.Tensor) -> torch.Tensor:  # from the cached float16 maps, as the pipeline
        resized = F.interpolate(maps.half().float(), size=size, mode="bilinear", align_corners=False)
        return hiercam.normalize_maps(resized)

    expected = hiercam.fuse_hierarchy(
        upsample(base), [upsample(m) for m in levels], hierarchy, labels, rest_reduction="max"
    )
    extracted = ExtractedMaps.from_tensors(stored, cache)
    ((variant, got),) = variant_maps(extracted, rows, hierarchy, labels, size, [Variant("heads")], "max")
    assert variant == Variant("heads")
    torch.testing.assert_close(got, expected, rtol=1e-2, atol=1e-2)
    baseline = dict(variant_maps(extracted, rows, hierarchy, labels, size, [Variant("baseline")], "max"))
    assert not torch.allclose(got, baseline[Variant("baseline")], atol=1e-2)  # not the base classifier's


def test_shuffled_control_is_a_level_heads_net_with_its_own_cache_key(heads_run) -> None:
    config, out, result = heads_run
    ctx = RunContext(config, out, progress=False, log=lambda _: None)
    hierarchy, key = build_hierarchy(ctx, train_base(ctx))
    real = train_levels(ctx, hierarchy, key)
    shuffled = train_shuffled_levels(ctx, hierarchy)
    assert set(real) == {_HEADS}
    assert set(shuffled) == {_SHUFFLED}
    assert isinstance(shuffled[_SHUFFLED].model, LevelHeadsNet)
    assert shuffled[_SHUFFLED].content_key != real[_HEADS].content_key
    assert shuffled[_SHUFFLED].model.level_sizes == hierarchy.level_sizes  # the same group sizes
    assert len(list((out / "models").glob("level_heads-*.pt"))) == 2  # the real and the shuffled net
    assert result.variants[Variant("shuffled")].splits["test"].miou >= 0


def test_heads_row_is_the_baseline_when_the_grouping_fell_back(
    quick_config: Callable[..., PipelineConfig],
) -> None:
    base = ModelMaps(torch.rand(3, 4, 5, 5), torch.rand(3, 4))
    extracted = ExtractedMaps(torch.ones(3, 4), {ModelKey("base"): base})
    rows, labels = torch.arange(3), torch.ones(3, 4)
    wanted = [Variant("heads"), Variant("baseline")]
    maps = dict(variant_maps(extracted, rows, None, labels, (10, 10), wanted, "max"))
    torch.testing.assert_close(maps[Variant("heads")], maps[Variant("baseline")])
    config = apply_preset(quick_config(), "level_heads")
    assert [v.name for v in variants_of(config, None)] == ["baseline", "ensemble", "heads"]


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"method__branches": 2}, "method.branches"),
        ({"method__multiscale": (1.0, 2.0)}, "method.multiscale"),
        ({"method__flip": True}, "method.flip"),
        ({"method__softmax_over_labels": True}, "method.softmax_over_labels"),
    ],
)
def test_level_heads_refuses_what_it_cannot_run(
    quick_config: Callable[..., PipelineConfig], changes: dict[str, object], key: str
) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        quick_config(**{"method__branches": 1, "method__level_heads": True, **changes})


def test_level_heads_preset_is_single_branch_with_level_heads() -> None:
    preset = PRESETS["level_heads"].method
    assert preset == {**PRESETS["single_branch"].method, "level_heads": True}
    assert "LevelHeadsNet" in PRESETS["level_heads"].description
    assert "level_heads" not in PRESETS["recommended"].method
    config = apply_preset(demo_config(), "level_heads")
    assert config.method.level_heads
    assert config.method.branches == 1
    assert not apply_preset(config, "paper").method.level_heads  # the paper's settings reset it
    assert not PipelineConfig().method.level_heads
