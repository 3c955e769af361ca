"""The one-at-a-time ablation, a kind of study: each configuration against the baseline.

Applies to a study with a baseline (a cell marked `is_baseline`, or the study
file's baselines), e.g. ablations/alexnet.toml. Writes the figure
`ablation_effects` (test error per configuration and its difference from the
baseline, beside the paper's reported effect) and the table `ablation_effects`;
where the study has dropout, pooling or augmentation factors, also the figure and
table `overfitting` (`bench.report.overfit`: test error minus clean training error).
"""

from __future__ import annotations

import math

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from bench.report import format as fmt
from bench.report import overfit, plot
from bench.report.claims import TOP1, claims_for, models_of
from bench.report.effects import (
    DIFF_NOTE,
    config_label,
    diff_header,
    effects,
    effects_notes,
    macs_header,
    method_text,
    missing_reason,
    throughput_sources,
)
from bench.report.load import StudyData
from bench.report.markdown import Section
from bench.report.output import Outcome, Output
from bench.stats import PAIRED

WHAT = "the ablation effects"
FIGURES, TABLES = ("ablation_effects", "lr_surface", overfit.NAME), ("ablation_effects", overfit.NAME)
PAPER_MARKERS = {"ImageNet": "D", "CIFAR-10": "s"}  # the paper's data set -> its marker


def applies(sd: StudyData) -> bool:
    return sd.baseline is not None


def build(out: Output, outcome: Outcome) -> None:
    sd = out.sd
    eff = effects(sd)
    s = Section("Effects of the design choices")
    s.text.append("Each configuration differs from the baseline in one factor. " + DIFF_NOTE)
    out.figure(
        out.guarded("the ablation effects", ablation, sd, eff),
        "ablation_effects",
        "Test top-1 error per configuration and its difference from the baseline (bars: 95% intervals "
        "where there are two or more seeds); hollow markers: the paper's reported effect.",
        s,
    )
    out.table(effects_table(sd, eff), eff, s)
    outcome.sections.append(s)
    if sd.lr_choice is not None and len(sd.lr_choice):
        rates = Section("Learning rate per arm")
        rates.text.append(LR_NOTE)
        table, frame = lr_table(sd)
        surface = tuning_surface(sd)
        out.figure(
            out.guarded("the learning-rate surface", lr_surface, sd, surface),
            "lr_surface",
            "Validation error against learning rate on the tuning seeds, one line per arm (the rate is chosen on "
            "these); test error, dashed, for display only.",
            rates,
        )
        rates.text += sign_changes(sd, surface)
        out.table(table, frame, rates)
        outcome.sections.append(rates)
    o = out.guarded("the overfitting section", overfit.section, out)
    if o is not None:
        outcome.sections.append(o)
    outcome.effects = eff


# --- the table --------------------------------------------------------------------------


def _paper_column(factor: str, level: str, models: set[str] | None = None) -> str:
    parts = []
    for c in claims_for(factor, level, models=models):
        if c.kind == "top1_diff":
            parts.append(f"{c.paper_diff:+.1f} ({c.data}, §{c.section})")
        elif c.kind == "speedup":
            parts.append(f"ReLU {c.paper_diff:g}× faster to 25% train err. ({c.data}, §{c.section})")
        else:
            parts.append(f"overfits without ({c.data}, §{c.section})")
    return "; ".join(parts)


def effects_table(sd: StudyData, eff: pd.DataFrame) -> fmt.Table:
    _, train_desc, _ = throughput_sources(sd)
    columns = [
        "configuration",
        "params",
        macs_header(sd),
        f"train images/s ({train_desc})",
        "test top-1 err. % (mean ± sd)",
        "95% CI (%)",
        "test top-5 err. % (mean ± sd)",
        f"Δ top-1 vs baseline, pp [95% {diff_header(eff)} CI]",
        "Δ: method, n",
        "paper: Δ top-1, pp",
    ]
    rows = []
    for _, r in eff.iterrows():
        n = int(r["n"])
        rows.append(
            [
                r["config"],
                fmt.count(r["params"]),
                fmt.count(r["macs"]),
                fmt.rate(r["train_ips"]),
                fmt.mean_sd(r["top1_mean"], r["top1_sd"], n, why_missing=missing_reason(r)),
                fmt.interval(r["top1_lo"], r["top1_hi"], n),
                fmt.mean_sd(r["top5_mean"], r["top5_sd"], int(r["top5_n"]), why_missing=missing_reason(r)),
                "(reference)"
                if r["is_baseline"]
                else fmt.diff_with_interval(r["diff"], r["diff_lo"], r["diff_hi"], (int(r["diff_n"]),) * 2),
                "" if r["is_baseline"] else method_text(r),
                _paper_column(r["factor"], r["level"], models_of(sd.runs)),
            ]
        )
    data = ", ".join(dict.fromkeys(sd.column("data_source").dropna().astype(str))) or "unknown data"
    return fmt.Table(
        "ablation_effects",
        f"{sd.study} ({sd.profile}): effect of each design choice on test error ({data})",
        columns,
        rows,
        effects_notes(sd, eff),
    )


