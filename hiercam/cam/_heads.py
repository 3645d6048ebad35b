"""Engine internals: how the CAM engine finds the heads of a model and what it records about each.

A plain model is one head; a multi-head model lists its heads through the public protocol of
[`hiercam.protocols`][hiercam.protocols] ([`CAMHead`][hiercam.CAMHead], what a model declares).
``HeadState`` is the engine's own record of one head: the resolved layer, how
its logits are read, and the closed form's verification state (never seen by users). ``MapPlan`` is what
one call computes for every head, the argument of the engine's ``_head_maps`` extension point.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal

import torch
from torch import Tensor, nn

from hiercam._validation import format_shape, type_name
from hiercam.cam._classes import ResolvedClasses
from hiercam.cam.targets import OutputArg, TargetsArg, check_output_selector, select_output
from hiercam.protocols import CAMHead, MultiHeadModel

__all__ = [
    "ClosedFormState",
    "HeadState",
    "LayerArg",
    "MapPlan",
    "build_heads",
    "resolve_layer",
    "resolve_layers",
    "translate_forward_error",
]

ClosedFormState = Literal["unknown", "verified", "general"]

LayerArg = nn.Module | str | Sequence[nn.Module | str] | None
"""A target layer (a module or its dotted name), several of them, or ``None`` (chosen on the first call)."""


@dataclass
class HeadState:
    """The engine's record of one head: a target layer, the logits it explains, the closed form's state.

    Built from a model's [`CAMHead`][hiercam.CAMHead] (or, for a plain model, from the extractor's
    arguments); a plain model has one head, a multi-head model several.

    ``verified`` records for which classes the closed form was verified, per input size ``(H, W)`` (a few
    sizes: ``MultiScaleCAM`` alternates them), ``modules`` the model's modules at that time;
    ``copy_activation`` is set once a later in-place op was seen to modify the layer's output. ``to_map``
    reads the layer's output as ``(B, C, h, w)`` in the current call (``None``: as it is) and ``reading``
    says how, for ``repr``. ``channels_first`` keeps, per input size, the evidence
    of ``hiercam.cam.reshape.is_channels_first`` for an output whose shape cannot tell (``h == w == C``).
    """

    name: str | None
    layer: nn.Module | None
    logits_of: Callable[[Any], Tensor]
    classifier: nn.Linear | None = None
    state: ClosedFormState = "unknown"
    verified: dict[tuple[int, int], frozenset[int]] = field(default_factory=dict)
    copy_activation: bool = False
    activation: Tensor | None = field(default=None, repr=False)
    version: int = 0
    to_map: Callable[[Tensor], Tensor] | None = field(default=None, repr=False)
    reading: str = "map"
    channels_first: dict[tuple[int, int], bool] = field(default_factory=dict)
    modules: tuple[nn.Module, ...] = field(default=(), repr=False)


@dataclass(frozen=True)
class MapPlan:
    """What one call computes for every head: the classes, the targets, the gradient path, the input size.

    ``resolved`` holds the requested classes (with ``targets``: one map per image, ``indices == [0]``);
    ``closed`` says that the verified closed form gives the gradients; ``input_size`` is the images'
    ``(H, W)`` (the closed form is verified per input size).
    """

    resolved: ResolvedClasses
    targets: TargetsArg
    closed: bool
    input_size: tuple[int, int]


def build_heads(
    model: nn.Module,
    target_layer: LayerArg,
    classifier: nn.Linear | str | None,
    output: OutputArg = None,
) -> list[HeadState]:
    """The heads of ``model``: its ``cam_heads()`` for a multi-head model, else one plain head.

    The plain head's scores are the part of the model's output that ``output`` selects; a list of layers
    gives a plain model one head per layer, all explaining the same scores.
    """
    output = check_output_selector(output)
    if isinstance(model, MultiHeadModel):
        if output is not None:
            raise ValueError(
                f"`output` is not used with a multi-head model ({type_name(model)} has cam_heads()): each "
                "head's `logits` selects its scores"
            )
        return _multi_heads(model, target_layer, classifier)
    fc = None
    if classifier is not None:
        _, module = resolve_layer(model, classifier, "classifier")
        if not isinstance(module, nn.Linear):
            raise TypeError(f"`classifier` must be an nn.Linear, got {type_name(module)}")
        fc = module
    logits_of = partial(select_output, selector=output)
    if isinstance(target_layer, (list, tuple)):
        return [HeadState(name, layer, logits_of, fc) for name, layer in resolve_layers(model, target_layer)]
    if target_layer is None:
        return [HeadState(None, None, logits_of, fc)]
    if not isinstance(target_layer, (str, nn.Module)):
        raise TypeError(
            "`target_layer` must be an nn.Module, a dotted name, a list of them or None, got "
            f"{type_name(target_layer)}"
        )
    name, layer = resolve_layer(model, target_layer, "target_layer")
    return [HeadState(name, layer, logits_of, fc)]


def resolve_layers(model: nn.Module, layers: list[Any] | tuple[Any, ...]) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of several target layers (pytorch-grad-cam's ``target_layers``): distinct, >= 1."""
    if not layers:
        raise ValueError("`target_layer` must name at least one layer, got an empty sequence")
    resolved = [resolve_layer(model, layer, "target_layer") for layer in layers]
    names = [name for name, _ in resolved]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"`target_layer` must not repeat a layer, got {repeated[0]!r} more than once")
    return resolved


