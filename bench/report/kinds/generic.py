"""Any other study: no figure of its own, only what every report has. A folder whose design is
unknown (no study.json and no study file: `bench.report.load.read_design`, which says so in one
warning line) has no factors, so no baseline and no difference to draw."""

from __future__ import annotations

from bench.report.load import StudyData
from bench.report.output import Outcome, Output

WHAT = "the study"
FIGURES, TABLES = (), ()


def applies(sd: StudyData) -> bool:
    return True


def build(out: Output, outcome: Outcome) -> None:
    """Nothing beyond what every report has: loading the folder already said why."""
