"""Overfitting: test error minus clean training error, for the factors the paper says regularise.

The paper: without dropout (4.2), and without crops and mirrors (4.1), AlexNet
overfits substantially; overlapping pooling makes it slightly harder to
overfit (3.4). The gap measured here is final test top-1 error minus the clean
training error: the training images evaluated at the final weights without
augmentation or dropout. The running training error (measured during the epoch,
through augmentation and dropout) is not used: it overstates a regularised net's
training error, so its gap would understate exactly the overfitting asked about.
Results that recorded no clean training error (older runs) get one line saying
so, and no gap.

Writes the table `overfitting` (per configuration: the gap over seeds, and its
change from the baseline, paired over the seeds both share) and the figure
`overfitting` (clean training and test error per epoch) where history.csv has
the per-epoch clean error. The verdicts are in the claims table.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from bench.report import format as fmt
from bench.report import plot
from bench.report.effects import (
    TOP1,
    config_label,
    config_stats,
    diff_columns,
    finished,
    gap_by_seed,
    method_text,
    missing_reason,
)
from bench.report.load import CLEAN_TRAIN, CLEAN_TRAIN_EPOCH, StudyData
from bench.report.markdown import Section
from bench.report.paper import CLAIMS
from bench.stats import compare

NAME = "overfitting"  # the figure's and the table's file stem
# The factors the paper says regularise: those of its overfitting claims, latest section first,
# the order the paper's text names them in (dropout 4.2, crops and mirrors 4.1, pooling 3.4).
FACTORS = tuple(
    dict.fromkeys(c.factor for c in sorted(CLAIMS, key=lambda c: c.section, reverse=True) if c.kind == "overfit")
)
NO_CLEAN = "no clean training error recorded (older run): overfitting not resolvable"
TEST_EPOCH = "test_top1_err_pct"


CROSSED = "crossed"  # the factor of a configuration that changes several overfitting factors at once


def configurations(sd: StudyData) -> list[tuple[str | None, str, dict]]:
    """(factor or None for the baseline, level, every factor's level): the baseline, then each other
    level of each overfitting factor in the study, rows with more levels last; then (CROSSED, its
    label, levels) for each configuration run that changes several of them (a factorial design's
    unregularised arm, say), where the overfitting shows most."""
    factors = sorted((f for f in FACTORS if f in sd.factors), key=lambda f: len(sd.levels[f]))
    if not factors or sd.baseline is None:
        return []
    alone = [(None, sd.baseline[factors[0]], dict(sd.baseline))] + [
        (f, lv, {**sd.baseline, f: lv}) for f in factors for lv in sd.levels[f] if lv != sd.baseline[f]
    ]
    crossed = []
    for _, combo in sd.runs[sd.factors].drop_duplicates().iterrows() if len(sd.runs) else ():
        levels = {f: str(combo[f]) for f in sd.factors}
        changed = [f for f in sd.factors if levels[f] != sd.baseline[f]]
        if len(changed) >= 2 and set(changed) <= set(factors):
            crossed.append((CROSSED, ", ".join(config_label(f, levels[f]) for f in changed), levels))
    return alone + crossed


def label(factor: str | None, level: str) -> str:
    return level if factor == CROSSED else config_label(factor, level)


def gaps(sd: StudyData) -> pd.DataFrame:
    """One row per configuration: errors, the gap over seeds, and its change from the baseline (`diff_*`)."""
    rows, base = [], None
    for factor, level, levels in configurations(sd):
        cells = sd.cells_at(levels)
        gap = gap_by_seed(sd, finished(sd, cells))
        if factor is None:
            base = gap
        d = compare(base, gap) if base and gap and factor is not None else None
        rows.append(
            {
                "config": label(factor, level),
                "factor": factor or "",
                "level": level if factor else "",
                "is_baseline": factor is None,
                **config_stats(sd, cells),
                **diff_columns(d),
            }
        )
    return pd.DataFrame(rows)


def table(sd: StudyData, frame: pd.DataFrame) -> fmt.Table:
    columns = [
        "configuration",
        "seeds",
        "test top-1 err. % (mean)",
        "clean train err. % (mean)",
        "gap: test − clean train, pp (mean)",
        "gap 95% CI (pp)",
        "gap change vs baseline, pp [95% CI]",
        "change: method, n",
    ]
    rows = []
    for _, r in frame.iterrows():
        n = int(r["gap_n"])
        rows.append(
            [
                r["config"],
                str(n),
                fmt.num(r["top1_mean"]),
                fmt.num(r["train_clean_err_mean"]),
                fmt.num(r["gap_mean"], signed=True) if n else f"{fmt.MISSING} ({missing_reason(r)})",
                fmt.interval(r["gap_lo"], r["gap_hi"], n, signed=True),
                "(reference)"
                if r["is_baseline"]
                else fmt.diff_with_interval(r["diff"], r["diff_lo"], r["diff_hi"], (int(r["diff_n"]),) * 2),
                "" if r["is_baseline"] else method_text(r),
            ]
        )
    notes = [
        "Gap = final test top-1 error − clean training error (the training images at the final weights, "
        "without augmentation or dropout), per seed; a positive gap is overfitting. Its change from the "
        "baseline is paired over the seeds both share (Welch's interval where they share none).",
        "The verdicts on the paper's overfitting claims are in the claims table.",
    ]
    return fmt.Table(
        NAME, f"{sd.study} ({sd.profile}): overfitting, test minus clean training error", columns, rows, notes
    )


def figure(sd: StudyData, frame: pd.DataFrame) -> Figure | None:
    """Clean training (dashed) and test (solid) error per epoch: one row per factor, one panel per level."""
    if not sd.has(CLEAN_TRAIN_EPOCH, "history"):
        return None
    configs = configurations(sd)
    factors = list(dict.fromkeys(f for f, _, _ in configs if f))
    if not factors:  # only the baseline ran (a profile whose `only` leaves no overfitting arm)
        return None
    grid = [[c for c in configs if c[0] is None] + [c for c in configs if c[0] == f] for f in factors]
    ncols = max(len(g) for g in grid)
    fig = Figure(figsize=(4.0 * ncols + 0.5, 3.2 * len(factors) + 1.0), layout="constrained")
    axes = fig.subplots(len(factors), ncols, sharex=True, sharey=True, squeeze=False)
    colors = plot.level_colors(sd)
    gap = frame.set_index("config")
    top, last = 0.0, 1.0
    for row, (factor, configs) in enumerate(zip(factors, grid)):
        for col in range(ncols):
            ax = axes[row][col]
            if col >= len(configs):
                ax.set_visible(False)
                continue
            which, level, levels = configs[col]
            cells = sd.cells_at(levels)
            h = plot.curves(sd, cells["cell_id"])
            c = colors.get((which, level if which else None), "0.3")
            if which == CROSSED:
                title = level
            elif factor == CROSSED:  # the crossed row's baseline panel
                title = "baseline"
            else:
                title = f"{factor} = {levels[factor]}" + (" (baseline)" if which is None else "")
            ax.set_xlabel("epochs" if row == len(factors) - 1 else "")
            ax.set_ylabel("error (%)" if col == 0 else "")
            mean = h.groupby("epoch")[[CLEAN_TRAIN_EPOCH, TEST_EPOCH]].mean().dropna() if len(h) else h
            if not len(mean):
                why = "not run" if not len(cells) else ", ".join(sorted(set(cells["status"])))
                ax.text(
                    0.5,
                    0.5,
                    f"missing ({why})" if not len(h) else "no clean training error per epoch",
                    transform=ax.transAxes,
                    ha="center",
                    va="center",
                    color="0.4",
                    style="italic",
                )
                ax.set_title(title, fontsize=11)
                continue
            plot.line(ax, h, CLEAN_TRAIN_EPOCH, c, "--")
            plot.line(ax, h, TEST_EPOCH, c, "-")
            ax.fill_between(mean.index, mean[CLEAN_TRAIN_EPOCH], mean[TEST_EPOCH], color=c, alpha=0.15, linewidth=0)
            g = gap.loc[label(which, level)]
            if int(g["gap_n"]):
                ci = f" [{g['gap_lo']:+.1f}, {g['gap_hi']:+.1f}]" if int(g["gap_n"]) >= 2 else ""
                title += f"\nfinal gap {g['gap_mean']:+.1f} pp{ci} (n={int(g['gap_n'])})"
            ax.set_title(title, fontsize=11)
            top = max(top, float(np.nanmax(mean.to_numpy())))
            last = max(last, float(mean.index.max()))
    axes[0][0].set_ylim(0, min(100.0, top * 1.08 + 2))
    plot.epoch_axis(axes[0][0], last)
    handles = [
        Line2D([], [], color="0.2", linestyle="--", linewidth=2, label="training images, no augmentation or dropout"),
        Line2D([], [], color="0.2", linestyle="-", linewidth=2, label="test top-1"),
    ]
    axes[0][0].legend(handles=handles, loc="best", fontsize=9.5)
    fig.suptitle(f"{sd.study}: clean training vs test error over epochs ({sd.profile} profile)")
    seeds = sd.history["seed"].nunique()
    plot.note(
        fig,
        [
            ("Line = mean over the seeds, band = their range; " if seeds > 1 else "One seed; ")
            + "shading = the gap (test − clean training error); titles: the final gap with its 95% "
            "interval where there are two or more seeds."
        ],
    )
    return fig


def section(out) -> Section | None:
    """The report.md section, with its table and figure written through `out` (an `Output`);
    None where the study varies none of the overfitting factors."""
    sd = out.sd
    if not configurations(sd):
        return None
    s = Section("Overfitting: test error minus clean training error")
    s.text.append(
        "The paper: without dropout, and without crops and mirrors, AlexNet overfits substantially "
        "(sections 4.1, 4.2); overlapping pooling makes it slightly harder to overfit (3.4). The gap "
        "here is test error minus the training error measured without augmentation or dropout."
    )
    if not sd.has(CLEAN_TRAIN) or TOP1 not in sd.runs:
        sd.notes.warn(NO_CLEAN)
        s.text.append(
            f"**{NO_CLEAN[0].upper() + NO_CLEAN[1:]}.** The training error these results hold was "
            "measured during each epoch, through augmentation and dropout, which overstates a "
            "regularised net's training error; a gap from it is not shown."
        )
        return s
    frame = gaps(sd)
    fig = out.guarded("clean training vs test error", figure, sd, frame)
    if fig is None and not sd.has(CLEAN_TRAIN_EPOCH, "history"):
        s.text.append("history.csv has no per-epoch clean training error: no curves, only the final gap.")
    out.figure(fig, NAME, "Clean training error (dashed) and test error (solid) per epoch; shaded: the gap.", s)
    out.table(table(sd, frame), frame, s)
    if not math.isfinite(frame["gap_mean"].max()):
        sd.notes.warn("no finished cell has both a test and a clean training error: no gap")
    return s
