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
    "check_fits",
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
    """Read and validate a training checkpoint of [`fit`][hiercam.fit] (its ``checkpoint`` file) onto the CPU.

    ``torch.load(weights_only=True)`` builds only tensors and plain containers, never arbitrary objects; every
    key is then checked for presence and type before the caller uses any of it. ``fit`` resumes from such a
    file by itself; call this to check, before a long run, that a file left by an interrupted one can be
    resumed from, or to read its history.

    Args:
        path: the checkpoint file.

    Returns:
        The checkpoint: ``"epoch"`` (completed epochs), ``"model"``, ``"optimizer"``, ``"scheduler"`` and
        ``"scaler"`` (state dicts, the last two ``None`` when not used), ``"history"`` (the records of
        [`History`][hiercam.History]), ``"rng"`` (the random states), ``"format"`` and ``"version"``.

    Raises:
        FileNotFoundError, PermissionError, IsADirectoryError: the file cannot be opened.
        ValueError: the file cannot be decoded (truncated, corrupted, not a ``torch.save`` file, or holding
            objects other than tensors and containers), is not a hiercam training checkpoint of a known
            version, or a key is missing or of the wrong type; the message names the file and the key.

    Examples:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from hiercam.training import fit
        >>> data = [(torch.randn(4, 3), torch.randint(0, 2, (4, 2)).float())]
        >>> path = Path(tempfile.mkdtemp()) / "fit.pt"
        >>> _ = fit(torch.nn.Linear(3, 2), data, epochs=1, checkpoint=path, progress=False)
        >>> checkpoint = load_checkpoint(path)
        >>> checkpoint["epoch"], len(checkpoint["history"])
        (1, 1)
    """
    name = os.fspath(path)
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except (PermissionError, FileNotFoundError, IsADirectoryError):
        raise
    except Exception as error:  # any failure to decode the file is reported the same way
        reason = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
        raise ValueError(
            f"`checkpoint` {name!r} could not be read as a {FORMAT} checkpoint (truncated, corrupted or not "
            f"written by hiercam.fit; torch.load(weights_only=True) raised {reason.rstrip(': ')}); delete it "
            "to train from the start"
        ) from error
    if (
        not isinstance(data, dict)
        or data.get("format") != FORMAT
        or not _is_int(data.get("version"), VERSION)
    ):
        found = (data.get("format"), data.get("version")) if isinstance(data, dict) else type(data).__name__
        raise ValueError(
            f"`checkpoint` {name!r} is not a {FORMAT} version {VERSION} checkpoint (found {found!r})"
        )
    _check_payload(data, name)
    return data


def _is_int(value: Any, expected: int | None = None) -> bool:
    ok = isinstance(value, int) and not isinstance(value, bool)
    return ok and (expected is None or value == expected)


def _fail(name: str, key: str, wanted: str, value: Any) -> ValueError:
    return ValueError(
        f"`checkpoint` {name!r}: key {key!r} must be {wanted}, got {type(value).__name__}"
        + (f" {value!r}" if isinstance(value, (int, float, str)) else "")
    )


def _check_payload(data: dict[str, Any], name: str) -> None:
    """Every key ``fit`` reads, present and of the right type."""
    for key in ("epoch", "model", "optimizer", "scheduler", "scaler", "history", "rng"):
        if key not in data:
            raise ValueError(
                f"`checkpoint` {name!r} lacks the key {key!r}; delete it to train from the start"
            )
    epoch = data["epoch"]
    if not _is_int(epoch) or epoch < 1:
        raise _fail(name, "epoch", "an int >= 1", epoch)
    model = data["model"]
    if not isinstance(model, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in model.items()
    ):
        raise _fail(name, "model", "a state dict of tensors", model)
    optimizer = data["optimizer"]
    if not (
        isinstance(optimizer, dict)
        and isinstance(optimizer.get("state"), dict)
        and isinstance(optimizer.get("param_groups"), list)
        and all(isinstance(g, dict) and isinstance(g.get("params"), list) for g in optimizer["param_groups"])
    ):
        raise _fail(name, "optimizer", "an optimizer state dict ('state', 'param_groups')", optimizer)
    for key in ("scheduler", "scaler"):
        if data[key] is not None and not isinstance(data[key], dict):
            raise _fail(name, key, "a state dict or None", data[key])
    history = data["history"]
    if not isinstance(history, list) or len(history) != epoch:
        raise _fail(name, "history", f"a list of {epoch} epoch records (one per completed epoch)", history)
    for record in history:
        if not isinstance(record, dict) or not all(
            isinstance(k, str) and isinstance(v, (int, float)) for k, v in record.items()
        ):
            raise _fail(name, "history", "a list of {name: number} records", record)
    _check_rng(data["rng"], name)


