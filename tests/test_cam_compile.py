"""CAMs of a model compiled with ``torch.compile``: the same maps as the uncompiled model (the oracle).

``torch.compile`` returns an ``OptimizedModule`` wrapping the model as ``_orig_mod``. A forward hook inside a
compiled graph records a tensor that autograd cannot differentiate the logits by, so the engine explains the
wrapped module itself; layer names are taken with the ``"_orig_mod."`` prefix or without. Compilation is
lazy: only the tests that call the compiled model compile it (inductor once, else ``aot_eager``).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest
import torch
from torch import nn

import hiercam
from hiercam import BaseCAM, GradCAM, LayerCAM, MultiScaleCAM

METHODS = [GradCAM, LayerCAM]


@pytest.fixture(autouse=True)
def fresh_dynamo() -> Iterator[None]:
    """Each test compiles from a clean state and leaves none behind (compiled graphs hold the models)."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def small_cnn() -> nn.Sequential:
    """Conv, ReLU, conv, ReLU, global average pool, linear: the closed form holds at layer "3"."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 6, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 3),
    ).eval()


def compile_module(model: nn.Module, backend: str = "aot_eager") -> nn.Module:
    """``torch.compile(model)``: an ``nn.Module`` (torch's annotations say only callable)."""
    wrapped = torch.compile(model, backend=backend)
    assert isinstance(wrapped, nn.Module)
    return wrapped


def images() -> torch.Tensor:
    return torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("layer", ["3", "_orig_mod.3", "1", "_orig_mod.1"])
@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.__name__)
def test_maps_of_the_compiled_model_equal_those_of_the_model(method: type[BaseCAM], layer: str) -> None:
    """Layer "3" feeds the pool and the linear layer: the second call takes the closed form."""
    model = small_cnn()
    expected = method(model, layer.removeprefix("_orig_mod."), closed_form=False)(images())
    cam = method(compile_module(model), layer)
    first, second = cam(images()), cam(images())
    assert cam.target_layer == layer.removeprefix("_orig_mod.")
    assert ("closed_form=verified" in repr(cam)) == (layer.endswith("3"))
    torch.testing.assert_close(first, expected)
    torch.testing.assert_close(second, expected)


@pytest.mark.skipif(shutil.which("g++") is None, reason="inductor compiles C++ on the CPU: no g++ here")
def test_compiled_model_with_inductor_gives_the_logits_and_maps_of_the_model() -> None:
    """The compiled model (inductor) still runs compiled around the CAM calls, with the CAMs' logits."""
    model = small_cnn()
    compiled = compile_module(model, "inductor")
    logits = compiled(images())
    expected = GradCAM(model, "3", closed_form=False)(images())
    with hiercam.checks(False):
        cam = GradCAM(compiled, "_orig_mod.3")
        maps = [cam(images()) for _ in range(2)]  # the general path, then the closed form
    assert "closed_form=verified" in repr(cam)
    for got in maps:
        torch.testing.assert_close(got, expected)
    assert cam.logits is not None
    torch.testing.assert_close(cam.logits, logits)
    torch.testing.assert_close(compiled(images()), logits)  # no hook left behind in the compiled model
    assert not any(module._forward_hooks for module in model.modules())


def test_module_objects_and_the_chosen_layer_of_a_compiled_model() -> None:
    model = small_cnn()
    expected = GradCAM(model, "3")(images(), [0, 2])
    compiled = compile_module(model)
    by_module = GradCAM(compiled, compiled.get_submodule("_orig_mod.3"), classifier="_orig_mod.6")
    torch.testing.assert_close(by_module(images(), [0, 2]), expected)
    chosen = GradCAM(compiled)
    torch.testing.assert_close(chosen(images(), [0, 2]), expected)
    assert chosen.target_layer == "3"
    several = GradCAM(compiled, ["_orig_mod.1", "3"])
    torch.testing.assert_close(several(images()), GradCAM(model, ["1", "3"])(images()))


def test_multi_scale_cam_of_a_compiled_model() -> None:
    model = small_cnn()
    expected = MultiScaleCAM(GradCAM(model, "3"), scales=(1.0, 0.5))(images())
    cam = MultiScaleCAM(GradCAM(compile_module(model), "_orig_mod.3"), scales=(1.0, 0.5))
    torch.testing.assert_close(cam(images()), expected)


def test_a_layer_inside_a_compiled_submodule_is_a_clear_error() -> None:
    model = small_cnn()
    outer = nn.Sequential(compile_module(model[:4]), model[4:])
    with pytest.raises(ValueError, match=r"inside '0', a module compiled with torch.compile.*_orig_mod"):
        GradCAM(outer, "0._orig_mod.3")
    # the compiled submodule's own output is outside its graph: explained like any layer
    expected = GradCAM(model, "3", closed_form=False)(images())
    torch.testing.assert_close(GradCAM(outer, "0", closed_form=False)(images()), expected)
