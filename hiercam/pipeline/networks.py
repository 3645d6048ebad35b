"""The pipeline's network factory: single-branch classifiers and two-branch networks built from the config."""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import nn

from hiercam.models import Branch, TwoBranchNet, cut_backbone, small_convnet
from hiercam.pipeline.config import ConfigError, ModelConfig

__all__ = ["ImageNetNormalize", "backbone_factory", "check_backbone", "build_classifier", "build_two_branch"]


def check_backbone(config: ModelConfig) -> None:
    """Check that ``config.backbone`` names a model that can be built, without building it.

    Raises:
        ConfigError: an unknown torchvision or timm name, or a ``timm:`` backbone without timm installed.
    """
    name = config.backbone
    if name == "small_convnet":
        return
    if name.startswith("timm:"):
        try:
            import timm
        except ImportError:
            raise ConfigError(f"`model.backbone` {name!r} needs timm (`pip install timm`)") from None
        if not timm.is_model(name[5:]):
            raise ConfigError(f"`model.backbone` {name!r}: timm has no model {name[5:]!r}")
        return
    from torchvision import models

    known = models.list_models(module=models)
    if name not in known:
        raise ConfigError(
            f"`model.backbone` {name!r} is not 'small_convnet', a torchvision classification model "
            f"(e.g. {', '.join(sorted(known)[:3])}...) or 'timm:<name>'"
        )


def backbone_factory(config: ModelConfig) -> Callable[[], nn.Module]:
    """A function returning a new feature extractor ``(B, 3, H, W) -> (B, C, h, w)`` on every call.

    ``small_convnet`` is initialised at random; a torchvision name (``"resnet50"``) builds that classifier
    (with its ImageNet weights when ``pretrained``: torchvision fetches them into the torch hub cache on first
    use) and cuts it before its pooling; ``"timm:<name>"`` does the same through timm. Torchvision and timm
    backbones get ``ImageNetNormalize`` in front, so every model takes images in ``[0, 1]``.
    """
    if config.backbone == "small_convnet":
        return functools.partial(small_convnet, width=config.width, norm=config.norm)
    if config.backbone.startswith("timm:"):
        return functools.partial(_timm_features, config.backbone[5:], config.pretrained)
    return functools.partial(_torchvision_features, config.backbone, config.pretrained)


class ImageNetNormalize(nn.Module):
    """``(x - mean) / std`` with ImageNet's statistics: the input convention of torchvision and timm weights.

    The pipeline's images are in ``[0, 1]``; backbones trained on ImageNet get this layer in front.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Normalise ``(B, 3, H, W)`` images in ``[0, 1]``."""
        return (images - self.mean) / self.std


def _torchvision_features(name: str, pretrained: bool) -> nn.Module:
    from torchvision import models

    try:
        model = models.get_model(name, weights="DEFAULT" if pretrained else None)
    except ValueError as error:
        raise ValueError(f"`model.backbone` {name!r} is not a torchvision model: {error}") from None
    return nn.Sequential(ImageNetNormalize(), cut_backbone(model).features)


def _timm_features(name: str, pretrained: bool) -> nn.Module:
    import timm

    return nn.Sequential(
        ImageNetNormalize(), cut_backbone(timm.create_model(name, pretrained=pretrained)).features
    )


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


def build_classifier(config: ModelConfig, num_classes: int, seed: int) -> Branch:
    """A single-branch classifier ``features -> global average pool -> linear``, seeded."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        features = backbone_factory(config)()
        return Branch(features, _channels(features), num_classes)


def build_two_branch(config: ModelConfig, num_classes: int, seed: int) -> TwoBranchNet:
    """A [`TwoBranchNet`][hiercam.TwoBranchNet], seeded.

    From-scratch backbones get two independent initialisations (a factory); pretrained ones are copied, so
    both branches start from the same ImageNet weights as in the paper.
    """
    factory = backbone_factory(config)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        backbone: nn.Module | Callable[[], nn.Module] = factory() if config.pretrained else factory
        return TwoBranchNet(backbone, num_classes)
