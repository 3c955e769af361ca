"""Draw the report of one study folder, or of every one under a folder (see `bench.report`)."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from bench.errors import UserError
from bench.io import atomic_write_text
from bench.report import effects, summary
from bench.report.kinds import KINDS, kind_for
from bench.report.load import RUNS, load
from bench.report.markdown import (
    CLAIMS_TABLE,
    Section,
    cell_status_lines,
    claim_rows,
    claims_section,
    render,
)
from bench.report.output import TABLE_FORMATS, TABLES, Outcome, Output
from bench.report.plot import style
from bench.studies import list_studies

__all__ = ["REPORT", "find_result_folders", "report_all", "report_study"]

log = logging.getLogger(__name__)

REPORT = "report.md"
CELLS = "cells"  # the table of every configuration, in every report


def report_study(results_dir: Path) -> Path:
    """Write figures/, tables/ and report.md for one results/<study>/<profile>/ folder; return report.md."""
    sd = load(Path(results_dir))
    cell_status_lines(sd)
    out = Output(
        sd,
        [name for kind in KINDS for name in kind.FIGURES],
        [name for kind in KINDS for name in kind.TABLES] + [CELLS, CLAIMS_TABLE],
    )
    outcome = Outcome()
    with style():
        if len(sd.runs):
            kind = kind_for(sd)
            out.guarded(kind.WHAT, kind.build, out, outcome)
        conf = out.guarded("the table of configurations", effects.configurations, sd)
        if conf is not None and len(conf):
            s = Section("Every configuration")
            out.table(effects.configurations_table(sd, conf), conf, s)
            eff = outcome.effects
            if eff is not None and len(conf) <= len(eff):  # the table above already has every cell
                s.tables.clear()
                s.text.append(
                    "Every configuration is in the table above; as one flat table with a column per "
                    "factor: " + " · ".join(f"[{x}]({TABLES}/{CELLS}.{x})" for x in TABLE_FORMATS) + "."
                )
            outcome.sections.append(s)
        rows = out.guarded("the claims table", claim_rows, sd, outcome.claims) or []
        claims = claims_section(sd, rows)
        if claims is not None:
            section, table = claims
            out.table(table, pd.DataFrame(rows), section)
            outcome.sections.insert(min(len(outcome.sections), 1), section)
    sections = outcome.sections
    path = sd.folder / REPORT
    atomic_write_text(path, render(sd, sections, f"python -m bench report {sd.folder}"))
    log.info("%s: report -> %s", sd.label, path)
    return path


def find_result_folders(path: Path) -> list[Path]:
    """`path` itself if it holds runs.csv, else every <study>/<profile>/ (or <profile>/) folder under it that does."""
    path = Path(path)
    if not path.exists():
        raise UserError(
            f"{path} does not exist; pass results/<study>/<profile> or a results folder "
            "written by `python -m bench ablate`"
        )
    if (path / RUNS).is_file():
        return [path]
    found = sorted({p.parent for pattern in (f"*/{RUNS}", f"*/*/{RUNS}") for p in path.glob(pattern)})
    if not found:
        raise UserError(
            f"{path}: no {RUNS} here nor in its <study>/<profile>/ folders; run "
            "`python -m bench ablate --study NAME --profile PROFILE` first, or pass the folder it wrote"
        )
    return found


def report_all(root: Path) -> list[Path]:
    """Report every study/profile folder under `root`. Where `root` is a results folder
    (<study>/<profile>/ under it), each shipped study (ablations/) with no folder there is one warning line."""
    root = Path(root)
    folders = find_result_folders(root)
    studies = {f.parent.name for f in folders if f.parent.parent == root}
    if studies:
        for name in list_studies():
            if name not in studies:
                log.warning(
                    "%s: no results under %s (study not run); run `python -m bench ablate --study %s`", name, root, name
                )
    reports = [report_study(f) for f in folders]
    if studies:  # a results folder: its README.md gathers every folder's verdicts
        summary.write(root, [f for f in folders if f.parent.parent == root])
    return reports
