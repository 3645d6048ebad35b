"""Bad configs, damaged data, tampered run files and killed writes: each ends in a clear error naming the key
or the file, before any work where it can be checked then (exit status 2 from the command line), never in a
silently wrong result or a bare traceback."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from hiercam._io import atomic_write_text, remove_stale_temporaries
from hiercam.cli import main
from hiercam.datasets import FashionScenes
from hiercam.datasets.fake_voc import write_fake_voc
from hiercam.datasets.voc import VOCMultiLabel
from hiercam.pipeline import ConfigError, PipelineConfig, demo_config, run_pipeline
from hiercam.pipeline.artifacts import load_tensors, read_marker
from hiercam.pipeline.stages import training as stage_module

pytestmark = pytest.mark.usefixtures("one_thread")


def no_training(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stage_module, "fit", lambda *a, **k: pytest.fail("training started"))


# ---------------------------------------------------------------------------------------------- configs
#: (changes to the demo config, the message): every one a ConfigError naming the key, at construction.
BAD_CONFIGS: list[tuple[dict[str, Any], str]] = [
    ({"method__levels": (12, 8)}, "`method.levels` must ask for fewer groups than the 10 classes"),
    ({"method__levels": (10,)}, "`method.levels` must ask for fewer groups than the 10 classes"),
    (
        {"data__dataset": "voc", "data__root": "/voc", "method__levels": (20, 8)},
        "`method.levels` must ask for fewer groups than the 20 classes of 'voc'",
    ),
    ({"train__weight_decay": float("nan")}, "`train.weight_decay` must be a finite number >= 0, got nan"),
    ({"train__weight_decay": float("inf")}, "`train.weight_decay` must be a finite number >= 0, got inf"),
    ({"train__weight_decay": -1e-4}, "`train.weight_decay` must be a finite number >= 0"),
    ({"data__items": (1, 7)}, "`data.items` allows at most 6 garments per scene, got \\[1, 7\\]"),
    ({"data__items": (0, 2)}, "`data.items` must be \\(min, max\\) with 1 <= min <= max"),
    ({"data__items": (3, 2)}, "`data.items` must be \\(min, max\\) with 1 <= min <= max"),
    ({"data__items": (1,)}, "`data.items` must have 2 entries"),
    ({"data__items": ("1", 2)}, "`data.items\\[0\\]` must be an integer"),
    ({"data__image_size": 24}, "`data.image_size` must be >= 40 for FashionScenes"),
    ({"seed": 2**32}, "`seed` must be between 0 and 4294967295"),
    ({"seed": 2**64}, "`seed` must be between 0 and 4294967295"),
    ({"seed": -1}, "`seed` must be between 0 and 4294967295"),
]


@pytest.mark.parametrize(("changes", "message"), BAD_CONFIGS)
def test_a_bad_config_is_a_config_error_naming_the_key(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        demo_config(quick=True).replace(**changes)


def test_the_limits_themselves_are_accepted() -> None:
    config = demo_config(quick=True).replace(
        seed=2**32 - 1, data__items=(6, 6), data__image_size=40, method__levels=(9,)
    )
    assert (config.seed, config.data.items, config.method.levels) == (2**32 - 1, (6, 6), (9,))
    voc = config.replace(data__dataset="voc", data__root="/voc", data__image_size=8, data__items=(1, 9))
    assert voc.method.levels == (9,)  # FashionScenes' limits do not apply to VOC


def test_the_config_checks_the_datasets_own_limits() -> None:
    most, smallest = FashionScenes.MAX_ITEMS, FashionScenes.MIN_IMAGE_SIZE
    quick = demo_config(quick=True)
    quick.replace(data__items=(most, most), data__image_size=smallest)  # accepted
    with pytest.raises(ConfigError, match=f"at most {most} garments"):
        quick.replace(data__items=(1, most + 1))
    with pytest.raises(ConfigError, match=f">= {smallest} for FashionScenes"):
        quick.replace(data__image_size=smallest - 1)
    with pytest.raises(ValueError, match=f"<= {most}"):  # the dataset refuses what the config refuses
        FashionScenes("val", num_scenes=1, items=(1, most + 1))
    with pytest.raises(ValueError, match=f">= {smallest}"):
        FashionScenes("val", num_scenes=1, image_size=smallest - 1)


def toml(path: Path, text: str) -> Path:
    path.write_text('device = "cpu"\n' + text)
    return path


#: (TOML, what the error names): `hiercam run` exits with 2 before training and writes no config.json.
BAD_RUNS = [
    ("[method]\nlevels = [12, 8]\n", "`method.levels` must ask for fewer groups than the 10 classes"),
    ("[train]\nweight_decay = nan\n", "`train.weight_decay` must be a finite number >= 0, got nan"),
    ("[train]\nweight_decay = inf\n", "`train.weight_decay` must be a finite number >= 0, got inf"),
    ("[data]\nitems = [1, 9]\n", "`data.items` allows at most 6 garments"),
    ("seed = 18446744073709551616\n", "`seed` must be between 0 and 4294967295"),
    ('[model]\nbackbone = "resnet9000"\n', "`model.backbone` 'resnet9000' is not a torchvision"),
    ('[model]\nbackbone = "timm:resnet9000"\n', "`model.backbone` 'timm:resnet9000' is not a timm model"),
    ('[model]\nbackbone = "torchvision:resnet18"\n', "did you mean 'resnet18'?"),
    ("[train]\namp = true\n", "`train.amp` (mixed precision) needs CUDA"),
]


@pytest.mark.parametrize(("text", "message"), BAD_RUNS)
def test_the_command_line_exits_2_before_training_and_writes_no_config(
    text: str,
    message: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    no_training(monkeypatch)
    out = tmp_path / "run"
    assert main(["run", str(toml(tmp_path / "bad.toml", text)), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hiercam run: error: ")
    assert message in err
    assert "Traceback" not in err
    assert not (out / "config.json").exists()


def test_demo_and_bench_exit_2_on_bad_seeds(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["demo", "--quick", "--seed", str(2**40), "--out", str(tmp_path / "d")]) == 2
    assert "`seed` must be between 0 and 4294967295" in capsys.readouterr().err
    assert main(["demo", "--quick", "--seed", "-3", "--out", str(tmp_path / "d")]) == 2
    assert "`seed` must be between 0" in capsys.readouterr().err
    assert main(["bench", "--quick", "--seeds", "0", "--out", str(tmp_path / "b")]) == 2
    assert "--seeds must be at least 1" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_config_json_describes_the_run_beside_the_metrics(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_config: Callable[..., PipelineConfig]
) -> None:
    out = tmp_path / "run"
    out.mkdir()
    for name in ("metrics.json", "report.md", "run.json"):  # an earlier run with another config
        (out / name).write_text("from another run")
    (out / "config.json").write_text(json.dumps(tiny_config(seed=7).to_dict()))

    def interrupted(*_args: object, **_kwargs: object) -> None:
        raise KeyboardInterrupt("killed after the checks")

    monkeypatch.setattr("hiercam.pipeline.run.train_base", interrupted)
    config = tiny_config()
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(config, out, progress=False, log=lambda _: None)
    assert PipelineConfig.from_dict(json.loads((out / "config.json").read_text())) == config
    assert not any((out / name).exists() for name in ("metrics.json", "report.md", "run.json"))
    # an invalid change leaves the folder as it was
    with pytest.raises(ConfigError, match="`model.backbone` 'vgg99'"):
        run_pipeline(config.replace(model__backbone="vgg99"), out, progress=False, log=lambda _: None)
    assert PipelineConfig.from_dict(json.loads((out / "config.json").read_text())) == config


# ---------------------------------------------------------------------------------------------- VOC XML
def annotation(fake: dict[str, Any]) -> Path:
    first = fake["splits"]["val"][0]
    return Path(fake["root"]) / "VOC2012" / "Annotations" / f"{first}.xml"


#: (how the first <bndbox> of a val image is damaged, the message after the file name).
BAD_BOXES = [
    (lambda xml: re.sub(r"<xmax>\d+</xmax>", "", xml, count=1), "object 0 (.*) bndbox has no <xmax>"),
    (lambda xml: re.sub(r"<ymin>\d+</ymin>", "<ymin> </ymin>", xml, count=1), "bndbox has no <ymin>"),
    (lambda xml: re.sub(r"<xmin>\d+</xmin>", "<xmin>ten</xmin>", xml, count=1), "<xmin> must be a number"),
    (lambda xml: re.sub(r"<ymax>\d+</ymax>", "<ymax>inf</ymax>", xml, count=1), "<ymax> must be finite"),
    (lambda xml: re.sub(r"<xmin>\d+</xmin>", "<xmin>100000</xmin>", xml, count=1), "has an empty box"),
    (lambda xml: xml.replace("</annotation>", ""), "not a valid annotation XML"),
]


@pytest.mark.parametrize(("damage", "message"), BAD_BOXES)
def test_a_damaged_voc_annotation_is_an_error_naming_the_file(
    tmp_path: Path, damage: Callable[[str], str], message: str
) -> None:
    fake = write_fake_voc(tmp_path, num_images=4, seed=2)
    path = annotation(fake)
    path.write_text(damage(path.read_text()))
    with pytest.raises(ValueError, match=f"{re.escape(str(path))}: .*{message}"):
        VOCMultiLabel(fake["root"], "val")


def test_a_damaged_voc_annotation_stops_a_run_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    no_training(monkeypatch)
    fake = write_fake_voc(tmp_path / "data", num_images=4, seed=2)
    train_id = fake["splits"]["train_aug"][0]
    path = Path(fake["root"]) / "VOC2012" / "Annotations" / f"{train_id}.xml"
    path.write_text(re.sub(r"<ymax>\d+</ymax>", "", path.read_text(), count=1))
    config = toml(tmp_path / "voc.toml", '[data]\ndataset = "voc"\nimage_size = 64\n[method]\nlevels = [6]\n')
    out = tmp_path / "run"
    assert main(["run", str(config), "--data", str(fake["root"]), "--out", str(out)]) == 2
    assert f"{path}: object 0" in capsys.readouterr().err
    assert not (out / "config.json").exists()


# ---------------------------------------------------------------------------------------------- run files
def test_damaged_markers_and_tensor_files_are_errors_naming_the_file(tmp_path: Path) -> None:
    marker = tmp_path / "step.json"
    assert read_marker(marker, "k") is None  # not done yet
    marker.write_text('{"key": "other"}')
    assert read_marker(marker, "k") is None  # done with other inputs: redo
    marker.write_text('{"key": "k", "history": []}')
    assert read_marker(marker, "k") == {"key": "k", "history": []}
    bad_markers = {
        "{not json": "the step marker is not JSON",
        "[1, 2]": "the step marker must be a JSON object with a string `key`",
        '{"key": 5}': "the step marker must be a JSON object with a string `key`",
        '{"history": []}': "the step marker must be a JSON object with a string `key`",
    }
    for text, message in bad_markers.items():
        marker.write_text(text)
        with pytest.raises(ValueError, match=f"{re.escape(str(marker))}: {message}"):
            read_marker(marker, "k")
    marker.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ValueError, match="is not UTF-8 text"):
        read_marker(marker, "k")

    tensors = tmp_path / "maps.pt"
    torch.save({"a": torch.zeros(3)}, tensors)
    whole = tensors.read_bytes()
    damaged = {
        b"garbage": "cannot be read as saved tensors",
        whole[: len(whole) // 2]: "cannot be read as saved tensors",  # truncated
        b"": "cannot be read as saved tensors",
    }
    for content, message in damaged.items():
        tensors.write_bytes(content)
        with pytest.raises(ValueError, match=f"{re.escape(str(tensors))}: {message}"):
            load_tensors(tensors)
    torch.save([torch.zeros(1)], tensors)
    with pytest.raises(ValueError, match="does not hold a dict of tensors"):
        load_tensors(tensors)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[PipelineConfig, Path]:
    """A finished tiny run (no ablation models, one group level), copied by each test that damages it."""
    config = demo_config(quick=True).replace(
        ablation=False,
        data__train_scenes=64,
        data__val_scenes=32,
        data__test_scenes=32,
        model__width=4,
        train__epochs=1,
        method__levels=(2,),
    )
    out = tmp_path_factory.mktemp("finished") / "run"
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_pipeline(config, out, progress=False, log=lambda _: None)
    finally:
        torch.set_num_threads(before)
    return config, out


def damaged_copy(finished: Path, into: Path) -> Path:
    import shutil

    return Path(shutil.copytree(finished, into / "run"))


#: (file of the finished run, how it is damaged, the message after the file name).
DAMAGES = [
    ("models/base-*.json", "{half a marker", "the step marker is not JSON"),
    (
        "models/two_branch_L1-*.json",
        '{"key": 3}',
        "the step marker must be a JSON object with a string `key`",
    ),
    ("models/base-*.pt", "not a state dict", "cannot be read as saved tensors"),
    ("cams/test-*.pt", "not maps", "cannot be read as saved tensors"),
    ("cams/val-*.json", "[]", "the step marker must be a JSON object with a string `key`"),
]


@pytest.mark.parametrize(("pattern", "content", "message"), DAMAGES)
def test_a_tampered_run_file_is_an_error_naming_it_and_nothing_retrains(
    finished_run: tuple[PipelineConfig, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    pattern: str,
    content: str,
    message: str,
) -> None:
    config, finished = finished_run
    out = damaged_copy(finished, tmp_path)
    (path,) = out.glob(pattern)
    path.write_text(content)
    no_training(monkeypatch)
    with pytest.raises(ValueError, match=f"{re.escape(str(path))}: {message}"):
        run_pipeline(config, out, progress=False, log=lambda _: None)
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps(config.to_dict()))
    assert main(["run", str(config_file), "--out", str(out)]) == 2
    assert f"{path}: {message}" in capsys.readouterr().err


def test_a_wrong_state_dict_and_a_damaged_training_checkpoint_name_their_file(
    finished_run: tuple[PipelineConfig, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config, finished = finished_run
    out = damaged_copy(finished, tmp_path)
    (weights,) = out.glob("models/base-*.pt")
    torch.save({"weight": torch.zeros(2)}, weights)
    no_training(monkeypatch)
    with pytest.raises(ValueError, match=f"{re.escape(str(weights))}: does not fit the base model"):
        run_pipeline(config, out, progress=False, log=lambda _: None)

    out = damaged_copy(finished, tmp_path / "second")
    (marker,) = out.glob("models/two_branch_L1-*.json")
    marker.unlink()  # as if killed while training it: fit would resume from the checkpoint
    checkpoint = marker.with_suffix(".ckpt")
    checkpoint.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ValueError, match=f"{re.escape(str(checkpoint))}: the training checkpoint of an"):
        run_pipeline(config, out, progress=False, log=lambda _: None)


# ---------------------------------------------------------------------------------------------- .tmp files
def test_a_write_killed_mid_way_leaves_a_temporary_file_that_the_next_write_removes(tmp_path: Path) -> None:
    target = tmp_path / "metrics.json"
    script = (
        "import os, sys; from hiercam._io import atomic_write\n"
        "def write(handle):\n"
        "    handle.write(b'half'); handle.flush(); os._exit(9)  # killed: no cleanup runs\n"
        f"atomic_write({str(target)!r}, write)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    killed = subprocess.run([sys.executable, "-c", script], env=env, check=False)
    assert killed.returncode == 9
    (left,) = tmp_path.glob(".metrics.json.*.tmp")
    assert left.read_bytes() == b"half"
    assert not target.exists()

    mine = tmp_path / f".metrics.json.{left.name.split('.')[3].rpartition('-')[0]}-{os.getpid()}.a1.tmp"
    mine.write_text("this process may be writing it")
    foreign_old = tmp_path / ".metrics.json.other-host-12.b2.tmp"
    foreign_new = tmp_path / ".metrics.json.other-host-13.c3.tmp"
    legacy_old = tmp_path / ".metrics.json.k9zq.tmp"
    other_target = tmp_path / ".report.md.other-host-1.d4.tmp"
    for path in (foreign_old, foreign_new, legacy_old, other_target):
        path.write_text("left")
    two_days_ago = time.time() - 2 * 24 * 3600
    for path in (foreign_old, legacy_old, other_target):
        os.utime(path, (two_days_ago, two_days_ago))

    atomic_write_text(target, "{}")
    assert target.read_text() == "{}"
    remaining = sorted(p.name for p in tmp_path.glob(".*.tmp"))
    # removed: the killed write's (its process is gone), and those of other hosts older than a day;
    # kept: this live process's, a recent one of another host, and those of another target
    assert remaining == sorted([mine.name, foreign_new.name, other_target.name])
    assert remove_stale_temporaries(target) == []


class _Hostile:
    """Pickled, it would run code on load (``print``); ``weights_only=True`` must refuse it."""

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (print, ("code ran",))


@pytest.mark.parametrize("content", ["garbage", "truncated", "hostile", "empty"])
def test_the_hierarchy_command_names_an_unreadable_checkpoint(
    content: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "model.pt"
    torch.save({"fc.weight": torch.rand(6, 4)}, path)
    payloads = {
        "garbage": b"not a checkpoint",
        "truncated": path.read_bytes()[:40],
        "empty": b"",
    }
    if content == "hostile":
        torch.save({"fc.weight": _Hostile()}, path)
    else:
        path.write_bytes(payloads[content])
    assert main(["hierarchy", str(path), "--levels", "2"]) == 2
    captured = capsys.readouterr()
    assert (
        f"hiercam hierarchy: error: {path}: cannot be read with torch.load(weights_only=True)" in captured.err
    )
    assert "code ran" not in captured.out + captured.err
