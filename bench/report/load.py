"""Read one results/<study>/<profile>/ folder: the tidy tables, the recorded design, and what the study file adds.

The tables are the truth about the cells. Which columns are factors, their levels in
the study's order and each one's baseline level are what the sweep recorded beside
them (study.json, `bench.studies.Design`); a folder swept before that was recorded
takes them from its study file at the profile (the path in environment.json, else the
shipped ablations/<study>.toml), which the sweep read too. The study file (read and
validated by `bench.studies`, no torch), when it still reads and validates, adds the
description, the target, the declared seeds and the learning-rate grid; a study file
edited since the sweep into one that no longer validates is one warning line, not the
end of the report. The target is in the `target_metric` / `target_value` columns.

Missing data (no history, a failed cell, a missing column) goes through
`Notes.warn`: one logging.warning line, also listed in report.md.

Column names are read through one mapping (`RENAMED`, in `bench.sweep.results`, which the
sweep's own choice of a two-stage profile's rates reads through too): older results call the
training error measured during the epoch (through augmentation and dropout)
`train_err_pct` / `final_train_err_pct`; the report knows it only as the running
error, `train_running_err_pct` / `final_train_running_err_pct`, as newer runs
name it, and never mistakes it for the clean training error (the training images
evaluated without augmentation or dropout, `train_clean_top1_err_pct` /
`final_train_clean_top1_err_pct`), which older runs did not record. Columns in
`IGNORED` are dropped on reading: the report selects nothing on test error.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from bench.choose import LR, at_chosen_rates, choose_lr
from bench.errors import UserError
from bench.flop_convention import upgrade_counts
from bench.io import check_table, read_csv
from bench.studies import STUDY_JSON, Design, StudyFile, studies_dir
from bench.sweep.results import canonical, latest_per_configuration, recorded_target, rename_columns
from bench.train.result import (
    OK,  # a cell whose final numbers count; diverged cells keep their curves only
)

log = logging.getLogger(__name__)

RUNS, HISTORY, ENVIRONMENT = "runs.csv", "history.csv", "environment.json"
PROGRESS = "progress.csv"  # the running training error at each 1/10 epoch: Figure 1's epochs to the target
# The running training error (through augmentation and dropout) is `bench.choose.RUNNING_TRAIN_EPOCH` /
# `RUNNING_TRAIN`, the columns Figure 1's rule reads.
# Training images evaluated without augmentation or dropout, top-1 error in % (per epoch; final weights).
CLEAN_TRAIN_EPOCH, CLEAN_TRAIN = "train_clean_top1_err_pct", "final_train_clean_top1_err_pct"


class Notes:
    """Missing-data lines of one study folder: each logged once, kept for report.md."""

    def __init__(self, label: str):
        self.label = label
        self.lines: list[str] = []

    def warn(self, message: str) -> None:
        if message not in self.lines:
            self.lines.append(message)
            log.warning("%s: %s", self.label, message)


@dataclass
class StudyData:
    folder: Path
    study: str
    profile: str
    runs: pd.DataFrame  # factor columns as level strings, is_baseline as bool
    history: pd.DataFrame  # with the factor levels and status of its cell from runs.csv
    env: dict
    factors: list[str]
    levels: dict[str, list[str]]  # factor -> levels in the study's order
    baseline: dict[str, str] | None  # factor -> baseline level
    target: dict | None  # {"metric", "value"} where the study has one
    description: str = ""
    factor_descriptions: dict = field(default_factory=dict)
    notes: Notes = None
    only: dict = field(
        default_factory=dict
    )  # factor -> the levels the profile's design runs (claims elsewhere: left out)
    confirm_seeds: list = field(default_factory=list)  # seeds run only at chosen levels (a two-stage profile)
    declared_seeds: list | None = None  # the seeds the verdicts count: the confirmatory n (None: unknown)
    tuning_seeds: list = field(default_factory=list)  # a two-stage profile's seeds that chose the rates
    lr_choice: pd.DataFrame | None = None  # a tune_lr profile: each arm's rate, chosen on validation (bench.choose)
    grid_runs: pd.DataFrame | None = None  # a tune_lr profile: the grid's cells at rates not chosen
    progress: pd.DataFrame | None = None  # progress.csv's rows of the cells of `runs` (None: no progress.csv)
    fastest_lr_per: list = field(default_factory=list)  # the study file's: Figure 1's rate is chosen per these

    @property
    def label(self) -> str:
        return f"{self.study}/{self.profile}"

    def has(self, column: str, frame: str = "runs") -> bool:
        table = self.runs if frame == "runs" else self.history
        return column in table.columns and table[column].notna().any()

    def column(self, column: str, rows: pd.DataFrame | None = None, why: str = "") -> pd.Series:
        """`rows[column]`, or all-NaN with one warning where runs.csv lacks the column."""
        rows = self.runs if rows is None else rows
        if column in rows.columns:
            return rows[column]
        self.notes.warn(f"column {column!r} missing from {RUNS}{' (' + why + ')' if why else ''}; shown as missing")
        return pd.Series(math.nan, index=rows.index, dtype=float)

    def ok_runs(self) -> pd.DataFrame:
        return self.runs[self.runs["status"] == OK]

    def cells_at(self, levels: dict[str, str], rows: pd.DataFrame | None = None) -> pd.DataFrame:
        """The rows whose factors are at `levels` (factors not named: any level)."""
        rows = self.runs if rows is None else rows
        mask = pd.Series(True, index=rows.index)
        for f, lv in levels.items():
            mask &= rows[f] == lv
        return rows[mask]

    def one_at_a_time(self) -> list[tuple[str | None, str | None, dict]]:
        """(factor, level, levels of every factor) for the baseline (None, None, ...) and each
        configuration that differs from it in one factor, in the study's order."""
        if self.baseline is None:
            return []
        configs = [(None, None, dict(self.baseline))]
        for f in self.factors:
            for lv in self.levels[f]:
                if lv != self.baseline[f]:
                    configs.append((f, lv, {**self.baseline, f: lv}))
        return configs


