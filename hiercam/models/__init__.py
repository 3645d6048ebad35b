"""Models: the model factory, feature-map backbones ``(B, C, h, w)``, the two-branch network, level heads.

The factory builds a torchvision or timm classifier by name (``"resnet50"``, ``"timm:<name>"``), loads local
weights after checking them and puts the input normalisation in front: the pipeline and ``hiercam cam`` both
use it. The two-branch network is the paper's (section 3.4.1); the level-heads network (one classifier per
hierarchy level on a shared backbone) is not.
"""

from hiercam.models.backbones import BackboneCut, cut_backbone
from hiercam.models.factory import TIMM_PREFIX, build_model, check_model_name, load_weights
from hiercam.models.input_norm import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageNetNormalize,
    InputNorm,
    TanhNormalize,
    apply_input_norm,
    with_input_norm,
)
from hiercam.models.level_heads import LevelHeadsNet, LevelHeadsOutput, LevelView
from hiercam.models.recam import ReCAMNet, ReCAMOutput
from hiercam.models.small import SmallConvNet
from hiercam.models.subcategory import SubCategoryNet
from hiercam.models.two_branch import Branch, GlobalPool, TwoBranchNet
from hiercam.protocols import TwoBranchOutput

__all__ = [
    # the model factory: build by name, local weights, input normalisation
    "TIMM_PREFIX",
    "build_model",
    "check_model_name",
    "load_weights",
    "InputNorm",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "apply_input_norm",
    "ImageNetNormalize",
    "TanhNormalize",
    "with_input_norm",
    # a small CPU backbone
    "SmallConvNet",
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
    # an auxiliary sub-category head (SC-CAM)
    "SubCategoryNet",
    # ReCAM's re-activation predictor on a trained classifier
    "ReCAMNet",
    "ReCAMOutput",
]
