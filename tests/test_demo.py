"""The demo command: its sizes, ``--threads``, readable output in a log file, and its last line."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

import hiercam.pipeline
from hiercam import fit
from hiercam._progress import Progress, is_terminal
from hiercam.cli import build_parser, main
from hiercam.cli.commands import _threads_line
from hiercam.pipeline import (
    PRESETS,
    PipelineConfig,
    apply_preset,
    bench_config,
    demo_config,
    run_pipeline,
)


class Terminal(io.StringIO):
    """A captured stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


@pytest.fixture
def two_threads() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def tiny_fit(epochs: int) -> None:
    generator = torch.Generator().manual_seed(0)
    data = [(torch.randn(8, 4, generator=generator), torch.randint(0, 2, (8, 3)).float()) for _ in range(20)]
    fit(torch.nn.Linear(4, 3), data, epochs=epochs, val_loader=data[:2], progress=True)


# ------------------------------------------------------------------------------------------ sizes
def test_demo_config_sizes() -> None:
    config = demo_config()
    # the demo: base and two-branch models only, 4,000 scenes, 4 epochs, 300 + 300 scenes scored
    assert (config.data.train_scenes, config.data.val_scenes, config.data.test_scenes) == (4000, 300, 300)
    assert config.train.epochs == 4
    assert config.ablation is False
    assert config.ensemble is False  # no ensemble control either: the baseline against the method
    assert config.device == "cpu"
    assert config.method.levels == (4,)  # levels 10 -> 4: the one group level `recommended` keeps
    # the other method settings are the paper's; the demo command applies a preset
    assert config.replace(method__levels=(4, 2)).method == PipelineConfig().method
    # --quick is the smoke test of every stage, ablation included
    quick = demo_config(quick=True)
    assert (quick.data.train_scenes, quick.data.image_size, quick.train.epochs) == (256, 48, 2)
    assert quick.ablation is True
    assert quick.ensemble is True
    assert quick.method.levels == (4, 2)
    # bench keeps the setting of docs/benchmarks.md: 10,000 / 500 / 500 scenes, 6 epochs, every model
    bench = bench_config(seed=3)
    sizes = (bench.data.train_scenes, bench.data.val_scenes, bench.data.test_scenes, bench.train.epochs)
    assert sizes == (10000, 500, 500, 6)
    assert bench.ablation is True
    assert bench.seed == 3
    assert bench.data.image_size == 80
    assert bench_config(quick=True) == quick


def test_demo_runs_the_recommended_preset_by_default() -> None:
    args = build_parser().parse_args(["demo"])
    assert args.preset == "recommended"
    assert args.threads is None


# ------------------------------------------------------------------------------------- progress
def test_is_terminal() -> None:
    assert not is_terminal(io.StringIO())
    assert is_terminal(Terminal())
    closed = io.StringIO()
    closed.close()
    assert not is_terminal(closed)  # isatty() raises ValueError on a closed stream
    assert not is_terminal(object())  # type: ignore[arg-type]  # no isatty at all


def test_progress_lines_without_a_terminal() -> None:
    lines: list[str] = []
    with Progress(4, "step", log=lines.append, unit="images", interval=0.0, terminal=False) as progress:
        for _ in range(2):
            progress.update(2)
    assert lines[:2] == ["step: 2/4 images, 0 s", "step: 4/4 images, 0 s"]
    assert re.fullmatch(r"step: 4 images in \d+\.\d s", lines[2])
    assert len(lines) == 3
    lines.clear()
    with pytest.raises(KeyError), Progress(4, "failing", log=lines.append, terminal=False):
        raise KeyError("stop")
    assert lines == []  # no line saying a failed step is done
    with Progress(4, "silent", log=lines.append, enabled=False, interval=0.0, terminal=False) as progress:
        progress.update(4)
    assert lines == []


def test_fit_writes_one_plain_line_per_epoch_to_a_log(
    monkeypatch: pytest.MonkeyPatch, one_thread: None
) -> None:
    log = io.StringIO()
    monkeypatch.setattr("sys.stderr", log)
    tiny_fit(epochs=3)
    text = log.getvalue()
    lines = text.splitlines()
    assert len(lines) == 3
    number = r"\d\.\d{4}"
    for epoch, line in enumerate(lines, 1):
        expected = rf"epoch {epoch}/3: loss {number}, val_loss {number}, val_map {number} \(\d+\.\d s\)"
        assert re.fullmatch(expected, line)
    assert "\r" not in text
    assert len(text) < 100 * 3


