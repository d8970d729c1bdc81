"""The project's standing checks: lint, formatting, strict types, and a core that never imports Qt."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CORE = ROOT / "inferhub_desktop" / "core"
QT_MODULES = ("PySide6", "qasync", "shiboken6")


@pytest.mark.parametrize(
    "command",
    [
        ["ruff", "check", "."],
        ["ruff", "format", "--check", "."],
        ["mypy"],
    ],
    ids=["ruff", "ruff-format", "mypy"],
)
def test_tool_passes(command: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", *command], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_core_source_never_imports_qt() -> None:
    offenders = []
    for path in CORE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] in QT_MODULES]
    assert not offenders


def test_importing_the_core_and_cli_loads_no_qt() -> None:
    code = (
        "import sys, inferhub_desktop.core, inferhub_desktop.cli; "
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {QT_MODULES!r}))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def _imports() -> dict[str, set[str]]:
    """Map each module of inferhub_desktop to the project's modules it imports, type-checking imports
    included (they are in the source all the same)."""
    package = ROOT / "inferhub_desktop"
    modules = {
        ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): path
        for path in package.rglob("*.py")
    }
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        here = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = here.split(".")[: len(here.split(".")) - node.level + 1]
                    base = ".".join([*parent, *([base] if base else [])])
                # `from package import module` imports the module; `from module import name` the module.
                targets = [
                    f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                    for alias in node.names
                ]
            found |= {target for target in targets if target in modules and target != name}
        graph[name] = found
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """Return one cycle of the graph, as the nodes along it, or None when it has none."""
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (found := visit(target)):
                return found
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_modules_import_one_another_without_a_cycle() -> None:
    assert _cycle(_imports()) is None


def test_the_cores_packages_import_one_another_without_a_cycle() -> None:
    # Each package of the core (api, backends, wire) counted as one: they import downwards only.
    def unit(module: str) -> str:
        parts = module.split(".")
        return ".".join(parts[:3]) if len(parts) > 3 else module

    packages: dict[str, set[str]] = {}
    for module, targets in _imports().items():
        packages.setdefault(unit(module), set()).update(unit(t) for t in targets if unit(t) != unit(module))
    assert _cycle(packages) is None


def test_the_wire_layer_imports_nothing_else_of_the_project() -> None:
    wire = "inferhub_desktop.core.wire"
    outside = {
        (module, target)
        for module, targets in _imports().items()
        if module.startswith(wire)
        for target in targets
        if not target.startswith(wire)
    }
    assert outside == set()