# --- each arm's learning rate -------------------------------------------------------------

LR_NOTE = (
    "Each arm (configuration) ran every rate of the profile's grid on its first seed(s); the rate with the "
    "lowest validation error (the best epoch's) is the arm's, and the confirming seeds ran at it alone. The "
    "test set plays no part in the choice. Every comparison above is of arms at their own chosen rates. "
    "A choice at the edge of the grid is flagged: a better rate may lie beyond it."
)


def lr_table(sd: StudyData) -> tuple[fmt.Table, pd.DataFrame]:
    """Arm | mean validation error over the grid's seeds at each rate | chosen rate | edge flag."""
    choice = sd.lr_choice
    rows_all = pd.concat([sd.runs, sd.grid_runs]) if sd.grid_runs is not None else sd.runs
    grid_seeds = set(rows_all["seed"]) - set(sd.confirm_seeds)
    rows_all = rows_all[rows_all["seed"].isin(grid_seeds) & (rows_all["status"] == "ok")]
    rates = sorted({float(v) for g in choice["grid"] for v in g})
    lr = pd.to_numeric(rows_all["cfg_lr"], errors="coerce")
    val = pd.to_numeric(rows_all["best_val_top1_err_pct"], errors="coerce")
    frame_rows, rows = [], []
    for _, r in choice.iterrows():
        levels = {f: str(r[f]) for f in sd.factors}
        mask = sd.cells_at(levels, rows_all).index
        by_rate = {x: float(val[mask][(lr[mask] - x).abs() < 1e-12].mean()) for x in rates}
        label = _arm_label(sd, levels)
        flag = f"at the {r['edge']} rate of the grid" if r["edge"] else ""
        rows.append([label, *(fmt.num(by_rate[x]) for x in rates), f"{r['lr']:g}", flag])
        frame_rows.append(
            {
                "configuration": label,
                **{f"val_err_at_lr_{x:g}": by_rate[x] for x in rates},
                "chosen_lr": r["lr"],
                "edge": r["edge"],
            }
        )
    seeds = ", ".join(str(int(x)) for x in sorted(grid_seeds))
    columns = ["configuration", *(f"val. err. % at lr {x:g} (seed {seeds})" for x in rates), "chosen lr", "flag"]
    table = fmt.Table(
        "learning_rates",
        f"{sd.study} ({sd.profile}): each arm's learning rate, chosen on validation error",
        columns,
        rows,
        [LR_NOTE],
    )
    return table, pd.DataFrame(frame_rows)


def tuning_surface(sd: StudyData) -> pd.DataFrame:
    """Per arm and rate on the tuning seeds: mean validation error (the choice's) and test error (shown only)."""
    rows_all = pd.concat([sd.runs, sd.grid_runs]) if sd.grid_runs is not None else sd.runs
    seeds = set(sd.tuning_seeds) or set(rows_all["seed"]) - set(sd.confirm_seeds)
    rows = rows_all[rows_all["seed"].isin(seeds) & (rows_all["status"] == "ok")]
    frame = pd.DataFrame(
        {
            "arm": [_arm_label(sd, {f: str(r[f]) for f in sd.factors}) for _, r in rows.iterrows()],
            "lr": pd.to_numeric(rows["cfg_lr"], errors="coerce"),
            "val": pd.to_numeric(rows["best_val_top1_err_pct"], errors="coerce"),
            "test": pd.to_numeric(rows.get(TOP1, pd.Series(math.nan, index=rows.index)), errors="coerce"),
            **{f: rows[f].astype(str) for f in sd.factors},
        },
        index=rows.index,
    )
    return frame.groupby(["arm", "lr", *sd.factors], sort=False, as_index=False)[["val", "test"]].mean()


def _arm_label(sd: StudyData, levels: dict[str, str]) -> str:
    differs = [f"{f} = {lv}" for f, lv in levels.items() if sd.baseline and lv != sd.baseline.get(f)]
    return ", ".join(differs) or "baseline"


def _val_by_rate(sd: StudyData, surface: pd.DataFrame, levels: dict[str, str]) -> pd.Series:
    """rate -> validation error of the arm at `levels`."""
    mask = pd.concat([surface[f] == levels[f] for f in sd.factors], axis=1).all(axis=1)
    return surface[mask].set_index("lr")["val"]


