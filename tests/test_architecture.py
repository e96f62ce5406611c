"""The layout rules of docs/architecture.md, checked on the source so they stay true.

No module imports another module's underscore names; no class over 400 lines
and no module over 600; the core never imports click; the imports between
queuectl's modules form a DAG (imports under `if TYPE_CHECKING:` are type
hints, not dependencies, and are left out).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "queuectl"
CORE = {"errors", "fsio", "job", "config", "index", "spool", "dropins", "registry", "recovery",
        "runner", "watcher", "worker", "supervisor", "check"}
MAX_MODULE_LINES = 600
MAX_CLASS_LINES = 400


def _modules() -> dict[str, ast.Module]:
    return {p.stem: ast.parse(p.read_text(), str(p)) for p in sorted(PACKAGE.glob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _imports(tree: ast.Module) -> list[tuple[str, list[str]]]:
    """(module, imported names) for every import of a queuectl module, type-only ones left out."""
    out: list[tuple[str, list[str]]] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                continue
            if isinstance(child, ast.ImportFrom):
                names = [a.name for a in child.names]
                if child.level == 1 and child.module:
                    out.append((child.module.split(".")[0], names))
                elif child.level == 1:  # from . import x
                    out.extend((n, []) for n in names)
                elif child.module and child.module.startswith("queuectl."):
                    out.append((child.module.split(".")[1], names))
            elif isinstance(child, ast.Import):
                for a in child.names:
                    if a.name.startswith("queuectl."):
                        out.append((a.name.split(".")[1], []))
            visit(child)

    visit(tree)
    return out


MODULES = _modules()


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_imports_another_modules_private_names(name):
    private = [(m, n) for m, names in _imports(MODULES[name]) for n in names if n.startswith("_")]
    assert not private, f"{name}.py imports private names: {private}"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_and_class_sizes(name):
    path = PACKAGE / f"{name}.py"
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_MODULE_LINES, f"{name}.py has {lines} lines (limit {MAX_MODULE_LINES})"
    for node in ast.walk(MODULES[name]):
        if isinstance(node, ast.ClassDef):
            size = node.end_lineno - node.lineno + 1
            assert size <= MAX_CLASS_LINES, f"class {name}.{node.name} has {size} lines"


@pytest.mark.parametrize("name", sorted(CORE))
def test_the_core_never_imports_click(name):
    for node in ast.walk(MODULES[name]):
        if isinstance(node, ast.Import):
            assert not any(a.name.split(".")[0] == "click" for a in node.names), name
        elif isinstance(node, ast.ImportFrom):
            assert (node.module or "").split(".")[0] != "click", name


def test_imports_between_modules_form_a_dag():
    graph = {name: {m for m, _ in _imports(tree) if m in MODULES and m != name}
             for name, tree in MODULES.items()}
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> None:
        if node in path:
            cycle = path[path.index(node):] + [node]
            pytest.fail("import cycle: " + " -> ".join(cycle))
        if node in done:
            return
        for dep in sorted(graph[node]):
            visit(dep, path + [node])
        done.add(node)

    for name in sorted(graph):
        visit(name, [])


def test_the_checker_finds_what_it_is_meant_to_find():
    """The rules above would pass on anything if the import walk saw nothing."""
    spool_deps = {m for m, _ in _imports(MODULES["spool"])}
    assert {"fsio", "index", "job", "dropins"} <= spool_deps
    tree = ast.parse("from .spool import _x\nif TYPE_CHECKING:\n    from .worker import Worker\n")
    assert _imports(tree) == [("spool", ["_x"])]

