"""Image files in and pictures out: ``hiercam.load_image``, ``hiercam.viz.save_overlay``, and ``hiercam cam``
with folders, glob patterns, files that are not images, class names and several layers (issue 24)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.models import resnet18

import hiercam
from hiercam.cam import METHODS
from hiercam.cli import main
from hiercam.cli.explain import explain_images

pytestmark = pytest.mark.usefixtures("one_thread")

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    path = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Two photos, a grey JPEG in a subfolder, and files that are not images."""
    root = tmp_path / "photos"
    (root / "more").mkdir(parents=True)
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(root / "a.png")
    Image.fromarray(rng.integers(0, 256, (36, 48, 3), dtype=np.uint8)).save(root / "b.jpg")
    Image.fromarray(rng.integers(0, 256, (30, 30), dtype=np.uint8), mode="L").save(root / "more" / "c.jpg")
    (root / "notes.txt").write_text("not an image")
    (root / "labels.csv").write_text("a,1\n")
    return root


# ------------------------------------------------------------------------------------------- load_image
def test_load_image_matches_an_independent_preprocessing(photo: Path) -> None:
    with Image.open(photo) as image:
        pixels = np.asarray(image.convert("RGB").resize((24, 16), Image.BILINEAR), np.float32) / 255
    expected = torch.from_numpy((pixels - MEAN) / STD).permute(2, 0, 1)[None]
    loaded = hiercam.load_image(photo, (16, 24))
    assert loaded.shape == (1, 3, 16, 24)
    assert loaded.dtype == torch.float32
    torch.testing.assert_close(loaded, expected)
    raw = hiercam.load_image(photo, input_norm="none")
    assert raw.shape == (1, 3, 30, 40)  # the image's own size
    with Image.open(photo) as image:
        own = torch.from_numpy(np.asarray(image, np.float32) / 255).permute(2, 0, 1)
    torch.testing.assert_close(raw[0], own)
    torch.testing.assert_close(
        hiercam.load_image(photo, 8, "tanh"), hiercam.load_image(photo, (8, 8), "none") * 2 - 1
    )


