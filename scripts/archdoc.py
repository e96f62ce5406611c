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


def imports_of(path: Path, modules: set[str]) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()

    def walk(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.ImportFrom) and child.level == 1:
                if child.module:
                    found.add(child.module.split(".")[0])
                else:
                    found.update(a.name for a in child.names if a.name in modules)
            walk(child)

    walk(tree)
    return found & modules


def main() -> int:
    names = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem not in ("__init__", "__main__"))
    modules = set(names)
    deps = {m: imports_of(PACKAGE / f"{m}.py", modules) - {m} for m in names}
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
        path = PACKAGE / f"{m}.py"
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        first = doc.strip().splitlines()[0] if doc.strip() else ""
        rows.append(f"| `{m}.py` | {len(path.read_text().splitlines())} | {', '.join(sorted(deps[m])) or 'none'} "
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
