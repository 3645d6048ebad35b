"""hiercam: better class activation maps from classifiers trained on a hierarchy of class groups.

An implementation of Meng et al., "Hierarchical class grouping with orthogonal constraint for class
activation map generation" (Neural Computing and Applications, 2020), as small composable PyTorch parts.
"""

from hiercam._version import __version__
from hiercam.cam import (
    CAM,
    IRN_SCALES,
    AblationCAM,
    BaseCAM,
    CAMHead,
    ClassifierOutputSoftmaxTarget,
    ClassifierOutputTarget,
    EigenCAM,
    GradCAM,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    MultiHeadModel,
    MultiScaleCAM,
    PrototypeCAM,
    ScoreCAM,
    SemanticSegmentationTarget,
    TokenReshape,
    XGradCAM,
    average_branch_maps,
    level_heads_maps,
    principal_component_maps,
    prototype_cam,
    sibling_classes,
)
from hiercam.datasets import FashionScenes, collate_scenes
from hiercam.fusion import fuse, fuse_hierarchy
from hiercam.grouping import HierarchicalKMeans, group_classes
from hiercam.grouping_agreement import (
    coassociation_matrix,
    consensus_hierarchy,
    hierarchy_agreement,
    mean_pairwise_agreement,
    pairwise_agreement,
    shuffled_hierarchy,
)
from hiercam.grouping_sources import PrototypeEmbeddings, cooccurrence_embeddings, prototype_embeddings
from hiercam.hierarchy import ClassHierarchy, frequent_classes
from hiercam.losses import (
    LevelHeadsLoss,
    LevelHeadsLossOutput,
    OrthogonalLoss,
    TwoBranchLoss,
    TwoBranchLossOutput,
    level_heads_loss,
    orthogonal_loss,
)
from hiercam.maps import normalize_maps
from hiercam.metrics import (
    ROAD,
    ConfidenceChange,
    ConfidenceResult,
    DeletionInsertion,
    DeletionInsertionResult,
    IoUResult,
    LocalizationError,
    MaxBoxAccResult,
    MaxBoxAccV2,
    MeanAveragePrecision,
    MeanIoU,
    PxAP,
    ROADResult,
    average_precision,
    cam_boxes,
    confidence_change,
    deletion_insertion,
    localization_error,
    maps_to_masks,
    max_box_acc,
    mean_average_precision,
    mean_iou,
    mean_iou_from_masks,
    noisy_linear_impute,
    pxap,
    road,
)
from hiercam.models import (
    Branch,
    GlobalPool,
    LevelHeadsNet,
    LevelHeadsOutput,
    SmallConvNet,
    TwoBranchNet,
    TwoBranchOutput,
    cut_backbone,
    small_convnet,
)
from hiercam.similarity import class_distances, class_embeddings
from hiercam.training import History, evaluate, fit

# hiercam.viz needs matplotlib (the optional `viz` extra): import it as a module, it is not re-exported here.

__all__ = [
    "__version__",
    # class similarity (section 3.2)
    "class_embeddings",
    "class_distances",
    # hierarchical grouping (section 3.3)
    "HierarchicalKMeans",
    "ClassHierarchy",
    "group_classes",
    "frequent_classes",
    # grouping sources that no training seed changes, and the controls of a grouping
    "cooccurrence_embeddings",
    "PrototypeEmbeddings",
    "prototype_embeddings",
    "consensus_hierarchy",
    "coassociation_matrix",
    "shuffled_hierarchy",
    "hierarchy_agreement",
    "pairwise_agreement",
    "mean_pairwise_agreement",
    # map normalisation shared by CAMs, fusion and metrics
    "normalize_maps",
    # orthogonal loss and the two-branch network (section 3.4.1)
    "orthogonal_loss",
    "OrthogonalLoss",
    "TwoBranchLoss",
    "TwoBranchLossOutput",
    "TwoBranchNet",
    "TwoBranchOutput",
    "Branch",
    "GlobalPool",
    "cut_backbone",
    # every level's classifier as a head of one backbone (not in the paper)
    "LevelHeadsNet",
    "LevelHeadsOutput",
    "LevelHeadsLoss",
    "LevelHeadsLossOutput",
    "level_heads_loss",
    "level_heads_maps",
    # class activation maps (section 3.4.2)
    "GradCAM",
    "GradCAMPlusPlus",
    "XGradCAM",
    "LayerCAM",
    "HiResCAM",
    "CAM",
    "ScoreCAM",
    "AblationCAM",
    "EigenCAM",
    "MultiScaleCAM",
    "IRN_SCALES",
    "principal_component_maps",
    # prototype CAMs (LPCAM), with hierarchy siblings as context
    "PrototypeCAM",
    "prototype_cam",
    "sibling_classes",
    "BaseCAM",
    "average_branch_maps",
    "MultiHeadModel",
    "CAMHead",
    # CAMs of any model: token outputs, any output, targets
    "TokenReshape",
    "ClassifierOutputTarget",
    "ClassifierOutputSoftmaxTarget",
    "SemanticSegmentationTarget",
    # CAM fusion across levels (section 3.5)
    "fuse",
    "fuse_hierarchy",
    # CAM quality metrics (section 4.1.3)
    "maps_to_masks",
    "mean_iou",
    "mean_iou_from_masks",
    "MeanIoU",
    "IoUResult",
    "cam_boxes",
    "localization_error",
    "LocalizationError",
    # weakly-supervised localisation metrics (Choe et al., CVPR 2020)
    "max_box_acc",
    "MaxBoxAccV2",
    "MaxBoxAccResult",
    "pxap",
    "PxAP",
    # faithfulness metrics (RISE deletion / insertion, Grad-CAM++ Average Drop, ROAD)
    "deletion_insertion",
    "DeletionInsertion",
    "DeletionInsertionResult",
    "confidence_change",
    "ConfidenceChange",
    "ConfidenceResult",
    "road",
    "ROAD",
    "ROADResult",
    "noisy_linear_impute",
    # a small CPU backbone
    "small_convnet",
    "SmallConvNet",
    # bundled benchmark data
    "FashionScenes",
    "collate_scenes",
    # training
    "fit",
    "evaluate",
    "History",
    # multi-label classification quality
    "average_precision",
    "mean_average_precision",
    "MeanAveragePrecision",
]
