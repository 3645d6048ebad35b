"""The checks and the group numbering shared by the K-means grouping and the consensus of hierarchies."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import numpy as np
from torch import Tensor

from hiercam._validation import check_int, type_name

__all__ = ["check_levels", "first_appearance"]


def check_levels(levels: Sequence[int]) -> tuple[int, ...]:
    """Group counts after the base level: a non-empty, strictly decreasing sequence of ints ``>= 1``.

    Python ints, NumPy integers and 1-D integer arrays or tensors are taken.
    """
    given: object = levels
    if isinstance(given, (np.ndarray, Tensor)) and given.ndim == 1:
        given = given.tolist()  # NumPy or torch integers, e.g. np.array([12, 8, 5])
    if isinstance(given, (str, bytes)) or not isinstance(given, Sequence):
        raise TypeError(f"`levels` must be a sequence of ints, got {type_name(levels)}")
    if not given:
        raise ValueError("`levels` must name at least one group level, got an empty sequence")
    checked = tuple(check_int(n, "levels", minimum=1) for n in given)
    if any(a <= b for a, b in pairwise(checked)):
        raise ValueError(f"`levels` must be strictly decreasing, got {checked}")
    return checked


def first_appearance(labels: np.ndarray, count: int) -> np.ndarray:
    """The canonical number of every label ``0..count-1``: its rank of first appearance in ``labels``.

    ``first_appearance(labels, count)[labels]`` numbers the groups in the order of their smallest member.
    """
    _, first = np.unique(labels, return_index=True)
    order = np.empty(count, dtype=np.int64)
    order[np.argsort(first)] = np.arange(count)
    return order
