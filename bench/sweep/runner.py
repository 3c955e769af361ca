"""Run a study's cells into tidy tables, resumably.

results/<study>/<profile>/
    runs.csv          one row per cell: factor levels, config, data source, counts,
                      throughput, errors, time to target, status
    history.csv       one row per cell per epoch
    progress.csv      one row per cell per progress point (LOG_PER_EPOCH per epoch):
                      step, fractional epoch, running training error and loss, seconds
    environment.json  device, versions, git commit of the latest sweep

Time to a target (steps_to_target, epochs_to_target, seconds_to_target) is
interpolated between the points where the metric is logged (`bench.train.target`):
the progress points for the running training error, the epochs otherwise.

Each finished cell rewrites the tables whole through a temporary file and a
rename, runs.csv last: a sweep killed at any moment loses at most the cell in
flight, and a history row whose cell never reached runs.csv is dropped on resume.
Running again skips cells that finished (ok or diverged) and retries failed ones.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Protocol

import multiprocessing
import pandas as pd
import torch
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from bench.device import is_oom, pick_device
from bench.env import environment
from bench.errors import UserError
from bench.io import atomic_write_text, read_csv, write_csv
from bench.sweep.study import Cell, Study
from bench.train.result import ERROR, FINISHED, OK, OOM
from bench.train.target import crossing

log = logging.getLogger(__name__)

LOCK = ".sweep.lock"  # in the results folder, held while a sweep writes there


@dataclass
class CellResult:
    row: dict
    history: list[dict]
    progress: list[dict] = field(default_factory=list)


# --- one cell ------------------------------------------------------------------------

_DATA_MEMO: dict = {}  # DataSpec -> Dataset (on the CPU), so cells of a study share one load


def _data_for(cfg):
    from bench.data import load_data
    from bench.train import data_spec

    spec = data_spec(cfg)
    if spec not in _DATA_MEMO:
        _DATA_MEMO.clear()  # keep at most one data set in memory
        _DATA_MEMO[spec] = load_data(spec)
    return _DATA_MEMO[spec]


PROGRESS_METRICS = ("train_running_err_pct", "train_running_loss")  # logged LOG_PER_EPOCH times per epoch


def time_to_target(history: list[dict], progress: list[dict], metric: str, value: float) -> dict:
    """Steps, epochs (fractional) and training seconds at which `metric` first falls to `value`
    or below, interpolated between the points where it is logged; None where never reached.

    A metric of the progress points uses them; an evaluated one (val, test, clean training
    error) uses the epochs, whose positions are the end of each epoch.
    """
    if metric in PROGRESS_METRICS:
        points = progress
    else:
        points, seconds = [], 0.0
        for h in history:
            seconds += h.get("epoch_seconds", 0.0)
            points.append({**h, "train_seconds": seconds})
    at = {"steps_to_target": "step", "epochs_to_target": "epoch", "seconds_to_target": "train_seconds"}
    return {name: crossing(points, metric, value, pos) if all(pos in p for p in points) else None
            for name, pos in at.items()}


class _Stopper:
    """Ends training `stop_after` epochs after the epoch in which the target is first reached."""

    def __init__(self, target: dict):
        self.metric, self.value, self.stop_after = target["metric"], target["value"], target["stop_after"]
        self.reached: int | None = None

    def _check(self, values: dict, epoch: int) -> None:
        v = values.get(self.metric)
        if self.reached is None and v is not None and v <= self.value:
            self.reached = epoch

    def on_point(self, point: dict) -> None:
        self._check(point, math.ceil(point["epoch"]))  # a point inside epoch e has e-1 < epoch <= e

    def on_epoch(self, row: dict) -> bool:
        self._check(row, row["epoch"])
        return self.reached is not None and row["epoch"] >= self.reached + self.stop_after


def run_cell(cell: Cell, device: str, measure: str, target: dict | None, profile: str,
             progress: bool = True) -> CellResult:
    """Train one cell and measure its model; any failure becomes the row's status and error."""
    from bench.measure import FLOP_CONVENTION, count_model, measure_throughput
    from bench.train import train

    cfg = cell.config.replace(device=device)
    start = time.perf_counter()
    row = {"study": cell.study, "profile": profile, "cell_id": cell.id, **cell.levels,
           "is_baseline": cell.is_baseline, "seed": cfg.seed}
    row.update({f"cfg_{k}": v for k, v in cfg.to_dict().items() if k not in ("knobs", "seed", "device")})
    row.update({f"knob_{k}": v for k, v in cfg.knobs.items()})
    history: list[dict] = []
    points: list[dict] = []
    stopper = _Stopper(target) if target is not None and "stop_after" in target else None
    try:
        dev = pick_device(device)
        row.update(_env_columns(dev))
        data = _data_for(cfg)
        result = train(cfg, data, progress=progress, on_epoch=stopper and stopper.on_epoch,
                       on_point=stopper and stopper.on_point)
        history, points = result.history, result.progress
        row["status"], row["error"] = result.status, None
        row.update({k: v for k, v in result.summary.items() if k not in ("status",)})
        model = result.model
        row.update(count_model(model, getattr(model, "input_size", 32)), flop_convention=FLOP_CONVENTION)
        if measure != "none" and result.status == OK:
            speed = measure_throughput(model, batch_size=cfg.batch_size, device=dev, dtype=cfg.dtype,
                                       memory_format="channels_last" if cfg.channels_last else "contiguous",
                                       quick=measure == "quick")
            row.update({k: v for k, v in speed.items() if k != "error"},
                       measure_batch_size=speed["batch_size"], measure_error=speed["error"])
            row.pop("batch_size", None)
        del model, result
    except Exception as e:  # a failed cell is a row; the sweep goes on
        row["status"] = OOM if is_oom(e) else ERROR
        row["error"] = f"{type(e).__name__}: {e}".splitlines()[0][:500]
        log.debug("cell %s failed:\n%s", cell.id, traceback.format_exc())
    if target is not None:
        row["target_metric"], row["target_value"] = target["metric"], target["value"]
        row.update(time_to_target(history, points, target["metric"], target["value"]))
    row["wall_seconds"] = time.perf_counter() - start
    row["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    keys = {"study": cell.study, "profile": profile, "cell_id": cell.id, **cell.levels, "seed": cfg.seed}
    return CellResult(row, [{**keys, **h} for h in history], [{**keys, **p} for p in points])


def _env_columns(device: torch.device) -> dict:
    env = environment(device)
    keep = ("device", "device_name", "torch", "torchvision", "cuda", "cudnn", "git_commit")
    return {k: env.get(k) for k in keep}


# --- executors -----------------------------------------------------------------------

class Executor(Protocol):
    """Runs cells and yields their results as they finish; a cluster engine implements this too."""

    def run(self, cells: list[Cell], fn: Callable[[Cell, str], CellResult]) -> Iterator[CellResult]: ...


class LocalExecutor:
    """One cell at a time in this process, on one device."""

    def __init__(self, device: str = "auto"):
        self.device = device

    def run(self, cells, fn):
        for cell in cells:
            yield fn(cell, self.device)


class MultiGPUExecutor:
    """One cell per GPU at a time, each in its own spawned process; the parent alone writes files."""

    def __init__(self, devices: list[str]):
        self.devices = devices

    def run(self, cells, fn):
        ctx = multiprocessing.get_context("spawn")  # CUDA cannot be forked
        free = list(self.devices)
        pending = list(cells)
        with ProcessPoolExecutor(max_workers=len(self.devices), mp_context=ctx) as pool:
            running = {}
            while pending or running:
                while pending and free:
                    dev = free.pop()
                    running[pool.submit(fn, pending.pop(0), dev)] = dev
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for fut in done:
                    free.append(running.pop(fut))
                    yield fut.result()


def make_executor(device: str) -> Executor:
    if device in ("auto", "cuda") and torch.cuda.is_available() and torch.cuda.device_count() > 1:
        return MultiGPUExecutor([f"cuda:{i}" for i in range(torch.cuda.device_count())])
    return LocalExecutor(device)


# --- the sweep -----------------------------------------------------------------------

def _read_csv(path: Path, text_columns: Iterable[str] = ()) -> pd.DataFrame:
    """A table this runner wrote, with its ids and factor levels as text; empty if absent."""
    if not path.exists() or path.stat().st_size == 0:
        return pd.DataFrame()
    try:
        return read_csv(path, ("cell_id", *text_columns))
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not a table this runner can read ({type(e).__name__}); "
                        f"move it aside to start the study afresh") from None


