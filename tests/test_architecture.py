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


def _name(path: Path) -> str:
    """queuectl/spool.py -> spool, queuectl/cli/base.py -> cli.base, queuectl/cli/__init__.py -> cli."""
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if len(parts) > 1 and parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


PATHS = {_name(p): p for p in sorted(PACKAGE.rglob("*.py")) if "__pycache__" not in p.parts}
# The package a module's relative imports start from: "" for queuectl's own modules.
PACKAGE_OF = {name: (name if PATHS[name].name == "__init__.py" and "." not in name and name != "__init__"
                     else name.rpartition(".")[0]) for name in PATHS}


def _modules() -> dict[str, ast.Module]:
    return {name: ast.parse(path.read_text(), str(path)) for name, path in PATHS.items()}


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _known(dotted: str) -> str:
    """The queuectl module a dotted name lands in: the longest known prefix (cli.base.Lines -> cli.base)."""
    parts = dotted.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in PATHS:
            return ".".join(parts[:n])
    return parts[0]


def _imports(tree: ast.Module, package: str = "") -> list[tuple[str, list[str]]]:
    """(module, imported names) for every import of a queuectl module, type-only ones left out.

    `package` is where the module's relative imports start ("" for queuectl's
    own modules, "cli" for those of queuectl/cli/).
    """
    out: list[tuple[str, list[str]]] = []

    def base(level: int) -> list[str]:
        parts = package.split(".") if package else []
        return parts[:len(parts) - (level - 1)] if level > 1 else parts

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                continue
            if isinstance(child, ast.ImportFrom):
                names = [a.name for a in child.names]
                if child.level >= 1 and child.module:
                    out.append((_known(".".join(base(child.level) + [child.module])), names))
                elif child.level >= 1:  # from . import x
                    out.extend((_known(".".join(base(child.level) + [n])), []) for n in names)
                elif child.module and child.module.startswith("queuectl."):
                    out.append((_known(child.module.split(".", 1)[1]), names))
            elif isinstance(child, ast.Import):
                for a in child.names:
                    if a.name.startswith("queuectl."):
                        out.append((_known(a.name.split(".", 1)[1]), []))
            visit(child)

    visit(tree)
    return out


MODULES = _modules()


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_imports_another_modules_private_names(name):
    private = [(m, n) for m, names in _imports(MODULES[name], PACKAGE_OF[name]) for n in names
               if n.startswith("_")]
    assert not private, f"{name}.py imports private names: {private}"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_and_class_sizes(name):
    path = PATHS[name]
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_MODULE_LINES, f"{path.relative_to(PACKAGE)} has {lines} lines (limit {MAX_MODULE_LINES})"
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
    graph = {name: {m for m, _ in _imports(tree, PACKAGE_OF[name]) if m in MODULES and m != name}
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


@pytest.mark.parametrize("name", sorted(CORE))
def test_the_core_never_imports_the_cli(name):
    cli = [m for m, _ in _imports(MODULES[name], PACKAGE_OF[name]) if m == "cli" or m.startswith("cli.")]
    assert not cli, f"{name}.py imports {cli}: the CLI calls the core, never the other way"


def test_the_checker_finds_what_it_is_meant_to_find():
    """The rules above would pass on anything if the import walk saw nothing."""
    spool_deps = {m for m, _ in _imports(MODULES["spool"])}
    assert {"fsio", "index", "job", "dropins"} <= spool_deps
    tree = ast.parse("from .spool import _x\nif TYPE_CHECKING:\n    from .worker import Worker\n")
    assert _imports(tree) == [("spool", ["_x"])]
    if "cli.base" in MODULES:  # the CLI's own package: its relative imports resolve both ways
        cli_deps = {m for m, _ in _imports(MODULES["cli.jobs"], PACKAGE_OF["cli.jobs"])}
        assert {"cli.base", "controls"} <= cli_deps

