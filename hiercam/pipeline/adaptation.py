"""How a run's grouping adapted to frequent classes and saturated groups: a typed record and its notes.

``build_hierarchy`` (``hiercam.pipeline.stages``) fills a
[`GroupingAdaptation`][hiercam.pipeline.GroupingAdaptation]; the run's log, ``metrics.json`` (its ``grouping``
entry) and the report show it. A run whose grouping leaves no group level falls back to the baseline: no level
model is trained and the method's Eq. 6 rows are the baseline maps (with the run's refinements).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hiercam.hierarchy import GroupSplit

__all__ = ["GroupingAdaptation"]


@dataclass(frozen=True)
class GroupingAdaptation:
    """What the run's grouping did with ``method.max_class_presence`` and ``method.max_group_presence``.

    Levels are numbered as in the hierarchy the classes were grouped into: level ``l`` has ``levels[l - 1]``
    groups before any split.

    Attributes:
        class_names: the ``K`` class names (the class indices below refer to them).
        requested_levels: ``method.levels``.
        levels: the group counts the classes were grouped into: ``method.levels`` without the levels that have
            no more groups than the kept-out classes; when that leaves none, each requested count plus the
            number of kept-out classes (below ``K``); empty when no level was possible.
        kept_out: the classes kept out of the grouping (``method.max_class_presence``), sorted.
        max_class_presence: ``method.max_class_presence``.
        max_group_presence: ``method.max_group_presence``.
        splits: the saturated groups split in two (see
            [`split_saturated_groups`][hiercam.ClassHierarchy.split_saturated_groups]), in order.
        removed_levels: the levels that held, once split, the same groups as the level below (removed).
        dropped_levels: the levels that kept a group present in more than ``max_group_presence`` of the
            training images after splitting (dropped).
        fallback: why no group level is left, or ``None``. The run then trains no level model, and its Eq. 6
            rows (``grouping``, ``full``, ``full_tuned``) are the baseline maps.

    Example:
        >>> record = GroupingAdaptation(("a", "b", "c"), (1,), (), (0, 1), 0.9, None, fallback="too few")
        >>> record.adapted, GroupingAdaptation.from_json(record.to_json()) == record
        (True, True)
    """

    class_names: tuple[str, ...]
    requested_levels: tuple[int, ...]
    levels: tuple[int, ...]
    kept_out: tuple[int, ...] = ()
    max_class_presence: float | None = None
    max_group_presence: float | None = None
    splits: tuple[GroupSplit, ...] = ()
    removed_levels: tuple[int, ...] = ()
    dropped_levels: tuple[int, ...] = ()
    fallback: str | None = None

    @property
    def adapted(self) -> bool:
        """Whether the grouping is not ``method.levels`` grouped as asked (``notes`` says how)."""
        changed = self.levels != self.requested_levels or self.fallback is not None
        return changed or bool(self.kept_out or self.splits or self.removed_levels or self.dropped_levels)

    def _level(self, level: int) -> str:
        return f"level {level} ({self.levels[level - 1]} groups)"

    def _group(self, classes: tuple[int, ...]) -> str:
        return "{" + ", ".join(self.class_names[c] for c in classes) + "}"

    def saturation_notes(self) -> list[str]:
        """One sentence per split group, removed or dropped level, and the fallback (for the log)."""
        limit = self.max_group_presence
        notes = [
            f"{self._level(s.level)}: {self._group(s.group)} ({s.presence:.0%} of the training images) split "
            f"into {self._group(s.halves[0])} ({s.half_presence[0]:.0%}) and {self._group(s.halves[1])} "
            f"({s.half_presence[1]:.0%})"
            for s in self.splits
        ]
        notes += [
            f"{self._level(level)} removed: once split, "
            + ("every class was alone" if level == 1 else "it held the same groups as the level below it")
            for level in self.removed_levels
        ]
        notes += [
            f"{self._level(level)} dropped: after splitting, a class grouped alone is still present in more "
            f"than {limit:.0%} of the training images"
            for level in self.dropped_levels
            if limit is not None
        ]
        if self.fallback is not None:
            notes.append(
                f"no group level left ({self.fallback}): the method falls back to the baseline, no level "
                "model is trained and its Eq. 6 rows are the baseline maps (with the run's refinements)"
            )
        return notes

    def notes(self) -> list[str]:
        """Every adaptation in words: kept-out classes, changed levels, then ``saturation_notes``."""
        notes = []
        if self.kept_out:
            names = ", ".join(self.class_names[c] for c in self.kept_out)
            notes.append(
                f"kept out of the grouping (in more than {self.max_class_presence:.0%} of the training "
                f"images): {names}"
            )
        if self.levels != self.requested_levels and self.levels:
            count = len(self.kept_out)
            why = (
                "a level needs more groups than the kept-out classes"
                if set(self.levels) <= set(self.requested_levels)
                else f"every level had no more groups than the {count} kept-out classes; each got {count} "
                "more (the kept-out classes alone, and the groups asked for the others)"
            )
            notes.append(f"levels {list(self.requested_levels)} -> {list(self.levels)}: {why}")
        return notes + self.saturation_notes()

    def to_json(self) -> dict[str, Any]:
        """The JSON form (``metrics.json``'s ``grouping`` entry): class indices, and the class names."""
        return {
            "class_names": list(self.class_names),
            "requested_levels": list(self.requested_levels),
            "levels": list(self.levels),
            "kept_out": list(self.kept_out),
            "max_class_presence": self.max_class_presence,
            "max_group_presence": self.max_group_presence,
            "splits": [
                {
                    "level": s.level,
                    "group": list(s.group),
                    "presence": s.presence,
                    "halves": [list(h) for h in s.halves],
                    "half_presence": list(s.half_presence),
                }
                for s in self.splits
            ],
            "removed_levels": list(self.removed_levels),
            "dropped_levels": list(self.dropped_levels),
            "fallback": self.fallback,
            "adapted": self.adapted,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> GroupingAdaptation:
        """Read back ``to_json``'s output.

        Raises:
            KeyError: a key is missing.
            TypeError, ValueError: a value has the wrong type.
        """
        if not isinstance(data, Mapping):
            raise TypeError(f"`grouping` must be a JSON object, got {type(data).__name__}")

        def ints(value: Any) -> tuple[int, ...]:
            if not isinstance(value, list) or not all(type(v) is int for v in value):
                raise ValueError(f"`grouping`: expected a list of integers, got {value!r}")
            return tuple(value)

        def limit(value: Any) -> float | None:
            return None if value is None else float(value)

        splits = tuple(
            GroupSplit(
                int(s["level"]),
                ints(s["group"]),
                float(s["presence"]),
                (ints(s["halves"][0]), ints(s["halves"][1])),
                (float(s["half_presence"][0]), float(s["half_presence"][1])),
            )
            for s in data["splits"]
        )
        fallback = data["fallback"]
        return cls(
            tuple(str(name) for name in data["class_names"]),
            ints(data["requested_levels"]),
            ints(data["levels"]),
            ints(data["kept_out"]),
            limit(data["max_class_presence"]),
            limit(data["max_group_presence"]),
            splits,
            ints(data["removed_levels"]),
            ints(data["dropped_levels"]),
            None if fallback is None else str(fallback),
        )
