"""Choices made from results, on training and validation data only: the learning rate of each arm.

Two rules, one per kind of two-stage profile, each imported by both the sweep (which runs the
profile's confirming seeds at the chosen rates, `bench.sweep.choice`) and the report (which
shows and judges the cells at them), so the two cannot choose differently:

- `choose_lr` (a `tune_lr` profile): each arm's rate is the one of its grid with the lowest
  validation error. It reads one column, the validation error.
- `choose_fastest` (a study with `fastest_lr_per`, e.g. Figure 1): per combination of the
  factors named there, the level of the `lr` factor that reaches the study's target in the
  fewest epochs (the rule is spelled out in its docstring). It reads the target's metric (the
  running training error for Figure 1) and the final running training error.

Neither reads the test set: a choice made on test error would make the test error a
selected number. `bench.studies` refuses `fastest_lr_per` with a test-metric target, so no
sweep chooses on one; the report's Figure 1 of a study that sets such a target without it
chooses on the target it is given, and says so in a warning.

Torch-free: plain pandas over the rows of runs.csv, history.csv and progress.csv.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd

from bench.stats import summarize
from bench.train.result import DIVERGED, FINISHED, OK
from bench.train.target import crossing, trailing_epoch_mean

log = logging.getLogger(__name__)

# The run's lowest validation error over its epochs: the same epoch the best-epoch rule picks.
CHOICE_METRIC = "best_val_top1_err_pct"
LR = "cfg_lr"  # the learning rate a cell ran at, as runs.csv records it
# Training error during the epoch, through augmentation and dropout, in % (per epoch and progress
# point; the last epoch's): what Figure 1 plots and its rule judges.
RUNNING_TRAIN_EPOCH, RUNNING_TRAIN = "train_running_err_pct", "final_train_running_err_pct"
# How a target's metric reads in a sentence ("25% training error").
TARGET_WORDS = {
    RUNNING_TRAIN_EPOCH: "training error",
    "train_clean_top1_err_pct": "clean training error",
    "test_top1_err_pct": "test top-1 error",
}

Warn = Callable[[str], None]  # where a rule's missing-data lines go (the report's notes, or the log)


def arm_key(levels: dict, factors: list[str]) -> tuple[str, ...]:
    """One arm (a combination of factor levels) as a hashable key, in the study's factor order."""
    return tuple(str(levels[f]) for f in factors)


def choose_lr(runs: pd.DataFrame, factors: list[str], seeds: list[int], metric: str = CHOICE_METRIC) -> pd.DataFrame:
    """Each arm's learning rate: the rate of its grid with the lowest mean `metric` over `seeds`.

    `runs`: rows of runs.csv with the factor columns, `seed`, `status`, `cfg_lr` and `metric`.
    Only finished cells of `seeds` count; a diverged cell counts as the worst possible error
    (a rate that diverges is a rate that does not train). Ties go to the smaller rate. One row
    per arm: the factor levels, `lr`, `val_err` (the chosen rate's mean), `grid` (the rates
    tried, ascending), `n_seeds`, and `edge` ("lowest" / "highest" where the choice is at an
    end of the grid, so a better rate may lie beyond it; "" inside).
    """
    columns = [*factors, "lr", "val_err", "grid", "n_seeds", "edge"]
    if not len(runs) or LR not in runs or metric not in runs:
        return pd.DataFrame(columns=columns)
    rows = runs[runs["status"].isin(FINISHED) & runs["seed"].isin(list(seeds))].copy()
    err = pd.to_numeric(rows[metric], errors="coerce")
    rows["_err"] = err.where(rows["status"] == OK, math.inf).fillna(math.inf)
    rows["_lr"] = pd.to_numeric(rows[LR], errors="coerce")
    out = []
    for levels, arm in rows.groupby([rows[f].astype(str) for f in factors], sort=False):
        levels = levels if isinstance(levels, tuple) else (levels,)
        per_rate = arm.groupby("_lr")["_err"].agg(["mean", "count"]).sort_index()
        best = per_rate["mean"].idxmin()  # sorted ascending: the first minimum is the smaller rate
        grid = list(per_rate.index)
        edge = "" if len(grid) < 2 else "lowest" if best == grid[0] else "highest" if best == grid[-1] else ""
        out.append(
            [*levels, float(best), float(per_rate.loc[best, "mean"]), grid, int(per_rate.loc[best, "count"]), edge]
        )
    return pd.DataFrame(out, columns=columns)


def chosen_rates(choice: pd.DataFrame, factors: list[str]) -> dict[tuple[str, ...], float]:
    """`choose_lr`'s table as arm key -> learning rate."""
    return {arm_key(r, factors): float(r["lr"]) for _, r in choice.iterrows()}


