"""The report: figures, tables and report.md drawn from a study's tidy tables alone.

    results/<study>/<profile>/
        runs.csv, history.csv, environment.json      read (written by `bench ablate`)
        figures/<name>.png and .pdf                  written
        tables/<name>.md, .tex and .csv              written (the CSV holds the unrounded numbers)
        report.md                                    written; embeds the figures and tables

What is drawn depends on what the tables hold, not on the study's name:

* a target (`target_metric` column) and an `activation` factor: Figure 1
  (`figure1.png`, tables `figure1` and `figure1_lr_grid`);
* an `architecture` factor: error vs MACs and parameters, throughput
  (`architectures_error_vs_cost.png`, `architectures_throughput.png`, table `architectures`);
* otherwise, with a baseline cell: the one-at-a-time effects (`ablation_effects.png`,
  table `ablation_effects`) and, for dropout / pooling / augmentation factors, train vs
  test error over epochs (`overfitting.png`);
* always: every configuration (table `cells`), and the paper's claims beside the
  measurements that re-measure them (in report.md).

Missing data is one logging.warning line each and a list in report.md, never a crash.
"""

from __future__ import annotations

import logging
import traceback
from pathlib import Path

import pandas as pd

from bench.io import atomic_write_text, write_csv
from bench.report import figure1 as f1
from bench.report import figures, tables
from bench.report.format import Table
from bench.report.load import RUNS, StudyData, load
from bench.report.markdown import Section, cell_status_lines, claim_rows, claims_section, render

__all__ = ["REPORT", "find_result_folders", "report_all", "report_study"]

log = logging.getLogger(__name__)

REPORT = "report.md"
FIGURES, TABLES = "figures", "tables"
FIGURE_NAMES = ("figure1", "ablation_effects", "overfitting", "architectures_error_vs_cost", "architectures_throughput")
TABLE_NAMES = ("figure1", "figure1_lr_grid", "ablation_effects", "architectures", "cells")


class _Report:
    """The outputs of one study folder as they are written."""

    def __init__(self, sd: StudyData):
        self.sd = sd
        self.figures = sd.folder / FIGURES
        self.tables = sd.folder / TABLES
        for folder, names, exts in ((self.figures, FIGURE_NAMES, figures.FORMATS),
                                    (self.tables, TABLE_NAMES, ("md", "tex", "csv"))):
            for name in names:  # a figure this run cannot draw must not survive from an earlier run
                for ext in exts:
                    (folder / f"{name}.{ext}").unlink(missing_ok=True)

    def figure(self, fig, name: str, caption: str, section: Section) -> None:
        if fig is None:
            return
        figures.save(fig, self.figures, name)
        section.figures.append((f"{FIGURES}/{name}.png", caption))

    def table(self, table: Table, frame: pd.DataFrame, section: Section) -> None:
        self.tables.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.tables / f"{table.name}.md", f"# {table.title}\n\n{table.markdown()}")
        atomic_write_text(self.tables / f"{table.name}.tex", table.latex())
        write_csv(self.tables / f"{table.name}.csv", frame)
        section.tables.append(table)


def _guarded(sd: StudyData, what: str, fn, *args):
    """Run one part of the report; a failure is one warning line, and the rest is still written."""
    try:
        return fn(*args)
    except Exception as e:  # noqa: BLE001 -- a report must write what it can
        log.debug("%s", traceback.format_exc())
        sd.notes.warn(f"could not draw {what}: {type(e).__name__}: {e}")
        return None


def _figure1(rep: _Report, sections: list[Section]) -> dict:
    sd = rep.sd
    grid = f1.lr_grid(sd)
    if not len(grid):
        sd.notes.warn("no finished cell for Figure 1")
        return {}
    chosen = f1.choose(grid)
    ratios = f1.speedups(chosen)
    s = Section(f"Figure 1: epochs to {f1.target_label(sd)}, ReLU vs tanh")
    s.text.append("The paper (section 3.1, Figure 1): a four-layer convolutional network on CIFAR-10 reaches 25% "
                  "training error six times faster with ReLUs than with tanh units, each with its learning rate "
                  "chosen to train as fast as possible. Here each activation's learning rate is chosen the same way "
                  "from the study's grid; see the table's notes.")
    rep.figure(_guarded(sd, "Figure 1", figures.figure1, sd, chosen, ratios), "figure1",
               "Training error vs epochs at each activation's fastest learning rate; dotted line: the target; "
               "dots: the epoch each activation first reaches it.", s)
    rep.table(f1.figure1_table(sd, chosen, ratios), chosen, s)
    rep.table(f1.lr_grid_table(sd, grid), grid, s)
    sections.append(s)
    return {"ratios": ratios}


