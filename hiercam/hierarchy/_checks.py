"""Validation of a ClassHierarchy's levels and singletons (time and memory in ``K L``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from torch import Tensor

from hiercam._validation import check_int, type_name

__all__ = ["NAMES_SHOWN", "as_index_list", "assignment_of_groups", "check_assignment", "check_singletons"]

NAMES_SHOWN = 8  # class names (or group ids) shown per group in trees and messages


def check_singletons(
    singletons: Sequence[int], levels: Sequence[tuple[int, ...]], names: tuple[str, ...]
) -> tuple[int, ...]:
    """Sorted distinct class indices, each alone in its group at every level (time in ``K L``)."""
    alone = sorted(as_index_list(singletons, "singletons"))
    if not alone:
        return ()
    if alone[-1] >= len(names):
        raise ValueError(f"`singletons` must be class indices 0..{len(names) - 1}, got {alone[-1]}")
    if len(set(alone)) != len(alone):
        raise ValueError(f"`singletons` must not repeat a class, got {alone}")
    for depth, level in enumerate(levels, start=1):
        sizes = np.bincount(np.asarray(level, dtype=np.int64), minlength=1)
        for cls in alone:
            if sizes[level[cls]] != 1:
                other = next(c for c, g in enumerate(level) if g == level[cls] and c != cls)
                raise ValueError(
                    f"`singletons`: class {cls} ({names[cls]!r}) is kept out of the grouping but shares "
                    f"group {level[cls]} of level {depth} with class {other} ({names[other]!r})"
                )
    return tuple(alone)


def as_index_list(values: Any, name: str) -> list[int]:
    if isinstance(values, Tensor):
        values = values.tolist()
    if isinstance(values, np.ndarray):
        values = values.tolist()
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise TypeError(f"`{name}` must be a sequence of ints, got {type_name(values)}")
    return [check_int(v, name, minimum=0) for v in values]


def check_assignment(level: tuple[int, ...], index: int, finer: tuple[int, ...], finer_count: int) -> int:
    """Validate the assignment of group level ``index`` against level ``index - 1``; return ``N_index``.

    Group ids must be ``0..N-1`` with every group used. Checked in time and memory proportional to ``K``, so
    that a tampered id such as ``10**9`` is refused instead of building a range that large.
    """
    name = f"assignments[{index - 1}]"
    if len(level) != len(finer):
        raise ValueError(f"`{name}` must have {len(finer)} entries, got {len(level)}")
    used = set(level)
    count = len(used)
    if max(level) >= count:
        missing = sorted(set(range(count)) - used)
        shown = ", ".join(str(g) for g in missing[:NAMES_SHOWN]) + (
            ", ..." if len(missing) > NAMES_SHOWN else ""
        )
        raise ValueError(
            f"`{name}` leaves group(s) [{shown}] of level {index} empty: the {count} groups of a level "
            f"must be numbered 0..{count - 1}, got the group id {max(level)}"
        )
    if count >= finer_count:
        raise ValueError(
            f"group counts must strictly decrease from level to level, got {count} groups "
            f"at level {index} after {finer_count} at level {index - 1}"
        )
    parent: dict[int, int] = {}
    for child, group in zip(finer, level, strict=True):
        if parent.setdefault(child, group) != group:
            raise ValueError(
                f"`{name}` is not nested: group {child} of level {index - 1} is split "
                f"between groups {parent[child]} and {group} of level {index}"
            )
    return count


def assignment_of_groups(groups: Any, index: int, names: tuple[str, ...]) -> list[int]:
    """The assignment of a level written as its groups of class names (groups numbered in their order).

    Every class must be in exactly one group; checked in time proportional to ``K``.
    """
    where = f"levels[{index}]"
    if isinstance(groups, (str, bytes)) or not isinstance(groups, Sequence):
        raise TypeError(f"`{where}` must be a sequence of groups of class names, got {type_name(groups)}")
    position = {name: k for k, name in enumerate(names)}
    assignment: list[int | None] = [None] * len(names)
    for g, group in enumerate(groups):
        if isinstance(group, (str, bytes)) or not isinstance(group, Sequence):
            raise TypeError(f"`{where}[{g}]` must be a sequence of class names, got {type_name(group)}")
        if not group:
            raise ValueError(f"`{where}[{g}]` is an empty group")
        for name in group:
            if not isinstance(name, str):
                raise TypeError(f"`{where}[{g}]` must hold class names (str), got {type_name(name)}")
            if name not in position:
                raise ValueError(f"`{where}[{g}]` names {name!r}, which is not one of `class_names`")
            k = position[name]
            if assignment[k] is not None:
                raise ValueError(f"`{where}` puts {name!r} in groups {assignment[k]} and {g}")
            assignment[k] = g
    missing = [names[k] for k, group in enumerate(assignment) if group is None]
    if missing:
        shown = ", ".join(repr(n) for n in missing[:NAMES_SHOWN]) + (
            ", ..." if len(missing) > NAMES_SHOWN else ""
        )
        raise ValueError(f"`{where}` leaves class(es) {shown} out of every group")
    return [int(group) for group in assignment if group is not None]
