"""mlcore's layers, enforced: foundation <- wings <- stages, no upward import, no cycle.

Every ``import`` of an mlcore module counts, function-local ones included (a local import hides
a dependency from the reader, not from the graph). The layers (ARCHITECTURE.md):

- foundation: the top-level modules in ``FOUNDATION`` and ``mlcore.store`` (specs, settings,
  batch IDs, errors, provenance, locks, the metadata store and its catalogue);
- wings, one concern each: ``data`` (files, validation, integrity) and ``stream`` (the event
  bus, the stream ledger) <- ``feast`` and ``model``
  (side by side: neither imports the other) <- ``reports`` (HTML);
- stages: every other top-level module (what ``dags/`` and the CLI call); stages may call
  stages, but never in a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FOUNDATION = {"config", "problems", "spec_columns", "spec_rules", "batches", "errors",
              "provenance", "locks", "columns", "objstore", "s3_client"}
WINGS = {"data": 1, "stream": 1, "feast": 2, "model": 2, "reports": 3}
STAGE_RANK = 4


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def room(module: str) -> tuple[int, str]:
    """(rank, room name) of an mlcore module: 0 foundation, 1-3 wings, 4 stages."""
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else ""
    if top == "store" or top in FOUNDATION or module == "mlcore":
        return 0, "foundation"
    if top in WINGS:
        return WINGS[top], top
    return STAGE_RANK, "stages"


def imports_of(path: Path, known: set[str]) -> set[str]:
    """mlcore modules imported anywhere in ``path`` (``from mlcore.x import y`` counts
    ``mlcore.x.y`` when that is a module)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                and node.module.split(".")[0] == "mlcore":
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in known else node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "mlcore"}
    return {m for m in found if m in known}


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in (ROOT / "mlcore").rglob("*.py")
             if "migrations" not in p.parts and p.stem != "__main__"}
    known = set(files)
    return {m: imports_of(p, known) - {m} for m, p in files.items()}


def upward_imports(g: dict[str, set[str]]) -> list[str]:
    bad = []
    for src, targets in sorted(g.items()):
        rank, name = room(src)
        for dst in sorted(targets):
            dst_rank, dst_name = room(dst)
            if dst.startswith(src + "."):
                continue  # a package's __init__ may name its own modules
            if dst_rank > rank or (dst_rank == rank and 0 < rank < STAGE_RANK
                                   and dst_name != name):
                bad.append(f"{src} ({name}) imports {dst} ({dst_name})")
    return bad


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def test_no_module_imports_a_higher_layer_or_a_sibling_wing():
    assert upward_imports(graph()) == []


def test_no_import_cycles():
    assert cycles(graph()) == []


def test_the_check_catches_a_planted_upward_import_and_cycle():
    g = graph()
    g["mlcore.data.validation"] = g["mlcore.data.validation"] | {"mlcore.training"}
    assert "mlcore.data.validation (data) imports mlcore.training (stages)" in upward_imports(g)
    g["mlcore.training"] = g["mlcore.training"] | {"mlcore.data.validation"}
    assert any({"mlcore.data.validation", "mlcore.training"} <= set(c) for c in cycles(g))
