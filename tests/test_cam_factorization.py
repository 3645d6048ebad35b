"""DeepFeatureFactorization: pytorch-grad-cam's ``dff`` and ``DeepFeatureFactorization`` as oracles.

Both run scikit-learn's NMF with the same initialisation and seed, so the concepts, the concept scores and
the concept maps agree to float precision (pytorch-grad-cam min-max normalises each map and then resizes it
with OpenCV; hiercam resizes and then normalises, the same on these upsamplings).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from cam_test_helpers import activation_of, pearson, small_net
from torch import nn
from torchvision import models

import hiercam
from hiercam.cam import DeepFeatureFactorization, FeatureFactorization, deep_feature_factorization

pgc = pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam.feature_factorization.deep_feature_factorization import dff  # noqa: E402
from pytorch_grad_cam.utils.image import scale_cam_image  # noqa: E402

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore:Maximum number of iterations:sklearn.exceptions.ConvergenceWarning"),
]


def test_factorization_equals_pytorch_grad_cams_dff() -> None:
    activations = torch.randn(2, 12, 5, 6, generator=torch.Generator().manual_seed(1)).relu() + 0.1
    concepts, maps = deep_feature_factorization(activations, 3)
    their_concepts, their_maps = dff(activations.numpy().copy(), n_components=3)
    torch.testing.assert_close(concepts, torch.from_numpy(their_concepts.T).float(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(maps, torch.from_numpy(their_maps).float(), rtol=1e-5, atol=1e-6)
    assert (maps >= 0).all()


def test_factorization_recovers_planted_concepts() -> None:
    a = torch.zeros(2, 4, 3, 3)
    a[0, :2, 0, 0] = 1.0  # concept x: channels 0-1, image 0 top-left
    a[1, :2, 2, 1] = 3.0  # the same concept, three times stronger, in image 1
    a[0, 2:, 1, 1] = 2.0  # concept y: channels 2-3
    concepts, maps = deep_feature_factorization(a, 2, max_iter=1000)
    reconstruction = torch.einsum("nc,bnhw->bchw", concepts, maps)
    torch.testing.assert_close(reconstruction, a, rtol=0, atol=1e-2)
    x = int(concepts[:, 0].argmax())  # the concept that holds channel 0
    assert maps[1, x, 2, 1] > 2.5 * maps[0, x, 0, 0] > 0
    assert torch.equal(deep_feature_factorization(torch.ones(1, 3, 2, 2), 2)[1], torch.zeros(1, 2, 2, 2))


AGREEMENT: dict[str, tuple[float, float, float, float]] = {}


@pytest.mark.parametrize("which", ["small CNN '3'", "resnet18 layer4"])
def test_matches_pytorch_grad_cams_deep_feature_factorization(which: str) -> None:
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(2)
    if which.startswith("small"):
        model, layer, classifier = small_net(), "3", None
        images = torch.randn(3, 3, 20, 20, generator=generator)
    else:
        model = models.resnet18(num_classes=5).eval()
        layer, classifier = "layer4", model.fc
        images = torch.randn(3, 3, 64, 64, generator=generator)
    result = DeepFeatureFactorization(model, layer)(images, 4)
    peer = pgc.DeepFeatureFactorization(
        model, model.get_submodule(layer), computation_on_concepts=classifier or model[-1]
    )
    try:
        concepts, maps, scores = peer(images, 4)
    finally:
        peer.activations_and_grads.release()
    theirs = torch.from_numpy(np.stack(maps))
    torch.testing.assert_close(result.concepts, torch.from_numpy(concepts.T).float(), rtol=1e-5, atol=1e-5)
    assert result.concept_scores is not None
    torch.testing.assert_close(result.concept_scores, torch.from_numpy(scores), rtol=1e-4, atol=1e-5)
    AGREEMENT[which] = (
        (result.concept_maps - theirs).abs().max().item(),
        pearson(result.concept_maps, theirs),
        (result.concept_scores - torch.from_numpy(scores)).abs().max().item(),
        (result.concepts - torch.from_numpy(concepts.T)).abs().max().item(),
    )
    # pytorch-grad-cam min-max normalises at the layer's resolution and then upsamples; hiercam upsamples
    # and then normalises (as its CAMs do). Where upsampling keeps the extremes (ResNet's 2 x 2 layer4: every
    # position a corner) the maps are equal; on the small CNN's 10 x 10 -> 20 x 20 an interior peak is
    # blended with its neighbours (its upsampled peak is below 1 in pytorch-grad-cam's map, 1 in hiercam's),
    # so compare at the layer's resolution there
    assert pearson(result.concept_maps, theirs) > 0.95
    features = DeepFeatureFactorization(model, layer)(images, 4, size="feature").concept_maps
    _, raw = dff(activation_of(model, layer, images).numpy().copy(), n_components=4)
    normalised = np.stack([scale_cam_image(maps_of_image) for maps_of_image in raw])
    torch.testing.assert_close(features, torch.from_numpy(normalised), rtol=0, atol=1e-5)
    if layer == "layer4":
        torch.testing.assert_close(result.concept_maps, theirs, rtol=0, atol=1e-5)


def test_result_options_and_classifiers() -> None:
    model = small_net()
    images = torch.randn(2, 3, 20, 20)
    result = DeepFeatureFactorization(model, "3")(images, 3, size="feature", normalize=None)
    assert isinstance(result, FeatureFactorization)
    assert result.concept_maps.shape == (2, 3, 10, 10)
    assert result.concepts.shape == (3, 8)
    assert result.concept_scores is not None
    torch.testing.assert_close(result.concept_scores, model[-1](result.concepts).detach())
    top = result.top_classes(2)
    assert top.shape == (3, 2)
    assert bool((result.concept_scores.gather(1, top[:, :1]) == result.concept_scores.amax(1, True)).all())
    maxed = DeepFeatureFactorization(model, "3")(images, 3, size=(7, 9), normalize="max")
    assert maxed.concept_maps.shape == (2, 3, 7, 9)
    assert maxed.concept_maps.amax() == 1
    none = DeepFeatureFactorization(model, "3", classifier=None)(images, 2)
    assert none.concept_scores is None
    with pytest.raises(ValueError, match="no `concept_scores`"):
        none.top_classes()
    named = DeepFeatureFactorization(model, "3", classifier="6")(images, 2)
    doubled = DeepFeatureFactorization(model, "3", classifier=lambda c: 2 * model[-1](c))(images, 2)
    assert named.concept_scores is not None
    assert doubled.concept_scores is not None
    torch.testing.assert_close(doubled.concept_scores, 2 * named.concept_scores)
    # layer "1" has 6 channels: no linear layer takes 6 inputs, so "auto" gives no scores
    assert DeepFeatureFactorization(model, "1")(images, 2).concept_scores is None


def test_automatic_layer_any_output_and_the_model_left_as_it_was() -> None:
    model = small_net().train()
    images = torch.randn(2, 3, 20, 20)
    before = images.clone()
    dff_ = DeepFeatureFactorization(model)
    with torch.no_grad():
        result = dff_(images, 2)
    assert dff_.target_layer == "3"
    assert repr(dff_) == "DeepFeatureFactorization(target_layer='3', classifier=str)"
    assert result.concept_maps.shape == (2, 2, 20, 20)
    assert all(m.training for m in model.modules())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert torch.equal(images, before)
    backbone = nn.Sequential(*list(small_net())[:4])  # outputs feature maps, no logits
    assert DeepFeatureFactorization(backbone, "3")(images, 2).concept_scores is None
    with DeepFeatureFactorization(model, "3") as closing:
        closing(images, 2)
    with pytest.raises(RuntimeError, match="removed"):
        closing(images, 2)


def test_bad_arguments_are_named() -> None:
    model = small_net()
    images = torch.randn(1, 3, 20, 20)
    with pytest.raises(ValueError, match="multi-head model"):
        DeepFeatureFactorization(hiercam.TwoBranchNet(lambda: nn.Conv2d(3, 4, 3), num_classes=3))
    with pytest.raises(ValueError, match="must not be a list"):
        DeepFeatureFactorization(model, ["1", "3"])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="`classifier` must be 'auto', None"):
        DeepFeatureFactorization(model, "3", classifier=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="classifier"):
        DeepFeatureFactorization(model, "3", classifier="head")
    with pytest.raises(ValueError, match="`n_components` must be >= 1"):
        DeepFeatureFactorization(model, "3")(images, 0)
    with pytest.raises(ValueError, match="`normalize` must be one of"):
        DeepFeatureFactorization(model, "3")(images, normalize="sum")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`classifier` must map the concepts"):
        DeepFeatureFactorization(model, "3", classifier=lambda c: c.sum())(images, 2)
    with pytest.raises(ValueError, match=r"`activations` must be finite"):
        deep_feature_factorization(torch.full((1, 2, 2, 2), float("nan")))
    with pytest.raises(ValueError, match=r"`activations` must have shape \(B, C, h, w\)"):
        deep_feature_factorization(torch.ones(2, 2, 2))
    with pytest.raises(ValueError, match="`seed` must be >= 0"):
        DeepFeatureFactorization(model, "3", seed=-1)
    with pytest.raises(TypeError, match="images"):
        DeepFeatureFactorization(model, "3")(np.zeros((1, 3, 8, 8)))  # type: ignore[arg-type]


def test_not_a_cam_method() -> None:
    assert "deepfeaturefactorization" not in hiercam.METHODS
    assert not issubclass(DeepFeatureFactorization, hiercam.BaseCAM)


def test_print_agreement(capsys: pytest.CaptureFixture[str]) -> None:
    """Not a check: prints the agreement figures gathered above (run with -s to see them)."""
    with capsys.disabled():
        for name, (diff, r, scores, concepts) in AGREEMENT.items():
            print(
                f"\nDeepFeatureFactorization {name}: maps max abs diff {diff:.2e}, Pearson r {r:.6f}; "
                f"scores {scores:.2e}, concepts {concepts:.2e}"
            )
