"""Class activation maps: Grad-CAM and its family on one engine (one forward, all classes at once).

See ``hiercam.cam.engine`` for how a call works (hooks, batched gradients, the verified closed form).
"""

from hiercam.cam.engine import BaseCAM, average_branch_maps, resize_maps
from hiercam.cam.methods import CAM, GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, XGradCAM
from hiercam.cam.reshape import TokenReshape
from hiercam.cam.targets import (
    ClassifierOutputSoftmaxTarget,
    ClassifierOutputTarget,
    SemanticSegmentationTarget,
)
from hiercam.heads import CAMHead, MultiHeadModel

__all__ = [
    "BaseCAM",
    "GradCAM",
    "GradCAMPlusPlus",
    "XGradCAM",
    "LayerCAM",
    "HiResCAM",
    "CAM",
    "average_branch_maps",
    "resize_maps",
    "TokenReshape",
    "ClassifierOutputTarget",
    "ClassifierOutputSoftmaxTarget",
    "SemanticSegmentationTarget",
    "MultiHeadModel",
    "CAMHead",
]
