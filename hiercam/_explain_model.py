"""The model and method of ``hiercam cam``: a classifier built by name, local weights, a CAM class by name."""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from hiercam._validation import check_int, type_name
from hiercam.cam import METHODS, BaseCAM

__all__ = ["build_model", "find_method", "load_weights"]


def find_method(name: str) -> type[BaseCAM]:
    """The CAM class ``hiercam.cam.METHODS[name]``, ignoring case, ``-`` and ``_`` (``++`` is ``plusplus``).

    Examples:
        >>> find_method("Grad-CAM++").__name__
        'GradCAMPlusPlus'
    """
    if not isinstance(name, str):
        raise TypeError(f"`method` must be a str, got {type_name(name)}")
    key = name.lower().replace("++", "plusplus").replace("-", "").replace("_", "")
    if key not in METHODS:
        close = difflib.get_close_matches(key, list(METHODS), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"`method` must be one of {', '.join(METHODS)}, got {name!r}{hint}")
    return METHODS[key]


def build_model(model: str, *, num_classes: int | None = None) -> nn.Module:
    """A randomly initialised classifier from ``"torchvision:<name>"`` or ``"timm:<name>"``; never downloads.

    Raises:
        ValueError: no ``torchvision:``/``timm:`` prefix, or an unknown name (close matches are listed).
        ImportError: a ``timm:`` model without timm installed.

    Examples:
        >>> type(build_model("torchvision:resnet18", num_classes=3)).__name__
        'ResNet'
    """
    if not isinstance(model, str):
        raise TypeError(f"`model` must be a str such as 'torchvision:resnet50', got {type_name(model)}")
    source, _, name = model.partition(":")
    if num_classes is not None:
        check_int(num_classes, "num_classes", minimum=1)
    extra: dict[str, Any] = {} if num_classes is None else {"num_classes": num_classes}
    if source == "torchvision" and name:
        import torchvision

        known = torchvision.models.list_models(module=torchvision.models)
        _check_name(model, name, known, "torchvision classification model")
        net: nn.Module = torchvision.models.get_model(name, weights=None, **extra)
        return net
    if source == "timm" and name:
        try:
            import timm
        except ImportError as error:
            raise ImportError(f"`model` {model!r} needs timm: pip install 'hiercam[timm]'") from error
        if not timm.is_model(name):  # also takes pretrained tags: "resnet50.a1_in1k"
            _check_name(model, name, timm.list_models(), "timm model")
        built: nn.Module = timm.create_model(name, pretrained=False, **extra)
        return built
    hint = ""
    if source and not name:
        import torchvision

        if source in torchvision.models.list_models(module=torchvision.models):
            hint = f"; did you mean 'torchvision:{source}'?"
    raise ValueError(f"`model` must be 'torchvision:<name>' or 'timm:<name>', got {model!r}{hint}")


def _check_name(model: str, name: str, known: Sequence[str], what: str) -> None:
    if name in known:
        return
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.6)
    hint = f"; close matches: {', '.join(close)}" if close else ""
    raise ValueError(f"`model` {model!r}: {name!r} is not a {what}{hint}")


def load_weights(model: nn.Module, weights: str | os.PathLike[str]) -> None:
    """Load a local state dict into ``model`` after checking its keys and shapes; nothing is executed.

    The file is read with ``torch.load(weights_only=True)``: a pickle that would run code is refused. A
    [`fit`][hiercam.fit] checkpoint (its ``"model"`` entry) or ``{"state_dict": ...}`` is unwrapped.

    Raises:
        ValueError: the file is missing, unreadable, refused, not a state dict, or its keys or shapes do
            not fit ``model`` (the first differences are named).
    """
    name = os.fspath(weights)
    if not Path(name).is_file():
        raise ValueError(f"`weights` {name!r}: no such file")
    try:
        data: Any = torch.load(name, map_location="cpu", weights_only=True)
    except Exception as error:  # a refused pickle, a truncated or foreign file: all the user's file
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(
            f"`weights` {name!r} could not be read with torch.load(weights_only=True): {reason}"
        ) from error
    for wrapper in ("model", "state_dict"):
        if isinstance(data, Mapping) and isinstance(data.get(wrapper), Mapping):
            data = data[wrapper]
    if not isinstance(data, Mapping) or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in data.items()
    ):
        raise ValueError(f"`weights` {name!r} holds a {type_name(data)}, not a state dict of tensors")
    expected = model.state_dict()
    missing = [key for key in expected if key not in data]
    unexpected = [key for key in data if key not in expected]
    wrong = [
        f"{key}: file {tuple(data[key].shape)}, model {tuple(value.shape)}"
        for key, value in expected.items()
        if key in data and data[key].shape != value.shape
    ]
    problems = [
        f"{label} ({len(keys)}): {', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''}"
        for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shapes", wrong))
        if keys
    ]
    if problems:
        hint = " (another --num-classes?)" if wrong and not missing and not unexpected else ""
        raise ValueError(f"`weights` {name!r} does not fit the model: {'; '.join(problems)}{hint}")
    model.load_state_dict(dict(data))
