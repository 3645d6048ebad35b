"""Progress output that reads well in a terminal and in a log file.

On a terminal, long steps show a tqdm bar (redrawn in place by carriage returns); in a log file (a stream that
is not a terminal) the same bar would write thousands of characters, so plain lines are written instead: one
when the step ends, and one every ``interval`` seconds while it runs.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import IO, Any

__all__ = ["is_terminal", "Progress", "print_line"]


def print_line(line: str) -> None:
    """Print ``line`` to stdout and flush it: it keeps its place among stderr's lines in a log file."""
    print(line, flush=True)


def is_terminal(stream: IO[str] | None = None) -> bool:
    """Whether ``stream`` (default ``sys.stderr``, where tqdm writes) is an interactive terminal.

    A stream without ``isatty`` (a test's capture object, ``None`` under ``pythonw``) or a closed one is not.

    Example:
        >>> import io
        >>> is_terminal(io.StringIO())
        False
    """
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    if not callable(isatty):
        return False
    try:
        return bool(isatty())
    except (ValueError, OSError):  # a closed or detached stream
        return False


class Progress:
    """Progress of one long step: a tqdm bar on a terminal, plain lines otherwise, and a closing line.

    Use as a context manager and call ``update(n)`` as work is done. When the step ends, ``log`` gets one
    line, ``"<desc>: <done> <unit> in <seconds> s"``, in both cases; without a terminal, ``log`` also gets
    a line ``"<desc>: <done>/<total> <unit>, <seconds> s"`` at most every ``interval`` seconds while it runs.

    Args:
        total: the amount of work (e.g. images), or ``None`` if unknown.
        desc: what the step does, e.g. ``"  maps of base (val)"``.
        enabled: ``False`` shows nothing at all (no bar, no lines).
        log: where the plain lines go.
        unit: the unit of ``total``, plural (e.g. ``"images"``).
        interval: seconds between plain lines while the step runs (no terminal only).
        terminal: whether to draw a bar; default: whether ``sys.stderr`` is a terminal.

    Example:
        >>> lines = []
        >>> with Progress(3, "counting", log=lines.append, terminal=False) as progress:
        ...     for _ in range(3):
        ...         progress.update(1)
        >>> lines[0].startswith("counting: 3 items in ")
        True
    """

    def __init__(
        self,
        total: int | None,
        desc: str,
        *,
        enabled: bool = True,
        log: Callable[[str], None] = print_line,
        unit: str = "items",
        interval: float = 30.0,
        terminal: bool | None = None,
    ) -> None:
        self.total, self.desc, self.enabled, self.log, self.unit = total, desc, enabled, log, unit
        self.interval = interval
        self.done = 0
        self._start = self._last = time.perf_counter()
        self._bar: Any = None
        if enabled and (is_terminal() if terminal is None else terminal):
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc.strip(), unit=f" {unit}", leave=False, dynamic_ncols=True)

    def update(self, n: int = 1) -> None:
        """Count ``n`` more units of work done."""
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
            return
        now = time.perf_counter()
        if self.enabled and now - self._last >= self.interval:
            self._last = now
            of = f"/{self.total}" if self.total is not None else ""
            self.log(f"{self.desc}: {self.done}{of} {self.unit}, {now - self._start:.0f} s")

    def close(self) -> None:
        """End the step: remove the bar and write the closing line."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self.enabled:
            self.log(f"{self.desc}: {self.done} {self.unit} in {time.perf_counter() - self._start:.1f} s")
            self.enabled = False  # close() twice writes one line

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type: object, *exc_info: object) -> None:
        if exc_type is not None:  # the step failed: no line saying it is done
            self.enabled = False
        self.close()