def _cell_fn(measure, target, profile, progress):
    # A module-level callable with bound arguments stays picklable for spawned workers.
    return _BoundCell(measure, target, profile, progress)


@dataclass
class _BoundCell:
    measure: str
    target: dict | None
    profile: str
    progress: bool

    def __call__(self, cell: Cell, device: str) -> CellResult:
        return run_cell(cell, device, self.measure, self.target, self.profile, self.progress)


def run_study(study: Study, profile: str, *, out_root: Path = Path("results"), seeds: list[int] | None = None,
              overrides: dict | None = None, device: str = "auto", executor: Executor | None = None,
              progress: bool = True) -> pd.DataFrame:
    """Run every unfinished cell of `study` at `profile`; return the whole runs table."""
    cells = study.cells(profile, seeds, overrides)
    out = Path(out_root) / study.name / profile
    out.mkdir(parents=True, exist_ok=True)
    with _sweep_lock(out):
        return _sweep(study, profile, cells, out, device, executor, progress)


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
            raise UserError(f"another sweep is writing {folder}; wait for it to finish, "
                            f"or give this one another --out") from None
        yield


def _sweep(study: Study, profile: str, cells: list[Cell], out: Path, device: str,
           executor: Executor | None, progress: bool) -> pd.DataFrame:
    runs_path, hist_path, prog_path = out / "runs.csv", out / "history.csv", out / "progress.csv"
    text = ["study", "profile", "status", *study.factors]
    runs, hist, prog = _read_csv(runs_path, text), _read_csv(hist_path), _read_csv(prog_path)
    finished = set(runs.loc[runs["status"].isin(FINISHED), "cell_id"]) if len(runs) else set()
    todo = [c for c in cells if c.id not in finished]
    stale = len(set(runs["cell_id"]) - {c.id for c in cells}) if len(runs) else 0
    if stale:
        log.warning("%s: %d rows are cells this run does not define (other seeds or an older study "
                    "file); they are kept", runs_path, stale)
    log.info("%s/%s: %d cells, %d finished, %d to run", study.name, profile, len(cells), len(cells) - len(todo), len(todo))
    if not todo:
        return runs
    for stale in out.glob(".*.tmp"):  # left by a sweep killed mid-write; the real files are intact
        stale.unlink(missing_ok=True)
    pick_device(device)  # an impossible device fails before anything runs
    atomic_write_text(out / "environment.json", json.dumps(
        {"study": study.name, "profile": profile, "study_file": str(study.path), **environment(pick_device(device))},
        indent=2, default=str))
    executor = executor or make_executor(device)
    measure = study.profiles[profile].get("measure", "quick")
    fn = _cell_fn(measure, study.target, profile, progress)
    with logging_redirect_tqdm():
        bar = tqdm(total=len(todo), desc=f"{study.name}/{profile} cells", unit="cell", disable=None if progress else True)
        for result in executor.run(todo, fn):
            prog = _append_points(prog, runs, result)
            runs, hist = _append(runs, hist, result)
            write_csv(hist_path, hist)
            write_csv(prog_path, prog)
            write_csv(runs_path, runs)
            bar.update()
            log.info("%s", _one_line(result.row, study))
        bar.close()
    return _read_csv(runs_path, text)  # the table as saved, with the types a reader of the file sees


