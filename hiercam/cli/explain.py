"""Class activation maps of image files: the logic of the ``hiercam cam`` command, testable without argparse.

[`explain_images`][hiercam.cli.explain.explain_images] reads image files, builds a torchvision or timm
classifier with the model factory ([`build_model`][hiercam.models.build_model]: random init, or a local state
dict read by [`load_weights`][hiercam.models.load_weights] with ``torch.load(weights_only=True)``: nothing is
downloaded), computes the maps of the requested or top-predicted classes with any method of
``hiercam.cam.METHODS`` ([`find_method`][hiercam.cli.explain.find_method]), and writes, per image, the raw
maps (``.pt``), one overlay PNG per class and a ``summary.json``. Every input is checked (all image files
first) before the model does any work.
"""

from __future__ import annotations

import difflib
import inspect
import json
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, get_args

import torch
from torch import Tensor, nn

from hiercam._io import atomic_write_json, check_out_dir
from hiercam._validation import check_choice, check_int, check_scales, type_name
from hiercam.cam import METHODS, BaseCAM, MultiScaleCAM
from hiercam.cli._args import eigen_smooth_methods, one_line
from hiercam.cli._files import (
    check_images,
    expand_images,
    read_class_names,
    read_image,
    unique_stems,
    write_outputs,
)
from hiercam.datasets.images import MAX_IMAGE_SIDE
from hiercam.maps import NormalizeMode
from hiercam.models import InputNorm, build_model, load_weights

__all__ = ["MAX_OVERLAY_SIDE", "ExplainedImage", "explain_images", "find_method"]

#: The longest side, in pixels, of the image an overlay PNG is drawn on: a larger photo is scaled down first
#: (aspect ratio kept), since drawing a 10000 x 10000 photo in full takes gigabytes of memory.
MAX_OVERLAY_SIDE = 2048


@dataclass(frozen=True)
class ExplainedImage:
    """What was written for one image.

    Attributes:
        image: the image file.
        maps: the ``.pt`` file: ``{"maps": (K', H, W) float32, "classes": (K',) int64, "scores": (K',)
            float32 logits, "image": str, "model": str, "method": str, "target_layer": str}``.
        overlays: one PNG per class, in the order of ``classes`` (empty without overlays).
        classes: the explained class indices (K'), highest score first for ``top_k``.
        scores: the logits of those classes.
        names: the names of those classes, from ``class_names`` (``None`` without it).
    """

    image: str
    maps: str
    overlays: list[str]
    classes: list[int]
    scores: list[float]
    names: list[str] | None = None