def _as_bool(series: pd.Series) -> pd.Series:
    return series.astype(str).str.strip().str.lower().isin(("true", "1", "yes"))


def read_study_file(study: str, env: dict, notes: Notes) -> StudyFile | None:
    """The study's file: the one the sweep read (environment.json), else the shipped one; None if
    neither reads as this study."""
    recorded = Path(env["study_file"]) if env.get("study_file") else None
    candidates = [recorded] if recorded else []
    if recorded and not recorded.is_absolute():  # relative to the checkout the sweep ran in
        candidates.append(studies_dir().parent / recorded)
    candidates.append(studies_dir() / f"{study}.toml")
    for path in candidates:
        if not path.is_file():
            continue
        try:
            spec = StudyFile.read(path)
        except OSError:
            continue
        except UserError as e:
            notes.warn(f"{e}; that study file is not used")
            continue
        if spec.name == study:
            return spec
    return None


def load(folder: Path) -> StudyData:
    """Read runs.csv, history.csv, environment.json and study.json of one study/profile folder."""
    folder = Path(folder)
    runs_path = folder / RUNS
    if not runs_path.is_file():
        raise UserError(
            f"{folder}: no {RUNS} here; pass a folder written by `python -m bench ablate` "
            f"(results/<study>/<profile>), or run `python -m bench ablate --study NAME` first"
        )
    check_table(runs_path, ("cell_id", "status"))  # before any warning: the damage is the one thing to say
    notes = Notes(str(folder))
    env = _read_environment(folder, notes)
    columns = _header(runs_path)
    study, profile = _names(runs_path, columns, env, folder)
    notes.label = f"{study}/{profile}"
    spec = read_study_file(study, env, notes)
    design = read_design(folder, spec, profile, notes)
    factors = _factor_columns(design, columns, notes)
    runs = _read_runs(runs_path, factors) if columns else pd.DataFrame()
    if len(runs) == 0:
        notes.warn(f"{RUNS} has no rows (the study has not finished a cell yet)")
    prof = spec.profiles.get(profile) if spec else None
    grid = spec.lr_grid(profile) if prof is not None else []
    runs, superseded = latest_per_configuration(
        _normalize_runs(runs, notes, runs_path), factors, notes.warn, [LR] if grid and LR in runs else []
    )
    lr_choice = grid_runs = None
    if grid and len(runs) and LR in runs:
        lr_choice = choose_lr(runs, factors, list(prof.get("seeds", spec.seeds)))
        # The tuning seeds' cells are the grid's, even at the chosen rate: the rate was chosen on them, so
        # their errors there are biased low, and a two-stage profile's verdicts count the confirming seeds only.
        tuning = _seeds(design, spec, profile, notes)[1]
        chosen = at_chosen_rates(runs, lr_choice, factors) & ~runs["seed"].isin(tuning)
        grid_runs, runs = runs[~chosen], runs[chosen]
        superseded = superseded | set(grid_runs["cell_id"])  # their curves are the grid's, not the arm's
    return StudyData(
        folder,
        study,
        profile,
        runs,
        _read_history(folder, runs, factors, notes, superseded),
        env,
        factors,
        _levels(design, factors, runs),
        {f: design.baseline[f] for f in factors} if design else None,
        _target(runs, spec),
        spec.description if spec else "",
        {f: design.descriptions.get(f, "") for f in factors},
        notes,
        {f: design.levels[f] for f in factors},
        spec.confirm_seeds(profile) if prof is not None else [],
        *_seeds(design, spec if prof is not None else None, profile, notes),
        lr_choice,
        grid_runs,
        _read_progress(folder, runs, notes, superseded),
        spec.fastest_lr_per if spec else [],
    )


