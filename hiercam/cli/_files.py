"""The files of ``hiercam cam``: the images read (all checked first), the maps and overlays written."""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

import numpy as np
import torch
from torch import Tensor

from hiercam._io import atomic_write
from hiercam._validation import type_name
from hiercam.models import InputNorm, apply_input_norm

__all__ = ["check_images", "load_image", "unique_stems", "write_outputs"]


def check_images(images: Sequence[str | os.PathLike[str]]) -> list[Path]:
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


def load_image(path: Path, size: tuple[int, int], input_norm: InputNorm) -> tuple[Tensor, Tensor]:
    """The original image ``(3, H0, W0)`` in [0, 1] and the model input ``(1, 3, *size)``."""
    from PIL import Image, ImageOps

    with Image.open(path) as image:
        rgb = ImageOps.exif_transpose(image).convert("RGB")  # upright, as a viewer shows it
    original = torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 255.0).permute(2, 0, 1)
    resized = rgb.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    pixels = torch.from_numpy(np.asarray(resized, dtype=np.float32)).permute(2, 0, 1)
    return original, apply_input_norm(pixels / 255.0, input_norm)[None].contiguous()


def unique_stems(files: Sequence[Path]) -> list[str]:
    """The files' stems, repeats numbered (``a``, ``a-2``, ...) so that no output overwrites another."""
    seen: dict[str, int] = {}
    stems = []
    for path in files:
        seen[path.stem] = seen.get(path.stem, 0) + 1
        stems.append(path.stem if seen[path.stem] == 1 else f"{path.stem}-{seen[path.stem]}")
    return stems


def write_outputs(
    out: Path,
    stem: str,
    original: Tensor,
    maps: Tensor,
    classes: list[int],
    scores: list[float],
    info: dict[str, str],
    overlays: bool,
) -> tuple[str, list[str]]:
    """Write the maps (``.pt``) and, with ``overlays``, one PNG per class; return their paths."""
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
    return os.fspath(maps_file), pictures


def _bytes_writer(buffer: io.BytesIO) -> Callable[[IO[bytes]], int]:
    return lambda handle: handle.write(buffer.getvalue())
