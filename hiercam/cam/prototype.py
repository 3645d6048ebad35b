"""Prototype CAMs (LPCAM): maps from the cosine similarity of local features to K-means prototypes.

LPCAM is Chen & Sun, "Extracting Class Activation Maps from Non-Discriminative Features as well", CVPR 2023.
Each class's map is ``ReLU(mean cos(x, class prototypes) - mean cos(x, context prototypes))`` at every
position ``x``: since a mean of cosines is a dot product with a mean of unit vectors, a CAM on unit-normalised
features with one ``(K, C)`` weight (``PrototypeCAM.weights_``). The how-to "Prototype CAMs" lists where this
follows and departs from the authors' code.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import Tensor

from hiercam._validation import (
    check_choice,
    check_finite,
    check_int,
    check_tensor,
    check_threshold,
    type_name,
)
from hiercam.cam._prototypes import (
    check_batch,
    check_context_classes,
    check_features,
    check_labels,
    check_prototypes,
    check_score_range,
    cluster_points,
    direction_weights,
    maps_from_weights,
    select_prototypes,
)
from hiercam.hierarchy import ClassHierarchy
from hiercam.maps import NormalizeMode

__all__ = ["PrototypeCAM", "prototype_cam", "sibling_classes"]


def prototype_cam(
    features: Tensor,
    class_prototypes: Sequence[Tensor],
    context_prototypes: Sequence[Tensor] | None = None,
    labels: Tensor | None = None,
    *,
    normalize: NormalizeMode | None = "max",
) -> Tensor:
    """LPCAM maps from given prototypes: ``ReLU(mean cos(x, F_k) - mean cos(x, B_k))``, max-normalised.

    Args:
        features: local features ``(B, C, h, w)``, floating point, finite (e.g. the last convolutional
            block's output).
        class_prototypes: ``K`` tensors ``(N_k, C)``: the class prototypes ``F_k`` of each class. A class
            with ``N_k = 0`` gets zero maps.
        context_prototypes: ``K`` tensors ``(M_k, C)``: the prototypes ``B_k`` subtracted from each class;
            ``M_k = 0`` or ``None`` subtracts nothing (the map is then the ReLU of the class similarity).
        labels: optional ``(B, K)`` 0/1 labels: maps of classes absent from an image are zero.
        normalize: ``"max"`` (each map divided by its maximum), ``"minmax"`` or ``None`` (the ReLU'd
            similarity differences, in ``[0, 2]``: to average several scales before normalising).

    Returns:
        Maps ``(B, K, h, w)``, in ``[0, 1]`` with peak 1 (or all zero) for ``"max"``, on the device and in the
        dtype of ``features``; differentiable with respect to ``features``.

    Raises:
        TypeError: an argument has the wrong type (e.g. a tensor where a sequence of tensors is expected).
        ValueError: shapes disagree, a value is not finite or not 0/1 in ``labels``, or ``normalize`` is
            unknown.

    Example:
        >>> import torch
        >>> features = torch.tensor([[1.0, 0.0, 2.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])[None, :, None]
        >>> prototypes = [torch.tensor([[1.0, 0.0, 0.0]])]  # one class, one prototype; features (1, 3, 1, 3)
        >>> context = [torch.tensor([[0.0, 0.0, 1.0]])]
        >>> prototype_cam(features, prototypes, context)[0, 0]  # cos(x, e0) - cos(x, e2) = 1, 0, 1/sqrt(5)
        tensor([[1.0000, 0.0000, 0.4472]])
    """
    check_tensor(features, "features", dims="B, C, h, w", floating=True)
    channels = int(features.shape[1])
    own = check_prototypes(class_prototypes, "class_prototypes", None, channels)
    if not own:
        raise ValueError("`class_prototypes` must hold one tensor per class, got none")
    if context_prototypes is None:
        context = [p.new_zeros(0, channels) for p in own]
    else:
        context = check_prototypes(context_prototypes, "context_prototypes", len(own), channels)
    check_features(features, channels)
    if labels is not None:
        check_labels(labels, int(features.shape[0]), len(own))
    check_choice(normalize, "normalize", ("max", "minmax", None))
    return maps_from_weights(features, direction_weights(own, context), labels, normalize)


def sibling_classes(hierarchy: ClassHierarchy, level: int) -> list[list[int]]:
    """For each class, the other classes of its group at ``level``: hard negatives for ``context_classes``.

    Args:
        hierarchy: the class hierarchy.
        level: the group level (``0`` gives no siblings: every class is its own group).

    Returns:
        ``K`` sorted lists of class indices, class ``k`` excluded from its own list.

    Raises:
        TypeError: ``hierarchy`` is not a ``ClassHierarchy`` or ``level`` not an int.
        ValueError: ``level`` is outside ``0..hierarchy.num_levels - 1``.

    Example:
        >>> from hiercam import ClassHierarchy
        >>> sibling_classes(ClassHierarchy([[0, 0, 1, 0]]), level=1)
        [[1, 3], [0, 3], [], [0, 1]]
    """
    if not isinstance(hierarchy, ClassHierarchy):
        raise TypeError(f"`hierarchy` must be a ClassHierarchy, got {type_name(hierarchy)}")
    groups = hierarchy.groups(level)
    return [[c for c in groups[g] if c != k] for k, g in enumerate(hierarchy.assignments(level).tolist())]


class PrototypeCAM:
    """LPCAM (Chen & Sun, CVPR 2023): class and context prototypes from K-means, maps by cosine similarity.

    Collect the local features, CAMs and labels of the training images with
    [`update`][hiercam.PrototypeCAM.update] (any number of batches) and build the prototypes with
    [`cluster`][hiercam.PrototypeCAM.cluster], or do both at once with [`fit`][hiercam.PrototypeCAM.fit];
    then call the object on the features of any image:

    1. For class ``k``, the positions of images with ``labels[:, k] = 1`` are split into foreground
       (``maps[:, k] > foreground_threshold``) and background (``<=``).
    2. Each set is clustered into ``num_clusters`` centres by cosine K-means (scikit-learn's ``KMeans`` on
       L2-normalised features, ``seed`` fixed, so the result is deterministic; each centre is the mean
       of its cluster's raw features).
    3. Centres are scored by the classifier, ``p = softmax(classifier_weight @ centre + classifier_bias)``.
       Class prototypes: foreground centres with ``p_k > class_score`` (if none passes, the best-scored one).
       Context prototypes: background centres with ``context_score[0] < p_k < context_score[1]``.
    4. ``M_k = ReLU(mean cos(x, class prototypes of k) - mean cos(x, context set of k))``, max-normalised.

    **Classifier.** ``classifier_weight (K, C)`` (and ``classifier_bias (K,)``) are those of the classifier
    that scores the pooled features, e.g. ``model.fc.weight.detach()`` and ``model.fc.bias.detach()`` of a
    torchvision ResNet (an ``nn.Linear(C, K)``), or ``conv.weight.flatten(1)`` of a ``1 x 1`` convolution
    classifier. LPCAM's classifier has no bias.

    **context_classes** (not in the paper). ``None`` is LPCAM as published: the context set of class ``k`` is
    its own context prototypes. Otherwise, ``context_classes[k]`` lists classes whose *class prototypes* join
    the context set of ``k`` (pooled with its own context prototypes in one mean), so that features that
    look like a confusable class (e.g. [`sibling_classes`][hiercam.sibling_classes] of a
    hierarchy level) lower the map of ``k``.

    **Classes without a prototype.** A class with no foreground feature (no image with its label, or a CAM
    never above the threshold) gets zero maps; [`cluster`][hiercam.PrototypeCAM.cluster] warns
    (``UserWarning``) naming it.

    Args:
        classifier_weight: ``(K, C)`` weight of the classifier, finite.
        classifier_bias: optional ``(K,)`` bias of the classifier.
        num_clusters: K-means centres per class and per set (foreground, background). LPCAM: 12 on
            PASCAL VOC, 20 on MS COCO.
        foreground_threshold: the threshold on the normalised CAM, in ``(0, 1)``. LPCAM: 0.1 (VOC),
            0.25 (COCO).
        class_score: the class-prototype score threshold, in ``(0, 1)``. LPCAM: 0.9.
        context_score: the context-prototype score range ``(low, high)``, ``0 <= low < high <= 1``.
            LPCAM: ``(0.05, 0.9)`` (VOC), ``(0, 0.5)`` (COCO).
        context_classes: ``None`` or ``K`` sequences of class indices (see above).
        max_points: if set, at most this many points (drawn with ``seed``) per class and set are
            clustered, to bound K-means' time and memory; ``None`` clusters all (as LPCAM does).
        n_init: K-means restarts.
        seed: seed of K-means (and of the ``max_points`` draw).

    Attributes:
        foreground_centers_: after ``cluster``, ``K`` tensors ``(n_k, C)``, every foreground centre of each
            class before the class-score test (``class_prototypes_`` are those that pass it): to see what the
            test rejects, e.g. with ``softmax(classifier_weight @ centre + classifier_bias)``.
        class_prototypes_: after ``cluster``, ``K`` tensors ``(N_k, C)``, the selected class prototypes.
        context_prototypes_: ``K`` tensors ``(M_k, C)``, each class's own selected context prototypes.
        weights_: ``(K, C)``, ``mean unit(class prototypes) - mean unit(context set)`` per class.

    Raises:
        TypeError: an argument has the wrong type.
        ValueError: an argument is out of range or shapes disagree.

    Example:
        >>> import torch
        >>> e = torch.eye(3)  # class 0 lies along e0, class 1 along e1, the background along e2
        >>> features = torch.stack([e[[0, 0, 2, 2]].T, e[[1, 1, 2, 2]].T])[:, :, None]  # (2, 3, 1, 4)
        >>> maps = torch.tensor([[[1.0, 1, 0, 0], [0, 0, 0, 0]], [[0, 0, 0, 0], [1, 1, 0, 0]]])[:, :, None]
        >>> labels = torch.tensor([[1, 0], [0, 1]])
        >>> cam = PrototypeCAM(5 * e[:2], num_clusters=1).fit(features, maps, labels)
        >>> cam.weights_  # e0 - e2 and e1 - e2
        tensor([[ 1.,  0., -1.],
                [ 0.,  1., -1.]])
        >>> cam(features)[:, :, 0]  # ReLU(cos(x, e0) - cos(x, e2)) and ReLU(cos(x, e1) - cos(x, e2))
        tensor([[[1., 1., 0., 0.],
                 [0., 0., 0., 0.]],
        <BLANKLINE>
                [[0., 0., 0., 0.],
                 [1., 1., 0., 0.]]])
    """

    def __init__(
        self,
        classifier_weight: Tensor,
        *,
        classifier_bias: Tensor | None = None,
        num_clusters: int = 12,
        foreground_threshold: float = 0.1,
        class_score: float = 0.9,
        context_score: tuple[float, float] = (0.05, 0.9),
        context_classes: Sequence[Sequence[int]] | None = None,
        max_points: int | None = None,
        n_init: int = 1,
        seed: int = 0,
    ) -> None:
        check_tensor(classifier_weight, "classifier_weight", dims="K, C", floating=True)
        if classifier_weight.numel() == 0:
            raise ValueError(
                f"`classifier_weight` must not be empty, got shape {tuple(classifier_weight.shape)}"
            )
        check_finite(classifier_weight, "classifier_weight")
        self.num_classes, self.channels = (int(s) for s in classifier_weight.shape)
        self.classifier_weight = classifier_weight.detach().to("cpu", torch.float64, copy=True)
        self.classifier_bias: Tensor | None = None
        if classifier_bias is not None:
            check_tensor(classifier_bias, "classifier_bias", dims="K", floating=True)
            if classifier_bias.shape[0] != self.num_classes:
                raise ValueError(
                    f"`classifier_bias` must have shape (K,) = ({self.num_classes},), "
                    f"got {tuple(classifier_bias.shape)}"
                )
            check_finite(classifier_bias, "classifier_bias")
            self.classifier_bias = classifier_bias.detach().to("cpu", torch.float64, copy=True)
        self.num_clusters = check_int(num_clusters, "num_clusters", minimum=1)
        self.foreground_threshold = check_threshold(foreground_threshold, "foreground_threshold")
        self.class_score = check_threshold(class_score, "class_score")
        self.context_score = check_score_range(context_score)
        self.context_classes = check_context_classes(context_classes, self.num_classes)
        self.max_points = None if max_points is None else check_int(max_points, "max_points", minimum=1)
        self.n_init = check_int(n_init, "n_init", minimum=1)
        self.seed = check_int(seed, "seed", minimum=0)
        self.reset()

    @property
    def is_fitted(self) -> bool:
        """Whether the prototypes are built (``cluster`` or ``fit`` ran)."""
        return self.weights_ is not None

    def reset(self) -> None:
        """Forget the collected features and the prototypes."""
        self._points: list[Tensor] = []  # (n, C) on the CPU, one per batch
        self._maps: list[Tensor] = []  # (n, K)
        self._present: list[Tensor] = []  # (n, K) bool: the labels of each position's image
        self.foreground_centers_: list[Tensor] | None = None
        self.class_prototypes_: list[Tensor] | None = None
        self.context_prototypes_: list[Tensor] | None = None
        self.weights_: Tensor | None = None

    def update(self, features: Tensor, maps: Tensor, labels: Tensor) -> None:
        """Collect one batch of local features (copied to the CPU) for the next ``cluster``.

        Args:
            features: ``(B, C, h, w)`` local features of training images, finite.
            maps: ``(B, K, h, w)`` their CAMs at the feature resolution, normalised to ``[0, 1]`` (e.g. by
                [`normalize_maps`][hiercam.normalize_maps]).
            labels: ``(B, K)`` image-level labels, 0/1 or bool.

        Raises:
            TypeError: an argument is not a tensor, or ``features``/``maps`` not floating point.
            ValueError: shapes disagree, values are not finite, ``maps`` outside ``[0, 1]`` or ``labels``
                not 0/1.
        """
        check_batch(features, maps, labels, self.num_classes, self.channels)
        batch, _, height, width = features.shape
        dtype = torch.promote_types(features.dtype, torch.float32)
        self._points.append(features.detach().to("cpu", dtype).permute(0, 2, 3, 1).reshape(-1, self.channels))
        self._maps.append(maps.detach().to("cpu").permute(0, 2, 3, 1).reshape(-1, self.num_classes))
        present = labels.detach().to("cpu") != 0
        self._present.append(
            present[:, None, :].expand(batch, height * width, -1).reshape(-1, self.num_classes)
        )

    def cluster(self) -> PrototypeCAM:
        """Build the prototypes of every class from the collected features.

        Returns:
            ``self``, fitted.

        Raises:
            ValueError: no batch was collected.

        Warns:
            UserWarning: naming the classes without a foreground feature (their maps will be zero).
        """
        if not self._points:
            raise ValueError("no features collected: call `update` (or `fit`) with training batches first")
        own, context, missing, centers_of = [], [], [], []
        for cls in range(self.num_classes):
            foreground, background = self._class_points(cls)
            centers = self._centers(foreground)
            centers_of.append(centers)
            own.append(select_prototypes(centers, cls, *self._classifier(), self.class_score, None))
            context.append(
                select_prototypes(self._centers(background), cls, *self._classifier(), *self.context_score)
            )
            if foreground.shape[0] == 0:
                missing.append(cls)
        if missing:
            warnings.warn(
                f"classes {missing} have no foreground feature (no image with the label, or a CAM never "
                f"above foreground_threshold={self.foreground_threshold}): their maps will be zero",
                UserWarning,
                stacklevel=2,
            )
        pooled = [
            torch.cat([context[cls], *(own[j] for j in self.context_classes[cls])])
            if self.context_classes is not None
            else context[cls]
            for cls in range(self.num_classes)
        ]
        self.class_prototypes_, self.context_prototypes_ = own, context
        self.foreground_centers_ = centers_of
        self.weights_ = direction_weights(own, pooled)
        return self

    def fit(self, features: Tensor, maps: Tensor, labels: Tensor) -> PrototypeCAM:
        """Build the prototypes from one batch (e.g. all training images): ``reset``, ``update``, ``cluster``.

        Args:
            features: ``(B, C, h, w)`` local features of the training images.
            maps: ``(B, K, h, w)`` their CAMs at the feature resolution, in ``[0, 1]``.
            labels: ``(B, K)`` image-level labels, 0/1 or bool.

        Returns:
            ``self``, fitted.

        Raises:
            TypeError, ValueError: as for [`update`][hiercam.PrototypeCAM.update].
        """
        self.reset()
        self.update(features, maps, labels)
        return self.cluster()

    def __call__(
        self, features: Tensor, labels: Tensor | None = None, *, normalize: NormalizeMode | None = "max"
    ) -> Tensor:
        """The maps of every class for ``features`` (any images, not only the training ones).

        Args:
            features: ``(B, C, h, w)``, from the same layer as the training features.
            labels: optional ``(B, K)`` 0/1 labels: maps of absent classes are zero.
            normalize: ``"max"``, ``"minmax"`` or ``None``, as for
                [`prototype_cam`][hiercam.prototype_cam].

        Returns:
            ``(B, K, h, w)`` maps (in ``[0, 1]`` for ``"max"``) at the feature resolution (resize them with
            ``hiercam.maps.resize_maps``), on the device and in the dtype of ``features``.

        Raises:
            RuntimeError: the prototypes are not built yet.
            TypeError, ValueError: as for [`prototype_cam`][hiercam.prototype_cam].
        """
        if self.weights_ is None:
            raise RuntimeError("PrototypeCAM is not fitted: call `fit`, or `update` then `cluster`, first")
        check_features(features, self.channels)
        if labels is not None:
            check_labels(labels, int(features.shape[0]), self.num_classes)
        check_choice(normalize, "normalize", ("max", "minmax", None))
        return maps_from_weights(features, self.weights_, labels, normalize)

    def __repr__(self) -> str:
        context = "None" if self.context_classes is None else f"<{self.num_classes} lists>"
        return (
            f"PrototypeCAM(classes={self.num_classes}, channels={self.channels}, "
            f"num_clusters={self.num_clusters}, foreground_threshold={self.foreground_threshold}, "
            f"class_score={self.class_score}, context_score={self.context_score}, "
            f"context_classes={context}, fitted={self.is_fitted})"
        )

    def _classifier(self) -> tuple[Tensor, Tensor | None]:
        return self.classifier_weight, self.classifier_bias

    def _class_points(self, cls: int) -> tuple[Tensor, Tensor]:
        """The foreground and background features ``(n, C)`` of class ``cls`` over the collected batches."""
        dtype = self._points[0].dtype
        for points in self._points[1:]:
            dtype = torch.promote_types(dtype, points.dtype)
        foreground, background = [], []
        for points, maps, present in zip(self._points, self._maps, self._present, strict=True):
            mine = present[:, cls]
            above = maps[:, cls] > self.foreground_threshold
            foreground.append(points[mine & above].to(dtype))
            background.append(points[mine & ~above].to(dtype))
        return torch.cat(foreground), torch.cat(background)

    def _centers(self, points: Tensor) -> Tensor:
        if self.max_points is not None and points.shape[0] > self.max_points:
            generator = torch.Generator().manual_seed(self.seed)
            drawn = torch.randperm(points.shape[0], generator=generator)[: self.max_points]
            points = points[drawn.sort().values]
        return cluster_points(points, self.num_clusters, self.n_init, self.seed)
