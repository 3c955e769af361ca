"""The kinds of study the report knows: each one module that says when it applies and draws
its figures, tables and report.md sections.

A kind module has

    WHAT               what it draws, for the warning line if it fails ("the ablation effects")
    FIGURES, TABLES    the file stems it may write under figures/ and tables/
    applies(sd)        whether it reports this study (a `StudyData`)
    build(out, outcome)  writes its figures and tables through `out` (an `Output`), appends its
                       sections to `outcome.sections`, and leaves in `outcome` what the paper's
                       claims are compared with (`effects`, `ratios`, and its own claims-table rows in `claims`)

The first kind in `KINDS` that applies reports a study; `generic` applies to any.
A new study of an existing kind is one TOML file under ablations/; a new kind is one
module here, listed in `KINDS`.
"""

from __future__ import annotations

from types import ModuleType

from bench.report.kinds import ablation, architectures, figure1, generic
from bench.report.load import StudyData

KINDS: tuple[ModuleType, ...] = (figure1, architectures, ablation, generic)


def kind_for(sd: StudyData) -> ModuleType:
    return next(kind for kind in KINDS if kind.applies(sd))
