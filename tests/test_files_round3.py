"""Issue 26, items 8-10 (files part): the command line never prints a traceback, overlays of huge photos are
drawn on a scaled-down copy, and errors from inside PIL, ``json`` or the text decoder name the file.

Oracles: the hand-written messages (each names its argument or file), PIL's own resize for the scaled-down
photo, ``hiercam.viz.overlay`` for the overlay PNG, and the parsers themselves (``json``/``tomllib``) for what
is refused.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.models import resnet18

import hiercam.cli.explain
import hiercam.viz
from hiercam._io import check_out_dir, open_image, read_json_file, read_text_file
from hiercam.cli import main
from hiercam.cli.explain import explain_images
from hiercam.datasets import (
    MSRC21,
    SegmentationFolder,
    VOCMultiLabel,
    load_image,
    write_fake_msrc21,
    write_fake_voc,
)
from hiercam.datasets.images import MAX_IMAGE_SIDE, fit_within
from hiercam.pipeline import ConfigError, PipelineConfig, load_config


# ------------------------------------------------------------------------------------------ files
def png_header(width: int, height: int) -> bytes:
    """A valid PNG signature and IHDR declaring ``width x height`` RGB pixels, with almost no data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 16))


@pytest.fixture
def photos(tmp_path: Path) -> dict[str, Path]:
    """A good PNG and JPEG, each truncated, a decompression bomb header, and a 10-class ResNet-18."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    out = {"png": tmp_path / "good.png", "jpg": tmp_path / "good.jpg"}
    Image.fromarray(pixels).save(out["png"])
    Image.fromarray(pixels).save(out["jpg"], quality=90)
    for kind in ("png", "jpg"):
        cut = tmp_path / f"cut.{kind}"
        cut.write_bytes(out[kind].read_bytes()[:-300])
        out[f"cut_{kind}"] = cut
    out["bomb"] = tmp_path / "bomb.png"
    out["bomb"].write_bytes(png_header(100_000, 100_000))
    out["weights"] = tmp_path / "resnet18_10.pt"
    torch.save(resnet18(num_classes=10).state_dict(), out["weights"])
    return out


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("cut_png", "cut.png' is not a readable image: image file is truncated"),
        ("cut_jpg", "cut.jpg' is not a readable image: image file is truncated"),
        ("bomb", "bomb.png' declares too many pixels to decode: Image size (10000000000 pixels)"),
    ],
)
def test_damaged_and_oversized_images_name_the_file(photos: dict[str, Path], name: str, message: str) -> None:
    for good in ("png", "jpg"):  # the oracle: the files they were cut from read fine
        assert load_image(photos[good]).shape == (1, 3, 48, 64)
    with pytest.raises(ValueError, match="^`path` '.*" + message.replace("(", r"\(").replace(")", r"\)")):
        load_image(photos[name])
    with pytest.raises(ValueError, match=os.fspath(photos[name])), open_image(photos[name]):
        pytest.fail("a damaged file was opened")


def test_errors_inside_the_with_block_pass_unchanged(photos: dict[str, Path]) -> None:
    def use() -> None:
        with open_image(photos["png"]) as image:
            assert image.size == (64, 48)
            raise KeyError("mine")

    with pytest.raises(KeyError, match="mine"):
        use()


def test_text_and_json_readers_name_the_file(tmp_path: Path) -> None:
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\u00e9\n".encode("latin-1"))
    with pytest.raises(UnicodeDecodeError):  # the oracle: the decoder itself refuses it
        latin.read_bytes().decode("utf-8")
    with pytest.raises(ValueError, match=r"latin.txt is not UTF-8 text: byte 0xe9 at offset 3"):
        read_text_file(latin)
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(RecursionError):  # the oracle: json itself cannot follow it
        json.loads(deep.read_text())
    with pytest.raises(ValueError, match=r"`labels` '.*deep.json' is not valid JSON: nested too deeply"):
        read_json_file(deep, "labels")
    with pytest.raises(ValueError, match=r"is a folder; a file was expected"):
        read_text_file(tmp_path)
    with pytest.raises(ValueError, match=r"latin.txt' is a file, not a folder"):
        read_text_file(latin / "inside.txt")
    with pytest.raises(FileNotFoundError, match=r"missing.json: no such file"):
        read_json_file(tmp_path / "missing.json")
    bom = tmp_path / "bom.json"
    bom.write_bytes(b"\xef\xbb\xbf" + json.dumps({"a": 1}).encode())  # Windows Notepad's UTF-8
    assert read_json_file(bom) == {"a": 1}


def test_output_folders_are_checked_before_any_work(tmp_path: Path) -> None:
    file = tmp_path / "notes.txt"
    file.write_text("x")
    with pytest.raises(ValueError, match=r"`out` '.*notes.txt' is a file; an output folder was expected"):
        check_out_dir(file, "out")
    with pytest.raises(
        ValueError, match=r"`out` '.*notes.txt/a/b' cannot be a folder: '.*notes.txt' is a file"
    ):
        check_out_dir(file / "a" / "b", "out")
    assert check_out_dir(tmp_path / "new" / "run", "out") == tmp_path / "new" / "run"
    assert not (tmp_path / "new").exists()  # checking creates nothing


# ------------------------------------------------------------------------------------------ datasets
def write_folder(root: Path) -> Path:
    """A segmentation folder of two 20 x 30 images (classes road and car) with masks."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "splits").mkdir()
    (root / "classes.json").write_text(json.dumps({"classes": ["road", "car"]}))
    for name in ("a", "b"):
        Image.fromarray(np.full((20, 30, 3), 90, np.uint8)).save(root / "images" / f"{name}.png")
        mask = np.zeros((20, 30), np.uint8)
        mask[5:10, 5:15] = 1
        Image.fromarray(mask).save(root / "masks" / f"{name}.png")
    (root / "splits" / "train.txt").write_text("a\nb\n")
    return root


