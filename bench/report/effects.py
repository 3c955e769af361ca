"""Per-configuration statistics over seeds, which every kind of study shares, and the table of every configuration.

`effects` is the numeric heart of the ablation and architecture reports: one row
per configuration of a one-at-a-time design (the baseline, then each factor's
other levels with every other factor at its baseline), with

* test top-1 / top-5 error (%) over the seeds whose cell finished `ok`: mean,
  sample sd, and the 95% t-interval mean ± t(0.975, n-1) sd / sqrt(n);
* the difference from the baseline (level - baseline, percentage points) with
  its 95% Welch interval (unequal variances, Welch-Satterthwaite degrees of
  freedom); both need two or more seeds on each side, otherwise NaN;
* params, MACs, throughput, and which cells failed.

`configurations` is the same statistics for every level combination in runs.csv
(`configurations_table`: the `cells` table of every report).
"""

from __future__ import annotations

import math

import pandas as pd

from bench.report import format as fmt
from bench.report.claims import claims_for
from bench.report.load import StudyData
from bench.report.stats import Summary, summarize, welch
from bench.train.result import OK

TOP1, TOP5, TRAIN = "final_test_top1_err_pct", "final_test_top5_err_pct", "final_train_running_err_pct"
MEASURED_TRAIN, LOOP_TRAIN, MEASURED_INFER = "train_images_per_s", "median_train_images_per_s", "infer_images_per_s"
KNOWN_CONVENTION = "macs=multiply-adds"
WELCH_NOTE = ("Δ = configuration mean − baseline mean, in percentage points; its 95% interval is Welch's "
              "(unequal variances, Welch–Satterthwaite degrees of freedom). Error intervals are 95% "
              "t-intervals over seeds, mean ± t(0.975, n−1)·sd/√n.")


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


def macs_header(sd: StudyData, what: str = "") -> str:
    conv = flop_convention(sd)
    unit = "multiply-adds/image, forward" if KNOWN_CONVENTION in conv else "see FLOP convention"
    return f"MACs{' ' + what if what else ''} ({unit})"


def _failed(cells: pd.DataFrame) -> str:
    bad = cells[cells["status"] != OK]["status"].value_counts()
    return ", ".join(f"{status}×{k}" for status, k in bad.items())


def _value(sd: StudyData, cells: pd.DataFrame, column: str) -> float:
    """The mean of a per-cell quantity over the cells that have it (params are the same for every seed)."""
    values = sd.column(column, cells).dropna()
    return float(values.astype(float).mean()) if len(values) else math.nan


def config_stats(sd: StudyData, cells: pd.DataFrame) -> dict:
    ok = cells[(cells["status"] == OK) & sd.column(TOP1, cells).notna()]
    top1 = summarize(ok[TOP1] if len(ok) else [])
    top5 = summarize(sd.column(TOP5, ok))
    train = summarize(sd.column(TRAIN, ok))
    train_col, _, infer_col = throughput_sources(sd)
    return {
        "cells": len(cells), "n": top1.n, "seeds": ",".join(str(s) for s in sorted(ok["seed"].tolist())),
        "failed": _failed(cells),
        "top1_mean": top1.mean, "top1_sd": top1.sd, "top1_lo": top1.lo, "top1_hi": top1.hi,
        "top5_mean": top5.mean, "top5_sd": top5.sd, "top5_n": top5.n,
        "train_err_mean": train.mean, "gap_mean": top1.mean - train.mean,
        "params": _value(sd, cells, "params_total"), "macs": _value(sd, cells, "macs"),
        "core_macs": _value(sd, cells, "core_macs"),
        "train_ips": _value(sd, ok, train_col), "infer_ips": _value(sd, ok, infer_col) if infer_col else math.nan,
        "_summary": top1,
    }


def effects(sd: StudyData) -> pd.DataFrame:
    """One row per configuration of the one-at-a-time design; see the module docstring."""
    rows, not_run = [], []
    base: Summary | None = None
    for factor, level, levels in sd.one_at_a_time():
        cells = sd.cells_at(levels)
        stats = config_stats(sd, cells)
        if factor is None:
            base = stats["_summary"]
        if len(cells) == 0:
            not_run.append(config_label(factor, level))
        d = welch(base, stats.pop("_summary")) if base is not None and base.n else None
        rows.append({"config": config_label(factor, level), "factor": factor or "", "level": level or "",
                     "is_baseline": factor is None, **stats,
                     "diff": d.diff if d else math.nan, "diff_lo": d.lo if d else math.nan,
                     "diff_hi": d.hi if d else math.nan, "diff_df": d.df if d else math.nan,
                     "base_n": base.n if base is not None else 0})
    if not_run:
        sd.notes.warn(f"{len(not_run)} configuration(s) have no cell in runs.csv (not run at this profile, or "
                      f"not yet), shown as missing: {', '.join(not_run)}")
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
        stats.pop("_summary")
        rows.append({**levels, **stats})
    return pd.DataFrame(rows)


# --- formatted tables --------------------------------------------------------------

def missing_reason(row) -> str:
    if row["cells"] == 0:
        return "not run"
    return row["failed"] or "no finished cell"


def configurations_table(sd: StudyData, conf: pd.DataFrame) -> fmt.Table:
    columns = [*sd.factors, "seeds ok / cells", "failed", "test top-1 err. % (mean ± sd)",
               "95% CI (%)", "final train err. %"]
    rows = []
    for _, r in conf.iterrows():
        n = int(r["n"])
        rows.append([*(str(r[f]) for f in sd.factors), f"{n} / {int(r['cells'])}", r["failed"] or "",
                     fmt.mean_sd(r["top1_mean"], r["top1_sd"], n, why_missing=missing_reason(r)),
                     fmt.interval(r["top1_lo"], r["top1_hi"], n), fmt.num(r["train_err_mean"])])
    return fmt.Table("cells", f"{sd.study} ({sd.profile}): every configuration", columns, rows,
                     ["Errors are the last epoch's, over the seeds whose cell finished ok."])


def effects_notes(sd: StudyData, eff: pd.DataFrame) -> list[str]:
    """The notes under a table of `effects`: the intervals, the FLOP convention, one-seed rows."""
    notes = [WELCH_NOTE]
    conv = flop_convention(sd)
    notes.append(f"FLOP convention (flop_convention column): {conv}." if conv else
                 "FLOP convention unknown (no flop_convention column).")
    if len(eff) and (eff["n"] == 1).any():
        notes.append("Configurations with one seed show no interval: one seed says nothing about the spread.")
    return notes
