"""Atomic file writes: a temporary file in the target folder, then ``os.replace``.

An interrupted run therefore leaves either the previous file or the complete new one, never half a file. A
process killed mid-write (``kill -9``, power loss) cannot remove its temporary file; the next write of the
same target removes it: temporary files are named ``.<target>.<host>-<pid>.<random>.tmp``, and one whose
process is gone (same host), or that is older than a day (another host, or an older name), is stale.
"""

from __future__ import annotations

import glob
import json
import os
import re
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_write", "atomic_write_text", "atomic_write_json", "remove_stale_temporaries"]

#: A temporary file of a host that is not this one (or of an unknown owner) is stale after this many seconds.
STALE_AFTER_S = 24 * 3600
_HOST = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname()) or "host"


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], Any]) -> Path:
    """Write a file atomically: ``write(fileobj)`` fills a temporary file that then replaces ``path``.

    Args:
        path: destination file; its parent folder is created if missing.
        write: callable that writes the content to the binary file object it is given.

    Returns:
        The destination path.

    Examples:
        >>> import tempfile, pathlib
        >>> target = pathlib.Path(tempfile.mkdtemp()) / "hello.txt"
        >>> _ = atomic_write(target, lambda f: f.write(b"hi"))
        >>> target.read_bytes()
        b'hi'
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target)
    owner = f"{_HOST}-{os.getpid()}"
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.{owner}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, _file_mode(target))  # mkstemp makes the file private (0600)
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return target


def remove_stale_temporaries(path: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporary files that killed writes of ``path`` left behind; returns those removed.

    A temporary file of a process of this host that is still running is kept (it may be writing now), as
    is one of another host younger than ``STALE_AFTER_S``.

    Examples:
        >>> import tempfile, pathlib
        >>> target = pathlib.Path(tempfile.mkdtemp()) / "a.json"
        >>> left = target.parent / ".a.json.gone-host-1.x1y2.tmp"
        >>> _ = left.write_text("half")
        >>> os.utime(left, (0, 0))  # last written in 1970
        >>> [p.name for p in remove_stale_temporaries(target)]
        ['.a.json.gone-host-1.x1y2.tmp']
    """
    target = Path(path)
    prefix = f".{target.name}."
    removed = []
    for candidate in target.parent.glob(glob.escape(prefix) + "*.tmp"):
        owner = candidate.name[len(prefix) : -len(".tmp")].rpartition(".")[0]
        host, _, pid = owner.rpartition("-")
        if _is_stale(candidate, host, pid):
            candidate.unlink(missing_ok=True)
            removed.append(candidate)
    return removed


def _is_stale(candidate: Path, host: str, pid: str) -> bool:
    if host == _HOST and pid.isdigit():
        return not _running(int(pid))
    try:
        return time.time() - candidate.stat().st_mtime > STALE_AFTER_S
    except FileNotFoundError:
        return False


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # gone, or an id no process can have
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _file_mode(target: Path) -> int:
    """The mode a plain ``open(target, "w")`` would give: the existing file's, else 0666 minus the umask."""
    try:
        return os.stat(target).st_mode & 0o777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 text atomically (see ``atomic_write``)."""
    return atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


def atomic_write_json(path: str | os.PathLike[str], data: Any) -> Path:
    """Write ``data`` as indented JSON atomically (see ``atomic_write``)."""
    return atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")
