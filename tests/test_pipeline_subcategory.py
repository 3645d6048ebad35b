"""The pipeline's sub-category option (``method.subcategories``, preset ``subcategory``): SC-CAM's rows.

Oracles: the saved ``SubCategoryNet`` rebuilt from its weights and explained with the public ``GradCAM`` on
its class head; the pooled features recomputed by hand from the base classifier; the sub-categories
recomputed with ``cluster_subcategories``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import hiercam
from hiercam.grouping import cluster_subcategories
from hiercam.models import SubCategoryNet
from hiercam.pipeline import (
    PRESETS,
    ConfigError,
    PipelineConfig,
    RunResult,
    Variant,
    apply_preset,
    run_pipeline,
)
from hiercam.pipeline.artifacts import load_tensors
from hiercam.pipeline.context import RunContext
from hiercam.pipeline.data import load_split
from hiercam.pipeline.evaluation import variant_maps
from hiercam.pipeline.networks import backbone_factory
from hiercam.pipeline.results import ExtractedMaps
from hiercam.pipeline.stages import train_base
from hiercam.pipeline.subcategories import pooled_features, train_subcategories


@pytest.fixture(scope="module")
def subcategory_run(
    tmp_path_factory: pytest.TempPathFactory, tiny_config: Callable[..., PipelineConfig]
) -> tuple[PipelineConfig, Path, RunResult]:
    """Preset ``subcategory`` with the shuffled control, on a tiny FashionScenes run."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("subcategory")
    config = apply_preset(tiny_config(shuffled_control=True), "subcategory").replace(
        method__subcategories=3, method__subcategory_min_size=4
    )
    return config, out, run_pipeline(config, out, progress=False, log=lambda _: None)


def test_rows_models_metrics_and_report(subcategory_run) -> None:
    config, out, result = subcategory_run
    names = [v.name for v in result.variants]
    assert names.index("subcategory") + 1 == names.index("subcategory_shuffled")
    assert {"subcategory", "shuffled_subcategory"} <= {key.name for key in result.histories}
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"subcategory", "subcategory_shuffled"} <= set(metrics["variants"])
    report = (out / "report.md").read_text()
    assert f"| {Variant('subcategory').description} |" in report
    assert "The sub-category row is SC-CAM" in report
    assert "permuted over each class's images" in report
    assert RunResult.load(out / "metrics.json").variants.keys() == result.variants.keys()
    assert config.method.subcategories == 3


def test_row_maps_are_gradcam_of_the_saved_nets_class_head(subcategory_run) -> None:
    config, out, result = subcategory_run
    ctx = RunContext(config, out, progress=False, log=lambda _: None)
    base = train_base(ctx)
    models = train_subcategories(ctx, base)  # loaded from the run's cache
    real = next(model for key, model in models.items() if key.name == "subcategory")
    (weights,) = (out / "models").glob(f"subcategory-{real.content_key[:16]}.pt")
    state = load_tensors(weights)
    sizes = state["net.heads.1.weight"].shape[0]
    net = SubCategoryNet(backbone_factory(config.model, config.data.input_norm)(), 10, sizes)
    net.load_state_dict(state)
    net.eval()
    test = load_split(config, "test")
    rows, images, labels, *_ = next(test.batches(len(test)))
    extractor = hiercam.GradCAM(net.classes(), "net.features")
    expected = extractor(images, size="feature", normalize=None)
    extractor.remove()
    (cache,) = (out / "cams").glob("test-*.pt")
    stored = load_tensors(cache)
    torch.testing.assert_close(stored["subcategory/maps"].float(), expected, rtol=2e-3, atol=2e-3)
    size = (int(images.shape[-2]), int(images.shape[-1]))
    extracted = ExtractedMaps.from_tensors(stored, cache)
    wanted = [Variant("subcategory"), Variant("subcategory_shuffled"), Variant("baseline")]
    got = dict(variant_maps(extracted, rows, result.hierarchy, labels, size, wanted, "max"))
    upsampled = F.interpolate(expected.half().float(), size=size, mode="bilinear", align_corners=False)
    torch.testing.assert_close(
        got[Variant("subcategory")], hiercam.normalize_maps(upsampled), atol=1e-2, rtol=1e-2
    )
    assert not torch.allclose(got[Variant("subcategory")], got[Variant("subcategory_shuffled")], atol=1e-3)
    assert not torch.allclose(got[Variant("subcategory")], got[Variant("baseline")], atol=1e-3)