def _architectures(rep: _Report, sections: list[Section]) -> pd.DataFrame:
    sd = rep.sd
    eff = tables.in_level_order(sd, tables.effects(sd))
    s = Section("Architectures: error, size, compute and throughput")
    rep.figure(_guarded(sd, "error vs cost", figures.architectures_cost, sd, eff), "architectures_error_vs_cost",
               "Test top-1 error vs multiply-adds per image and vs parameters (log scales).", s)
    rep.figure(_guarded(sd, "throughput", figures.architectures_throughput, sd, eff), "architectures_throughput",
               "Training and inference throughput, images/s.", s)
    rep.table(tables.architectures_table(sd, eff), eff, s)
    sections.append(s)
    return eff


def _ablation(rep: _Report, sections: list[Section]) -> pd.DataFrame:
    sd = rep.sd
    eff = tables.effects(sd)
    s = Section("Effects of the design choices")
    s.text.append("Each configuration differs from the baseline in one factor. " + tables.WELCH_NOTE)
    rep.figure(_guarded(sd, "the ablation effects", figures.ablation, sd, eff), "ablation_effects",
               "Test top-1 error per configuration and its difference from the baseline; hollow markers: the "
               "paper's reported effect.", s)
    rep.table(tables.effects_table(sd, eff), eff, s)
    sections.append(s)
    fig = _guarded(sd, "train vs test error", figures.overfitting, sd)
    if fig is not None:
        o = Section("Overfitting: train vs test error over epochs")
        o.text.append("The paper: without dropout, and without crops and mirrors, AlexNet overfits substantially "
                      "(sections 4.1, 4.2); overlapping pooling makes it slightly harder to overfit (3.4).")
        rep.figure(fig, "overfitting", "Training (dashed) and test (solid) error per epoch; shaded: the gap.", o)
        sections.append(o)
    return eff


def report_study(results_dir: Path) -> Path:
    """Write figures/, tables/ and report.md for one results/<study>/<profile>/ folder; return report.md."""
    sd = load(Path(results_dir))
    cell_status_lines(sd)
    rep = _Report(sd)
    sections: list[Section] = []
    eff, fig1 = None, {}
    with figures.style():
        if len(sd.runs) and f1.applies(sd):
            fig1 = _guarded(sd, "Figure 1", _figure1, rep, sections) or {}
        elif len(sd.runs) and "architecture" in sd.factors:
            eff = _guarded(sd, "the architecture comparison", _architectures, rep, sections)
        elif len(sd.runs) and sd.baseline is not None:
            eff = _guarded(sd, "the ablation effects", _ablation, rep, sections)
        elif len(sd.runs):
            sd.notes.warn("no baseline cell and no study file with baselines: differences from a baseline are not computed")
        conf = _guarded(sd, "the table of configurations", tables.configurations, sd)
        if conf is not None and len(conf):
            s = Section("Every configuration")
            rep.table(tables.configurations_table(sd, conf), conf, s)
            if eff is not None and len(conf) <= len(eff):  # the table above already has every cell
                s.tables.clear()
                s.text.append("Every configuration is in the table above; as one flat table with a column per "
                              "factor: " + " · ".join(f"[{x}]({TABLES}/cells.{x})" for x in ("md", "tex", "csv")) + ".")
            sections.append(s)
    claims = claims_section(claim_rows(sd, eff, fig1.get("ratios")))
    if claims is not None:
        sections.insert(1 if len(sections) > 1 else len(sections), claims)
    path = sd.folder / REPORT
    atomic_write_text(path, render(sd, sections, f"python -m bench report {sd.folder}"))
    log.info("%s: report -> %s", sd.label, path)
    return path


def find_result_folders(path: Path) -> list[Path]:
    """`path` itself if it holds runs.csv, else every <study>/<profile>/ (or <profile>/) folder under it that does."""
    from bench.errors import UserError

    path = Path(path)
    if not path.exists():
        raise UserError(f"{path} does not exist; pass results/<study>/<profile> or a results folder "
                        "written by `python -m bench ablate`")
    if (path / RUNS).is_file():
        return [path]
    found = sorted({p.parent for pattern in (f"*/{RUNS}", f"*/*/{RUNS}") for p in path.glob(pattern)})
    if not found:
        raise UserError(f"{path}: no {RUNS} here nor in its <study>/<profile>/ folders; run "
                        "`python -m bench ablate --study NAME --profile PROFILE` first, or pass the folder it wrote")
    return found


def report_all(root: Path) -> list[Path]:
    """Report every study/profile folder under `root`. Where `root` is a results folder
    (<study>/<profile>/ under it), each study of ablations/ with no folder there is one warning line."""
    root = Path(root)
    folders = find_result_folders(root)
    studies = {f.parent.name for f in folders if f.parent.parent == root}
    if studies:
        from bench.report.load import STUDY_DIR

        for name in sorted(p.stem for p in STUDY_DIR.glob("*.toml")):
            if name not in studies:
                log.warning("%s: no results under %s (study not run); run `python -m bench ablate --study %s`",
                            name, root, name)
    return [report_study(f) for f in folders]
