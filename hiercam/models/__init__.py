"""Models: backbone cutting and the two-branch network of paper section 3.4.1."""

from hiercam.models.backbones import BackboneCut, cut_backbone
from hiercam.models.two_branch import Branch, GlobalPool, TwoBranchNet, TwoBranchOutput

__all__ = [
    # cutting classifiers into feature extractors
    "BackboneCut",
    "cut_backbone",
    # the two-branch network
    "GlobalPool",
    "Branch",
    "TwoBranchNet",
    "TwoBranchOutput",
]
