"""Per-configuration statistics over seeds, which every kind of study shares, and the table of every configuration.

`effects` is the numeric heart of the ablation and architecture reports: one row
per configuration of a one-at-a-time design (the baseline, then each factor's
other levels with every other factor at its baseline), with

* test top-1 / top-5 error (%) over the seeds whose cell finished `ok`: mean,
  sample sd, and the 95% t-interval mean ± t(0.975, n-1) sd / sqrt(n);
* the difference from the baseline (configuration - baseline, percentage
  points) with its 95% interval from `stats.compare`: paired over the seeds
  both have (a seed fixes the data order and initial weights of both cells),
  Welch's only where they share no seed; `diff_method` and `diff_n` say which
  and over how many; with fewer than two, no interval (NaN);
* the last-epoch running training error (during the epoch, through augmentation
  and dropout), the clean training error where recorded, and the gap test error
  minus clean training error over seeds (NaN without a clean column);
* params, MACs, throughput, and which cells failed.

`configurations` is the same statistics for every level combination in runs.csv
(`configurations_table`: the `cells` table of every report).
"""

from __future__ import annotations

import math

import pandas as pd

from bench.choose import RUNNING_TRAIN
from bench.flop_convention import FLOP_CONVENTION
from bench.report import format as fmt
from bench.report.claims import by_seed
from bench.report.load import CLEAN_TRAIN, StudyData
from bench.stats import PAIRED, WELCH, Difference, compare, summarize
from bench.train.result import OK

TOP1, TOP5 = "final_test_top1_err_pct", "final_test_top5_err_pct"
MEASURED_TRAIN, LOOP_TRAIN, MEASURED_INFER = "train_images_per_s", "median_train_images_per_s", "infer_images_per_s"
DIFF_NOTE = (
    "Δ = configuration − baseline, in percentage points, with its 95% interval: paired over the seeds "
    "both have (Student t, n − 1 degrees of freedom, on the per-seed differences), Welch's unpaired "
    "interval only where they share no seed; the method and n are given per row. Error intervals are "
    "95% t-intervals over seeds, mean ± t(0.975, n−1)·sd/√n."
)
METHOD_NAMES = {PAIRED: "paired", WELCH: "Welch"}


def config_label(factor: str | None, level: str | None) -> str:
    return "baseline" if factor is None else f"{factor} = {level}"


def throughput_sources(sd: StudyData) -> tuple[str, str, str | None]:
    """(training column, its description, inference column or None)."""
    if sd.has(MEASURED_TRAIN):
        train = (MEASURED_TRAIN, "model only, median of timed repeats")
    else:
        train = (LOOP_TRAIN, "training loop incl. data, median over epochs")
    return (*train, MEASURED_INFER if sd.has(MEASURED_INFER) else None)


def flop_convention(sd: StudyData) -> str:
    if "flop_convention" in sd.runs and sd.runs["flop_convention"].notna().any():
        return str(sd.runs["flop_convention"].dropna().iloc[0])
    return ""


def macs_header(sd: StudyData) -> str:
    known = FLOP_CONVENTION in flop_convention(sd)
    return f"MACs ({'conv + FC multiply-adds/image, forward' if known else 'see FLOP convention'})"


def flops_header(sd: StudyData) -> str:
    known = FLOP_CONVENTION in flop_convention(sd)
    return f"FLOPs ({'2 × MACs + elementwise ops/image, forward' if known else 'see FLOP convention'})"


def _failed(cells: pd.DataFrame) -> str:
    bad = cells[cells["status"] != OK]["status"].value_counts()
    return ", ".join(f"{status}×{k}" for status, k in bad.items())


def _value(sd: StudyData, cells: pd.DataFrame, column: str) -> float:
    """The mean of a per-cell quantity over the cells that have it (params are the same for every seed)."""
    values = sd.column(column, cells).dropna()
    return float(values.astype(float).mean()) if len(values) else math.nan


def finished(sd: StudyData, cells: pd.DataFrame) -> pd.DataFrame:
    """The cells whose final numbers count: status ok and a test error."""
    return cells[(cells["status"] == OK) & sd.column(TOP1, cells).notna()]


