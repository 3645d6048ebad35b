"""Cut image classifiers into feature extractors ``(B, 3, H, W) -> (B, C, h, w)``: the maps before pooling.

Known classifiers are cut by their structure, keeping everything up to (not including) the global pooling:

| classifier | features |
| --- | --- |
| torchvision ``ResNet`` | ``conv1 .. layer4`` (also ResNeXt, Wide ResNet) |
| torchvision ``VGG`` | ``features`` (convolutional part; the hidden 4096-unit layers are dropped) |
| ``MobileNetV2``, ``MobileNetV3`` | ``features`` (V3: the hidden linear layer of the classifier is dropped) |
| ``EfficientNet`` | ``features`` |
| ``DenseNet`` | ``features`` then the ReLU that ``DenseNet.forward`` applies functionally |
| ``ConvNeXt`` | ``features`` (see below) |
| timm models | ``forward_features`` (classifier removed with ``reset_classifier(0)``) |
| anything else | used as is, when it returns ``(B, C, H, W)`` |

ConvNeXt's head is ``LayerNorm2d -> Flatten -> Linear`` applied *after* pooling, so the normalisation acts on
the pooled vector, not on the maps. It belongs to the head that the cut replaces and is dropped with it: the
features are the last stage's output, what torchvision's ``avgpool`` receives and what timm's
``forward_features`` returns. A branch is then ``features -> global average pool -> linear``, the form in
which Grad-CAM has a closed form.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Callable
from typing import NamedTuple, cast

import torch
from torch import Tensor, nn
from torchvision import models as tvm

from hiercam._validation import format_shape, type_name

__all__ = ["BackboneCut", "cut_backbone"]

_PROBE_SIZE = (64, 64)
_TIMM = "timm-style forward_features"
_RESNET_TRUNK = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")


class BackboneCut(NamedTuple):
    """A feature extractor cut from a classifier."""

    features: nn.Module
    """Module mapping ``(B, 3, H, W)`` images to ``(B, C, h, w)`` feature maps."""
    num_features: int
    """``C``, the number of feature channels."""
    kind: str
    """How it was cut, e.g. ``"torchvision ResNet"``, ``"timm-style forward_features"``."""


def cut_backbone(model: nn.Module) -> BackboneCut:
    """Cut a classifier into the feature extractor that feeds its global pooling.

    The cut is made on a deep copy: ``model`` is not modified and shares no parameters with the result. The
    number of channels is found by running the extractor once, in eval mode, on a ``(1, 3, 64, 64)`` zero
    image (timm models that need a fixed size: their default input size) on the model's device and dtype.

    Args:
        model: a torchvision ResNet, VGG, MobileNetV2/V3, DenseNet, EfficientNet or ConvNeXt, a timm model
            (``forward_features`` and ``num_features``), or any module that returns ``(B, C, H, W)`` features.

    Returns:
        ``BackboneCut(features, num_features, kind)``. The copies keep ``model``'s training flags. For timm
        models, parameters that ``forward_features`` never uses (e.g. ConvNeXt's head norm) are frozen
        (``requires_grad=False``) so that ``DistributedDataParallel`` sees no unused parameter.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.
        ValueError: ``model`` cannot be run on the probe input, or is not a known classifier and does not
            return 4-D features.

    Examples:
        >>> import torch
        >>> from torchvision.models import resnet18
        >>> cut = cut_backbone(resnet18(num_classes=5))
        >>> cut.kind, cut.num_features
        ('torchvision ResNet', 512)
        >>> cut.features(torch.zeros(2, 3, 64, 64)).shape
        torch.Size([2, 512, 2, 2])
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be an nn.Module, got {type_name(model)}")
    return cut_owned(model, "model", copy_first=True)


def cut_owned(model: nn.Module, name: str, *, copy_first: bool = False) -> BackboneCut:
    """``cut_backbone``, cutting ``model`` in place unless ``copy_first`` (``name`` is for messages).

    With ``copy_first``, only the kept part of a torchvision classifier is copied, not its discarded head.
    """
    trunk = _torchvision_trunk(model)
    if trunk is not None:
        features, kind = trunk
        if copy_first:
            features = copy.deepcopy(features)
    else:
        if copy_first:
            model = copy.deepcopy(model)
        features, kind = _other_trunk(model)
    probe_size = _PROBE_SIZE
    try:
        output = _probe(features, name, kind, probe_size, backward=kind == _TIMM)
    except ValueError:
        # timm models with a fixed input size (e.g. vision transformers): probe at their default size.
        input_size = getattr(model, "pretrained_cfg", {}).get("input_size") if kind == _TIMM else None
        if input_size is None or tuple(input_size[-2:]) == probe_size:
            raise
        probe_size = (int(input_size[-2]), int(input_size[-1]))
        output = _probe(features, name, kind, probe_size, backward=True)
    if not isinstance(output, Tensor) or output.ndim != 4:
        got = format_shape(output.shape) if isinstance(output, Tensor) else type_name(output)
        raise ValueError(
            f"`{name}` ({type_name(model)}, {kind}) must return (B, C, H, W) features, got {got} for a "
            f"{format_shape((1, 3, *probe_size))} input; it is not a classifier that hiercam can cut "
            "(torchvision ResNet, VGG, MobileNetV2/V3, DenseNet, EfficientNet, ConvNeXt, or timm): pass a "
            "module that returns (B, C, H, W) feature maps"
        )
    return BackboneCut(features, int(output.shape[1]), kind)


def _torchvision_trunk(model: nn.Module) -> tuple[nn.Module, str] | None:
    """The part of a torchvision classifier up to its global pooling (its modules, not copies), or None."""
    if isinstance(model, tvm.ResNet):
        trunk = nn.Sequential(OrderedDict((n, getattr(model, n)) for n in _RESNET_TRUNK))
        trunk.training = model.training
        return trunk, "torchvision ResNet"
    if isinstance(model, tvm.DenseNet):
        # DenseNet.forward applies F.relu after `features` (which ends with a BatchNorm).
        relu = nn.ReLU()
        trunk = nn.Sequential(OrderedDict(features=model.features, relu=relu))
        trunk.training = relu.training = model.training
        return trunk, "torchvision DenseNet"
    for family in (tvm.VGG, tvm.MobileNetV2, tvm.MobileNetV3, tvm.EfficientNet, tvm.ConvNeXt):
        if isinstance(model, family):
            features: nn.Module = model.features
            return features, f"torchvision {family.__name__}"
    return None


def _other_trunk(model: nn.Module) -> tuple[nn.Module, str]:
    """A timm-style model's ``forward_features`` (its classifier removed in place), or ``model`` itself."""
    if callable(getattr(model, "forward_features", None)) and isinstance(
        getattr(model, "num_features", None), int
    ):
        reset = getattr(model, "reset_classifier", None)
        if callable(reset):
            reset(0)
        return _ForwardFeatures(model), _TIMM
    return model, "feature module"


class _ForwardFeatures(nn.Module):
    """Wraps a timm-style model so that calling it runs ``forward_features``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        forward_features = cast(Callable[[Tensor], Tensor], self.model.forward_features)
        return forward_features(x)


def _probe(module: nn.Module, name: str, kind: str, size: tuple[int, int], *, backward: bool) -> object:
    """Run ``module`` once in eval mode on a zero image; with ``backward``, freeze parameters it ignores."""
    reference = next(iter([*module.parameters(), *module.buffers()]), None)
    device = reference.device if reference is not None else torch.device("cpu")
    dtype = reference.dtype if reference is not None and reference.is_floating_point() else torch.float32
    flags = {submodule: submodule.training for submodule in module.modules()}
    image = torch.zeros(1, 3, *size, device=device, dtype=dtype)
    try:
        module.eval()
        with torch.set_grad_enabled(backward):
            output = module(image)
            if backward and isinstance(output, Tensor) and output.requires_grad:
                output.float().sum().backward()
    except Exception as error:
        raise ValueError(
            f"could not run `{name}` ({kind}) on a {format_shape(image.shape)} probe image to find its "
            f"feature channels: {type_name(error)}: {error}"
        ) from error
    finally:
        for submodule, training in flags.items():
            submodule.training = training
    if backward:
        for parameter in module.parameters():
            if parameter.requires_grad and parameter.grad is None:
                parameter.requires_grad_(False)
            parameter.grad = None
    return output.detach() if isinstance(output, Tensor) else output