def test_fit_draws_a_bar_on_a_terminal(monkeypatch: pytest.MonkeyPatch, one_thread: None) -> None:
    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    tiny_fit(epochs=2)
    text = terminal.getvalue()
    assert "\r" in text  # tqdm's bar, redrawn in place
    assert "epoch 2/2" in text


def test_pipeline_log_has_a_line_per_epoch_and_per_step(
    tiny_config: Callable[..., PipelineConfig],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    one_thread: None,
) -> None:
    stderr = io.StringIO()
    monkeypatch.setattr("sys.stderr", stderr)
    lines: list[str] = []
    config = tiny_config(train__epochs=2, ablation=False, ensemble=False)
    run_pipeline(config, tmp_path / "run", log=lines.append)
    epochs = stderr.getvalue().splitlines()
    # base, two-branch levels 0, 1 and 2 (no single-branch models without the ablation): 2 epochs each
    assert len(epochs) == 4 * 2
    assert [line.split(":")[0] for line in epochs] == ["epoch 1/2", "epoch 2/2"] * 4
    assert "\r" not in stderr.getvalue()
    for split in ("val", "test"):
        images = 4 * 32  # 4 models, 32 scenes
        maps = rf"  maps of 4 models \({split}\): {images} images in .* s"
        assert any(re.fullmatch(maps, x) for x in lines)
        assert any(re.fullmatch(rf"  scoring \d+ variants \({split}\): 32 images in .* s", x) for x in lines)
        assert any(re.fullmatch(rf"  MaxBoxAccV2, PxAP \({split}\): 32 images in .* s", x) for x in lines)
    # deletion / insertion, the slow pass, on the 32 test images (faithfulness_images = 64): its own step
    faithful = [x for x in lines if x.startswith("  deletion / insertion")]
    assert len(faithful) == 1
    found = re.fullmatch(
        r"  deletion / insertion, 32 images x (\d+) variants \(test\): (\d+) maps in .* s", faithful[0]
    )
    assert found is not None
    assert int(found[2]) == 32 * int(found[1])
    assert lines[-1].startswith(f"wrote {tmp_path / 'run' / 'report.md'} in ")
    report = (tmp_path / "run" / "report.md").read_text()
    assert "## Stage times" in report
    assert "| 4. of which deletion and insertion | `stage4_faithfulness` |" in report


# ------------------------------------------------------------------------------------ the command
@pytest.fixture
def tiny_demo(tiny_config: Callable[..., PipelineConfig], monkeypatch: pytest.MonkeyPatch) -> None:
    """``hiercam demo`` on the tiny config (the CLI reads ``hiercam.pipeline.demo_config``)."""

    def tiny_demo_config(*, quick: bool = False, seed: int = 0) -> PipelineConfig:
        return tiny_config(seed=seed, ablation=quick, ensemble=quick)

    monkeypatch.setattr(hiercam.pipeline, "demo_config", tiny_demo_config)


def test_demo_threads_option_and_last_line(
    tiny_demo: None,
    tiny_config: Callable[..., PipelineConfig],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    two_threads: None,
) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--threads", "1"]) == 0
    assert json.loads((out / "run.json").read_text())["threads"] == 1  # the run used one thread
    assert torch.get_num_threads() == 2  # and the caller's setting is back
    printed = capsys.readouterr().out.splitlines()
    report = re.escape(str(out / "report.md"))
    assert re.fullmatch(rf"hiercam demo: done in \d+ s; report: {report}", printed[-1])
    report_text = (out / "report.md").read_text()
    assert "## The method against Grad-CAM" in report_text
    assert "Ablation (the paper's Table 4)" not in report_text
    settings = f"method settings: preset recommended ({PRESETS['recommended'].description})"
    assert printed[printed.index(settings) + 1].startswith("| variant |")  # the table follows
    assert printed[0] == "hiercam demo: 1 thread"
    # the recommended preset on the demo config, without the ablation models
    written = PipelineConfig.from_dict(json.loads((out / "config.json").read_text()))
    assert written == apply_preset(tiny_config(ablation=False, ensemble=False), "recommended")
    names = " ".join(path.name for path in (out / "models").iterdir())
    # only the models the method needs: its level models are single-branch or two-branch, never both
    assert ("two_branch" if written.method.branches == 1 else "single") not in names
    assert "ensemble" not in names


