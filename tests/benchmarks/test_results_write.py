"""Recording a finished cell costs the same whether the results folder holds 10 cells or 2,000.

Run: python -m pytest tests/benchmarks/test_results_write.py --benchmark-only -p no:cacheprovider

Group `record one cell`: what the sweep does as each cell finishes (bench.sweep.results:
one small file, written whole). With 2,000 cells x 30 history rows already in runs.csv
and history.csv its median may be at most twice the median at 10 cells; the test fails
otherwise. Group `merge one cell`: folding one recorded cell into the tables, which
grows with them (it is what the runner used to do after every cell, and now does at the
start, at the end, and in between only as often as keeps it under a tenth of the time).
"""

from __future__ import annotations

import itertools

import pytest

from bench.io import write_csv
from bench.sweep.results import ResultsFolder

SIZES = (10, 2000)  # cells already recorded
EPOCHS = 30  # history rows per cell
ROUNDS = 60
_medians: dict = {}


def cell(i: int) -> tuple[dict, list[dict]]:
    """A runs row and its history shaped like a real cell's: ~60 columns, 30 epochs."""
    cid = f"{i:012x}"
    keys = {"study": "bench", "profile": "gpu", "cell_id": cid, "activation": ("relu", "tanh")[i % 2], "seed": i % 3}
    row = {
        **keys,
        "is_baseline": False,
        "status": "ok",
        "error": None,
        "device": "cuda",
        "torch": "2.14.1",
        **{f"cfg_{k}": 0.01 * k for k in range(20)},
        **{f"metric_{k}": i / (k + 1) for k in range(30)},
    }
    history = [
        {
            **keys,
            "epoch": e,
            "train_running_loss": 2.3 / e,
            "train_running_err_pct": 90.0 / e,
            "test_loss": 2.2 / e,
            "test_top1_err_pct": 88.0 / e,
            "test_top5_err_pct": 50.0 / e,
            "lr": 0.01,
            "epoch_seconds": 12.5,
            "train_images_per_s": 4000.0 + e,
            "elapsed_seconds": 12.5 * e,
        }
        for e in range(1, EPOCHS + 1)
    ]
    return row, history


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict:
    """A results folder per size, its tables already holding that many cells (as after a merge)."""
    made = {}
    for n in SIZES:
        folder = ResultsFolder(tmp_path_factory.mktemp(f"results-{n}"), ["activation"])
        cells = [cell(i) for i in range(n)]
        write_csv(folder.history_path, [h for _, hist in cells for h in hist])
        write_csv(folder.runs_path, [row for row, _ in cells])
        made[n] = folder
    return made


def _next_cells():
    ids = itertools.count(10_000_000)
    return lambda: (cell(next(ids)), {})


@pytest.mark.parametrize("n_cells", SIZES)
def test_record_one_cell(benchmark, folders, n_cells):
    benchmark.group = "record one cell"
    benchmark.extra_info.update(cells_recorded=n_cells, history_rows_per_cell=EPOCHS)
    folder = folders[n_cells]
    benchmark.pedantic(folder.record, setup=_next_cells(), rounds=ROUNDS, warmup_rounds=3)
    if benchmark.stats is None:  # --benchmark-disable: nothing was timed
        return
    _medians[n_cells] = benchmark.stats.stats.median
    small, large = SIZES
    if n_cells == large and small in _medians:
        assert _medians[large] <= 2 * _medians[small], (
            f"recording a cell took {_medians[large] * 1e3:.2f} ms with {large} cells recorded, "
            f"more than twice the {_medians[small] * 1e3:.2f} ms with {small}"
        )


@pytest.mark.parametrize("n_cells", SIZES)
def test_merge_one_cell(benchmark, folders, n_cells):
    benchmark.group = "merge one cell"
    benchmark.extra_info.update(cells_recorded=n_cells, history_rows_per_cell=EPOCHS)
    folder = folders[n_cells]
    next_cell = _next_cells()

    def record_one():
        folder.record(*next_cell()[0])
        return (), {}

    benchmark.pedantic(folder.merge, setup=record_one, rounds=5, warmup_rounds=1)
