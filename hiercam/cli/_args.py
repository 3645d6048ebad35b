"""What the command modules share: argparse types, the one-line form of an error, the CAM methods' options."""

from __future__ import annotations

import argparse
import inspect

__all__ = ["eigen_smooth_methods", "fraction", "one_line", "positive_int"]


def eigen_smooth_methods(takes: bool = True) -> list[str]:
    """The keys of ``hiercam.cam.METHODS`` whose class takes ``eigen_smooth`` (``takes=False``: lacks it)."""
    from hiercam.cam import METHODS

    return [
        name
        for name, cls in METHODS.items()
        if ("eigen_smooth" in inspect.signature(cls).parameters) == takes
    ]


def fraction(text: str) -> float:
    """An argparse type: a number in [0, 1)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1), got {text!r}") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1), got {value}")
    return value


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {value}")
    return value


def one_line(error: BaseException) -> str:
    """The message of ``error`` on one line (its type's name when it has none)."""
    return " ".join(str(error).split()) or type(error).__name__
