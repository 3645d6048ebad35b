"""The softmax-over-present-classes target (``softmax_over=``) against pytorch-grad-cam with the same target.

pytorch-grad-cam explains any callable target by autograd; here each class ``c`` of image ``b`` gets the
target ``log_softmax(logits[S])[c]`` with ``S`` the image's classes plus ``c`` (the logit itself when ``c`` is
alone), one backward per class, and hiercam's closed-form combination of the all-class gradients must give
the same min-max normalised maps.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision import models

import hiercam
from hiercam.cam.contrast import softmax_over_gradients

pgc = pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

LABELS = torch.tensor([[1, 0, 1, 0, 0], [0, 1, 0, 0, 0], [1, 1, 1, 0, 1]])
METHODS = {
    "GradCAM": (hiercam.GradCAM, pgc.GradCAM),
    "GradCAMPlusPlus": (hiercam.GradCAMPlusPlus, pgc.GradCAMPlusPlus),
    "LayerCAM": (hiercam.LayerCAM, pgc.LayerCAM),
}


class PresentSoftmaxTarget:
    """The naive target: log softmax of one image's logits over ``members``, at ``category``."""

    def __init__(self, category: int, members: list[int]) -> None:
        self.position = members.index(category)
        self.members = members

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(output[self.members], dim=-1)[self.position]


def naive_targets(labels: torch.Tensor, category: int) -> list:
    targets = []
    for row in labels:
        members = sorted({*row.nonzero().flatten().tolist(), category})
        alone = members == [category]
        targets.append(ClassifierOutputTarget(category) if alone else PresentSoftmaxTarget(category, members))
    return targets


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    return models.resnet18(num_classes=5).eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("method", list(METHODS))
def test_matches_pytorch_grad_cam_with_the_naive_target(model, images, method: str) -> None:
    ours_type, peer_type = METHODS[method]
    with ours_type(model, "layer4") as extractor:
        ours = extractor(images, size="input", normalize="minmax", softmax_over=LABELS)
    with peer_type(model, target_layers=[model.layer4]) as peer:
        theirs = torch.stack(
            [torch.from_numpy(peer(images, targets=naive_targets(LABELS, k))) for k in range(5)], dim=1
        )
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)


def test_closed_form_gives_the_same_maps(model, images) -> None:
    general = hiercam.GradCAM(model, "layer4", closed_form=False)
    closed = hiercam.GradCAM(model, "layer4")
    closed(images)  # verifies the closed form for all classes at this size
    expected = general(images, normalize=None, softmax_over=LABELS)
    got = closed(images, normalize=None, softmax_over=LABELS)
    assert "verified" in repr(closed)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)


def test_changes_the_maps_of_classes_with_competitors_only(model, images) -> None:
    cam = hiercam.GradCAM(model, "layer4")
    plain = cam(images, normalize=None)
    contrasted = cam(images, normalize=None, softmax_over=LABELS.bool())
    torch.testing.assert_close(contrasted[1, 1], plain[1, 1])  # class 1 is alone in image 1
    assert not torch.allclose(contrasted[0, 0], plain[0, 0])


def test_multiscale_passes_it_to_every_pass(model, images) -> None:
    cam = hiercam.GradCAM(model, "layer4")
    wrapped = hiercam.MultiScaleCAM(cam, scales=(1.0,), flip=True)
    got = wrapped(images, normalize=None, softmax_over=LABELS)
    direct = cam(images, normalize=None, softmax_over=LABELS)
    mirrored = cam(images.flip(-1), normalize=None, softmax_over=LABELS).flip(-1)
    torch.testing.assert_close(got, (direct + mirrored) / 2, rtol=1e-5, atol=1e-6)


def test_two_branch_model_uses_each_heads_logits() -> None:
    torch.manual_seed(0)
    net = hiercam.TwoBranchNet(lambda: models.resnet18(num_classes=5), 5).eval()
    images = torch.randn(2, 3, 64, 64)
    labels = LABELS[:2]
    cam = hiercam.GradCAM(net)
    cam(images, normalize=None, softmax_over=labels)
    branch_maps = cam.branch_maps
    assert branch_maps is not None
    for index, head in enumerate(net.cam_heads()):
        single = hiercam.GradCAM(OneHead(net, head.logits), f"net.{head.name}")
        expected = single(images, normalize=None, softmax_over=labels)
        torch.testing.assert_close(branch_maps[index], expected, rtol=1e-4, atol=1e-6)


class OneHead(nn.Module):
    """One head of a multi-head model as a plain single-output model."""

    def __init__(self, net: nn.Module, logits) -> None:
        super().__init__()
        self.net, self.logits = net, logits

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits(self.net(images))


def test_gradients_by_hand() -> None:
    gradients = torch.eye(3).reshape(3, 1, 3)  # d z_k = e_k
    logits = torch.log(torch.tensor([[1.0, 3.0, 5.0]]))  # softmax over all three: 1/9, 3/9, 5/9
    present = torch.tensor([[True, True, False]])
    got = softmax_over_gradients(gradients, logits, present)[:, 0]
    expected = torch.tensor(
        [
            [1 - 1 / 4, -3 / 4, 0.0],  # S = {0, 1}: p = (1/4, 3/4)
            [-1 / 4, 1 - 3 / 4, 0.0],
            [-1 / 9, -3 / 9, 1 - 5 / 9],  # class 2 is absent: S = {0, 1, 2}
        ]
    )
    torch.testing.assert_close(got, expected)
    alone = softmax_over_gradients(gradients, logits, torch.tensor([[False, False, False]]))[:, 0]
    torch.testing.assert_close(alone, torch.eye(3))  # no competitor: the logit's own gradient


def test_input_is_not_modified(model, images) -> None:
    labels = LABELS.clone()
    hiercam.GradCAM(model, "layer4")(images, softmax_over=labels)
    assert torch.equal(labels, LABELS)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"softmax_over": [[1, 0, 1, 0, 0]] * 3}, TypeError, "softmax_over"),
        ({"softmax_over": LABELS[:2]}, ValueError, r"B = 3"),
        ({"softmax_over": LABELS * 2}, ValueError, "0/1"),
        ({"softmax_over": LABELS[:, :4]}, ValueError, "4 classes but the model has 5"),
        ({"softmax_over": LABELS, "classes": [0, 1]}, ValueError, "classes=None"),
    ],
)
def test_bad_arguments(model, images, kwargs, error, match) -> None:
    with pytest.raises(error, match=match):
        hiercam.GradCAM(model, "layer4")(images, **kwargs)


def test_gradient_free_methods_refuse_it(model, images) -> None:
    with pytest.raises(ValueError, match="gradient-based"):
        hiercam.ScoreCAM(model, "layer4", batch_size=8)(images, softmax_over=LABELS)


def test_maps_hold_no_autograd_graph(model, images) -> None:
    cam = hiercam.GradCAM(model, "layer4")
    cam(images)  # the closed form's gradients come from the classifier's weights
    assert not cam(images, softmax_over=LABELS).requires_grad
    assert not hiercam.GradCAM(model, "layer4", closed_form=False)(images, softmax_over=LABELS).requires_grad
