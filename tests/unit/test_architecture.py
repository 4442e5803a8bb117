"""The package's shape: raygrade's modules import each other without loops, and each stays small.

Every ``import raygrade.…`` / ``from raygrade… import …`` in ``raygrade/`` counts, lazy ones
inside functions included (a lazy import is still a dependency; it only hides a loop).
"""

import ast
import graphlib
from pathlib import Path

from support.source import parse_source

ROOT = Path(__file__).resolve().parents[2] / "raygrade"
MAX_LINES = 350


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        deps: set[str] = set()
        for node in ast.walk(parse_source(path)):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
            for t in targets:
                while t and t not in files:  # ``from pkg import name``: the name may be a module or an attribute
                    t = t.rpartition(".")[0]
                if t.startswith("raygrade") and t != name:
                    deps.add(t)
        graph[name] = deps
    return graph


def test_no_import_loops():
    graph = _import_graph()
    assert len(graph) > 40 and "raygrade.store.jobs" in graph["raygrade.store"]
    try:
        order = list(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as exc:
        raise AssertionError(f"import loop: {' -> '.join(exc.args[1])}") from None
    assert order.index("raygrade.errors") < order.index("raygrade.app")


def test_lower_layers_do_not_import_serve_or_bulk():
    graph = _import_graph()
    low = [m for m in graph if m.split(".")[1:2] and m.split(".")[1] in {
        "store", "planner", "grading", "graders", "batch", "protocol", "config", "ratelimit", "providers", "baseline"}]
    for m in low:
        upward = {d for d in graph[m] if d.startswith(("raygrade.serve", "raygrade.bulk", "raygrade.app"))}
        assert not upward, f"{m} imports {sorted(upward)}"


def test_no_module_is_over_the_size_limit():
    big = {str(p.relative_to(ROOT.parent)): n for p in ROOT.rglob("*.py")
           if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not big, f"split these modules (> {MAX_LINES} lines): {big}"
