"""EigenGradCAM, GradCAMElementWise, ShapleyCAM, FinerCAM, FullGrad, GuidedBackprop and GuidedGradCAM.

Oracles: pytorch-grad-cam's own classes (random-init models, one peer call per class; maps min-max normalised
at the input size, as ``tests/test_cam_peers.py`` explains), with two corrections named where they are made:

* EigenGradCAM: pytorch-grad-cam keeps LAPACK's arbitrary sign of the principal axis (its issue #315); its
  ``get_2d_projection`` is wrapped to orient each map as hiercam does (non-negative correlation with
  ``sum_c G_c A_c``), the corrected oracle.
* Guided backpropagation: pytorch-grad-cam's ``GuidedBackpropReLUModel`` explains only the first image of a
  batch (its issues #400 and #530), replaces the model's ReLUs and puts back new ``nn.ReLU()`` (dropping
  ``inplace=True``) and calls ``backward`` (filling ``.grad``); it is run on a deep copy, one image at a time,
  and both run in float64 (``in_float64`` says why).

The agreement on larger inputs (and MobileNetV3) is printed by ``benchmarks/peer_gradient_methods.py``.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from cam_test_helpers import oriented_projection, pearson
from torch import nn
from torchvision import models

import hiercam
from hiercam.cli.explain import explain_images, find_method

pgc = pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam import eigen_grad_cam as peer_eigen  # noqa: E402
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

CLASSES = [1, 4]
NEW_METHODS = [
    "eigengradcam",
    "gradcamelementwise",
    "shapleycam",
    "finercam",
    "fullgrad",
    "guidedbackprop",
    "guidedgradcam",
]


def small_cnn() -> nn.Sequential:
    """ReLU modules (one in place after a batch norm) before the layer ``"4"``, GELU after it."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(inplace=True),
        nn.Conv2d(8, 12, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(12, 16, 3, padding=1),
        nn.GELU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 6),
    )


MODELS: dict[str, tuple[Callable[[], nn.Module], str, int]] = {
    "small_cnn": (small_cnn, "4", 24),
    "resnet18": (lambda: models.resnet18(num_classes=6), "layer3", 48),
}


@pytest.fixture(scope="module", params=list(MODELS))
def case(request: pytest.FixtureRequest) -> tuple[nn.Module, str, torch.Tensor]:
    factory, layer, size = MODELS[request.param]
    torch.manual_seed(0)
    model = factory().eval()
    with torch.no_grad():  # non-trivial batch-norm statistics, so that their biases count in FullGrad
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 1.5)
    images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    return model, layer, images


def peer_maps(peer: Callable[..., np.ndarray], images: torch.Tensor) -> torch.Tensor:
    return torch.stack(
        [torch.from_numpy(peer(images, targets=[ClassifierOutputTarget(k)] * len(images))) for k in CLASSES],
        dim=1,
    )


def in_float64(model: nn.Module, images: torch.Tensor) -> tuple[nn.Module, torch.Tensor]:
    """A float64 copy of the model and the images, for the guided-gradient comparisons.

    pytorch-grad-cam's guided backpropagation explains one image per call, hiercam's a whole batch; in float32
    the convolutions of a batch of two and of one image differ in rounding, which guided gradients through
    resnet18 amplify to 0.12 % of the scale (measured: hiercam's own batched and per-image gradients differ
    that much, its per-image ones equal the peer's exactly). In float64 they agree to 3e-7 of the scale.
    """
    return copy.deepcopy(model).double(), images.double()


def assert_agrees(ours: torch.Tensor, theirs: torch.Tensor, atol: float = 1e-5) -> None:
    assert ours.shape == theirs.shape
    torch.testing.assert_close(ours, theirs, atol=atol, rtol=0)
    assert pearson(ours, theirs) > 0.99999


