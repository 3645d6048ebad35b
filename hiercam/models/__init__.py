"""Models: feature-map backbones ``(B, C, h, w)``, the two-branch network, level heads on one backbone.

The two-branch network is the paper's (section 3.4.1); the level-heads network (one classifier per hierarchy
level on a shared backbone) is not.
"""

from hiercam.models.backbones import BackboneCut, cut_backbone
from hiercam.models.level_heads import LevelHeadsNet, LevelHeadsOutput, LevelView
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
    # one head per hierarchy level on a shared backbone
    "LevelHeadsNet",
    "LevelHeadsOutput",
    "LevelView",
]
