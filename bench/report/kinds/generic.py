"""Any other study: no figure of its own, only what every report has (every configuration, in
the `cells` table). Without a baseline there is no difference to draw, and that is one warning line."""

from __future__ import annotations

from bench.report.load import StudyData
from bench.report.output import Outcome, Output

WHAT = "the study"
FIGURES, TABLES = (), ()


def applies(sd: StudyData) -> bool:
    return True


def build(out: Output, outcome: Outcome) -> None:
    out.sd.notes.warn("no baseline cell and no study file with baselines: differences from a baseline are not computed")
