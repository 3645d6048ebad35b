"""``hiercam cam``: CAMs of image files (``hiercam.cli.explain``), checked against the CAM classes."""

from __future__ import annotations

import json
import os
import sys
from functools import partialmethod
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.models import mobilenet_v3_small, resnet18

import hiercam.cam
from hiercam.cam import METHODS, BaseCAM, GradCAM
from hiercam.cli import main
from hiercam.cli.explain import explain_images, find_method

pytestmark = pytest.mark.usefixtures("one_thread", "cpu_by_default")

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


@pytest.fixture
def cpu_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """The command's default device is CUDA when present; the CPU oracles need the CPU (no TF32)."""
    monkeypatch.setattr("hiercam.cli.explain._default_device", lambda: torch.device("cpu"))


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    """Two photos of different sizes and formats, and the weights of a 10-class ResNet-18."""
    rng = np.random.default_rng(0)
    photo = tmp_path / "photo.png"
    Image.fromarray(rng.integers(0, 256, (48, 80, 3), dtype=np.uint8)).save(photo)
    grey = tmp_path / "grey.jpg"
    Image.fromarray(rng.integers(0, 256, (70, 50), dtype=np.uint8), mode="L").save(grey)
    weights = tmp_path / "resnet18_10.pt"
    torch.save(resnet18(num_classes=10).state_dict(), weights)
    return {"photo": photo, "grey": grey, "weights": weights}


def reference_model(weights: Path) -> torch.nn.Module:
    model = resnet18(num_classes=10)
    model.load_state_dict(torch.load(weights, weights_only=True))
    return model.eval()


def preprocess(path: Path, size: tuple[int, int], input_norm: str = "imagenet") -> torch.Tensor:
    """The documented preprocessing, written independently: RGB, bilinear resize, then the scaling."""
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB").resize((size[1], size[0]), Image.BILINEAR), np.float32)
    if input_norm == "tanh":
        scaled = pixels / 127.5 - 1
    elif input_norm == "none":
        scaled = pixels / 255
    else:
        scaled = (pixels / 255 - MEAN) / STD
    return torch.from_numpy(scaled).permute(2, 0, 1)[None]


def run(*args: str | os.PathLike[str]) -> int:
    return main(["cam", *map(os.fspath, args)])


