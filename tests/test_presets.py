from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import pytest

from hiercam.cli import PRESET_NAMES, main
from hiercam.pipeline import (
    PRESETS,
    ConfigError,
    MethodConfig,
    Preset,
    apply_preset,
    demo_config,
    run_preset_bench,
)

TINY = dict(  # as in test_pipeline.py: a few seconds per run
    data__image_size=48,
    data__train_scenes=96,
    data__val_scenes=32,
    data__test_scenes=32,
    model__width=4,
    train__epochs=1,
    train__batch_size=32,
    ablation=False,
)


def test_cli_offers_exactly_the_presets() -> None:
    assert set(PRESET_NAMES) == set(PRESETS)


def test_every_preset_names_real_method_fields() -> None:
    names = {f.name for f in fields(MethodConfig)}
    for preset in PRESETS.values():
        assert set(preset.method) <= names


def test_paper_preset_restores_the_paper_settings_and_keeps_the_rest() -> None:
    changed = demo_config().replace(
        method__lam=0.5, method__orthogonal_mode="cam", method__levels=(3,), train__epochs=1
    )
    paper = apply_preset(changed, "paper")
    assert paper.method.lam == 1e-4
    assert paper.method.orthogonal_mode == "feature"
    assert paper.method.orthogonal_reduction == "sum"
    assert paper.method.levels == (3,)
    assert paper.train.epochs == 1
    assert changed.method.lam == 0.5  # the caller's config is not modified
    assert apply_preset(demo_config(), "paper") == demo_config()  # the defaults are the paper's


def test_variant_presets_change_only_their_own_settings() -> None:
    paper = apply_preset(demo_config(), "paper").method
    spatial = apply_preset(demo_config(), "spatial").method
    differing = {f.name for f in fields(MethodConfig) if getattr(paper, f.name) != getattr(spatial, f.name)}
    assert differing == {"orthogonal_mode", "orthogonal_reduction", "lam"}


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
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = demo_config(quick=True).replace(**TINY)
    # a preset that the data rules out (every level saturated) is reported and the others still run
    monkeypatch.setitem(PRESETS, "saturated", Preset("every level dropped", {"max_group_presence": 0.01}))
    names = ["paper", "saturated", "fusion_weights"]
    result = run_preset_bench(config, names, [0, 1], tmp_path, log=lambda _: None)
    error = result["presets"]["saturated"]["error"]
    assert error.startswith("`method.max_group_presence` = 0.01 drops every group level")
    assert "more than 1% of the images (raise `method.max_group_presence`)" in error
    paper = result["presets"]["paper"]["variants"]
    tuned = result["presets"]["fusion_weights"]["variants"]
    # the same seeds train the same baseline (through the shared cache): identical figures
    assert paper["baseline"]["test/miou"] == tuned["baseline"]["test/miou"]
    assert "full_tuned" in tuned
    assert "full_tuned" not in paper
    stored = json.loads((tmp_path / "fusion_weights" / "seed_1" / "metrics.json").read_text())
    assert stored["variants"]["full"]["test"]["miou"] == tuned["full"]["test/miou"]["values"][1]
    table = (tmp_path / "compare.md").read_text()
    assert table.count("| paper |") == 2  # baseline and full
    assert table.count("| fusion_weights |") == 2  # full and full_tuned
    delta = [
        a - b
        for a, b in zip(
            tuned["full"]["test/miou"]["values"], tuned["baseline"]["test/miou"]["values"], strict=True
        )
    ]
    assert f"{sum(delta) / 2:.2f} ±" in table
    assert "| saturated | not run: `method.max_group_presence` = 0.01 drops every group level" in table
