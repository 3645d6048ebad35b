"""The model factory: a classifier built by name, and local weights loaded into it after checks.

One spelling of model names, taken by the pipeline's ``model.backbone`` and by ``hiercam cam --model``:

| name | model |
| --- | --- |
| ``"resnet50"``, ``"mobilenet_v2"``, ... | the classification model of ``torchvision.models`` of that name |
| ``"timm:<name>"``, e.g. ``"timm:resnet50"`` | the timm model of that name (needs ``hiercam[timm]``) |

A torchvision name has no prefix: ``"torchvision:resnet50"`` is refused with a pointer to ``"resnet50"``.
torchvision is imported only when a torchvision name is checked or built; timm only for a ``timm:`` name.
The pipeline also takes ``"small_convnet"``, its own CPU backbone
([`SmallConvNet`][hiercam.SmallConvNet]), which has no classifier and so is not a name of this factory.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from hiercam._validation import check_int, type_name

__all__ = ["TIMM_PREFIX", "build_model", "check_model_name", "load_weights"]

TIMM_PREFIX = "timm:"
"""The prefix of timm model names; torchvision names have none."""


def check_model_name(name: str, *, argument: str = "model") -> None:
    """Check that ``name`` is a model that [`build_model`][hiercam.models.build_model] can build.

    Nothing is built and nothing is downloaded: the name is looked up in torchvision's list of classification
    models, or in timm's for a ``timm:`` name.

    Args:
        name: a torchvision classification model, named without a prefix (``"resnet50"``), or
            ``"timm:<name>"`` (``"timm:resnet50"``).
        argument: how error messages call ``name``, e.g. ``"model.backbone"`` for a config key.

    Raises:
        TypeError: ``name`` is not a str.
        ValueError: an unknown name (its close matches are listed), a prefix other than ``timm:``, or an
            empty name.
        ImportError: a ``timm:`` name without timm installed.

    Examples:
        >>> check_model_name("resnet18")
        >>> check_model_name("resnet1")
        Traceback (most recent call last):
            ...
        ValueError: `model` 'resnet1' is not a torchvision classification model; close matches: resnet18, ...
    """
    if not isinstance(name, str):
        raise TypeError(
            f"`{argument}` must be a str such as 'resnet50' or 'timm:resnet50', got {type_name(name)}"
        )
    if not name.strip():
        raise ValueError(f"`{argument}` must name a model, such as 'resnet50' or 'timm:resnet50', got ''")
    if name.startswith(TIMM_PREFIX):
        timm = _import_timm(name, argument)
        timm_name = name[len(TIMM_PREFIX) :]
        if not timm_name or not timm.is_model(timm_name):  # is_model also takes tags: "resnet50.a1_in1k"
            _refuse(name, timm_name, timm.list_models(), "a timm model", argument)
        return
    prefix, colon, rest = name.partition(":")
    if colon:
        hint = f"; did you mean {rest!r}?" if prefix == "torchvision" and rest else ""
        raise ValueError(
            f"`{argument}` {name!r}: the only prefix is 'timm:' (torchvision models are named without one, "
            f"e.g. 'resnet50'){hint}"
        )
    import torchvision

    known = torchvision.models.list_models(module=torchvision.models)
    if name not in known:
        _refuse(name, name, known, "a torchvision classification model", argument)


def build_model(name: str, *, num_classes: int | None = None, pretrained: bool = False) -> nn.Module:
    """Build the classifier that ``name`` names: images ``(B, 3, H, W)`` to logits ``(B, K)``.

    Args:
        name: a torchvision classification model (``"resnet50"``) or ``"timm:<name>"``; checked by
            [`check_model_name`][hiercam.models.check_model_name].
        num_classes: ``K``, the classes of the new classifier head; ``None`` keeps the library's default
            (1000, ImageNet's).
        pretrained: start from the library's ImageNet weights (torchvision's ``"DEFAULT"`` weights, timm's
            ``pretrained=True``), which the library downloads into its cache on first use. ``False`` (the
            default): random initialisation, nothing downloaded; load a local file with
            [`load_weights`][hiercam.models.load_weights].

    Returns:
        A new ``nn.Module`` in training mode.

    Raises:
        TypeError: ``name`` is not a str, ``num_classes`` not an int or ``pretrained`` not a bool.
        ValueError: an unknown name (see ``check_model_name``), ``num_classes`` below 1, or ``pretrained``
            with ``num_classes`` (the pretrained head has its own classes).
        ImportError: a ``timm:`` name without timm installed.

    Examples:
        >>> import torch
        >>> net = build_model("resnet18", num_classes=3)
        >>> type(net).__name__, net(torch.zeros(2, 3, 64, 64)).shape
        ('ResNet', torch.Size([2, 3]))
    """
    check_model_name(name)
    if num_classes is not None:
        check_int(num_classes, "num_classes", minimum=1)
    if not isinstance(pretrained, bool):
        raise TypeError(f"`pretrained` must be a bool, got {type_name(pretrained)}")
    if pretrained and num_classes is not None:
        raise ValueError(
            f"`pretrained` weights come with their own classifier head: leave `num_classes` out "
            f"(got num_classes={num_classes}), or load a local file that fits with `load_weights`"
        )
    extra: dict[str, Any] = {} if num_classes is None else {"num_classes": num_classes}
    if name.startswith(TIMM_PREFIX):
        timm = _import_timm(name, "model")
        built: nn.Module = timm.create_model(name[len(TIMM_PREFIX) :], pretrained=pretrained, **extra)
        return built
    import torchvision

    net: nn.Module = torchvision.models.get_model(name, weights="DEFAULT" if pretrained else None, **extra)
    return net


def _import_timm(name: str, argument: str) -> Any:
    try:
        import timm
    except ImportError as error:
        raise ImportError(f"`{argument}` {name!r} needs timm: pip install 'hiercam[timm]'") from error
    return timm


def _refuse(name: str, looked_up: str, known: Sequence[str], what: str, argument: str) -> None:
    close = difflib.get_close_matches(looked_up, known, n=5, cutoff=0.6)
    hint = f"; close matches: {', '.join(close)}" if close else ""
    if not name.startswith(TIMM_PREFIX) and _is_timm_model(name):
        hint = f"; did you mean {TIMM_PREFIX + name!r}?"
    raise ValueError(f"`{argument}` {name!r} is not {what}{hint}")


def _is_timm_model(name: str) -> bool:
    """Whether timm is installed and has a model ``name`` (for the hint of a torchvision name)."""
    try:
        import timm
    except ImportError:
        return False
    return bool(timm.is_model(name))


def load_weights(model: nn.Module, weights: str | os.PathLike[str], *, argument: str = "weights") -> None:
    """Load a local state dict into ``model`` after checking its keys and shapes; nothing is executed.

    The file is read with ``torch.load(weights_only=True)``: a pickle that would run code is refused. A
    [`fit`][hiercam.fit] checkpoint (its ``"model"`` entry) or ``{"state_dict": ...}`` is unwrapped. Every
    key and shape is compared with ``model.state_dict()`` before ``model`` is touched: a file that does not
    fit leaves ``model`` as it was.

    Args:
        model: the network to load into (e.g. from [`build_model`][hiercam.models.build_model]).
        weights: path of the file.
        argument: how error messages call ``weights``, e.g. ``"model.weights"`` for a config key.

    Raises:
        ValueError: the file is missing, unreadable, refused, not a state dict, or its keys or shapes do
            not fit ``model`` (the first differences are named).

    Examples:
        >>> import tempfile, torch
        >>> path = tempfile.mkdtemp() + "/linear.pt"
        >>> torch.save(torch.nn.Linear(2, 3).state_dict(), path)
        >>> net = torch.nn.Linear(2, 3)
        >>> load_weights(net, path)
        >>> load_weights(torch.nn.Linear(2, 4), path)
        Traceback (most recent call last):
            ...
        ValueError: `weights` '...linear.pt' does not fit the model: shapes (2): weight: file (3, 2), ...
    """
    name = os.fspath(weights)
    if not Path(name).is_file():
        raise ValueError(f"`{argument}` {name!r}: no such file")
    try:
        data: Any = torch.load(name, map_location="cpu", weights_only=True)
    except Exception as error:  # a refused pickle, a truncated or foreign file: all the user's file
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(
            f"`{argument}` {name!r} could not be read with torch.load(weights_only=True): {reason}"
        ) from error
    for wrapper in ("model", "state_dict"):
        if isinstance(data, Mapping) and isinstance(data.get(wrapper), Mapping):
            data = data[wrapper]
    if not isinstance(data, Mapping) or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in data.items()
    ):
        raise ValueError(f"`{argument}` {name!r} holds a {type_name(data)}, not a state dict of tensors")
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
        hint = " (another number of classes?)" if wrong and not missing and not unexpected else ""
        raise ValueError(f"`{argument}` {name!r} does not fit the model: {'; '.join(problems)}{hint}")
    model.load_state_dict(dict(data))