def test_folder_files_name_the_file_for_every_failure_of_the_readers(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "data")
    assert len(SegmentationFolder(root, "train", image_size=None)) == 2  # the oracle: it reads as it is
    split = root / "splits" / "train.txt"
    split.write_bytes("a\nb\u00e9\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"train.txt is not UTF-8 text: byte 0xe9"):
        SegmentationFolder(root, "train")
    split.write_text("a\nb\n")
    (root / "image_labels.json").write_text('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(ValueError, match=r"image_labels.json is not valid JSON: nested too deeply"):
        SegmentationFolder(root, "train")
    (root / "image_labels.json").unlink()
    classes = (root / "classes.json").read_text()
    (root / "classes.json").write_text('{"classes": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(ValueError, match=r"classes.json is not valid JSON: nested too deeply"):
        SegmentationFolder(root, "train")
    (root / "classes.json").write_text(classes)
    (root / "masks" / "b.png").write_bytes(png_header(100_000, 100_000))  # a bomb as a mask
    with pytest.raises(ValueError, match=r"b.png declares too many pixels to decode"):
        SegmentationFolder(root, "train")
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(root / "masks" / "b.png")
    photo = root / "images" / "a.png"
    photo.write_bytes(photo.read_bytes()[:60])
    dataset = SegmentationFolder(root, "train")  # photos are read per sample
    with pytest.raises(ValueError, match=r"a.png is not a readable image: image file is truncated"):
        dataset[0]


def test_dataset_image_size_is_bounded_naming_it(tmp_path: Path) -> None:
    root = write_fake_msrc21(tmp_path / "msrc", 4)["root"]
    assert MSRC21(root, "train", image_size=MAX_IMAGE_SIDE).image_size == (MAX_IMAGE_SIDE,) * 2
    with pytest.raises(ValueError, match=r"`image_size` must be <= 4096, got 100000"):
        MSRC21(root, "train", image_size=100_000)
    with pytest.raises(ValueError, match=r"`image_size\[1\]` must be <= 4096, got 5000"):
        SegmentationFolder(write_folder(tmp_path / "mine"), "train", image_size=(240, 5000))


def test_voc_image_set_in_latin1_names_the_file(tmp_path: Path) -> None:
    root = write_fake_voc(tmp_path, 4, augmented=False)["root"]
    set_file = root / "VOC2012" / "ImageSets" / "Segmentation" / "train.txt"
    set_file.write_bytes(set_file.read_bytes() + "caf\u00e9\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"train.txt is not UTF-8 text"):
        VOCMultiLabel(root, "train")


# ------------------------------------------------------------------------------------------ config
@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"data": {"image_size": 100_000}},
         "`data.image_size` must be at most 4096 pixels a side, got 100000"),
        ({"model": {"width": 10**6}}, "`model.width` must be at most 512, got 1000000"),
        ({"device": "cuda:"},
         "`device` must be 'auto', 'cpu', 'cuda' or 'cuda:N' (N a device number), got 'cuda:'"),
        ({"device": "cuda:x"}, "got 'cuda:x'"),
        ({"device": "cuda:-1"}, "got 'cuda:-1'"),
        ({"method": {"multiscale": [1e-6]}},
         "`method.multiscale[0]` = 1e-06 turns `data.image_size` [80, 80] into 0 x 0 images; each side "
         "must be 1..4096 pixels"),
        ({"method": {"multiscale": [1.0, 1000.0]}}, "`method.multiscale[1]` = 1000.0 turns"),
    ],
)  # fmt: skip
def test_config_bounds_and_formats_are_checked_when_built(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        PipelineConfig.from_dict(changes)
    assert message in str(caught.value)


def test_config_limits_are_inclusive() -> None:
    assert PipelineConfig.from_dict({"model": {"width": 512}, "device": "cuda:12"}).device == "cuda:12"
    config = PipelineConfig.from_dict({"data": {"image_size": 64}, "method": {"multiscale": [1 / 64, 64.0]}})
    assert config.method.multiscale == (1 / 64, 64.0)  # 1 x 1 and 4096 x 4096 images


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("list.json", b"[1, 2]", "list.json must hold a table of settings (a JSON object), got a list"),
        ("latin.toml", "[data]\nroot = 'caf\u00e9'\n".encode("latin-1"), "latin.toml is not UTF-8 text"),
        ("deep.json", b"[" * 100_000 + b"]" * 100_000, "deep.json is not valid JSON: nested too deeply"),
        (
            "deep.toml",
            b"a = " + b"[" * 100_000 + b"]" * 100_000,
            "deep.toml: cannot parse: nested too deeply",
        ),
    ],
)
def test_config_files_that_cannot_be_read_name_the_file(
    tmp_path: Path, name: str, content: bytes, message: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(path)


# ------------------------------------------------------------------------------------------ the command line
def no_work(*_: object, **__: object) -> None:
    raise AssertionError("work started before the arguments were checked")


def cases(tmp_path: Path, photos: dict[str, Path]) -> dict[str, tuple[list[str], str]]:
    """argv and the message of each bad input (the files they need are written here)."""
    file = tmp_path / "file.txt"
    file.write_text("x")
    folder = tmp_path / "folder"
    folder.mkdir()
    (tmp_path / "list.json").write_text("[]")
    for key, text in {
        "size": "[data]\nimage_size = 100000\n",
        "width": "[model]\nwidth = 1000000\n",
        "cuda_colon": 'device = "cuda:"\n',
        "cuda_x": 'device = "cuda:x"\n',
        "scales": "[method]\nmultiscale = [1e-6]\n",
    }.items():
        (tmp_path / f"{key}.toml").write_text(text)
    good = tmp_path / "good.toml"
    good.write_text("seed = 1\n")
    cam = ["cam", os.fspath(photos["png"]), "--model", "resnet18", "--weights", os.fspath(photos["weights"]),
           "--num-classes", "10", "--size", "32", "--out"]  # fmt: skip
    out = os.fspath(tmp_path / "out")
    return {
        "cam size": ([*cam, out, "--size", "30000"], "`size` must be <= 4096, got 30000"),
        "cam out file": ([*cam, os.fspath(file)], f"`--out` {os.fspath(file)!r} is a file"),
        "cam out inside a file": ([*cam, os.fspath(file / "sub")], f"{os.fspath(file)!r} is a file"),
        "cam class names folder": (
            [*cam, out, "--class-names", os.fspath(folder)],
            f"`class_names` {os.fspath(folder)!r} is a folder; a file was expected",
        ),
        "cam device meta": (
            [*cam, out, "--device", "meta"],
            "`device` must be 'cpu', 'cuda', 'cuda:N' or 'mps', got 'meta'",
        ),
        "cam bomb": ([*cam[:1], os.fspath(photos["bomb"]), *cam[2:], out], "bomb.png' (Image size"),
        "run folder": (["run", os.fspath(folder), "--out", out], f"{os.fspath(folder)} is a folder"),
        "run list": (["run", os.fspath(tmp_path / "list.json"), "--out", out], "got a list"),
        "run image size": (["run", os.fspath(tmp_path / "size.toml"), "--out", out], "`data.image_size`"),
        "run width": (["run", os.fspath(tmp_path / "width.toml"), "--out", out], "`model.width`"),
        "run cuda:": (["run", os.fspath(tmp_path / "cuda_colon.toml"), "--out", out], "got 'cuda:'"),
        "run cuda:x": (["run", os.fspath(tmp_path / "cuda_x.toml"), "--out", out], "got 'cuda:x'"),
        "run scales": (["run", os.fspath(tmp_path / "scales.toml"), "--out", out], "`method.multiscale[0]`"),
        "run out file": (["run", os.fspath(good), "--out", os.fspath(file)], "`--out`"),
        "bench results file": (
            ["bench", "--quick", "--out", out, "--results", os.fspath(file)],
            f"`--results` {os.fspath(file)!r} is a file",
        ),
        "hierarchy names folder": (
            ["hierarchy", os.fspath(photos["weights"]), "--levels", "3", "--names", os.fspath(folder)],
            f"`--names` {os.fspath(folder)!r} is a folder",
        ),
        "hierarchy out folder": (
            ["hierarchy", os.fspath(photos["weights"]), "--levels", "3", "--out", os.fspath(folder)],
            "is a folder; a JSON file to write was expected",
        ),
    }


CASES = [
    "cam size", "cam out file", "cam out inside a file", "cam class names folder", "cam device meta",
    "cam bomb",
    "run folder", "run list", "run image size", "run width", "run cuda:", "run cuda:x", "run scales",
    "run out file", "bench results file", "hierarchy names folder", "hierarchy out folder",
]  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_the_command_line_answers_bad_input_with_one_line_and_status_2(
    tmp_path: Path,
    photos: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    case: str,
) -> None:
    monkeypatch.delenv("HIERCAM_TRACEBACK", raising=False)
    monkeypatch.setattr(hiercam.cli.explain, "build_model", no_work)
    monkeypatch.setattr("hiercam.pipeline.run_pipeline", no_work)
    monkeypatch.setattr("hiercam.pipeline.run_bench", no_work)
    argv, message = cases(tmp_path, photos)[case]
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"hiercam {argv[0]}: error: ")
    assert message in lines[0]
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_a_traceback_on_request(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HIERCAM_TRACEBACK", "1")
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(ConfigError, match="got a list"):
        main(["run", os.fspath(tmp_path / "list.json"), "--out", os.fspath(tmp_path / "out")])


def test_a_vit_at_a_size_it_cannot_take_names_the_size(
    photos: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pytest.importorskip("timm")
    monkeypatch.setattr(hiercam.cli.explain, "_default_device", lambda: torch.device("cpu"))
    argv = ["cam", os.fspath(photos["png"]), "--model", "timm:vit_tiny_patch16_224", "--num-classes", "5",
            "--size", "80", "--no-overlay", "--out", os.fspath(tmp_path / "out")]  # fmt: skip
    with pytest.warns(UserWarning, match="no weights given"):
        assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "`size`: the model cannot take 80 x 80 images (it raised AssertionError: Input height (80)" in err
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------ overlays
def test_fit_within_keeps_the_aspect_ratio() -> None:
    assert fit_within((10_000, 10_000), 2048) == (2048, 2048)
    assert fit_within((10_000, 3), 2048) == (2048, 1)  # never below one pixel
    assert fit_within((200, 300), 64) == (43, 64)
    assert fit_within((64, 64), 64) == (64, 64)


def test_overlays_of_large_photos_are_drawn_on_a_scaled_down_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, photos: dict[str, Path]
) -> None:
    pytest.importorskip("matplotlib")
    from hiercam.viz import overlay

    monkeypatch.setattr(hiercam.cli.explain, "_default_device", lambda: torch.device("cpu"))
    monkeypatch.setattr(hiercam.cli.explain, "MAX_OVERLAY_SIDE", 64)
    big = tmp_path / "big.png"
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (200, 300, 3), dtype=np.uint8)).save(big)
    seen: list[tuple[int, ...]] = []
    drawn: Callable[..., np.ndarray] = hiercam.viz.overlay

    def spy(image: torch.Tensor, *args: object, **kwargs: object) -> np.ndarray:
        seen.append(tuple(image.shape))
        return drawn(image, *args, **kwargs)

    monkeypatch.setattr(hiercam.viz, "overlay", spy)
    records = explain_images([big], "resnet18", tmp_path / "out", weights=photos["weights"], num_classes=10,
                             size=32, classes=[2])  # fmt: skip
    assert seen == [(3, 43, 64)]  # the photo was never drawn at 200 x 300
    maps = torch.load(records[0].maps, weights_only=True)["maps"]
    with Image.open(big) as image:  # the oracle: PIL's own bilinear resize of the photo
        small = np.asarray(image.convert("RGB").resize((64, 43), Image.Resampling.BILINEAR), np.float32)
    expected = np.round(overlay(torch.from_numpy(small / 255).permute(2, 0, 1), maps[0]) * 255)
    written = np.asarray(Image.open(records[0].overlays[0]))
    assert written.shape == (43, 64, 3)
    assert np.abs(written.astype(int) - expected.astype(int)).max() <= 1


