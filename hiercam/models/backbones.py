"""Cut image classifiers into feature extractors ``(B, 3, H, W) -> (B, C, h, w)``: the maps before pooling.

Every torchvision classifier that pools feature maps is cut by its structure, keeping everything up to (not
including) the global pooling; timm models through ``forward_features``:

| classifier | features |
| --- | --- |
| torchvision ``ResNet`` | ``conv1 .. layer4`` (also ResNeXt, Wide ResNet) |
| ``VGG``, ``AlexNet`` | ``features`` (convolutional part; the hidden 4096-unit layers are dropped) |
| ``SqueezeNet`` | ``features`` (the head is a 1 x 1 convolution to the classes, then pooling) |
| ``MobileNetV2``, ``MobileNetV3`` | ``features`` (V3: the hidden linear layer of the classifier is dropped) |
| ``EfficientNet`` (V1 and V2) | ``features`` |
| ``MNASNet`` | ``layers`` |
| ``DenseNet`` | ``features`` then the ReLU that ``DenseNet.forward`` applies functionally |
| ``ShuffleNetV2`` | ``conv1 .. conv5`` |
| ``RegNet`` | ``stem``, ``trunk_output`` |
| ``GoogLeNet``, ``Inception3`` | up to ``inception5b`` / ``Mixed_7c``, by ``create_feature_extractor`` |
| ``ConvNeXt`` | ``features`` (see below) |
| ``MaxVit`` | ``stem``, ``blocks`` (the head's ``LayerNorm`` acts on the pooled vector) |
| ``SwinTransformer`` (V1 and V2) | ``features``, ``norm``, ``permute`` (channels-last to ``(B, C, h, w)``) |
| ``VisionTransformer`` | refused: it classifies a class token, not pooled maps |
| timm models | ``forward_features``, without the classifier; ``NHWC`` outputs permuted |
| anything else | used as is, when it returns ``(B, C, H, W)`` |

``layer=`` overrides the table: the features are the output of that node of the model's graph (a module's
qualified name such as ``"layer3"``), cut with torchvision's ``create_feature_extractor``.

ConvNeXt's head is ``LayerNorm2d -> Flatten -> Linear`` applied *after* pooling, so the normalisation acts on
the pooled vector, not on the maps. It belongs to the head that the cut replaces and is dropped with it: the
features are the last stage's output, what torchvision's ``avgpool`` receives and what timm's
``forward_features`` returns. A branch is then ``features -> global average pool -> linear``, the form in
which Grad-CAM has a closed form. MaxViT's head is the same kind. Swin's ``norm`` acts on every position of
the maps, before pooling, and is kept. GoogLeNet and Inception v3 keep their input transform (on when built
with ImageNet weights) and drop their auxiliary heads, which only run in training.
"""

from __future__ import annotations

import copy
import functools
from collections import OrderedDict
from collections.abc import Callable
from typing import NamedTuple, cast

import torch
from torch import Tensor, nn

from hiercam._validation import format_shape, type_name

__all__ = ["BackboneCut", "cut_backbone"]

_PROBE_SIZE = (64, 64)
# Inception v3's unpadded stride-2 convolutions need at least 75 x 75 pixels.
_INCEPTION_PROBE_SIZE = (75, 75)
_TIMM = "timm-style forward_features"
_OUTPUT = "features"
_RESNET_TRUNK = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
_SHUFFLENET_TRUNK = ("conv1", "maxpool", "stage2", "stage3", "stage4", "conv5")
_NO_TOKENS = (
    "hiercam does not reshape tokens into maps yet: pass `layer=` naming a layer that outputs (B, C, H, W) "
    "maps, or a module that returns (B, C, H, W) feature maps (e.g. the patch tokens reshaped to a grid)"
)


class BackboneCut(NamedTuple):
    """A feature extractor cut from a classifier."""

    features: nn.Module
    """Module mapping ``(B, 3, H, W)`` images to ``(B, C, h, w)`` feature maps."""
    num_features: int
    """``C``, the number of feature channels."""
    kind: str
    """How it was cut, e.g. ``"torchvision ResNet"``, ``"timm-style forward_features"``."""