def _seeds(design: Design | None, spec: StudyFile | None, profile: str, notes: Notes) -> tuple[list | None, list]:
    """(declared seeds, tuning seeds): as the sweep recorded them (study.json), else the study file's now."""
    if design is not None and design.declared_seeds is not None:
        return design.declared_seeds, design.tuning_seeds
    if spec is None:
        return None, []
    notes.warn(
        f"the sweep recorded no declared seeds ({STUDY_JSON} predates them): the verdicts count the seeds the study "
        f"file declares now ({', '.join(str(s) for s in spec.declared_seeds(profile))}), which may differ from "
        "those it declared when the cells ran"
    )
    return spec.declared_seeds(profile), spec.tuning_seeds(profile)


def read_design(folder: Path, spec: StudyFile | None, profile: str, notes: Notes) -> Design | None:
    """The design the sweep recorded (study.json); for a folder swept before it was recorded, the study
    file's at `profile`; None, with one warning, where neither is there."""
    if (folder / STUDY_JSON).is_file():
        return Design.read(folder / STUDY_JSON)
    if spec is not None:
        return spec.design_at(profile if profile in spec.profiles else None)
    notes.warn(
        f"no {STUDY_JSON} and no study file: which columns are factors is unknown, so configurations are not "
        f"compared; record it by running the study again (`python -m bench ablate --study FILE --profile "
        f"{profile}`: finished cells are not run again)"
    )
    return None


def _read_environment(folder: Path, notes: Notes) -> dict:
    if not (folder / ENVIRONMENT).is_file():
        notes.warn(f"{ENVIRONMENT} missing; provenance from {RUNS} only")
        return {}
    try:
        return json.loads((folder / ENVIRONMENT).read_text())
    except (OSError, json.JSONDecodeError) as e:
        notes.warn(f"{ENVIRONMENT} unreadable ({e}); provenance from {RUNS} only")
        return {}


def _unreadable(path: Path, e: Exception) -> UserError:
    return UserError(
        f"{path} is not a readable table ({type(e).__name__}: {str(e).strip()[:120]}); "
        f"restore it from git or re-run the study"
    )


def _header(runs_path: Path) -> list[str]:
    """runs.csv's column names ([] for a table with no columns: no cell has finished)."""
    try:
        return list(pd.read_csv(runs_path, nrows=0).columns)
    except pd.errors.EmptyDataError:
        return []
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise _unreadable(runs_path, e) from None


def _read_runs(runs_path: Path, factors: list[str]) -> pd.DataFrame:
    """runs.csv with ids, names and factor levels as text, checked for text in its number columns."""
    try:
        runs = read_csv(runs_path, factors + ["cell_id", "study", "profile", "status"])
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise _unreadable(runs_path, e) from None
    _check_numbers(runs, runs_path)
    return runs


