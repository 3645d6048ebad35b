"""ReCAM's network: a trained classifier fine-tuned with a re-activation head (Chen et al., CVPR 2022).

ReCAM ("Class Re-Activation Maps for Weakly-Supervised Semantic Segmentation", authors' code
``zhaozhengChen/ReCAM``, ``net/resnet50_cam.py``) takes a trained multi-label classifier (backbone ``F``,
linear classifier ``W``) and fine-tunes it with a second, softmax objective. For each class ``k`` of an image,
the feature maps weighted by the class's max-normalised CAM are averaged into one vector,

    a_k = ReLU(W_k . F) / max ReLU(W_k . F),        f_k = mean_{positions} a_k * F        (C values),

and a new linear predictor ``W'`` (no bias) must tell which class the vector belongs to:
``z_k = W' f_k`` (``K`` logits). Its softmax cross-entropy with target ``k``
([`reactivation_loss`][hiercam.losses.reactivation_loss]) pushes the CAM of each class to keep only what is
that class, where the multi-label BCE lets maps of co-occurring classes overlap. The re-activated maps are
``ReLU((W' * W)_k . F)``: the element-wise product of the two weights applied to the fine-tuned features
(``make_recam.py``'s ``forward2``), which
[`ReCAMNet.recam_classifier`][hiercam.models.ReCAMNet.recam_classifier] packs into an ordinary classifier to
explain.
"""

from __future__ import annotations

import copy
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hiercam._validation import type_name
from hiercam.models.backbones import cut_owned
from hiercam.models.two_branch import Branch, GlobalPool, factory_kwargs, feature_maps

__all__ = ["ReCAMOutput", "ReCAMNet"]


class ReCAMOutput(NamedTuple):
    """Output of a [`ReCAMNet`][hiercam.models.ReCAMNet]."""

    class_logits: Tensor
    """``(B, K)``: the multi-label classifier's logits (what ``hiercam.fit`` scores its mAP on)."""
    reactivation_logits: Tensor
    """``(B, K, K)``: entry ``[b, k]`` is the predictor's ``K`` logits of class ``k``'s CAM-weighted feature
    vector of image ``b`` (computed for every class; the loss uses those of the labelled classes)."""


