"""Rewrite the import-graph layers and the module table of docs/architecture.md from the code.

    python scripts/archdoc.py          # rewrite in place
    python scripts/archdoc.py --check  # exit 1 if the file is out of date

Imports are read with ast, as tests/test_architecture.py reads them: every
`from .x import` / `from . import x` of the package, except under `if TYPE_CHECKING:`.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "queuectl"
DOC = ROOT / "docs" / "architecture.md"


def name_of(path: Path) -> str:
    """queuectl/spool.py -> spool, queuectl/cli/base.py -> cli.base, queuectl/cli/__init__.py -> cli."""
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if len(parts) > 1 and parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The queuectl modules a file imports, relative imports resolved from its own package."""
    tree = ast.parse(path.read_text())
    name = name_of(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def known(dotted: str) -> str:
        parts = dotted.split(".")
        return next((".".join(parts[:n]) for n in range(len(parts), 0, -1) if ".".join(parts[:n]) in modules),
                    parts[0])

    def walk(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.ImportFrom) and child.level >= 1:
                base = package.split(".") if package else []
                base = base[:len(base) - (child.level - 1)] if child.level > 1 else base
                if child.module:
                    found.add(known(".".join(base + [child.module])))
                else:
                    found.update(known(".".join(base + [a.name])) for a in child.names)
            walk(child)

    walk(tree)
    return found & modules


def main() -> int:
    paths = {name_of(p): p for p in sorted(PACKAGE.rglob("*.py"))
             if "__pycache__" not in p.parts and p.name != "__main__.py" and p.relative_to(PACKAGE) != Path("__init__.py")}
    names = sorted(paths)
    modules = set(names)
    deps = {m: imports_of(paths[m], modules) - {m} for m in names}
    layer: dict[str, int] = {}

    def depth(m: str) -> int:
        if m not in layer:
            layer[m] = 1 + max((depth(d) for d in deps[m]), default=0)
        return layer[m]

    for m in names:
        depth(m)
    top = max(layer.values())
    block = "\n".join(f"layer {n:2d}: " + ", ".join(m for m in names if layer[m] == n) for n in range(top, 0, -1))
    rows = ["| module | lines | imports (queuectl modules) | its one job (its docstring's first line) |",
            "|---|---|---|---|"]
    for m in names:
        path = paths[m]
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        first = doc.strip().splitlines()[0] if doc.strip() else ""
        rows.append(f"| `{path.relative_to(PACKAGE)}` | {len(path.read_text().splitlines())} | {', '.join(sorted(deps[m])) or 'none'} "
                    f"| {first} |")
    text = DOC.read_text()
    new = re.sub(r"```\nlayer .*?```", "```\n" + block + "\n```", text, count=1, flags=re.S)
    new = re.sub(r"\| module \| lines \|.*?\n\n", "\n".join(rows) + "\n\n", new, count=1, flags=re.S)
    if "--check" in sys.argv[1:]:
        if new != text:
            print("docs/architecture.md is out of date: run python scripts/archdoc.py", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
