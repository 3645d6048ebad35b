"""Remove the outputs and execution counts of notebooks, in place, so that they are stored clean in git.

Run: python scripts/strip_notebooks.py examples/notebooks/*.ipynb
"""

from __future__ import annotations

import sys

import nbformat


def strip(path: str) -> bool:
    """Strip one notebook; True if it changed."""
    notebook = nbformat.read(path, as_version=4)
    before = nbformat.writes(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
        cell.metadata.pop("execution", None)
    notebook.metadata.pop("widgets", None)
    after = nbformat.writes(notebook)
    if after != before:
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(after)
    return after != before


def main() -> None:
    for path in sys.argv[1:]:
        print(f"{path}: {'stripped' if strip(path) else 'already clean'}")


if __name__ == "__main__":
    main()
