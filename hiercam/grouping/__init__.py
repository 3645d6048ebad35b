"""Grouping classes into a hierarchy (paper sections 3.2 and 3.3), and whether a grouping is more than chance.

Modules: ``similarity`` (Eq. 1: class vectors from the last linear layer and their distances), ``kmeans``
(Eq. 2-3: [`HierarchicalKMeans`][hiercam.HierarchicalKMeans] and [`group_classes`][hiercam.group_classes]),
``sources`` (class vectors that no training seed changes: label co-occurrence, feature prototypes),
``agreement`` (a shuffled control, the agreement between hierarchies, a consensus over seeds) and
``subcategories`` (the hierarchy grown downwards: each class split into sub-categories by K-means of its
images' features, SC-CAM). The result, a [`ClassHierarchy`][hiercam.ClassHierarchy], is in
``hiercam.hierarchy``.
"""

from hiercam.grouping.agreement import (
    coassociation_matrix,
    consensus_hierarchy,
    hierarchy_agreement,
    mean_pairwise_agreement,
    pairwise_agreement,
    shuffled_hierarchy,
)
from hiercam.grouping.kmeans import HierarchicalKMeans, group_classes
from hiercam.grouping.similarity import MultiHeadClassifier, class_distances, class_embeddings
from hiercam.grouping.sources import PrototypeEmbeddings, cooccurrence_embeddings, prototype_embeddings
from hiercam.grouping.subcategories import (
    SubCategories,
    cluster_subcategories,
    shuffle_subcategories,
)

__all__ = [
    # class similarity (Eq. 1)
    "class_embeddings",
    "class_distances",
    "MultiHeadClassifier",
    # hierarchical K-means (Eq. 2-3)
    "HierarchicalKMeans",
    "group_classes",
    # class vectors that no training seed changes
    "cooccurrence_embeddings",
    "PrototypeEmbeddings",
    "prototype_embeddings",
    # controls of a grouping
    "hierarchy_agreement",
    "pairwise_agreement",
    "mean_pairwise_agreement",
    "shuffled_hierarchy",
    "coassociation_matrix",
    "consensus_hierarchy",
    # the hierarchy grown downwards: sub-categories of each class (SC-CAM)
    "SubCategories",
    "cluster_subcategories",
    "shuffle_subcategories",
]
