"""Feature orthogonal loss and the two-branch training loss (paper section 3.4.1, Eq. 4-5).

The paper trains two branches with separate parameters and pushes their deep features apart with
``L_o = sum(f1 * f2)`` (Eq. 4, the Hadamard product summed over every element), added to the two
branches' binary cross-entropy losses as ``L_all = L_c1 + L_c2 + lambda * L_o`` (Eq. 5, ``lambda = 1e-4``).

The raw sum grows with the batch size and the feature map size, so ``lambda`` only means something for one
backbone, input size and batch size: fine-tuning an ImageNet MobileNetV2 (1280 x 7 x 7 features, batch 16),
the paper's ``lambda * L_o`` is 137 times the two BCE terms at the first step (``benchmarks/
orthogonal_scale.py``). ``reduction="batchmean"`` removes the batch size and ``unit_norm=True`` the feature
scale (the loss becomes a cosine similarity per sample); the paper does neither.

Orthogonal features need not give complementary maps: the branches can meet the loss by splitting their
channels while looking at the same places. ``mode`` chooses where orthogonality acts (not in the paper):
``"spatial"`` penalises the cosine between the branches' channel-pooled activation maps, so they must look at
different places; ``"cam"`` the cosine between the branches' class activation maps of each ground-truth
class, computed differentiably in closed form from the features and the classifier weights.

Under ``DistributedDataParallel`` each process computes its loss on its own shard and the gradients are
*averaged* over processes. Mean-reduced terms (the BCE, ``"batchmean"``, ``"mean"``) therefore train
exactly as one process on the whole batch, while ``"sum"`` gives ``1 / world_size`` of the single-process
gradient of the orthogonal term (multiply its weight by the world size to compensate).

The level-heads loss (not in the paper) trains one head per hierarchy level on a shared backbone: the sum
(or weighted mean) of every level's BCE on the labels remapped to that level's groups. The sub-category loss
(SC-CAM, not in the paper) adds to the classes' BCE a weighted BCE over K-means sub-categories of each class;
ReCAM's re-activation loss adds a softmax cross-entropy over CAM-weighted features, optionally with a
hierarchy's siblings as the only negatives.
"""

from hiercam.losses.level_heads import (
    LevelHeadsLoss,
    LevelHeadsLossOutput,
    LevelReduction,
    level_heads_loss,
)
from hiercam.losses.orthogonal import OrthogonalLoss, OrthogonalMode, Reduction, orthogonal_loss
from hiercam.losses.reactivation import (
    ReActivationLoss,
    ReActivationLossOutput,
    reactivation_loss,
    sibling_candidates,
)
from hiercam.losses.subcategory import SubCategoryLoss, SubCategoryLossOutput, subcategory_loss
from hiercam.losses.two_branch import TwoBranchLoss, TwoBranchLossOutput

__all__ = [
    "Reduction",
    "OrthogonalMode",
    "orthogonal_loss",
    "OrthogonalLoss",
    "TwoBranchLoss",
    "TwoBranchLossOutput",
    "LevelReduction",
    "level_heads_loss",
    "LevelHeadsLoss",
    "LevelHeadsLossOutput",
    "subcategory_loss",
    "SubCategoryLoss",
    "SubCategoryLossOutput",
    "reactivation_loss",
    "ReActivationLoss",
    "ReActivationLossOutput",
    "sibling_candidates",
]