def test_load_image_max_side(photos: dict[str, Path]) -> None:
    assert load_image(photos["png"], max_side=64).shape == (1, 3, 48, 64)  # fits: its own size
    small = load_image(photos["png"], input_norm="none", max_side=32)
    with Image.open(photos["png"]) as image:
        expected = np.asarray(image.resize((32, 24), Image.Resampling.BILINEAR), np.float32) / 255
    torch.testing.assert_close(small[0], torch.from_numpy(expected).permute(2, 0, 1))
    with pytest.raises(ValueError, match=r"`max_side` applies with `size=None` only"):
        load_image(photos["png"], 32, max_side=16)
    with pytest.raises(ValueError, match=r"`size` must be <= 4096, got 5000"):
        load_image(photos["png"], 5000)


# -------------------------------------------- the library's own JSON files: nested too deeply, not UTF-8


def _deep(path: Path) -> Path:
    path.write_text("[" * 100_000 + "]" * 100_000, encoding="utf-8")
    return path


def test_the_librarys_own_json_files_nested_too_deeply_are_named(tmp_path: Path) -> None:
    """History, metrics.json, a step marker and a bench seed record: a RecursionError inside `json` becomes a
    ValueError naming the file (the readers that do not go through `hiercam._io.read_json_file`)."""
    from hiercam import History
    from hiercam.pipeline.artifacts import read_marker
    from hiercam.pipeline.results import RunResult
    from hiercam.pipeline.run import _read_seed_record

    with pytest.raises(ValueError, match="history.json' is not a JSON file"):
        History.load(_deep(tmp_path / "history.json"))
    with pytest.raises(ValueError, match="metrics.json: not JSON"):
        RunResult.load(_deep(tmp_path / "metrics.json"))
    with pytest.raises(ValueError, match="marker.json: the step marker is not JSON"):
        read_marker(_deep(tmp_path / "marker.json"), "key")
    with pytest.raises(ValueError, match="seed_0.json: not JSON"):
        _read_seed_record(_deep(tmp_path / "seed_0.json"), PipelineConfig())
    latin = tmp_path / "latin.json"
    latin.write_bytes('{"caf\xe9": 1}'.encode("latin-1"))
    with pytest.raises(ValueError, match="latin.json: not JSON"):
        RunResult.load(latin)
