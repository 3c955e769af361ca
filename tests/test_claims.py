"""The paper's claims are data in one registry (`bench.report.paper`): report code takes the factors
and levels they compare from there, or from the study's recorded design, never as string literals."""

from __future__ import annotations

import ast
from pathlib import Path

from bench.report import overfit
from bench.report.kinds import figure1
from bench.report.paper import CLAIMS, SPEEDUP

REPORT = Path(__file__).resolve().parents[1] / "bench" / "report"
REGISTRY = "paper.py"  # the one module that names the claims' factors and levels


def string_literals(path: Path) -> set[str]:
    """The string constants of a module's code: docstrings left out (prose may name a factor)."""
    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
    }


def test_no_report_module_names_a_claims_factor():
    factors = {c.factor for c in CLAIMS}
    for path in sorted(REPORT.rglob("*.py")):
        if path.name == REGISTRY:
            continue
        named = string_literals(path) & factors
        assert not named, f"{path.relative_to(REPORT)} names the factor(s) {sorted(named)}: read them from the registry"


def test_the_claims_module_names_no_level():
    levels = {lv for c in CLAIMS for lv in (c.level, c.reference)}
    named = string_literals(REPORT / "claims.py") & levels
    assert not named, f"claims.py names the level(s) {sorted(named)}: a claim's fields say what it compares"


def test_figure1_compares_the_levels_of_the_registrys_speedup_claim():
    assert (figure1.ACTIVATION, figure1.FAST, figure1.SLOW) == (SPEEDUP.factor, SPEEDUP.reference, SPEEDUP.level)
    assert [c for c in CLAIMS if c.kind == "speedup"] == [SPEEDUP]


def test_the_overfitting_factors_are_those_of_the_registrys_overfitting_claims():
    assert set(overfit.FACTORS) == {c.factor for c in CLAIMS if c.kind == "overfit"}
    # Rows with as many levels keep this order; the committed reports show dropout's before pooling's.
    assert overfit.FACTORS.index("dropout") < overfit.FACTORS.index("pool")
