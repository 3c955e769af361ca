"""Figure 1 of the paper, a kind of study: epochs to a training-error target, ReLU vs tanh.

Applies to a study with a target (`target_metric` column, or the study file's
target) and an `activation` factor, e.g. ablations/figure1.toml. Writes the figure
`figure1` (training error vs epochs at each activation's fastest learning rate,
one panel per setup) and the tables `figure1` and `figure1_lr_grid`.

Per setup (a `setup` factor, if any; the study's `fastest_lr_per` where it declares one)
and activation, the learning rate (the `lr` factor's level, else each cell's `cfg_lr`) is the
one that trains fastest, as the paper chose its own, judged on training error (what the
paper's Figure 1 plots), never on test error: `bench.choose.choose_fastest`, the rule the
sweep applies to a two-stage profile's first stage (fewest epochs to the target; if none
reached it, the lowest final running training error). A study whose `fastest_lr_per` leaves
out the activation (one rate for both) is not drawn here.

The rule judges the profile's seeds. A two-stage profile (`confirm_seeds`) then runs more
seeds at the chosen rates only; they count in the chosen rate's statistics and the claim, not
in the choice. Where the rule now picks another rate than the one the confirming seeds ran at
(picked on an earlier statistic), report.md says so: those seeds then count nowhere, and the
chosen rate rests on the grid's seeds alone.

A chosen rate that is the largest or smallest of its grid is flagged (`edge`):
the fastest rate may lie outside the grid, and report.md says so.

"Epochs to 25%" is the fractional epoch where the running training error averaged
over the trailing epoch (`bench.train.target.trailing_epoch_mean`: the last ten
progress windows, weighted by their steps, evaluated every 1/10 epoch from the end
of epoch 1) first falls to the target, interpolated linearly between those points.
It is recomputed here from progress.csv for every cell, whatever statistic the
runs.csv column was computed with: rows without `target_statistic` = "trailing-epoch
mean" were judged, and stopped, on a single progress window, which the reshuffle dip
and the window noise pull early for a slowly falling curve. Results swept before
progress points: the first epoch whose epoch-averaged training error (the same mean,
at the epoch's end) is at or below the target. The curves drawn are that statistic,
one line per seed, so each seed's marker lies on its own line.

A cell whose run ended before the statistic crossed, stopped short of its epoch
budget (by an earlier rule on another statistic), is censored: its epochs to the
target are unknown, above its last epoch. It is shown as such (never dropped), it
leaves its rate's mean and the paired claim unknown, and a rate with censored seeds
that might beat the chosen one makes the choice provisional, said beside it.

The speed-up in the figure and its table is tanh epochs / ReLU epochs (means over
seeds). Nothing is extrapolated: where tanh never reached the target, the ratio is
given only as a lower bound, labelled so, counting each seed that did not reach it
as reaching it at its last logged point (progress points; one epoch after its last
where only epochs were logged). The paper's claim is judged in the claims table
(`claims.assess_speedup`: paired over seeds, the geometric mean ratio with its 95%
interval); where x6 lies against that interval is said only when every paired cell
reached the target.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from bench.choose import RUNNING_TRAIN_EPOCH, Fastest, choose_fastest, rate_value, target_text
from bench.report import format as fmt
from bench.report import plot
from bench.report.claims import assess_speedup, by_seed
from bench.report.load import StudyData, run_mode
from bench.report.markdown import Section
from bench.report.output import Outcome, Output
from bench.report.paper import SPEEDUP, claims_for
from bench.train.target import TRAILING_EPOCH_MEAN

log = logging.getLogger(__name__)

WHAT = "Figure 1"
FIGURES, TABLES = ("figure1",), ("figure1", "figure1_lr_grid")
# The paper's pair, from its claim (`bench.report.paper`): ratio = SLOW epochs / FAST epochs.
ACTIVATION, FAST, SLOW = SPEEDUP.factor, SPEEDUP.reference, SPEEDUP.level


def applies(sd: StudyData) -> bool:
    chosen_per_activation = not sd.fastest_lr_per or ACTIVATION in sd.fastest_lr_per
    return (
        sd.target is not None
        and ACTIVATION in sd.factors
        and chosen_per_activation
        and sd.target["metric"] in sd.history.columns
    )


def build(out: Output, outcome: Outcome) -> None:
    sd = out.sd
    choice = fastest(sd)
    curves, cells, chosen = choice.curves, choice.cells, choice.chosen
    if not len(choice.grid):
        sd.notes.warn("no finished cell for Figure 1")
        return
    grid = mark_chosen(choice.grid, chosen)
    ratios = speedups(chosen)
    s = Section(f"Figure 1: epochs to {target_label(sd)}, ReLU vs tanh")
    s.text.append(
        "The paper (section 3.1, Figure 1): a four-layer convolutional network on CIFAR-10 reaches 25% "
        "training error six times faster with ReLUs than with tanh units, each with its learning rate "
        "chosen to train as fast as possible. Here each activation's learning rate is chosen the same way "
        "from the study's grid, on training error (what the paper plots), never on test error: the rate "
        "whose cells first reach the target; see the table's notes."
    )
    if not sd.target["metric"].startswith("train_"):
        sd.notes.warn(
            f"the study's target is {sd.target['metric']}, not a training error: the learning rates "
            "below are chosen on it"
        )
    if curves:
        s.text.append(_statistic_text(sd, cells))
    stale = stale_confirming(sd, cells, chosen)
    warnings = edge_warnings(chosen) + provisional_warnings(chosen) + confirm_warnings(chosen, stale)
    for line in warnings:
        log.warning("%s: %s", sd.label, line)
    s.text += [f"**Warning:** {line}." for line in warnings]
    out.figure(
        out.guarded("Figure 1", figure1, sd, chosen, ratios, curves, cells),
        "figure1",
        f"{_curve_label(curves)} vs epochs at each activation's fastest learning rate, one line per seed; "
        "dotted line: the target; dots: where each seed's line first reaches it; triangles: the last "
        "point of a run stopped before it reached the target (censored).",
        s,
    )
    out.table(figure1_table(sd, chosen, ratios), chosen, s)
    out.table(lr_grid_table(sd, grid), grid, s)
    outcome.sections.append(s)
    outcome.ratios = ratios
    outcome.claims += speedup_claims(
        cells, chosen, ratios, stale, counted=sd.declared_seeds if sd.tuning_seeds else None
    )


def _curve_label(curves: dict) -> str:
    return "Training error averaged over the trailing epoch" if curves else "Training error (epoch mean)"


def _statistic_text(sd: StudyData, cells: pd.DataFrame) -> str:
    """What the epochs to the target are measured on, and how many cells were cut short before it."""
    text = (
        f"Epochs to {target_label(sd)} are recomputed from progress.csv on the running training error "
        "averaged over the trailing epoch (ten progress windows, weighted by their steps), every 1/10 "
        "epoch from the end of epoch 1, interpolated between those points: one window alone is noisy, "
        "and the first window after each reshuffle sits below the trend, which pulls a slowly falling "
        "curve (tanh) epochs early and barely moves a steep one."
    )
    old = (
        ~cells["target_statistic"].eq(TRAILING_EPOCH_MEAN)
        if "target_statistic" in cells
        else pd.Series(True, index=cells.index)
    )
    if old.any():
        text += (
            f" {int(old.sum())} of {len(cells)} cells were swept under the single-window rule (no "
            "target_statistic in runs.csv: a cell stopped at the end of the epoch in which one window first "
            "fell to the target); their runs.csv epochs_to_target is not used."
        )
    cut = int(cells["censored"].sum())
    if cut:
        text += (
            f" **{cut} of {len(cells)} cells were stopped before their trailing-epoch mean reached the "
            "target (censored):** their epochs to it are unknown, above the epoch they stopped at; they are "
            "shown as such, and leave their rate's mean and the paired claim unknown."
        )
    return text


def provisional_warnings(chosen: pd.DataFrame) -> list[str]:
    """One line per chosen rate that a censored rate might beat."""
    return [
        f"{_where(r)}: lr {r['lr']} is {r['provisional']}" for _, r in chosen[chosen["provisional"] != ""].iterrows()
    ]


def stale_confirming(sd: StudyData, cells: pd.DataFrame, chosen: pd.DataFrame) -> dict[tuple, tuple[str, str]]:
    """(setup, activation) -> (seeds, rates) where the profile's confirming seeds ran at another rate
    than the one chosen now (chosen when they ran, on an earlier statistic): they count nowhere."""
    out = {}
    confirm = cells[cells["seed"].isin(sd.confirm_seeds)]
    for _, r in chosen.iterrows():
        mine = confirm[(confirm["setup"] == r["setup"]) & (confirm[ACTIVATION] == r[ACTIVATION])]
        other = mine[mine["lr"] != r["lr"]]
        if len(other):
            seeds = ", ".join(str(s) for s in sorted(other["seed"].unique()))
            out[(r["setup"], r[ACTIVATION])] = (seeds, ", ".join(sorted(other["lr"].unique(), key=rate_value)))
    return out


def confirm_warnings(chosen: pd.DataFrame, stale: dict) -> list[str]:
    """One line per (setup, activation) of `stale_confirming`."""
    out = []
    for _, r in chosen.iterrows():
        if (r["setup"], r[ACTIVATION]) not in stale:
            continue
        seeds, rates = stale[(r["setup"], r[ACTIVATION])]
        out.append(
            f"{_where(r)}: the confirming seeds ({seeds}) ran at lr {rates}, the rate chosen when they ran (on "
            f"an earlier statistic); on this statistic the grid chooses lr {r['lr']}, so they count nowhere here "
            f"and lr {r['lr']} rests on {r['n']} seed(s)"
        )
    return out


def _where(r) -> str:
    return ", ".join(filter(None, [f"setup {r['setup']}" if r["setup"] else "", r[ACTIVATION]]))


def target_label(sd: StudyData) -> str:
    return target_text(sd.target)


def per_factors(sd: StudyData) -> list[str]:
    """The factors besides the activation that Figure 1 chooses a rate per, one panel per combination:
    the study's `fastest_lr_per` where it declares one (as the sweep chose), else setup where it is a factor."""
    if sd.fastest_lr_per:
        return [f for f in sd.fastest_lr_per if f != ACTIVATION and f in sd.factors]
    return ["setup"] if "setup" in sd.factors else []