class ReCAMNet(nn.Module):
    """A trained classifier's backbone and linear classifier, with ReCAM's re-activation predictor.

    ``forward(x)`` computes the feature maps ``F (B, C, h, w)`` once and returns the classifier's logits
    (global average pooling, then ``classifier``) and, for every class ``k``, the predictor's logits of
    ``mean_positions(a_k * F)`` with ``a_k`` the class's max-normalised ReLU CAM (module docstring). Train it
    with [`ReActivationLoss`][hiercam.losses.ReActivationLoss]; explain
    [`recam_classifier`][hiercam.models.ReCAMNet.recam_classifier] (or, for the fine-tuned classifier's own
    maps, [`plain_classifier`][hiercam.models.ReCAMNet.plain_classifier]).

    The backbone is cut like [`TwoBranchNet`][hiercam.TwoBranchNet]'s and deep-copied, and ``classifier`` is
    copied: the trained model passed in is not modified. The predictor ``nn.Linear(C, K, bias=False)`` is
    freshly initialised (PyTorch's default), on the classifier's device and dtype.

    Args:
        backbone: the trained classifier's feature extractor (or the classifier to cut), giving
            ``(B, C, h, w)``.
        classifier: its linear classifier ``nn.Linear(C, K)`` over the globally averaged features.

    Attributes:
        features: the fine-tuned feature extractor.
        pool: global average pooling.
        classifier: the multi-label classifier ``W`` (and its bias).
        predictor: the re-activation predictor ``W'``.

    Raises:
        TypeError: ``backbone`` is not an ``nn.Module`` or ``classifier`` not an ``nn.Linear``.
        ValueError: the backbone cannot be cut, or its channel count is not ``classifier.in_features``.

    Examples:
        >>> from hiercam import GradCAM, SmallConvNet
        >>> trained = Branch(SmallConvNet(width=4), num_features=16, num_classes=3)
        >>> net = ReCAMNet(trained.features, trained.classifier)
        >>> output = net(torch.rand(2, 3, 32, 32))
        >>> output.class_logits.shape, output.reactivation_logits.shape
        (torch.Size([2, 3]), torch.Size([2, 3, 3]))
        >>> extractor = GradCAM(net.recam_classifier(), "features")
        >>> extractor(torch.rand(2, 3, 32, 32)).shape
        torch.Size([2, 3, 32, 32])
        >>> extractor.remove()
    """

    def __init__(self, backbone: nn.Module, classifier: nn.Linear) -> None:
        super().__init__()
        if not isinstance(backbone, nn.Module):
            raise TypeError(f"`backbone` must be an nn.Module, got {type_name(backbone)}")
        if not isinstance(classifier, nn.Linear):
            raise TypeError(f"`classifier` must be an nn.Linear, got {type_name(classifier)}")
        cut = cut_owned(backbone, "backbone", copy_first=True)
        if cut.num_features != classifier.in_features:
            raise ValueError(
                f"`backbone` gives {cut.num_features} channels but `classifier` takes "
                f"{classifier.in_features} features"
            )
        self.features = cut.features
        self.num_features = cut.num_features
        self.num_classes = classifier.out_features
        self.pool = GlobalPool("avg")
        self.classifier = copy.deepcopy(classifier)
        factory = factory_kwargs(classifier)
        self.predictor = nn.Linear(self.num_features, self.num_classes, bias=False, **factory)
        self.train(backbone.training)

    def forward_features(self, x: Tensor) -> Tensor:
        """Feature maps ``(B, C, h, w)`` of images ``x`` ``(B, 3, H, W)``."""
        return feature_maps(self.features, x, self.num_features)

    def forward(self, x: Tensor) -> ReCAMOutput:
        """The classifier's logits ``(B, K)`` and the re-activation logits ``(B, K, K)`` of images ``x``."""
        features = self.forward_features(x)
        logits = self.classifier(self.pool(features))
        flat = features.flatten(2)  # (B, C, hw)
        cams = F.relu(torch.einsum("kc,bcn->bkn", self.classifier.weight, flat))
        cams = cams / (cams.amax(dim=2, keepdim=True) + 1e-5)  # ReCAM's max-normalisation, eps 1e-5
        weighted = torch.einsum("bkn,bcn->bkc", cams, flat) / flat.shape[2]  # (B, K, C)
        return ReCAMOutput(logits, self.predictor(weighted))

    def plain_classifier(self) -> Branch:
        """A copy of the net as a plain classifier with its own ``W`` and bias: the fine-tuned classifier.

        Its Grad-CAM is the CAM of ReCAM's training without the re-activated ``W' * W`` map, and its logits
        are ``forward(x).class_logits``. The features are copied, so training the net further does not change
        it.
        """
        branch = Branch(copy.deepcopy(self.features), self.num_features, self.num_classes)
        branch.classifier.load_state_dict(self.classifier.state_dict())
        return branch.train(self.training)

    def recam_classifier(self) -> Branch:
        """A copy of the net as a plain classifier whose weights are ``W' * W``, no bias: ReCAM's maps.

        Its Grad-CAM (global average pooling and a linear layer) is ``ReLU((W' * W)_k . F)`` up to a positive
        factor, the re-activated map of ``make_recam.py``; its logits are not a classifier's. The features
        are copied, so training the net further does not change it.
        """
        branch = Branch(copy.deepcopy(self.features), self.num_features, self.num_classes)
        with torch.no_grad():
            branch.classifier.weight.copy_(self.predictor.weight * self.classifier.weight)
            branch.classifier.bias.zero_()
        return branch.train(self.training)
