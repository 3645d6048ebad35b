"""Class vectors that do not come from a trained classifier's last layer, for grouping classes.

The paper groups classes by the rows of the classifier's last linear layer (Eq. 1). On real photos the groups
found that way by classifiers trained from different seeds can be unrelated (adjusted Rand index about 0 on
MSRC-21): the grouping then says more about the seed than about the classes. The two sources here give
``(K, D)`` class vectors for [`HierarchicalKMeans`][hiercam.HierarchicalKMeans] that no training seed changes:

* [`cooccurrence_embeddings`][hiercam.cooccurrence_embeddings]: each class's co-occurrence
  profile in the image-level labels, so that classes seen in the same images are grouped;
* [`prototype_embeddings`][hiercam.prototype_embeddings] (streaming:
  [`PrototypeEmbeddings`][hiercam.PrototypeEmbeddings]): each class's mean feature vector
  inside its maps, from a frozen pretrained backbone, so that classes that look alike are grouped.

The controls that measure whether a grouping is more than chance (a shuffled hierarchy, the adjusted Rand
index between hierarchies, a consensus over seeds) live in ``hiercam.grouping.agreement``.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from hiercam._validation import (
    check_binary,
    check_choice,
    check_finite,
    check_tensor,
    check_unit_interval,
    format_shape,
    is_real,
    type_name,
)

__all__ = ["cooccurrence_embeddings", "PrototypeEmbeddings", "prototype_embeddings"]

CooccurrenceNormalization = Literal["conditional", "npmi"]


def cooccurrence_embeddings(labels: Tensor, normalize: CooccurrenceNormalization = "conditional") -> Tensor:
    """Co-occurrence profiles of the classes in image-level labels: one row per class, ``(K, K)``.

    Row ``i`` describes the images that hold class ``i``, so that K-means on the rows groups the classes that
    appear together (two classes always seen together have equal rows). With ``n_i`` the number of images
    holding class ``i``, ``n_ij`` the number holding both ``i`` and ``j`` and ``B`` the number of images:

    * ``"conditional"`` (default): ``E[i, j] = P(j | i) = n_ij / n_i``, in ``[0, 1]``; the diagonal is 1
      (``P(i | i)``). A class present in almost every image is a near-constant column (it hardly moves the
      distances) and its own row is the marginal frequency of the others.
    * ``"npmi"``: the normalised pointwise mutual information ``log(n_ij B / (n_i n_j)) / -log(n_ij / B)``,
      in ``[-1, 1]``: -1 for classes never seen together, 0 for independent ones, 1 for classes only seen
      together (and for two classes in every image); the diagonal is 1. It discounts the co-occurrences that
      frequent classes get by chance.

    The labels are the data set's, not a model's: the profile does not depend on any training seed.

    Args:
        labels: 0/1 image-level labels ``(B, K)`` of the training images, ``B >= 1``, any dtype (bool
            included).
        normalize: ``"conditional"`` or ``"npmi"``, see above.

    Returns:
        ``(K, K)`` float32 class vectors on the device of ``labels`` (``D = K``), e.g. for
        ``HierarchicalKMeans(levels).fit(embeddings, class_names)``.

    Raises:
        TypeError: ``labels`` is not a tensor.
        ValueError: ``labels`` is not ``(B, K)`` with ``B >= 1``, holds values other than 0 and 1, or a class
            never occurs (the message lists them: such a class has no profile); an unknown ``normalize``.

    Examples:
        >>> labels = torch.tensor([[1, 1, 0], [1, 1, 0], [1, 0, 1], [0, 0, 1]])
        >>> cooccurrence_embeddings(labels)  # row 0: of the 3 images with class 0, 2 hold class 1
        tensor([[1.0000, 0.6667, 0.3333],
                [1.0000, 1.0000, 0.0000],
                [0.5000, 0.0000, 1.0000]])
        >>> cooccurrence_embeddings(labels, normalize="npmi")[1, 2]  # never seen together
        tensor(-1.)
    """
    check_tensor(labels, "labels", dims="B, K")
    check_choice(normalize, "normalize", ("conditional", "npmi"))
    if labels.shape[0] == 0:
        raise ValueError("`labels` must hold at least one image, got shape (0, K)")
    check_binary(labels, "labels")
    work = torch.float32 if labels.device.type == "mps" else torch.float64
    present = labels.to(work)
    together = present.T @ present  # n_ij, with n_i on the diagonal; exact integers
    counts = together.diagonal()
    absent = _zero_classes(counts)
    if absent:
        raise ValueError(
            f"`labels`: class(es) {absent} never occur in the {labels.shape[0]} images, so they have no "
            "co-occurrence profile; check the column order of the labels, or group those classes otherwise"
        )
    if normalize == "conditional":
        embeddings = together / counts[:, None]
    else:
        embeddings = _npmi(together, counts, labels.shape[0])
    return embeddings.to(torch.float32)


def _npmi(together: Tensor, counts: Tensor, images: int) -> Tensor:
    """Normalised PMI of co-occurrence counts ``(K, K)`` (diagonal ``counts``) over ``images`` images."""
    joint = together / images
    expected = counts[:, None] * counts[None, :] / images**2
    npmi = torch.log(joint / expected) / -torch.log(joint)
    npmi = torch.where(together == 0, torch.full_like(npmi, -1.0), npmi)
    npmi = torch.where(together == images, torch.ones_like(npmi), npmi)  # both in every image
    return npmi.fill_diagonal_(1.0)


class PrototypeEmbeddings:
    """Class prototypes accumulated over a data set: per class, the mean feature vector inside its maps.

    For each class ``k``, the prototype is the mean of the feature vectors ``features[b, :, y, x]`` over every
    position with ``maps[b, k, y, x] >= threshold`` in every image ``b`` labelled with ``k``: positions are
    pooled over the whole data set (an image whose object covers more positions weighs more). Only the
    ``(K, C)`` sums and the ``(K,)`` position counts are kept, so a whole training set can be fed batch by
    batch; [`prototype_embeddings`][hiercam.prototype_embeddings] is the one-batch function
    and shares this class's kernels.

    **Seed independence.** Take ``features`` from a frozen pretrained backbone (e.g. an ImageNet model's last
    feature map) and ``maps`` that no training seed changes: ground-truth masks, all-ones maps
    (``features.new_ones(B, K, h, w)``: the mean feature of the images holding the class), or the CAMs of a
    fixed pretrained model. Maps of a model you trained yourself bring that model's seed back in.

    Feature maps are detached; each batch is summed in float32 (float64 for float64 features) and the sums
    are kept in float64 (float32 on Apple's MPS) on the device of the first batch, later batches' sums are
    moved there. Not synchronised across processes: in a distributed run, sum ``sums`` and ``counts`` over
    the processes before [`compute`][hiercam.PrototypeEmbeddings.compute].

    Args:
        threshold: a position belongs to class ``k`` when its map value is ``>= threshold``, in ``[0, 1]``
            (0 selects every position of the images labelled with ``k``).

    Attributes:
        sums: ``(K, C)`` sums of the selected feature vectors, ``None`` before the first update.
        counts: ``(K,)`` int64 numbers of selected positions, ``None`` before the first update.

    Raises:
        TypeError: ``threshold`` is not a real number.
        ValueError: ``threshold`` is outside ``[0, 1]``.

    Examples:
        >>> features = torch.arange(8.0).reshape(1, 2, 2, 2)  # one image, C = 2 channels, 2 x 2 positions
        >>> maps = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]], [[0.0, 0.9], [0.6, 0.2]]]])  # K = 2
        >>> prototypes = PrototypeEmbeddings(threshold=0.5)
        >>> prototypes.update(features, maps, torch.tensor([[1, 1]]))
        >>> prototypes.update(features, maps, torch.tensor([[0, 1]]))  # class 0 not in this image
        >>> prototypes.compute()  # class 1: positions (0, 1) and (1, 0) of both images
        tensor([[0.0000, 4.0000],
                [1.5000, 5.5000]])
        >>> prototypes.counts
        tensor([1, 4])
    """

    def __init__(self, threshold: float = 0.5) -> None:
        self.threshold = _check_unit_interval(threshold, "threshold")
        self.sums: Tensor | None = None
        self.counts: Tensor | None = None

    def update(self, features: Tensor, maps: Tensor, labels: Tensor) -> None:
        """Add a batch.

        Args:
            features: feature maps ``(B, C, h, w)``, floating point, finite.
            maps: per-class maps ``(B, K, h, w)`` in ``[0, 1]`` at the features' resolution (resize CAMs
                first, e.g. with ``torch.nn.functional.interpolate``).
            labels: 0/1 image-level labels ``(B, K)``; only the maps of the labelled classes count.

        Raises:
            TypeError: an input is not a tensor, or ``features``/``maps`` is not floating point.
            ValueError: wrong shapes (or ``K``, ``C`` differ from the first batch's), ``maps`` outside
                ``[0, 1]``, non-finite ``features``, or ``labels`` not 0/1. Nothing is added then.
        """
        _check_prototype_inputs(features, maps, labels)
        if self.sums is not None and self.counts is not None:
            expected = tuple(self.sums.shape)
            if (maps.shape[1], features.shape[1]) != expected:
                raise ValueError(
                    f"`maps` and `features` must have K = {expected[0]} classes and C = {expected[1]} "
                    f"channels as the earlier batches, got K = {maps.shape[1]}, C = {features.shape[1]}"
                )
        sums, counts = _prototype_update(features, maps, labels, self.threshold)
        if self.sums is None or self.counts is None:
            self.sums, self.counts = sums, counts
        else:
            self.sums = self.sums + sums.to(self.sums.device)
            self.counts = self.counts + counts.to(self.counts.device)

    def compute(self) -> Tensor:
        """The prototypes ``(K, C)``, float32, over every batch since the last ``reset``.

        Raises:
            RuntimeError: no batch was added.
            ValueError: a class has no selected position (no image labelled with it, or its map never reaches
                ``threshold``); the message lists those classes.
        """
        if self.sums is None or self.counts is None:
            raise RuntimeError("PrototypeEmbeddings.compute() was called before any update()")
        return _prototype_compute(self.sums, self.counts, self.threshold)

    def reset(self) -> None:
        """Forget every batch."""
        self.sums = None
        self.counts = None

    def __repr__(self) -> str:
        seen = "empty" if self.sums is None else f"K={self.sums.shape[0]}, C={self.sums.shape[1]}"
        return f"PrototypeEmbeddings(threshold={self.threshold}, {seen})"


def prototype_embeddings(features: Tensor, maps: Tensor, labels: Tensor, threshold: float = 0.5) -> Tensor:
    """Per class, the mean feature vector at the positions where its map is ``>= threshold``: ``(K, C)``.

    The one-batch form of [`PrototypeEmbeddings`][hiercam.PrototypeEmbeddings] (same
    kernels, same result as feeding the batch to it); see there for what makes the prototypes independent of
    a training seed. Positions are pooled over the images labelled with each class.

    Args:
        features: feature maps ``(B, C, h, w)`` of a frozen backbone, floating point, finite.
        maps: per-class maps ``(B, K, h, w)`` in ``[0, 1]`` at the features' resolution.
        labels: 0/1 image-level labels ``(B, K)``.
        threshold: the map value from which a position belongs to a class, in ``[0, 1]``.

    Returns:
        Prototypes ``(K, C)``, float32, on the device of ``features`` (``D = C``).

    Raises:
        TypeError: an input is not a tensor, ``features``/``maps`` is not floating point, or ``threshold`` is
            not a real number.
        ValueError: wrong or mismatched shapes, ``maps`` outside ``[0, 1]``, non-finite ``features``,
            ``labels`` not 0/1, ``threshold`` outside ``[0, 1]``, or a class without any selected position.

    Examples:
        >>> features = torch.tensor([[[[1.0, 3.0]], [[0.0, 2.0]]]])  # B = 1, C = 2, h = 1, w = 2
        >>> maps = torch.tensor([[[[0.8, 0.2]], [[0.7, 0.9]]]])  # K = 2
        >>> prototype_embeddings(features, maps, torch.tensor([[1, 1]]))
        tensor([[1., 0.],
                [2., 1.]])
    """
    level = _check_unit_interval(threshold, "threshold")
    _check_prototype_inputs(features, maps, labels)
    sums, counts = _prototype_update(features, maps, labels, level)
    return _prototype_compute(sums, counts, level)


def _prototype_update(
    features: Tensor, maps: Tensor, labels: Tensor, threshold: float
) -> tuple[Tensor, Tensor]:
    """The kernel shared by the class and the function: ``(K, C)`` sums and ``(K,)`` counts of a batch."""
    work = torch.float64 if features.dtype == torch.float64 else torch.float32  # half/bfloat16: float32
    total = torch.float32 if features.device.type == "mps" else torch.float64
    selected = (maps.detach() >= threshold) & labels.to(device=maps.device).bool()[:, :, None, None]
    weights = selected.to(device=features.device, dtype=work)
    sums = torch.einsum("bkhw,bchw->kc", weights, features.detach().to(work)).to(total)
    return sums, selected.sum(dim=(0, 2, 3)).to(device=features.device, dtype=torch.int64)


def _prototype_compute(sums: Tensor, counts: Tensor, threshold: float) -> Tensor:
    """Means ``(K, C)`` float32 from the kernel's sums and counts; an error names the empty classes."""
    empty = _zero_classes(counts)
    if empty:
        raise ValueError(
            f"class(es) {empty} have no position with a map >= `threshold` ({threshold}) in the images "
            "labelled with them: no prototype; lower `threshold` or add images of those classes"
        )
    return (sums / counts[:, None].to(sums.dtype)).to(torch.float32)


def _check_prototype_inputs(features: Tensor, maps: Tensor, labels: Tensor) -> None:
    check_tensor(features, "features", dims="B, C, h, w", floating=True)
    check_tensor(maps, "maps", dims="B, K, h, w", floating=True)
    check_tensor(labels, "labels", dims="B, K")
    batch, classes = maps.shape[:2]
    if features.shape[0] != batch or features.shape[2:] != maps.shape[2:]:
        raise ValueError(
            f"`features` (B, C, h, w) and `maps` (B, K, h, w) must share B, h and w, got "
            f"{format_shape(features.shape)} and {format_shape(maps.shape)} (resize the maps to the features)"
        )
    if tuple(labels.shape) != (batch, classes):
        raise ValueError(
            f"`labels` must have shape ({batch}, {classes}) like the first two sizes of `maps`, "
            f"got {format_shape(labels.shape)}"
        )
    check_finite(features, "features")
    check_unit_interval(maps, "maps")
    check_binary(labels, "labels")


def _check_unit_interval(value: object, name: str) -> float:
    if not is_real(value):
        raise TypeError(f"`{name}` must be a float, got {type_name(value)}")
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"`{name}` must be between 0 and 1 (inclusive), got {value}")
    return float(value)


def _zero_classes(counts: Tensor, shown: int = 20) -> str:
    """The classes whose count is 0, listed for a message (the first ``shown``, then "..."); "" if none."""
    zero = torch.nonzero(counts == 0).flatten().tolist()
    return ", ".join(str(c) for c in zero[:shown]) + (", ..." if len(zero) > shown else "")
