"""The house holds: read every module's imports (its source, not a run) and check the rules of
docs/architecture.md: no import cycle at run time, no module imports another package's private name, lower
layers never import higher ones, and `import hiercam` does not load torchvision."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "hiercam"

ARCHITECTURE_PAGE = PACKAGE.parent / "docs" / "architecture.md"


def read_layers(page: Path) -> dict[str, int]:
    """The layer table of the architecture page (``| 0 | `_validation`, `_io` ... |``): unit -> layer. A unit
    is a subpackage or a root module; the lowest layer holds the root's private helpers."""
    layers = {}
    for layer, units in re.findall(r"^\| (\d+) \| (.+?) \|$", page.read_text(encoding="utf-8"), re.MULTILINE):
        for name in re.findall(r"`([\w.]+)`", units):
            layers[f"hiercam.{name}"] = int(layer)
    return layers


# The layers, lowest first, as the architecture page states them: a module may import its own layer or lower.
LAYERS = read_layers(ARCHITECTURE_PAGE)
# Units that may not import one another even where the layers would allow it (the architecture page's words).
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "hiercam.cam": ("hiercam.models", "hiercam.metrics", "hiercam.pipeline", "hiercam.training"),
    "hiercam.datasets": ("hiercam.grouping", "hiercam.metrics", "hiercam.training"),
    "hiercam.losses": ("hiercam.models", "hiercam.datasets", "hiercam.cam", "hiercam.metrics"),
    "hiercam.grouping": ("hiercam.datasets", "hiercam.cam", "hiercam.metrics", "hiercam.training"),
    "hiercam.models": ("hiercam.cam", "hiercam.losses", "hiercam.metrics"),
}


@dataclass(frozen=True)
class Import:
    """One import statement of a module: the imported module, the names taken from it, and whether it runs
    when the module is imported (module level, outside ``if TYPE_CHECKING``)."""

    source: str
    target: str
    names: tuple[str, ...]
    at_import: bool
    line: int


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk(node: ast.AST, at_import: bool) -> Iterator[tuple[ast.AST, bool]]:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            yield from _walk(child, False)
        elif isinstance(child, ast.If) and _is_type_checking(child.test):
            for statement in child.body:
                yield statement, False
                yield from _walk(statement, False)
            for statement in child.orelse:
                yield statement, at_import
                yield from _walk(statement, at_import)
        else:
            yield child, at_import
            yield from _walk(child, at_import)


