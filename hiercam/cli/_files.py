"""The files of ``hiercam cam``: the images read (all checked first), the maps and overlays written."""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from hiercam._io import atomic_write, open_image, read_json_file, read_text_file
from hiercam._validation import type_name
from hiercam.datasets import load_image
from hiercam.models import InputNorm

__all__ = ["check_images", "expand_images", "read_class_names", "read_image", "unique_stems", "write_outputs"]


def expand_images(images: Sequence[str | os.PathLike[str]]) -> tuple[list[Path], list[Path]]:
    """The image files that ``images`` names, and the files skipped because they are not images.

    A folder gives its files (sorted, not recursive), a pattern with ``*``, ``?`` or ``[`` that is not an
    existing path gives its matches (``**`` recurses); of those, files whose suffix is not an image format of
    PIL are skipped. A file named directly is always kept (and checked by ``check_images``).
    """
    from PIL import Image

    if isinstance(images, (str, bytes, os.PathLike)) or not isinstance(images, Sequence):
        raise TypeError(f"`images` must be a sequence of paths, got {type_name(images)}")
    if not images:
        raise ValueError("`images` must name at least one file, got an empty sequence")
    suffixes = set(Image.registered_extensions())
    files: list[Path] = []
    skipped: list[Path] = []
    for item in images:
        if not isinstance(item, (str, os.PathLike)):
            raise TypeError(f"`images` must hold paths, got {type_name(item)}")
        text, path = os.fspath(item), Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file())
        elif not path.exists() and any(c in text for c in "*?["):
            found = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file())
            if not found:
                raise ValueError(f"`images` pattern {text!r} matches no file")
        else:
            files.append(path)
            continue
        for file in found:
            (files if file.suffix.lower() in suffixes else skipped).append(file)
    if not files:
        listed = ", ".join(os.fspath(p) for p in skipped[:5]) + (", ..." if len(skipped) > 5 else "")
        raise ValueError(
            f"`images` names no image file (skipped {len(skipped)} that are not images: {listed})"
        )
    return files, skipped


def read_class_names(path: str | os.PathLike[str]) -> list[str]:
    """Class names from a file: a JSON list of strings, or one name per line (blank lines ignored).

    Read by ``hiercam._io.read_text_file``/``read_json_file``: a folder, bytes that are not UTF-8 or JSON
    nested too deeply are a ``ValueError`` naming ``class_names`` and the file.
    """
    try:
        text = read_text_file(path, "class_names")
    except FileNotFoundError as error:
        raise ValueError(str(error)) from None
    if text.lstrip().startswith("["):
        names = read_json_file(path, "class_names")
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ValueError(f"`class_names` {os.fspath(path)!r} must hold a JSON list of strings")
    else:
        names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise ValueError(f"`class_names` {os.fspath(path)!r} holds no name")
    return names


def check_images(images: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Every file opened and fully decoded once, so that a bad one stops the run before any model work."""
    if isinstance(images, (str, bytes, os.PathLike)) or not isinstance(images, Sequence):
        raise TypeError(f"`images` must be a sequence of paths, got {type_name(images)}")
    if not images:
        raise ValueError("`images` must name at least one file, got an empty sequence")
    files = [Path(image) for image in images]
    problems = []
    for path in files:
        try:
            with open_image(path):
                pass
        except FileNotFoundError:
            problems.append(f"{os.fspath(path)!r} (no such file)")
        except ValueError as error:  # PIL's reason; open_image names the file, as the list does here
            problems.append(f"{os.fspath(path)!r} ({error.__cause__ or error})")
    if problems:
        raise ValueError(f"`images`: cannot read {len(problems)} of {len(files)}: {'; '.join(problems)}")
    return files


def read_image(
    path: Path, size: tuple[int, int], input_norm: InputNorm, max_side: int
) -> tuple[Tensor, Tensor]:
    """The image to draw over ``(3, H0, W0)`` in [0, 1] and the model input ``(1, 3, *size)``.

    The image to draw over is the original, scaled down (aspect ratio kept) when its longer side exceeds
    ``max_side``: a 10000 x 10000 photo would need gigabytes to draw in full.
    """
    return load_image(path, input_norm="none", max_side=max_side)[0], load_image(path, size, input_norm)


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
        from hiercam.viz import save_overlay

        for index, heat in zip(classes, maps, strict=True):
            pictures.append(
                os.fspath(save_overlay(out / f"{stem}_{index}.png", original, heat, normalize="max"))
            )
    return os.fspath(maps_file), pictures
