"""Image files as model inputs: read, turned upright, converted to RGB, resized and scaled for a network.

The one image reader of hiercam for files outside a dataset: ``hiercam cam`` and the quick start call
[`load_image`][hiercam.datasets.load_image]; the scaling is
[`apply_input_norm`][hiercam.models.apply_input_norm], the same as the pipeline's ``input_norm``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, get_args

import numpy as np
import torch
from torch import Tensor

from hiercam._io import open_image
from hiercam._validation import check_choice, check_int, type_name
from hiercam.models import InputNorm, apply_input_norm

__all__ = ["MAX_IMAGE_SIDE", "fit_within", "load_image"]

#: The largest side, in pixels, of an image that hiercam resizes to or feeds a model: ``load_image(size=)``,
#: the datasets' ``image_size``, the pipeline's ``data.image_size`` and ``hiercam cam --size``. A float32
#: image of 4096 x 4096 is 192 MiB; the activations of a network on it are many times that.
MAX_IMAGE_SIDE = 4096


def load_image(
    path: str | os.PathLike[str],
    size: int | Sequence[int] | None = None,
    input_norm: InputNorm = "imagenet",
    *,
    max_side: int | None = None,
) -> Tensor:
    """Read an image file as a batch of one, ready for a model: ``(1, 3, H, W)`` float32.

    The file is read with PIL, turned upright by its EXIF orientation (as a viewer shows it), converted to
    RGB (grey and RGBA images too), resized with PIL's bilinear filter (no crop, no aspect ratio kept: pass
    ``(H, W)`` for a non-square input), divided by 255 and scaled by ``input_norm``.

    Args:
        path: an image file in any format PIL reads.
        size: ``None`` (the image's own size), an int (a square ``size x size``) or ``(H, W)``.
        input_norm: ``"imagenet"`` (torchvision and timm weights), ``"tanh"`` or ``"none"`` (pixels in
            ``[0, 1]``, e.g. the image to draw a map over), see [`InputNorm`][hiercam.models.InputNorm].
        max_side: with ``size=None``: an image whose longer side exceeds ``max_side`` is scaled down
            (bilinear, aspect ratio kept) so that it fits, e.g. a photo to draw a map over; ``None``: the
            image's own size, whatever it is.

    Returns:
        The image ``(1, 3, H, W)``, float32, on the CPU.

    Raises:
        TypeError: ``path`` or ``size`` of the wrong type.
        ValueError: a missing, unreadable, truncated or oversized file (naming ``path``), a size below 1 or
            above ``MAX_IMAGE_SIDE`` (4096), an unknown ``input_norm``.

    Examples:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from PIL import Image
        >>> photo = Path(tempfile.mkdtemp()) / "photo.png"
        >>> Image.new("RGB", (64, 48), (255, 0, 0)).save(photo)
        >>> load_image(photo, (32, 40)).shape
        torch.Size([1, 3, 32, 40])
        >>> load_image(photo, input_norm="none")[0, :, 0, 0]  # own size 48 x 64, pixels in [0, 1]
        tensor([1., 0., 0.])
        >>> load_image(photo, max_side=32).shape  # the longer side brought down to 32
        torch.Size([1, 3, 24, 32])
    """
    from PIL import Image, ImageOps

    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"`path` must be a path to an image file, got {type_name(path)}")
    target = _check_size(size)
    check_choice(input_norm, "input_norm", get_args(InputNorm))
    if max_side is not None:
        max_side = check_int(max_side, "max_side", minimum=1)
        if target is not None:
            raise ValueError(f"`max_side` applies with `size=None` only, got size={list(target)}")
    try:
        with open_image(path, "path") as image:
            rgb = ImageOps.exif_transpose(image).convert("RGB")
    except FileNotFoundError as error:
        raise ValueError(str(error)) from None
    if target is None and max_side is not None:
        fitted = fit_within((rgb.height, rgb.width), max_side)
        target = None if fitted == (rgb.height, rgb.width) else fitted
    if target is not None:
        rgb = rgb.resize((target[1], target[0]), Image.Resampling.BILINEAR)
    pixels = torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return apply_input_norm(pixels, input_norm)[None].contiguous()


def _check_size(size: Any) -> tuple[int, int] | None:
    if size is None:
        return None
    given = list(size) if isinstance(size, (list, tuple)) else [size]
    if len(given) not in (1, 2):
        raise ValueError(f"`size` must be one int or (H, W), got {len(given)} values")
    sizes = [check_int(s, "size", minimum=1, maximum=MAX_IMAGE_SIDE) for s in given]
    return sizes[0], sizes[-1]


def fit_within(size: Sequence[int], longest: int) -> tuple[int, int]:
    """``(H, W)`` scaled down, keeping the aspect ratio, so that neither side exceeds ``longest``.

    A size that already fits is returned as it is; no side becomes smaller than 1.

    Examples:
        >>> fit_within((10000, 5000), 2048), fit_within((300, 200), 2048)
        ((2048, 1024), (300, 200))
    """
    height, width = int(size[0]), int(size[1])
    longest = check_int(longest, "longest", minimum=1)
    if max(height, width) <= longest:
        return height, width
    ratio = longest / max(height, width)
    return max(1, round(height * ratio)), max(1, round(width * ratio))