def _names(runs_path: Path, columns: list[str], env: dict, folder: Path) -> tuple[str, str]:
    """(study, profile): as runs.csv's rows name them, else environment.json, else the folders."""
    first = {}
    if {"study", "profile"} & set(columns):
        names = read_csv(runs_path, ["study", "profile"])
        first = {c: _first(names, c) for c in ("study", "profile")}
    study = first.get("study") or env.get("study") or folder.parent.name
    return study, first.get("profile") or env.get("profile") or folder.name


def _factor_columns(design: Design | None, columns: list[str], notes: Notes) -> list[str]:
    """The design's factors that runs.csv has; a factor it lacks (a study file that gained one after the
    sweep) is one warning."""
    if design is None:
        return []
    missing = [f for f in design.factors if f not in columns]
    if missing and columns:
        notes.warn(
            f"factor(s) {', '.join(missing)} of the study's design are not columns of {RUNS} "
            f"(added to the study file after the sweep?); left out"
        )
    return [f for f in design.factors if f in columns]


def _levels(design: Design | None, factors: list[str], runs: pd.DataFrame) -> dict[str, list[str]]:
    """factor -> the design's levels in the study's order, then any other level the rows have (a
    level run once, since removed from the study). Every level of the design is kept, so that a
    level not run shows as missing."""
    levels = {}
    for f in factors:
        seen = [str(v) for v in runs[f].dropna().unique()] if f in runs else []
        levels[f] = design.levels[f] + [lv for lv in seen if lv not in design.levels[f]]
    return levels


def _target(runs: pd.DataFrame, spec: StudyFile | None) -> dict | None:
    """{"metric", "value"} as the cells recorded it, else as the study file sets it; None without one."""
    if recorded := recorded_target(runs):
        return recorded
    if spec and spec.target:
        return {"metric": canonical(spec.target["metric"]), "value": float(spec.target["value"])}
    return None


# Columns the report computes with: a value that is not a number there is damage, not a missing value.
NUMBER_SUFFIXES = ("_pct", "_seconds", "_per_s", "_loss", "_to_target")
NUMBER_COLUMNS = {"seed", "macs", "params_total", "cfg_lr", "epochs_run", "best_epoch", "epoch", "step"}


def _check_numbers(table: pd.DataFrame, path: Path) -> None:
    """Refuse a table with text where the report reads numbers (`UserError` naming line and column)."""
    for column in table.columns:
        if not (column in NUMBER_COLUMNS or column.endswith(NUMBER_SUFFIXES) or column.startswith("lrn_")):
            continue
        values = table[column]
        bad = values.notna() & pd.to_numeric(values, errors="coerce").isna()
        if bad.any():
            row = bad.to_numpy().nonzero()[0][0]
            raise UserError(
                f"{path}: line {row + 2}: {column}={values.iloc[row]!r} is not a number; "
                f"restore the table from git or re-run the study"
            )


def _first(frame: pd.DataFrame, column: str) -> str | None:
    if column in frame.columns and frame[column].notna().any():
        return str(frame[column].dropna().iloc[0])
    return None


def _normalize_runs(runs: pd.DataFrame, notes: Notes, runs_path: Path) -> pd.DataFrame:
    runs = rename_columns(runs)
    if "is_baseline" in runs:
        runs["is_baseline"] = _as_bool(runs["is_baseline"])
    else:
        runs["is_baseline"] = False
    if "status" not in runs:
        if len(runs):  # taking every row as finished would report failed cells' numbers as results
            raise UserError(
                f"{runs_path} has no status column, so which cells finished is unknown; "
                "restore the table from git or re-run the study"
            )
        runs["status"] = OK
    runs["status"] = runs["status"].fillna("unknown").astype(str)
    runs = upgrade_counts(runs)  # tables written before `macs` meant conv + linear only
    if "seed" not in runs:
        runs["seed"] = 0
    if "cell_id" not in runs:
        runs["cell_id"] = [f"row{i}" for i in range(len(runs))]
    return runs


