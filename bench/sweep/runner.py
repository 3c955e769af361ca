"""Run a study's cells into tidy tables, resumably.

results/<study>/<profile>/
    runs.csv          one row per cell: factor levels, config, data source, counts,
                      throughput, errors, time to target, status
    history.csv       one row per cell per epoch
    progress.csv      one row per cell per progress point (LOG_PER_EPOCH per epoch):
                      step, fractional epoch, running training error and loss, seconds
    cells/            finished cells not yet merged into the tables (bench.sweep.results)
    environment.json  executor, device, versions, git commit of the latest sweep

Time to a target (steps_to_target, epochs_to_target, seconds_to_target) is
interpolated between the points where the metric is logged (`bench.train.target`):
the progress points for the running training error, the epochs otherwise.

Each finished cell is recorded at once as its own small file, at a cost that does
not grow with the tables; the tables are rewritten from those files when the sweep
starts, when it ends, and in between only as often as keeps that under a tenth of
the sweep's time. A sweep killed at any moment loses at most the cells in flight.
Running again skips cells that finished (ok or diverged) and retries failed ones.

Executors place the cells: `LocalExecutor` runs them one at a time in this process;
`bench.sweep.ray_executor.RayExecutor` runs them as Ray tasks, one per GPU (or per
share of one) across a machine or a cluster. Only this process writes files.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import pandas as pd
import torch
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from bench.data import load_data
from bench.device import is_oom, pick_device
from bench.env import environment
from bench.errors import UserError
from bench.io import atomic_write_text
from bench.measure import FLOP_CONVENTION, count_model, measure_throughput
from bench.sweep.choice import confirming_cells
from bench.sweep.results import ResultsFolder
from bench.sweep.study import Cell, Study
from bench.train.dataspec import data_spec
from bench.train.hooks import Hook
from bench.train.loop import train
from bench.train.modes import resolve_dtype
from bench.train.result import ERROR, FINISHED, OK, OOM
from bench.train.target import TRAILING_EPOCH_MEAN, crossing, trailing_epoch_mean, trailing_mean_at
from bench.train.tensorboard import EpochScalars

log = logging.getLogger(__name__)

LOCK = ".sweep.lock"  # in the results folder, held while a sweep writes there
MERGE_SHARE = 0.1  # the most of a sweep's time that refreshing runs.csv and history.csv may take


@dataclass
class CellResult:
    row: dict
    history: list[dict]
    progress: list[dict] = field(default_factory=list)


# --- one cell ------------------------------------------------------------------------

_DATA_MEMO: dict = {}  # DataSpec -> Dataset (on the CPU), so cells of a study share one load


def _data_for(cfg):
    spec = data_spec(cfg)
    if spec not in _DATA_MEMO:
        _DATA_MEMO.clear()  # keep at most one data set in memory
        _DATA_MEMO[spec] = load_data(spec)
    return _DATA_MEMO[spec]


PROGRESS_METRICS = ("train_running_err_pct", "train_running_loss")  # logged LOG_PER_EPOCH times per epoch


def check_data(
    study: Study,
    profile: str,
    *,
    out_root: Path = Path("results"),
    seeds: list[int] | None = None,
    overrides: dict | None = None,
    keep: bool = True,
) -> int:
    """Load the data of every cell of `study` still to run, once per distinct data set; how many cells.

    Called before any cell runs, and before the results folder is made or locked, so that a
    corrupt image or an absent data set is one error (`UserError`) instead of an error row per
    cell. Reads the results folder without writing it (a damaged table fails here too). With
    `keep`, the last data set stays loaded for the cells (the local executor's).
    """
    folder = Path(out_root) / study.name / profile
    runs = pd.DataFrame()
    if folder.is_dir():
        runs, _, _ = ResultsFolder(folder, ["study", "profile", "status", *study.factors]).read()
    finished = set(runs.loc[runs["status"].isin(FINISHED), "cell_id"]) if len(runs) else set()
    todo = [c for c in study.cells(profile, seeds, overrides) if c.id not in finished]
    firsts: dict = {}  # data set -> the first cell to use it
    for cell in todo:
        firsts.setdefault(data_spec(cell.config), cell)
    order = list(firsts.values())
    for cell in order[1:] + order[:1]:  # the first cell's data set last: it stays loaded for that cell
        _data_for(cell.config)
    if not keep:
        _DATA_MEMO.clear()
    return len(todo)


def time_to_target(history: list[dict], progress: list[dict], metric: str, value: float) -> dict:
    """Steps, epochs (fractional) and training seconds at which `metric` first falls to `value`
    or below, interpolated between the points where it is logged; None where never reached; and
    `target_statistic`, what was compared with `value`.

    A metric of the progress points is judged on its trailing-epoch mean at each point from the
    end of epoch 1 on (`bench.train.target.trailing_epoch_mean`), not on one window; an evaluated
    one (val, test, clean training error) on the epochs, whose positions are the end of each epoch.
    """
    if metric in PROGRESS_METRICS:
        points, statistic = trailing_epoch_mean(progress, metric), TRAILING_EPOCH_MEAN
    else:
        points, seconds, statistic = [], 0.0, "end-of-epoch value"
        for h in history:
            seconds += h.get("epoch_seconds", 0.0)
            points.append({**h, "train_seconds": seconds})
    at = {"steps_to_target": "step", "epochs_to_target": "epoch", "seconds_to_target": "train_seconds"}
    return {
        **{
            name: crossing(points, metric, value, pos) if all(pos in p for p in points) else None
            for name, pos in at.items()
        },
        "target_statistic": statistic,
    }


class _Stopper(Hook):
    """A hook that ends training `stop_after` epochs after the epoch in which the target is first
    reached: for a progress metric, the epoch in which its trailing-epoch mean first falls to it (as
    `time_to_target` judges it), so a cell never stops before its time to the target is known."""

    def __init__(self, target: dict):
        self.metric, self.value, self.stop_after = target["metric"], target["value"], target["stop_after"]
        self.reached: int | None = None
        self.points: list[dict] = []  # the progress points so far (tens per epoch: small)

    def _check(self, values: dict, epoch: int) -> None:
        v = values.get(self.metric)
        if self.reached is None and v is not None and v <= self.value:
            self.reached = epoch

    def on_point(self, point: dict) -> None:
        self.points.append(point)
        mean = trailing_mean_at(self.points, len(self.points) - 1, self.metric)
        # a point inside epoch e has e-1 < epoch <= e
        self._check({self.metric: mean}, math.ceil(point["epoch"]))

    def on_epoch_end(self, row: dict) -> bool:
        if self.metric not in PROGRESS_METRICS:  # a progress metric is judged at its points alone
            self._check(row, row["epoch"])
        return self.reached is not None and row["epoch"] >= self.reached + self.stop_after


def _cell_row(cell: Cell, profile: str) -> dict:
    """The columns a cell's row has before it runs: study, levels, seed, configuration."""
    cfg = cell.config
    row = {
        "study": cell.study,
        "profile": profile,
        "cell_id": cell.id,
        **cell.levels,
        "is_baseline": cell.is_baseline,
        "seed": cfg.seed,
    }
    row.update({f"cfg_{k}": v for k, v in cfg.to_dict().items() if k not in ("knobs", "seed", "device")})
    row.update({f"knob_{k}": v for k, v in cfg.knobs.items()})
    return row


def run_cell(
    cell: Cell,
    device: str,
    measure: str,
    target: dict | None,
    profile: str,
    progress: bool = True,
    speeds: dict | None = None,
    data=None,
    tensorboard: str | None = None,
) -> CellResult:
    """Train one cell and measure its model; any failure becomes the row's status and error.

    `speeds` (configuration without seed -> measured row) lets the seeds of a configuration share
    one measurement: the cost of a step does not depend on the seed's weights. `data` is the
    cell's data set when the caller has it (a Ray task gets it from the object store);
    otherwise it is loaded here, once per study. `tensorboard` (a folder) gets the cell's
    per-epoch history as TensorBoard scalars, one run per cell named by its levels and seed.
    """
    cfg = cell.config.replace(device=device)
    start = time.perf_counter()
    row = _cell_row(cell, profile)
    history: list[dict] = []
    points: list[dict] = []
    stopper = _Stopper(target) if target is not None and "stop_after" in target else None
    try:
        dev = pick_device(device)
        row.update(_env_columns(dev))
        data = data if data is not None else _data_for(cfg)
        scalars = _scalars(tensorboard, cell, profile)
        try:
            result = train(cfg, data, progress=progress, hooks=[h for h in (scalars, stopper) if h is not None])
        finally:
            if scalars is not None:
                scalars.close()
        history, points = result.history, result.progress
        row["status"], row["error"] = result.status, None
        row.update({k: v for k, v in result.summary.items() if k not in ("status",)})
        model = result.model
        row.update(count_model(model, getattr(model, "input_size", 32)), flop_convention=FLOP_CONVENTION)
        if measure != "none" and result.status == OK:
            key = json.dumps([cfg.replace(seed=0).to_dict(), measure], sort_keys=True, default=str)
            measured = (speeds or {}).get(key)
            if measured is None:
                speed = measure_throughput(
                    model,
                    batch_size=cfg.batch_size,
                    device=dev,
                    dtype=resolve_dtype(dev, cfg.dtype),
                    memory_format="channels_last" if cfg.channels_last else "contiguous",
                    quick=measure == "quick",
                )
                measured = {
                    **{k: v for k, v in speed.items() if k not in ("error", "batch_size")},
                    "measure_batch_size": speed["batch_size"],
                    "measure_error": speed["error"],
                    "measure_cell_id": cell.id,
                }  # the cell whose model was timed
                if speeds is not None and speed["error"] is None:  # a failure is measured again, not copied
                    speeds[key] = measured
            row.update(measured)
        del model, result
    except Exception as e:  # noqa: BLE001 -- a failed cell is a row; the sweep goes on
        row["status"] = OOM if is_oom(e) else ERROR
        row["error"] = f"{type(e).__name__}: {e}".splitlines()[0][:500]
        log.debug("cell %s failed:\n%s", cell.id, traceback.format_exc())
    return _finish(cell, profile, target, row, history, time.perf_counter() - start, points)


def failed_result(
    cell: Cell, profile: str, target: dict | None, status: str, message: str, wall_seconds: float | None = None
) -> CellResult:
    """The row of a cell that produced none itself: its process died, or its data never reached it."""
    row = {**_cell_row(cell, profile), "status": status, "error": message.splitlines()[0][:500] if message else None}
    return _finish(cell, profile, target, row, [], wall_seconds)


def _finish(
    cell: Cell,
    profile: str,
    target: dict | None,
    row: dict,
    history: list[dict],
    wall_seconds: float | None,
    points: list[dict] = (),
) -> CellResult:
    if target is not None:
        row["target_metric"], row["target_value"] = target["metric"], target["value"]
        row.update(time_to_target(history, points, target["metric"], target["value"]))
    row["wall_seconds"] = wall_seconds
    row["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    keys = {"study": cell.study, "profile": profile, "cell_id": cell.id, **cell.levels, "seed": cell.config.seed}
    return CellResult(row, [{**keys, **h} for h in history], [{**keys, **p} for p in points])


def _env_columns(device: torch.device) -> dict:
    env = environment(device)
    # hostname: on a cluster, which machine ran the cell
    keep = ("device", "device_name", "torch", "torchvision", "cuda", "cudnn", "hostname", "git_commit")
    return {k: env.get(k) for k in keep}


# --- executors -----------------------------------------------------------------------


class CellFn(Protocol):
    """What an executor runs: one cell on one device, and the row for a cell that could not run."""

    def __call__(self, cell: Cell, device: str, data=None) -> CellResult: ...

    def failed(self, cell: Cell, status: str, message: str, wall_seconds: float | None = None) -> CellResult: ...


class Executor(Protocol):
    """Places cells and yields their results as they finish; only the caller writes files."""

    def environment(self) -> dict:
        """Where the cells run, for environment.json; an impossible setting fails here, before any cell."""
        ...

    def run(self, cells: list[Cell], fn: CellFn) -> Iterator[CellResult]: ...


class LocalExecutor:
    """One cell at a time in this process, on one device."""

    def __init__(self, device: str = "auto"):
        self.device = device

    def environment(self) -> dict:
        return {"executor": "local", **environment(pick_device(self.device))}

    def run(self, cells, fn):
        for cell in cells:
            yield fn(cell, self.device)


def make_executor(device: str) -> Executor:
    if device in ("auto", "cuda") and torch.cuda.is_available() and torch.cuda.device_count() > 1:
        log.info(
            "%d GPUs visible; this sweep uses one (--executor ray runs one cell per GPU)", torch.cuda.device_count()
        )
    return LocalExecutor(device)


# --- the sweep -----------------------------------------------------------------------


@dataclass
class _BoundCell:
    """`run_cell` with the study's settings bound; plain data, so it travels to worker processes."""

    measure: str
    target: dict | None
    profile: str
    progress: bool
    speeds: dict = field(default_factory=dict)  # one sweep's measurements, shared by a configuration's seeds
    tensorboard: str | None = None  # a folder for per-cell TensorBoard runs (a shared path on a cluster)

    def __call__(self, cell: Cell, device: str, data=None) -> CellResult:
        return run_cell(
            cell, device, self.measure, self.target, self.profile, self.progress, self.speeds, data, self.tensorboard
        )

    def failed(self, cell: Cell, status: str, message: str, wall_seconds: float | None = None) -> CellResult:
        return failed_result(cell, self.profile, self.target, status, message, wall_seconds)


def _scalars(tensorboard: str | None, cell: Cell, profile: str) -> EpochScalars | None:
    """The cell's TensorBoard run (a hook), or None without `tensorboard`."""
    if tensorboard is None:
        return None
    levels = ",".join(f"{k}={v}" for k, v in cell.levels.items())
    return EpochScalars(Path(tensorboard) / cell.study / profile, f"{levels},seed={cell.config.seed}")


def run_study(
    study: Study,
    profile: str,
    *,
    out_root: Path = Path("results"),
    seeds: list[int] | None = None,
    overrides: dict | None = None,
    device: str = "auto",
    executor: Executor | None = None,
    progress: bool = True,
    tensorboard: str | None = None,
) -> pd.DataFrame:
    """Run every unfinished cell of `study` at `profile`; return the whole runs table.

    A two-stage profile (`confirm_seeds`) then runs its confirming seeds at the levels its seeds
    chose (`bench.sweep.choice`, by the rule the study file names: `tune_lr` or `fastest_lr_per`).
    `seeds` given here run as asked, with no second stage.
    """
    cells = study.cells(profile, seeds, overrides)
    confirm = study.confirm_seeds(profile) if seeds is None else []
    out = Path(out_root) / study.name / profile
    out.mkdir(parents=True, exist_ok=True)
    with _sweep_lock(out):
        stage = "the grid" if confirm else ""
        runs = _sweep(study, profile, cells, out, device, executor, progress, tensorboard, later=confirm, stage=stage)
        if confirm:
            more = confirming_cells(out, study, profile, confirm, overrides, {c.config.seed for c in cells})
            also = {c.id for c in cells}
            runs = _sweep(
                study, profile, more, out, device, executor, progress, tensorboard, also=also, stage="confirming seeds"
            )
        return runs


@contextlib.contextmanager
def _sweep_lock(folder: Path):
    """Hold `folder` for one sweep: two sweeps rewriting the same tables would lose rows.

    The lock dies with its process (kill -9 included), so it never needs clearing by hand.
    """
    try:
        import fcntl
    except ImportError:  # no advisory locks here (Windows): one sweep per folder is up to the user
        yield
        return
    with open(folder / LOCK, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(
                f"another sweep is writing {folder}; wait for it to finish, or give this one another --out"
            ) from None
        yield


def _sweep(
    study: Study,
    profile: str,
    cells: list[Cell],
    out: Path,
    device: str,
    executor: Executor | None,
    progress: bool,
    tensorboard: str | None = None,
    *,
    also: set[str] = frozenset(),
    later: list[int] = (),
    stage: str = "",
) -> pd.DataFrame:
    """Run `cells`; rows of `also` (cell ids) or of `later` seeds belong to this run's other stage."""
    results = ResultsFolder(out, ["study", "profile", "status", *study.factors])
    results.clear_temporary()
    results.merge()  # cells recorded by a sweep that was killed before it merged them
    results.record_design(study.design_at(profile))  # which columns are factors: the report reads it
    runs = results.runs()
    finished = set(runs.loc[runs["status"].isin(FINISHED), "cell_id"]) if len(runs) else set()
    todo = [c for c in cells if c.id not in finished]
    mine = {c.id for c in cells} | set(also)
    stale = 0
    if len(runs):
        of_later = runs["seed"].isin(list(later)) if "seed" in runs else False
        stale = int((~runs["cell_id"].isin(mine) & ~of_later).sum())
    if stale:
        log.warning(
            "%s: %d rows are cells this run does not define (other seeds or an older study file); they are kept",
            results.runs_path,
            stale,
        )
    log.info(
        "%s/%s%s: %d cells, %d finished, %d to run",
        study.name,
        profile,
        f" ({stage})" if stage else "",
        len(cells),
        len(cells) - len(todo),
        len(todo),
    )
    if not todo:
        return runs
    executor = executor or make_executor(device)
    env = executor.environment()  # an impossible device fails before anything runs
    atomic_write_text(
        out / "environment.json",
        json.dumps(
            {"study": study.name, "profile": profile, "study_file": str(study.path), **env}, indent=2, default=str
        ),
    )
    measure = study.profiles[profile].get("measure", "quick")
    fn = _BoundCell(measure, study.target, profile, progress, tensorboard=tensorboard)
    merges = _MergeClock()
    try:
        with logging_redirect_tqdm(), contextlib.closing(executor.run(todo, fn)) as finished_cells:
            bar = tqdm(
                total=len(todo), desc=f"{study.name}/{profile} cells", unit="cell", disable=None if progress else True
            )
            for result in finished_cells:
                results.record(result.row, result.history, result.progress)
                bar.update()
                log.info("%s", _one_line(result.row, study))
                if merges.due():
                    merges.timed(results.merge)
            bar.close()
    finally:  # Ctrl-C included: every recorded cell reaches the tables
        results.merge()
    return results.runs()  # the table as saved, with the types a reader of the file sees


class _MergeClock:
    """Merge often enough that runs.csv stays current, rarely enough that merging (which grows
    with the tables) stays under MERGE_SHARE of the time: after a merge that took t seconds,
    the next waits t * (1 - share) / share."""

    def __init__(self):
        self.last_end = time.perf_counter()
        self.last_cost = 0.0

    def due(self) -> bool:
        return time.perf_counter() - self.last_end >= self.last_cost * (1 - MERGE_SHARE) / MERGE_SHARE

    def timed(self, merge) -> None:
        start = time.perf_counter()
        merge()
        self.last_end = time.perf_counter()
        self.last_cost = self.last_end - start


def _one_line(row: dict, study: Study) -> str:
    levels = " ".join(f"{f}={row.get(f)}" for f in study.factors)
    if row["status"] not in FINISHED:
        return f"[{row['status']}] {levels} seed={row['seed']}: {row['error']}"
    err = row.get("final_test_top1_err_pct")
    text = (
        f"[{row['status']}] {levels} seed={row['seed']}: test err {err:.2f}%"
        if err is not None
        else f"[{row['status']}] {levels}"
    )
    if row.get("epochs_to_target") is not None:
        text += f", {row['target_metric']}<={row['target_value']} at epoch {row['epochs_to_target']:.2f}"
    return text + f" ({row['wall_seconds']:.0f} s)"