@pytest.mark.parametrize("value", ["0", "-2", "two"])
def test_bad_threads_are_usage_errors(
    value: str, capsys: pytest.CaptureFixture[str], two_threads: None
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["demo", "--threads", value])
    assert info.value.code == 2
    assert "--threads: must be an integer >= 1" in capsys.readouterr().err
    assert torch.get_num_threads() == 2


def test_threads_are_restored_when_the_command_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], two_threads: None
) -> None:
    assert main(["run", str(tmp_path / "missing.toml"), "--threads", "1"]) == 2
    assert "missing.toml" in capsys.readouterr().err
    assert torch.get_num_threads() == 2


def test_threads_line_hints_at_one_thread_on_a_busy_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    monkeypatch.setattr("os.getloadavg", lambda: (3.5, 3.0, 2.0))
    busy = _threads_line("demo", 2, True)
    assert busy.startswith("hiercam demo: 2 threads (PyTorch's default; --threads N to choose); ")
    assert "load average 3.5 on 2 cores" in busy
    assert "--threads 1" in busy
    assert _threads_line("run", 1, False) == "hiercam run: 1 thread"  # one thread: nothing to wait for
    monkeypatch.setattr("os.getloadavg", lambda: (0.2, 0.1, 0.1))
    assert _threads_line("bench", 2, False) == "hiercam bench: 2 threads"


# ------------------------------------------------------------------------------- the README's first minutes
README = Path(__file__).resolve().parents[1] / "README.md"


def _readme_block(heading: str) -> str:
    """The first fenced Python block under ``heading`` in the README."""
    text = README.read_text(encoding="utf-8")
    section = text.split(f"\n{heading}\n", 1)[1]
    return section.split("```python\n", 1)[1].split("\n```", 1)[0]


def test_readme_quick_start_on_a_photo_runs_without_downloads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], one_thread: None
) -> None:
    pytest.importorskip("matplotlib")
    from PIL import Image

    code = _readme_block("## A map of your photo in 10 lines")
    assert len([line for line in code.splitlines() if not line.startswith("#")]) <= 10
    Image.new("RGB", (320, 240), (200, 120, 40)).save(tmp_path / "photo.jpg")

    def no_download(*args: object, **kwargs: object) -> None:
        raise AssertionError("the README's quick start must not download anything")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, str(README), "exec"), {})
    printed = capsys.readouterr().out
    assert re.fullmatch(r"class (\d+)\n", printed)
    assert 0 <= int(printed.split()[1]) < 1000  # an ImageNet class index of resnet18's 1000 outputs
    with Image.open(tmp_path / "photo_cam.png") as overlay:
        assert overlay.size == (224, 224)


def test_readme_install_lines() -> None:
    text = README.read_text(encoding="utf-8")
    install = text.split("\n## Install\n", 1)[1].split("\n## ", 1)[0]
    assert "pip install .  " in install
    assert "pip install dist/hiercam-*.whl" in install
    assert "pip install torch --index-url https://download.pytorch.org/whl/cpu" in install


def test_readme_loss_example_does_not_swamp_the_classification_loss() -> None:
    """The README's headline loss: its weighted orthogonal term is at most the BCE sum (the paper's: 65x)."""
    import warnings

    import hiercam

    code = _readme_block("## Usage")
    line = next(line for line in code.splitlines() if line.startswith("loss = hiercam.TwoBranchLoss("))
    loss = eval(line.removeprefix("loss = "), {"hiercam": hiercam})
    # a two-branch net at its start: both branches' features equal (the worst case of the overlap term)
    generator = torch.Generator().manual_seed(0)
    features = torch.rand(4, 16, 7, 7, generator=generator)
    logits = torch.randn(2, 4, 20, generator=generator)
    output = hiercam.TwoBranchOutput(logits, (features, features), logits.mean(0))
    labels = torch.randint(0, 2, (4, 20), generator=generator)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no swamping warning
        parts = loss(output, labels)
    weighted = loss.weight * float(parts.orthogonal)
    assert weighted == pytest.approx(0.1, rel=1e-5)  # 0.1 x a cosine of 1, whatever the features' size
    assert weighted <= float(parts.classification_1 + parts.classification_2)
