"""check_folder and ``hiercam data check``: per-split presence and pixels against the folder's design, flags,
and every kind of error collected (exit status 1)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hiercam.cli import main
from hiercam.datasets import ClassCounts, check_folder


def test_presence_and_pixels_of_each_split(street_folder: Path) -> None:
    report = check_folder(street_folder)
    assert report.ok
    assert report.labels_from == "masks"
    assert report.has_masks
    train, val, test = report.splits
    assert [s.split for s in report.splits] == ["train", "val", "test"]
    assert train.num_images == 8
    assert train.sizes == (((48, 64), 8),)
    # design (conftest STREET_SPLITS): road in 8 images, car in 5, person in 4, bicycle in 4 + t7's speck
    road = (
        8 * 1536 - 5 * 192 - 4 * 80 - 4 * 192
    )  # objects drawn over road: car, person's lower 10 rows, bicycle
    assert train.classes == (
        ClassCounts("road", 8, road),
        ClassCounts("car", 5, 5 * 192),
        ClassCounts("person", 4, 4 * 192),
        ClassCounts("bicycle", 5, 4 * 192 + 9),
        ClassCounts("sign", 0, 0),
    )
    assert train.presence == (1.0, 5 / 8, 4 / 8, 5 / 8, 0.0)
    assert [c.images for c in val.classes] == [3, 2, 1, 2, 2]
    assert [c.images for c in test.classes] == [3, 2, 2, 1, 2]
    assert train.absent == ("sign",)
    assert val.absent == test.absent == ()
    assert report.ubiquitous == ("road",)
    assert any("near-ubiquitous" in w and "road" in w for w in report.warnings)
    assert any("present in no image: sign" in w for w in report.warnings)


def test_thresholds_change_the_labels_from_masks(street_folder: Path) -> None:
    report = check_folder(street_folder, min_pixels=10, ubiquitous_fraction=0.5)
    assert report.splits[0].classes[3].images == 4  # t7's 9-pixel bicycle no longer counts
    assert report.ubiquitous == ("road", "car")  # 5 / 8 > 0.5


def test_the_command_prints_a_table_per_split(
    street_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["data", "check", str(street_folder)]) == 0
    out = capsys.readouterr().out
    assert "train: 8 images, H x W 48x64 (8)" in out
    assert "road    |      8 |  100.0 % |      10240" in out
    assert "sign    |      0 |    0.0 % |          0" in out
    assert "0 errors, 3 warnings" in out


def test_errors_are_collected_and_exit_1(street_folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    png = np.asarray(Image.open(street_folder / "masks" / "t0.png")).copy()
    png[0, 0] = 9
    Image.fromarray(png).save(street_folder / "masks" / "t0.png")
    Image.fromarray(png[:-1]).save(street_folder / "masks" / "v1.png")
    (street_folder / "images" / "s0.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    (street_folder / "masks" / "s1.png").unlink()
    report = check_folder(street_folder)
    assert not report.ok
    assert len(report.errors) == 4
    assert "t0.png: label ids must be 0..4 or 255 (void), got 9" in report.errors[0]
    assert "v1.png: label map of size (47, 64) for a photo of size (48, 64)" in report.errors[1]
    assert "s0.png: not a readable image" in report.errors[2]
    assert "s1.png (listed in" in report.errors[3]
    assert main(["data", "check", str(street_folder)]) == 1
    assert "4 errors" in capsys.readouterr().err


def test_labels_disagreeing_with_masks(tmp_path: Path, street_writer: Callable[..., Path]) -> None:
    root = street_writer(tmp_path / "s", image_labels=True)
    assert check_folder(root).ok
    assert check_folder(root).labels_from == "image_labels.json"
    labels = json.loads((root / "image_labels.json").read_text())
    labels["v2"] = [1]
    (root / "image_labels.json").write_text(json.dumps(labels))
    report = check_folder(root)
    assert report.errors == (
        f"{root / 'masks' / 'v2.png'} holds the classes [1, 3], but image_labels.json lists [1] for 'v2'",
    )


def test_without_masks(tmp_path: Path, street_writer: Callable[..., Path]) -> None:
    root = street_writer(tmp_path / "s", masks=False)
    report = check_folder(root)
    assert report.ok
    assert not report.has_masks
    assert [c.pixels for c in report.splits[0].classes] == [0] * 5
    assert [c.images for c in report.splits[0].classes] == [
        8,
        5,
        4,
        5,
        0,
    ]  # image_labels.json: with the speck
    assert "mask metrics (mIoU, localisation, WSOL) are skipped" in report.to_text()


def test_a_broken_classes_file_or_missing_split(street_folder: Path) -> None:
    (street_folder / "splits" / "test.txt").unlink()
    report = check_folder(street_folder)
    assert [s.split for s in report.splits] == ["train", "val"]
    assert len(report.errors) == 1
    assert "test.txt not found" in report.errors[0]
    (street_folder / "classes.json").write_text(json.dumps({"classes": ["a", "a"]}))
    report = check_folder(street_folder)
    assert report.splits == ()
    assert "distinct, got 'a' twice" in report.errors[0]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"min_pixels": 0}, "min_pixels"), ({"min_fraction": 1}, "min_fraction"),
     ({"ubiquitous_fraction": -0.1}, "ubiquitous_fraction")],
)  # fmt: skip
def test_bad_arguments(street_folder: Path, kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        check_folder(street_folder, **kwargs)  # type: ignore[arg-type]
