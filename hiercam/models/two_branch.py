"""The two-branch classification network of paper section 3.4.1: two backbones with separate parameters.

Each branch is ``features -> global pool -> nn.Linear(C, K)``: an ordinary classifier (``Branch.forward``
returns logits) that any CAM tool can take apart. ``TwoBranchNet`` runs both branches on the same images and
returns their logits and their feature maps before pooling, which
[`hiercam.TwoBranchLoss`][hiercam.TwoBranchLoss] pushes apart with the orthogonal loss.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, cast

import torch
from torch import Tensor, nn

from hiercam._validation import check_choice, check_int, check_tensor, format_shape, type_name
from hiercam.models.backbones import BackboneCut, cut_owned
from hiercam.protocols import CAMHead, TwoBranchOutput

__all__ = ["PoolMode", "GlobalPool", "Branch", "TwoBranchNet"]

PoolMode = Literal["avg", "max"]
_POOLS: tuple[PoolMode, ...] = ("avg", "max")


class GlobalPool(nn.Module):
    """Global pooling over the spatial dimensions: ``(B, C, H, W) -> (B, C)``.

    Args:
        mode: ``"avg"`` (global average pooling, as in the paper's CAM setting) or ``"max"``.

    Raises:
        ValueError: ``mode`` is unknown.

    Examples:
        >>> import torch
        >>> GlobalPool("avg")(torch.arange(8.0).reshape(1, 2, 2, 2))
        tensor([[1.5000, 5.5000]])
    """

    def __init__(self, mode: PoolMode = "avg") -> None:
        super().__init__()
        self.mode: PoolMode = check_choice(mode, "mode", _POOLS)

    def forward(self, x: Tensor) -> Tensor:
        """Pool ``x`` of shape ``(B, C, H, W)`` to ``(B, C)``."""
        check_tensor(x, "x", dims="B, C, H, W")
        if self.mode == "avg":
            return x.mean(dim=(2, 3))
        return x.amax(dim=(2, 3))

    def extra_repr(self) -> str:  # noqa: D102
        return f"mode={self.mode!r}"


def feature_maps(features: nn.Module, x: Tensor, num_features: int) -> Tensor:
    """``features(x)`` for images ``x`` ``(B, 3, H, W)``, checked to be ``(B, num_features, h, w)`` maps.

    The ``forward_features`` of [`Branch`][hiercam.Branch] and
    [`LevelHeadsNet`][hiercam.models.LevelHeadsNet].

    Raises:
        TypeError, ValueError: ``x`` is not a ``(B, C, H, W)`` tensor, or ``features`` returns anything but
            ``(B, num_features, h, w)`` maps.
    """
    check_tensor(x, "x", dims="B, C, H, W")
    maps: Tensor = features(x)
    if not isinstance(maps, Tensor) or maps.ndim != 4 or maps.shape[1] != num_features:
        got = format_shape(maps.shape) if isinstance(maps, Tensor) else type_name(maps)
        raise ValueError(f"`features` must return (B, {num_features}, h, w) maps, got {got}")
    return maps


def factory_kwargs(features: nn.Module) -> dict[str, object]:
    """``device`` and floating ``dtype`` of the first parameter or buffer of ``features``, for new layers.

    The classifiers put on top of a feature extractor are built with them (torch's ``factory_kwargs``:
    ``nn.Linear(C, K, **factory_kwargs(features))``); a module without parameters or buffers gives ``{}``.
    """
    reference = next(iter([*features.parameters(), *features.buffers()]), None)
    factory: dict[str, object] = {}
    if reference is not None:
        factory["device"] = reference.device
        if reference.is_floating_point():
            factory["dtype"] = reference.dtype
    return factory


class Branch(nn.Module):
    """One branch: ``features -> pool -> classifier``, an ordinary classifier returning logits ``(B, K)``.

    Args:
        features: module mapping images ``(B, 3, H, W)`` to feature maps ``(B, C, h, w)``.
        num_features: ``C``.
        num_classes: ``K``.
        pool: ``"avg"`` or ``"max"`` global pooling.

    Attributes:
        features: the feature extractor (hook it for CAMs).
        pool: a [`GlobalPool`][hiercam.GlobalPool].
        classifier: ``nn.Linear(C, K)``, freshly initialised, on the device and dtype of ``features``.

    Raises:
        TypeError: ``features`` is not an ``nn.Module`` or a count is not an int.
        ValueError: ``num_features`` or ``num_classes`` is below 1, or ``pool`` is unknown.

    Examples:
        >>> import torch
        >>> branch = Branch(torch.nn.Conv2d(3, 8, 3), num_features=8, num_classes=5)
        >>> branch(torch.zeros(2, 3, 16, 16)).shape
        torch.Size([2, 5])
    """

    def __init__(
        self, features: nn.Module, num_features: int, num_classes: int, *, pool: PoolMode = "avg"
    ) -> None:
        super().__init__()
        if not isinstance(features, nn.Module):
            raise TypeError(f"`features` must be an nn.Module, got {type_name(features)}")
        self.num_features = check_int(num_features, "num_features", minimum=1)
        self.num_classes = check_int(num_classes, "num_classes", minimum=1)
        check_choice(pool, "pool", _POOLS)
        self.features = features
        self.pool = GlobalPool(pool)
        self.classifier = nn.Linear(num_features, num_classes, **factory_kwargs(features))  # type: ignore[arg-type]

    def forward_features(self, x: Tensor) -> Tensor:
        """Feature maps ``(B, C, h, w)`` of images ``x`` ``(B, 3, H, W)``."""
        return feature_maps(self.features, x, self.num_features)

    def forward_head(self, features: Tensor) -> Tensor:
        """Logits ``(B, K)`` from feature maps ``(B, C, h, w)``: ``classifier(pool(features))``."""
        logits: Tensor = self.classifier(self.pool(features))
        return logits

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B, K)`` of images ``x`` ``(B, 3, H, W)``."""
        return self.forward_head(self.forward_features(x))


class TwoBranchNet(nn.Module):
    """Two branches with separate parameters over the same images (paper section 3.4.1, Fig. 4).

    ``backbone`` is either

    * an ``nn.Module``: it is cut into its feature extractor (see
      [`hiercam.models.cut_backbone`][hiercam.cut_backbone]) and deep-copied for each branch, so both branches
      start from the same weights (e.g. one ImageNet checkpoint) and the module passed in is left untouched;
      or
    * a factory ``Callable[[], nn.Module]``, called twice: independent initialisations. Its modules are cut
      in place (not copied) and must not share parameters.

    Each branch gets its own freshly initialised ``nn.Linear(C, num_classes)``. The net is in the training
    mode of the (first) backbone it was built from.

    Args:
        backbone: a module or a factory of modules (see above).
        num_classes: ``K``, the number of output classes.
        pool: ``"avg"`` (global average pooling) or ``"max"``.

    Attributes:
        branches: ``nn.ModuleList`` of two [`Branch`][hiercam.Branch].
        num_classes: ``K``.
        num_features: ``C``, channels of each branch's feature maps.

    Raises:
        TypeError: ``backbone`` is neither a module nor a callable, the factory returns something other than a
            module, or ``num_classes`` is not an int.
        ValueError: ``num_classes < 1``, ``pool`` is unknown, the backbone cannot be cut into ``(B, C, H, W)``
            features, or the factory returns modules that share parameters or differ in channels.

    Examples:
        >>> import torch
        >>> from torchvision.models import resnet18
        >>> net = TwoBranchNet(resnet18(), num_classes=5)
        >>> out = net(torch.zeros(2, 3, 64, 64))
        >>> out.logits.shape, out.features[0].shape, out.mean_logits.shape
        (torch.Size([2, 2, 5]), torch.Size([2, 512, 2, 2]), torch.Size([2, 5]))
    """

    def __init__(
        self, backbone: nn.Module | Callable[[], nn.Module], num_classes: int, *, pool: PoolMode = "avg"
    ) -> None:
        super().__init__()
        self.num_classes = check_int(num_classes, "num_classes", minimum=1)
        check_choice(pool, "pool", _POOLS)
        first, second, training = _two_cuts(backbone)
        self.num_features = first.num_features
        self.branches = nn.ModuleList(
            Branch(cut.features, cut.num_features, num_classes, pool=pool) for cut in (first, second)
        )
        self.train(training)

    def forward(self, x: Tensor) -> TwoBranchOutput:
        """Run both branches on images ``x`` ``(B, 3, H, W)``.

        Returns:
            ``TwoBranchOutput(logits (2, B, K), features ((B, C, h, w), (B, C, h, w)), mean_logits (B, K))``.
        """
        check_tensor(x, "x", dims="B, C, H, W")
        first, second = self._pair()
        features = (first.forward_features(x), second.forward_features(x))
        logits = torch.stack([first.forward_head(features[0]), second.forward_head(features[1])])
        return TwoBranchOutput(logits, features, logits.mean(dim=0))

    def classifier_heads(self) -> tuple[nn.Linear, nn.Linear]:
        """The two branch classifiers (``MultiHeadClassifier`` protocol of ``hiercam.grouping``)."""
        first, second = self._pair()
        return first.classifier, second.classifier

    def cam_heads(self) -> tuple[CAMHead, CAMHead]:
        """The two branches as CAM heads ([`MultiHeadModel`][hiercam.MultiHeadModel] protocol).

        Head ``i`` is branch ``i``'s ``features`` (named ``"branches.i.features"``), its logits
        ``output.logits[i]`` and its ``classifier``; a ``target_layer`` name is looked up inside the branch.

        Examples:
            >>> import torch
            >>> net = TwoBranchNet(lambda: torch.nn.Conv2d(3, 4, 3), num_classes=2)
            >>> [head.name for head in net.cam_heads()]
            ['branches.0.features', 'branches.1.features']
        """
        first, second = self._pair()
        return (
            CAMHead(first.features, "branches.0.features", _BranchLogits(0), first.classifier, "branches.0"),
            CAMHead(
                second.features, "branches.1.features", _BranchLogits(1), second.classifier, "branches.1"
            ),
        )

    def _pair(self) -> tuple[Branch, Branch]:
        first, second = self.branches
        return cast(Branch, first), cast(Branch, second)


@dataclass(frozen=True)
class _BranchLogits:
    """Logits ``(B, K)`` of one branch, from a [`TwoBranchOutput`][hiercam.TwoBranchOutput]."""

    index: int

    def __call__(self, output: TwoBranchOutput) -> Tensor:
        return output.logits[self.index]


def _two_cuts(backbone: nn.Module | Callable[[], nn.Module]) -> tuple[BackboneCut, BackboneCut, bool]:
    """The two branches' feature extractors and the training flag the net should take."""
    if isinstance(backbone, nn.Module):
        first = cut_owned(backbone, "backbone", copy_first=True)
        second = first._replace(features=copy.deepcopy(first.features))
        return first, second, backbone.training
    if not callable(backbone):
        raise TypeError(f"`backbone` must be an nn.Module or a factory of modules, got {type_name(backbone)}")
    modules = (backbone(), backbone())
    for module in modules:
        if not isinstance(module, nn.Module):
            raise TypeError(f"the `backbone` factory must return an nn.Module, got {type_name(module)}")
    parameters = {id(p) for p in modules[0].parameters()}
    if modules[0] is modules[1] or any(id(p) in parameters for p in modules[1].parameters()):
        raise ValueError(
            "the `backbone` factory returned modules that share parameters (the same module twice?); the two "
            "branches need separate parameters: build a new module on each call, or pass the module itself "
            "to have it copied"
        )
    first, second = (cut_owned(module, "backbone") for module in modules)
    if first.num_features != second.num_features:
        raise ValueError(
            "the `backbone` factory must build modules with the same number of feature channels, got "
            f"{first.num_features} and {second.num_features}"
        )
    return first, second, modules[0].training
