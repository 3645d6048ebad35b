"""The MSRC-21 folder: its classes and void label, and the checked readers of its files.

The segmentation folder (``hiercam.datasets.folder``) generalises this layout and shares these readers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

from hiercam._io import read_json_file, read_text_file
from hiercam._validation import check_int, format_shape, type_name
from hiercam.datasets.images import MAX_IMAGE_SIDE

__all__ = [
    "MSRC21_CLASSES",
    "MSRC21_STUFF_CLASSES",
    "SPLITS",
    "VOID",
    "MaskTransform",
    "apply_transform",
    "check_image_size",
    "class_indices",
    "read_classes",
    "read_image_labels",
    "read_json",
    "read_split",
]

#: The 21 classes of MSRC-21 in label-map order (id ``k`` is class ``k``), as its ``classes.json`` lists them.
MSRC21_CLASSES: tuple[str, ...] = (
    "building", "grass", "tree", "cow", "sheep", "sky", "aeroplane", "water", "face", "car", "bicycle",
    "flower", "sign", "bird", "book", "chair", "road", "cat", "dog", "body", "boat",
)  # fmt: skip

#: The "stuff" classes of MSRC-21 (regions without a shape of their own), for ``background_classes=``.
MSRC21_STUFF_CLASSES: tuple[str, ...] = ("building", "grass", "tree", "sky", "water", "road")

VOID = 255
SPLITS = ("train", "val", "test", "all")

MaskTransform = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]


def check_image_size(size: Any) -> tuple[int, int] | None:
    if size is None:
        return None
    if isinstance(size, (tuple, list)):
        if len(size) != 2:
            raise ValueError(f"`image_size` must be an int, an (H, W) pair or None, got {size!r}")
        return (
            check_int(size[0], "image_size[0]", minimum=1, maximum=MAX_IMAGE_SIDE),
            check_int(size[1], "image_size[1]", minimum=1, maximum=MAX_IMAGE_SIDE),
        )
    side = check_int(size, "image_size", minimum=1, maximum=MAX_IMAGE_SIDE)
    return side, side


def read_json(path: Path, what: str = "an MSRC-21 folder") -> Any:
    """The JSON of a folder's file (``hiercam._io.read_json_file``); a missing file asks if it is ``what``."""
    if not path.exists():
        raise FileNotFoundError(f"{path} not found (is this {what}?)")
    return read_json_file(path)


def read_classes(path: Path) -> tuple[str, ...]:
    data = read_json(path)
    names = data.get("classes") if isinstance(data, dict) else None
    if (
        not isinstance(names, list)
        or len(names) != len(MSRC21_CLASSES)
        or not all(isinstance(name, str) and name for name in names)
        or len(set(names)) != len(names)
    ):
        raise ValueError(f"{path}: key 'classes' must list the {len(MSRC21_CLASSES)} distinct class names")
    return tuple(names)


def class_indices(given: Any, names: tuple[str, ...]) -> tuple[int, ...]:
    if isinstance(given, (str, bytes)) or not isinstance(given, Sequence):
        raise TypeError(f"`background_classes` must be a sequence of class names, got {type_name(given)}")
    out: list[int] = []
    for item in given:
        if isinstance(item, str):
            if item not in names:
                raise ValueError(f"`background_classes`: unknown class {item!r}; the classes are {names}")
            index = names.index(item)
        else:
            index = check_int(item, "background_classes", minimum=0, maximum=len(names) - 1)
        if index in out:
            raise ValueError(f"`background_classes` names {names[index]!r} twice")
        out.append(index)
    return tuple(sorted(out))


def read_split(path: Path) -> list[str]:
    if not path.exists():
        raise FileNotFoundError(f"split file {path} not found")
    ids = [line.strip() for line in read_text_file(path).splitlines() if line.strip()]
    if not ids:
        raise ValueError(f"split file {path} lists no image")
    for image_id in ids:
        if Path(image_id).name != image_id or image_id in (".", ".."):
            raise ValueError(f"split file {path}: {image_id!r} is not an image id (no paths allowed)")
    if len(set(ids)) != len(ids):
        raise ValueError(f"split file {path} lists an image twice")
    return ids


def read_image_labels(
    path: Path, ids: list[str], num_classes: int, what: str = "an MSRC-21 folder"
) -> dict[str, list[int]]:
    data = read_json(path, what)
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object {{id: [class ids]}}")
    out: dict[str, list[int]] = {}
    for image_id in ids:
        if image_id not in data:
            raise ValueError(f"{path} has no entry for the image {image_id!r}")
        classes = data[image_id]
        if not isinstance(classes, list) or not all(
            isinstance(c, int) and not isinstance(c, bool) and 0 <= c < num_classes for c in classes
        ):
            raise ValueError(
                f"{path}: the entry of {image_id!r} must be a list of class ids 0..{num_classes - 1}, "
                f"got {classes!r}"
            )
        out[image_id] = sorted(set(classes))
    return out


def apply_transform(transform: MaskTransform, image: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    out = transform(image, mask)
    if not isinstance(out, tuple) or len(out) != 2 or not all(isinstance(t, Tensor) for t in out):
        got = type_name(out) if not isinstance(out, tuple) else f"({', '.join(type_name(t) for t in out)})"
        raise TypeError(f"`transform` must return a pair (image, mask) of tensors, got {got}")
    if out[0].ndim != 3 or out[0].shape[0] != 3 or out[1].ndim != 2 or out[0].shape[-2:] != out[1].shape:
        raise ValueError(
            "`transform` must return an image (3, H, W) and a mask (H, W) of the same size, got "
            f"{format_shape(out[0].shape)} and {format_shape(out[1].shape)}"
        )
    image, mask = out
    if not image.is_floating_point() or mask.is_floating_point():
        raise TypeError(
            f"`transform` must return a floating-point image and an integer mask, got {image.dtype} and "
            f"{mask.dtype}"
        )
    return image, mask.long()