def _check_rng(rng: Any, name: str) -> None:
    if not isinstance(rng, dict):
        raise _fail(name, "rng", "a dict of random states", rng)
    torch_state = rng.get("torch")
    if not isinstance(torch_state, torch.Tensor) or torch_state.dtype != torch.uint8:
        raise _fail(name, "rng.torch", "a uint8 tensor", torch_state)
    numpy_state = rng.get("numpy")
    if not (
        isinstance(numpy_state, (list, tuple))
        and len(numpy_state) == 5
        and isinstance(numpy_state[0], str)
        and isinstance(numpy_state[1], torch.Tensor)
        and numpy_state[1].shape == (624,)
        and all(_is_int(v) for v in numpy_state[2:4])
        and isinstance(numpy_state[4], float)
    ):
        raise _fail(
            name, "rng.numpy", "NumPy's legacy state [name, keys (624,), pos, has_gauss, gauss]", numpy_state
        )
    python_state = rng.get("python")
    if not (
        isinstance(python_state, (list, tuple))
        and len(python_state) == 3
        and isinstance(python_state[1], (list, tuple))
        and len(python_state[1]) == 625
        and all(_is_int(v) for v in python_state[1])
    ):
        raise _fail(name, "rng.python", "Python's random state (version, 625 ints, gauss)", python_state)
    generators = rng.get("generators")
    if not isinstance(generators, list) or not all(
        isinstance(g, torch.Tensor) and g.dtype == torch.uint8 for g in generators
    ):
        raise _fail(name, "rng.generators", "a list of uint8 generator states", generators)
    if "cuda" in rng and not isinstance(rng["cuda"], torch.Tensor):
        raise _fail(name, "rng.cuda", "a uint8 tensor", rng["cuda"])


def check_fits(
    data: dict[str, Any],
    path: str | os.PathLike[str],
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
) -> None:
    """Check that a validated checkpoint fits the model and optimizer, before anything is loaded into them.

    Raises:
        ValueError: parameter names or shapes differ, or the optimizer has other parameter groups; the
            message names the file and the key.
    """
    name = os.fspath(path)
    own, saved = model.state_dict(), data["model"]
    missing, unexpected = sorted(own.keys() - saved.keys()), sorted(saved.keys() - own.keys())
    shapes = [
        f"{k}: {tuple(saved[k].shape)} in the file, {tuple(v.shape)} in `model`"
        for k, v in own.items()
        if k in saved and saved[k].shape != v.shape
    ]
    if missing or unexpected or shapes:
        details = "; ".join(
            part
            for part in (
                f"missing {missing[:5]}" if missing else "",
                f"unexpected {unexpected[:5]}" if unexpected else "",
                ", ".join(shapes[:5]),
            )
            if part
        )
        raise ValueError(f"`checkpoint` {name!r}: key 'model' does not fit `model` ({details})")
    groups = data["optimizer"]["param_groups"]
    own_sizes = [len(g["params"]) for g in optimizer.param_groups]
    saved_sizes = [len(g["params"]) for g in groups]
    if own_sizes != saved_sizes:
        raise ValueError(
            f"`checkpoint` {name!r}: key 'optimizer' has parameter groups of sizes {saved_sizes}, "
            f"the optimizer {own_sizes}: resume with the optimizer built the same way"
        )