def test_load_image_errors_name_the_argument(tmp_path: Path, photo: Path) -> None:
    (tmp_path / "x.png").write_text("text")
    with pytest.raises(ValueError, match="`path` .*no such file"):
        hiercam.load_image(tmp_path / "missing.png")
    with pytest.raises(ValueError, match="`path` .*is not a readable image"):
        hiercam.load_image(tmp_path / "x.png")
    with pytest.raises(TypeError, match="`path` must be a path"):
        hiercam.load_image(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`size` must be >= 1"):
        hiercam.load_image(photo, 0)
    with pytest.raises(ValueError, match="`input_norm`"):
        hiercam.load_image(photo, input_norm="caffe")  # type: ignore[arg-type]


def test_save_overlay_writes_the_overlay_as_png(tmp_path: Path, photo: Path) -> None:
    pytest.importorskip("matplotlib")
    from hiercam.viz import overlay, save_overlay

    image = hiercam.load_image(photo, input_norm="none")
    heat = torch.rand(1, 1, 5, 7, generator=torch.Generator().manual_seed(0))
    written = save_overlay(tmp_path / "cam.png", image, heat)
    assert written == tmp_path / "cam.png"
    expected = np.round(overlay(image[0], heat[0, 0]) * 255).astype(np.uint8)
    with Image.open(written) as saved:
        assert np.array_equal(np.asarray(saved), expected)
    with pytest.raises(ValueError, match="`alpha`"):
        save_overlay(tmp_path / "bad.png", image, heat, alpha=2.0)
    assert not (tmp_path / "bad.png").exists()


# ---------------------------------------------------------------------------------------------- the CLI
def test_folders_and_globs_skip_and_list_files_that_are_not_images(
    folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    pattern = os.fspath(folder / "**" / "c.*")
    with pytest.warns(UserWarning, match="no weights given"):
        code = main(["cam", os.fspath(folder), pattern, "--model", "resnet18", "--num-classes", "4",
                     "--size", "32", "--no-overlay", "--top-k", "2", "--out", os.fspath(out)])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert [Path(r["image"]).name for r in summary["images"]] == ["a.png", "b.jpg", "c.jpg"]
    assert sorted(Path(p).name for p in summary["skipped"]) == ["labels.csv", "notes.txt"]
    assert "skipped 2 files that are not images" in printed
    assert "notes.txt" in printed
    assert all(len(r["classes"]) == 2 for r in summary["images"])


def test_a_pattern_matching_nothing_and_a_folder_without_images_are_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.md").write_text("#")
    with pytest.raises(ValueError, match="matches no file"):
        explain_images([os.fspath(tmp_path / "*.jpg")], "resnet18", tmp_path / "out", overlays=False)
    with pytest.raises(ValueError, match=r"names no image file \(skipped 1"):
        explain_images([empty], "resnet18", tmp_path / "out", overlays=False)


@pytest.mark.parametrize("form", ["lines", "json"])
def test_class_names_file_names_the_explained_classes(
    photo: Path, tmp_path: Path, form: str, capsys: pytest.CaptureFixture[str]
) -> None:
    names = ["cat", "dog", "street sign", "tram"]
    file = tmp_path / ("names.txt" if form == "lines" else "names.json")
    file.write_text("\n".join(names) + "\n\n" if form == "lines" else json.dumps(names))
    torch.manual_seed(0)
    weights = tmp_path / "w.pt"
    model = resnet18(num_classes=4).eval()
    torch.save(model.state_dict(), weights)
    out = tmp_path / "out"
    code = main(["cam", os.fspath(photo), "--model", "resnet18", "--num-classes", "4", "--weights",
                 os.fspath(weights), "--size", "32", "--no-overlay", "--top-k", "2", "--class-names",
                 os.fspath(file), "--out", os.fspath(out)])  # fmt: skip
    assert code == 0
    record = json.loads((out / "summary.json").read_text())["images"][0]
    assert record["names"] == [names[k] for k in record["classes"]]
    assert f"classes {names[record['classes'][0]]} (" in capsys.readouterr().out


def test_class_names_of_another_length_are_refused(photo: Path, tmp_path: Path) -> None:
    file = tmp_path / "names.txt"
    file.write_text("a\nb\n")
    message = r"`class_names` must hold one name per class of the model \(4\), got 2"
    with pytest.raises(ValueError, match=message), pytest.warns(UserWarning, match="no weights"):
        explain_images([photo], "resnet18", tmp_path / "out", num_classes=4, size=32, overlays=False,
                       class_names=file)  # fmt: skip
    (tmp_path / "bad.json").write_text('["a", 1]')
    with pytest.raises(ValueError, match="JSON list of strings"):
        explain_images([photo], "resnet18", tmp_path / "out", num_classes=4, size=32, overlays=False,
                       class_names=tmp_path / "bad.json")  # fmt: skip


def test_several_layers_from_the_command_line_equal_the_extractor(photo: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = resnet18(num_classes=4).eval()
    weights = tmp_path / "w.pt"
    torch.save(model.state_dict(), weights)
    done = explain_images([photo], "resnet18", tmp_path / "out", weights=weights, num_classes=4, size=64,
                          layer=["layer3", "layer4"], classes=[1], overlays=False, device="cpu")  # fmt: skip
    saved = torch.load(done[0].maps, weights_only=True)
    expected = hiercam.GradCAM(model, ["layer3", "layer4"])(hiercam.load_image(photo, 64), [1])[0]
    torch.testing.assert_close(saved["maps"], expected)


def test_help_lists_every_method_and_the_new_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["cam", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name in METHODS:
        assert name in text
    for option in ("--top-k K", "--class-names FILE", "glob"):
        assert option in text
