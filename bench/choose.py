"""Choices made from results, on validation data only: each arm's learning rate.

Both the sweep (which runs a two-stage profile's confirming seeds at the chosen rates)
and the report (which compares each arm at its own rate) import this module, so the two
cannot choose differently. It reads one column, the validation error, and nothing of
the test set: a choice made on test error would make the test error a selected number.

Torch-free: plain pandas over the rows of runs.csv.
"""

from __future__ import annotations

import math

import pandas as pd

from bench.train.result import FINISHED, OK

# The run's lowest validation error over its epochs: the same epoch the best-epoch rule picks.
CHOICE_METRIC = "best_val_top1_err_pct"
LR = "cfg_lr"  # the learning rate a cell ran at, as runs.csv records it


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
