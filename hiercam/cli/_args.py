"""What the command modules share: argparse types and the one-line form of an error."""

from __future__ import annotations

import argparse

__all__ = ["fraction", "one_line", "positive_int"]


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