def at_chosen_rates(runs: pd.DataFrame, choice: pd.DataFrame, factors: list[str]) -> pd.Series:
    """A mask of `runs`: the rows that ran at their arm's chosen rate."""
    rates = chosen_rates(choice, factors)
    lr = pd.to_numeric(runs[LR], errors="coerce") if LR in runs else pd.Series(math.nan, index=runs.index)
    chosen = [rates.get(arm_key(r, factors)) for _, r in runs[factors].iterrows()]
    return pd.Series([c is not None and math.isclose(c, v) for c, v in zip(chosen, lr)], index=runs.index)


# --- the fastest rate to a target (Figure 1) -------------------------------------------------


def target_text(target: dict) -> str:
    """'25% training error': the target a rate is judged on, in words."""
    return f"{target['value']:g}% {TARGET_WORDS.get(target['metric'], target['metric'])}"


def trailing_curves(progress: pd.DataFrame | None, runs: pd.DataFrame, metric: str, warn: Warn = log.warning) -> dict:
    """cell_id -> the trailing-epoch mean of `metric` at each progress point from the end of epoch 1
    (`bench.train.target.trailing_epoch_mean`); {} where there is no progress.csv or `metric` is not
    the running training error (an evaluated metric is logged per epoch only). `runs`: the cells whose
    missing points are worth a warning."""
    if metric != RUNNING_TRAIN_EPOCH or progress is None:
        return {}
    if not {"cell_id", "step", "epoch", metric} <= set(progress.columns):
        warn(f"progress.csv lacks cell_id, step, epoch or {metric}; epochs to the target from history.csv")
        return {}
    out = {}
    for cid, g in progress.groupby("cell_id", sort=False):
        points = g.sort_values("step")[["step", "epoch", metric]].to_dict("records")
        out[cid] = pd.DataFrame(trailing_epoch_mean(points, metric), columns=["step", "epoch", metric])
    trained = runs[runs["status"] == OK]
    if "epochs_run" in trained:
        trained = trained[pd.to_numeric(trained["epochs_run"], errors="coerce") > 0]
    if without := len(set(trained["cell_id"]) - set(out)):
        warn(
            f"{without} finished cell(s) have no rows in progress.csv; their epochs to the target are whole "
            "epochs from history.csv"
        )
    return out


def cell_epochs(
    runs: pd.DataFrame, history: pd.DataFrame, curves: dict, target: dict, warn: Warn = log.warning
) -> pd.DataFrame:
    """Per finished cell of `runs`: epochs to `target` (`epochs_to_target`, NaN = not reached), the
    epoch it must lie beyond where not reached (`epochs_bound`), whether the run was cut short before
    it (`censored`), `epochs_run`, and its final running training error (`final_train`).

    Epochs to the target: where a cell's curve (`curves`: `trailing_curves`) first falls to it,
    interpolated between its points; without a curve, an evaluated metric's `epochs_to_target` column
    where runs.csv judged the same target, else the first epoch of `history` at or below it."""
    metric, value = target["metric"], target["value"]
    cells = runs[runs["status"].isin(FINISHED)].copy()  # a diverged cell's curve up to the divergence counts
    from_history = {}
    for cid, h in history.groupby("cell_id") if "cell_id" in history else ():
        h = h.sort_values("epoch")
        hit = h.loc[h[metric] <= value, "epoch"] if metric in h else pd.Series(dtype=float)
        from_history[cid] = (float(hit.iloc[0]) if len(hit) else math.nan, float(h["epoch"].max()))
    # An evaluated metric's column (interpolated between epochs by the runner) is trusted where the
    # target is the same; the running error is recomputed, since older rows judged one window.
    same_target = (
        metric != RUNNING_TRAIN_EPOCH
        and "epochs_to_target" in cells
        and "target_metric" in cells
        and (cells["target_metric"] == metric).all()
    )
    epochs, run, bound, censored = [], [], [], []
    for _, c in cells.iterrows():
        hist = from_history.get(c["cell_id"])
        curve = curves.get(c["cell_id"])
        ran = c.get("epochs_run")
        ran = float(ran) if pd.notna(ran) else (hist[1] if hist else math.nan)
        last = ran + 1  # epochs only: the next epoch is the first the target can be seen at
        if curve is not None and len(curve):
            e = crossing(curve.to_dict("records"), metric, value, at="epoch")
            e = math.nan if e is None else e
            last = float(curve["epoch"].max())  # the interpolated crossing lies beyond the last point
        elif same_target:
            e = float(c["epochs_to_target"]) if pd.notna(c["epochs_to_target"]) else math.nan
        else:
            e = hist[0] if hist else math.nan
            if hist is None:
                warn(f"cell {c['cell_id']} has no history rows; its epochs to {target_text(target)} are unknown")
        budget = c.get("cfg_epochs")
        epochs.append(e)
        run.append(ran)
        bound.append(last if math.isnan(e) else math.nan)
        # ended short of its budget without diverging, before the statistic crossed: cut short by a stopping rule
        censored.append(
            bool(
                math.isnan(e) and c["status"] == OK and pd.notna(budget) and math.isfinite(ran) and ran < float(budget)
            )
        )
    cells["epochs_to_target"] = epochs
    cells["epochs_bound"] = bound
    cells["censored"] = censored
    cells["epochs_run"] = run
    if RUNNING_TRAIN in cells:
        cells["final_train"] = cells[RUNNING_TRAIN].astype(float)
    else:
        warn(f"column {RUNNING_TRAIN!r} missing from runs.csv (training error during the last epoch); shown as missing")
        cells["final_train"] = math.nan
    return cells


