"""Class activation maps: Grad-CAM and its family on one engine (one forward, all classes at once).

See ``hiercam.cam.engine`` for how a call works (hooks, batched gradients, the verified closed form);
``hiercam.cam.score`` (ScoreCAM, SSCAM, ISCAM), ``hiercam.cam.ablation`` (AblationCAM) and
``hiercam.cam.eigen`` (EigenCAM) for the gradient-free
methods, ``hiercam.cam.augment`` for multi-scale + flip aggregation, ``hiercam.cam.prototype`` for prototype
CAMs (LPCAM) built from K-means prototypes of local features. ``hiercam.cam.kpca`` (KPCACAM), ``fem`` (FEM),
``random_cam`` (RandomCAM) and ``smooth`` (SmoothGradCAMPlusPlus) hold one method each;
``hiercam.cam.factorization`` (DeepFeatureFactorization) finds concepts, not class maps.
"""

from hiercam.cam._pca import principal_component_maps
from hiercam.cam.ablation import AblationCAM
from hiercam.cam.augment import IRN_SCALES, MultiScaleCAM
from hiercam.cam.eigen import EigenCAM
from hiercam.cam.engine import BaseCAM
from hiercam.cam.factorization import (
    DeepFeatureFactorization,
    FeatureFactorization,
    deep_feature_factorization,
)
from hiercam.cam.fem import FEM, fem_weights
from hiercam.cam.finer import FinerCAM
from hiercam.cam.fullgrad import FullGrad
from hiercam.cam.guided import GuidedBackprop, GuidedGradCAM
from hiercam.cam.kpca import KPCACAM, kernel_principal_component_maps
from hiercam.cam.level_heads import LevelHeadsMaps, level_heads_maps
from hiercam.cam.methods import (
    CAM,
    EigenGradCAM,
    GradCAM,
    GradCAMElementWise,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    XGradCAM,
)
from hiercam.cam.postprocess import average_branch_maps
from hiercam.cam.prototype import PrototypeCAM, prototype_cam, sibling_classes
from hiercam.cam.random_cam import RandomCAM
from hiercam.cam.reshape import TokenReshape
from hiercam.cam.score import ISCAM, SSCAM, ScoreCAM
from hiercam.cam.shapley import ShapleyCAM
from hiercam.cam.smooth import SmoothGradCAMPlusPlus
from hiercam.cam.targets import (
    ClassifierOutputSoftmaxTarget,
    ClassifierOutputTarget,
    SemanticSegmentationTarget,
)
from hiercam.protocols import CAMHead, MultiHeadModel

__all__ = [
    "BaseCAM",
    "GradCAM",
    "GradCAMPlusPlus",
    "XGradCAM",
    "LayerCAM",
    "HiResCAM",
    "CAM",
    "ScoreCAM",
    "SSCAM",
    "ISCAM",
    "AblationCAM",
    "EigenCAM",
    "EigenGradCAM",
    "GradCAMElementWise",
    "ShapleyCAM",
    "FinerCAM",
    "FullGrad",
    "GuidedBackprop",
    "GuidedGradCAM",
    "KPCACAM",
    "FEM",
    "RandomCAM",
    "SmoothGradCAMPlusPlus",
    "MultiScaleCAM",
    "IRN_SCALES",
    "principal_component_maps",
    "kernel_principal_component_maps",
    "fem_weights",
    "DeepFeatureFactorization",
    "FeatureFactorization",
    "deep_feature_factorization",
    "PrototypeCAM",
    "prototype_cam",
    "sibling_classes",
    "average_branch_maps",
    "TokenReshape",
    "ClassifierOutputTarget",
    "ClassifierOutputSoftmaxTarget",
    "SemanticSegmentationTarget",
    "MultiHeadModel",
    "CAMHead",
    "level_heads_maps",
    "LevelHeadsMaps",
]

METHODS: dict[str, type[BaseCAM]] = {
    name.lower(): method
    for name in __all__
    if isinstance(method := globals()[name], type) and issubclass(method, BaseCAM) and method is not BaseCAM
}
"""Every CAM method of the package by its lower-case class name (``"gradcam"``, ``"gradcamplusplus"``,
``"scorecam"``, ...): the one lookup by name, used by ``hiercam cam --method``. A method joins by being
exported from ``hiercam.cam``.

Example:
    >>> import hiercam
    >>> hiercam.METHODS["gradcam"] is hiercam.GradCAM
    True
"""
__all__ += ["METHODS"]
