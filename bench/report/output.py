"""Writing one study folder's figures/ and tables/, each listed in the report.md section that shows it."""

from __future__ import annotations

import logging
import traceback
from dataclasses import dataclass, field

import pandas as pd

from bench.io import atomic_write_text, write_csv
from bench.report import plot
from bench.report.format import Table
from bench.report.load import StudyData
from bench.report.markdown import Section

log = logging.getLogger(__name__)

FIGURES, TABLES = "figures", "tables"
TABLE_FORMATS = ("md", "tex", "csv")


@dataclass
class Outcome:
    """What a kind of study leaves for the rest of report.md: its sections, and what the
    paper's claims are compared with."""

    sections: list[Section] = field(default_factory=list)
    effects: pd.DataFrame | None = None  # one row per configuration (`bench.report.effects.effects`)
    ratios: dict | None = None  # Figure 1's tanh/ReLU speed-up per setup, for its figure and table
    claims: list[dict] = field(default_factory=list)  # claims-table rows (`claims.Assessment.row`) of the kind


class Output:
    """The figures and tables of one study folder as they are written."""

    def __init__(self, sd: StudyData, figure_names, table_names):
        self.sd = sd
        self.figures = sd.folder / FIGURES
        self.tables = sd.folder / TABLES
        for folder, names, exts in (
            (self.figures, figure_names, plot.FORMATS),
            (self.tables, table_names, TABLE_FORMATS),
        ):
            for name in names:  # a figure this run cannot draw must not survive from an earlier run
                for ext in exts:
                    (folder / f"{name}.{ext}").unlink(missing_ok=True)

    def figure(self, fig, name: str, caption: str, section: Section) -> None:
        """Save `fig` (None: nothing drawn) as figures/`name`.png and .pdf, shown in `section`."""
        if fig is None:
            return
        plot.save(fig, self.figures, name)
        section.figures.append((f"{FIGURES}/{name}.png", caption))

    def table(self, table: Table, frame: pd.DataFrame, section: Section) -> None:
        """Write `table` as tables/<name>.md and .tex, and `frame` (its unrounded numbers) as .csv."""
        self.tables.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.tables / f"{table.name}.md", f"# {table.title}\n\n{table.markdown()}")
        atomic_write_text(self.tables / f"{table.name}.tex", table.latex())
        write_csv(self.tables / f"{table.name}.csv", frame)
        section.tables.append(table)

    def guarded(self, what: str, fn, *args):
        """Run one part of the report; a failure is one warning line, and the rest is still written."""
        try:
            return fn(*args)
        except Exception as e:  # noqa: BLE001 -- a report must write what it can
            log.debug("%s", traceback.format_exc())
            self.sd.notes.warn(f"could not draw {what}: {type(e).__name__}: {e}")
            return None
