"""Input and output checks of the CAM engine (once per call, at the boundary)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from hiercam._validation import all_finite, check_finite, check_tensor, format_shape, is_int, type_name
from hiercam.cam._heads import HeadState, LayerArg

__all__ = [
    "MAX_ELEMENTS",
    "check_elements",
    "check_images",
    "check_model",
    "check_parameters",
    "check_size",
    "is_compiled",
    "non_finite_origin",
    "uncompiled",
]

MAX_ELEMENTS = 2**31
"""The most values of a tensor the CAM engine allocates from sizes the caller gives: the output maps
``B * K' * H' * W'`` and ``MultiScaleCAM``'s rescaled images (8 GiB of float32). Beyond it a call is refused
before any allocation; all-class calls warn from 1 GiB of maps on (``MAPS_WARNING_BYTES``)."""


def check_model(model: Any) -> nn.Module:
    """``model`` is an ``nn.Module`` whose layers can be hooked: no TorchScript module (script or trace)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be an nn.Module, got {type_name(model)}")
    if isinstance(model, torch.jit.ScriptModule):
        raise TypeError(
            f"`model` is a TorchScript module ({type_name(model)}, from torch.jit.script or "
            "torch.jit.trace): CAMs hook its layers and take gradients at them, which TorchScript does not "
            "allow; pass the original nn.Module"
        )
    return model


def is_compiled(module: nn.Module) -> bool:
    """Whether ``module`` is the wrapper that ``torch.compile`` returns (``OptimizedModule``).

    Read by its type's name and its ``_orig_mod``, so that ``torch._dynamo`` (slow to import) is not loaded.
    """
    return type(module).__name__ == "OptimizedModule" and isinstance(
        getattr(module, "_orig_mod", None), nn.Module
    )


def uncompiled(
    model: nn.Module, target_layer: LayerArg, classifier: nn.Linear | str | None
) -> tuple[nn.Module, LayerArg, nn.Linear | str | None]:
    """``model``, ``target_layer`` and ``classifier``, the ``torch.compile`` wrapper taken off.

    A forward hook inside a compiled graph records a tensor that autograd cannot differentiate the logits
    by: CAMs of a compiled model run its original module (``_orig_mod``: the same parameters and the same
    function, without the compilation). Dotted names may be given with the wrapper's ``"_orig_mod."`` prefix
    or without (a list of them too); modules are the original's own.
    """
    if not is_compiled(model):
        return model, target_layer, classifier
    original: nn.Module = model._orig_mod  # type: ignore[assignment]
    return original, _strip_prefix(target_layer), _strip_prefix(classifier)


def _strip_prefix(name: Any) -> Any:
    if isinstance(name, str):
        return name.removeprefix("_orig_mod.")
    if isinstance(name, (list, tuple)):
        return type(name)(_strip_prefix(item) for item in name)
    return name


def check_parameters(model: nn.Module) -> None:
    """``model`` holds data: no parameter or buffer on the meta device (checked at every call)."""
    if any(t.is_meta for t in model.parameters()) or any(t.is_meta for t in model.buffers()):
        raise ValueError(
            "`model` has parameters on the meta device (shapes without data, e.g. built under "
            "torch.device('meta')): load its weights first (model.to_empty(device=...) and "
            "load_state_dict)"
        )


def check_elements(count: int, argument: str, what: str, advice: str) -> None:
    """Refuse a tensor of ``count`` values above ``MAX_ELEMENTS``, naming the ``argument`` that sized it.

    Examples:
        >>> check_elements(60000 * 60000, "size", "one 60000x60000 map", "pass a smaller `size`")
        Traceback (most recent call last):
        ...
        ValueError: `size`: one 60000x60000 map would hold 3,600,000,000 values (13.4 GiB of float32), ...
    """
    if count > MAX_ELEMENTS:
        raise ValueError(
            f"`{argument}`: {what} would hold {count:,} values ({count * 4 / 2**30:.1f} GiB of float32), "
            f"more than the bound of {MAX_ELEMENTS:,} (8 GiB); {advice}"
        )


def check_images(images: Any) -> None:
    """``images`` is a non-empty, finite ``(B, C, H, W)`` floating-point batch (one ``aminmax`` pass).

    The finiteness is a value check (``hiercam.set_checks``), skipped too for images a caller marked with
    ``values_checked`` (``MultiScaleCAM``'s resized and mirrored copies of checked images).
    """
    check_tensor(images, "images", dims="B, C, H, W", floating=True)
    if images.is_meta:
        raise ValueError(
            "`images` are meta tensors (shapes without data): CAMs need the pixel values; pass images on "
            "a real device"
        )
    if images.numel() == 0:
        raise ValueError(
            f"`images` must hold at least one image of positive size, got shape {format_shape(images.shape)}"
        )
    check_finite(images, "images")


def non_finite_origin(head: HeadState, features: Tensor, gradients: Tensor) -> str:
    """Which tensor made a head's maps non-finite (computed only on failure)."""
    if not all_finite(features):
        return f"the output of `target_layer` {head.name!r} holds NaN or infinite values for finite `images`"
    if not all_finite(gradients):
        return (
            f"the gradients of the logits with respect to `target_layer` {head.name!r} hold NaN or infinite "
            "values for finite `images`"
        )
    return f"the maps of `target_layer` {head.name!r} overflow float32"


def check_size(size: Any, images: Tensor) -> tuple[int, int] | None:
    """The output size ``(H, W)`` the ``size`` argument asks for, or ``None`` for the feature size.

    An explicit size is bounded: one map per image, ``B * H * W``, must not exceed ``MAX_ELEMENTS``.
    """
    if isinstance(size, str) and size == "input":
        return int(images.shape[-2]), int(images.shape[-1])
    if isinstance(size, str) and size == "feature":
        return None
    if isinstance(size, tuple) and len(size) == 2 and all(is_int(s) and int(s) > 0 for s in size):
        height, width = int(size[0]), int(size[1])
        what = f"one {height}x{width} map per image"
        check_elements(int(images.shape[0]) * height * width, "size", what, "pass a smaller `size`")
        return height, width
    raise ValueError(f"`size` must be 'input', 'feature' or a (H, W) tuple of positive ints, got {size!r}")
