"""A classifier with an auxiliary sub-category head (SC-CAM, Chang et al., CVPR 2020).

One backbone and global pool feed two linear heads: the ``K`` classes and the ``S`` sub-categories of
[`cluster_subcategories`][hiercam.grouping.cluster_subcategories]. The forward pass returns both heads'
logits side by side, ``(B, K + S)``, so that [`fit`][hiercam.fit] trains it on targets ``(B, K + S)``
(the class labels, then ``SubCategories.targets``) with [`SubCategoryLoss`][hiercam.losses.SubCategoryLoss].
The class maps are those of the class head: ``net.classes()`` is a plain ``(B, K)`` classifier sharing the
net's parameters, explained like any other (``GradCAM(net.classes())``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hiercam._validation import check_int
from hiercam.models.level_heads import LevelHeadsNet, LevelView
from hiercam.models.two_branch import PoolMode

__all__ = ["SubCategoryNet"]


class SubCategoryNet(nn.Module):
    """A backbone, a global pool, a class head ``(B, K)`` and a sub-category head ``(B, S)``.

    ``forward(x)`` returns ``torch.cat([class_logits, subcategory_logits], 1)``, ``(B, K + S)``: one
    backbone pass. The two heads are level 0 and level 1 of a
    [`LevelHeadsNet`][hiercam.models.LevelHeadsNet] held as ``net`` (so the feature layer is
    ``"net.features"``), and the backbone follows its convention: cut and deep-copied, the module passed in
    is not modified; the heads are freshly initialised on the backbone's device and dtype.

    Args:
        backbone: a classifier to cut, or a module returning feature maps ``(B, C, h, w)``.
        num_classes: ``K``, ``>= 1``.
        num_subcategories: ``S``, ``>= 1`` (``SubCategories.num_subcategories``).
        pool: ``"avg"`` (global average pooling, the CAM setting) or ``"max"``.

    Attributes:
        net: the [`LevelHeadsNet`][hiercam.models.LevelHeadsNet] with heads ``(K, S)``.
        num_classes: ``K``.
        num_subcategories: ``S``.

    Raises:
        TypeError: ``backbone`` is not an ``nn.Module``, or a size not an int.
        ValueError: a size below 1, an unknown ``pool``, or a backbone that cannot be cut.

    Examples:
        >>> from hiercam import GradCAM, SmallConvNet
        >>> net = SubCategoryNet(SmallConvNet(width=4), num_classes=3, num_subcategories=7)
        >>> images = torch.rand(2, 3, 32, 32)
        >>> net(images).shape  # classes first, then sub-categories
        torch.Size([2, 10])
        >>> classifier = net.classes()
        >>> classifier(images).shape
        torch.Size([2, 3])
        >>> extractor = GradCAM(classifier, "net.features")
        >>> extractor(images).shape
        torch.Size([2, 3, 32, 32])
        >>> extractor.remove()
    """

    def __init__(
        self, backbone: nn.Module, num_classes: int, num_subcategories: int, *, pool: PoolMode = "avg"
    ) -> None:
        super().__init__()
        self.num_classes = check_int(num_classes, "num_classes", minimum=1)
        self.num_subcategories = check_int(num_subcategories, "num_subcategories", minimum=1)
        self.net = LevelHeadsNet(backbone, [self.num_classes, self.num_subcategories], pool=pool)
        self.train(self.net.training)

    def forward(self, x: Tensor) -> Tensor:
        """Class and sub-category logits ``(B, K + S)`` of images ``x`` ``(B, 3, H, W)``, classes first."""
        return torch.cat(tuple(self.net(x)), dim=1)

    def forward_features(self, x: Tensor) -> Tensor:
        """Feature maps ``(B, C, h, w)`` of images ``x``: the layer the class maps explain."""
        return self.net.forward_features(x)

    def classes(self) -> LevelView:
        """The class head as a plain classifier ``(B, K)``, sharing this net's parameters.

        Its feature layer is ``"net.features"``: what the class maps and ``hiercam.evaluate`` use.
        """
        return self.net.level(0)

    def extra_repr(self) -> str:  # noqa: D102
        return f"num_classes={self.num_classes}, num_subcategories={self.num_subcategories}"