def explain_images(
    images: Sequence[str | os.PathLike[str]],
    model: str,
    out: str | os.PathLike[str],
    *,
    weights: str | os.PathLike[str] | None = None,
    num_classes: int | None = None,
    layer: str | Sequence[str] | None = None,
    method: str = "gradcam",
    classes: Sequence[int] | None = None,
    top_k: int | None = None,
    size: int | Sequence[int] = 224,
    input_norm: InputNorm = "imagenet",
    normalize: NormalizeMode | None = "max",
    overlays: bool = True,
    device: str | torch.device | None = None,
    class_names: str | os.PathLike[str] | Sequence[str] | None = None,
    eigen_smooth: bool = False,
    scales: Sequence[float] | None = None,
    method_options: Mapping[str, Any] | None = None,
) -> list[ExplainedImage]:
    """Compute and save the class activation maps of image files.

    ``images`` may name files, folders (their files, not recursive) and glob patterns (``"photos/*.jpg"``,
    ``"data/**/*.png"``); files of a folder or pattern that are not images (by suffix) are skipped and listed
    in ``summary.json`` (``"skipped"``); a file named directly must be a readable image. Each image is read
    by [`load_image`][hiercam.datasets.load_image] (PIL, turned upright by its EXIF orientation, converted to
    RGB, resized to ``size`` bilinearly, no crop, scaled by ``input_norm``) and explained on its own (batch of
    one): the classes are ``classes`` or the ``top_k`` highest logits of that image. Written to ``out``:
    ``<stem>.pt`` (see [`ExplainedImage`][hiercam.cli.explain.ExplainedImage]), ``<stem>_<class>.png``
    (the map over the original image, at the image's own size, scaled down to at most ``MAX_OVERLAY_SIDE``
    = 2048 pixels on its longer side) and ``summary.json``. Images sharing a stem
    get ``-2``, ``-3``... suffixes.

    Args:
        images: image files (any format PIL reads), folders or glob patterns.
        model: a classification model of ``torchvision.models`` (``"resnet50"``) or ``"timm:<name>"``
            (needs timm), built by [`build_model`][hiercam.models.build_model] with ``pretrained=False``.
        out: output folder (created if missing).
        weights: a local state dict file (a ``fit`` checkpoint or ``{"state_dict": ...}`` also work) whose
            keys and shapes fit the model; ``None`` keeps the random initialisation (with a warning).
        num_classes: number of classes of the model (default: the library's, 1000 for ImageNet models).
        layer: dotted name of the target layer, several names (their maps averaged, as pytorch-grad-cam's
            ``target_layers``), or ``None`` to let the engine choose.
        method: a key of ``hiercam.cam.METHODS`` (case, ``-`` and ``_`` ignored; ``++`` = ``plusplus``).
        classes: class indices explained in every image; exclusive with ``top_k``.
        top_k: explain the ``top_k`` highest-scoring classes of each image (default 1).
        size: network input size, an int (square) or ``(H, W)``, 8 to 4096 pixels a side
            (``hiercam.datasets.images.MAX_IMAGE_SIDE``); the model must accept it (a ViT of fixed size only
            takes its own).
        input_norm: pixel scaling, see [`InputNorm`][hiercam.models.InputNorm].
        normalize: rescaling of the saved maps (``"max"``, ``"minmax"`` or ``None``).
        overlays: write the overlay PNGs (needs matplotlib: ``pip install 'hiercam[viz]'``).
        device: where the model runs: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"``, available on this
            machine (default: CUDA if available, else the CPU).
        class_names: the model's class names, one per class: a list, or a file holding a JSON list or one
            name per line; they go to the records and ``summary.json``.
        eigen_smooth: the method's ``eigen_smooth`` (the first principal component of its weighted
            activations; see [`BaseCAM`][hiercam.BaseCAM]); refused by the methods that do not take it
            (EigenCAM, EigenGradCAM, KPCA-CAM, the guided methods).
        scales: ``None`` for one pass, or image scales for IRN's test-time augmentation
            ([`MultiScaleCAM`][hiercam.MultiScaleCAM]: each scale with its mirror image, the raw maps
            averaged), e.g. ``IRN_SCALES`` ``(1.0, 0.5, 1.5, 2.0)``; the classes are chosen on the unscaled
            image as without it.
        method_options: more keyword arguments of the method's constructor, by name, e.g.
            ``{"comparisons": [1, 2], "alpha": 0.8}`` for FinerCAM or ``{"batch_size": 16}`` for Score-CAM;
            a string for an option named ``method`` (FinerCAM's base method) is a method's name, looked up
            as ``method`` is. The constructor checks the values. Recorded in ``summary.json`` (a value that
            JSON cannot hold as its ``repr``, a class as its name).

    Returns:
        One record per image, in the order of ``images``.

    Raises:
        ValueError: unreadable or missing image files (all listed, before the model is built), an unknown
            model, method or layer (with close matches), a weights file that is not a fitting state dict,
            out-of-range ``classes``/``top_k``/``size``, both ``classes`` and ``top_k``, a ``size`` the model
            cannot take, an unknown or unavailable ``device``, an ``out`` that is a file or inside one,
            ``eigen_smooth`` with a method that does not take it, empty or non-positive ``scales``, a
            ``method_options`` name the method's constructor does not take (or one with its own argument:
            ``model``, ``target_layer``, ``eigen_smooth``); a value the constructor refuses raises its
            error once the model is built, before any image is read.
        TypeError: arguments of the wrong type.
        ImportError: ``overlays=True`` without matplotlib, or a ``timm:`` model without timm.

    Examples:
        >>> import tempfile, warnings
        >>> from pathlib import Path
        >>> from PIL import Image
        >>> folder = Path(tempfile.mkdtemp())
        >>> Image.new("RGB", (48, 32), "red").save(folder / "red.png")
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("ignore")  # no weights: random init
        ...     done = explain_images([folder / "red.png"], "resnet18", folder / "out",
        ...                           num_classes=5, size=64, top_k=2, overlays=False)
        >>> torch.load(done[0].maps, weights_only=True)["maps"].shape
        torch.Size([2, 64, 64])
    """
    options = _check_options(classes, top_k, size, input_norm, normalize, overlays)
    out_dir = check_out_dir(out, "out")
    target = _check_device(device)
    cam_type = find_method(method)
    smoothing = _check_eigen_smooth(eigen_smooth, cam_type)
    constructor_options = _check_method_options(method_options, cam_type)
    if smoothing:
        constructor_options["eigen_smooth"] = True
    passes = None if scales is None else check_scales(scales)
    names = _check_class_names(class_names)
    files, skipped = expand_images(images)
    check_images(files)
    net = build_model(model, num_classes=num_classes)
    if weights is not None:
        load_weights(net, weights)
    else:
        warnings.warn(
            f"no weights given: {model} has random weights and its maps mean nothing",
            UserWarning,
            stacklevel=2,
        )
    layers: list[str] = [] if layer is None else [layer] if isinstance(layer, str) else list(layer)
    for name in layers:
        _check_layer(net, name)
    net = net.to(target).eval()
    records: list[ExplainedImage] = []
    chosen_layers = None if not layers else layers[0] if len(layers) == 1 else layers
    extractor: BaseCAM = cam_type(net, chosen_layers, **constructor_options)
    explain = extractor if passes is None else MultiScaleCAM(extractor, passes)
    with extractor:
        for path, stem in zip(files, unique_stems(files), strict=True):
            original, x = read_image(path, options.size, input_norm, MAX_OVERLAY_SIDE)
            chosen, scores = _classes_for(net, x.to(target), options.classes, options.top_k, names)
            maps = explain(x.to(target), chosen, normalize=normalize)[0].float().cpu()
            info = {"image": str(path), "model": model, "method": cam_type.__name__}
            info["target_layer"] = str(extractor.target_layer)
            maps_file, pictures = write_outputs(out_dir, stem, original, maps, chosen, scores, info, overlays)
            named = None if names is None else [names[k] for k in chosen]
            records.append(ExplainedImage(info["image"], maps_file, pictures, chosen, scores, named))
        summary = {
            "model": model,
            "weights": None if weights is None else os.fspath(weights),
            "method": cam_type.__name__,
            "target_layer": extractor.target_layer,
            "target_layers": extractor.target_layers,
            "size": list(options.size),
            "input_norm": input_norm,
            "normalize": normalize,
            "eigen_smooth": eigen_smooth,
            "method_options": _recordable(method_options or {}),
            "scales": None if passes is None else list(passes),
            "images": [asdict(record) for record in records],
            "skipped": [os.fspath(path) for path in skipped],
        }
    atomic_write_json(out_dir / "summary.json", summary)
    return records


