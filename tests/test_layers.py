"""The import graph follows the data flow: each package imports only from the layers below it,
and no two modules import each other, directly or through others.

Layers, bottom to top: the generator (``fabric``), the toy world built on it (``toyworld``),
reward models (``objectives``), the optimisation layer with the study config (``optimize``),
study files as data (``studies``, no code to import), benchmarks (``bench``), the web app
(``fabric_opt_app``) and the command line (``fabric_opt_cli``). Every import counts, also ones inside functions or under
``TYPE_CHECKING``: a cycle hidden in a function is still a cycle. Re-exports in a package's
``__init__`` are the package's surface, not a dependency of its modules, so edges out of an
``__init__`` are left out of the cycle check (they still obey the layers).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("fabric", "toyworld", "objectives", "optimize", "studies", "bench", "fabric_opt_app", "fabric_opt_cli")
RANK = {name: i for i, name in enumerate(LAYERS)}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for layer in LAYERS for p in sorted((ROOT / layer).rglob("*.py"))}


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """Project modules that ``path`` imports, anywhere in the file."""
    found: set[str] = set()
    this = _module_name(path)
    package = this if path.name == "__init__.py" else this.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # `from pkg import module` depends on the module, `from pkg import name` on the package
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target.split(".")[0] in RANK and target != this:
                found.add(target)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, modules) for name, path in modules.items()}


def test_every_import_points_down_the_layers() -> None:
    upward = [
        f"{module} imports {target}"
        for module, targets in _graph().items()
        for target in targets
        if RANK[target.split(".")[0]] > RANK[module.split(".")[0]]
    ]
    assert not upward, "imports that run back up a layer:\n" + "\n".join(sorted(upward))


def test_studies_is_data() -> None:
    code = [m for m in _modules() if m.split(".")[0] == "studies" and m != "studies"]
    assert not code, f"studies/ holds study files and prompt lists, not modules: {code}"
    assert not _graph()["studies"], "studies/__init__.py must import nothing from the project"


def test_no_module_imports_itself_back() -> None:
    graph = {m: {t for t in ts if t != m} for m, ts in _graph().items() if _modules()[m].name != "__init__.py"}
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt in graph and state.get(nxt) is None:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if state.get(node) is None:
            visit(node)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("layer", LAYERS)
def test_each_layer_exists(layer: str) -> None:
    assert (ROOT / layer / "__init__.py").is_file()
