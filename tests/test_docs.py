"""The documentation site: it builds with warnings as errors, its API reference covers every public name, and
its how-to pages, notebook page and changelog page show the real files."""

from __future__ import annotations

import html
import importlib
import os
import re
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))
PUBLIC_MODULES = [
    "hiercam",
    "hiercam.pipeline",
    "hiercam.maps",
    "hiercam.metrics",
    "hiercam.models",
    "hiercam.datasets",
    "hiercam.viz",
]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site, built as `make docs` builds it (`--strict`), from outside the repository."""
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"), "-d", str(out)],
        cwd=out,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    log = result.stdout + result.stderr
    assert result.returncode == 0, log
    assert "WARNING" not in log, log
    return out


def page_text(site: Path, page: str) -> str:
    """The text of a built page: tags removed, entities decoded (code blocks read as their source)."""
    markup = (site / page / "index.html").read_text(encoding="utf-8")
    return html.unescape(re.sub(r"<[^>]+>", "", markup))


def read_inventory(path: Path) -> dict[str, str]:
    """Sphinx inventory (objects.inv, written by mkdocstrings): identifier -> page URI with anchor."""
    data = path.read_bytes()
    offset = 0
    for _ in range(4):  # four plain-text header lines, then zlib
        offset = data.index(b"\n", offset) + 1
    entries = {}
    for line in zlib.decompress(data[offset:]).decode("utf-8").splitlines():
        match = re.match(r"(?P<name>\S+) \S+ -?\d+ (?P<uri>\S*) ", line)
        assert match, line
        uri = match["uri"]
        entries[match["name"]] = uri[:-1] + match["name"] if uri.endswith("$") else uri
    return entries


def public_names() -> list[str]:
    names = []
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        names += [f"{module_name}.{name}" for name in module.__all__]
    return names


def test_api_reference_documents_every_public_name(site: Path) -> None:
    inventory = read_inventory(site / "objects.inv")
    missing = [name for name in public_names() if name not in inventory]
    assert not missing, f"not in the API reference: {missing}"
    for name in public_names():
        page, _, anchor = inventory[name].partition("#")
        markup = (site / page / "index.html").read_text(encoding="utf-8")
        assert f'id="{anchor}"' in markup, f"{name}: no heading {anchor!r} on {page}"


def test_api_reference_shows_docstrings_with_shapes(site: Path) -> None:
    text = page_text(site, "api/fusion")
    assert "Fuse maps with the paper's Eq. 6" in text  # the docstring's summary
    assert "(B, K, H, W)" in text  # shapes from the Args section
    for page in ("api/fusion", "api/cam", "api/metrics", "api/models", "api/datasets", "api/pipeline"):
        # no Sphinx role left unrendered
        assert not re.search(r":(func|class|meth|mod|attr):`", page_text(site, page)), page


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda path: path.name)
def test_every_example_is_shown_in_full_by_a_howto_page(site: Path, example: Path) -> None:
    include = f'--8<-- "examples/{example.name}"'
    pages = [page for page in (ROOT / "docs").rglob("*.md") if include in page.read_text(encoding="utf-8")]
    assert len(pages) == 1, f"{example.name} must be included by exactly one page, found {pages}"
    built = page_text(site, pages[0].relative_to(ROOT / "docs").with_suffix("").as_posix())
    for line in example.read_text(encoding="utf-8").splitlines():
        assert line.strip() in built, f"{pages[0].name} does not show {line!r}"


def test_notebook_page_shows_every_cell_of_the_notebook(site: Path) -> None:
    nbformat = pytest.importorskip("nbformat")
    notebook = nbformat.read(ROOT / "examples" / "notebooks" / "quickstart.ipynb", as_version=4)
    text = page_text(site, "notebook")
    code_lines = [
        line.strip()
        for cell in notebook.cells
        if cell.cell_type == "code"
        for line in cell.source.splitlines()
        if line.strip()
    ]
    assert len(code_lines) > 20
    for line in code_lines:
        assert line in text, line


def test_changelog_page_is_the_changelog(site: Path) -> None:
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    text = page_text(site, "changelog")
    entries = [line[2:].replace("`", "")[:40] for line in changelog.splitlines() if line.startswith("- ")]
    assert len(entries) > 10
    for entry in entries:
        assert entry in text, entry


def test_site_fetches_nothing_at_build_time(site: Path) -> None:
    """No web fonts and no remote assets: the site builds and reads offline."""
    markup = (site / "index.html").read_text(encoding="utf-8")
    assert "fonts.googleapis.com" not in markup
    assert "fonts.gstatic.com" not in markup
    assert not re.search(r'<(script|link)[^>]+(src|href)="https?://', markup)
