from __future__ import annotations

import subprocess
import sys

import pytest

from hiercam.cli import main


def test_module_entry_point_prints_help() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "hiercam", "--help"], capture_output=True, text=True, check=True
    )
    for command in ("demo", "run", "hierarchy", "bench"):
        assert command in result.stdout


def test_missing_command_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2
    assert "required: COMMAND" in capsys.readouterr().err
