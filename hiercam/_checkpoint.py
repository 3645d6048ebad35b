"""Training checkpoints for [`hiercam.fit`][hiercam.fit]: what is saved, atomic writes, safe loading.

A checkpoint is a ``torch.save`` file holding only tensors and plain containers, so it loads with
``torch.load(weights_only=True)``. Besides the model, optimizer, scheduler and AMP scaler states and the
history, it holds every random state that decides the next epoch (torch CPU and CUDA, NumPy's and Python's
global generators, and the generators of the training loader and its sampler): restoring them makes a
resumed run continue exactly as the uninterrupted one would have.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hiercam._io import atomic_write

__all__ = [
    "FORMAT",
    "VERSION",
    "save_checkpoint",
    "load_checkpoint",
    "loader_generators",
    "random_states",
    "restore_random_states",
]

FORMAT = "hiercam.fit"
VERSION = 1


def loader_generators(loader: Any) -> list[torch.Generator]:
    """The distinct ``torch.Generator`` objects that decide a loader's order and worker seeds."""
    sampler = getattr(loader, "sampler", None)
    batch_sampler = getattr(loader, "batch_sampler", None)
    candidates = [
        getattr(loader, "generator", None),
        getattr(sampler, "generator", None),
        getattr(getattr(batch_sampler, "sampler", None), "generator", None),
    ]
    found: list[torch.Generator] = []
    for generator in candidates:
        if isinstance(generator, torch.Generator) and all(generator is not g for g in found):
            found.append(generator)
    return found


def random_states(device: torch.device, generators: Iterable[torch.Generator]) -> dict[str, Any]:
    """Every random state the next epoch depends on, as tensors and plain values."""
    numpy_state = np.random.get_state(legacy=True)  # noqa: NPY002 - the global state is the point
    if not isinstance(numpy_state, tuple):  # pragma: no cover - legacy=True always gives the tuple form
        raise TypeError("unexpected NumPy random state")
    name, keys, position, has_gauss, gauss = numpy_state
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss), float(gauss)],
        "python": random.getstate(),
        "generators": [g.get_state() for g in generators],
    }
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states


def restore_random_states(
    states: dict[str, Any], device: torch.device, generators: list[torch.Generator]
) -> None:
    """Put back the random states saved by ``random_states``."""
    saved = states["generators"]
    if len(saved) != len(generators):
        raise ValueError(
            f"the checkpoint was written with {len(saved)} loader generator(s), the training loader has "
            f"{len(generators)}: resume with a loader built the same way"
        )
    torch.set_rng_state(states["torch"])
    name, keys, position, has_gauss, gauss = states["numpy"]
    np.random.set_state(  # noqa: NPY002
        (
            name,
            keys.numpy().astype(np.uint32),
            position,
            has_gauss,
            gauss,
        )
    )
    random.setstate(_as_tuples(states["python"]))
    for generator, state in zip(generators, saved, strict=True):
        generator.set_state(state)
    if device.type == "cuda" and "cuda" in states:
        torch.cuda.set_rng_state(states["cuda"], device)


def _as_tuples(value: Any) -> Any:
    """Python's ``random.setstate`` wants tuples where a round trip may give lists."""
    if isinstance(value, (list, tuple)):
        return tuple(_as_tuples(v) for v in value)
    return value


def save_checkpoint(path: str | os.PathLike[str], payload: dict[str, Any]) -> Path:
    """Write ``payload`` (tagged with format and version) atomically with ``torch.save``."""
    tagged = {"format": FORMAT, "version": VERSION, **payload}
    return atomic_write(path, lambda handle: torch.save(tagged, handle))


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint written by ``save_checkpoint`` onto the CPU, with ``weights_only=True``.

    Raises:
        ValueError: the file is not a hiercam training checkpoint of a known version.
    """
    data = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("version") != VERSION:
        found = (data.get("format"), data.get("version")) if isinstance(data, dict) else type(data).__name__
        raise ValueError(
            f"`checkpoint` {os.fspath(path)!r} is not a {FORMAT} version {VERSION} checkpoint (found {found})"
        )
    return data
