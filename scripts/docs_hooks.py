"""MkDocs hooks for the documentation site (see ``hooks:`` in mkdocs.yml).

A page line of the form ``<!-- notebook: examples/notebooks/quickstart.ipynb -->`` is replaced by the cells of
that notebook, read at build time: Markdown cells as they are, code cells as Python code blocks. The page then
shows the notebook that CI executes, so the two cannot drift apart.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

MARKER = re.compile(r"^<!-- notebook: (?P<path>\S+) -->$", re.MULTILINE)


def render_notebook(path: Path) -> str:
    """The cells of a notebook as Markdown: code cells become fenced Python blocks, outputs are left out."""
    notebook = json.loads(path.read_text(encoding="utf-8"))
    parts = []
    for cell in notebook["cells"]:
        source = "".join(cell["source"]).strip("\n")
        if not source:
            continue
        if cell["cell_type"] == "markdown":
            parts.append(source)
        elif cell["cell_type"] == "code":
            parts.append(f"```python\n{source}\n```")
    return "\n\n".join(parts) + "\n"


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """Expand the notebook markers of a page (paths relative to the directory of mkdocs.yml)."""
    root = Path(config["config_file_path"]).parent

    def expand(match: re.Match[str]) -> str:
        path = root / match["path"]
        if not path.is_file():
            raise FileNotFoundError(f"{page.file.src_path}: notebook {match['path']!r} not found")
        return render_notebook(path)

    return MARKER.sub(expand, markdown)
