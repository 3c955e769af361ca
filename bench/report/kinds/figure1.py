"""Figure 1 of the paper, a kind of study: epochs to a training-error target, ReLU vs tanh.

Applies to a study with a target (`target_metric` column, or the study file's
target) and an `activation` factor, e.g. ablations/figure1.toml. Writes the figure
`figure1` (training error vs epochs at each activation's fastest learning rate,
one panel per setup) and the tables `figure1` and `figure1_lr_grid`.

Per setup (a `setup` factor, if any) and activation, the learning rate is the
one of the `lr` factor that trains fastest, as the paper chose its own, judged
on training error (what the paper's Figure 1 plots), never on test error:

1. among the learning rates at which every seed reached the target, the fewest
   epochs to reach it (mean over seeds); ties go to the lower mean final
   running training error, then to the lower learning rate;
2. if none reached it, the lowest mean final running training error (a learning
   rate whose cell diverged comes last), reported as 'did not reach 25% within
   N epochs'.

The rule judges the profile's seeds. A two-stage profile (`confirm_seeds`)
then runs more seeds at the chosen rates only (`bench.sweep.runner.run_study` applies
this same rule to the first stage); they count in the chosen rate's statistics and the
claim, not in the choice.

A chosen rate that is the largest or smallest of its grid is flagged (`edge`):
the fastest rate may lie outside the grid, and report.md says so.

"Epochs to 25%" is the fractional epoch where the running training error, logged
ten times per epoch, first falls to the target, interpolated between log points
(results swept before progress points: the first epoch whose epoch-averaged
training error is at or below it). The speed-up in the figure and its table is
tanh epochs / ReLU epochs (means over seeds). Nothing is extrapolated: where tanh
never reached the target, the ratio is given only as a lower bound, labelled so,
counting each seed that did not reach it as reaching it one epoch after its last.
The paper's claim is judged in the claims table (`claims.assess_speedup`: paired
over seeds, the geometric mean ratio with its 95% interval).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from bench.report import format as fmt
from bench.report import plot
from bench.report.claims import CLAIMS, assess_speedup, by_seed, claims_for
from bench.report.load import (
    CLEAN_TRAIN_EPOCH,
    RUNNING_TRAIN,
    RUNNING_TRAIN_EPOCH,
    StudyData,
    run_mode,
)
from bench.report.markdown import Section
from bench.report.output import Outcome, Output
from bench.report.plot import CURVE_STATUSES
from bench.report.stats import summarize
from bench.train.result import DIVERGED

log = logging.getLogger(__name__)

WHAT = "Figure 1"
FIGURES, TABLES = ("figure1",), ("figure1", "figure1_lr_grid")
FAST, SLOW = "relu", "tanh"  # the paper's pair: ratio = SLOW epochs / FAST epochs


def applies(sd: StudyData) -> bool:
    return sd.target is not None and "activation" in sd.factors and sd.target["metric"] in sd.history.columns


def build(out: Output, outcome: Outcome) -> None:
    sd = out.sd
    grid = lr_grid(sd)
    if not len(grid):
        sd.notes.warn("no finished cell for Figure 1")
        return
    chosen = choose(grid, lr_grid(sd, tuning=True))
    grid = mark_chosen(grid, chosen)
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
    warnings = edge_warnings(chosen)
    for line in warnings:
        log.warning("%s: %s", sd.label, line)
    s.text += [f"**Warning:** {line}." for line in warnings]
    out.figure(
        out.guarded("Figure 1", figure1, sd, chosen, ratios),
        "figure1",
        "Training error vs epochs at each activation's fastest learning rate; dotted line: the target; "
        "dots: the epoch each activation first reaches it.",
        s,
    )
    out.table(figure1_table(sd, chosen, ratios), chosen, s)
    out.table(lr_grid_table(sd, grid), grid, s)
    outcome.sections.append(s)
    outcome.ratios = ratios
    outcome.claims += speedup_claims(cell_epochs(sd), chosen, ratios)


def target_label(sd: StudyData) -> str:
    what = {
        RUNNING_TRAIN_EPOCH: "training error",
        CLEAN_TRAIN_EPOCH: "clean training error",
        "test_top1_err_pct": "test top-1 error",
    }
    return f"{sd.target['value']:g}% {what.get(sd.target['metric'], sd.target['metric'])}"


def _lr(frame: pd.DataFrame, sd: StudyData) -> pd.Series:
    if "lr" in sd.factors:
        return frame["lr"].astype(str)
    return sd.column("cfg_lr", frame, "the learning rate of each cell").astype(str)


def cell_epochs(sd: StudyData) -> pd.DataFrame:
    """Per cell: epochs to the target (NaN = not reached), epochs run, final train error, status."""
    metric, value = sd.target["metric"], sd.target["value"]
    cells = sd.runs[sd.runs["status"].isin(CURVE_STATUSES)].copy()
    from_history = {}
    for cid, h in sd.history.groupby("cell_id"):
        h = h.sort_values("epoch")
        hit = h.loc[h[metric] <= value, "epoch"] if metric in h else pd.Series(dtype=float)
        from_history[cid] = (float(hit.iloc[0]) if len(hit) else math.nan, float(h["epoch"].max()))
    same_target = "epochs_to_target" in cells and "target_metric" in cells and (cells["target_metric"] == metric).all()
    epochs, run = [], []
    for _, c in cells.iterrows():
        hist = from_history.get(c["cell_id"])
        if same_target:
            epochs.append(float(c["epochs_to_target"]) if pd.notna(c["epochs_to_target"]) else math.nan)
        else:
            epochs.append(hist[0] if hist else math.nan)
        ran = c.get("epochs_run")
        run.append(float(ran) if pd.notna(ran) else (hist[1] if hist else math.nan))
        if hist is None and not same_target:
            sd.notes.warn(f"cell {c['cell_id']} has no history rows; its epochs to {target_label(sd)} are unknown")
    cells["epochs_to_target"] = epochs
    cells["epochs_run"] = run
    cells["lr_level"] = _lr(cells, sd)
    cells["setup_level"] = cells["setup"].astype(str) if "setup" in cells else ""
    cells["final_train"] = sd.column(RUNNING_TRAIN, cells, "training error during the last epoch").astype(float)
    return cells


def lr_grid(sd: StudyData, tuning: bool = False) -> pd.DataFrame:
    """One row per (setup, activation, lr): seeds, how many reached the target, epochs to it.

    tuning: without the profile's `confirm_seeds`, which ran only the chosen rates: the cells a
    rate is chosen on.
    """
    cells = cell_epochs(sd)
    if tuning:
        cells = cells[~cells["seed"].isin(sd.confirm_seeds)]
    rows = []
    for (setup, act, lr), g in cells.groupby(["setup_level", "activation", "lr_level"], sort=False):
        reached = g["epochs_to_target"].notna()
        ep = summarize(g["epochs_to_target"]) if reached.all() else summarize([])
        # a lower bound on the mean: a seed that never reached counts as reaching one epoch after its last
        bound = (
            (g["epochs_to_target"].where(reached, g["epochs_run"] + 1)).mean()
            if not (g["status"] == DIVERGED).any()
            else math.inf
        )
        rows.append(
            {
                "setup": setup,
                "activation": act,
                "lr": lr,
                "n": len(g),
                "reached": int(reached.sum()),
                "epochs_mean": ep.mean,
                "epochs_sd": ep.sd,
                "epochs_per_seed": ", ".join("–" if math.isnan(e) else f"{e:g}" for e in g["epochs_to_target"]),
                "epochs_lower_bound": bound,
                "epochs_run": float(g["epochs_run"].max()),
                "final_train_err_mean": float(g["final_train"].mean()),
                "diverged": int((g["status"] == DIVERGED).sum()),
                "cell_ids": ",".join(g["cell_id"]),
            }
        )
    grid = pd.DataFrame(rows)
    if len(grid):
        order = {f: {lv: i for i, lv in enumerate(sd.levels.get(f, []))} for f in ("setup", "activation", "lr")}
        grid = grid.sort_values(
            ["setup", "activation", "lr"], key=lambda s: s.map(lambda v: order.get(s.name, {}).get(v, _as_float(v)))
        ).reset_index(drop=True)
    return grid


def _as_float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.inf


def _edge(lr: float, tried: pd.Series) -> str:
    """'only' / 'largest' / 'smallest' where `lr` is at an edge of the rates tried, else ''."""
    tried = tried[tried.map(math.isfinite)]
    if len(tried) < 2:
        return "only"
    return "largest" if lr >= tried.max() else "smallest" if lr <= tried.min() else ""


def _fastest(g: pd.DataFrame) -> tuple[str, bool]:
    """The rate of one (setup, activation) grid that the module docstring's rule picks, and
    whether every seed at it reached the target."""
    g = g.assign(lr_value=g["lr"].map(_as_float))
    full = g[(g["reached"] == g["n"]) & (g["n"] > 0)]
    if len(full):
        return full.sort_values(["epochs_mean", "final_train_err_mean", "lr_value"]).iloc[0]["lr"], True
    return g.assign(div=g["diverged"] > 0).sort_values(["div", "final_train_err_mean", "lr_value"]).iloc[0]["lr"], False


def choose(grid: pd.DataFrame, tuning: pd.DataFrame | None = None) -> pd.DataFrame:
    """The chosen learning rate per (setup, activation); see the module docstring.

    tuning: `lr_grid(sd, tuning=True)`, without the confirming seeds. The rate is chosen on it;
    its row (every seed, the confirming ones too) comes from `grid`.
    """
    rows = []
    for (setup, act), g in grid.groupby(["setup", "activation"], sort=False):
        g = g.assign(lr_value=g["lr"].map(_as_float))
        on = g if tuning is None else tuning[(tuning["setup"] == setup) & (tuning["activation"] == act)]
        lr, reached = _fastest(on if len(on) else g)
        best = g[g["lr"] == lr].iloc[0]
        reached = reached and best["reached"] == best["n"]
        rows.append(
            {
                "setup": setup,
                "activation": act,
                "lr": best["lr"],
                "lrs_tried": ", ".join(g.sort_values("lr_value")["lr"]),
                "edge": _edge(best["lr_value"], g["lr_value"]),
                "n": int(best["n"]),
                "reached": bool(reached),
                "epochs_mean": best["epochs_mean"],
                "epochs_sd": best["epochs_sd"],
                "epochs_per_seed": best["epochs_per_seed"],
                # unreached: the bound must hold for every rate tried, so the smallest one's
                "epochs_lower_bound": best["epochs_lower_bound"] if reached else g["epochs_lower_bound"].min(),
                "epochs_run": best["epochs_run"],
                "final_train_err_mean": best["final_train_err_mean"],
                "diverged": int(best["diverged"]),
                "cell_ids": best["cell_ids"],
            }
        )
    return pd.DataFrame(rows)


def mark_chosen(grid: pd.DataFrame, chosen: pd.DataFrame) -> pd.DataFrame:
    """`grid` with `chosen` (the rate picked for its setup and activation) and `edge` (of a chosen rate)."""
    picked = {(r["setup"], r["activation"]): r for _, r in chosen.iterrows()}
    is_chosen = [picked[(r["setup"], r["activation"])]["lr"] == r["lr"] for _, r in grid.iterrows()]
    edge = [picked[(r["setup"], r["activation"])]["edge"] if c else "" for c, (_, r) in zip(is_chosen, grid.iterrows())]
    return grid.assign(chosen=is_chosen, edge=edge)


def edge_warnings(chosen: pd.DataFrame) -> list[str]:
    """One line per chosen rate at an edge of its grid."""
    out = []
    for _, r in chosen[chosen["edge"] != ""].iterrows():
        where = ", ".join(filter(None, [f"setup {r['setup']}" if r["setup"] else "", r["activation"]]))
        what = (
            "the only rate tried: the fastest rate may lie elsewhere"
            if r["edge"] == "only"
            else f"the {r['edge']} tried ({r['lrs_tried']}): the fastest rate may lie outside the grid"
        )
        out.append(f"{where}: lr {r['lr']} is {what}")
    return out


def speedup_claims(cells: pd.DataFrame, chosen: pd.DataFrame, ratios: dict | None = None) -> list[dict]:
    """The Figure 1 claim per setup (`claims.assess_speedup`), as claims-table rows, from the per-seed
    epochs to the target of the chosen learning rates' cells; a lower bound from `ratios` (`speedups`)
    goes into the note of a setup whose tanh cells never reached the target."""
    rows = []
    for setup, g in chosen.groupby("setup", sort=False):
        by = {r["activation"]: r for _, r in g.iterrows()}
        if FAST not in by or SLOW not in by:
            continue

        epochs = {}
        for act in (FAST, SLOW):
            mine = cells[cells["cell_id"].isin(by[act]["cell_ids"].split(","))]
            epochs[act] = by_seed(mine, mine["epochs_to_target"])
        row = assess_speedup(epochs[FAST], epochs[SLOW]).row()
        bound = (ratios or {}).get(setup)
        if bound is not None and bound.kind == "lower bound" and not row["n"]:
            row["note"] = f"{row['note']}; ratio of mean epochs {bound.text.split(' (lower bound')[0]} (a lower bound)"
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
        by = {r["activation"]: r for _, r in g.iterrows()}
        if FAST not in by or SLOW not in by:
            out[setup] = Speedup(setup, math.nan, "none", f"no ratio: needs both {FAST} and {SLOW}")
            continue
        fast, slow = by[FAST], by[SLOW]
        if fast["reached"] and slow["reached"]:
            ratio = slow["epochs_mean"] / fast["epochs_mean"]
            out[setup] = Speedup(setup, ratio, "measured", f"{SLOW}/{FAST} = {ratio:.1f}×")
        elif fast["reached"] and math.isfinite(slow["epochs_lower_bound"]):
            ratio = slow["epochs_lower_bound"] / fast["epochs_mean"]
            out[setup] = Speedup(
                setup,
                ratio,
                "lower bound",
                f"{SLOW}/{FAST} ≥ {math.floor(ratio * 10) / 10:.1f}× (lower bound: {SLOW} never reached the target)",
            )
        else:
            who = " and ".join(a for a, r in ((FAST, fast), (SLOW, slow)) if not r["reached"])
            out[setup] = Speedup(setup, math.nan, "none", f"no ratio: {who} did not reach the target")
    return out


def reached_text(row, sd: StudyData) -> str:
    """'3 epochs' / '3.3 ± 0.6 epochs (3, 3, 4)' / 'did not reach 25% within 14 epochs'."""
    if not row["reached"]:
        n = row["epochs_run"]
        text = f"did not reach {sd.target['value']:g}% within {n:.0f} epoch{'' if n == 1 else 's'}"
        return text + (" (diverged)" if row["diverged"] else "")
    if row["n"] > 1:
        return f"{row['epochs_mean']:.3g} ± {row['epochs_sd']:.2g} epochs (seeds: {row['epochs_per_seed']})"
    return f"{row['epochs_mean']:.3g} epochs"


def figure1_table(sd: StudyData, chosen: pd.DataFrame, ratios: dict[str, Speedup]) -> fmt.Table:
    paper = claims_for("activation", SLOW, "speedup")
    paper_text = f"ReLU {paper[0].quote.split('ReLU ')[-1]}" if paper else ""
    columns = (["setup"] if chosen["setup"].ne("").any() else []) + [
        "activation",
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
                r["activation"],
                r["lr"] + (f" ({r['edge']} tried)" if r["edge"] else ""),
                r["lrs_tried"],
                str(r["n"]),
                reached_text(r, sd),
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
        "reached the target as reaching it one epoch after its last.",
        "The speed-up here is the ratio of the mean epochs; the claims table judges the paper's claim from "
        "the paired per-seed ratios (geometric mean, 95% interval).",
    ]
    return fmt.Table(
        "figure1", f"{sd.study} ({sd.profile}): epochs to {target_label(sd)}, ReLU vs tanh", columns, rows, notes
    )


def _epochs_note(sd: StudyData) -> str:
    if "steps_to_target" in sd.runs:  # swept with progress points (ten per epoch)
        return (
            "Epochs to the target: where the running training error (over the steps since the last of "
            "ten log points per epoch) first falls to it, interpolated linearly between log points."
        )
    return "Epochs to the target: the first epoch whose training error (averaged over the epoch) is at or below it."


def lr_grid_table(sd: StudyData, grid: pd.DataFrame) -> fmt.Table:
    has_setup = grid["setup"].ne("").any()
    columns = (["setup"] if has_setup else []) + [
        "activation",
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
            r["activation"],
            r["lr"],
            f"{r['reached']} / {r['n']}" + (f" ({r['diverged']} diverged)" if r["diverged"] else ""),
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
            "'–': that seed did not reach the target. edge: a chosen rate that is the largest or smallest "
            "of those tried; the fastest rate may lie outside the grid."
        ],
    )


# --- the figure ----------------------------------------------------------------------


def figure1(sd: StudyData, chosen: pd.DataFrame, ratios: dict) -> Figure:
    """Training error vs epochs at each activation's chosen lr: one panel per setup, shared axes.

    Each panel's legend carries the chosen learning rates, the epochs to the target and the
    ratio beside the paper's; matplotlib places it where it covers the fewest data points.
    """
    metric, target = sd.target["metric"], sd.target["value"]
    setups = [s for s in sd.levels.get("setup", []) if s in set(chosen["setup"])] or list(
        dict.fromkeys(chosen["setup"])
    )
    fig = Figure(figsize=(5.6 * len(setups) + 0.6, 5.0), layout="constrained")
    axes = fig.subplots(1, len(setups), sharex=True, sharey=True, squeeze=False)[0]
    paper = next((c for c in CLAIMS if c.kind == "speedup"), None)
    seeds = sd.history["seed"].nunique() if len(sd.history) else 0
    colors = plot.level_colors(sd, ["activation"])
    top, last = target, 1.0
    for ax, setup in zip(axes, setups):
        rows = chosen[chosen["setup"] == setup]
        handles = []
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
            act = r["activation"]
            color = colors[("activation", act)]
            dash = "-" if act == FAST else "--" if act == SLOW else ":"
            h = plot.curves(sd, r["cell_ids"].split(","))
            plot.line(ax, h, metric, color, dash)
            if len(h):
                top = max(top, float(h[metric].max()))
                last = max(last, float(h["epoch"].max()))
            if r["reached"]:
                ax.plot([r["epochs_mean"]], [target], marker="o", ms=9, color=color, mec="black", zorder=5)
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
            else:
                what = reached_text(r, sd)
            if not len(h):
                what += " (no curve: history missing)"
            handles.append(
                Line2D([], [], color=color, linestyle=dash, linewidth=2, label=f"{act}, lr {r['lr']}: {what}")
            )
        ratio = ratios.get(setup)
        extra = []
        if ratio is not None:
            extra.append(
                ratio.text.split(" (lower bound")[0] + (" (lower bound)" if ratio.kind == "lower bound" else "")
            )
        if paper:
            extra.append(f"paper: ReLU {paper.quote.split('ReLU ')[-1]}")
        handles += [Line2D([], [], linestyle="none", label=t) for t in extra]
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
    plot.note(
        fig,
        [
            f"{seeds} seeds: line = mean, band = range over seeds." if seeds > 1 else "One seed: no band.",
            f"Each activation at the learning rate that reaches {target_label(sd)} in the fewest epochs "
            f"({sd.profile} profile; {plot.unique(sd, 'device_name') or 'device unknown'}, "
            f"{run_mode(sd) or 'mode not recorded'}; data: {plot.unique(sd, 'data_source') or 'unknown'}).",
        ],
    )
    return fig
