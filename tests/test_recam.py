"""ReCAM's pieces (ReCAMNet, reactivation_loss, sibling_candidates) against the authors' code, re-typed.

Oracles: ``Net_CAM_Feature.forward`` and ``Class_Predictor.forward`` of ``zhaozhengChen/ReCAM``
(``net/resnet50_cam.py``), its ``forward2`` for the re-activated maps, each written here as the loops and
convolutions of that code; plain-autograd facts for the training.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import hiercam
from hiercam import ClassHierarchy, GradCAM, SmallConvNet
from hiercam.losses import ReActivationLoss, ReActivationLossOutput, reactivation_loss, sibling_candidates
from hiercam.models import ReCAMNet, ReCAMOutput
from hiercam.models.two_branch import Branch

pytestmark = pytest.mark.usefixtures("one_thread")


def trained_classifier(classes: int = 4) -> Branch:
    torch.manual_seed(0)
    features = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, stride=2), nn.ReLU()
    )
    return Branch(features, num_features=8, num_classes=classes).eval()


def authors_cam_feature(net: ReCAMNet, images: Tensor) -> tuple[Tensor, Tensor]:
    """``Net_CAM_Feature.forward``: logits and the CAM-weighted features ``(B, K, C)``."""
    feature = net.features(images)
    x = feature.mean((2, 3), keepdim=True)
    logits = F.conv2d(x, net.classifier.weight[:, :, None, None], net.classifier.bias).flatten(1)
    cams = F.relu(F.conv2d(feature, net.classifier.weight[:, :, None, None]))
    cams = cams / (F.adaptive_max_pool2d(cams, (1, 1)) + 1e-5)
    cams_feature = cams.unsqueeze(2) * feature.unsqueeze(1)
    cams_feature = cams_feature.view(cams_feature.size(0), cams_feature.size(1), cams_feature.size(2), -1)
    return logits, cams_feature.mean(-1)


def authors_predictor_loss(predictor: Tensor, x: Tensor, label: Tensor) -> Tensor:
    """``Class_Predictor.forward``'s loss: per image, CE over the labelled classes, summed, / batch."""
    batch = x.shape[0]
    mask = label > 0
    loss = torch.zeros(())
    for i in range(batch):
        y = x[i][mask[i]]
        if y.shape[0] == 0:
            continue
        logit = F.conv2d(y[:, :, None, None], predictor[:, :, None, None]).flatten(1)
        loss = loss + F.cross_entropy(logit, torch.nonzero(label[i]).squeeze(1))
    return loss / batch


