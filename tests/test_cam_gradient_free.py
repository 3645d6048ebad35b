"""ScoreCAM, AblationCAM, EigenCAM and ``eigen_smooth``: naive references and the peer libraries as oracles.

* Naive references: the definitions written out one image, one class and one channel at a time.
* pytorch-grad-cam 1.5.7 and torchcam 0.5: on a target layer at the input's resolution (no upsampling)
  ScoreCAM agrees with both to float precision; on ResNet-18's ``layer4`` the remaining difference is
  pytorch-grad-cam's ``align_corners=True`` upsampling of the masks (figures asserted below).
* EigenCAM and ``eigen_smooth``: pytorch-grad-cam keeps LAPACK's arbitrary sign of the principal axis;
  hiercam orients it (``principal_component_maps``). The projections agree up to that sign, and the maps
  agree wherever the signs do.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import pytest
import torch
from cam_test_helpers import activation_of, full_res_net, pearson, strided_net
from torch import nn
from torchvision import models

import hiercam
from hiercam.cam import BaseCAM

pgc = pytest.importorskip("pytorch_grad_cam")
torchcam_methods = pytest.importorskip("torchcam.methods")
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402
from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection  # noqa: E402

logging.getLogger("torchcam").setLevel(logging.ERROR)
pytestmark = pytest.mark.usefixtures("one_thread")

CLASSES = [1, 3]


def pgc_maps(
    method: type, model: nn.Module, layer: str, images: torch.Tensor, **kwargs: object
) -> torch.Tensor:
    with method(model, target_layers=[model.get_submodule(layer)], **kwargs) as peer:
        peer.batch_size = 64  # ScoreCAM reads it as an attribute
        maps = [
            torch.from_numpy(peer(images, targets=[ClassifierOutputTarget(k)] * len(images))) for k in CLASSES
        ]
    return torch.stack(maps, dim=1)


# ------------------------------------------------------------------------------------ naive references
def naive_scorecam(model: nn.Module, layer: str, images: torch.Tensor, k: int) -> torch.Tensor:
    """Score-CAM one image, one channel and one class at a time; raw maps at feature resolution."""
    activation = activation_of(model, layer, images)
    maps = []
    for b in range(len(images)):
        scores = []
        for c in range(activation.shape[1]):
            mask = torch.nn.functional.interpolate(
                activation[b : b + 1, c : c + 1], size=images.shape[-2:], mode="bilinear", align_corners=False
            )
            mask = (mask - mask.min()) / (mask.max() - mask.min() + 1e-8)
            with torch.no_grad():
                scores.append(model(images[b : b + 1] * mask)[0, k])
        weights = torch.softmax(torch.stack(scores), dim=0)
        maps.append(torch.relu((weights[:, None, None] * activation[b]).sum(0)))
    return torch.stack(maps)


def naive_ablationcam(images: torch.Tensor, model: nn.Module, k: int) -> torch.Tensor:
    """Ablation-CAM on strided_net's layer "3": the rest of the model (pool, linear) applied by hand."""
    activation = activation_of(model, "3", images)
    head = nn.Sequential(*list(model)[4:])
    maps = []
    for b in range(len(images)):
        score = head(activation[b : b + 1])[0, k]
        weights = []
        for c in range(activation.shape[1]):
            ablated = activation[b : b + 1].clone()
            ablated[0, c] = 0
            weights.append((score - head(ablated)[0, k]) / score)
        maps.append(torch.relu((torch.stack(weights)[:, None, None] * activation[b]).sum(0)))
    return torch.stack(maps).detach()


@pytest.mark.parametrize("batch_size", [1, 7, 64])
@pytest.mark.parametrize("make", [full_res_net, strided_net], ids=["full_res", "strided"])
def test_scorecam_equals_a_naive_loop(make: Callable[[], nn.Module], batch_size: int) -> None:
    model = make()
    images = torch.randn(2, 3, 16, 16)
    ours = hiercam.ScoreCAM(model, "3", batch_size=batch_size)(
        images, CLASSES, size="feature", normalize=None
    )
    expected = torch.stack([naive_scorecam(model, "3", images, k) for k in CLASSES], dim=1)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("batch_size", [1, 5, 64])
def test_ablationcam_equals_a_naive_loop(batch_size: int) -> None:
    model = strided_net()
    images = torch.randn(3, 3, 16, 16)
    ours = hiercam.AblationCAM(model, "3", batch_size=batch_size)(
        images, CLASSES, size="feature", normalize=None
    )
    expected = torch.stack([naive_ablationcam(images, model, k) for k in CLASSES], dim=1)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6)