def fastest(sd: StudyData) -> Fastest:
    """Figure 1's choice (`bench.choose.choose_fastest`) per setup and activation on the study's cells,
    chosen without the profile's confirming seeds. The rule's tables carry `setup` (the panel: the levels
    of `per_factors`, '' for one panel) and `lr` (the rate as text)."""
    per = per_factors(sd)
    panel = [", ".join(str(v) for v in row) for row in sd.runs[per].itertuples(index=False)] if per else ""
    runs = sd.runs.assign(setup=panel, lr=_lr(sd.runs, sd))
    return choose_fastest(
        runs,
        sd.history,
        sd.progress,
        sd.target,
        ["setup", ACTIVATION],
        confirm_seeds=sd.confirm_seeds,
        order=sd.levels,
        warn=sd.notes.warn,
    )


def _lr(frame: pd.DataFrame, sd: StudyData) -> pd.Series:
    if "lr" in sd.factors:
        return frame["lr"].astype(str)
    return sd.column("cfg_lr", frame, "the learning rate of each cell").astype(str)


def mark_chosen(grid: pd.DataFrame, chosen: pd.DataFrame) -> pd.DataFrame:
    """`grid` with `chosen` (the rate picked for its setup and activation) and `edge` (of a chosen rate)."""
    picked = {(r["setup"], r[ACTIVATION]): r for _, r in chosen.iterrows()}
    is_chosen = [picked[(r["setup"], r[ACTIVATION])]["lr"] == r["lr"] for _, r in grid.iterrows()]
    edge = [picked[(r["setup"], r[ACTIVATION])]["edge"] if c else "" for c, (_, r) in zip(is_chosen, grid.iterrows())]
    return grid.assign(chosen=is_chosen, edge=edge)


