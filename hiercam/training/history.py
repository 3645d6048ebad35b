"""The record of a training run: one entry per epoch, written and read as plain JSON."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from hiercam._io import atomic_write_text

__all__ = ["History"]


class History:
    """One record per completed epoch: ``{"epoch": 1, "lr": ..., "train_loss": ..., "val_map": ..., ...}``.

    Record keys: ``epoch`` (1-based), ``lr`` (learning rate of the first parameter group during the epoch),
    ``seconds`` (wall time), ``train_loss`` and ``val_loss`` (the total loss, averaged over samples),
    ``train_<name>``/``val_<name>`` for every field of a ``NamedTuple`` loss, and ``val_map`` (mAP over the
    validation set). Validation keys are present only when [`fit`][hiercam.fit] was given a ``val_loader``.

    Examples:
        >>> h = History([{"epoch": 1, "train_loss": 0.7}, {"epoch": 2, "train_loss": 0.5}])
        >>> h["train_loss"], len(h)
        ([0.7, 0.5], 2)
    """

    def __init__(self, records: Iterable[Mapping[str, float]] = ()) -> None:
        self.records: list[dict[str, float]] = [dict(r) for r in records]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key: str) -> list[float]:
        """The values of ``key`` over the epochs (NaN for an epoch without it)."""
        if key not in self.keys():
            raise KeyError(f"no record has {key!r}; keys are {self.keys()}")
        return [r.get(key, math.nan) for r in self.records]

    def keys(self) -> list[str]:
        """Every key that appears in a record, in order of first appearance."""
        return list(dict.fromkeys(k for r in self.records for k in r))

    def append(self, record: Mapping[str, float]) -> None:
        """Add the record of one epoch."""
        self.records.append(dict(record))

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the records as a standard JSON list, atomically; NaN and infinities are written as ``null``.

        A NaN is what an epoch without a value gets (e.g. ``val_map`` when no validation image has a
        positive label); JSON has no NaN, so it is ``null`` in the file and NaN again after
        [`load`][hiercam.History.load].
        """
        records = [
            {k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in r.items()}
            for r in self.records
        ]
        return atomic_write_text(path, json.dumps(records, indent=2, allow_nan=False) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> History:
        """Read records written by [`save`][hiercam.History.save] (``null`` becomes NaN).

        Raises:
            ValueError: the file is not a JSON list of ``{name: number or null}`` records; the message names
                the file.
        """
        name = os.fspath(path)
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:
            raise ValueError(f"`path` {name!r} is not a JSON file: {error}") from None
        if not isinstance(data, list) or not all(
            isinstance(r, dict)
            and all(
                v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in r.values()
            )
            for r in data
        ):
            raise ValueError(f"`path` {name!r} must hold a JSON list of {{name: number or null}} records")
        return cls([{k: math.nan if v is None else float(v) for k, v in r.items()} for r in data])

    def __repr__(self) -> str:
        last = ", ".join(f"{k}={v:.4g}" for k, v in self.records[-1].items()) if self.records else ""
        return f"History({len(self)} epochs{': last ' + last if last else ''})"