def _append(runs: pd.DataFrame, hist: pd.DataFrame, result: CellResult) -> tuple[pd.DataFrame, pd.DataFrame]:
    cid = result.row["cell_id"]
    if len(runs):
        runs = runs[runs["cell_id"] != cid]
        # history rows of cells absent from runs.csv are leftovers of an interrupted cell
        hist = hist[hist["cell_id"].isin(set(runs["cell_id"]))] if len(hist) else hist
    else:
        hist = pd.DataFrame()
    new_hist = pd.DataFrame(result.history)
    runs = pd.concat([runs, pd.DataFrame([result.row])], ignore_index=True) if len(runs) else pd.DataFrame([result.row])
    if len(new_hist):
        hist = pd.concat([hist, new_hist], ignore_index=True) if len(hist) else new_hist
    return runs, hist


def _append_points(prog: pd.DataFrame, runs: pd.DataFrame, result: CellResult) -> pd.DataFrame:
    """progress.csv with `result`'s points: rows of cells not finished in runs.csv (an interrupted
    cell, or this cell's earlier try) are dropped, as in history.csv."""
    if len(prog):
        done = set(runs["cell_id"]) - {result.row["cell_id"]} if len(runs) else set()
        prog = prog[prog["cell_id"].isin(done)]
    new = pd.DataFrame(result.progress)
    if not len(new):
        return prog
    return pd.concat([prog, new], ignore_index=True) if len(prog) else new


def _one_line(row: dict, study: Study) -> str:
    levels = " ".join(f"{f}={row.get(f)}" for f in study.factors)
    if row["status"] not in FINISHED:
        return f"[{row['status']}] {levels} seed={row['seed']}: {row['error']}"
    err = row.get("final_test_top1_err_pct")
    text = f"[{row['status']}] {levels} seed={row['seed']}: test err {err:.2f}%" if err is not None else f"[{row['status']}] {levels}"
    if row.get("epochs_to_target") is not None:
        text += f", {row['target_metric']}<={row['target_value']} at epoch {row['epochs_to_target']:.2f}"
    return text + f" ({row['wall_seconds']:.0f} s)"