def _per_seed(g: pd.DataFrame) -> str:
    """'6.3, > 6, –': a seed's epochs to the target; '> N' censored at epoch N; '–' not reached."""
    return ", ".join(
        f"> {b:g}" if cens else "–" if math.isnan(e) else f"{e:g}"
        for e, b, cens in zip(g["epochs_to_target"], g["epochs_bound"], g["censored"])
    )


def rate_grid(cells: pd.DataFrame, by: list[str], order: dict[str, list] | None = None) -> pd.DataFrame:
    """One row per combination of `by` and learning rate (`lr`, the level as text): seeds, how many
    reached the target, how many were censored, epochs to it; in the levels' `order` (factor ->
    levels; a level it lacks sorts by its value). `cells`: `cell_epochs`, with `by` and `lr` columns."""
    rows = []
    for key, g in cells.groupby([*by, "lr"], sort=False):
        reached = g["epochs_to_target"].notna()
        ep = summarize(g["epochs_to_target"]) if reached.all() else summarize([])
        # a lower bound on the mean: a seed that never reached counts as reaching at its bound
        bound = (
            (g["epochs_to_target"].where(reached, g["epochs_bound"])).mean()
            if not (g["status"] == DIVERGED).any()
            else math.inf
        )
        rows.append(
            {
                **dict(zip([*by, "lr"], key)),
                "n": len(g),
                "reached": int(reached.sum()),
                "censored": int(g["censored"].sum()),
                "censored_at": ", ".join(f"{e:g}" for e in g.loc[g["censored"], "epochs_run"]),
                "epochs_mean": ep.mean,
                "epochs_sd": ep.sd,
                "epochs_per_seed": _per_seed(g),
                "epochs_lower_bound": bound,
                "epochs_run": float(g["epochs_run"].max()),
                "final_train_err_mean": float(g["final_train"].mean()),
                "diverged": int((g["status"] == DIVERGED).sum()),
                "cell_ids": ",".join(g["cell_id"]),
            }
        )
    grid = pd.DataFrame(rows)
    if len(grid):
        rank = {f: {lv: i for i, lv in enumerate(levels)} for f, levels in (order or {}).items()}
        grid = grid.sort_values(
            [*by, "lr"], key=lambda s: s.map(lambda v: rank.get(s.name, {}).get(v, rate_value(v)))
        ).reset_index(drop=True)
    return grid


def rate_value(text: str) -> float:
    """A level as a number, for sorting rates; inf for a level that is not one."""
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
    """The rate of one grid (one combination of `by`) that `choose_fastest`'s rule picks, and
    whether every seed at it reached the target."""
    g = g.assign(lr_value=g["lr"].map(rate_value))
    full = g[(g["reached"] == g["n"]) & (g["n"] > 0)]
    if len(full):
        return full.sort_values(["epochs_mean", "final_train_err_mean", "lr_value"]).iloc[0]["lr"], True
    return g.assign(div=g["diverged"] > 0).sort_values(["div", "final_train_err_mean", "lr_value"]).iloc[0]["lr"], False


