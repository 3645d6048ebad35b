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

# Every CAM method exported above, by its lower-case class name ("gradcam", "gradcamplusplus", ...): the one
# lookup by name (the ``hiercam cam --method`` option). A method joins by being exported from this package.
METHODS: dict[str, type[BaseCAM]] = {
    name.lower(): method
    for name in __all__
    if isinstance(method := globals()[name], type) and issubclass(method, BaseCAM) and method is not BaseCAM
}
__all__ += ["METHODS"]
