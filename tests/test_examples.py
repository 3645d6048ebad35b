"""Every example script runs (with ``--quick``) and the quickstart notebook executes, as a user runs them.

Each runs in a fresh process (a fresh kernel for the notebook) in a scratch folder, on one CPU thread, so that
nothing leaks between them and what they write lands in the scratch folder.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import hiercam

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))
NOTEBOOKS = sorted((ROOT / "examples" / "notebooks").glob("*.ipynb"))
PNG = b"\x89PNG\r\n\x1a\n"


def _orthogonal_loss(out: str, folder: Path) -> None:
    rows = re.findall(r"^\s*([\d.e+-]+) \|\s+([\d.]+) \|\s+([\d.]+) \|\s+(-?[\d.]+)$", out, re.MULTILINE)
    assert [float(row[0]) for row in rows] == [0.0, 1.0]
    cosine = [float(row[1]) for row in rows]
    assert cosine[1] < cosine[0]  # the loss lowers the overlap of the two branches' features


def _two_branch_backbone(out: str, folder: Path) -> None:
    assert "resnet18: two branches of 512 channels" in out
    assert "maps (4, 10, 64, 64), per branch (2, 4, 10, 64, 64)" in out
    assert "closed_form=verified, verified" in out


def _all_class_cams(out: str, folder: Path) -> None:
    assert "maps (6, 10, 80, 80)" in out
    assert (folder / "cams.png").read_bytes().startswith(PNG)


def _hierarchy_levels(out: str, folder: Path) -> None:
    hierarchy = hiercam.ClassHierarchy.load(folder / "hierarchy.json")
    assert hierarchy.level_sizes == (10, 4, 2)
    assert hierarchy.class_names == hiercam.FashionScenes.classes
    assert len(re.findall(r"^level \d model, \d groups: val mAP 0\.\d+$", out, re.MULTILINE)) == 2


def _fuse_cams(out: str, folder: Path) -> None:
    assert "fuse_hierarchy == fuse by hand: True" in out
    assert (folder / "fusion.png").read_bytes().startswith(PNG)
    assert re.search(r"^fused: mIoU@0\.15 on 64 validation scenes \d+\.\d$", out, re.MULTILINE)


def _evaluate_cams(out: str, folder: Path) -> None:
    rows = re.findall(r"^\s*(0\.\d+) \|\s+([\d.]+) \|\s+([\d.]+)$", out, re.MULTILINE)
    assert len(rows) == 12
    val_miou = {float(row[0]): float(row[1]) for row in rows}
    chosen = re.search(r"^test at t\* = (0\.\d+) \(best val mIoU\)", out, re.MULTILINE)
    assert chosen
    assert val_miou[float(chosen[1])] == max(val_miou.values())  # the threshold comes from validation


def _voc_recipe(out: str, folder: Path) -> None:
    assert "| both: two-branch + grouping, Eq. 6 |" in out
    report = re.search(r"^report: (.+)$", out, re.MULTILINE)
    assert report
    assert "## Ablation" in Path(report[1]).read_text()


def _per_image_classes(out: str, folder: Path) -> None:
    assert re.search(r"^top classes \[\d, \d, \d, \d\] -> maps \(4, 1, 80, 80\)$", out, re.MULTILINE)
    assert "per-image maps == slices of the all-class maps: True" in out
    assert "per-image maps == ClassifierOutputTarget maps: True" in out
    assert "classes [2, 5] -> maps (4, 2, 80, 80)" in out


def _transformer_cams(out: str, folder: Path) -> None:
    assert "target_layer='encoder.layers.encoder_layer_1.ln_1', read as tokens(grid=(8, 8), prefix=1)" in out
    assert "explicit grid: maps (2, 1, 64, 64)" in out
    assert "reshape=None: `model` looks like a transformer" in out
    assert "target_layer='blocks.11.norm1', read as tokens(grid=(4, 4), prefix=5)" in out


def _segmentation_cams(out: str, folder: Path) -> None:
    assert "maps (2, 1, 96, 96), peak 1.0" in out
    assert re.search(r"^class \d covers \[[1-9]\d*, [1-9]\d*\] pixels$", out, re.MULTILINE)
    assert "`output` key 'logits' is not in the output of `model` (its keys: 'out')" in out


def _faithfulness(out: str, folder: Path) -> None:
    rows = re.findall(
        r"^(\w[\w /+]*?)\s+\|\s+(-?[\d.]+) \|\s+(-?[\d.]+) \| (Grad-CAM|random)$", out, re.MULTILINE
    )
    names = [row[0] for row in rows]
    assert names == [
        "deletion",
        "insertion",
        "average drop",
        "increase",
        "ROAD MoRF",
        "ROAD LeRF",
        "MaxBoxAccV2",
        "PxAP",
    ]
    for name, ours, floor, _ in rows:
        if name in ("increase", "MaxBoxAccV2", "PxAP"):  # fractions
            assert 0 <= float(ours) <= 1
            assert 0 <= float(floor) <= 1


def _own_dataset(out: str, folder: Path) -> None:
    assert (
        "road    |      8 |  100.0 % |      10240" in out
    )  # 8 training images of 48 x 64, objects over road
    assert "warning: train: classes present in no image: sign" in out
    assert "near-ubiquitous in training (> 90 % of the images): road" in out
    assert "0 errors, 3 warnings" in out
    assert "| Grad-CAM baseline (single branch, no grouping) |" in out
    assert "level 1 group 1 (3 classes): car, person, bicycle" in out  # the folder's names, road kept out


CHECKS: dict[str, Callable[[str, Path], None]] = {
    "orthogonal_loss.py": _orthogonal_loss,
    "two_branch_backbone.py": _two_branch_backbone,
    "all_class_cams.py": _all_class_cams,
    "hierarchy_levels.py": _hierarchy_levels,
    "fuse_cams.py": _fuse_cams,
    "evaluate_cams.py": _evaluate_cams,
    "voc_recipe.py": _voc_recipe,
    "per_image_classes.py": _per_image_classes,
    "transformer_cams.py": _transformer_cams,
    "segmentation_cams.py": _segmentation_cams,
    "faithfulness.py": _faithfulness,
    "own_dataset.py": _own_dataset,
}


def _quiet_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg", "PYTHONPATH": str(ROOT)}


def test_every_example_has_a_check() -> None:
    assert sorted(CHECKS) == sorted(path.name for path in EXAMPLES)


@pytest.mark.slow
@pytest.mark.parametrize("example", EXAMPLES, ids=lambda path: path.name)
def test_example_runs(example: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(example), "--quick"],
        cwd=tmp_path,
        env=_quiet_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    CHECKS[example.name](result.stdout, tmp_path)


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda path: path.name)
def test_notebook_is_stored_without_outputs(notebook: Path) -> None:
    nbformat = pytest.importorskip("nbformat")
    content = nbformat.read(notebook, as_version=4)
    nbformat.validate(content)
    dirty = [
        index
        for index, cell in enumerate(content.cells)
        if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None)
    ]
    assert not dirty, (
        f"cells {dirty} of {notebook.name} have outputs: run python scripts/strip_notebooks.py {notebook}"
    )


@pytest.mark.slow
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda path: path.name)
def test_notebook_executes(notebook: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    for name, value in _quiet_env().items():
        monkeypatch.setenv(name, value)  # the kernel inherits this environment
    content = nbformat.read(notebook, as_version=4)
    client = nbclient.NotebookClient(
        content, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError on the first failing cell
    outputs = [output for cell in content.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [output for output in outputs if output.output_type == "error"]
    images = [output for output in outputs if "image/png" in output.get("data", {})]
    assert len(images) >= 2  # the scenes and the CAM overlays
    text = "".join(output.get("text", "") for output in outputs)
    assert re.search(r"^fused: threshold 0\.\d+ \(from val\), test mIoU \d+\.\d", text, re.MULTILINE)