def _read_history(
    folder: Path, runs: pd.DataFrame, factors: list[str], notes: Notes, superseded: set = frozenset()
) -> pd.DataFrame:
    """history.csv with each row's factor levels and status taken from its cell in runs.csv.

    The levels come from runs.csv because a history column can shadow a factor of the
    same name (figure1's `lr` factor and the per-epoch learning rate `lr`).
    """
    path = folder / HISTORY
    empty = pd.DataFrame(columns=["cell_id", "epoch", *factors, "seed", "status"])
    if path.is_file() and path.stat().st_size:
        check_table(path, ("cell_id",))  # a torn or garbled history is damage to name, not curves to guess
    try:
        hist = read_csv(path, ["cell_id"]) if path.is_file() else None
    except pd.errors.EmptyDataError:  # an empty file: no cell has finished an epoch
        hist = None
    if hist is not None:
        _check_numbers(hist, path)
    if hist is None or not len(hist):
        if len(runs):
            notes.warn(f"{HISTORY} missing or empty; curves over epochs are not drawn")
        return empty
    if "cell_id" not in hist or "epoch" not in hist:
        notes.warn(f"{HISTORY} lacks cell_id or epoch columns; curves over epochs are not drawn")
        return empty
    hist = rename_columns(hist[~hist["cell_id"].isin(superseded)])  # superseded: reported with runs.csv
    keep = [c for c in ["cell_id", *factors, "status", "is_baseline"] if c in runs]
    hist = hist.drop(columns=[c for c in keep if c != "cell_id" and c in hist] + ["seed"] * ("seed" in hist))
    merged = hist.merge(runs[keep + ["seed"]], on="cell_id", how="left", validate="many_to_one")
    orphans = merged["status"].isna().sum() if "status" in merged else 0
    if orphans:
        notes.warn(f"{orphans} {HISTORY} rows belong to no cell of {RUNS} (an interrupted cell); left out")
        merged = merged[merged["status"].notna()]
    return merged


def _read_progress(
    folder: Path, runs: pd.DataFrame, notes: Notes, superseded: set = frozenset()
) -> pd.DataFrame | None:
    """progress.csv's rows of the cells of `runs`, checked as history.csv is: a torn or garbled
    table, or text where a number belongs, is refused (`UserError`); rows of no cell of runs.csv
    are left out with a warning. None where there is no progress.csv, or it is empty."""
    path = folder / PROGRESS
    if not path.is_file() or not path.stat().st_size:
        return None
    check_table(path, ("cell_id",))
    try:
        prog = read_csv(path, ["cell_id"])
    except pd.errors.EmptyDataError:
        return None
    _check_numbers(prog, path)
    if "cell_id" not in prog:
        return prog
    prog = prog[~prog["cell_id"].isin(superseded)]
    orphans = ~prog["cell_id"].isin(set(runs["cell_id"])) if "cell_id" in runs else prog["cell_id"].notna()
    if orphans.any():
        notes.warn(f"{int(orphans.sum())} {PROGRESS} rows belong to no cell of {RUNS} (an interrupted cell); left out")
    return prog[~orphans]


def run_mode(sd: StudyData) -> str:
    """How the cells computed, e.g. 'bf16 autocast, channels_last' or 'fp32, eager' ('' if not recorded)."""
    runs = sd.runs
    if "dtype_resolved" not in runs or not runs["dtype_resolved"].notna().any():
        return ""
    modes = []
    columns = [c for c in ("dtype_resolved", "cfg_channels_last", "cfg_compile") if c in runs]
    for _, r in runs.dropna(subset=["dtype_resolved"]).drop_duplicates(columns).iterrows():
        parts = [str(r["dtype_resolved"]) + (" autocast" if r["dtype_resolved"] in ("bf16", "fp16") else "")]
        if str(r.get("cfg_channels_last", "")).lower() == "true":
            parts.append("channels_last")
        compiled = str(r.get("cfg_compile", "off"))
        parts.append("eager" if compiled in ("off", "nan", "") else f"compiled ({compiled})")
        modes.append(", ".join(parts))
    return "; ".join(dict.fromkeys(modes))