def imports_of(name: str) -> list[Import]:
    path = MODULES[name]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node, at_import in _walk(tree, True):
        if isinstance(node, ast.Import):
            found += [Import(name, alias.name, (), at_import, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names = tuple(alias.name for alias in node.names)
            found.append(Import(name, base, names, at_import, node.lineno))
    return [i for i in found if i.target == "hiercam" or i.target.startswith("hiercam.")]


ALL_IMPORTS = [i for name in MODULES for i in imports_of(name)]


def unit(module: str) -> str:
    """The layer unit of a module: its subpackage, or the root module itself."""
    parts = module.split(".")
    if len(parts) == 1:
        return module
    head = ".".join(parts[:2])
    return head


def targets(i: Import) -> list[str]:
    """The modules an import loads: the module, and any submodule it takes by name."""
    found = [i.target]
    found += [f"{i.target}.{n}" for n in i.names if f"{i.target}.{n}" in MODULES]
    return [t for t in found if t in MODULES]


def test_modules_found() -> None:
    assert len(MODULES) > 50
    assert len(LAYERS) > 15
    assert LAYERS["hiercam._validation"] == 0
    assert LAYERS["hiercam.cli"] == max(LAYERS.values())
    assert {"hiercam.cam", "hiercam.metrics", "hiercam.pipeline"} <= set(MODULES)


def test_no_import_cycle_at_run_time() -> None:
    """Tarjan's strongly connected components over the imports that run when a module is imported. A package's
    ``__init__`` importing its own submodules is an edge like any other, so a submodule that imports its own
    package's ``__init__`` back closes a cycle."""
    graph: dict[str, set[str]] = {name: set() for name in MODULES}
    for i in ALL_IMPORTS:
        if i.at_import:
            graph[i.source].update(t for t in targets(i) if t != i.source)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    assert not cycles, f"import cycles at run time: {cycles}"


def _private(part: str) -> bool:
    return part.startswith("_") and not part.startswith("__")


def _private_owner(module: str) -> str | None:
    """The unit that owns ``module`` if the module is private (a part of its path after the unit starts
    with ``_``), else None. The root's private helpers (``hiercam._validation`` and friends) belong to every
    unit."""
    if unit(module) in LAYERS and LAYERS[unit(module)] == 0:
        return None
    return unit(module) if any(_private(p) for p in module.split(".")[1:]) else None


def test_no_private_name_of_another_package() -> None:
    """A module may use the private modules and names of its own unit and the root's private helpers; another
    unit's private module or name is off limits."""
    bad = []
    for i in ALL_IMPORTS:
        mine = unit(i.source)
        owners = [_private_owner(i.target)]
        for name in i.names:
            if f"{i.target}.{name}" in MODULES:
                owners.append(_private_owner(f"{i.target}.{name}"))
            elif _private(name) and not (unit(i.target) in LAYERS and LAYERS[unit(i.target)] == 0):
                owners.append(unit(i.target))
        if any(owner is not None and owner != mine for owner in owners):
            bad.append(f"{i.source}:{i.line} imports {i.target} {list(i.names)}")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("source_unit", sorted(LAYERS))
def test_layers(source_unit: str) -> None:
    bad = []
    for i in ALL_IMPORTS:
        if unit(i.source) != source_unit:
            continue
        for target in targets(i) or [i.target]:
            target_unit = unit(target)
            if target_unit == source_unit or target_unit == "hiercam":
                if target_unit == "hiercam" and source_unit != "hiercam":
                    bad.append(f"{i.source}:{i.line} imports the package root")
                continue
            assert target_unit in LAYERS, f"{target_unit} has no layer in LAYERS: add it (and to the docs)"
            if LAYERS[target_unit] > LAYERS[source_unit]:
                bad.append(f"{i.source}:{i.line} imports {target} from a higher layer")
            if target_unit in FORBIDDEN.get(source_unit, ()):
                bad.append(f"{i.source}:{i.line} imports {target}")
    assert not bad, "\n".join(bad)


def test_every_unit_has_a_layer() -> None:
    units = {unit(name) for name in MODULES} - {"hiercam"}
    assert units <= set(LAYERS), sorted(units - set(LAYERS))


def test_import_is_light() -> None:
    """``import hiercam`` loads no torchvision, matplotlib, sklearn, scipy or timm: they load where used."""
    heavy = ("torchvision", "matplotlib", "sklearn", "scipy", "timm")
    code = f"import sys, hiercam; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out


COMPONENTS = (
    "cam",
    "datasets",
    "fusion",
    "grouping",
    "hierarchy",
    "losses",
    "maps",
    "metrics",
    "models",
    "protocols",
    "training",
)


def test_root_list_is_the_union_of_the_component_lists() -> None:
    """One source for the public API: the root exports exactly the component packages' names (and the
    value-check switch), each once, as the very object the package exports."""
    import importlib

    import hiercam

    expected = {"__version__", "checks", "checks_enabled", "set_checks"}
    for name in COMPONENTS:
        module = importlib.import_module(f"hiercam.{name}")
        expected |= set(module.__all__)
        for public in module.__all__:
            assert getattr(hiercam, public) is getattr(module, public), (name, public)
    assert sorted(hiercam.__all__) == sorted(expected)
    assert len(hiercam.__all__) == len(set(hiercam.__all__))


def test_root_has_about_a_dozen_modules() -> None:
    root_modules = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(root_modules) <= 13, root_modules
