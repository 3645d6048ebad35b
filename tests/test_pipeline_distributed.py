"""The pipeline under torchrun: 2 CPU processes (gloo) against 1 process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

WORKER = Path(__file__).with_name("ddp_pipeline_worker.py")
CONFIG = """
seed = 0
device = "cpu"
ablation = false

[data]
image_size = 48
train_scenes = 96
val_scenes = 32
test_scenes = 32

[model]
width = 4
norm = "group"  # batch-independent, so that 2 processes of 8 images train like 1 process of 16

[train]
epochs = 2
batch_size = 16
lr = 3e-3

[method]
levels = [2]
"""


def launch(args: list[str], writes: Path, processes: int) -> subprocess.CompletedProcess[str]:
    writes.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HIERCAM_WRITES_DIR": str(writes), "OMP_NUM_THREADS": "1"}
    if processes == 1:
        command = [sys.executable, str(WORKER), *args]
    else:
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={processes}",
            str(WORKER),
            *args,
        ]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def weights(run: Path, name: str) -> dict[str, torch.Tensor]:
    (path,) = (run / "models").glob(f"{name}-*.pt")
    return torch.load(path, weights_only=True)


@pytest.mark.slow
def test_two_processes_train_and_evaluate_like_one(tmp_path: Path) -> None:
    config = tmp_path / "tiny.toml"
    config.write_text(CONFIG)
    one, two = tmp_path / "one", tmp_path / "two"
    launch(["run", str(config), "--out", str(one)], tmp_path / "writes-one", 1)
    launch(["run", str(config), "--out", str(two)], tmp_path / "writes-two", 2)

    # rank 0 alone writes
    rank0 = json.loads((tmp_path / "writes-two" / "writes-0.json").read_text())
    rank1 = json.loads((tmp_path / "writes-two" / "writes-1.json").read_text())
    assert rank1 == []
    assert {Path(p).name for p in rank0} >= {"metrics.json", "report.md", "hierarchy.json", "config.json"}
    assert sorted(Path(p).name for p in rank0) == sorted(
        Path(p).name for p in json.loads((tmp_path / "writes-one" / "writes-0.json").read_text())
    )
    # the same global batches give the same weights (GroupNorm: no batch statistics)
    for name in ("base", "two_branch_L0", "two_branch_L1"):
        expected, got = weights(one, name), weights(two, name)
        for key in expected:
            torch.testing.assert_close(got[key], expected[key], rtol=1e-4, atol=1e-5)

    # sharded CAM extraction and evaluation of the same models give the 1-process figures
    three = tmp_path / "three"
    shutil.copytree(one, three)
    shutil.rmtree(three / "cams")
    (three / "metrics.json").unlink()
    launch(["run", str(config), "--out", str(three)], tmp_path / "writes-three", 2)
    expected_metrics = json.loads((one / "metrics.json").read_text())
    got_metrics = json.loads((three / "metrics.json").read_text())
    assert got_metrics["scores"] == expected_metrics["scores"]
    assert got_metrics["classification_map"] == expected_metrics["classification_map"]
    assert json.loads((three / "run.json").read_text())["processes"] == 2


def test_batch_size_must_divide_among_processes(tmp_path: Path) -> None:
    config = tmp_path / "odd.toml"
    config.write_text(CONFIG.replace("batch_size = 16", "batch_size = 15"))
    env = {**os.environ, "HIERCAM_WRITES_DIR": str(tmp_path), "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(WORKER),
        "run",
        str(config),
        "--out",
        str(tmp_path / "run"),
    ]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode != 0
    assert (
        "`train.batch_size` (15) is the global batch and must be divisible by the 2 processes"
        in result.stderr
    )