def edge_warnings(chosen: pd.DataFrame) -> list[str]:
    """One line per chosen rate at an edge of its grid."""
    out = []
    for _, r in chosen[chosen["edge"] != ""].iterrows():
        where = ", ".join(filter(None, [f"setup {r['setup']}" if r["setup"] else "", r[ACTIVATION]]))
        what = (
            "the only rate tried: the fastest rate may lie elsewhere"
            if r["edge"] == "only"
            else f"the {r['edge']} tried ({r['lrs_tried']}): the fastest rate may lie outside the grid"
        )
        out.append(f"{where}: lr {r['lr']} is {what}")
    return out


def speedup_claims(
    cells: pd.DataFrame,
    chosen: pd.DataFrame,
    ratios: dict | None = None,
    stale: dict | None = None,
    counted: list | None = None,
) -> list[dict]:
    """The Figure 1 claim per setup (`claims.assess_speedup`), as claims-table rows, from the per-seed
    epochs to the target of the chosen learning rates' cells; a lower bound from `ratios` (`speedups`)
    goes into the note of a setup whose tanh cells never reached the target. Censored cells (cut short
    before the target) are named in the note; so are a provisional choice and confirming seeds run at
    another rate (`stale`: `stale_confirming`). counted: the seeds the claim counts (a two-stage profile's
    confirming seeds: the tuning seeds chose the rate, so their epochs there are biased low); None: all."""
    rows = []
    for setup, g in chosen.groupby("setup", sort=False):
        by = {r[ACTIVATION]: r for _, r in g.iterrows()}
        if FAST not in by or SLOW not in by:
            continue

        epochs, cut = {}, 0
        for act in (FAST, SLOW):
            mine = cells[cells["cell_id"].isin(by[act]["cell_ids"].split(","))]
            mine = mine if counted is None else mine[mine["seed"].isin(counted)]
            epochs[act] = by_seed(mine, mine["epochs_to_target"])
            cut += int(mine["censored"].sum())
        row = assess_speedup(epochs[FAST], epochs[SLOW]).row()
        bound = (ratios or {}).get(setup)
        if cut:
            missing = sum(1 for d in epochs.values() for v in d.values() if not math.isfinite(v))
            never = missing - cut
            row["note"] = (
                f"censored: {cut} cell(s) stopped before the trailing-epoch mean reached the target, so their "
                "epochs to it are unknown"
                + (f"; {never} more did not reach it within the epoch budget" if never else "")
                + "; no paired ratio"
            )
        if bound is not None and bound.kind == "lower bound" and not row["n"]:
            row["note"] = f"{row['note']}; ratio of mean epochs {bound.text.split(' (lower bound')[0]} (a lower bound)"
        extra = [
            f"{a}'s lr {by[a]['lr']} is a provisional choice: "
            + (
                "a rate stopped before the target may be faster"
                if by[a]["reached"]
                else "no rate reached the target and some were stopped before it"
            )
            for a in (FAST, SLOW)
            if by[a]["provisional"]
        ]
        for a in (FAST, SLOW):
            if (setup, a) in (stale or {}):
                seeds, rates = stale[(setup, a)]
                extra.append(f"{a}'s confirming seeds ({seeds}) ran at lr {rates}, not at the rate chosen now")
        if extra:
            row["note"] = "; ".join([row["note"], *extra]) if row["note"] else "; ".join(extra)
        if setup:
            row["claim"] = f"setup {setup}: {row['claim']}"
        rows.append(row)
    return rows


