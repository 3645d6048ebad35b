"""Run-directory artifacts: content keys that decide when a step can be skipped, and safe file I/O.

Every step of a run is identified by a *key*: the SHA-256 of the JSON of everything it depends on (the parts
of the config it reads, the keys of the steps it uses). A step writes its outputs, then a small JSON marker
holding its key; on a re-run, a step whose marker holds the same key is skipped. Files are written atomically
(temporary file + rename) and tensors are read back with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from hiercam._io import atomic_write, atomic_write_json

__all__ = ["digest", "read_marker", "write_marker", "save_tensors", "load_tensors", "safe_torch_load"]


def digest(parts: Any) -> str:
    """SHA-256 of the canonical JSON of ``parts`` (sorted keys)."""
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def read_marker(path: Path, key: str) -> dict[str, Any] | None:
    """The marker's content if it exists and holds ``key``, else ``None`` (the step is to be done).

    Markers are written atomically, so an interrupted run never leaves half of one: a marker that is not a
    JSON object with a string ``key`` was damaged or replaced, and is an error rather than a silent redo.

    Raises:
        ValueError: naming the file, when it is not such a JSON object.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: the step marker is not UTF-8 text; delete it to redo the step") from None
    try:
        marker = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as error:
        raise ValueError(
            f"{path}: the step marker is not JSON ({error}); delete it to redo the step"
        ) from None
    if not isinstance(marker, dict) or not isinstance(marker.get("key"), str):
        raise ValueError(
            f"{path}: the step marker must be a JSON object with a string `key`; delete it to redo the step"
        )
    return marker if marker["key"] == key else None


def write_marker(path: Path, key: str, content: dict[str, Any]) -> None:
    """Write a marker ``{"key": key, **content}`` atomically (the last thing a step does)."""
    atomic_write_json(path, {"key": key, **content})


def save_tensors(path: str | os.PathLike[str], tensors: dict[str, Any]) -> None:
    """``torch.save`` a dict of tensors (and plain data), atomically."""
    atomic_write(path, lambda handle: torch.save(tensors, handle))


def safe_torch_load(path: str | os.PathLike[str], what: str, hint: str = "") -> Any:
    """``torch.load(path, weights_only=True)`` onto the CPU; a file it cannot read is a ValueError naming it.

    Torch raises many types for a damaged, truncated or hostile file (``UnpicklingError``, ``RuntimeError``,
    ``EOFError``...); the message names the file and the type (torch's own text, which suggests
    ``weights_only=False``, is kept as the cause, not repeated).

    Raises:
        FileNotFoundError: no such file.
        ValueError: any other failure to read it.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as error:  # torch raises many types for a damaged file: name the file
        raise ValueError(
            f"{os.fspath(path)}: {what}: damaged, truncated, not a torch file, or holding objects other than "
            f"tensors and plain data, which are refused ({type(error).__name__}){hint}"
        ) from error


def load_tensors(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a file written by ``save_tensors`` with ``weights_only=True`` (nothing is executed).

    Raises:
        ValueError: naming the file, when it cannot be read as saved tensors (damaged, truncated, another
            format, or a pickle with code) or does not hold a dict.
    """
    data = safe_torch_load(path, "cannot be read as saved tensors", "; delete it to redo the step")
    if not isinstance(data, dict):
        raise ValueError(f"{os.fspath(path)}: does not hold a dict of tensors; delete it to redo the step")
    return data
