"""The package's imports run one way: data -> models -> train -> measure -> sweep -> report, with
`bench.choose` (choices made from results) below both the sweep and the report, and the commands
that compose them (`bench.ablate`) on top. Every import counts, module-level or inside a function."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "bench"

# (importer's sub-package, imported sub-package) pairs that would run the flow backwards
FORBIDDEN = {("sweep", "report"), ("gate", "sweep"), ("train", "sweep"), ("train", "report"), ("data", "train")}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports (`from a import b` counts a.b where b is a module)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("bench"):
                found = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                found = [a.name for a in node.names]
            else:
                continue
            graph[name].update(t for t in found if t in modules and t != name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    state, stack, found = {}, [], []

    def visit(u: str) -> None:
        state[u] = "open"
        stack.append(u)
        for v in sorted(graph.get(u, ())):
            if state.get(v) == "open":
                found.append(stack[stack.index(v) :] + [v])
            elif v not in state:
                visit(v)
        stack.pop()
        state[u] = "done"

    for u in sorted(graph):
        if u not in state:
            visit(u)
    return found


def sub_package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and (PACKAGE / parts[1]).is_dir()) else parts[-1]


def test_no_import_runs_the_flow_backwards():
    backwards = [
        f"{a} -> {b}"
        for a, targets in import_graph().items()
        for b in targets
        if (sub_package(a), sub_package(b)) in FORBIDDEN
    ]
    assert backwards == []


def test_no_import_circle():
    assert [" -> ".join(c) for c in cycles(import_graph())] == []


def test_the_checks_see_what_they_check():
    """The walker finds function-local imports, and the circle finder finds a circle."""
    graph = import_graph()
    assert "bench.report.kinds.figure1" in graph["bench.ablate"]  # imported inside chosen_combinations
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert sub_package("bench.sweep.runner") == "sweep" and sub_package("bench.choose") == "choose"
