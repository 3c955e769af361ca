"""A sweep's results folder: one small file per finished cell, merged into the tidy tables.

results/<study>/<profile>/
    cells/<cell_id>.json   one finished cell: its runs row and its history rows, written
                           whole (temporary file, then rename) the moment the cell ends
    runs.csv, history.csv, progress.csv
                           every merged cell (one row; one per epoch; one per progress
                           point); what the report and people read
    study.json             the study's design at this profile (`bench.studies.Design`):
                           which columns of runs.csv are factors, their levels in order,
                           the baselines; rewritten whole by every sweep into the folder

Recording a cell writes one file and reads nothing, so it costs the same at the
tenth cell and the ten-thousandth. Merging reads both tables, replaces the rows of
each recorded cell, writes history.csv and progress.csv, then runs.csv (each
atomically), and only then
deletes the cell files it merged. A merge killed at any point is redone whole by the
next, because a cell file replaces its cell's rows rather than adding to them.

What any reader of the tables needs (the report, and the sweep choosing a two-stage
profile's rates) is here too: older column names under today's (`rename_columns`), the
latest row of a configuration run twice (`latest_per_configuration`), and the target the
cells recorded (`recorded_target`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path

import pandas as pd

from bench.choose import RUNNING_TRAIN, RUNNING_TRAIN_EPOCH
from bench.errors import UserError
from bench.io import atomic_write_text, check_table, read_csv, write_csv
from bench.studies import STUDY_JSON, Design

CELLS = "cells"
RUNS_REQUIRED = ("cell_id", "status")  # what every row of runs.csv has
RENAMED = {
    "train_err_pct": RUNNING_TRAIN_EPOCH,
    "final_train_err_pct": RUNNING_TRAIN,  # older name -> name here
    "train_loss": "train_running_loss",
    "final_train_loss": "final_train_running_loss",
}
# A column chosen on test error (the best epoch's) would select on the test set: never read.
IGNORED = ("best_test_top1_err_pct",)


class ResultsFolder:
    """The runs and history tables of one study at one profile, and the cells not yet merged."""

    def __init__(self, folder: Path, text_columns: Iterable[str] = ()):
        self.folder = Path(folder)
        self.cells = self.folder / CELLS
        self.runs_path = self.folder / "runs.csv"
        self.history_path = self.folder / "history.csv"
        self.progress_path = self.folder / "progress.csv"
        # ids and factor levels stay text: a level "none" or "1e9" must not become NaN or 1000000000.0
        self.text_columns = ("cell_id", *text_columns)

    def record_design(self, design: Design) -> None:
        """Say which columns are factors, their levels and baselines: what the tables cannot say.
        The latest sweep's, whole: a study file edited between sweeps leaves its latest design here."""
        atomic_write_text(self.folder / STUDY_JSON, design.to_json())

    def record(self, row: dict, history: list[dict], progress: list[dict] = ()) -> None:
        """Keep one finished cell; constant cost whatever the tables hold."""
        atomic_write_text(
            self.cells / f"{row['cell_id']}.json",
            json.dumps({"row": row, "history": history, "progress": list(progress)}, default=str),
        )

    def pending(self) -> list[Path]:
        """Recorded cells not yet in the tables, oldest first (the order they finished)."""
        if not self.cells.is_dir():
            return []
        return sorted(self.cells.glob("*.json"), key=lambda p: (p.stat().st_mtime_ns, p.name))

    def merge(self) -> int:
        """Fold the recorded cells into runs.csv and history.csv; returns how many were merged."""
        files = self.pending()
        if not files:
            return 0
        runs, history, progress = self._merged(files)
        # the per-epoch and per-point rows first: they count only once runs.csv has their cell
        write_csv(self.history_path, history)
        if len(progress) or self.progress_path.exists():
            write_csv(self.progress_path, progress)
        write_csv(self.runs_path, runs)
        for f in files:
            f.unlink(missing_ok=True)
        return len(files)

    def read(self) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
        """runs, history and progress as they would be after a merge, without writing anything."""
        return self._merged(self.pending())

    def runs(self) -> pd.DataFrame:
        """runs.csv as saved, with the types a reader of the file sees; empty if absent."""
        return self._read_table(self.runs_path, RUNS_REQUIRED)

    def clear_temporary(self) -> None:
        """Remove the temporary files of a write that a kill interrupted; the real files are intact."""
        for folder in (self.folder, self.cells):
            for stale in folder.glob(".*.tmp"):
                stale.unlink(missing_ok=True)

    def _merged(self, files: list[Path]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
        runs = self._read_table(self.runs_path, RUNS_REQUIRED)
        per_cell = {"history": self._read_table(self.history_path), "progress": self._read_table(self.progress_path)}
        records = [self._load(f) for f in files]
        if records:
            ids = {r["row"]["cell_id"] for r in records}
            if len(runs):
                runs = runs[~runs["cell_id"].isin(ids)]
            runs = _concat(runs, pd.DataFrame([r["row"] for r in records]))
            for name, table in per_cell.items():
                if len(table):
                    table = table[~table["cell_id"].isin(ids)]
                per_cell[name] = _concat(table, pd.DataFrame([h for r in records for h in r.get(name, [])]))
        known = set(runs["cell_id"]) if len(runs) else set()
        for name, table in per_cell.items():
            if len(table):
                # rows of a cell absent from runs.csv are leftovers of an interrupted write
                per_cell[name] = table[table["cell_id"].isin(known)].reset_index(drop=True)
        return runs.reset_index(drop=True), per_cell["history"], per_cell["progress"]

    def _read_table(self, path: Path, required: tuple[str, ...] = ("cell_id",)) -> pd.DataFrame:
        if not path.exists() or path.stat().st_size == 0:
            return pd.DataFrame()
        # a torn last row would read as a finished cell, and never be run again
        check_table(path, required, fix="move it aside to start the study afresh")
        try:
            table = read_csv(path, self.text_columns)
        except pd.errors.EmptyDataError:  # no columns: a history with no epochs yet (every cell failed)
            return pd.DataFrame()
        except (pd.errors.ParserError, UnicodeDecodeError) as e:
            raise UserError(
                f"{path} is not a table this runner can read ({type(e).__name__}); "
                f"move it aside to start the study afresh"
            ) from None
        if len(table) and (missing := [c for c in required if c not in table]):
            raise UserError(
                f"{path} has no {missing[0]} column, so which cells finished is unknown; "
                f"move it aside to start the study afresh"
            )
        return table

    @staticmethod
    def _load(path: Path) -> dict:
        try:
            record = json.loads(path.read_text())
        except (ValueError, OSError) as e:
            record = {"error": type(e).__name__}
        row = record.get("row") if isinstance(record, dict) else None
        if not (isinstance(row, dict) and "cell_id" in row and isinstance(record.get("history"), list)):
            raise UserError(f"{path} is not a cell record this runner wrote; move it aside and run the sweep again")
        for key in RUNS_REQUIRED:  # merged, such a row would make runs.csv a table nothing can read
            if not isinstance(row.get(key), str) or not row[key]:
                raise UserError(
                    f"{path} is not a cell record this runner wrote (its row has no {key}); "
                    f"move it aside and run the sweep again"
                )
        return record


def _concat(old: pd.DataFrame, new: pd.DataFrame) -> pd.DataFrame:
    # pandas warns about (and will change) dtype inference when an empty frame takes part
    if not len(old):
        return new
    if not len(new):
        return old
    return pd.concat([old, new], ignore_index=True)


# --- reading the tables, older ones included ------------------------------------------


def canonical(name: str) -> str:
    """A metric's name as today's tables write it ('train_err_pct' -> 'train_running_err_pct')."""
    return RENAMED.get(name, name)


def rename_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` with older column names mapped through `RENAMED` and `IGNORED` dropped; where a
    table has both names (rows of an older and a newer sweep), the newer fills in from the older.
    The metric names in a `target_metric` column are mapped too."""
    frame = frame.drop(columns=[c for c in IGNORED if c in frame])
    if "target_metric" in frame:
        frame = frame.assign(
            target_metric=frame["target_metric"].map(lambda m: canonical(m) if isinstance(m, str) else m)
        )
    for old, new in RENAMED.items():
        if old not in frame:
            continue
        if new in frame:
            frame = frame.assign(**{new: frame[new].where(frame[new].notna(), frame[old])})
            frame = frame.drop(columns=[old])
        else:
            frame = frame.rename(columns={old: new})
    return frame


def latest_per_configuration(
    runs: pd.DataFrame, factors: list[str], warn: Callable[[str], None], keys: list[str] = ()
) -> tuple[pd.DataFrame, set]:
    """One row per factor levels and seed (and `keys`, e.g. the learning rate of a tuned grid): the latest;
    and the cell ids of the rows left out.

    A changed profile or data path gives the same levels and seed a new cell id, and the
    runner keeps the old row; counting both would pool two settings and one seed twice.
    """
    if not factors or not len(runs):
        return runs, set()
    order = runs.sort_values("finished_at", kind="stable", na_position="first") if "finished_at" in runs else runs
    latest = order.drop_duplicates(subset=[*factors, "seed", *keys], keep="last")
    if dropped := len(runs) - len(latest):
        warn(
            f"{dropped} older row(s) of runs.csv repeat a configuration and seed (a sweep with other "
            f"settings); only the latest of each is used"
        )
    keep = runs.index.isin(latest.index)
    return runs.loc[keep], set(runs.loc[~keep, "cell_id"])


def recorded_target(runs: pd.DataFrame) -> dict | None:
    """{"metric", "value"} of the target as the cells recorded it (`target_metric`, `target_value`);
    None where they recorded none."""
    if "target_metric" in runs and runs["target_metric"].notna().any():
        return {
            "metric": canonical(str(runs["target_metric"].dropna().iloc[0])),
            "value": float(runs["target_value"].dropna().iloc[0]) if "target_value" in runs else 25.0,
        }
    return None
