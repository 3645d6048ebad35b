"""Models: backbones that return feature maps ``(B, C, h, w)``, and the two-branch network (section 3.4.1)."""

from hiercam.models.backbones import BackboneCut, cut_backbone
from hiercam.models.small import SmallConvNet, small_convnet
from hiercam.models.two_branch import Branch, GlobalPool, TwoBranchNet, TwoBranchOutput

__all__ = [
    # a small CPU backbone
    "SmallConvNet",
    "small_convnet",
    # cutting classifiers into feature extractors
    "BackboneCut",
    "cut_backbone",
    # the two-branch network
    "GlobalPool",
    "Branch",
    "TwoBranchNet",
    "TwoBranchOutput",
]