def _provisional(on: pd.DataFrame, lr: str, reached: bool) -> str:
    """Why the rate picked from `on` (one grid, the seeds it is chosen on) may not be the fastest:
    another rate has seeds whose runs were cut short before the target (censored); '' if none."""
    cut = on[(on["censored"] > 0) & (on["lr"] != lr)]
    mean = on.loc[on["lr"] == lr, "epochs_mean"].iloc[0]
    if reached:  # a rival counts only if even its bound is below the chosen rate's mean
        cut = cut[cut["epochs_lower_bound"] < mean]
    if not len(cut):
        return ""
    rates = ", ".join(
        f"lr {r['lr']} ({r['censored']} of {r['n']} seed{'s' * (r['n'] != 1)} stopped at epoch {r['censored_at']})"
        for _, r in cut.iterrows()
    )
    if reached:
        return (
            f"provisional: {rates} may be faster; stopped before the trailing-epoch mean reached the target, "
            f"earlier than this rate's {mean:.3g} epochs"
        )
    return (
        f"provisional: no rate reached the target, and {rates} stopped before it: chosen on the final "
        "running training error of runs that ended at different epochs"
    )


def choose_from_grid(grid: pd.DataFrame, by: list[str], tuning: pd.DataFrame | None = None) -> pd.DataFrame:
    """The chosen learning rate per combination of `by` (`choose_fastest`'s rule) from `rate_grid`s.

    tuning: the grid of the seeds the rate is chosen on (without a two-stage profile's confirming
    seeds); the chosen rate's row (every seed, the confirming ones too) comes from `grid`.
    """
    rows = []
    for key, g in grid.groupby(by, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        g = g.assign(lr_value=g["lr"].map(rate_value))
        on = g
        if tuning is not None and len(tuning):
            mine = pd.Series(True, index=tuning.index)
            for f, level in zip(by, key):
                mine &= tuning[f] == level
            on = tuning[mine] if mine.any() else g
        lr, reached = _fastest(on)
        provisional = _provisional(on, lr, reached)
        best = g[g["lr"] == lr].iloc[0]
        reached = reached and best["reached"] == best["n"]
        rows.append(
            {
                **dict(zip(by, key)),
                "lr": best["lr"],
                "lrs_tried": ", ".join(g.sort_values("lr_value")["lr"]),
                "edge": _edge(best["lr_value"], g["lr_value"]),
                "n": int(best["n"]),
                "reached": bool(reached),
                "censored": int(best["censored"]),
                "epochs_mean": best["epochs_mean"],
                "epochs_sd": best["epochs_sd"],
                "epochs_per_seed": best["epochs_per_seed"],
                # unreached: the bound must hold for every rate tried, so the smallest one's
                "epochs_lower_bound": best["epochs_lower_bound"] if reached else g["epochs_lower_bound"].min(),
                "epochs_run": best["epochs_run"],
                "final_train_err_mean": best["final_train_err_mean"],
                "diverged": int(best["diverged"]),
                "provisional": provisional,
                "cell_ids": best["cell_ids"],
            }
        )
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class Fastest:
    """`choose_fastest`'s answer and what it was read from."""

    curves: dict  # cell_id -> its trailing-epoch means (`trailing_curves`)
    cells: pd.DataFrame  # per cell: epochs to the target, censored, ... (`cell_epochs`)
    grid: pd.DataFrame  # per combination of `by` and rate, over every seed (`rate_grid`)
    chosen: pd.DataFrame  # per combination of `by`: the chosen rate and its row of `grid`


def choose_fastest(
    runs: pd.DataFrame,
    history: pd.DataFrame,
    progress: pd.DataFrame | None,
    target: dict,
    by: list[str],
    *,
    confirm_seeds=(),
    order: dict[str, list] | None = None,
    warn: Warn = log.warning,
) -> Fastest:
    """Per combination of the factors `by`, the learning rate (`lr` column) that trains fastest to `target`.

    1. among the rates at which every seed reached the target, the fewest epochs to reach it (mean
       over seeds); ties go to the lower mean final running training error, then to the lower rate;
    2. if none reached it, the lowest mean final running training error (a rate whose cell diverged
       comes last).

    The rate is chosen on every seed but `confirm_seeds` (which a two-stage profile runs at the chosen
    rates only); a choice that a censored rate (a run stopped before the target) might beat carries
    the reason in `provisional`, and one at an end of its grid says which in `edge`. Epochs to the
    target: `cell_epochs`, on the running training error's trailing-epoch mean where progress points
    exist. `runs` need the factor columns `by`, `lr` (the rate as text), `seed`, `status` and `cell_id`.
    """
    curves = trailing_curves(progress, runs, target["metric"], warn)
    cells = cell_epochs(runs, history, curves, target, warn)
    grid = rate_grid(cells, by, order)
    if not len(grid):
        return Fastest(curves, cells, grid, pd.DataFrame())
    tuning = rate_grid(cells[~cells["seed"].isin(list(confirm_seeds))], by, order) if len(confirm_seeds) else None
    return Fastest(curves, cells, grid, choose_from_grid(grid, by, tuning))
