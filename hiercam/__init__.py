"""hiercam: better class activation maps from classifiers trained on a hierarchy of class groups.

An implementation of Meng et al., "Hierarchical class grouping with orthogonal constraint for class
activation map generation" (Neural Computing and Applications, 2020), as small composable PyTorch parts.
"""

from hiercam._version import __version__
from hiercam.average_precision import MeanAveragePrecision, average_precision, mean_average_precision
from hiercam.datasets import FashionScenes, collate_scenes
from hiercam.grouping import ClassHierarchy, HierarchicalKMeans, group_classes
from hiercam.maps import normalize_maps
from hiercam.models import SmallConvNet, small_convnet
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
    # map normalisation shared by CAMs, fusion and metrics
    "normalize_maps",
    # models
    "small_convnet",
    "SmallConvNet",
    # bundled benchmark data
    "FashionScenes",
    "collate_scenes",
    # training
    "fit",
    "evaluate",
    "History",
    "average_precision",
    "mean_average_precision",
    "MeanAveragePrecision",
]