def lr_surface(sd: StudyData, surface: pd.DataFrame) -> Figure | None:
    """Validation error against rate, a line per arm; test error dashed beside it (never chosen on)."""
    if surface["lr"].nunique() < 2:
        return None
    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.subplots()
    colors = plot.palette(surface["arm"].nunique())
    for color, (arm, g) in zip(colors, surface.groupby("arm", sort=False)):
        g = g.sort_values("lr")
        ax.plot(g["lr"], g["val"], marker="o", color=color, label=arm)
        ax.plot(g["lr"], g["test"], linestyle="--", linewidth=1, alpha=0.6, color=color)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("learning rate")
    ax.set_ylabel("error, % (solid: validation, best epoch; dashed: test, final)")
    ax.legend(
        handles=[
            *ax.get_legend_handles_labels()[0],
            Line2D([], [], color="0.4", linestyle="--", label="test (display only)"),
        ],
        fontsize=8,
    )
    seeds = ", ".join(str(int(x)) for x in sorted(set(sd.tuning_seeds))) or "the grid's"
    fig.suptitle(f"{sd.study} ({sd.profile}): error against learning rate, seed(s) {seeds}")
    return fig


def sign_changes(sd: StudyData, surface: pd.DataFrame) -> list[str]:
    """A sentence per claim whose validation difference (level − reference) changes sign across the rates
    the grid shares: there the effect depends on the rate, and each arm's own rate decides its sign."""
    lines = []
    models = models_of(sd.runs)
    for factor in sd.factors:
        for level in sd.levels[factor]:
            if sd.baseline is None or level == sd.baseline[factor]:
                continue
            if not claims_for(factor, level, models=models):
                continue
            level_val = _val_by_rate(sd, surface, {**sd.baseline, factor: level})
            diff = (level_val - _val_by_rate(sd, surface, sd.baseline)).dropna().sort_index()
            if (diff > 0).any() and (diff < 0).any():
                shown = ", ".join(f"{d:+.1f} pp at {lr:g}" for lr, d in diff.items())
                lines.append(
                    f"**The sign of {factor} = {level} depends on the rate**: validation error minus the "
                    f"baseline's on the tuning seed(s) is {shown}."
                )
    return lines


# --- the ablation effects figure -------------------------------------------------------


def ablation(sd: StudyData, eff: pd.DataFrame) -> Figure:
    """Test error per configuration beside the baseline, and the difference from it, sorted."""
    rows = _figure_rows(eff)
    colors, models = plot.level_colors(sd), models_of(sd.runs)
    fig = Figure(figsize=(11, 0.52 * len(rows) + 2.0), layout="constrained")
    errors, diffs = fig.subplots(1, 2, sharey=True)
    _baseline_band(errors, rows[0] if rows and rows[0]["is_baseline"] else None, colors[(None, None)])
    diffs.axvline(0, color="0.3", linewidth=1, zorder=1)
    datasets = set()
    for i, r in enumerate(rows):
        factor, color = r["factor"] or None, colors[(r["factor"] or None, r["level"] or None)]
        datasets |= _paper_markers(diffs, i, factor, r["level"], models)
        if int(r["n"]) == 0:
            _missing_label(errors, i, r)
            continue
        _point(errors, i, r["top1_mean"], r["top1_lo"], r["top1_hi"], color, int(r["n"]) > 1)
        if factor is None:
            diffs.text(0, i, "  reference", ha="left", va="center", fontsize=9.5, color="0.35")
        elif not math.isnan(r["diff"]):
            interval = int(r["diff_n"]) >= 2 and math.isfinite(r["diff_lo"])
            _point(diffs, i, r["diff"], r["diff_lo"], r["diff_hi"], color, interval)
    _axes_labels(errors, diffs, rows, eff)
    _legend(diffs, datasets)
    fig.suptitle(f"{sd.study}: effect of each design choice on test error ({sd.profile} profile)")
    plot.note(fig, _figure_notes(sd, rows, eff))
    return fig


def _figure_rows(eff: pd.DataFrame) -> list[pd.Series]:
    """The baseline first, then the other configurations by their measured difference, largest first,
    and those with no finished cell last."""
    base = [eff[eff["is_baseline"]].iloc[0]] if eff["is_baseline"].any() else []
    others = eff[~eff["is_baseline"]]
    others = others.assign(_missing=others["n"] == 0).sort_values(["_missing", "diff"], ascending=[True, False])
    return base + [r for _, r in others.iterrows()]


def _baseline_band(ax, base: pd.Series | None, color) -> None:
    """The baseline's error as a dashed line across the panel, with its 95% interval shaded."""
    if base is None or base["n"] <= 0:
        return
    ax.axvline(base["top1_mean"], color=color, linestyle="--", linewidth=1, zorder=1)
    if base["n"] > 1:
        ax.axvspan(base["top1_lo"], base["top1_hi"], color=color, alpha=0.12, zorder=0)


