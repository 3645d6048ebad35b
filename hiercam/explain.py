"""Class activation maps of image files: the logic of the ``hiercam cam`` command, testable without argparse.

[`explain_images`][hiercam.explain.explain_images] reads image files, builds a torchvision or timm classifier
(random init, or a local state dict read with ``torch.load(weights_only=True)``: nothing is downloaded),
computes the maps of the requested or top-predicted classes with any method of ``hiercam.cam.METHODS``, and
writes, per image, the raw maps (``.pt``), one overlay PNG per class and a ``summary.json``. Every input is
checked (all image files first) before the model does any work.
"""

from __future__ import annotations

import difflib
import io
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from hiercam._io import atomic_write, atomic_write_json
from hiercam._validation import check_choice, check_int, type_name
from hiercam.cam import METHODS, BaseCAM
from hiercam.maps import NormalizeMode

__all__ = ["InputNorm", "ExplainedImage", "explain_images", "build_model", "load_weights", "find_method"]

InputNorm = Literal["imagenet", "tanh", "none"]
"""Pixel scaling for the model: ImageNet mean/std on [0, 1], ``x / 127.5 - 1`` on 0..255, or [0, 1]."""

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_SOURCES = ("torchvision", "timm")


@dataclass(frozen=True)
class ExplainedImage:
    """What was written for one image.

    Attributes:
        image: the image file.
        maps: the ``.pt`` file: ``{"maps": (K', H, W) float32, "classes": (K',) int64, "scores": (K',)
            float32 logits, "image": str, "model": str, "method": str, "target_layer": str}``.
        overlays: one PNG per class, in the order of ``classes`` (empty without overlays).
        classes: the explained class indices (K'), highest score first for ``top``.
        scores: the logits of those classes.
    """

    image: str
    maps: str
    overlays: list[str]
    classes: list[int]
    scores: list[float]


