"""The package's imports run one way, the layer order: data -> models -> train -> measure -> sweep -> report.

`LAYERS` lists the package's units (a sub-package, or a module at the top of `bench/`), lowest first;
a module may import its own unit and the units on lines before its own, never one beside it (on the
same line) or above. `BESIDE` units are side branches: each may import what its anchor may, and its
anchor; only `TOP` imports them. `TOP` composes the rest and is imported by nothing below it. Every
import counts, module-level or inside a function; a unit in none of these places fails the test.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "bench"

LAYERS = [
    "bench errors stats env flop_convention cache_dir",  # the bottom: plain helpers (`bench` is the package itself)
    "io device",
    "data",
    "models",
    "train",
    "studies choose",  # study files read and checked; choices made from results (both read TrainConfig)
    "measure",
    "sweep",
    "report",
]
BESIDE = {"gate": "measure", "use": "train"}  # the throughput gate times what measure does; use runs checkpoints
TOP = {"ablate", "cli", "__main__"}  # commands composing the others; every `__main__` module is an entry point


def module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (`from a import b` counts a.b where b is a module)."""
    modules = {module_name(p, package): p for p in package.rglob("*.py")}
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith(package.name):
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


def unit(module: str) -> str:
    """`bench.sweep.runner` -> sweep, `bench.choose` -> choose, `bench` -> bench; any `__main__` -> __main__."""
    parts = module.split(".")
    return "__main__" if parts[-1] == "__main__" else parts[1] if len(parts) > 1 else parts[0]


def rank(name: str) -> float:
    """A unit's height in the flow; a side branch sits just above its anchor."""
    for i, line in enumerate(LAYERS):
        if name in line.split():
            return i
    if name in BESIDE:
        return rank(BESIDE[name]) + 0.5
    if name in TOP:
        return len(LAYERS)
    raise KeyError(f"{name}: a unit in no layer; place it in LAYERS, BESIDE or TOP")


def allowed(importer: str, imported: str) -> bool:
    a, b = unit(importer), unit(imported)
    if a == b or a in TOP:
        return True
    if b in TOP or b in BESIDE:  # only the top imports a side branch or a command
        return False
    return rank(b) < int(rank(a)) or rank(b) == int(rank(a)) < rank(a)  # below; a side branch takes its anchor


def against_the_flow(graph: dict[str, set[str]]) -> list[str]:
    return [f"{a} -> {b}" for a, targets in sorted(graph.items()) for b in sorted(targets) if not allowed(a, b)]


def test_every_unit_has_its_place_in_the_layer_order():
    for module in import_graph():
        rank(unit(module))  # KeyError names a unit that is nowhere


def test_no_import_runs_against_the_layer_order():
    assert against_the_flow(import_graph()) == []


def test_no_import_circle():
    assert [" -> ".join(c) for c in cycles(import_graph())] == []


@pytest.mark.parametrize(
    "importer, imported, ok",
    [
        ("bench.gate.command", "bench.report.draw", False),  # gate beside the flow: not into report
        ("bench.measure.speed", "bench.sweep.runner", False),  # an arrow back up
        ("bench.report.load", "bench.gate.suite", False),  # nothing below the top imports a side branch
        ("bench.studies", "bench.choose", False),  # beside each other on one line
        ("bench.train.loop", "bench.measure.timing", False),
        ("bench.data.cache", "bench.cli", False),
        ("bench.gate.suite", "bench.measure.workload", True),  # a side branch takes its anchor
        ("bench.gate.suite", "bench.studies", True),
        ("bench.use.predict", "bench.train.config", True),
        ("bench.use.predict", "bench.measure.speed", False),
        ("bench.sweep.runner", "bench.choose", True),
        ("bench.gate.__main__", "bench.cli", True),  # an entry point
        ("bench.ablate", "bench.report.draw", True),
        ("bench.models.lrn", "bench.errors", True),
    ],
)
def test_the_order_allows_what_flows_down_and_nothing_else(importer, imported, ok):
    assert allowed(importer, imported) is ok


def test_the_checks_see_what_they_check(tmp_path):
    """The walker finds function-local imports, and the circle finder finds a circle."""
    (tmp_path / "bench" / "measure").mkdir(parents=True)
    (tmp_path / "bench" / "sweep").mkdir()
    for init in ("__init__", "measure/__init__", "sweep/__init__"):
        (tmp_path / "bench" / f"{init}.py").write_text("")
    (tmp_path / "bench" / "sweep" / "runner.py").write_text("X = 1\n")
    (tmp_path / "bench" / "measure" / "speed.py").write_text("def f():\n    from bench.sweep import runner\n")
    graph = import_graph(tmp_path / "bench")
    assert graph["bench.measure.speed"] == {"bench.sweep", "bench.sweep.runner"}
    assert against_the_flow(graph) == [
        "bench.measure.speed -> bench.sweep",
        "bench.measure.speed -> bench.sweep.runner",
    ]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
