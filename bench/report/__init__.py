"""The report: figures, tables and report.md drawn from a study's tidy tables alone.

    results/<study>/<profile>/
        runs.csv, history.csv, environment.json      read (written by `bench ablate`)
        figures/<name>.png and .pdf                  written
        tables/<name>.md, .tex and .csv              written (the CSV holds the unrounded numbers)
        report.md                                    written; embeds the figures and tables

What is drawn depends on the kind of study, told from what the tables hold, not
from the study's name: each kind is one module of `bench.report.kinds`
(Figure 1 curves, the one-at-a-time ablation, the architecture comparison, and
a generic fallback), the first in `KINDS` that applies. Every report also has
every configuration (table `cells`) and the paper's claims that the study
re-measures, each with its measured effect, 95% interval, n, method and verdict
(table `paper_claims`; `bench.report.claims`, `bench.stats`). Nothing is
selected on test error. A `cpu` or `smoke` profile is a pipeline check, and
report.md says so at the top.

Missing data is one logging.warning line each and a list in report.md, never a crash.

`bench.report.draw` draws one study's report (`report_study`) or every one under a
folder (`report_all`); this package's own module imports nothing, so its modules can
import each other without going through it.
"""