def gap_by_seed(sd: StudyData, ok: pd.DataFrame) -> dict:
    """seed -> test error minus clean training error (pp) of finished cells; {} without a clean column."""
    if not sd.has(CLEAN_TRAIN):
        return {}
    return by_seed(ok, ok[TOP1].astype(float) - ok[CLEAN_TRAIN].astype(float))


def config_stats(sd: StudyData, cells: pd.DataFrame) -> dict:
    ok = finished(sd, cells)
    top1 = summarize(ok[TOP1] if len(ok) else [])
    top5 = summarize(sd.column(TOP5, ok))
    running = summarize(sd.column(RUNNING_TRAIN, ok, "training error during the last epoch"))
    clean = summarize(ok[CLEAN_TRAIN] if sd.has(CLEAN_TRAIN) else [])
    gap = summarize(gap_by_seed(sd, ok).values())
    train_col, _, infer_col = throughput_sources(sd)
    return {
        "cells": len(cells),
        "n": top1.n,
        "seeds": ",".join(str(s) for s in sorted(ok["seed"].tolist())),
        "failed": _failed(cells),
        "top1_mean": top1.mean,
        "top1_sd": top1.sd,
        "top1_lo": top1.lo,
        "top1_hi": top1.hi,
        "top5_mean": top5.mean,
        "top5_sd": top5.sd,
        "top5_n": top5.n,
        "train_running_err_mean": running.mean,
        "train_clean_err_mean": clean.mean,
        "gap_mean": gap.mean,
        "gap_lo": gap.lo,
        "gap_hi": gap.hi,
        "gap_n": gap.n,
        "params": _value(sd, cells, "params_total"),
        "macs": _value(sd, cells, "macs"),
        "flops": _value(sd, cells, "flops"),
        "train_ips": _value(sd, ok, train_col),
        "infer_ips": _value(sd, ok, infer_col) if infer_col else math.nan,
    }


def top1_by_seed(sd: StudyData, cells: pd.DataFrame) -> dict:
    """seed -> final test top-1 error of the finished cells of one configuration."""
    ok = finished(sd, cells)
    return by_seed(ok, ok[TOP1]) if len(ok) else {}


def diff_columns(d: Difference | None) -> dict:
    """The `diff_*` columns of one row of `effects` from `stats.compare`'s result."""
    if d is None:
        return {
            "diff": math.nan,
            "diff_lo": math.nan,
            "diff_hi": math.nan,
            "diff_df": math.nan,
            "diff_method": "",
            "diff_n": 0,
            "base_n": 0,
        }
    return {
        "diff": d.diff,
        "diff_lo": d.lo,
        "diff_hi": d.hi,
        "diff_df": d.df,
        "diff_method": d.method,
        "diff_n": d.n,
        "base_n": d.n_a,
    }


def method_text(row) -> str:
    """'paired, 3 seeds' / 'Welch, 3 vs 2 seeds' / 'one seed: no interval' for a row of `effects`."""
    n, method = int(row["diff_n"]), row["diff_method"]
    if not method or math.isnan(row["diff"]):
        return fmt.MISSING
    if n < 2:
        return f"{METHOD_NAMES[method]}, {n} seed{'s' * (n != 1)}: no interval"
    if method == PAIRED:
        return f"paired, {n} seeds"
    return f"Welch, {int(row['base_n'])} vs {int(row['n'])} seeds"


def diff_header(eff: pd.DataFrame) -> str:
    """'paired' or 'Welch' where every difference in `eff` is one kind, else 'paired or Welch'."""
    methods = set(eff.loc[~eff["is_baseline"] & (eff["diff_method"] != ""), "diff_method"]) if len(eff) else set()
    return METHOD_NAMES[methods.pop()] if len(methods) == 1 else "paired or Welch"


def effects(sd: StudyData) -> pd.DataFrame:
    """One row per configuration of the one-at-a-time design; see the module docstring."""
    rows, not_run = [], []
    base: dict | None = None
    for factor, level, levels in sd.one_at_a_time():
        cells = sd.cells_at(levels)
        if factor is None:
            base = top1_by_seed(sd, cells)
        if len(cells) == 0:
            not_run.append(config_label(factor, level))
        mine = top1_by_seed(sd, cells)
        d = compare(base, mine) if base and mine else None
        rows.append(
            {
                "config": config_label(factor, level),
                "factor": factor or "",
                "level": level or "",
                "is_baseline": factor is None,
                **config_stats(sd, cells),
                **diff_columns(d),
            }
        )
    if not_run:
        sd.notes.warn(
            f"{len(not_run)} configuration(s) have no cell in runs.csv (not run at this profile, or "
            f"not yet), shown as missing: {', '.join(not_run)}"
        )
    return pd.DataFrame(rows)