def test_top_k_maps_equal_gradcam_called_directly(files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    images = (files["photo"], files["grey"])
    code = run(*images, "--model", "resnet18", "--weights", files["weights"],
               "--num-classes", "10", "--size", "64", "--top-k", "3", "--out", out)  # fmt: skip
    assert code == 0
    model = reference_model(files["weights"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["target_layer"] == "layer4"
    assert summary["method"] == "GradCAM"
    for image, entry in zip(images, summary["images"], strict=True):
        x = preprocess(image, (64, 64))
        logits = model(x).detach()
        best = logits[0].topk(3)
        saved = torch.load(out / f"{image.stem}.pt", weights_only=True)
        assert saved["classes"].tolist() == best.indices.tolist() == entry["classes"]
        torch.testing.assert_close(saved["scores"], best.values, rtol=1e-4, atol=1e-4)
        with GradCAM(model, "layer4") as cam:
            expected = cam(x, best.indices.tolist())[0]
        assert saved["maps"].dtype == torch.float32
        assert saved["maps"].shape == (3, 64, 64)
        torch.testing.assert_close(saved["maps"], expected, rtol=1e-4, atol=1e-5)
        assert entry["maps"] == os.fspath(out / f"{image.stem}.pt")
        assert entry["overlays"] == [os.fspath(out / f"{image.stem}_{k}.png") for k in entry["classes"]]
        with Image.open(image) as original:
            original_size = original.size
        for path in entry["overlays"]:
            with Image.open(path) as picture:
                assert picture.size == original_size
                assert picture.mode == "RGB"


@pytest.mark.parametrize(
    ("options", "scales"),
    [(["--multiscale"], hiercam.cam.IRN_SCALES), (["--multiscale", "1", "0.5"], (1.0, 0.5)), ([], None)],
)
@pytest.mark.parametrize("eigen_smooth", [False, True])
def test_eigen_smooth_and_multiscale_equal_the_classes_called_directly(
    files: dict[str, Path], tmp_path: Path, options: list[str], scales: tuple[float, ...] | None,
    eigen_smooth: bool,
) -> None:  # fmt: skip
    out = tmp_path / "out"
    smooth = ["--eigen-smooth"] if eigen_smooth else []
    code = run(files["photo"], *resnet_args(files), "--size", "64", "--layer", "layer4",
               "--classes", "2", "7", *smooth, *options, "--out", out)  # fmt: skip
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["eigen_smooth"] is eigen_smooth
    assert summary["scales"] == (None if scales is None else list(scales))
    x = preprocess(files["photo"], (64, 64))
    with GradCAM(reference_model(files["weights"]), "layer4", eigen_smooth=eigen_smooth) as cam:
        explain = cam if scales is None else hiercam.cam.MultiScaleCAM(cam, scales)
        expected = explain(x, [2, 7])[0]
    saved = torch.load(out / "photo.pt", weights_only=True)
    torch.testing.assert_close(saved["maps"], expected, rtol=1e-4, atol=1e-5)
    assert saved["classes"].tolist() == [2, 7]


def test_overlay_png_is_viz_overlay_on_the_original(files: dict[str, Path], tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from hiercam.viz import overlay

    records = explain_images([files["photo"]], "resnet18", tmp_path / "out",
                             weights=files["weights"], num_classes=10, size=64, classes=[4])  # fmt: skip
    maps = torch.load(records[0].maps, weights_only=True)["maps"]
    original = torch.from_numpy(np.asarray(Image.open(files["photo"]), np.float32) / 255).permute(2, 0, 1)
    expected = np.round(overlay(original, maps[0]) * 255).astype(np.uint8)
    written = np.asarray(Image.open(records[0].overlays[0]))
    assert np.abs(written.astype(int) - expected.astype(int)).max() <= 1


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_by_name_with_given_classes(
    files: dict[str, Path], tmp_path: Path, method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if method in ("sscam", "iscam"):  # their 35 and 10 samples per channel take minutes here: use 1
        monkeypatch.setattr(
            METHODS[method], "__init__", partialmethod(METHODS[method].__init__, num_samples=1)
        )
    if method in ("randomcam", "smoothgradcamplusplus", "sscam"):  # random draws: a fresh seeded generator
        original = METHODS[method].__init__

        def seeded(self: BaseCAM, *args: Any, **kwargs: Any) -> None:
            original(self, *args, generator=torch.Generator().manual_seed(0), **kwargs)

        monkeypatch.setattr(METHODS[method], "__init__", seeded)
    out = tmp_path / "out"
    code = run(files["grey"], "--model", "resnet18", "--weights", files["weights"],
               "--num-classes", "10", "--method", method, "--classes", "7", "2", "--size", "48", "72",
               "--input-norm", "tanh", "--normalize", "none", "--no-overlay", "--out", out)  # fmt: skip
    assert code == 0
    model = reference_model(files["weights"])
    x = preprocess(files["grey"], (48, 72), "tanh")
    layer = None if method in ("fullgrad", "guidedbackprop") else "layer4"  # those explain the input
    with METHODS[method](model, layer) as cam:
        expected = cam(x, [7, 2], normalize=None)[0]
        logits = cam.logits
    saved = torch.load(out / "grey.pt", weights_only=True)
    assert saved["method"] == METHODS[method].__name__
    assert saved["classes"].tolist() == [7, 2]
    assert logits is not None
    torch.testing.assert_close(saved["scores"], logits[0, [7, 2]], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(saved["maps"], expected, rtol=1e-4, atol=1e-5)
    assert not list(out.glob("*.png"))


def test_methods_mapping_holds_every_exported_cam_class() -> None:
    exported = {
        obj
        for name in hiercam.cam.__all__
        if isinstance(obj := getattr(hiercam.cam, name), type)
        and issubclass(obj, BaseCAM)
        and obj is not BaseCAM
    }
    assert set(METHODS.values()) == exported
    assert {key: cls.__name__.lower() for key, cls in METHODS.items()} == {key: key for key in METHODS}
    assert find_method("Grad-CAM++") is METHODS["gradcamplusplus"]
    assert find_method("grad_cam") is GradCAM


def test_input_norm_none_and_auto_layer_on_another_family(files: dict[str, Path], tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = mobilenet_v3_small(num_classes=5).eval()
    weights = tmp_path / "mnv3.pt"
    torch.save(model.state_dict(), weights)
    records = explain_images([files["photo"]], "mobilenet_v3_small", tmp_path / "out",
                             weights=weights, num_classes=5, size=64, top_k=2, input_norm="none",
                             overlays=False)  # fmt: skip
    x = preprocess(files["photo"], (64, 64), "none")
    best = model(x).detach()[0].topk(2).indices.tolist()
    assert records[0].classes == best
    with GradCAM(model) as cam:
        expected = cam(x, best)[0]
    torch.testing.assert_close(torch.load(records[0].maps, weights_only=True)["maps"], expected)


def test_no_weights_warns_and_uses_random_init(files: dict[str, Path], tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="random weights"):
        records = explain_images([files["photo"]], "resnet18", tmp_path / "out", num_classes=4,
                                 size=32, overlays=False)  # fmt: skip
    assert len(records[0].classes) == 1


def test_images_sharing_a_name_get_distinct_files(files: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, second = tmp_path / "a" / "cat.png", tmp_path / "b" / "cat.png"
    Image.new("RGB", (40, 40), "red").save(first)
    Image.new("RGB", (40, 40), "blue").save(second)
    records = explain_images([first, second], "resnet18", tmp_path / "out",
                             weights=files["weights"], num_classes=10, size=32, overlays=False)  # fmt: skip
    assert [Path(r.maps).name for r in records] == ["cat.pt", "cat-2.pt"]
    assert torch.load(records[1].maps, weights_only=True)["image"] == os.fspath(second)


def test_exif_orientation_is_applied(files: dict[str, Path], tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    rotated = tmp_path / "rotated.jpg"
    Image.fromarray(pixels).save(rotated, exif=exif, quality=95)
    records = explain_images([rotated], "resnet18", tmp_path / "out", weights=files["weights"],
                             num_classes=10, size=(32, 48), classes=[1])  # fmt: skip
    with Image.open(records[0].overlays[0]) as picture:
        assert picture.size == (40, 60)  # (width, height) of the upright image
    with Image.open(rotated) as image:
        upright = image.transpose(Image.Transpose.ROTATE_270).convert("RGB")
    x = np.asarray(upright.resize((48, 32), Image.BILINEAR), np.float32) / 255
    x = torch.from_numpy((x - MEAN) / STD).permute(2, 0, 1)[None]
    with GradCAM(reference_model(files["weights"]), "layer4") as cam:
        expected = cam(x, [1])[0]
    torch.testing.assert_close(torch.load(records[0].maps, weights_only=True)["maps"], expected)


def test_timm_model_by_name(files: dict[str, Path], tmp_path: Path) -> None:
    timm = pytest.importorskip("timm")
    torch.manual_seed(2)
    model = timm.create_model("resnet10t", pretrained=False, num_classes=3).eval()
    weights = tmp_path / "timm.pt"
    torch.save(model.state_dict(), weights)
    # a pretrained tag names the architecture; nothing is downloaded (pretrained=False)
    records = explain_images([files["photo"]], "timm:resnet10t.c3_in1k", tmp_path / "out", weights=weights,
                             num_classes=3, size=64, classes=[0, 2], overlays=False)  # fmt: skip
    with GradCAM(model) as cam:
        expected = cam(preprocess(files["photo"], (64, 64)), [0, 2])[0]
    torch.testing.assert_close(torch.load(records[0].maps, weights_only=True)["maps"], expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_device_gives_the_cpu_maps(files: dict[str, Path], tmp_path: Path) -> None:
    common = dict(weights=files["weights"], num_classes=10, size=64, top_k=2, overlays=False)
    on_cpu = explain_images([files["photo"]], "resnet18", tmp_path / "cpu", device="cpu", **common)
    on_gpu = explain_images([files["photo"]], "resnet18", tmp_path / "gpu", device="cuda", **common)
    assert on_gpu[0].classes == on_cpu[0].classes
    maps = [torch.load(r[0].maps, weights_only=True)["maps"] for r in (on_cpu, on_gpu)]
    assert maps[1].device.type == "cpu"
    torch.testing.assert_close(maps[1], maps[0], rtol=0, atol=2e-2)  # TF32 convolutions on the GPU


# ------------------------------------------------------------------------------------------ bad inputs
def fail(capsys: pytest.CaptureFixture[str], out: Path, *args: str | os.PathLike[str]) -> str:
    """Run the command expecting exit status 2 with nothing written; returns stderr."""
    assert run(*args, "--out", out) == 2
    assert not out.exists()
    return capsys.readouterr().err


def resnet_args(files: dict[str, Path]) -> list[str | os.PathLike[str]]:
    return ["--model", "resnet18", "--weights", files["weights"], "--num-classes", "10",
            "--size", "32"]  # fmt: skip


def test_unreadable_and_missing_images_are_all_named_before_model_work(
    files: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    broken = tmp_path / "broken.png"
    broken.write_text("not an image")
    missing = tmp_path / "missing.jpg"

    def no_model(*_: object, **__: object) -> None:
        raise AssertionError("the model was built before the images were checked")

    monkeypatch.setattr("hiercam.cli.explain.build_model", no_model)
    err = fail(capsys, tmp_path / "out", files["photo"], broken, missing, *resnet_args(files))
    assert "`images`: cannot read 2 of 3" in err
    assert f"{os.fspath(broken)!r}" in err
    assert f"{os.fspath(missing)!r} (no such file)" in err
    assert os.fspath(files["photo"]) not in err


def test_truncated_image_is_an_error(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(files["photo"].read_bytes()[:200])
    err = fail(capsys, tmp_path / "out", truncated, *resnet_args(files))
    assert "truncated.png" in err


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("resnet1", "close matches: resnet18"),
        ("fcn_resnet50", "not a torchvision classification model"),
        ("torchvision:resnet18", "did you mean 'resnet18'"),
        ("keras:resnet18", "the only prefix is 'timm:'"),
        ("timm:resnet5O", "close matches: resnet50"),
    ],
)
def test_unknown_model_suggests_close_matches(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], model: str, message: str
) -> None:
    if model.startswith("timm:"):
        pytest.importorskip("timm")
    err = fail(capsys, tmp_path / "out", files["photo"], "--model", model)
    assert "`model`" in err
    assert message in err


def test_weights_of_another_model_name_the_file_and_keys(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "other.pt"
    torch.save(mobilenet_v3_small(num_classes=10).state_dict(), other)
    err = fail(capsys, tmp_path / "out", files["photo"], "--model", "resnet18",
               "--weights", other, "--num-classes", "10")  # fmt: skip
    assert f"`weights` {os.fspath(other)!r} does not fit the model" in err
    assert "missing keys" in err
    assert "conv1.weight" in err
    assert "unexpected keys" in err


def test_weights_with_other_class_count_suggest_num_classes(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = fail(capsys, tmp_path / "out", files["photo"], "--model", "resnet18",
               "--weights", files["weights"])  # fmt: skip
    assert "fc.weight: file (10, 512), model (1000, 512)" in err
    assert "another number of classes?" in err


class Hostile:
    """Deletes a file when unpickled, as a malicious checkpoint would run code."""

    def __init__(self, victim: Path) -> None:
        self.victim = victim

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.remove, (os.fspath(self.victim),))


def test_hostile_pickle_is_refused_and_nothing_runs(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("still here")
    hostile = tmp_path / "hostile.pt"
    torch.save({"fc.weight": Hostile(victim)}, hostile)
    err = fail(capsys, tmp_path / "out", files["photo"], "--model", "resnet18", "--weights", hostile)
    assert victim.read_text() == "still here"
    assert f"`weights` {os.fspath(hostile)!r} could not be read with torch.load(weights_only=True)" in err


@pytest.mark.parametrize(
    ("content", "message"),
    [(torch.zeros(3), "holds a Tensor, not a state dict"), ({"fc.weight": [1.0]}, "not a state dict")],
)
def test_weights_that_are_not_a_state_dict(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], content: object, message: str
) -> None:
    path = tmp_path / "odd.pt"
    torch.save(content, path)
    err = fail(capsys, tmp_path / "out", files["photo"], "--model", "resnet18", "--weights", path)
    assert "`weights`" in err
    assert message in err


def test_missing_weights_file(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = fail(capsys, tmp_path / "out", files["photo"], "--model", "resnet18", "--weights",
               tmp_path / "nope.pt")  # fmt: skip
    assert "`weights`" in err
    assert "nope.pt': no such file" in err


def test_method_options_equal_finercam_called_directly(files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    code = run(files["photo"], *resnet_args(files), "--size", "64", "--layer", "layer4",
               "--method", "finercam", "--classes", "2", "7", "--method-option", "comparisons=[1, 2]",
               "--method-option", "alpha=0.8", "--method-option", "method=gradcamplusplus",
               "--out", out)  # fmt: skip
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method_options"] == {"comparisons": [1, 2], "alpha": 0.8, "method": "gradcamplusplus"}
    x = preprocess(files["photo"], (64, 64))
    model = reference_model(files["weights"])
    with hiercam.cam.FinerCAM(
        model, "layer4", method=hiercam.cam.GradCAMPlusPlus, comparisons=(1, 2), alpha=0.8
    ) as cam:
        expected = cam(x, [2, 7])[0]
    with hiercam.cam.FinerCAM(model, "layer4") as cam:
        default = cam(x, [2, 7])[0]
    saved = torch.load(out / "photo.pt", weights_only=True)
    torch.testing.assert_close(saved["maps"], expected, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(saved["maps"], default, rtol=1e-4, atol=1e-5)


def test_method_options_of_the_function_record_a_class_by_its_name(
    files: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    options = {"method": hiercam.cam.GradCAMPlusPlus, "comparisons": (1,)}
    explain_images([files["photo"]], "resnet18", out, weights=files["weights"], num_classes=10, size=64,
                   method="finercam", classes=[3], overlays=False, method_options=options)  # fmt: skip
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method_options"] == {"method": "GradCAMPlusPlus", "comparisons": [1]}
    assert options == {"method": hiercam.cam.GradCAMPlusPlus, "comparisons": (1,)}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--method-option", "beta=1"], "FinerCAM takes no option 'beta'; its options: alpha, comparisons,"),
        (["--method-option", "eigen_smooth=true"], "cannot set 'eigen_smooth': use `eigen_smooth`"),
        (["--method-option", "target_layer=layer3"], "cannot set 'target_layer': use `layer`"),
        (["--method-option", "alpha"], "--method-option must be NAME=VALUE, got 'alpha'"),
        (["--method-option", "alpha=1", "--method-option", "alpha=2"], "'alpha' is given twice"),
        (["--method-option", "alpha=NaN"], "`alpha` must be a finite number, got nan"),
        (["--method-option", "method=gradcma"], "did you mean gradcam"),
    ],
)
def test_bad_method_options_exit_2_naming_the_option(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    err = fail(capsys, tmp_path / "out", files["photo"], *resnet_args(files), "--method", "finercam", *args)
    assert message in err


def test_method_options_must_be_a_mapping(files: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="`method_options` must be a mapping"):
        explain_images([files["photo"]], "resnet18", tmp_path / "out", method_options=[("alpha", 1.0)])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--top-k", "0"], "`top_k` must be >= 1, got 0"),
        (["--top-k", "11"], "`top_k` must be <= 10 (the model has 10 classes), got 11"),
        (["--classes", "3", "10"], "`classes` must be class indices in [0, 10), got 10"),
        (["--classes", "-1"], "`classes` must be >= 0, got -1"),
        (["--classes", "3", "3"], "`classes` must not repeat a class, got 3"),
        (["--method", "gradcma"], "did you mean gradcam"),
        (["--layer", "layer5"], "`layer` 'layer5' is not a submodule of the model; close matches: layer4"),
        (["--size", "32", "32", "32"], "`size` must be one int or (H, W), got 3 values"),
        (["--size", "4"], "`size` must be >= 8, got 4"),
        (["--device", "tpu9"], "`device` must be a torch device such as 'cpu' or 'cuda', got 'tpu9'"),
        (["--method", "guidedbackprop", "--eigen-smooth"], "`eigen_smooth` is not taken by GuidedBackprop"),
        (["--method", "eigencam", "--eigen-smooth"], "`eigen_smooth` is not taken by EigenCAM"),
        (["--multiscale", "1", "0"], "`scales` must be positive and finite, got 0.0"),
        (["--multiscale", "nan"], "`scales` must be positive and finite, got nan"),
    ],
)
def test_bad_options_exit_2_naming_the_argument(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    err = fail(capsys, tmp_path / "out", files["photo"], *resnet_args(files), *args)
    assert message in err


def test_help_lists_the_cam_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    assert "class activation maps of image files" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["cam", "--help"])
    shown = capsys.readouterr().out
    assert "--weights FILE" in shown
    # the methods --eigen-smooth refuses, as the CAM classes' constructors say (FullGrad takes it)
    assert "not taken by eigencam, eigengradcam, guidedbackprop, guidedgradcam, kpcacam)" in " ".join(
        shown.split()
    )


def test_classes_and_top_together_are_refused(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        run(files["photo"], *resnet_args(files), "--classes", "1", "--top-k", "2", "--out", tmp_path / "out")
    assert info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
    with pytest.raises(ValueError, match="either `classes` or `top_k`"):
        explain_images([files["photo"]], "resnet18", tmp_path / "out", classes=[1], top_k=2)


def test_missing_matplotlib_is_a_clear_error(
    files: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    err = fail(capsys, tmp_path / "out", files["photo"], *resnet_args(files))
    assert "need matplotlib: pip install 'hiercam[viz]'" in err
    assert "--no-overlay" in err
    assert run(files["photo"], *resnet_args(files), "--no-overlay", "--out", tmp_path / "maps") == 0
    assert (tmp_path / "maps" / "photo.pt").is_file()


# ------------------------------------------------------------------------------------------ real model
@pytest.mark.shared
def test_real_mobilenet_names_the_egyptian_cat(shared_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    code = run(shared_dir / "images" / "cat.png", "--model", "mobilenet_v2",
               "--weights", shared_dir / "models" / "mobilenet_v2_imagenet.pth", "--input-norm", "tanh",
               "--out", out)  # fmt: skip
    assert code == 0
    saved = torch.load(out / "cat.pt", weights_only=True)
    labels = (shared_dir / "images" / "imagenet_labels.txt").read_text().splitlines()
    assert saved["classes"].tolist() == [285]
    assert labels[285 + 1] == "Egyptian cat"  # line 0 is "background"
    assert saved["maps"].shape == (1, 224, 224)
    assert saved["maps"].amax() == 1.0
    with Image.open(out / "cat_285.png") as picture, Image.open(shared_dir / "images" / "cat.png") as photo:
        assert picture.size == photo.size
