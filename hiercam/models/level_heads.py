"""Level heads on one shared backbone: one classifier per hierarchy level at the training cost of one model.

The paper (section 3.3) trains a separate classifier for every level of the class hierarchy: level 0 on the
``K`` classes, level ``l`` on the ``N_l`` groups of that level.
[`LevelHeadsNet`][hiercam.models.LevelHeadsNet] departs from it: one backbone, one global pool, and one
``nn.Linear(C, N_l)`` head per level, trained jointly with [`LevelHeadsLoss`][hiercam.losses.LevelHeadsLoss]
(the BCE of every level on ``hierarchy.remap_labels(labels, level)``). Each head is
``features -> pool -> linear``, so each level is explained like any classifier:
``GradCAM(net, "features", output=level)`` (the engine selects element ``level`` of the output), or
``GradCAM(net.level(level), "net.features")``; every level at once with
[`level_heads_maps`][hiercam.cam.level_heads_maps].
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from hiercam._validation import check_choice, check_int, type_name
from hiercam.hierarchy import ClassHierarchy
from hiercam.models.backbones import cut_owned
from hiercam.models.two_branch import GlobalPool, PoolMode, factory_kwargs, feature_maps

__all__ = ["LevelHeadsOutput", "LevelHeadsNet", "LevelView"]

_POOLS: tuple[PoolMode, ...] = ("avg", "max")


class LevelHeadsOutput(tuple[Tensor, ...]):
    """Output of [`LevelHeadsNet`][hiercam.models.LevelHeadsNet]: the logits of every level, level 0 first.

    A tuple: ``output[l]`` is level ``l``'s logits ``(B, N_l)`` (``N_0 = K``), so ``len(output)`` is the
    number of levels and the CAM engine selects a level with ``output=l``.

    Examples:
        >>> import torch
        >>> output = LevelHeadsOutput([torch.zeros(2, 4), torch.zeros(2, 2)])
        >>> len(output), output.class_logits.shape, output[1].shape
        (2, torch.Size([2, 4]), torch.Size([2, 2]))
    """

    __slots__ = ()

    @property
    def class_logits(self) -> Tensor:
        """``(B, K)``: level 0's logits, over the classes (what ``hiercam.fit`` scores its mAP on)."""
        return self[0]


class LevelHeadsNet(nn.Module):
    """One shared backbone and pool, and one linear head per hierarchy level (level 0: the ``K`` classes).

    ``forward(x)`` computes the feature maps ``(B, C, h, w)`` once, pools them to ``(B, C)`` once, and
    applies every head: level ``l``'s logits are ``heads[l](pool(features(x)))``, ``(B, N_l)``.

    ``backbone`` follows [`TwoBranchNet`][hiercam.TwoBranchNet]'s convention: it is cut into its feature
    extractor ([`cut_backbone`][hiercam.cut_backbone]: a torchvision classifier up to its global pooling, a
    timm model through ``forward_features``, any other module used as is when it returns ``(B, C, H, W)``)
    and the cut is a deep copy: the module passed in is not modified and shares no parameters with the net.
    The heads are freshly initialised, on the backbone's device and dtype; the net is in the backbone's
    training mode.

    The heads are over different label sets, so the net is deliberately not a
    [`MultiHeadModel`][hiercam.MultiHeadModel] (whose heads' maps the engine averages): explain one level at
    a time, ``GradCAM(net, "features", output=level)`` or ``GradCAM(net.level(level), "net.features")``, or
    every level in one pass with [`level_heads_maps`][hiercam.cam.level_heads_maps].

    Args:
        backbone: a classifier to cut, or a module returning feature maps ``(B, C, h, w)``.
        hierarchy: a [`ClassHierarchy`][hiercam.ClassHierarchy] (one head per level, of its
            ``level_sizes``), or the head sizes ``(K, N_1, ..., N_L)`` themselves.
        pool: ``"avg"`` (global average pooling, the CAM setting) or ``"max"``.

    Attributes:
        features: the shared feature extractor (the target layer of the CAMs, named ``"features"``).
        pool: a [`GlobalPool`][hiercam.GlobalPool].
        heads: ``nn.ModuleList`` of one ``nn.Linear(C, N_l)`` per level, level 0 first.
        level_sizes: ``(K, N_1, ..., N_L)``.
        num_levels: the number of heads, ``L + 1``.
        num_classes: ``K``.
        num_features: ``C``.

    Raises:
        TypeError: ``backbone`` is not an ``nn.Module``; ``hierarchy`` is neither a ``ClassHierarchy`` nor a
            sequence of ints.
        ValueError: ``hierarchy`` is an empty sequence or holds a size below 1, ``pool`` is unknown, or the
            backbone cannot be cut into ``(B, C, H, W)`` features.

    Examples:
        >>> import torch
        >>> from hiercam import ClassHierarchy, SmallConvNet
        >>> hierarchy = ClassHierarchy([[0, 0, 1, 2], [0, 0, 1, 1]])  # 4 classes -> 3 -> 2 groups
        >>> net = LevelHeadsNet(SmallConvNet(width=4), hierarchy)
        >>> output = net(torch.zeros(2, 3, 32, 32))
        >>> [tuple(logits.shape) for logits in output]
        [(2, 4), (2, 3), (2, 2)]
    """

    def __init__(
        self, backbone: nn.Module, hierarchy: ClassHierarchy | Sequence[int], *, pool: PoolMode = "avg"
    ) -> None:
        super().__init__()
        if not isinstance(backbone, nn.Module):
            raise TypeError(f"`backbone` must be an nn.Module, got {type_name(backbone)}")
        sizes = _level_sizes(hierarchy)
        check_choice(pool, "pool", _POOLS)
        cut = cut_owned(backbone, "backbone", copy_first=True)
        self.level_sizes: tuple[int, ...] = sizes
        self.num_levels = len(sizes)
        self.num_classes = sizes[0]
        self.num_features = cut.num_features
        self.features = cut.features
        self.pool = GlobalPool(pool)
        factory = factory_kwargs(cut.features)
        self.heads = nn.ModuleList(nn.Linear(cut.num_features, size, **factory) for size in sizes)  # type: ignore[arg-type]
        self.train(backbone.training)

    def forward_features(self, x: Tensor) -> Tensor:
        """Feature maps ``(B, C, h, w)`` of images ``x`` ``(B, 3, H, W)``."""
        return feature_maps(self.features, x, self.num_features)

    def forward(self, x: Tensor) -> LevelHeadsOutput:
        """Logits of every level for images ``x`` ``(B, 3, H, W)``.

        Returns:
            [`LevelHeadsOutput`][hiercam.models.LevelHeadsOutput]: ``(B, K)``, ``(B, N_1)``, ...,
            ``(B, N_L)``, one backbone pass for all of them.
        """
        pooled = self.pool(self.forward_features(x))
        return LevelHeadsOutput(head(pooled) for head in self.heads)

    def level(self, level: int) -> LevelView:
        """A module computing only level ``level``'s logits ``(B, N_level)``, sharing this net's parameters.

        For tools that need a model returning one logits tensor (``GradCAM(net.level(1))``, the faithfulness
        metrics, ``hiercam.evaluate`` on remapped labels). No parameter is copied: training the net changes
        the view and the other way round.

        Raises:
            TypeError, ValueError: ``level`` is not an int in ``0..num_levels - 1``.

        Examples:
            >>> import torch
            >>> net = LevelHeadsNet(torch.nn.Conv2d(3, 8, 3), [5, 2])
            >>> view = net.level(1)
            >>> view(torch.zeros(2, 3, 16, 16)).shape, view.net is net
            (torch.Size([2, 2]), True)
        """
        return LevelView(self, check_int(level, "level", minimum=0, maximum=self.num_levels - 1))

    def extra_repr(self) -> str:  # noqa: D102
        return f"level_sizes={self.level_sizes}"