def test_all_classes_come_from_one_set_of_masked_forwards() -> None:
    model = full_res_net()
    images = torch.randn(2, 3, 8, 8)
    calls = []
    handle = model.register_forward_pre_hook(lambda _m, inputs: calls.append(inputs[0].shape[0]))
    try:
        all_maps = hiercam.ScoreCAM(model, "3", batch_size=16)(images)
        one_pass = list(calls)
        calls.clear()
        one_class = hiercam.ScoreCAM(model, "3", batch_size=16)(images, 2)
    finally:
        handle.remove()
    # one forward, then 2 images x 8 channels in one batch; the (2, 8, 8, 8) output of ReLU "3" of an 8 x 8
    # input reads both ways, and this forward has no graph: one probe of one image shows it is channels-first
    assert one_pass == calls == [2, 1, 16]
    torch.testing.assert_close(all_maps[:, 2:3], one_class)


# ------------------------------------------------------------------------------------ peers
def test_scorecam_matches_both_peers_without_upsampling() -> None:
    model = full_res_net()
    images = torch.randn(2, 3, 16, 16)
    ours = hiercam.ScoreCAM(model, "3")(images, CLASSES, size="feature", normalize=None)
    peer = torchcam_methods.ScoreCAM(model, "3", batch_size=64)
    try:
        theirs = torch.stack([peer(k, model(images), normalized=False)[0] for k in CLASSES], dim=1)
    finally:
        peer.remove_hooks()
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    ours = hiercam.ScoreCAM(model, "3")(images, CLASSES, normalize="minmax")
    torch.testing.assert_close(ours, pgc_maps(pgc.ScoreCAM, model, "3", images), rtol=0, atol=1e-5)


@pytest.fixture(scope="module")
def resnet() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return models.resnet18(num_classes=5).eval(), torch.randn(1, 3, 48, 48)


AGREEMENT: dict[str, tuple[float, float]] = {}  # (max abs diff, Pearson r) per comparison, for the report


def test_scorecam_on_resnet_matches_torchcam_and_pytorch_grad_cam(
    resnet: tuple[nn.Module, torch.Tensor],
) -> None:
    model, images = resnet  # layer3: 256 channels at 3x3, masks upsampled x16
    ours = hiercam.ScoreCAM(model, "layer3", batch_size=256)(images, CLASSES, size="feature", normalize=None)
    peer = torchcam_methods.ScoreCAM(model, "layer3", batch_size=256)
    try:
        theirs = torch.stack([peer(k, model(images), normalized=False)[0] for k in CLASSES], dim=1)
    finally:
        peer.remove_hooks()
    AGREEMENT["ScoreCAM torchcam raw"] = ((ours - theirs).abs().max().item(), pearson(ours, theirs))
    # torchcam min-max normalises at 3x3 and then upsamples: where upsampling moves the extremes, the masks
    # differ slightly (0.1 % here)
    assert (ours - theirs).abs().max() < 1e-2 * theirs.abs().max()
    assert pearson(ours, theirs) > 0.9999
    ours = hiercam.normalize_maps(
        torch.nn.functional.interpolate(ours, size=(48, 48), mode="bilinear", align_corners=False), "minmax"
    )
    theirs = pgc_maps(pgc.ScoreCAM, model, "layer3", images)
    # pytorch-grad-cam's masks come from align_corners=True upsampling: slightly different weights
    AGREEMENT["ScoreCAM pytorch-grad-cam"] = ((ours - theirs).abs().max().item(), pearson(ours, theirs))
    assert (ours - theirs).abs().max() < 0.05
    assert pearson(ours, theirs) > 0.999


def test_ablationcam_matches_pytorch_grad_cam(resnet: tuple[nn.Module, torch.Tensor]) -> None:
    model, images = resnet
    ours = hiercam.AblationCAM(model, "layer3", batch_size=256)(images, CLASSES, normalize="minmax")
    theirs = pgc_maps(pgc.AblationCAM, model, "layer3", images, batch_size=256)
    AGREEMENT["AblationCAM pytorch-grad-cam"] = ((ours - theirs).abs().max().item(), pearson(ours, theirs))
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