def in_level_order(sd: StudyData, eff: pd.DataFrame) -> pd.DataFrame:
    """A one-factor study's `effects` in the study's level order (e.g. the architectures by year),
    the baseline row where its level falls, with the level filled in on the baseline row."""
    factor = sd.factors[0]
    eff = eff.assign(level=eff["level"].where(eff["level"] != "", (sd.baseline or {}).get(factor, "")))
    order = {lv: i for i, lv in enumerate(sd.levels[factor])}
    return eff.sort_values("level", key=lambda s: s.map(order), kind="stable").reset_index(drop=True)


def configurations(sd: StudyData) -> pd.DataFrame:
    """Every level combination found in runs.csv, in the study's level order, with its statistics."""
    if not sd.factors or len(sd.runs) == 0:
        return pd.DataFrame()
    combos = sd.runs[sd.factors].drop_duplicates()
    designed = [levels for _, _, levels in sd.one_at_a_time()]
    if designed and all(dict(c) in designed for _, c in combos.iterrows()):  # the design's own order
        combos = pd.DataFrame([d for d in designed if any(dict(c) == d for _, c in combos.iterrows())])
    else:  # a factorial design: its levels in the study's order, the first factor slowest
        order = {f: {lv: i for i, lv in enumerate(sd.levels[f])} for f in sd.factors}
        combos = combos.sort_values(sd.factors, key=lambda s: s.map(order[s.name]))
    rows = []
    for _, combo in combos.iterrows():
        levels = {f: combo[f] for f in sd.factors}
        stats = config_stats(sd, sd.cells_at(levels))
        rows.append({**levels, **stats})
    return pd.DataFrame(rows)


# --- formatted tables --------------------------------------------------------------


def missing_reason(row) -> str:
    if row["cells"] == 0:
        return "not run"
    return row["failed"] or "no finished cell"


def configurations_table(sd: StudyData, conf: pd.DataFrame) -> fmt.Table:
    clean = sd.has(CLEAN_TRAIN)
    columns = [
        *sd.factors,
        "seeds ok / cells",
        "failed",
        "test top-1 err. % (mean ± sd)",
        "95% CI (%)",
        "running train err. % (last epoch)",
    ] + (["clean train err. %"] if clean else [])
    rows = []
    for _, r in conf.iterrows():
        n = int(r["n"])
        rows.append(
            [
                *(str(r[f]) for f in sd.factors),
                f"{n} / {int(r['cells'])}",
                r["failed"] or "",
                fmt.mean_sd(r["top1_mean"], r["top1_sd"], n, why_missing=missing_reason(r)),
                fmt.interval(r["top1_lo"], r["top1_hi"], n),
                fmt.num(r["train_running_err_mean"]),
            ]
            + ([fmt.num(r["train_clean_err_mean"])] if clean else [])
        )
    notes = [
        "Errors are the last epoch's, mean over the seeds whose cell finished ok. Running training error: "
        "measured during the epoch, through augmentation and dropout."
    ]
    notes.append(
        "Clean training error: the training images evaluated without augmentation or dropout, at the final weights."
        if clean
        else "No clean training error recorded (older run)."
    )
    return fmt.Table("cells", f"{sd.study} ({sd.profile}): every configuration", columns, rows, notes)


def effects_notes(sd: StudyData, eff: pd.DataFrame) -> list[str]:
    """The notes under a table of `effects`: the intervals, the FLOP convention, one-seed rows."""
    notes = [DIFF_NOTE]
    conv = flop_convention(sd)
    notes.append(
        f"FLOP convention (flop_convention column): {conv}."
        if conv
        else "FLOP convention unknown (no flop_convention column)."
    )
    if len(eff) and ((eff["n"] == 1).any() or ((eff["diff_n"] == 1) & ~eff["is_baseline"]).any()):
        notes.append(
            "Configurations with one seed (or one seed in common with the baseline) show no interval: "
            "one seed says nothing about the spread."
        )
    return notes
