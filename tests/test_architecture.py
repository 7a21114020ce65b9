"""The package's structure: no import cycle inside cslr/, and every import follows the layers of
docs/architecture.md (the table there is what this test reads, so the two cannot disagree)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "cslr"
DOC = ROOT / "docs" / "architecture.md"


def modules() -> list[str]:
    return sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")


def imports_of(path: Path) -> set[str]:
    """The cslr modules a file imports anywhere in it (module level, functions, TYPE_CHECKING)."""
    known, found = set(modules()), set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 or node.module == "cslr" or (node.module or "").startswith("cslr."):
                base = (node.module or "").removeprefix("cslr").lstrip(".") if node.level == 0 else (node.module or "")
                if base:
                    found.add(base.split(".")[0])
                else:  # `from . import a, b` / `from cslr import a`
                    found.update(alias.name for alias in node.names if alias.name in known)
        elif isinstance(node, ast.Import):
            found.update(alias.name.split(".")[1] for alias in node.names if alias.name.startswith("cslr."))
    return found & known


def graph() -> dict[str, set[str]]:
    return {name: imports_of(PACKAGE / f"{name}.py") - {name} for name in modules()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def layers() -> list[tuple[str, list[str]]]:
    """(layer, modules) in the order of docs/architecture.md's table, top (lowest) first."""
    text = DOC.read_text()
    section = text.split("## Layers", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or cells[0] in ("layer", "") or set(cells[0]) <= {"-"}:
            continue
        rows.append((cells[0], re.findall(r"`([a-z0-9_]+)(?:\.py)?`", cells[1])))
    return rows


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_imports_are_read_at_every_level():
    sample = PACKAGE / "stack.py"  # imports identity inside a method
    assert "identity" in imports_of(sample)


def test_no_import_cycle_inside_cslr():
    assert cycles(graph()) == []


def test_every_module_has_exactly_one_layer():
    placed = [m for _, mods in layers() for m in mods if m != "tasks"]
    assert sorted(placed) == modules(), "docs/architecture.md's layer table must name every module of cslr/ once"


def test_every_import_follows_the_layers():
    rank = {m: i for i, (_, mods) in enumerate(layers()) for m in mods}
    wrong = [
        f"{name} ({layers()[rank[name]][0]}) imports {dep} ({layers()[rank[dep]][0]})"
        for name, deps in graph().items()
        for dep in sorted(deps)
        if rank[dep] > rank[name]
    ]
    assert wrong == [], "a module may import its own layer and the layers above it in docs/architecture.md"


def test_the_cli_is_the_last_layer():
    name, mods = layers()[-1]
    assert mods == ["tasks"]
