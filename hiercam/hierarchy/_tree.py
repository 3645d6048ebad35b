"""The tree views of a ClassHierarchy: ``str`` (indented text) and ``_repr_html_`` (nested lists)."""

from __future__ import annotations

from html import escape
from typing import TYPE_CHECKING

from hiercam.hierarchy._checks import NAMES_SHOWN

if TYPE_CHECKING:
    from hiercam.hierarchy.core import ClassHierarchy

__all__ = ["render_html", "render_text"]

Members = list[list[list[int]]]  # groups(level) for every level


def render_text(hierarchy: ClassHierarchy) -> str:
    """The tree, top level first: one line per group with its size; level-1 groups name their classes."""
    members = _members_by_level(hierarchy)
    names = hierarchy.class_names
    lines = [repr(hierarchy)]

    def walk(level: int, group: int, depth: int) -> None:
        line = "  " * depth + _group_label(hierarchy, level, group, members)
        if level == 1:
            shown = [names[c] for c in members[1][group][:NAMES_SHOWN]]
            more = len(members[1][group]) - len(shown)
            line += ": " + ", ".join(shown) + (f", ... ({more} more)" if more else "")
        lines.append(line)
        for child in _children(hierarchy, level, group, members):
            walk(level - 1, child, depth + 1)

    top = hierarchy.num_levels - 1
    for group in range(hierarchy.level_sizes[top]):
        walk(top, group, 0)
    return "\n".join(lines)


def render_html(hierarchy: ClassHierarchy) -> str:
    """The tree as nested HTML lists; each group a collapsible ``<details>``, class names HTML-escaped."""
    members = _members_by_level(hierarchy)
    names = hierarchy.class_names

    def items(level: int, groups: list[int]) -> str:
        parts = []
        for group in groups:
            label = escape(_group_label(hierarchy, level, group, members))
            if level == 1:
                listed = escape(", ".join(names[c] for c in members[1][group]))
                parts.append(f"<li>{label}: {listed}</li>")
            else:
                inner = items(level - 1, _children(hierarchy, level, group, members))
                parts.append(f'<li><details open="open"><summary>{label}</summary>{inner}</details></li>')
        return "<ul>" + "".join(parts) + "</ul>"

    top = hierarchy.num_levels - 1
    sizes = " &#8594; ".join(str(s) for s in hierarchy.level_sizes)
    return (
        f'<div class="hiercam-class-hierarchy"><strong>ClassHierarchy</strong>: {hierarchy.num_classes} '
        f"classes, levels {sizes}{items(top, list(range(hierarchy.level_sizes[top])))}</div>"
    )


def _members_by_level(hierarchy: ClassHierarchy) -> Members:
    """``groups(level)`` for every level, computed once for the tree views."""
    return [hierarchy.groups(level) for level in range(hierarchy.num_levels)]


def _group_label(hierarchy: ClassHierarchy, level: int, group: int, members: Members) -> str:
    count = len(members[level][group])
    kept_out = count == 1 and members[level][group][0] in hierarchy.singletons
    alone = ", kept out of the grouping" if kept_out else ""
    return f"level {level} group {group} ({count} class{'' if count == 1 else 'es'}{alone})"


def _children(hierarchy: ClassHierarchy, level: int, group: int, members: Members) -> list[int]:
    """The groups of ``level - 1`` inside ``group`` of ``level`` (none at level 1: classes are leaves)."""
    if level <= 1:
        return []
    finer = hierarchy.assignments(level - 1).tolist()
    return sorted({finer[c] for c in members[level][group]})