def explain_images(
    images: Sequence[str | os.PathLike[str]],
    model: str,
    out: str | os.PathLike[str],
    *,
    weights: str | os.PathLike[str] | None = None,
    num_classes: int | None = None,
    layer: str | None = None,
    method: str = "gradcam",
    classes: Sequence[int] | None = None,
    top: int | None = None,
    size: int | Sequence[int] = 224,
    input_norm: InputNorm = "imagenet",
    normalize: NormalizeMode | None = "max",
    overlays: bool = True,
    device: str | torch.device | None = None,
) -> list[ExplainedImage]:
    """Compute and save the class activation maps of image files.

    Each image is read with PIL, turned upright (EXIF orientation), converted to RGB, resized to ``size``
    (bilinear, no crop), scaled by ``input_norm`` and explained on its own (batch of one): the classes are
    ``classes`` or the ``top`` highest logits of that image. Written to ``out``: ``<stem>.pt`` (see
    [`ExplainedImage`][hiercam.explain.ExplainedImage]), ``<stem>_<class>.png`` (the map over the original
    image, at the image's own size) and ``summary.json``. Images sharing a stem get ``-2``, ``-3``...
    suffixes.

    Args:
        images: image files (any format PIL reads).
        model: ``"torchvision:<name>"`` (a classification model of ``torchvision.models``) or
            ``"timm:<name>"`` (needs timm; built with ``pretrained=False``).
        out: output folder (created if missing).
        weights: a local state dict file (a ``fit`` checkpoint or ``{"state_dict": ...}`` also work) whose
            keys and shapes fit the model; ``None`` keeps the random initialisation (with a warning).
        num_classes: number of classes of the model (default: the library's, 1000 for ImageNet models).
        layer: dotted name of the target layer; ``None`` lets the engine choose.
        method: a key of ``hiercam.cam.METHODS`` (case, ``-`` and ``_`` ignored; ``++`` = ``plusplus``).
        classes: class indices explained in every image; exclusive with ``top``.
        top: explain the ``top`` highest-scoring classes of each image (default 1).
        size: network input size, an int (square) or ``(H, W)``.
        input_norm: pixel scaling, see ``InputNorm``.
        normalize: rescaling of the saved maps (``"max"``, ``"minmax"`` or ``None``).
        overlays: write the overlay PNGs (needs matplotlib: ``pip install 'hiercam[viz]'``).
        device: where the model runs (default: CUDA if available, else the CPU).

    Returns:
        One record per image, in the order of ``images``.

    Raises:
        ValueError: unreadable or missing image files (all listed, before the model is built), an unknown
            model, method or layer (with close matches), a weights file that is not a fitting state dict,
            out-of-range ``classes``/``top``, both ``classes`` and ``top``.
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
        ...     done = explain_images([folder / "red.png"], "torchvision:resnet18", folder / "out",
        ...                           num_classes=5, size=64, top=2, overlays=False)
        >>> torch.load(done[0].maps, weights_only=True)["maps"].shape
        torch.Size([2, 64, 64])
    """
    options = _check_options(classes, top, size, input_norm, normalize, overlays)
    target = _check_device(device)
    cam_type = find_method(method)
    files = _check_images(images)
    net = build_model(model, num_classes=num_classes)
    if weights is not None:
        load_weights(net, weights)
    else:
        warnings.warn(
            f"no weights given: {model} has random weights and its maps mean nothing",
            UserWarning,
            stacklevel=2,
        )
    if layer is not None:
        _check_layer(net, layer)
    net = net.to(target).eval()
    out_dir = Path(out)
    records: list[ExplainedImage] = []
    extractor: BaseCAM = cam_type(net, layer)
    with extractor:
        for path, stem in zip(files, _unique_stems(files), strict=True):
            original, x = _load(path, options.size, input_norm)
            chosen, scores = _classes_for(net, x.to(target), options.classes, options.top)
            maps = extractor(x.to(target), chosen, normalize=normalize)[0].float().cpu()
            info = {"image": str(path), "model": model, "method": cam_type.__name__}
            info["target_layer"] = str(extractor.target_layer)
            records.append(_write(out_dir, stem, original, maps, chosen, scores, info, overlays))
        summary = {
            "model": model,
            "weights": None if weights is None else os.fspath(weights),
            "method": cam_type.__name__,
            "target_layer": extractor.target_layer,
            "size": list(options.size),
            "input_norm": input_norm,
            "normalize": normalize,
            "images": [asdict(record) for record in records],
        }
    atomic_write_json(out_dir / "summary.json", summary)
    return records


@dataclass(frozen=True)
class _Options:
    classes: list[int] | None
    top: int
    size: tuple[int, int]


def _check_options(
    classes: Sequence[int] | None,
    top: int | None,
    size: int | Sequence[int],
    input_norm: str,
    normalize: NormalizeMode | None,
    overlays: bool,
) -> _Options:
    if classes is not None and top is not None:
        raise ValueError(f"give either `classes` or `top`, not both (got classes={classes}, top={top})")
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
    top = check_int(1 if top is None else top, "top", minimum=1)
    given: list[Any] = list(size) if isinstance(size, (list, tuple)) else [size]
    if len(given) not in (1, 2):
        raise ValueError(f"`size` must be one int or (H, W), got {len(given)} values")
    sizes = [check_int(s, "size", minimum=8) for s in given]
    check_choice(input_norm, "input_norm", ("imagenet", "tanh", "none"))
    check_choice(normalize, "normalize", ("max", "minmax", None))
    if overlays:
        try:
            import matplotlib  # noqa: F401
        except ImportError as error:
            raise ImportError(
                "the overlay PNGs need matplotlib: pip install 'hiercam[viz]' (or write only the maps: "
                "`overlays=False`, option --no-overlay)"
            ) from error
    return _Options(chosen, top, (sizes[0], sizes[-1]))


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


