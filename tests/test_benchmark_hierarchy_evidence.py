"""``benchmarks/hierarchy_evidence.py`` on its tiny ``quick`` setting: the records the evidence tables read.

Oracles: a validation-only record and a full record of the same models (one shared cache) hold the same
validation figures; the full record's Grad-CAM figure is recomputed from its own per-threshold validation
curve; the tables print what the records hold.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "hierarchy_evidence.py"
ROWS = ["gradcam", "subcategory", "subcategory_shuffled"]


def evidence(*args: str) -> str:
    command = [sys.executable, str(SCRIPT), "--threads", "1", *args]
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, dict]:
    root = tmp_path_factory.mktemp("evidence")
    common = ["--dataset", "quick", "--seeds", "0", "--cache", str(root / "cache")]
    evidence(*common, "--rows", *ROWS, "--results", str(root / "full"), "--subcategory-weight", "0.5")
    evidence(
        *common, "--rows", *ROWS[:2], "--results", str(root / "val"), "--subcategory-weight", "0.5",
        "--validation-only",
    )  # fmt: skip
    full = json.loads((root / "full" / "hierarchy" / "quick" / "seed_0.json").read_text())
    val = json.loads((root / "val" / "hierarchy" / "quick" / "validation_seed_0.json").read_text())
    return root, full, val


def test_validation_only_records_hold_the_full_records_validation_figures(records) -> None:
    _, full, val = records
    assert val["split"] == "val"
    assert full["split"] == "test"
    assert val["subcategory_weight"] == full["subcategory_weight"] == 0.5
    assert val["rows"] == ROWS[:2]
    assert full["rows"] == ROWS
    for row in ROWS[:2]:
        assert not [key for key in val["results"][row] if key.startswith("test_")]
        for key, value in val["results"][row].items():
            assert full["results"][row][key] == pytest.approx(value, abs=1e-9), (row, key)
    curve = full["results"]["gradcam"]["val_miou_curve"]
    paper = full["thresholds"].index(0.15)
    assert full["results"]["gradcam"]["val_miou_paper"] == pytest.approx(curve[paper])
    assert "subcategory_shuffled - gradcam" in full["comparisons"]


def test_tables_print_the_records(records) -> None:
    root, full, val = records
    table = evidence("--table", "--results", str(root / "full"))
    gradcam = full["results"]["gradcam"]["test_miou_paper"]
    assert f"| gradcam | 0 | {gradcam:.2f} |" in table
    shown = evidence("--dataset", "quick", "--validation-table", str(root / "val"), str(root / "full"))
    ours, base = (val["results"][row]["val_miou_paper"] for row in ("subcategory", "gradcam"))
    assert f"| val | 0.5 | subcategory | 0 | {ours:.2f} | {ours - base:+.2f} |" in shown
    assert "| full | 0.5 | subcategory_shuffled | 0 |" in shown
