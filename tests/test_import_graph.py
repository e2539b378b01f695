"""The package's modules import each other without cycles, deferred (function-level) imports included.

A module importing its own parent package is not counted: Python runs a package's `__init__` before its
modules, so that edge is how packages work, not a cycle between stages.
"""

from __future__ import annotations

import ast
from pathlib import Path

import recsys_mtl

ROOT = Path(recsys_mtl.__file__).parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking_block(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imported(tree: ast.Module) -> set[str]:
    """Every recsys_mtl module named by an import anywhere in the file, except under `if TYPE_CHECKING:`."""
    found: set[str] = set()
    pending: list[ast.AST] = [tree]
    while pending:
        node = pending.pop()
        if _is_type_checking_block(node):
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        pending.extend(ast.iter_child_nodes(node))
    return {name for name in found if name.split(".")[0] == "recsys_mtl"}


def import_graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        targets: set[str] = set()
        for name in _imported(ast.parse(path.read_text())):
            parts = name.split(".")
            # importing a.b.c runs a.b's __init__ too
            targets.update(".".join(parts[:i]) for i in range(2, len(parts) + 1) if ".".join(parts[:i]) in files)
        graph[module] = {t for t in targets if t != module and not module.startswith(t + ".")}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for target in graph[module]:
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == module:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return found


def test_no_module_of_the_package_imports_itself_back_through_others():
    assert cycles(import_graph()) == []


def test_the_cycle_finder_sees_a_deferred_import_cycle():
    graph = {"recsys_mtl.a": {"recsys_mtl.b"}, "recsys_mtl.b": {"recsys_mtl.a"}, "recsys_mtl.c": set()}
    assert cycles(graph) == [["recsys_mtl.a", "recsys_mtl.b"]]
