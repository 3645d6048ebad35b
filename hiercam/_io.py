"""The files hiercam reads and writes: checked readers of text, JSON and images; atomic writes.

**Reading.** ``read_text_file``, ``read_json_file`` and ``open_image`` are the one way every module reads a
file the user gives. Whatever goes wrong inside Python, ``json`` or PIL (a folder where a file is expected,
bytes that are not UTF-8, JSON nested deeper than the parser can follow, a truncated image, a header
declaring more pixels than PIL's ``Image.MAX_IMAGE_PIXELS`` allows) becomes a ``ValueError`` naming the file
(and the argument, when given); a missing file stays a ``FileNotFoundError``, also naming it.
``check_out_dir`` checks an output folder before any work.

**Writing.** A temporary file in the target folder, then ``os.replace``. An interrupted run therefore leaves
either the previous file or the complete new one, never half a file. A process killed mid-write (``kill -9``,
power loss) cannot remove its temporary file; the next write of the same target removes it: temporary files
are named ``.<target>.<host>-<pid>.<random>.tmp``, and one whose process is gone (same host), or that is
older than a day (another host, or an older name), is stale.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from PIL import Image

__all__ = [
    "MAX_TEXT_BYTES",
    "atomic_write",
    "atomic_write_text",
    "atomic_write_json",
    "check_out_dir",
    "describe_file",
    "open_image",
    "read_json_file",
    "read_text_file",
    "remove_stale_temporaries",
]

#: The largest text or JSON file read (config, split list, labels): its size is checked before it is read.
MAX_TEXT_BYTES = 256 * 2**20

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


# ------------------------------------------------------------------------------------------------ reading
def describe_file(path: str | os.PathLike[str], argument: str | None = None) -> str:
    """How messages name a file: the path, or the argument in backticks and the quoted path.

    Examples:
        >>> describe_file("a/b.json"), describe_file("names.txt", "class_names")
        ('a/b.json', "`class_names` 'names.txt'")
    """
    return f"`{argument}` {os.fspath(path)!r}" if argument else os.fspath(path)


def _checked_file(path: Any, argument: str | None) -> Path:
    """``path`` as a ``Path`` that is an existing file (not a folder), or the error naming it."""
    if not isinstance(path, (str, os.PathLike)):
        name = argument or "path"
        raise TypeError(f"`{name}` must be a path, got {type(path).__name__}")
    where, target = describe_file(path, argument), Path(path)
    if target.is_dir():
        raise ValueError(f"{where} is a folder; a file was expected")
    if not target.exists():
        inside = next((p for p in target.parents if p.exists()), None)
        if inside is not None and not inside.is_dir():
            raise ValueError(f"{where}: {os.fspath(inside)!r} is a file, not a folder")
        raise FileNotFoundError(f"{where}: no such file")
    return target


def read_text_file(path: str | os.PathLike[str], argument: str | None = None) -> str:
    """The text of a UTF-8 file (a byte-order mark is dropped), every failure naming the file.

    Args:
        path: the file.
        argument: the argument that named it (``"class_names"``), for the messages; ``None``: the path alone.

    Returns:
        The text.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a folder, a path through a file, a file larger than ``MAX_TEXT_BYTES``, an unreadable
            file (permissions, I/O error) or bytes that are not UTF-8 (the offset of the first bad byte).

    Examples:
        >>> import tempfile, pathlib
        >>> file = pathlib.Path(tempfile.mkdtemp()) / "latin1.txt"
        >>> _ = file.write_bytes("caf\u00e9".encode("latin-1"))
        >>> read_text_file(file)
        Traceback (most recent call last):
        ...
        ValueError: ...latin1.txt is not UTF-8 text: byte 0xe9 at offset 3 (save the file as UTF-8)
    """
    target = _checked_file(path, argument)
    where = describe_file(path, argument)
    try:
        size = target.stat().st_size
        if size > MAX_TEXT_BYTES:
            raise ValueError(f"{where} holds {size} bytes, more than the {MAX_TEXT_BYTES} read as text")
        data = target.read_bytes()
    except OSError as error:
        raise ValueError(f"{where} cannot be read: {error.strerror or error}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ValueError(
            f"{where} is not UTF-8 text: byte 0x{data[error.start]:02x} at offset {error.start} "
            "(save the file as UTF-8)"
        ) from None


def read_json_file(path: str | os.PathLike[str], argument: str | None = None) -> Any:
    """The JSON value of a UTF-8 file, read by ``read_text_file``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: as ``read_text_file``, and text that is not JSON or nests deeper than the parser can
            follow (Python's recursion limit), naming the file.

    Examples:
        >>> import tempfile, pathlib
        >>> file = pathlib.Path(tempfile.mkdtemp()) / "deep.json"
        >>> _ = file.write_text("[" * 100_000 + "]" * 100_000)
        >>> read_json_file(file, "labels")
        Traceback (most recent call last):
        ...
        ValueError: `labels` '...deep.json' is not valid JSON: nested too deeply to be read
    """
    text = read_text_file(path, argument)
    where = describe_file(path, argument)
    try:
        return json.loads(text)
    except ValueError as error:  # JSONDecodeError, or an integer of more digits than Python converts
        raise ValueError(f"{where} is not valid JSON: {error}") from None
    except RecursionError:
        raise ValueError(f"{where} is not valid JSON: nested too deeply to be read") from None


@contextlib.contextmanager
def open_image(path: str | os.PathLike[str], argument: str | None = None) -> Iterator[Image.Image]:
    """Open an image file with PIL and decode it in full; the file is closed when the block ends.

    Only opening and decoding are guarded: an error raised in the ``with`` block passes unchanged. The
    ``ValueError`` keeps PIL's own error as its ``__cause__``.

    Args:
        path: an image file in any format PIL reads.
        argument: the argument that named it, for the messages; ``None``: the path alone.

    Yields:
        The decoded PIL image.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a folder, a file PIL cannot identify, a truncated or damaged file, or a header declaring
            more than twice ``PIL.Image.MAX_IMAGE_PIXELS`` pixels (a decompression bomb), naming the file.

    Examples:
        >>> import tempfile, pathlib
        >>> from PIL import Image
        >>> file = pathlib.Path(tempfile.mkdtemp()) / "cut.png"
        >>> Image.new("RGB", (64, 64), "red").save(file)
        >>> with open_image(file) as image:
        ...     image.size
        (64, 64)
        >>> _ = file.write_bytes(file.read_bytes()[:60])
        >>> with open_image(file) as image:
        ...     pass
        Traceback (most recent call last):
        ...
        ValueError: ...cut.png is not a readable image: image file is truncated
    """
    from PIL import Image

    target = _checked_file(path, argument)
    where = describe_file(path, argument)
    try:
        image = Image.open(target)
    except Image.DecompressionBombError as error:
        raise ValueError(f"{where} declares too many pixels to decode: {error}") from error
    except (OSError, ValueError, SyntaxError, EOFError) as error:
        raise ValueError(f"{where} is not a readable image: {error}") from error
    with image:
        try:
            image.load()
        except Image.DecompressionBombError as error:
            raise ValueError(f"{where} declares too many pixels to decode: {error}") from error
        except (OSError, ValueError, SyntaxError, EOFError) as error:
            raise ValueError(f"{where} is not a readable image: {error}") from error
        yield image


def check_out_dir(path: str | os.PathLike[str], argument: str) -> Path:
    """``path`` as an output folder, checked before any work: a folder, or a path that can become one.

    Raises:
        TypeError: ``path`` is not a path.
        ValueError: ``path`` is a file, or lies inside a file (``file.txt/out``), naming ``argument``.

    Examples:
        >>> import tempfile, pathlib
        >>> file = pathlib.Path(tempfile.mkdtemp()) / "notes.txt"
        >>> _ = file.write_text("x")
        >>> check_out_dir(file / "out", "out")
        Traceback (most recent call last):
        ...
        ValueError: `out` '.../notes.txt/out' cannot be a folder: '.../notes.txt' is a file
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"`{argument}` must be a folder path, got {type(path).__name__}")
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise ValueError(f"`{argument}` {os.fspath(path)!r} is a file; an output folder was expected")
    inside = next((p for p in (target, *target.parents) if p.exists()), None)
    if inside is not None and not inside.is_dir():
        raise ValueError(
            f"`{argument}` {os.fspath(path)!r} cannot be a folder: {os.fspath(inside)!r} is a file"
        )
    return target