def test_principal_component_maps_equal_pytorch_grad_cam_up_to_the_sign() -> None:
    activations = torch.randn(6, 16, 5, 7).relu()
    ours = hiercam.principal_component_maps(activations)
    theirs = torch.from_numpy(get_2d_projection(activations.numpy()))
    for mine, peer in zip(ours, theirs, strict=True):
        sign = 1.0 if (mine * peer).sum() >= 0 else -1.0
        torch.testing.assert_close(mine, sign * peer, rtol=1e-4, atol=1e-4)
    # the orientation: non-negative correlation with the plain sum over channels
    summed = activations.sum(dim=1)
    summed = summed - summed.mean(dim=(-2, -1), keepdim=True)
    assert bool(((ours * summed).sum(dim=(-2, -1)) >= 0).all())


def test_zero_channel_sums_take_the_sign_of_the_largest_entry() -> None:
    """LayerNorm outputs: the channels sum to zero at every position, so the sum rule has nothing to read."""
    activations = torch.randn(6, 16, 5, 7, generator=torch.Generator().manual_seed(3))
    activations = activations - activations.mean(dim=1, keepdim=True)  # every position's channels sum to 0
    ours = hiercam.principal_component_maps(activations)
    theirs = torch.from_numpy(get_2d_projection(activations.numpy()))
    for mine, peer in zip(ours, theirs, strict=True):
        largest = peer.flatten()[peer.abs().argmax()]  # scikit-learn's svd_flip: that entry positive
        torch.testing.assert_close(mine, torch.sign(largest) * peer, rtol=1e-4, atol=1e-4)
        assert mine.flatten()[mine.abs().argmax()] > 0
    # -X has the same axes with LAPACK free to flip them: the map still comes out the same
    torch.testing.assert_close(hiercam.principal_component_maps(-activations), ours, rtol=1e-4, atol=1e-4)


def test_eigencam_matches_pytorch_grad_cam_where_the_signs_agree(
    resnet: tuple[nn.Module, torch.Tensor],
) -> None:
    torch.manual_seed(1)
    model = models.resnet18(num_classes=5).eval()
    images = torch.randn(4, 3, 96, 96)
    ours = hiercam.EigenCAM(model, "layer4")(images, 0, normalize="minmax")[:, 0]
    with pgc.EigenCAM(model, target_layers=[model.layer4]) as peer:
        theirs = torch.from_numpy(peer(images, targets=None))
    raw_ours = hiercam.principal_component_maps(activation_of(model, "layer4", images))
    raw_theirs = torch.from_numpy(get_2d_projection(activation_of(model, "layer4", images).numpy()))
    agree = (raw_ours * raw_theirs).sum(dim=(-2, -1)) > 0
    assert agree.any()
    torch.testing.assert_close(ours[agree], theirs[agree], rtol=0, atol=1e-5)


SIGN_AGREEMENT: dict[str, int] = {}  # maps where LAPACK's sign is hiercam's orientation (for the report)


@pytest.mark.parametrize(
    "method",
    [hiercam.GradCAM, hiercam.HiResCAM, hiercam.LayerCAM, hiercam.XGradCAM, hiercam.GradCAMPlusPlus],
    ids=lambda m: m.__name__,
)
def test_eigen_smooth_matches_pytorch_grad_cam_up_to_the_sign(
    method: type[BaseCAM], resnet: tuple[nn.Module, torch.Tensor], monkeypatch: pytest.MonkeyPatch
) -> None:
    model, _ = resnet
    images = torch.randn(3, 3, 96, 96, generator=torch.Generator().manual_seed(2))
    ours = method(model, "layer4", eigen_smooth=True)(images, CLASSES, normalize="minmax")  # type: ignore[call-arg]
    peer_class = getattr(pgc, method.__name__)
    with peer_class(model, target_layers=[model.layer4]) as peer:
        theirs = torch.stack(
            [
                torch.from_numpy(peer(images, targets=[ClassifierOutputTarget(k)] * 3, eigen_smooth=True))
                for k in CLASSES
            ],
            dim=1,
        )
    from hiercam.cam import _pca

    original = _pca.principal_component_maps
    monkeypatch.setattr(_pca, "principal_component_maps", lambda x: -original(x))
    flipped = method(model, "layer4", eigen_smooth=True)(images, CLASSES, normalize="minmax")  # type: ignore[call-arg]
    same = 0
    for b in range(3):
        for k in range(len(CLASSES)):
            if torch.allclose(theirs[b, k], ours[b, k], rtol=0, atol=1e-4):
                same += 1
            else:
                torch.testing.assert_close(theirs[b, k], flipped[b, k], rtol=0, atol=1e-4)
    SIGN_AGREEMENT[method.__name__] = same