@dataclass(frozen=True)
class Speedup:
    setup: str
    ratio: float  # tanh / ReLU epochs, or its lower bound; NaN when there is none
    kind: str  # measured | lower bound | none
    text: str  # one line for the plot and the table


def speedups(chosen: pd.DataFrame) -> dict[str, Speedup]:
    out = {}
    for setup, g in chosen.groupby("setup", sort=False):
        by = {r[ACTIVATION]: r for _, r in g.iterrows()}
        if FAST not in by or SLOW not in by:
            out[setup] = Speedup(setup, math.nan, "none", f"no ratio: needs both {FAST} and {SLOW}")
            continue
        fast, slow = by[FAST], by[SLOW]
        if fast["reached"] and slow["reached"]:
            ratio = slow["epochs_mean"] / fast["epochs_mean"]
            out[setup] = Speedup(setup, ratio, "measured", f"{SLOW}/{FAST} = {ratio:.1f}×")
        elif fast["reached"] and math.isfinite(slow["epochs_lower_bound"]):
            ratio = slow["epochs_lower_bound"] / fast["epochs_mean"]
            cut = f"; {slow['censored']} run(s) censored" if slow["censored"] else ""
            out[setup] = Speedup(
                setup,
                ratio,
                "lower bound",
                f"{SLOW}/{FAST} ≥ {math.floor(ratio * 10) / 10:.1f}× (lower bound: {SLOW} never reached the target{cut})",
            )
        else:
            who = " and ".join(
                a + (f" ({r['censored']} of {r['n']} seed{'s' * (r['n'] != 1)} censored)" if r["censored"] else "")
                for a, r in ((FAST, fast), (SLOW, slow))
                if not r["reached"]
            )
            out[setup] = Speedup(setup, math.nan, "none", f"no ratio: {who} did not reach the target")
    return out


