"""The class hierarchy: levels of nested class groups (paper section 3.3), as one immutable data type.

Level 0 is the ``K`` original classes; level ``l`` holds ``N_l`` groups, each a union of groups of level
``l - 1``. Each group level becomes a multi-label classification problem whose labels are given by
[`ClassHierarchy.remap_labels`][hiercam.ClassHierarchy.remap_labels]. The clustering that builds a
hierarchy lives in [`hiercam.grouping`][hiercam.HierarchicalKMeans]; fusion, datasets and reports need only
this package.

Modules: ``core`` (the [`ClassHierarchy`][hiercam.ClassHierarchy] type) and ``saturation``
([`frequent_classes`][hiercam.frequent_classes] and the methods that drop or split the groups present in
almost every image); the checks, the JSON form, the tree views and the splitting kernel are private.
"""

from hiercam.hierarchy._split import GroupSplit, SaturatedSplits
from hiercam.hierarchy.core import ClassHierarchy
from hiercam.hierarchy.saturation import frequent_classes

__all__ = ["ClassHierarchy", "GroupSplit", "SaturatedSplits", "frequent_classes"]