def cut_backbone(model: nn.Module, *, layer: str | None = None) -> BackboneCut:
    """Cut a classifier into the feature extractor that feeds its global pooling.

    The cut is made on a deep copy: ``model`` is not modified and shares no parameters with the result. The
    number of channels is found by running the extractor once, in eval mode, on a ``(1, 3, 64, 64)`` zero
    image on the model's device and dtype (Inception v3: 75 x 75; MaxViT and timm models that need a fixed
    size: their input size).

    Args:
        model: a torchvision classifier other than ``VisionTransformer`` (ResNet, ResNeXt, Wide ResNet, VGG,
            AlexNet, SqueezeNet, DenseNet, MobileNetV2/V3, MNASNet, EfficientNet V1/V2, ShuffleNetV2, RegNet,
            GoogLeNet, Inception v3, ConvNeXt, MaxViT, Swin V1/V2), a timm model (``forward_features`` and
            ``num_features``), or any module that returns ``(B, C, H, W)`` features.
        layer: cut at this node of the model's graph instead (a module's qualified name such as ``"layer3"``
            or ``"features.6"``; ``torchvision.models.feature_extraction.get_graph_node_names(model)`` lists
            them), with torchvision's ``create_feature_extractor``. Its output must be ``(B, C, H, W)``.

    Returns:
        ``BackboneCut(features, num_features, kind)``. The copies keep ``model``'s training flags. For timm
        models, parameters that ``forward_features`` never uses (e.g. ConvNeXt's head norm) are frozen
        (``requires_grad=False``) so that ``DistributedDataParallel`` sees no unused parameter.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``, or ``layer`` is not a string.
        ValueError: ``model`` is a torchvision ``VisionTransformer`` (tokens, not maps), cannot be traced at
            ``layer``, cannot be run on the probe input, or does not return 4-D features; the message names
            ``layer=`` as the way out.

    Examples:
        >>> import torch
        >>> from torchvision.models import resnet18, shufflenet_v2_x0_5
        >>> cut = cut_backbone(resnet18(num_classes=5))
        >>> cut.kind, cut.num_features
        ('torchvision ResNet', 512)
        >>> cut.features(torch.zeros(2, 3, 64, 64)).shape
        torch.Size([2, 512, 2, 2])
        >>> cut_backbone(resnet18(), layer="layer3").features(torch.zeros(2, 3, 64, 64)).shape
        torch.Size([2, 256, 4, 4])
        >>> cut_backbone(shufflenet_v2_x0_5(num_classes=5)).num_features
        1024
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be an nn.Module, got {type_name(model)}")
    if layer is not None and not isinstance(layer, str):
        raise TypeError(f"`layer` must be a str or None, got {type_name(layer)}")
    return cut_owned(model, "model", copy_first=True, layer=layer)


def cut_owned(
    model: nn.Module, name: str, *, copy_first: bool = False, layer: str | None = None
) -> BackboneCut:
    """``cut_backbone``, cutting ``model`` in place unless ``copy_first`` (``name`` is for messages).

    With ``copy_first``, only the kept part of a structurally cut torchvision classifier is copied, not its
    discarded head.
    """
    probe_size = _probe_size(model)
    if layer is not None:
        features, kind = _graph_trunk(copy.deepcopy(model) if copy_first else model, layer, name), "layer"
    else:
        _refuse_tokens(model, name)
        trunk = _torchvision_trunk(model, name, copy_first=copy_first)
        if trunk is None:
            features, kind = _other_trunk(copy.deepcopy(model) if copy_first else model)
        else:
            features, kind = trunk
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
        where = f"at `layer={layer!r}`" if layer is not None else kind
        raise ValueError(
            f"`{name}` ({type_name(model)}, {where}) must return (B, C, H, W) features, got {got} for a "
            f"{format_shape((1, 3, *probe_size))} input; it is not a classifier that hiercam can cut "
            f"(torchvision classifiers other than vision transformers, or timm models). {_NO_TOKENS}"
        )
    return BackboneCut(features, int(output.shape[1]), kind)


def _probe_size(model: nn.Module) -> tuple[int, int]:
    """The probe image size: 64 x 64 unless the model needs another."""
    from torchvision import models as tvm  # here, not at import: `import hiercam` stays light

    if isinstance(model, tvm.Inception3):
        return _INCEPTION_PROBE_SIZE
    if isinstance(model, tvm.MaxVit):
        # MaxViT partitions each stage into a fixed grid; the first block's grid is 1/4 of the input.
        height, width = cast(tuple[int, int], model.blocks[0].grid_size)
        return 4 * height, 4 * width
    return _PROBE_SIZE


def _refuse_tokens(model: nn.Module, name: str) -> None:
    from torchvision.models import VisionTransformer

    if isinstance(model, VisionTransformer):
        raise ValueError(
            f"`{name}` (torchvision VisionTransformer) cannot be cut into (B, C, H, W) feature maps: it "
            f"returns tokens (B, 1 + N, D) and classifies the class token, not pooled maps; {_NO_TOKENS}"
        )


def _children(*names: str) -> Callable[[nn.Module], nn.Module]:
    """A trunk made of the named children of a model, in order, keeping their names."""

    def trunk(model: nn.Module) -> nn.Module:
        sequential = nn.Sequential(OrderedDict((child, getattr(model, child)) for child in names))
        sequential.training = model.training
        return sequential

    return trunk


def _attribute(name: str) -> Callable[[nn.Module], nn.Module]:
    return lambda model: cast(nn.Module, getattr(model, name))


def _densenet(model: nn.Module) -> nn.Module:
    # DenseNet.forward applies F.relu after `features` (which ends with a BatchNorm).
    relu = nn.ReLU()
    trunk = nn.Sequential(OrderedDict(features=cast(nn.Module, model.features), relu=relu))
    trunk.training = relu.training = model.training
    return trunk


def _maxvit(model: nn.Module) -> nn.Module:
    # MaxVit.forward loops over the `blocks` ModuleList; a Sequential over them keeps the names.
    blocks = nn.Sequential(*cast(nn.ModuleList, model.blocks))
    trunk = nn.Sequential(OrderedDict(stem=cast(nn.Module, model.stem), blocks=blocks))
    trunk.training = blocks.training = model.training
    return trunk


_Structural = tuple[tuple[type[nn.Module], Callable[[nn.Module], nn.Module]], ...]
_Graph = tuple[tuple[type[nn.Module], str], ...]


@functools.cache
def _families() -> tuple[_Structural, _Graph]:
    """The torchvision families: those cut by their children, and those cut at a graph node.

    Built on first use, so that torchvision is imported only when a model is cut.
    """
    from torchvision import models as tvm

    # Each torchvision family and the part of it that feeds the global pooling.
    structural: _Structural = (
        (tvm.ResNet, _children(*_RESNET_TRUNK)),
        (tvm.DenseNet, _densenet),
        (tvm.VGG, _attribute("features")),
        (tvm.AlexNet, _attribute("features")),
        (tvm.SqueezeNet, _attribute("features")),
        (tvm.MobileNetV2, _attribute("features")),
        (tvm.MobileNetV3, _attribute("features")),
        (tvm.EfficientNet, _attribute("features")),
        (tvm.ConvNeXt, _attribute("features")),
        (tvm.MNASNet, _attribute("layers")),
        (tvm.ShuffleNetV2, _children(*_SHUFFLENET_TRUNK)),
        (tvm.RegNet, _children("stem", "trunk_output")),
        (tvm.SwinTransformer, _children("features", "norm", "permute")),
        (tvm.MaxVit, _maxvit),
    )
    # Families whose forward is not a chain of children: cut at a graph node.
    graph: _Graph = ((tvm.GoogLeNet, "inception5b"), (tvm.Inception3, "Mixed_7c"))
    return structural, graph


def _torchvision_trunk(model: nn.Module, name: str, *, copy_first: bool) -> tuple[nn.Module, str] | None:
    """The part of a torchvision classifier up to its global pooling, or None for other models."""
    structural, graph = _families()
    for family, build in structural:
        if isinstance(model, family):
            trunk = build(model)
            return (copy.deepcopy(trunk) if copy_first else trunk), f"torchvision {family.__name__}"
    for family, node in graph:
        if isinstance(model, family):
            owned = copy.deepcopy(model) if copy_first else model
            # The children are traced as leaves, so the cut holds the model's own blocks (hooks on them fire).
            leaves = tuple({type(child) for child in owned.children()})
            return _graph_trunk(owned, node, name, leaves=leaves), f"torchvision {family.__name__}"
    return None


def _graph_trunk(
    model: nn.Module, node: str, name: str, *, leaves: tuple[type[nn.Module], ...] = ()
) -> nn.Module:
    """``model`` up to graph node ``node`` (``create_feature_extractor``), with ``model``'s training flags.

    Modules of the ``leaves`` types are called as they are, not traced through.
    """
    from torchvision.models.feature_extraction import create_feature_extractor

    flags = {qualified: module.training for qualified, module in model.named_modules()}
    try:
        extractor = create_feature_extractor(
            model,
            return_nodes={node: _OUTPUT},
            tracer_kwargs={"leaf_modules": list(leaves)},
            suppress_diff_warning=True,
        )
    except Exception as error:
        raise ValueError(
            f"could not cut `{name}` ({type_name(model)}) at `layer={node!r}` with torchvision's "
            f"create_feature_extractor: {type_name(error)}: {error}"
        ) from error
    finally:
        # create_feature_extractor switches the whole model to train and eval mode to trace it.
        for qualified, module in model.named_modules():
            module.training = flags[qualified]
    trunk = _GraphOutput(extractor)
    trunk.training = flags[""]
    return trunk


class _GraphOutput(nn.Module):
    """Calls a one-output feature extractor graph and returns that output rather than a dict."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: Tensor) -> Tensor:
        return cast(dict[str, Tensor], self.body(x))[_OUTPUT]

    def __deepcopy__(self, memo: dict[int, object]) -> _GraphOutput:
        # torch.fx's GraphModule deep copy sets every module it holds to training mode: copy the flags back.
        clone = type(self).__new__(type(self))
        memo[id(self)] = clone
        vars(clone).update(copy.deepcopy(vars(self), memo))
        flags = {name: module.training for name, module in self.named_modules()}
        for name, module in clone.named_modules():
            module.training = flags.get(name, module.training)
        _sync_graphs(clone)
        return clone


