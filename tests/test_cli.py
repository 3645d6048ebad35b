from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hiercam import ClassHierarchy
from hiercam.cli import main


def test_demo_recovers_the_planted_tree(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "ClassHierarchy(12 classes, levels 12 -> 6 -> 2)" in printed
    hierarchy = ClassHierarchy.load(tmp_path / "hierarchy.json")
    for group in hierarchy.group_names(1):
        assert len({name[:4] for name in group.strip("{}").split(", ")}) == 1  # one planted group each
    for group in hierarchy.group_names(2):
        assert len({name[:2] for name in group.strip("{}").split(", ")}) == 1  # one planted super-group each


def test_module_entry_point_prints_help() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "hiercam", "--help"], capture_output=True, text=True, check=True
    )
    assert "demo" in result.stdout


def test_missing_command_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2
    assert "required: COMMAND" in capsys.readouterr().err