def _check_images(images: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Every file opened and fully decoded once, so that a bad one stops the run before any model work."""
    from PIL import Image

    if isinstance(images, (str, bytes, os.PathLike)) or not isinstance(images, Sequence):
        raise TypeError(f"`images` must be a sequence of paths, got {type_name(images)}")
    if not images:
        raise ValueError("`images` must name at least one file, got an empty sequence")
    files = [Path(image) for image in images]
    problems = []
    for path in files:
        try:
            with Image.open(path) as image:
                image.load()
        except FileNotFoundError:
            problems.append(f"{os.fspath(path)!r} (no such file)")
        except (OSError, ValueError, Image.DecompressionBombError) as error:
            problems.append(f"{os.fspath(path)!r} ({error})")
    if problems:
        raise ValueError(f"`images`: cannot read {len(problems)} of {len(files)}: {'; '.join(problems)}")
    return files


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
    if target.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"`device` is {device!r} but CUDA is not available")
    return target


def _load(path: Path, size: tuple[int, int], input_norm: str) -> tuple[Tensor, Tensor]:
    """The original image ``(3, H0, W0)`` in [0, 1] and the model input ``(1, 3, *size)``."""
    from PIL import Image, ImageOps

    with Image.open(path) as image:
        rgb = ImageOps.exif_transpose(image).convert("RGB")  # upright, as a viewer shows it
    original = torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 255.0).permute(2, 0, 1)
    resized = rgb.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    pixels = torch.from_numpy(np.asarray(resized, dtype=np.float32)).permute(2, 0, 1)
    if input_norm == "tanh":
        x = pixels / 127.5 - 1
    else:
        x = pixels / 255.0
        if input_norm == "imagenet":
            x = (x - torch.tensor(_IMAGENET_MEAN)[:, None, None]) / torch.tensor(_IMAGENET_STD)[:, None, None]
    return original, x[None].contiguous()


def _classes_for(
    model: nn.Module, x: Tensor, classes: list[int] | None, top: int
) -> tuple[list[int], list[float]]:
    """The classes to explain for one image and their logits, range-checked against the model's output."""
    with torch.no_grad():
        logits = model(x)
    if not isinstance(logits, Tensor) or logits.ndim != 2:
        found = tuple(logits.shape) if isinstance(logits, Tensor) else type_name(logits)
        raise ValueError(f"`model` must return logits (B, K), got {found}")
    num_classes = logits.shape[1]
    if classes is None:
        if top > num_classes:
            raise ValueError(
                f"`top` must be <= {num_classes} (the model has {num_classes} classes), got {top}"
            )
        values, indices = logits[0].float().topk(top)
        return indices.tolist(), values.tolist()
    outside = [k for k in classes if k >= num_classes]
    if outside:
        raise ValueError(
            f"`classes` must be class indices in [0, {num_classes}), got {outside[0]} "
            f"(the model has {num_classes} classes)"
        )
    return classes, logits[0, classes].float().tolist()


def _unique_stems(files: Sequence[Path]) -> list[str]:
    seen: dict[str, int] = {}
    stems = []
    for path in files:
        seen[path.stem] = seen.get(path.stem, 0) + 1
        stems.append(path.stem if seen[path.stem] == 1 else f"{path.stem}-{seen[path.stem]}")
    return stems


def _write(
    out: Path,
    stem: str,
    original: Tensor,
    maps: Tensor,
    classes: list[int],
    scores: list[float],
    info: dict[str, str],
    overlays: bool,
) -> ExplainedImage:
    payload = {
        "maps": maps,
        "classes": torch.tensor(classes, dtype=torch.int64),
        "scores": torch.tensor(scores, dtype=torch.float32),
        **info,
    }
    maps_file = atomic_write(out / f"{stem}.pt", lambda handle: torch.save(payload, handle))
    pictures = []
    if overlays:
        from PIL import Image

        from hiercam.viz import overlay

        for index, heat in zip(classes, maps, strict=True):
            blended = overlay(original, heat, normalize="max")
            buffer = io.BytesIO()
            Image.fromarray(np.round(blended * 255).astype(np.uint8)).save(buffer, format="PNG")
            pictures.append(os.fspath(atomic_write(out / f"{stem}_{index}.png", _bytes_writer(buffer))))
    return ExplainedImage(info["image"], os.fspath(maps_file), pictures, classes, scores)


def _bytes_writer(buffer: io.BytesIO) -> Callable[[IO[bytes]], int]:
    return lambda handle: handle.write(buffer.getvalue())