def _multi_heads(
    model: nn.Module, target_layer: LayerArg, classifier: nn.Linear | str | None
) -> list[HeadState]:
    if classifier is not None:
        raise ValueError(
            f"`classifier` is not used with a multi-head model ({type_name(model)} has cam_heads()): "
            "each head has its own"
        )
    if target_layer is not None and not isinstance(target_layer, str):
        raise TypeError(
            f"`target_layer` of a multi-head model ({type_name(model)}) must be None (each head's feature "
            "layer) or a dotted name inside each head such as 'features.layer3', got "
            f"{type_name(target_layer)}"
        )
    described = list(model.cam_heads())  # type: ignore[operator]
    if not described:
        raise ValueError(f"`model.cam_heads()` of {type_name(model)} returned no head")
    names = dict(model.named_modules())
    heads = []
    for index, head in enumerate(described):
        where = f"`model.cam_heads()[{index}]`"
        if not isinstance(head, CAMHead):
            raise TypeError(f"{where} must be a hiercam.CAMHead, got {type_name(head)}")
        if names.get(head.name) is not head.layer or not head.name:
            raise ValueError(f"{where}.name {head.name!r} must be the dotted name of its `layer` in `model`")
        if not callable(head.logits):
            raise TypeError(f"{where}.logits must be callable, got {type_name(head.logits)}")
        if head.classifier is not None and not isinstance(head.classifier, nn.Linear):
            raise TypeError(
                f"{where}.classifier must be an nn.Linear or None, got {type_name(head.classifier)}"
            )
        if head.scope not in names:
            raise ValueError(f"{where}.scope {head.scope!r} is not a submodule of {type_name(model)}")
        name, layer = head.name, head.layer
        if target_layer is not None:
            inner, layer = resolve_layer(names[head.scope], target_layer, "target_layer")
            name = f"{head.scope}.{inner}" if head.scope else inner
        heads.append(HeadState(name, layer, head.logits, head.classifier))
    return heads


def resolve_layer(model: nn.Module, layer: nn.Module | str, argument: str) -> tuple[str, nn.Module]:
    """``(dotted name, module)`` of a submodule given by name or as a module; errors suggest close names."""
    if isinstance(layer, str):
        names = dict(model.named_modules())
        if layer not in names:
            close = difflib.get_close_matches(layer, names, n=3)
            hint = (
                f"; did you mean {', '.join(map(repr, close))}?" if close else "; see model.named_modules()"
            )
            raise ValueError(f"`{argument}` {layer!r} is not a submodule of {type_name(model)}{hint}")
        return layer, _hookable(names[layer], layer, argument)
    if isinstance(layer, nn.Module):
        for name, module in model.named_modules():
            if module is layer and name:
                return name, _hookable(module, name, argument)
        raise ValueError(f"`{argument}` ({type_name(layer)}) is not a submodule of `model`")
    raise TypeError(f"`{argument}` must be an nn.Module, a dotted name or None, got {type_name(layer)}")


def _hookable(module: nn.Module, name: str, argument: str) -> nn.Module:
    """``module``, unless its outputs cannot be hooked: a TorchScript module, or one inside a compiled one."""
    if "_orig_mod" in name.split("."):
        compiled = name[: name.index("_orig_mod")].rstrip(".")
        raise ValueError(
            f"`{argument}` {name!r} is inside {compiled!r}, a module compiled with torch.compile: a hook "
            "inside a compiled graph gives autograd no gradient at the layer; explain the uncompiled module "
            "(its `_orig_mod`), or compile the whole model instead (CAMs of torch.compile(model) run "
            "model's own modules)"
        )
    if isinstance(module, torch.jit.ScriptModule):
        raise TypeError(
            f"`{argument}` {name!r} is a TorchScript module ({type_name(module)}): its output cannot be "
            "hooked; choose a layer that is a plain nn.Module (not from torch.jit.script or trace)"
        )
    return module


_DTYPE_MISMATCH = re.compile(r"should be the same|expected scalar type|must have the same dtype")
_SHAPE_MISMATCH = re.compile(
    r"channels|kernel size can't be greater|output size is too small|shapes cannot be multiplied"
    r"|expected all tensors to be on the same device"
)


def translate_forward_error(error: RuntimeError, images: Tensor, model: nn.Module) -> Exception | None:
    """A clear error naming `images` and `model` for torch's errors on mismatched inputs, else ``None``.

    Only the messages torch gives for a wrong dtype, channel count, spatial size or device are translated;
    every other error (out of memory above all) is left to propagate as it is.
    """
    message = str(error)
    reference = next(
        (
            p
            for p in model.parameters()
            if not isinstance(p, nn.parameter.UninitializedParameter) and p.is_floating_point()
        ),
        None,
    )
    expected = "" if reference is None else f" (its parameters are {reference.dtype} on {reference.device})"
    if _DTYPE_MISMATCH.search(message):
        return TypeError(
            f"`images` of dtype {images.dtype} do not match `model`{expected}: convert the images "
            f"(images.to(dtype)) or the model; torch said: {message}"
        )
    if _SHAPE_MISMATCH.search(message.lower()):
        return ValueError(
            f"`model` cannot take `images` of shape {format_shape(images.shape)} on {images.device}"
            f"{expected}: torch said: {message}"
        )
    return None