def test_sub_categories_are_kmeans_of_the_base_classifiers_pooled_features(subcategory_run) -> None:
    config, out, _ = subcategory_run
    ctx = RunContext(config, out, progress=False, log=lambda _: None)
    base = train_base(ctx)
    features, source = pooled_features(ctx, base, "train")
    assert source == "base"  # a network trained from scratch: SC-CAM's own first round
    by_hand = torch.cat(
        [base.model.forward_features(images).mean((2, 3)) for _, images, *_ in ctx.data("train").batches(64)]
    )
    torch.testing.assert_close(features, by_hand.detach(), rtol=1e-5, atol=1e-5)
    labels = ctx.data("train").labels
    sub = cluster_subcategories(by_hand.detach(), labels, clusters=3, min_size=4, seed=0)
    models = train_subcategories(ctx, base)
    for model in models.values():
        assert model.model.net.level_sizes == (10, sub.num_subcategories)  # the class view of the net


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"method__subcategories": -1}, "`method.subcategories` must be >= 0"),
        ({"method__subcategory_min_size": 0}, "`method.subcategory_min_size` must be >= 1"),
        ({"method__subcategories": 2.0}, "method.subcategories"),
        ({"method__subcategory_weight": -1.0}, "`method.subcategory_weight` must be finite and >= 0"),
        ({"method__subcategory_weight": float("nan")}, "`method.subcategory_weight` must be finite and >= 0"),
    ],
)
def test_bad_settings_name_the_key(
    tiny_config: Callable[..., PipelineConfig], changes: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        tiny_config(**changes)


def test_the_weight_reaches_the_loss_and_the_model_key(subcategory_run, monkeypatch) -> None:
    """``method.subcategory_weight`` is the loss's weight and part of the net's content key."""
    from hiercam.pipeline.stages import training

    config, out, _ = subcategory_run
    calls = []
    monkeypatch.setattr(training, "_train", lambda ctx, identity, net, parts, **kw: calls.append((parts, kw)))
    sub = cluster_subcategories(torch.randn(8, 4), torch.eye(2).repeat(4, 1), clusters=2, min_size=2)
    targets = (torch.zeros(1, sub.num_subcategories), torch.zeros(1, sub.num_subcategories))
    for weight in (5.0, 0.5):
        ctx = RunContext(config.replace(method__subcategory_weight=weight), out, progress=False, log=print)
        training.train_subcategory_model(ctx, sub, targets, "key", shuffled=False)
    assert [parts["weight"] for parts, _ in calls] == [5.0, 0.5]
    assert [kw["loss"].weight for _, kw in calls] == [5.0, 0.5]


def test_preset_is_single_branch_with_scams_ten_subcategories(
    tiny_config: Callable[..., PipelineConfig],
) -> None:
    assert "subcategory" in PRESETS
    method = apply_preset(tiny_config(), "subcategory").method
    assert method.subcategories == 10
    assert method.subcategory_min_size == 5
    assert method.subcategory_weight == 5.0  # SC-CAM's
    assert method.branches == 1
    on = tiny_config(method__subcategories=7)
    assert apply_preset(on, "single_branch").method.subcategories == 0  # every other preset turns it off


def test_compare_table_shows_the_sub_category_rows_after_the_method_with_their_nets_map() -> None:
    from hiercam.pipeline.report import compare_markdown, seed_stats

    def bench(values: dict[str, list[float]]) -> dict[str, object]:
        zeros = seed_stats([0.0, 0.0])
        variants = {
            name: {
                "test": {"miou": seed_stats(v), "miou_at_val_threshold": seed_stats(v), "loc_error": zeros}
            }
            for name, v in values.items()
        }
        maps = {
            "base": zeros,
            "subcategory": seed_stats([0.9, 0.8]),
            "shuffled_subcategory": seed_stats([0.7, 0.6]),
        }
        return {
            "variants": variants,
            "classification_map": {"test": maps},
            "branch_cam_correlation": {"test": {}},
        }

    result = {
        "seeds": [0, 1],
        "presets": {
            "subcategory": bench(
                {
                    "baseline": [0.50, 0.52],
                    "grouping": [0.51, 0.53],
                    "subcategory": [0.45, 0.44],
                    "subcategory_shuffled": [0.44, 0.42],
                }
            )
        },
    }
    rows = compare_markdown(result).splitlines()[4:]
    assert [row.split(" | ")[1] for row in rows] == [
        Variant("baseline").description,
        Variant("grouping").description,
        Variant("subcategory").description,
        Variant("subcategory_shuffled").description,
    ]
    assert "| -6.50 ± 2.12 [-8.00, -5.00] | yes |" in rows[2]  # (45 - 50, 44 - 52)
    assert "| 85.00 ± 7.07 [80.00, 90.00] |" in rows[2]  # the sub-category net's own mAP
    assert "| 65.00 ± 7.07 [60.00, 70.00] |" in rows[3]