def reached_text(row, sd: StudyData) -> str:
    """'3 epochs' / '3.3 ± 0.6 epochs (3, 3, 4)' / 'did not reach 25% within 14 epochs' /
    'unknown: 1 of 3 seeds stopped before 25% (seeds: 6.3, > 6, 6.5)'."""
    if not row["reached"] and row["censored"]:
        return (
            f"unknown: {row['censored']} of {row['n']} seed{'s' * (row['n'] != 1)} stopped before "
            f"{sd.target['value']:g}% (seeds: {row['epochs_per_seed']})"
        )
    if not row["reached"]:
        n = row["epochs_run"]
        text = f"did not reach {sd.target['value']:g}% within {n:.0f} epoch{'' if n == 1 else 's'}"
        return text + (" (diverged)" if row["diverged"] else "")
    if row["n"] > 1:
        return f"{row['epochs_mean']:.3g} ± {row['epochs_sd']:.2g} epochs (seeds: {row['epochs_per_seed']})"
    return f"{row['epochs_mean']:.3g} epochs"


def figure1_table(sd: StudyData, chosen: pd.DataFrame, ratios: dict[str, Speedup]) -> fmt.Table:
    paper = claims_for(ACTIVATION, SLOW, SPEEDUP.kind)
    paper_text = f"ReLU {paper[0].quote.split('ReLU ')[-1]}" if paper else ""
    columns = (["setup"] if chosen["setup"].ne("").any() else []) + [
        ACTIVATION,
        "chosen lr",
        "lrs tried",
        "seeds",
        f"epochs to {target_label(sd)}",
        "final running train err. % (mean)",
        f"speed-up ({SLOW} epochs / {FAST} epochs)",
        "paper (§3.1, CIFAR-10)",
    ]
    rows = []
    for _, r in chosen.iterrows():
        rows.append(
            ([r["setup"]] if "setup" in columns else [])
            + [
                r[ACTIVATION],
                r["lr"] + (f" ({r['edge']} tried)" if r["edge"] else ""),
                r["lrs_tried"],
                str(r["n"]) + (f" ({r['censored']} censored)" if r["censored"] else ""),
                reached_text(r, sd) + (" — choice provisional (see the warnings)" if r["provisional"] else ""),
                fmt.num(r["final_train_err_mean"]),
                ratios[r["setup"]].text,
                paper_text,
            ]
        )
    notes = [
        "Learning rate per setup and activation, chosen on training error (never on test error): the one "
        "that reaches the target in the fewest epochs (mean over the seeds of the grid; ties: lower "
        "final running training error, then the lower rate); if none does, the lowest final running "
        "training error. Seeds that ran only the chosen rate (a profile's confirm_seeds) count in its row, "
        "not in the choice.",
        _epochs_note(sd) + " No extrapolation; a ratio marked 'lower bound' counts a run that never "
        "reached the target as reaching it at its last point (progress points; one epoch after its last "
        "where only epochs were logged). A seed 'stopped before' the target (censored; '> N': stopped at "
        "epoch N, short of its epoch budget, by an earlier stopping rule) has no epoch count: its rate's "
        "mean and the paired claim are unknown.",
        "The speed-up here is the ratio of the mean epochs; the claims table judges the paper's claim from "
        "the paired per-seed ratios (geometric mean, 95% interval).",
    ]
    return fmt.Table(
        "figure1", f"{sd.study} ({sd.profile}): epochs to {target_label(sd)}, ReLU vs tanh", columns, rows, notes
    )


def _epochs_note(sd: StudyData) -> str:
    if sd.target["metric"] == RUNNING_TRAIN_EPOCH and sd.progress is not None:
        return (
            "Epochs to the target: where the running training error averaged over the trailing epoch (the "
            "last ten progress windows, weighted by their steps), evaluated every 1/10 epoch from the end "
            "of epoch 1, first falls to it, interpolated linearly between those points; recomputed from "
            "progress.csv, never read from runs.csv."
        )
    return "Epochs to the target: the first epoch whose training error (averaged over the epoch) is at or below it."


