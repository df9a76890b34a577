"""The folder tree is the architecture: these tests keep it that way.

* the engine never imports dagster, the CLI, the orchestration layer or the web layer;
* the Dagster layer never imports the CLI; the web layer neither of them;
* no import cycles between the package's modules (top-level imports);
* no module over 500 lines, and no engine function over 80 lines, without a reason written
  at its top (``Long because:`` in the module's docstring; ``Long because:`` or
  ``Long on purpose:`` in the function's docstring or a comment).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "histimport_pipeline"
ROOT = "histimport_pipeline"
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80
#: How a long module (in its docstring) or function (docstring or a comment) says why.
REASONS = ("Long because:", "Long on purpose:")


def _modules() -> Iterator[tuple[str, Path]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield ".".join(parts), path


MODULES = dict(_modules())


def _resolve(module: str, path: Path, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    base = package[: len(package) - node.level + 1]
    return ".".join([*base, node.module] if node.module else base)


def _imports(module: str, path: Path, *, top_level_only: bool) -> set[str]:
    """The modules ``module`` imports; with ``top_level_only``, only at import time."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, path, node)
            found.add(target)
            # ``from package import submodule`` imports the submodule too.
            found.update(
                f"{target}.{alias.name}"
                for alias in node.names
                if f"{target}.{alias.name}" in MODULES
            )
    return found


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _layer(m) == "engine"))
def test_the_engine_imports_no_surface(module: str) -> None:
    imported = _imports(module, MODULES[module], top_level_only=False)
    surfaces = {"cli", "orchestration", "web"}
    bad = sorted(
        name
        for name in imported
        if name.split(".")[0] == "dagster"
        or (name.startswith(f"{ROOT}.") and _layer(name) in surfaces)
    )
    assert not bad, f"{module} imports {bad}: the engine must stay plain Python"


# The CLI may reach into the Dagster layer (``retry-failed`` launches runs), never the reverse.
@pytest.mark.parametrize(
    ("surface", "other"), [("orchestration", "cli"), ("web", "cli"), ("web", "orchestration")]
)
def test_surfaces_do_not_import_each_other(surface: str, other: str) -> None:
    for module, path in MODULES.items():
        if _layer(module) != surface:
            continue
        imported = _imports(module, path, top_level_only=False)
        bad = sorted(n for n in imported if n.startswith(f"{ROOT}.{other}"))
        assert not bad, f"{module} imports {bad}"


def test_no_import_cycles() -> None:
    graph = {
        module: {
            name
            for name in _imports(module, path, top_level_only=True)
            if name in MODULES and name != module
        }
        for module, path in MODULES.items()
    }
    # A package's __init__ is imported before any of its modules: a module importing its own
    # package is not a cycle Python trips over unless the __init__ imports it back, which the
    # graph shows as such.
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = [*stack[stack.index(nxt) :], nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)


def _says_why(text: str | None) -> bool:
    return bool(text) and any(reason in text for reason in REASONS)  # type: ignore[operator]


@pytest.mark.parametrize("module", sorted(MODULES))
def test_long_modules_say_why(module: str) -> None:
    path = MODULES[module]
    lines = len(path.read_text(encoding="utf-8").splitlines())
    if lines > MAX_MODULE_LINES:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        assert _says_why(ast.get_docstring(tree)), (
            f"{path.relative_to(PACKAGE.parent)} has {lines} lines (over {MAX_MODULE_LINES}): "
            f"split it or say why in a '{REASONS[0]}' line of its docstring"
        )


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _layer(m) == "engine"))
def test_long_engine_functions_say_why(module: str) -> None:
    path = MODULES[module]
    source = path.read_text(encoding="utf-8")
    tree = ast.parse(source)
    long = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines, line {node.lineno})"
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno is not None
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
        and not _says_why(ast.get_source_segment(source, node))
    ]
    assert not long, f"{module}: split these or say why ('{REASONS[0]}'): {long}"


def test_the_benchmarks_import_paths_exist() -> None:
    """The benchmarks are scripts, not tests: at least every name they import must exist."""
    import importlib

    missing = []
    for path in sorted((PACKAGE.parent / "benchmarks").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (isinstance(node, ast.ImportFrom) and (node.module or "").startswith(ROOT)):
                continue
            assert node.module is not None
            module = importlib.import_module(node.module)
            missing += [
                f"{path.name}: {node.module}.{alias.name}"
                for alias in node.names
                if not hasattr(module, alias.name) and f"{node.module}.{alias.name}" not in MODULES
            ]
    assert not missing


def test_the_web_service_never_loads_dagster() -> None:
    """Building the web application (every route, every page) loads no dagster module, not
    even through the engine: the service runs where Dagster is not installed."""
    code = (
        "import sys\n"
        "from histimport_pipeline.web import app, pages\n"
        "from histimport_pipeline.web.api import router\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] == 'dagster')\n"
        "print(','.join(loaded))\n"
    )
    found = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert found == ""
