"""The model factory (``hiercam.models``): names, weights, input normalisation; shared by config and CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision.models import resnet18

from hiercam.models import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageNetNormalize,
    TanhNormalize,
    apply_input_norm,
    build_model,
    check_model_name,
    load_weights,
    with_input_norm,
)
from hiercam.pipeline import ConfigError
from hiercam.pipeline.config import ModelConfig
from hiercam.pipeline.networks import backbone_factory, check_backbone

pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------------------------------- names
@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small", "timm:resnet10t"])
def test_one_spelling_for_the_config_and_the_factory(name: str) -> None:
    if name.startswith("timm:"):
        pytest.importorskip("timm")
    check_model_name(name)
    check_backbone(ModelConfig(backbone=name))  # the pipeline takes the same name


def test_built_model_is_the_library_model() -> None:
    torch.manual_seed(0)
    ours = build_model("resnet18", num_classes=4)
    torch.manual_seed(0)
    theirs = resnet18(num_classes=4)
    assert type(ours) is type(theirs)
    for (key, mine), (other, value) in zip(
        ours.state_dict().items(), theirs.state_dict().items(), strict=True
    ):
        assert key == other
        torch.testing.assert_close(mine, value, rtol=0, atol=0)


def test_timm_model_by_name() -> None:
    pytest.importorskip("timm")
    net = build_model("timm:resnet10t", num_classes=3).eval()
    assert net(torch.zeros(1, 3, 32, 32)).shape == (1, 3)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("resnet1", r"`model` 'resnet1' is not a torchvision classification model; close matches: resnet18"),
        ("torchvision:resnet18", r"the only prefix is 'timm:'.*did you mean 'resnet18'\?"),
        ("keras:resnet18", r"`model` 'keras:resnet18': the only prefix is 'timm:'"),
        ("", r"`model` must name a model, such as 'resnet50' or 'timm:resnet50', got ''"),
        ("timm:", r"`model` 'timm:' is not a timm model"),
    ],
)
def test_unknown_names_are_refused_with_close_matches(name: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_model_name(name)
    with pytest.raises(ValueError, match=message):
        build_model(name)


def test_a_timm_name_without_its_prefix_is_pointed_to_timm() -> None:
    pytest.importorskip("timm")
    with pytest.raises(ValueError, match=r"`model` 'resnet50d' is not .*; did you mean 'timm:resnet50d'\?"):
        check_model_name("resnet50d")


def test_unknown_timm_name_lists_close_matches() -> None:
    pytest.importorskip("timm")
    with pytest.raises(
        ValueError, match=r"`model` 'timm:resnet5O' is not a timm model; close matches: .*resnet50"
    ):
        check_model_name("timm:resnet5O")


def test_missing_timm_is_an_import_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(
        ImportError, match=r"`model` 'timm:resnet10t' needs timm: pip install 'hiercam\[timm\]'"
    ):
        check_model_name("timm:resnet10t")
    with pytest.raises(ConfigError, match=r"`model.backbone` 'timm:resnet10t' needs timm"):
        check_backbone(ModelConfig(backbone="timm:resnet10t"))


def test_config_errors_name_the_key_and_the_close_matches() -> None:
    with pytest.raises(
        ConfigError, match=r"`model.backbone` 'resnet1' is not .*close matches: resnet18.*small_conv"
    ):
        check_backbone(ModelConfig(backbone="resnet1"))
    with pytest.raises(ConfigError, match=r"`model.backbone` 'vgg99'"):
        backbone_factory(ModelConfig(backbone="vgg99"))


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"num_classes": 0}, ValueError, "`num_classes` must be >= 1, got 0"),
        ({"num_classes": 2.0}, TypeError, "`num_classes` must be an int, got float"),
        ({"pretrained": 1}, TypeError, "`pretrained` must be a bool, got int"),
        ({"pretrained": True, "num_classes": 3}, ValueError, "leave `num_classes` out"),
    ],
)
def test_bad_build_arguments(kwargs: dict[str, object], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        build_model("resnet18", **kwargs)  # type: ignore[arg-type]


def test_name_must_be_a_str() -> None:
    with pytest.raises(TypeError, match="`model` must be a str such as 'resnet50'"):
        check_model_name(50)  # type: ignore[arg-type]


# -------------------------------------------------------------------------------------------- weights
def test_load_weights_round_trip_and_wrappers(tmp_path: Path) -> None:
    source = nn.Linear(3, 2)
    for i, content in enumerate([source.state_dict(), {"model": source.state_dict()},
                                 {"state_dict": source.state_dict()}]):  # fmt: skip
        path = tmp_path / f"w{i}.pt"
        torch.save(content, path)
        target = nn.Linear(3, 2)
        load_weights(target, path)
        torch.testing.assert_close(target.weight, source.weight, rtol=0, atol=0)


def test_weights_that_do_not_fit_leave_the_model_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "w.pt"
    torch.save(nn.Linear(3, 4).state_dict(), path)
    target = nn.Linear(3, 2)
    before = target.weight.detach().clone()
    with pytest.raises(ValueError, match=r"`model.weights` '.*w.pt' does not fit the model: shapes \(2\)"):
        load_weights(target, path, argument="model.weights")
    torch.testing.assert_close(target.weight, before, rtol=0, atol=0)


def test_missing_weights_file_names_the_argument(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"`weights` '.*nope.pt': no such file"):
        load_weights(nn.Linear(1, 1), tmp_path / "nope.pt")


# ---------------------------------------------------------------------------------- input normalisation
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_input_norm_function_equals_the_layers(dtype: torch.dtype) -> None:
    images = torch.rand(2, 3, 5, 4, dtype=dtype)
    mean = torch.tensor(IMAGENET_MEAN, dtype=dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=dtype).view(1, 3, 1, 1)
    expected = (images - mean) / std
    torch.testing.assert_close(apply_input_norm(images, "imagenet"), expected)
    torch.testing.assert_close(ImageNetNormalize().to(dtype)(images), expected)
    torch.testing.assert_close(apply_input_norm(images[0], "imagenet"), expected[0])  # (3, H, W)
    torch.testing.assert_close(apply_input_norm(images, "tanh"), images * 255 / 127.5 - 1)
    torch.testing.assert_close(TanhNormalize()(images), apply_input_norm(images, "tanh"))
    assert apply_input_norm(images, "none") is images
    assert apply_input_norm(images, "imagenet").dtype == dtype


def test_with_input_norm_puts_the_layer_in_front() -> None:
    body = nn.Identity()
    assert with_input_norm(body, "none") is body
    for input_norm, layer in (("imagenet", ImageNetNormalize), ("tanh", TanhNormalize)):
        net = with_input_norm(body, input_norm)  # type: ignore[arg-type]
        assert isinstance(net, nn.Sequential)
        assert isinstance(net[0], layer)
        assert net[1] is body
    assert ImageNetNormalize().state_dict() == {}  # the statistics are not saved


@pytest.mark.parametrize(
    ("images", "input_norm", "error", "message"),
    [
        (torch.rand(2, 4, 5, 5), "imagenet", ValueError, r"`images` must be \(3, H, W\) or \(B, 3, H, W\)"),
        (torch.rand(3, 5), "imagenet", ValueError, "`images`"),
        (torch.zeros(1, 3, 2, 2, dtype=torch.uint8), "tanh", TypeError, "`images`"),
        (torch.rand(1, 3, 2, 2), "caffe", ValueError, "`input_norm` must be one of"),
    ],
)
def test_input_norm_bad_inputs(
    images: torch.Tensor, input_norm: str, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        apply_input_norm(images, input_norm)  # type: ignore[arg-type]
    if input_norm not in ("imagenet", "tanh", "none"):
        with pytest.raises(error, match=message):
            with_input_norm(nn.Identity(), input_norm)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------ light import
def test_import_hiercam_does_not_import_torchvision() -> None:
    code = "import sys, hiercam, hiercam.cli, hiercam.models, hiercam.pipeline\n"
    code += "print('torchvision' in sys.modules)"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert done.stdout.strip() == "False", done.stderr