def lr_grid_table(sd: StudyData, grid: pd.DataFrame) -> fmt.Table:
    has_setup = grid["setup"].ne("").any()
    columns = (["setup"] if has_setup else []) + [
        ACTIVATION,
        "lr",
        "seeds reached / run",
        f"epochs to {target_label(sd)} (per seed)",
        "epochs run",
        "final running train err. % (mean)",
        "chosen",
        "edge",
    ]
    rows = [
        ([r["setup"]] if has_setup else [])
        + [
            r[ACTIVATION],
            r["lr"],
            f"{r['reached']} / {r['n']}"
            + (f" ({r['censored']} censored)" if r["censored"] else "")
            + (f" ({r['diverged']} diverged)" if r["diverged"] else ""),
            r["epochs_per_seed"],
            f"{r['epochs_run']:.0f}",
            fmt.num(r["final_train_err_mean"]),
            "chosen" if r["chosen"] else "",
            f"{r['edge']} tried" if r["edge"] else "",
        ]
        for _, r in grid.iterrows()
    ]
    return fmt.Table(
        "figure1_lr_grid",
        f"{sd.study} ({sd.profile}): the learning-rate search",
        columns,
        rows,
        [
            "'–': that seed did not reach the target within its epoch budget. '> N' (censored): that seed's "
            "run was stopped at epoch N, short of its budget, before it reached the target; its epochs to it "
            "are unknown, above N. edge: a chosen rate that is the largest or smallest of those tried; the "
            "fastest rate may lie outside the grid."
        ],
    )


# --- the figure ----------------------------------------------------------------------


def _seed_curve(sd: StudyData, curves: dict, cell_id: str) -> pd.DataFrame:
    """One cell's line: its trailing-epoch means (progress points), else its epoch means (history)."""
    metric = sd.target["metric"]
    curve = curves.get(cell_id)
    if curve is None or not len(curve):
        curve = sd.history.loc[sd.history["cell_id"] == cell_id, ["epoch", metric]]
    return curve[["epoch", metric]].dropna().sort_values("epoch")