def _other_trunk(model: nn.Module) -> tuple[nn.Module, str]:
    """A timm-style model's ``forward_features`` (its classifier removed in place), or ``model`` itself."""
    if callable(getattr(model, "forward_features", None)) and isinstance(
        getattr(model, "num_features", None), int
    ):
        reset = getattr(model, "reset_classifier", None)
        if callable(reset):
            reset(0)
        return _ForwardFeatures(model, channels_last=getattr(model, "output_fmt", None) == "NHWC"), _TIMM
    return model, "feature module"


class _ForwardFeatures(nn.Module):
    """Wraps a timm-style model so that calling it runs ``forward_features`` (``NHWC`` -> ``NCHW``)."""

    def __init__(self, model: nn.Module, *, channels_last: bool = False) -> None:
        super().__init__()
        self.model = model
        self.channels_last = channels_last

    def forward(self, x: Tensor) -> Tensor:
        forward_features = cast(Callable[[Tensor], Tensor], self.model.forward_features)
        features = forward_features(x)
        return features.permute(0, 3, 1, 2) if self.channels_last else features


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
        _sync_graphs(module)
    if backward:
        for parameter in module.parameters():
            if parameter.requires_grad and parameter.grad is None:
                parameter.requires_grad_(False)
            parameter.grad = None
    return output.detach() if isinstance(output, Tensor) else output


def _sync_graphs(module: nn.Module) -> None:
    """Give each ``DualGraphModule`` the graph of its training flag (restoring flags bypasses ``train()``)."""
    from torchvision.models.feature_extraction import DualGraphModule

    for submodule in module.modules():
        if isinstance(submodule, DualGraphModule):
            graph = submodule.train_graph if submodule.training else submodule.eval_graph
            if submodule.graph is not graph:
                submodule.graph = graph