def _paper_markers(ax, i: int, factor: str | None, level: str, models: set[str] | None) -> set[str]:
    """The paper's reported effect on row `i` (drawn even where nothing was measured); its data sets."""
    claims = claims_for(factor, level, "top1_diff", models) if factor else []
    for claim in claims:
        ax.plot(
            [claim.paper_diff],
            [i],
            marker=PAPER_MARKERS.get(claim.data, "^"),
            ms=8,
            mfc="none",
            mec="black",
            mew=1.4,
            linestyle="none",
            zorder=4,
        )
    return {claim.data for claim in claims}


def _missing_label(ax, i: int, r: pd.Series) -> None:
    why = "not run" if r["cells"] == 0 else (r["failed"] or "no finished cell")
    ax.text(
        0.5,
        i,
        f"missing ({why})",
        transform=ax.get_yaxis_transform(),
        ha="center",
        va="center",
        fontsize=9.5,
        color="0.4",
        style="italic",
    )


def _point(ax, i: int, value: float, lo: float, hi: float, color, interval: bool) -> None:
    """A measured value on row `i`, with its 95% interval where there is one."""
    xerr = [[value - lo], [hi - value]] if interval else None
    ax.errorbar(
        value, i, xerr=xerr, fmt="o", color=color, ms=8, capsize=3, elinewidth=2, mec="black", mew=0.6, zorder=3
    )


def _axes_labels(errors, diffs, rows: list[pd.Series], eff: pd.DataFrame) -> None:
    """Configuration names with their n, axis labels, titles, and a difference axis centred on 0."""
    errors.margins(x=0.08)
    labels = [config_label(r["factor"] or None, r["level"] or None) + f"  (n={int(r['n'])})" for r in rows]
    errors.set_yticks(range(len(rows)), labels)
    errors.set_ylim(len(rows) - 0.5, -0.5)
    errors.set_xlabel("test top-1 error (%)")
    diffs.set_xlabel("Δ test top-1 error vs baseline (percentage points)")
    several = any(int(r["n"]) > 1 for r in rows)
    errors.set_title("error per configuration" + (" (95% t-interval)" if several else ""))
    intervals = (eff.loc[~eff["is_baseline"], "diff_n"] >= 2).any()
    diffs.set_title("difference from the baseline" + (f" (95% {diff_header(eff)} interval)" if intervals else ""))
    lo, hi = diffs.get_xlim()
    span = max(abs(lo), abs(hi), 0.5)
    diffs.set_xlim(-span * 1.1, span * 1.1)


def _legend(ax, datasets: set[str]) -> None:
    """Measured points, and a hollow marker per data set of the paper's effects drawn."""
    paper = dict(mfc="none", mec="black", mew=1.4, linestyle="none", ms=8)
    handles = [Line2D([], [], marker="o", color="0.3", linestyle="none", ms=8, label="measured")]
    handles += [
        Line2D([], [], marker=PAPER_MARKERS.get(d, "^"), **paper, label=f"paper ({d})") for d in sorted(datasets)
    ]
    ax.legend(
        handles=handles,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.13),
        ncol=len(handles),
        fontsize=9.5,
        frameon=False,
        handletextpad=0.3,
        columnspacing=1.2,
    )


def _figure_notes(sd: StudyData, rows: list[pd.Series], eff: pd.DataFrame) -> list[str]:
    """What the figure's points are: the data and seeds, which rows have one seed, how differences pair."""
    seeds = sorted(sd.runs["seed"].unique())
    notes = [
        f"Measured on {plot.unique(sd, 'data_source') or 'unknown data'}, seeds {', '.join(str(s) for s in seeds)}; "
        "hollow markers: the paper's reported effect. Sorted by the measured difference; "
        "positive = the change raises error."
    ]
    single = [
        config_label(r["factor"] or None, r["level"] or None)
        for r in rows
        if int(r["n"]) == 1 or (r["factor"] and int(r["n"]) and int(r["diff_n"]) < 2)
    ]
    if single and len(single) == sum(int(r["n"]) > 0 for r in rows):
        notes.insert(0, "One seed per configuration: points only, no intervals, so no difference here is resolvable.")
    elif single:
        notes.insert(
            0, f"One seed (or one in common with the baseline), so a point with no interval: {', '.join(single)}."
        )
    differences = eff[~eff["is_baseline"]]
    if (differences["diff_n"] >= 2).any():
        paired = (differences["diff_method"] == PAIRED).all()
        notes.append(
            "Differences: paired over the seeds both configurations share (Student t on the per-seed "
            "differences)" + ("." if paired else "; Welch's interval where they share none.")
        )
    return notes
