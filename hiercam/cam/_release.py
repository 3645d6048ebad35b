"""The ``with`` protocol of the extractors: leaving the block calls ``remove()``, errors propagate."""

from __future__ import annotations

from types import TracebackType
from typing import TypeVar

__all__ = ["Releasable"]

_R = TypeVar("_R", bound="Releasable")


class Releasable:
    """A context manager whose exit calls ``remove()`` (never swallowing the block's exception)."""

    def remove(self) -> None:
        """Release what the object holds; safe to call twice."""
        raise NotImplementedError

    def __enter__(self: _R) -> _R:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.remove()
