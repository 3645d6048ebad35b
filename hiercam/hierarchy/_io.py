"""The JSON form of a ClassHierarchy: its keys checked one by one, messages naming the file or argument."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hiercam._validation import type_name

if TYPE_CHECKING:
    from hiercam.hierarchy.core import ClassHierarchy

__all__ = ["FORMAT", "FORMAT_VERSION", "from_mapping", "read_json", "short"]

FORMAT = "hiercam.ClassHierarchy"
FORMAT_VERSION = 1


def from_mapping(hierarchy_type: type[ClassHierarchy], data: Mapping[str, Any], where: str) -> ClassHierarchy:
    """``ClassHierarchy.from_dict``, messages starting with ``where`` (the argument, or a file's path)."""
    keys = ("format", "version", "class_names", "assignments")
    missing = [key for key in keys if key not in data]
    if missing:
        raise ValueError(
            f"{where} has no key {missing[0]!r}: a {FORMAT} description needs the keys "
            + ", ".join(repr(key) for key in keys)
        )
    if data["format"] != FORMAT:
        raise ValueError(f"{where}: key 'format' must be {FORMAT!r}, got {short(data['format'])}")
    version = data["version"]
    if isinstance(version, bool) or not isinstance(version, int):
        raise ValueError(f"{where}: key 'version' must be an int, got {type_name(version)} {short(version)}")
    if version != FORMAT_VERSION:
        raise ValueError(
            f"{where}: key 'version' is {version}; this hiercam reads version {FORMAT_VERSION} only"
        )
    names, assignments = data["class_names"], data["assignments"]
    singletons = data.get("singletons", [])  # optional: files written before it existed have none
    if not isinstance(singletons, list) or not all(
        isinstance(c, int) and not isinstance(c, bool) for c in singletons
    ):
        raise ValueError(
            f"{where}: key 'singletons' must be a list of class indices, got {short(singletons)}"
        )
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise ValueError(f"{where}: key 'class_names' must be a list of strings, got {short(names)}")
    if not isinstance(assignments, list) or not all(isinstance(level, list) for level in assignments):
        raise ValueError(
            f"{where}: key 'assignments' must be a list of lists of group ids, got {short(assignments)}"
        )
    try:
        return hierarchy_type(assignments, names, singletons=singletons)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"{where}: key 'assignments', 'class_names' or 'singletons' is invalid: {error}"
        ) from None


def read_json(path: str | os.PathLike[str], where: str) -> dict[str, Any]:
    """The JSON object in the file ``path`` (named ``where`` in messages)."""
    try:
        data = json.loads(Path(path).read_bytes().decode("utf-8"))
    except UnicodeDecodeError as error:
        raise ValueError(f"{where} is not UTF-8 text: {error}") from None
    except (ValueError, RecursionError) as error:  # json.JSONDecodeError is a ValueError
        raise ValueError(f"{where} is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{where} must hold a JSON object, got a JSON {type_name(data)}")
    return data


def short(value: Any) -> str:
    """``repr(value)``, cut to 60 characters for messages about untrusted data."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
