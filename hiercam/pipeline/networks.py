"""The pipeline's networks: single-branch classifiers and two-branch networks built from the config.

A backbone is built from its name (``model.backbone``: ``"small_convnet"`` or a name of the model factory,
[`build_model`][hiercam.models.build_model]), starts from a local weights file when ``model.weights`` names
one ([`load_weights`][hiercam.models.load_weights]), gets the input scaling of ``data.input_norm`` in front
([`with_input_norm`][hiercam.models.with_input_norm]), and keeps its BatchNorm layers in eval mode when
``model.freeze_batchnorm`` is set.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

import torch
from torch import nn

from hiercam.models import (
    Branch,
    InputNorm,
    SmallConvNet,
    TwoBranchNet,
    build_model,
    check_model_name,
    cut_backbone,
    load_weights,
    with_input_norm,
)
from hiercam.pipeline.config import ConfigError, ModelConfig

__all__ = [
    "EvalBatchNorm",
    "freeze_batchnorm",
    "backbone_factory",
    "check_backbone",
    "check_weights",
    "build_classifier",
    "build_two_branch",
]

_SMALL = "small_convnet"


def check_backbone(config: ModelConfig) -> None:
    """Check that ``config.backbone`` names a model that can be built, without building it.

    ``"small_convnet"`` or a name that [`check_model_name`][hiercam.models.check_model_name] accepts: a
    torchvision classification model (``"resnet50"``) or ``"timm:<name>"``.

    Raises:
        ConfigError: an unknown name (naming ``model.backbone`` and the close matches), or a ``timm:``
            backbone without timm installed.
    """
    if config.backbone == _SMALL:
        return
    try:
        check_model_name(config.backbone, argument="model.backbone")
    except (TypeError, ValueError, ImportError) as error:
        also = f" (or {_SMALL!r}, hiercam's CPU backbone)" if isinstance(error, ValueError) else ""
        raise ConfigError(f"{error}{also}") from None


def backbone_factory(config: ModelConfig, input_norm: InputNorm | None = None) -> Callable[[], nn.Module]:
    """A function returning a new feature extractor ``(B, 3, H, W) -> (B, C, h, w)`` on every call.

    ``small_convnet`` is initialised at random; a torchvision name (``"resnet50"``) builds that classifier
    (with its ImageNet weights when ``pretrained``: torchvision fetches them into the torch hub cache on first
    use) and cuts it before its pooling; ``"timm:<name>"`` does the same through timm. With
    ``config.weights`` the network is loaded from that file before it is cut (see ``check_weights``).

    Every model takes images in ``[0, 1]``: ``input_norm`` puts the scaling its weights expect in front
    (see [`with_input_norm`][hiercam.models.with_input_norm]; ``"none"``: nothing); ``None``
    is ``"imagenet"`` for torchvision and timm backbones and ``"none"`` for ``small_convnet``. With
    ``config.freeze_batchnorm`` the BatchNorm layers stay in eval mode (``freeze_batchnorm``).
    """
    check_backbone(config)
    if config.backbone == _SMALL:
        build: Callable[[], nn.Module] = functools.partial(SmallConvNet, width=config.width, norm=config.norm)
    else:
        build = functools.partial(build_model, config.backbone, pretrained=config.pretrained)
    default: InputNorm = "none" if config.backbone == _SMALL else "imagenet"
    return functools.partial(
        _features,
        build,
        cut=config.backbone != _SMALL,
        weights=config.weights,
        input_norm=input_norm or default,
        freeze=config.freeze_batchnorm,
    )


def _features(
    build: Callable[[], nn.Module],
    *,
    cut: bool,
    weights: str | None,
    input_norm: InputNorm,
    freeze: bool,
) -> nn.Module:
    network = build()
    if weights is not None:
        try:  # keys and shapes checked; the message names `model.weights` and the file
            load_weights(network, weights, argument="model.weights")
        except ValueError as error:
            raise ConfigError(str(error)) from None
    features = with_input_norm(cut_backbone(network).features if cut else network, input_norm)
    return freeze_batchnorm(features) if freeze else features


def check_weights(config: ModelConfig) -> None:
    """Check that ``config.weights`` (when set) is a file that fits the network, before any training.

    The file is a state dict of the network ``config.backbone`` names before it is cut: for a torchvision
    name the whole classifier, head included (the default 1000 ImageNet classes); for ``small_convnet``
    the network of ``SmallConvNet(width, norm)``. It is read with ``torch.load(weights_only=True)``; a
    [`fit`][hiercam.fit] checkpoint or ``{"state_dict": ...}`` is unwrapped.

    Raises:
        ConfigError: the file is missing, cannot be read, is not a state dict, or its keys or shapes do not
            fit the network (the message names ``model.weights``, the file and the first differences).
    """
    if config.weights is None:
        return
    if not os.path.isfile(config.weights):
        raise ConfigError(
            f"`model.weights`: {config.weights} not found (a relative path is relative to the working "
            f"directory, {os.getcwd()})"
        )
    with torch.random.fork_rng():
        backbone_factory(config)()


class EvalBatchNorm(nn.BatchNorm2d):
    """A ``BatchNorm2d`` that stays in eval mode, even when the model around it trains.

    It normalises with its running statistics and never updates them; its affine weight and bias still
    learn.

    Its state dict is that of ``BatchNorm2d`` (the same keys), so weights move freely between the two.

    Example:
        >>> EvalBatchNorm(4).train().training
        False
    """

    def train(self, mode: bool = True) -> EvalBatchNorm:
        """Ignore ``mode``: always eval."""
        return super().train(False)


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """``module`` with every ``BatchNorm2d`` replaced by an ``EvalBatchNorm`` holding the same tensors.

    Fine-tuning weights whose BatchNorm statistics must not change (folded BatchNorm, or batches too small
    for good statistics) then uses the stored statistics in training as in evaluation. The module is changed
    in place (and returned), like ``nn.SyncBatchNorm.convert_sync_batchnorm``.

    Example:
        >>> net = freeze_batchnorm(nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))).train()
        >>> stats = net[1].running_mean.clone()
        >>> _ = net(torch.randn(2, 3, 5, 5))
        >>> net[1].training, torch.equal(net[1].running_mean, stats)
        (False, True)
    """
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            frozen = EvalBatchNorm(
                child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats
            )
            tensors = [*child.parameters(), *child.buffers()]
            if tensors:
                frozen.to(tensors[0].device)
            frozen.load_state_dict(child.state_dict())
            if child.affine:
                frozen.weight.requires_grad_(child.weight.requires_grad)
                frozen.bias.requires_grad_(child.bias.requires_grad)
            setattr(module, name, frozen.eval())
        else:
            freeze_batchnorm(child)
    return module


def _channels(features: nn.Module) -> int:
    channels = getattr(features, "out_channels", None)
    if isinstance(channels, int):
        return channels
    was_training = features.training
    features.eval()
    try:
        with torch.no_grad():
            probe = features(torch.zeros(1, 3, 64, 64, device=next(features.parameters()).device))
    finally:
        features.train(was_training)
    return int(probe.shape[1])


def build_classifier(
    config: ModelConfig, num_classes: int, seed: int, *, input_norm: InputNorm | None = None
) -> Branch:
    """A single-branch classifier ``features -> global average pool -> linear``, seeded."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        features = backbone_factory(config, input_norm)()
        return Branch(features, _channels(features), num_classes)


def build_two_branch(
    config: ModelConfig, num_classes: int, seed: int, *, input_norm: InputNorm | None = None
) -> TwoBranchNet:
    """A [`TwoBranchNet`][hiercam.TwoBranchNet], seeded.

    From-scratch backbones get two independent initialisations (a factory); pretrained ones (``pretrained``
    or ``weights``) are copied, so both branches start from the same ImageNet weights as in the paper.
    """
    factory = backbone_factory(config, input_norm)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        shared = config.pretrained or config.weights is not None
        backbone: nn.Module | Callable[[], nn.Module] = factory() if shared else factory
        return TwoBranchNet(backbone, num_classes)
