"""results/README.md: every study folder's verdicts on one page, drawn from the folders' own tables.

`write(root, folders)` runs after the reports under `root` are drawn: it reads each folder's
`tables/paper_claims.csv`, `runs.csv` and provenance lines and writes one section per folder
(evidence profiles first, pipeline checks last), so every number on the page is a committed
table's and the page is never edited by hand.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from bench.io import atomic_write_text, read_csv
from bench.report import format as fmt
from bench.report.load import RUNS, load
from bench.report.markdown import CLAIMS_TABLE, PIPELINE_CHECK_PROFILES, provenance
from bench.report.output import TABLES
from bench.report.verdict import VERDICT_RULE

SUMMARY = "README.md"
ORDER = {"cpu-full": 0, "gpu": 1, "cpu": 2, "smoke": 3}  # evidence first, pipeline checks last
SHOWN = ("data", "device", "mode", "declared seeds (the verdicts' n)", "tuning seeds", "git commit", "⚠ provenance")


def write(root: Path, folders: list[Path]) -> Path | None:
    """Write `root`/README.md over `folders` (results/<study>/<profile>); None where there are none."""
    folders = sorted(folders, key=lambda f: (ORDER.get(f.name, 9), f.parent.name, f.name))
    if not folders:
        return None
    lines = [
        "# Committed results",
        "",
        f"Drawn by `python -m bench report {root}` from each folder's tables; not edited by hand. Each section "
        "links its folder's report.md, which says how the cells ran. Effects are configuration − baseline in "
        "percentage points of test top-1 error (overfitting claims: of the gap test − clean training error); "
        "Figure 1's is the tanh / ReLU ratio of epochs to 25% training error.",
        "",
        VERDICT_RULE,
        "",
    ]
    for folder in folders:
        lines += _section(root, folder)
    path = root / SUMMARY
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def _section(root: Path, folder: Path) -> list[str]:
    sd = load(folder)
    rel = folder.relative_to(root)
    title = f"## {sd.study} / {sd.profile}"
    if sd.profile in PIPELINE_CHECK_PROFILES:
        title += " (pipeline check, not evidence)"
    out = [title, "", f"[report]({rel}/report.md)" + (f" · {sd.description}" if sd.description else ""), ""]
    facts = dict(provenance(sd))
    tuning = next((v for k, v in facts.items() if k.startswith("tuning seeds")), None)
    if tuning is not None:
        facts["tuning seeds"] = tuning
    cells = pd.concat([sd.runs, sd.grid_runs]) if sd.grid_runs is not None else sd.runs
    seconds = pd.to_numeric(cells.get("wall_seconds", pd.Series(dtype=float)), errors="coerce").sum()
    for key in SHOWN:
        if key in facts:
            out.append(f"- {key}: {facts[key]}")
    if seconds > 0:
        out.append(f"- cells: {len(cells)}, {seconds:,.0f} s of cell time in all")
    claims = folder / TABLES / f"{CLAIMS_TABLE}.csv"
    if claims.is_file() and (folder / RUNS).is_file():
        rows = read_csv(claims)
        if len(rows):
            out += ["", "| § | claim | measured effect [95% interval] | half-width; detectable | n | verdict |"]
            out.append("|---|---|---|---|---|---|")
            for _, r in rows.iterrows():
                spread = r.get("spread", fmt.MISSING)
                spread = fmt.MISSING if isinstance(spread, float) and math.isnan(spread) else spread
                out.append(
                    f"| {r['section']} | {r['claim']} | {r['measured']} | {spread} | {r['n_text']} | {r['verdict']} |"
                )
    return [*out, ""]
