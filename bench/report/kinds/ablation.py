"""The one-at-a-time ablation, a kind of study: each configuration against the baseline.

Applies to a study with a baseline (a cell marked `is_baseline`, or the study
file's baselines), e.g. ablations/alexnet.toml. Writes the figure
`ablation_effects` (test error per configuration and its difference from the
baseline, beside the paper's reported effect) and the table `ablation_effects`;
where the study has dropout, pooling or augmentation factors, also `overfitting`
(train vs test error over epochs).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from bench.report import format as fmt
from bench.report import plot
from bench.report.claims import claims_for
from bench.report.effects import (WELCH_NOTE, config_label, effects, effects_notes, macs_header, missing_reason,
                                  throughput_sources)
from bench.report.load import StudyData
from bench.report.markdown import Section
from bench.report.output import Outcome, Output

WHAT = "the ablation effects"
FIGURES, TABLES = ("ablation_effects", "overfitting"), ("ablation_effects",)
PAPER_MARKERS = {"ImageNet": "D", "CIFAR-10": "s"}  # the paper's data set -> its marker
OVERFIT_FACTORS = ("dropout", "pool", "augment")


def applies(sd: StudyData) -> bool:
    return sd.baseline is not None


def build(out: Output, outcome: Outcome) -> None:
    sd = out.sd
    eff = effects(sd)
    s = Section("Effects of the design choices")
    s.text.append("Each configuration differs from the baseline in one factor. " + WELCH_NOTE)
    out.figure(out.guarded("the ablation effects", ablation, sd, eff), "ablation_effects",
               "Test top-1 error per configuration and its difference from the baseline; hollow markers: the "
               "paper's reported effect.", s)
    out.table(effects_table(sd, eff), eff, s)
    outcome.sections.append(s)
    fig = out.guarded("train vs test error", overfitting, sd)
    if fig is not None:
        o = Section("Overfitting: train vs test error over epochs")
        o.text.append("The paper: without dropout, and without crops and mirrors, AlexNet overfits substantially "
                      "(sections 4.1, 4.2); overlapping pooling makes it slightly harder to overfit (3.4).")
        out.figure(fig, "overfitting", "Training (dashed) and test (solid) error per epoch; shaded: the gap.", o)
        outcome.sections.append(o)
    outcome.effects = eff


# --- the table --------------------------------------------------------------------------

def _paper_column(factor: str, level: str) -> str:
    parts = []
    for c in claims_for(factor, level):
        if c.kind == "top1_diff":
            parts.append(f"{c.paper_diff:+.1f} ({c.data}, §{c.section})")
        elif c.kind == "speedup":
            parts.append(f"ReLU {c.paper_diff:g}× faster to 25% train err. ({c.data}, §{c.section})")
        else:
            parts.append(f"overfits without ({c.data}, §{c.section})")
    return "; ".join(parts)


def effects_table(sd: StudyData, eff: pd.DataFrame) -> fmt.Table:
    _, train_desc, _ = throughput_sources(sd)
    columns = ["configuration", "params", macs_header(sd), f"train images/s ({train_desc})",
               "test top-1 err. % (mean ± sd)", "95% CI (%)", "test top-5 err. % (mean ± sd)",
               "Δ top-1 vs baseline, pp [95% Welch CI]", "paper: Δ top-1, pp"]
    rows = []
    for _, r in eff.iterrows():
        n = int(r["n"])
        rows.append([
            r["config"], fmt.count(r["params"]), fmt.count(r["macs"]), fmt.rate(r["train_ips"]),
            fmt.mean_sd(r["top1_mean"], r["top1_sd"], n, why_missing=missing_reason(r)),
            fmt.interval(r["top1_lo"], r["top1_hi"], n),
            fmt.mean_sd(r["top5_mean"], r["top5_sd"], int(r["top5_n"]), why_missing=missing_reason(r)),
            "(reference)" if r["is_baseline"] else fmt.diff_with_interval(
                r["diff"], r["diff_lo"], r["diff_hi"], (int(r["base_n"]), n)),
            _paper_column(r["factor"], r["level"]),
        ])
    data = ", ".join(dict.fromkeys(sd.column("data_source").dropna().astype(str))) or "unknown data"
    return fmt.Table("ablation_effects", f"{sd.study} ({sd.profile}): effect of each design choice on test error "
                     f"({data})", columns, rows, effects_notes(sd, eff))


# --- the ablation effects figure -------------------------------------------------------

def ablation(sd: StudyData, eff: pd.DataFrame) -> Figure:
    """Test error per configuration beside the baseline, and the difference from it, sorted."""
    base = eff[eff["is_baseline"]].iloc[0] if eff["is_baseline"].any() else None
    others = eff[~eff["is_baseline"]].copy()
    others = others.assign(_missing=others["n"] == 0).sort_values(["_missing", "diff"], ascending=[True, False])
    rows = ([base] if base is not None else []) + [r for _, r in others.iterrows()]
    k = len(rows)
    colors = plot.level_colors(sd)
    fig = Figure(figsize=(11, 0.52 * k + 2.0), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2, sharey=True)
    if base is not None and base["n"] > 0:
        c = colors[(None, None)]
        ax1.axvline(base["top1_mean"], color=c, linestyle="--", linewidth=1, zorder=1)
        if base["n"] > 1:
            ax1.axvspan(base["top1_lo"], base["top1_hi"], color=c, alpha=0.12, zorder=0)
    ax2.axvline(0, color="0.3", linewidth=1, zorder=1)
    used_markers = set()
    for i, r in enumerate(rows):
        factor = r["factor"] or None
        c = colors[(factor, r["level"] or None)]
        n = int(r["n"])
        for claim in claims_for(factor, r["level"], "top1_diff") if factor else []:  # even where not measured
            used_markers.add(claim.data)
            ax2.plot([claim.paper_diff], [i], marker=PAPER_MARKERS.get(claim.data, "^"), ms=8, mfc="none",
                     mec="black", mew=1.4, linestyle="none", zorder=4)
        if n == 0:
            why = "not run" if r["cells"] == 0 else (r["failed"] or "no finished cell")
            ax1.text(0.5, i, f"missing ({why})", transform=ax1.get_yaxis_transform(), ha="center",
                     va="center", fontsize=9.5, color="0.4", style="italic")
            continue
        xerr = [[r["top1_mean"] - r["top1_lo"]], [r["top1_hi"] - r["top1_mean"]]] if n > 1 else None
        ax1.errorbar(r["top1_mean"], i, xerr=xerr, fmt="o", color=c, ms=8, capsize=3, elinewidth=2, mec="black",
                     mew=0.6, zorder=3)
        if factor is None:
            ax2.text(0, i, "  reference", ha="left", va="center", fontsize=9.5, color="0.35")
            continue
        if not math.isnan(r["diff"]):
            derr = [[r["diff"] - r["diff_lo"]], [r["diff_hi"] - r["diff"]]] if not math.isnan(r["diff_lo"]) else None
            ax2.errorbar(r["diff"], i, xerr=derr, fmt="o", color=c, ms=8, capsize=3, elinewidth=2, mec="black",
                         mew=0.6, zorder=3)
    ax1.margins(x=0.08)
    labels = [config_label(r["factor"] or None, r["level"] or None) + (f"  (n={int(r['n'])})" if r["n"] > 1 else "")
              for r in rows]
    ax1.set_yticks(range(k), labels)
    ax1.set_ylim(k - 0.5, -0.5)
    ax1.set_xlabel("test top-1 error (%)")
    ax2.set_xlabel("Δ test top-1 error vs baseline (percentage points)")
    several = any(int(r["n"]) > 1 for r in rows)
    ax1.set_title("error per configuration" + (" (95% t-interval)" if several else ""))
    ax2.set_title("difference from the baseline" + (" (95% Welch interval)" if several else ""))
    lo, hi = ax2.get_xlim()
    span = max(abs(lo), abs(hi), 0.5)
    ax2.set_xlim(-span * 1.1, span * 1.1)
    handles = [Line2D([], [], marker="o", color="0.3", linestyle="none", ms=8, label="measured")]
    handles += [Line2D([], [], marker=PAPER_MARKERS.get(d, "^"), mfc="none", mec="black", mew=1.4,
                       linestyle="none", ms=8, label=f"paper ({d})") for d in sorted(used_markers)]
    ax2.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=len(handles), fontsize=9.5,
               frameon=False, handletextpad=0.3, columnspacing=1.2)
    fig.suptitle(f"{sd.study}: effect of each design choice on test error ({sd.profile} profile)")
    seeds = sorted(sd.runs["seed"].unique())
    notes = [f"Measured on {plot.unique(sd, 'data_source') or 'unknown data'}, seeds {', '.join(str(s) for s in seeds)}; "
             "hollow markers: the paper's reported effect. Sorted by the measured difference; "
             "positive = the change raises error."]
    single = [config_label(r["factor"] or None, r["level"] or None) for r in rows if int(r["n"]) == 1]
    if single and len(single) == sum(int(r["n"]) > 0 for r in rows):
        notes.insert(0, "One seed per configuration: points only, no intervals.")
    elif single:
        notes.insert(0, f"One seed, so no interval: {', '.join(single)}.")
    plot.note(fig, notes)
    return fig


# --- overfitting --------------------------------------------------------------------------

def overfitting(sd: StudyData) -> Figure | None:
    """Train vs test error over epochs: one row per factor, one panel per level, shared axes."""
    factors = [f for f in OVERFIT_FACTORS if f in sd.factors]
    if not factors or sd.baseline is None or not len(sd.history):
        return None
    # rows with more levels last: a shared x axis shows its tick labels on the bottom row only
    factors.sort(key=lambda f: len(sd.levels[f]))
    grid = [[(None, sd.baseline[f])] + [(f, lv) for lv in sd.levels[f] if lv != sd.baseline[f]] for f in factors]
    ncols = max(len(g) for g in grid)
    fig = Figure(figsize=(4.0 * ncols + 0.5, 3.2 * len(factors) + 1.0), layout="constrained")
    axes = fig.subplots(len(factors), ncols, sharex=True, sharey=True, squeeze=False)
    colors = plot.level_colors(sd)
    top, last = 0.0, 1.0
    for row, (factor, configs) in enumerate(zip(factors, grid)):
        for col in range(ncols):
            ax = axes[row][col]
            if col >= len(configs):
                ax.set_visible(False)
                continue
            which, level = configs[col]
            cells = sd.cells_at({**sd.baseline, factor: level})
            h = plot.curves(sd, cells["cell_id"])
            c = colors[(which, level if which else None)]
            title = f"{factor} = {level}" + (" (baseline)" if which is None else "")
            ax.set_xlabel("epochs" if row == len(factors) - 1 else "")
            ax.set_ylabel("error (%)" if col == 0 else "")
            if not len(h):
                why = "not run" if not len(cells) else ", ".join(sorted(set(cells["status"])))
                ax.text(0.5, 0.5, f"missing ({why})", transform=ax.transAxes, ha="center", va="center",
                        color="0.4", style="italic")
                ax.set_title(title, fontsize=11)
                continue
            plot.line(ax, h, "train_running_err_pct", c, "--")
            plot.line(ax, h, "test_top1_err_pct", c, "-")
            mean = h.groupby("epoch")[["train_running_err_pct", "test_top1_err_pct"]].mean()
            ax.fill_between(mean.index, mean["train_running_err_pct"], mean["test_top1_err_pct"], color=c, alpha=0.15,
                            linewidth=0)
            gap = mean["test_top1_err_pct"].iloc[-1] - mean["train_running_err_pct"].iloc[-1]
            ax.set_title(f"{title}\nlast epoch: test − train = {gap:+.1f} pp", fontsize=11)
            top = max(top, float(np.nanmax(mean.to_numpy())))
            last = max(last, float(mean.index.max()))
    axes[0][0].set_ylim(0, min(100.0, top * 1.08 + 2))
    plot.epoch_axis(axes[0][0], last)
    handles = [Line2D([], [], color="0.2", linestyle="--", linewidth=2, label="train (during the epoch)"),
               Line2D([], [], color="0.2", linestyle="-", linewidth=2, label="test top-1")]
    axes[0][0].legend(handles=handles, loc="best", fontsize=9.5)
    fig.suptitle(f"{sd.study}: train vs test error over epochs ({sd.profile} profile)")
    seeds = sd.history["seed"].nunique()
    plot.note(fig, [("Line = mean over the seeds, band = their range; " if seeds > 1 else "One seed; ")
                    + "shading = the gap between train and test error.",
                    "Training error is measured during the epoch with dropout and augmentation active, "
                    "test error without."])
    return fig
