from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path

import pytest

from hiercam.cli import main
from hiercam.cli.commands import PRESET_NAMES
from hiercam.pipeline import (
    PRESETS,
    ConfigError,
    MethodConfig,
    PipelineConfig,
    Preset,
    apply_preset,
    demo_config,
    run_preset_bench,
)
from hiercam.pipeline.report import compare_markdown, seed_stats


def test_cli_offers_exactly_the_presets() -> None:
    assert set(PRESET_NAMES) == set(PRESETS)


def test_every_preset_names_real_method_fields() -> None:
    names = {f.name for f in fields(MethodConfig)}
    for preset in PRESETS.values():
        assert set(preset.method) <= names
        assert set(preset.pretrained or {}) <= names


def test_recommended_follows_the_setting_of_the_backbone() -> None:
    scratch = apply_preset(demo_config(), "recommended").method
    pretrained = apply_preset(demo_config().replace(model__pretrained=True), "recommended").method
    weights = apply_preset(demo_config().replace(model__weights="unused.pth"), "recommended").method
    # a pretrained backbone gets the prototype design, a network from scratch orthogonal_light's settings
    assert pretrained == weights == apply_preset(demo_config(), "prototype").method
    assert pretrained.prototype_context == "others"
    assert scratch == apply_preset(demo_config(), "orthogonal_light").method
    assert scratch.prototype_context == "none"


def test_paper_preset_restores_the_paper_settings_and_keeps_the_rest() -> None:
    changed = demo_config().replace(
        method__orthogonal_weight=0.5, method__orthogonal_mode="cam", method__levels=(3,), train__epochs=1
    )
    paper = apply_preset(changed, "paper")
    assert paper.method.orthogonal_weight == 1e-4
    assert paper.method.orthogonal_mode == "feature"
    assert paper.method.orthogonal_reduction == "sum"
    assert paper.method.levels == (3,)
    assert paper.train.epochs == 1
    assert changed.method.orthogonal_weight == 0.5  # the caller's config is not modified
    assert apply_preset(demo_config(), "paper") == demo_config()  # the defaults are the paper's


def test_variant_presets_change_only_their_own_settings() -> None:
    paper = apply_preset(demo_config(), "paper").method
    spatial = apply_preset(demo_config(), "spatial").method
    differing = {f.name for f in fields(MethodConfig) if getattr(paper, f.name) != getattr(spatial, f.name)}
    assert differing == {"orthogonal_mode", "orthogonal_reduction", "orthogonal_weight"}


def test_unknown_preset_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="unknown preset 'papr'"):
        apply_preset(demo_config(), "papr")
    with pytest.raises(ConfigError, match="presets"):
        run_preset_bench(demo_config(), [], [0], "unused")


def test_cli_rejects_an_unknown_preset(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["demo", "--quick", "--preset", "papr"])
    assert info.value.code == 2
    assert "invalid choice: 'papr'" in capsys.readouterr().err


def test_preset_bench_shares_the_baseline_and_compares(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_config: Callable[..., PipelineConfig]
) -> None:
    config = tiny_config(ablation=False)
    # a preset whose grouping leaves no level (every group saturated, split down to the classes) still runs:
    # it falls back to the baseline, and says so
    monkeypatch.setitem(PRESETS, "saturated", Preset("every level dropped", {"max_group_presence": 0.01}))
    names = ["paper", "saturated", "fusion_weights"]
    result = run_preset_bench(config, names, [0, 1], tmp_path, log=lambda _: None)
    saturated = result["presets"]["saturated"]["variants"]
    assert saturated["full"]["test"]["miou"] == saturated["baseline"]["test"]["miou"]
    stored = json.loads((tmp_path / "saturated" / "seed_0" / "metrics.json").read_text())
    assert stored["hierarchy"] is None
    assert "every level held the same groups as the level below it" in stored["grouping"]["fallback"]
    paper = result["presets"]["paper"]["variants"]
    tuned = result["presets"]["fusion_weights"]["variants"]
    # the same seeds train the same baseline (through the shared cache): identical figures
    assert paper["baseline"]["test"]["miou"] == tuned["baseline"]["test"]["miou"]
    assert "full_tuned" in tuned
    assert "full_tuned" not in paper
    stored = json.loads((tmp_path / "fusion_weights" / "seed_1" / "metrics.json").read_text())
    assert stored["variants"]["full"]["test"]["miou"] == tuned["full"]["test"]["miou"]["values"][1]
    table = (tmp_path / "compare.md").read_text()
    assert table.count("| paper |") == 3  # baseline, the ensemble control and full
    assert table.count("| fusion_weights |") == 2  # full and full_tuned
    delta = [
        a - b
        for a, b in zip(
            tuned["full"]["test"]["miou"]["values"], tuned["baseline"]["test"]["miou"]["values"], strict=True
        )
    ]
    assert f"{100 * sum(delta) / 2:.2f} ±" in table  # fractions in JSON, points in the table
    assert "| saturated | both: two-branch + grouping, Eq. 6 |" in table
    assert "not run" not in table


def _bench(baseline: list[float], full: list[float]) -> dict[str, object]:
    """A run_bench-shaped result with the given per-seed test mIoU (the other figures: zeros)."""

    stats = seed_stats
    zeros = stats([0.0] * len(baseline))
    variants = {
        name: {
            "test": {
                "miou": stats(values),
                "miou_at_val_threshold": stats([v + 0.01 for v in values]),
                "loc_error": zeros,
            }
        }
        for name, values in (("baseline", baseline), ("full", full))
    }
    return {
        "variants": variants,
        "classification_map": {"test": {"base": zeros, "two_branch_L0": zeros}},
        "branch_cam_correlation": {"test": {"two_branch_L0": zeros}},
    }


def test_compare_table_pairs_each_preset_with_its_own_baseline() -> None:
    result = {
        "seeds": [0, 1],
        "presets": {
            "a": _bench(baseline=[0.10, 0.20], full=[0.13, 0.21]),  # fractions, as in bench.json
            "b": _bench(baseline=[0.10, 0.20], full=[0.09, 0.19]),  # same baseline: not shown again
            "c": _bench(baseline=[0.11, 0.21], full=[0.16, 0.26]),  # retrained baseline: shown
        },
    }
    rows = compare_markdown(result).splitlines()[4:]
    assert [row.split(" | ")[1] for row in rows] == [
        "Grad-CAM baseline (single branch, no grouping)",
        "both: two-branch + grouping, Eq. 6",
        "both: two-branch + grouping, Eq. 6",
        "Grad-CAM baseline (single branch, no grouping)",
        "both: two-branch + grouping, Eq. 6",
    ]
    # Δ per seed: a (3, 1) -> mean 2, std sqrt(2); ranges [13, 21] and [10, 20] overlap
    assert "| 2.00 ± 1.41 [1.00, 3.00] | no |" in rows[1]
    # c against its own baseline: (5, 5), ranges [16, 26] and [11, 21] overlap; at t* the same Δ
    assert rows[4].count("| 5.00 ± 0.00 [5.00, 5.00] | no |") == 2