class LevelView(nn.Module):
    """One level of a [`LevelHeadsNet`][hiercam.models.LevelHeadsNet] as a plain classifier: ``net.level(l)``.

    ``forward(x)`` returns ``net.heads[level](net.pool(net.features(x)))``, ``(B, N_level)``. The net is
    held as the submodule ``net`` (so the feature layer is ``"net.features"`` and the head
    ``"net.heads.<level>"``); nothing is copied, and ``train()`` / ``eval()`` on the view switch the net.

    Args:
        net: the level-heads network.
        level: the level, ``0..net.num_levels - 1``.

    Raises:
        TypeError: ``net`` is not a ``LevelHeadsNet`` or ``level`` not an int.
        ValueError: ``level`` is out of range.
    """

    def __init__(self, net: LevelHeadsNet, level: int) -> None:
        super().__init__()
        if not isinstance(net, LevelHeadsNet):
            raise TypeError(f"`net` must be a LevelHeadsNet, got {type_name(net)}")
        self.level = check_int(level, "level", minimum=0, maximum=net.num_levels - 1)
        self.net = net
        self.training = net.training

    def forward(self, x: Tensor) -> Tensor:
        """Level ``level``'s logits ``(B, N_level)`` of images ``x`` ``(B, 3, H, W)``."""
        logits: Tensor = self.net.heads[self.level](self.net.pool(self.net.forward_features(x)))
        return logits

    def extra_repr(self) -> str:  # noqa: D102
        return f"level={self.level}"


def _level_sizes(hierarchy: object) -> tuple[int, ...]:
    """The head sizes ``(K, N_1, ..., N_L)`` of a hierarchy or a sequence of sizes."""
    if isinstance(hierarchy, ClassHierarchy):
        return hierarchy.level_sizes
    if isinstance(hierarchy, (str, bytes)) or not isinstance(hierarchy, Sequence):
        raise TypeError(
            "`hierarchy` must be a ClassHierarchy or a sequence of head sizes (K, N_1, ..., N_L), got "
            f"{type_name(hierarchy)}"
        )
    if not hierarchy:
        raise ValueError("`hierarchy` must hold at least one head size (K), got an empty sequence")
    return tuple(check_int(size, f"hierarchy[{i}]", minimum=1) for i, size in enumerate(hierarchy))