def figure1(sd: StudyData, chosen: pd.DataFrame, ratios: dict, curves: dict, cells: pd.DataFrame) -> Figure:
    """Training error vs epochs at each activation's chosen lr: one panel per setup, shared axes.

    One line per seed, of the statistic the epochs to the target are measured on (`curves`:
    `trailing_curves`; epoch means where a cell has no progress points), so each seed's marker
    lies on its own line; a censored seed's line ends in a triangle. Each panel's legend carries the
    chosen learning rates, the epochs to the target and the ratio beside the paper's; matplotlib
    places it where it covers the fewest data points.
    """
    metric, target = sd.target["metric"], sd.target["value"]
    setups = [s for s in sd.levels.get("setup", []) if s in set(chosen["setup"])] or list(
        dict.fromkeys(chosen["setup"])
    )
    fig = Figure(figsize=(5.6 * len(setups) + 0.6, 5.0), layout="constrained")
    axes = fig.subplots(1, len(setups), sharex=True, sharey=True, squeeze=False)[0]
    paper = SPEEDUP
    colors = plot.level_colors(sd, [ACTIVATION])
    by_id = cells.set_index("cell_id")
    top, last = target, 1.0
    for ax, setup in zip(axes, setups):
        rows = chosen[chosen["setup"] == setup]
        handles, any_cut = [], False
        ax.axhline(target, color="0.35", linestyle=":", linewidth=1.2, zorder=1)
        ax.text(
            0.01,
            target,
            f" {target:g}%",
            transform=ax.get_yaxis_transform(),
            va="bottom",
            ha="left",
            fontsize=10,
            color="0.3",
        )
        for _, r in rows.iterrows():
            act = r[ACTIVATION]
            color = colors[(ACTIVATION, act)]
            dash = "-" if act == FAST else "--" if act == SLOW else ":"
            ids = [c for c in r["cell_ids"].split(",") if c in by_id.index]
            drawn = 0
            for cid in sorted(ids, key=lambda c: by_id.loc[c, "seed"]):
                curve = _seed_curve(sd, curves, cid)
                if not len(curve):
                    continue
                drawn += 1
                x, y = curve["epoch"].to_numpy(float), curve[metric].to_numpy(float)
                ax.plot(x, y, color=color, linestyle=dash, linewidth=2 if len(ids) == 1 else 1.4, alpha=0.9)
                top, last = max(top, float(y.max())), max(last, float(x.max()))
                c = by_id.loc[cid]
                if pd.notna(c["epochs_to_target"]):
                    # on the line: the crossing is interpolated along it (progress points), or is one of
                    # its points (epoch means)
                    e = float(c["epochs_to_target"])
                    ax.plot([e], [float(np.interp(e, x, y))], "o", ms=7, color=color, mec="black", zorder=5)
                elif c["censored"]:
                    any_cut = True
                    ax.plot([x[-1]], [y[-1]], ">", ms=8, color=color, mec="black", zorder=5)
            if r["reached"]:
                ax.annotate(
                    f"{r['epochs_mean']:.3g}",
                    (r["epochs_mean"], target),
                    # ReLU's number left of its point, tanh's right: close points never overprint.
                    xytext=(-2, -17) if act == FAST else (2, -17),
                    textcoords="offset points",
                    ha="right" if act == FAST else "left",
                    fontsize=10,
                    color=color,
                    fontweight="bold",
                )
                what = f"{target:g}% at epoch {r['epochs_mean']:.3g}" + (
                    f" (mean of {r['n']} seeds)" if r["n"] > 1 else ""
                )
            elif r["censored"]:
                what = f"{r['censored']} of {r['n']} seed{'s' * (r['n'] != 1)} stopped before {target:g}%"
            else:
                what = reached_text(r, sd)
            if not drawn:
                what += " (no curve: history missing)"
            handles.append(
                Line2D([], [], color=color, linestyle=dash, linewidth=2, label=f"{act}, lr {r['lr']}: {what}")
            )
        ratio = ratios.get(setup)
        extra = []
        cut = int(rows["censored"].sum())
        if ratio is not None and ratio.kind == "none" and cut:
            extra.append(f"no ratio: {cut} run{'s' * (cut != 1)} stopped before the target")
        elif ratio is not None:
            extra.append(
                ratio.text.split(" (lower bound")[0] + (" (lower bound)" if ratio.kind == "lower bound" else "")
            )
        if paper:
            extra.append(f"paper: ReLU {paper.quote.split('ReLU ')[-1]}")
        handles += [Line2D([], [], linestyle="none", label=t) for t in extra]
        if any_cut:
            handles.append(
                Line2D(
                    [], [], linestyle="none", marker=">", color="0.6", mec="black", label="stopped before the target"
                )
            )
        ax.legend(handles=handles, loc="best", fontsize=9.5, handlelength=2.2)
        title = f"setup = {setup}" if setup else (plot.unique(sd, "cfg_model") or sd.study)
        if ratio is not None and ratio.kind != "none":
            title += f": {ratio.text.split(' (')[0]}" + (" (lower bound)" if ratio.kind == "lower bound" else "")
        ax.set_title(title)
        ax.set_xlabel("epochs")
        ax.set_ylabel(f"{target_label(sd).split('% ', 1)[-1]} (%)")
    axes[0].set_ylim(0, min(100.0, top * 1.08 + 2))
    plot.epoch_axis(axes[0], last)
    axes[0].set_xlim(right=last + max(0.5, 0.07 * last))  # room for a number right of the last point
    model = plot.unique(sd, "cfg_model")
    fig.suptitle(
        f"Figure 1 re-measured: {model or 'the four-layer net'}, training error vs epochs (ReLU solid, tanh dashed)"
    )
    line = (
        "One line per seed: the running training error averaged over the trailing epoch (ten progress "
        "windows), every 1/10 epoch from the end of epoch 1; dots: where a seed's line first reaches "
        f"{target:g}%; numbers: the mean over seeds."
        if curves
        else f"One line per seed: the training error averaged over each epoch; dots: the first epoch at or below "
        f"{target:g}%; numbers: the mean over seeds."
    )
    plot.note(
        fig,
        [
            line,
            f"Each activation at the learning rate that reaches {target_label(sd)} in the fewest epochs "
            f"({sd.profile} profile; {plot.unique(sd, 'device_name') or 'device unknown'}, "
            f"{run_mode(sd) or 'mode not recorded'}; data: {plot.unique(sd, 'data_source') or 'unknown'}).",
        ],
    )
    return fig