# ---------------------------------------------------------------------------------------- peer oracles
@pytest.mark.parametrize(
    "name", ["GradCAMElementWise", "EigenGradCAM", "ShapleyCAM", "FinerCAM", "FullGrad", "GuidedGradCAM"]
)
def test_matches_pytorch_grad_cam(case, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    model, layer_name, images = case
    layer = model.get_submodule(layer_name)
    ours_type = getattr(hiercam, name)
    if name in ("FullGrad",):
        ours = ours_type(model)(images, CLASSES, normalize="minmax")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs = peer_maps(pgc.FullGrad(model, []), images)
    elif name == "FinerCAM":
        ours = ours_type(model, layer_name)(images, CLASSES, normalize="minmax")
        with pgc.FinerCAM(model, [layer]) as peer:
            theirs = torch.stack([torch.from_numpy(peer(images, target_idx=k)) for k in CLASSES], dim=1)
    elif name == "GuidedGradCAM":
        model, images = in_float64(model, images)
        layer = model.get_submodule(layer_name)
        cam = ours_type(model, layer_name)
        maps = cam(images, CLASSES, normalize="minmax")
        with pgc.GradCAM(model, [layer]) as peer:
            grad_cam = peer_maps(peer, images)
        theirs = grad_cam[:, :, None] * peer_guided_backprop(model, images)
        scale = theirs.abs().amax()
        assert_agrees(cam.guided / scale, theirs / scale)
        ours, theirs = maps, hiercam.normalize_maps(theirs.abs().amax(dim=2), "minmax")
    else:
        monkeypatch.setattr(peer_eigen, "get_2d_projection", oriented_projection)
        ours = ours_type(model, layer_name)(images, CLASSES, normalize="minmax")
        with getattr(pgc, name)(model, [layer]) as peer:
            theirs = peer_maps(peer, images)
    assert_agrees(ours, theirs)


def test_full_grad_eigen_smooth_matches_pytorch_grad_cam(case, monkeypatch: pytest.MonkeyPatch) -> None:
    """pytorch-grad-cam's FullGrad with ``eigen_smooth``, its projection oriented as hiercam orients it."""
    from pytorch_grad_cam import fullgrad_cam

    model, _, images = case
    ours = hiercam.FullGrad(model, eigen_smooth=True)(images, CLASSES, normalize="minmax")
    monkeypatch.setattr(fullgrad_cam, "get_2d_projection", oriented_projection)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peer = pgc.FullGrad(model, [])
        theirs = torch.stack(
            [
                torch.from_numpy(
                    peer(images, targets=[ClassifierOutputTarget(k)] * len(images), eigen_smooth=True)
                )
                for k in CLASSES
            ],
            dim=1,
        )
    assert_agrees(ours, theirs)
    # not the plain sum: the smoothed maps are a different map
    plain = hiercam.FullGrad(model)(images, CLASSES, normalize="minmax")
    assert (plain - ours).abs().amax() > 0.05


def test_full_grad_eigen_smooth_checks_its_flag_and_names_itself() -> None:
    with pytest.raises(TypeError, match="`eigen_smooth` must be a bool, got str"):
        hiercam.FullGrad(small_cnn(), eigen_smooth="yes")  # type: ignore[arg-type]
    assert "eigen_smooth=True" in repr(hiercam.FullGrad(small_cnn(), eigen_smooth=True))


def peer_guided_backprop(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """pytorch-grad-cam's guided gradients ``(B, K', C, H, W)``, on a copy (it replaces the ReLUs).

    Computed in the model's dtype, returned in float32 as hiercam returns its maps.
    """
    peer = pgc.GuidedBackpropReLUModel(copy.deepcopy(model), device="cpu")
    return torch.stack(
        [
            torch.stack(
                [torch.from_numpy(peer(images[i : i + 1].clone(), k)).permute(2, 0, 1) for k in CLASSES]
            )
            for i in range(len(images))
        ]
    ).float()


def test_guided_backprop_matches_pytorch_grad_cam(case) -> None:
    model, _, images = case
    model, images = in_float64(model, images)
    cam = hiercam.GuidedBackprop(model)
    maps = cam(images, CLASSES, normalize=None)
    theirs = peer_guided_backprop(model, images)
    assert cam.gradients is not None
    scale = theirs.abs().amax()
    assert_agrees(cam.gradients / scale, theirs / scale)
    torch.testing.assert_close(maps, cam.gradients.abs().amax(dim=2))


def test_finer_cam_default_and_other_method_match_pytorch_grad_cam(case) -> None:
    """``top_k=1`` is pytorch-grad-cam's default target (the predicted class); ``method``, its base_method."""
    model, layer_name, images = case
    layer = model.get_submodule(layer_name)
    ours = hiercam.FinerCAM(model, layer_name)(images, top_k=1, normalize="minmax")
    with pgc.FinerCAM(model, [layer]) as peer:
        theirs = torch.from_numpy(peer(images))[:, None]
    assert_agrees(ours, theirs)
    cam = hiercam.FinerCAM(model, layer_name, method=hiercam.LayerCAM, comparisons=(2, 1), alpha=0.6)
    ours = cam(images, CLASSES, normalize="minmax")
    with pgc.FinerCAM(model, [layer], base_method=pgc.LayerCAM) as peer:
        theirs = torch.stack(
            [
                torch.from_numpy(peer(images, target_idx=k, comparison_categories=[2, 1], alpha=0.6))
                for k in CLASSES
            ],
            dim=1,
        )
    assert_agrees(ours, theirs)


# ---------------------------------------------------------------------------------------- hand oracles
# torch.func.jvp (the oracle) registers its decompositions through the deprecated torch.jit.script
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_shapley_second_order_term_counts_and_vanishes_on_an_affine_path() -> None:
    torch.manual_seed(0)
    model = small_cnn().eval()
    images = torch.randn(2, 3, 24, 24)
    shapley = hiercam.ShapleyCAM(model, "4")(images, CLASSES, normalize=None, size="feature")
    grad_cam = hiercam.GradCAM(model, "4")(images, CLASSES, normalize=None, size="feature")
    assert (shapley - grad_cam).abs().amax() > 1e-3 * grad_cam.abs().amax()  # GELU: H A != 0
    # a hand oracle for one class and image: G - H A / 2 by torch.func on the part after the layer
    head = model[5:]
    activation = model[:5](images[:1]).detach()

    def score(a: torch.Tensor) -> torch.Tensor:
        return head(a)[0, 4]

    gradient = torch.func.grad(score)(activation)
    _, hvp = torch.func.jvp(torch.func.grad(score), (activation,), (activation,))
    weights = (gradient - 0.5 * hvp).mean(dim=(-2, -1))
    expected = (weights[:, :, None, None] * activation).sum(dim=1).relu()
    torch.testing.assert_close(shapley[0, 1], expected[0], atol=1e-6, rtol=1e-5)
    # ResNet's layer4 feeds a pool and a linear layer: no second-order term, Grad-CAM's maps
    resnet = models.resnet18(num_classes=3).eval()
    x = torch.randn(1, 3, 48, 48)
    torch.testing.assert_close(
        hiercam.ShapleyCAM(resnet, "layer4")(x, normalize=None),
        hiercam.GradCAM(resnet, "layer4")(x, normalize=None),
    )


def test_shapley_refuses_ops_without_second_derivatives() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.Hardsigmoid(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)
    )
    with pytest.raises(ValueError, match="second derivatives"):
        hiercam.ShapleyCAM(model, "0")(torch.randn(1, 3, 10, 10))


def test_element_wise_and_eigen_grad_cam_by_hand() -> None:
    torch.manual_seed(0)
    model = small_cnn().eval()
    images = torch.randn(2, 3, 24, 24)
    activation = model[:5](images).detach().requires_grad_()
    logits = model[5:](activation)
    gradient = torch.autograd.grad(logits[:, 4].sum(), activation)[0]
    product = gradient * activation.detach()
    ours = hiercam.GradCAMElementWise(model, "4")(images, 4, normalize=None, size="feature")
    torch.testing.assert_close(ours[:, 0], product.relu().sum(dim=1))
    eigen = hiercam.EigenGradCAM(model, "4")(images, 4, normalize=None, size="feature")
    torch.testing.assert_close(
        eigen[:, 0], hiercam.principal_component_maps(product).relu(), atol=1e-6, rtol=1e-5
    )


def test_finer_scores_by_hand_and_alpha_zero_is_the_method() -> None:
    torch.manual_seed(0)
    model = small_cnn().eval()
    images = torch.randn(2, 3, 24, 24)
    cam = hiercam.FinerCAM(model, "4", comparisons=(1, 2), alpha=0.5)
    ours = cam(images, [3], normalize=None, size="feature")
    activation = model[:5](images).detach().requires_grad_()
    z = model[5:](activation)
    values = z.detach()
    scores = []
    for b in range(2):
        order = sorted(range(6), key=lambda j: (j != 3, abs(float(values[b, j] - values[b, 3])), j))
        p = z[b].softmax(0)
        compared = order[1:3]
        scores.append(sum(p[j] * (z[b, 3] - 0.5 * z[b, j]) for j in compared) / (p[compared].sum() + 1e-9))
    gradient = torch.autograd.grad(torch.stack(scores).sum(), activation)[0]
    expected = (gradient.mean(dim=(-2, -1))[:, :, None, None] * activation.detach()).sum(dim=1).relu()
    torch.testing.assert_close(ours[:, 0], expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(cam.logits, z.detach())  # the model's logits, not the compared scores
    plain = hiercam.GradCAM(model, "4")(images, CLASSES)
    torch.testing.assert_close(hiercam.FinerCAM(model, "4", alpha=0)(images, CLASSES), plain)
    target = ClassifierOutputTarget(2)  # targets are explained as given, with the method alone (as the peer)
    torch.testing.assert_close(
        cam(images, targets=target), hiercam.GradCAM(model, "4")(images, targets=target)
    )


def test_full_grad_by_hand() -> None:
    """One conv with a bias, then ReLU, pool, linear: the input term plus the conv's bias term."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)
    )
    model.eval()
    images = torch.randn(1, 3, 8, 8)
    ours = hiercam.FullGrad(model)(images, 1, normalize=None)
    x = images.clone().requires_grad_()
    z = model[0](x)
    score = model[1:](z)[0, 1]
    gx, gz = torch.autograd.grad(score, [x, z])

    def rescale(m: torch.Tensor) -> torch.Tensor:
        m = m - m.amin(dim=(-2, -1), keepdim=True)
        return m / (m.amax(dim=(-2, -1), keepdim=True) + 1e-7)

    expected = rescale((gx * images).abs()).sum(1) + rescale(
        (gz * model[0].bias[None, :, None, None]).abs()
    ).sum(1)
    torch.testing.assert_close(ours[:, 0], expected.detach(), atol=1e-6, rtol=1e-5)


# -------------------------------------------------------------------------------- the engine's options
@pytest.mark.parametrize(
    "name", ["EigenGradCAM", "GradCAMElementWise", "ShapleyCAM", "FinerCAM", "GuidedGradCAM"]
)
def test_batched_classes_equal_one_class_at_a_time_and_per_image_classes(name: str) -> None:
    torch.manual_seed(0)
    model = small_cnn().eval()
    images = torch.randn(2, 3, 24, 24)
    cam = getattr(hiercam, name)(model, "4")
    together = cam(images, CLASSES)
    alone = torch.cat([cam(images, k) for k in CLASSES], dim=1)
    torch.testing.assert_close(together, alone, atol=1e-6, rtol=1e-5)
    per_image = cam(images, torch.tensor(CLASSES))
    torch.testing.assert_close(
        per_image[:, 0], torch.stack([together[0, 0], together[1, 1]]), atol=1e-6, rtol=1e-5
    )
    mask = torch.tensor([[0, 1, 0, 0, 0, 0], [0, 0, 0, 0, 1, 0]])
    masked = cam(images, mask)
    assert masked.shape == (2, 6, 24, 24)
    assert masked[0, 4].abs().max() == 0
    torch.testing.assert_close(masked[0, 1], together[0, 0], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("name", ["FullGrad", "GuidedBackprop"])
def test_input_methods_take_the_engine_options(name: str) -> None:
    torch.manual_seed(0)
    model = small_cnn().eval()
    images = torch.randn(2, 3, 24, 24)
    cam = getattr(hiercam, name)(model)
    together = cam(images, CLASSES)
    torch.testing.assert_close(
        together, torch.cat([cam(images, k) for k in CLASSES], dim=1), atol=1e-6, rtol=1e-5
    )
    top = cam(images, top_k=2, size="feature")
    assert top.shape == (2, 2, 24, 24)
    assert cam.classes is not None
    assert cam.classes.shape == (2, 2)
    assert cam(images, targets=ClassifierOutputTarget(4)).shape == (2, 1, 24, 24)
    assert cam(images, 1, size=(12, 12)).shape == (2, 1, 12, 12)
    assert cam.target_layer is None
    assert "input gradients" in repr(cam)


@pytest.mark.parametrize(
    "make",
    [
        lambda m: hiercam.ShapleyCAM(m, "4"),
        lambda m: hiercam.FinerCAM(m, "4"),
        lambda m: hiercam.FullGrad(m),
        lambda m: hiercam.GuidedBackprop(m),
        lambda m: hiercam.GuidedGradCAM(m, "4"),
    ],
)
def test_softmax_over_is_refused(make: Callable[[nn.Module], hiercam.BaseCAM]) -> None:
    with pytest.raises(ValueError, match="softmax_over"):
        make(small_cnn().eval())(torch.randn(1, 3, 24, 24), softmax_over=torch.ones(1, 6))


# ---------------------------------------------------------------------------------- the caller's model
@pytest.mark.parametrize(
    "make",
    [
        lambda m: hiercam.GuidedBackprop(m),
        lambda m: hiercam.GuidedGradCAM(m, "4"),
        lambda m: hiercam.FullGrad(m),
        lambda m: hiercam.ShapleyCAM(m, "4"),
    ],
)
def test_model_untouched_and_no_hook_left(make: Callable[[nn.Module], hiercam.BaseCAM]) -> None:
    torch.manual_seed(0)
    model = small_cnn().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cam = make(model)
    with torch.no_grad():  # gradients are still taken
        maps = cam(torch.randn(2, 3, 24, 24), CLASSES)
    assert bool(maps.amax() > 0)
    assert model.training
    assert all(m.training for m in model.modules())
    assert model[2].inplace
    assert type(model[2]) is nn.ReLU
    assert all(not m._forward_hooks and not m._backward_hooks for m in model.modules())
    assert all(p.grad is None for p in model.parameters())
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key])
    bad = torch.randn(2, 4, 24, 24)  # a forward that fails: the hooks go all the same
    with pytest.raises(ValueError, match="images"):
        cam(bad)
    assert all(not m._forward_hooks for m in model.modules())


# ------------------------------------------------------------------------------------- argument checks
def test_bad_arguments() -> None:
    model = small_cnn().eval()
    with pytest.raises(ValueError, match="target_layer"):
        hiercam.FullGrad(model, "4")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="target_layer"):
        hiercam.GuidedBackprop(model, "4")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="method"):
        hiercam.FinerCAM(model, "4", method="gradcam")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="method"):
        hiercam.FinerCAM(model, "4", method=hiercam.ScoreCAM)
    with pytest.raises(ValueError, match="comparisons"):
        hiercam.FinerCAM(model, "4", comparisons=(0, 1))
    with pytest.raises(ValueError, match="comparisons"):
        hiercam.FinerCAM(model, "4", comparisons=(1, 1))
    with pytest.raises(TypeError, match="comparisons"):
        hiercam.FinerCAM(model, "4", comparisons=(1.5,))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="alpha"):
        hiercam.FinerCAM(model, "4", alpha=float("nan"))
    with pytest.raises(TypeError, match="alpha"):
        hiercam.FinerCAM(model, "4", alpha="1")  # type: ignore[arg-type]
    one_class = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 1)
    )
    with pytest.raises(ValueError, match="comparisons"):
        hiercam.FinerCAM(one_class, "1")(torch.randn(1, 3, 8, 8))
    no_stats = nn.Sequential(
        nn.Conv2d(3, 4, 3),
        nn.BatchNorm2d(4, track_running_stats=False),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 2),
    )
    with pytest.raises(ValueError, match="running statistics"):
        hiercam.FullGrad(no_stats)(torch.randn(2, 3, 8, 8))


# --------------------------------------------------------------------------------- METHODS and the CLI
@pytest.mark.parametrize("name", NEW_METHODS)
def test_in_methods_and_the_cam_command(name: str, tmp_path: Path) -> None:
    from PIL import Image

    assert find_method(name) is hiercam.METHODS[name]
    Image.new("RGB", (40, 32), "red").save(tmp_path / "red.png")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no weights: random init
        done = explain_images(
            [tmp_path / "red.png"],
            "resnet18",
            tmp_path / "out",
            num_classes=5,
            size=32,
            top_k=2,
            overlays=False,
            method=name,
        )
    maps = torch.load(done[0].maps, weights_only=True)["maps"]
    assert maps.shape == (2, 32, 32)
    assert bool(torch.isfinite(maps).all())