def test_forward_is_the_authors_cam_feature_then_the_predictor() -> None:
    net = ReCAMNet(trained_classifier().features, trained_classifier().classifier).eval()
    images = torch.randn(3, 3, 12, 12)
    output = net(images)
    assert isinstance(output, ReCAMOutput)
    logits, cams_feature = authors_cam_feature(net, images)
    torch.testing.assert_close(output.class_logits, logits, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(output.reactivation_logits, net.predictor(cams_feature), rtol=1e-5, atol=1e-6)
    assert net.predictor.bias is None


def test_loss_is_bce_plus_the_authors_class_predictor_loss() -> None:
    net = ReCAMNet(trained_classifier().features, trained_classifier().classifier).eval()
    images = torch.randn(4, 3, 12, 12)
    labels = torch.tensor([[1, 0, 1, 0], [0, 0, 0, 0], [0, 1, 1, 1], [1, 0, 0, 0]], dtype=torch.float32)
    parts = ReActivationLoss(weight=0.5)(net(images), labels)
    assert isinstance(parts, ReActivationLossOutput)
    logits, cams_feature = authors_cam_feature(net, images)
    expected_ce = authors_predictor_loss(net.predictor.weight, cams_feature, labels)
    torch.testing.assert_close(parts.reactivation, expected_ce, rtol=1e-5, atol=1e-6)
    bce = F.multilabel_soft_margin_loss(logits, labels)  # the authors' loss_cls
    torch.testing.assert_close(parts.classification, bce, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(parts.total, bce + 0.5 * expected_ce, rtol=1e-5, atol=1e-6)


def test_candidates_restrict_each_softmax_to_the_class_and_its_siblings() -> None:
    hierarchy = ClassHierarchy([[0, 0, 1, 1, 2]])
    candidates = sibling_candidates(hierarchy)
    expected = torch.tensor(
        [[1, 1, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 1, 1, 0], [0, 0, 1, 1, 0], [0, 0, 0, 0, 1]]
    )
    assert torch.equal(candidates, expected.bool())
    reactivation = torch.randn(2, 5, 5)
    labels = torch.tensor([[1, 0, 1, 0, 1], [0, 1, 0, 0, 0]], dtype=torch.float32)
    parts = reactivation_loss((torch.zeros(2, 5), reactivation), labels, candidates=candidates)
    by_hand = []
    for b in range(2):
        terms = []
        for k in labels[b].nonzero().flatten().tolist():
            allowed = candidates[k].nonzero().flatten()
            target = allowed.tolist().index(k)
            terms.append(F.cross_entropy(reactivation[b, k, allowed][None], torch.tensor([target])))
        by_hand.append(torch.stack(terms).mean())
    torch.testing.assert_close(parts.reactivation, torch.stack(by_hand).sum() / 2)
    # a class alone in its group has no negative: its term is 0 (image 0, class 4)


def test_recam_classifier_gradcam_is_the_authors_forward2_map() -> None:
    classifier = trained_classifier()
    before = {name: value.clone() for name, value in classifier.state_dict().items()}
    net = ReCAMNet(classifier.features, classifier.classifier)
    with torch.no_grad():
        net.predictor.weight.normal_()
    images = torch.randn(2, 3, 12, 12)
    explained = net.recam_classifier().eval()
    extractor = GradCAM(explained, "features")
    maps = extractor(images, size="feature", normalize="max")
    extractor.remove()
    product = (net.predictor.weight * net.classifier.weight)[:, :, None, None]
    expected = F.relu(F.conv2d(net.features(images), product))  # forward2, without the flipped image
    expected = expected / expected.amax(dim=(2, 3), keepdim=True).clamp(min=1e-12)
    torch.testing.assert_close(maps, expected.detach(), rtol=1e-4, atol=1e-5)
    assert all(torch.equal(before[name], value) for name, value in classifier.state_dict().items())


def test_plain_classifier_is_the_nets_own_classifier_copied() -> None:
    classifier = trained_classifier()
    net = ReCAMNet(classifier.features, classifier.classifier).eval()
    images = torch.randn(2, 3, 12, 12)
    plain = net.plain_classifier()
    assert not plain.training
    torch.testing.assert_close(plain(images), net(images).class_logits)
    extractor = GradCAM(plain, "features")
    maps = extractor(images, size="feature", normalize="max")
    extractor.remove()
    weights = net.classifier.weight[:, :, None, None]  # a linear head over average pooling: CAM = ReLU(W . F)
    expected = F.relu(F.conv2d(net.features(images), weights))
    expected = expected / expected.amax(dim=(2, 3), keepdim=True).clamp(min=1e-12)
    torch.testing.assert_close(maps, expected.detach(), rtol=1e-4, atol=1e-5)
    with torch.no_grad():  # a copy: changing the net afterwards leaves it as it was
        net.classifier.weight.add_(1.0)
        next(net.features.parameters()).add_(1.0)
    torch.testing.assert_close(plain.classifier.weight, classifier.classifier.weight)
    torch.testing.assert_close(plain(images), classifier(images))


def test_fit_trains_the_predictor_and_logs_both_terms() -> None:
    backbone = SmallConvNet(width=4, norm="group")
    start = Branch(backbone, num_features=16, num_classes=3)
    net = ReCAMNet(start.features, start.classifier)
    images = torch.randn(8, 3, 24, 24)
    labels = torch.tensor([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1]] * 2, dtype=torch.float32)
    predictor_before = net.predictor.weight.detach().clone()
    history = hiercam.fit(net, [(images, labels)], epochs=3, loss=ReActivationLoss(), lr=1e-2, progress=False)
    assert {"train_classification", "train_reactivation"} <= set(history.keys())
    assert history["train_loss"][-1] < history["train_loss"][0]
    assert not torch.equal(net.predictor.weight, predictor_before)


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: ReCAMNet("net", nn.Linear(8, 3)), TypeError, "`backbone` must be an nn.Module"),
        (
            lambda: ReCAMNet(trained_classifier().features, "fc"),
            TypeError,
            "`classifier` must be an nn.Linear",
        ),
        (lambda: ReCAMNet(trained_classifier().features, nn.Linear(5, 3)), ValueError, "gives 8 channels"),
        (lambda: reactivation_loss(torch.zeros(2, 3), torch.zeros(2, 3)), TypeError, "pair"),
        (
            lambda: reactivation_loss((torch.zeros(2, 3), torch.zeros(2, 3, 2)), torch.zeros(2, 3)),
            ValueError,
            r"\(B, K, K\) = \(2, 3, 3\)",
        ),
        (
            lambda: reactivation_loss((torch.zeros(2, 3), torch.zeros(2, 3, 3)), torch.full((2, 3), 2.0)),
            ValueError,
            "`labels` must hold only 0/1",
        ),
        (
            lambda: reactivation_loss(
                (torch.zeros(2, 3), torch.zeros(2, 3, 3)),
                torch.zeros(2, 3),
                candidates=torch.zeros(3, 3).bool(),
            ),
            ValueError,
            "diagonal must be True",
        ),
        (lambda: ReActivationLoss(candidates=torch.eye(3)), ValueError, "square bool tensor"),
        (lambda: ReActivationLoss(weight=-1.0), ValueError, "`weight` must be a finite number >= 0"),
        (lambda: sibling_candidates([[0, 1]]), TypeError, "`hierarchy` must be a ClassHierarchy"),  # type: ignore[arg-type]
    ],
)
def test_errors_name_the_argument(call: Callable[[], object], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        call()