def _check_eigen_smooth(eigen_smooth: bool, cam_type: type[BaseCAM]) -> bool:
    """``eigen_smooth``, checked: a bool, refused with a method whose constructor does not take it."""
    if not isinstance(eigen_smooth, bool):
        raise TypeError(f"`eigen_smooth` must be a bool, got {type_name(eigen_smooth)}")
    if not eigen_smooth:
        return False
    if "eigen_smooth" not in inspect.signature(cam_type).parameters:
        raise ValueError(
            f"`eigen_smooth` is not taken by {cam_type.__name__}; the methods that take it: "
            f"{', '.join(eigen_smooth_methods())}"
        )
    return True


#: The constructor arguments that ``explain_images`` sets itself.
_OWN_ARGUMENTS = {
    "model": "model",
    "target_layer": "layer",
    "target_layers": "layer",
    "eigen_smooth": "eigen_smooth",
}


def _check_method_options(options: Mapping[str, Any] | None, cam_type: type[BaseCAM]) -> dict[str, Any]:
    """``method_options`` checked against the constructor of ``cam_type``; a ``method`` name looked up."""
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise TypeError(
            f"`method_options` must be a mapping of option names to values, got {type_name(options)}"
        )
    parameters = inspect.signature(cam_type).parameters
    accepted = sorted(name for name in parameters if name not in _OWN_ARGUMENTS)
    checked: dict[str, Any] = {}
    for name, value in options.items():
        if not isinstance(name, str):
            raise TypeError(f"`method_options` names must be str, got {type_name(name)}")
        if name in _OWN_ARGUMENTS:
            raise ValueError(f"`method_options` cannot set {name!r}: use `{_OWN_ARGUMENTS[name]}`")
        if name not in parameters:
            raise ValueError(
                f"`method_options`: {cam_type.__name__} takes no option {name!r}; its options: "
                f"{', '.join(accepted) or 'none'}"
            )
        checked[name] = find_method(value) if name == "method" and isinstance(value, str) else value
    return checked