def test_eigen_smooth_equals_the_projection_of_the_weighted_activations() -> None:
    model = strided_net()
    images = torch.randn(2, 3, 16, 16)
    activation = activation_of(model, "3", images)
    weights = model[-1].weight.detach()  # CAM: W[k] * A
    terms = weights[None, :, :, None, None] * activation[:, None]
    expected = hiercam.principal_component_maps(terms).relu()
    ours = hiercam.CAM(model, "3", eigen_smooth=True)(images, size="feature", normalize=None)
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-5)
    # chunked over classes: the same maps
    from hiercam.cam import _pca

    before = _pca._TERMS_BYTES
    try:
        _pca._TERMS_BYTES = 1
        torch.testing.assert_close(
            hiercam.CAM(model, "3", eigen_smooth=True)(images, size="feature", normalize=None), ours
        )
    finally:
        _pca._TERMS_BYTES = before


@pytest.mark.parametrize("method", [hiercam.ScoreCAM, hiercam.AblationCAM], ids=lambda m: m.__name__)
def test_eigen_smooth_of_perturbation_methods(method: type[BaseCAM]) -> None:
    model = strided_net()
    images = torch.randn(2, 3, 16, 16)
    smooth = method(model, "3", eigen_smooth=True)(images, CLASSES, size="feature", normalize=None)  # type: ignore[call-arg]
    plain = method(model, "3")(images, CLASSES, size="feature", normalize=None)
    assert smooth.shape == plain.shape
    assert not torch.allclose(smooth, plain)
    assert "eigen_smooth=True" in repr(method(model, "3", eigen_smooth=True))  # type: ignore[call-arg]


def test_eigencam_is_class_agnostic_and_respects_masks() -> None:
    model = strided_net()
    images = torch.randn(2, 3, 16, 16)
    cam = hiercam.EigenCAM(model, "3")
    maps = cam(images)
    assert maps.shape == (2, 4, 16, 16)
    assert all(torch.equal(maps[:, 0], maps[:, k]) for k in range(4))
    mask = torch.tensor([[1, 0, 0, 1], [0, 0, 0, 0]])
    torch.testing.assert_close(cam(images, mask), maps * mask[:, :, None, None])
    assert repr(cam) == "EigenCAM(target_layer='3', class_agnostic=True)"
    assert cam.logits is not None
    assert cam.logits.shape == (2, 4)


@pytest.mark.parametrize("method", [hiercam.ScoreCAM, hiercam.AblationCAM, hiercam.EigenCAM])
def test_two_branch_models_average_the_heads(method: type[BaseCAM]) -> None:
    torch.manual_seed(0)
    model = hiercam.TwoBranchNet(lambda: nn.Conv2d(3, 4, 3), num_classes=3).eval()
    cam = method(model)
    maps = cam(torch.randn(2, 3, 10, 10))
    assert maps.shape == (2, 3, 10, 10)
    assert cam.branch_maps is not None
    assert cam.branch_maps.shape == (2, 2, 3, 10, 10)
    torch.testing.assert_close(maps, hiercam.average_branch_maps(cam.branch_maps))


# ------------------------------------------------------------------------------------ hygiene
GRADIENT_FREE: list[Callable[[nn.Module], BaseCAM]] = [
    lambda m: hiercam.ScoreCAM(m, "3", batch_size=8),
    lambda m: hiercam.AblationCAM(m, "3", batch_size=8),
    lambda m: hiercam.EigenCAM(m, "3"),
    lambda m: hiercam.GradCAM(m, "3", eigen_smooth=True),
]


def count_hooks(model: nn.Module) -> int:
    return sum(
        len(m._forward_hooks)
        + len(m._forward_pre_hooks)
        + len(m._backward_hooks)
        + len(m._backward_pre_hooks)
        for m in model.modules()
    )