def _recordable(options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` as ``summary.json`` records them: JSON values kept, a class by its name, else its repr."""
    recorded: dict[str, Any] = {}
    for name, value in options.items():
        if isinstance(value, type):
            recorded[name] = value.__name__
            continue
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError):
            recorded[name] = repr(value)
        else:
            recorded[name] = value
    return recorded


@dataclass(frozen=True)
class _Options:
    classes: list[int] | None
    top_k: int
    size: tuple[int, int]


def _check_options(
    classes: Sequence[int] | None,
    top_k: int | None,
    size: int | Sequence[int],
    input_norm: InputNorm,
    normalize: NormalizeMode | None,
    overlays: bool,
) -> _Options:
    if classes is not None and top_k is not None:
        raise ValueError(f"give either `classes` or `top_k`, not both (got classes={classes}, top_k={top_k})")
    chosen = None
    if classes is not None:
        if not isinstance(classes, (list, tuple)):
            raise TypeError(f"`classes` must be a sequence of ints, got {type_name(classes)}")
        chosen = [check_int(k, "classes", minimum=0) for k in classes]
        if not chosen:
            raise ValueError("`classes` must name at least one class, got an empty sequence")
        repeated = sorted({k for k in chosen if chosen.count(k) > 1})
        if repeated:
            raise ValueError(f"`classes` must not repeat a class, got {repeated[0]} more than once")
    top_k = check_int(1 if top_k is None else top_k, "top_k", minimum=1)
    given: list[Any] = list(size) if isinstance(size, (list, tuple)) else [size]
    if len(given) not in (1, 2):
        raise ValueError(f"`size` must be one int or (H, W), got {len(given)} values")
    sizes = [check_int(s, "size", minimum=8, maximum=MAX_IMAGE_SIDE) for s in given]
    check_choice(input_norm, "input_norm", get_args(InputNorm))
    check_choice(normalize, "normalize", ("max", "minmax", None))
    if overlays:
        try:
            import matplotlib  # noqa: F401
        except ImportError as error:
            raise ImportError(
                "the overlay PNGs need matplotlib: pip install 'hiercam[viz]' (or write only the maps: "
                "`overlays=False`, option --no-overlay)"
            ) from error
    return _Options(chosen, top_k, (sizes[0], sizes[-1]))


def find_method(name: str) -> type[BaseCAM]:
    """The CAM class ``hiercam.cam.METHODS[name]``, ignoring case, ``-`` and ``_`` (``++`` is ``plusplus``).

    Args:
        name: a method's name, e.g. ``"gradcam"``, ``"Grad-CAM++"``, ``"layer_cam"``.

    Returns:
        The CAM class.

    Raises:
        TypeError: ``name`` is not a str.
        ValueError: no method of that name (the close matches are suggested).

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


def _check_layer(model: nn.Module, layer: str) -> None:
    names = [name for name, _ in model.named_modules() if name]
    if layer not in names:
        close = difflib.get_close_matches(layer, names, n=5)
        hint = f"; close matches: {', '.join(close)}" if close else ""
        raise ValueError(f"`layer` {layer!r} is not a submodule of the model{hint}")


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _check_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return _default_device()
    try:
        target = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(
            f"`device` must be a torch device such as 'cpu' or 'cuda', got {device!r}"
        ) from error
    if target.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"`device` must be 'cpu', 'cuda', 'cuda:N' or 'mps', got {device!r}")
    if target.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"`device` is {device!r} but CUDA is not available")
    if target.type == "cuda" and target.index is not None and target.index >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise ValueError(f"`device` is {device!r} but this machine has {count} CUDA devices")
    if target.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"`device` is {device!r} but MPS is not available")
    return target


def _check_class_names(class_names: str | os.PathLike[str] | Sequence[str] | None) -> list[str] | None:
    if class_names is None:
        return None
    if isinstance(class_names, (str, os.PathLike)):
        return read_class_names(class_names)
    if not isinstance(class_names, Sequence) or not all(isinstance(n, str) for n in class_names):
        raise TypeError(f"`class_names` must be a file or a sequence of str, got {type_name(class_names)}")
    return list(class_names)


def _classes_for(
    model: nn.Module, x: Tensor, classes: list[int] | None, top_k: int, names: list[str] | None = None
) -> tuple[list[int], list[float]]:
    """The classes to explain for one image and their logits, range-checked against the model's output."""
    try:
        with torch.no_grad():
            logits = model(x)
    except (AssertionError, RuntimeError) as error:  # e.g. timm's ViT of fixed size: "Input height (80) ..."
        if isinstance(error, torch.cuda.OutOfMemoryError):
            raise
        size = " x ".join(map(str, x.shape[-2:]))
        raise ValueError(
            f"`size`: the model cannot take {size} images (it raised {type(error).__name__}: "
            f"{one_line(error)}); pass a size it accepts"
        ) from error
    if not isinstance(logits, Tensor) or logits.ndim != 2:
        found = tuple(logits.shape) if isinstance(logits, Tensor) else type_name(logits)
        raise ValueError(f"`model` must return logits (B, K), got {found}")
    num_classes = logits.shape[1]
    if names is not None and len(names) != num_classes:
        raise ValueError(
            f"`class_names` must hold one name per class of the model ({num_classes}), got {len(names)}"
        )
    if classes is None:
        if top_k > num_classes:
            raise ValueError(
                f"`top_k` must be <= {num_classes} (the model has {num_classes} classes), got {top_k}"
            )
        values, indices = logits[0].float().topk(top_k)
        return indices.tolist(), values.tolist()
    outside = [k for k in classes if k >= num_classes]
    if outside:
        raise ValueError(
            f"`classes` must be class indices in [0, {num_classes}), got {outside[0]} "
            f"(the model has {num_classes} classes)"
        )
    return classes, logits[0, classes].float().tolist()