class FailOnLargeBatch(nn.Module):
    """Raises inside the perturbation forwards (batches larger than the caller's)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > 2:
            raise RuntimeError("boom")
        return x


def test_hooks_modes_and_gradients_are_left_as_they_were() -> None:
    model = strided_net()
    model.train()
    model[2].eval()
    model[0].weight.requires_grad_(False)
    model[-1].weight.grad = torch.full_like(model[-1].weight, 3.0)
    flags = [m.training for m in model.modules()]
    requires = [p.requires_grad for p in model.parameters()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    images = torch.randn(2, 3, 16, 16)
    before = images.clone()
    for make in GRADIENT_FREE:
        cam = make(model)
        for _ in range(50):  # 200 calls in all
            cam(images, [0, 2])
            assert count_hooks(model) == 0
    assert [m.training for m in model.modules()] == flags
    assert [p.requires_grad for p in model.parameters()] == requires
    assert torch.equal(model[-1].weight.grad, torch.full_like(model[-1].weight, 3.0))
    assert all(p.grad is None for p in list(model.parameters())[:-2])
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert torch.equal(images, before)


@pytest.mark.parametrize("method", [hiercam.ScoreCAM, hiercam.AblationCAM])
def test_no_hook_is_left_after_an_error_inside_the_perturbation_forwards(method: type[BaseCAM]) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        FailOnLargeBatch(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    ).train()
    with pytest.raises(RuntimeError, match="boom"):
        method(model, "1", batch_size=4)(torch.randn(2, 3, 8, 8))  # type: ignore[call-arg]
    assert count_hooks(model) == 0
    assert all(m.training for m in model.modules())


class Fail(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("boom")


def test_no_hook_is_left_after_an_error_in_the_first_forward() -> None:
    model = nn.Sequential(*list(strided_net())[:4], Fail()).train()
    for make in GRADIENT_FREE:
        with pytest.raises(RuntimeError, match="boom"):
            make(model)(torch.randn(2, 3, 16, 16))
        assert count_hooks(model) == 0
        assert all(m.training for m in model.modules())


def test_works_inside_no_grad_and_inference_mode() -> None:
    model = strided_net()
    images = torch.randn(2, 3, 16, 16)
    expected = [make(model)(images) for make in GRADIENT_FREE]
    for context in (torch.no_grad, torch.inference_mode):
        with context():
            for make, maps in zip(GRADIENT_FREE, expected, strict=True):
                torch.testing.assert_close(make(model)(images), maps)


def test_repr_shows_the_settings() -> None:
    model = strided_net()
    assert repr(hiercam.ScoreCAM(model, "3", batch_size=5)) == "ScoreCAM(target_layer='3', batch_size=5)"
    assert (
        repr(hiercam.AblationCAM(model)) == "AblationCAM(target_layer=<chosen on first call>, batch_size=32)"
    )
    assert repr(hiercam.GradCAM(model, "3", eigen_smooth=True)) == (
        "GradCAM(target_layer='3', closed_form=unknown, eigen_smooth=True)"
    )


def test_scorecam_maps_are_convex_combinations_of_the_channels() -> None:
    # ScoreCAM's softmax weights sum to one over the channels
    model = full_res_net()
    images = torch.randn(1, 3, 8, 8)
    maps = hiercam.ScoreCAM(model, "3")(images, 0, size="feature", normalize=None)
    activation = activation_of(model, "3", images)[0]
    assert maps.max() <= activation.max() + 1e-6  # a convex combination of the channels
    assert np.isfinite(maps.numpy()).all()


def test_print_agreement(capsys: pytest.CaptureFixture[str]) -> None:
    """Not a check: prints the agreement figures gathered above (run with -s to see them)."""
    with capsys.disabled():
        for name, (diff, r) in AGREEMENT.items():
            print(f"\n{name}: max abs diff {diff:.2e}, Pearson r {r:.6f}")
        for name, same in SIGN_AGREEMENT.items():
            print(f"\neigen_smooth {name}: LAPACK's sign is hiercam's orientation for {same} of 6 maps")


@pytest.mark.parametrize("method", [hiercam.ScoreCAM, hiercam.AblationCAM], ids=lambda m: m.__name__)
def test_perturbed_forwards_run_under_the_callers_autocast(method: type[BaseCAM]) -> None:
    model = strided_net()
    images = torch.randn(2, 3, 16, 16)
    dtypes: list[torch.dtype] = []
    handle = model[-1].register_forward_hook(lambda _m, _i, out: dtypes.append(out.dtype))
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            maps = method(model, "3", batch_size=8)(images, [0, 1])  # type: ignore[call-arg]
        assert set(dtypes) == {torch.bfloat16}
        dtypes.clear()
        reference = method(model, "3", batch_size=8)(images, [0, 1])  # type: ignore[call-arg]
        assert set(dtypes) == {torch.float32}
    finally:
        handle.remove()
    assert maps.dtype == torch.float32
    assert pearson(maps, reference) > 0.9
