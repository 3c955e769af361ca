"""`ablate --jobs N`: cells packed on one device, each in its own worker process.

Packed or one at a time, every cell writes its own row, and the rows hold the same
numbers; a worker that dies becomes its cell's error row and the others go on.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pandas as pd
import pytest

from bench.cli import main
from bench.device import threads_per_cell
from bench.errors import UserError
from bench.measure.packing import measure_packing
from bench.sweep.packed import PackedExecutor
from bench.sweep.runner import CellResult
from bench.sweep.study import load_study

# Two seeds, two activations; a validation split and a clean-training subset, so packed rows carry both.
TINY = dict(seeds=[0, 1], train_per_class=8, test_per_class=4, batch_size=8, epochs=2, val_size=20, train_eval_size=12)

# Columns that differ between two runs of the same cell for reasons other than its numbers.
RUN_DEPENDENT = ("wall_seconds", "finished_at", "train_seconds", "median_train_images_per_s", "hostname", "git_commit")


def read_runs(folder: Path) -> pd.DataFrame:
    return pd.read_csv(folder / "runs.csv", dtype={"cell_id": str}).set_index("cell_id").sort_index()


def test_packed_cells_write_the_same_rows_as_one_at_a_time(tmp_path, tiny_study_file):
    tiny_study_file(**TINY)
    common = ["ablate", "--study", str(tmp_path / "tiny.toml"), "--profile", "smoke", "--no-progress", "--no-report"]
    assert main([*common, "--out", str(tmp_path / "alone")]) == 0
    assert main([*common, "--out", str(tmp_path / "packed"), "--jobs", "2"]) == 0
    alone, packed = (read_runs(tmp_path / where / "tiny" / "smoke") for where in ("alone", "packed"))
    assert len(alone) == 4 and set(alone["status"]) == {"ok"}
    assert list(packed.index) == list(alone.index)  # every cell once, each its own row
    assert (packed["packed_cells"] == 2).all() and "packed_cells" not in alone
    assert alone["best_val_top1_err_pct"].notna().all()
    columns = [c for c in alone.columns if c not in RUN_DEPENDENT]
    pd.testing.assert_frame_equal(packed[columns], alone[columns], check_dtype=False)
    folder = tmp_path / "packed" / "tiny" / "smoke"
    hist = pd.read_csv(folder / "history.csv")
    assert len(hist) == 2 * len(packed) and not hist.duplicated(["cell_id", "epoch"]).any()
    assert json.loads((folder / "environment.json").read_text())["packed_cells"] == 2


class _DiesOnTanh:
    """A cell function whose worker process dies (as from kill -9) on the tanh cells."""

    def __call__(self, cell, device, data=None):
        if cell.levels["activation"] == "tanh":
            os.kill(os.getpid(), signal.SIGKILL)
        return CellResult({"cell_id": cell.id, "status": "ok"}, [])

    def failed(self, cell, status, message, wall_seconds=None):
        return CellResult({"cell_id": cell.id, "status": status, "error": message}, [])


def test_a_dead_worker_is_its_cells_error_row_and_the_others_finish(tmp_path, tiny_study_file):
    """The dying cells first: both workers die on their first cell, and only their replacements
    can run the other two."""
    tiny_study_file(**TINY)
    cells = sorted(
        load_study(str(tmp_path / "tiny.toml")).cells("smoke"), key=lambda c: c.levels["activation"] != "tanh"
    )
    assert [c.levels["activation"] for c in cells] == ["tanh", "tanh", "relu", "relu"]
    rows = [r.row for r in PackedExecutor("cpu", jobs=2).run(cells, _DiesOnTanh())]
    by_id = {r["cell_id"]: r for r in rows}
    assert sorted(by_id) == sorted(c.id for c in cells)  # every cell once: none lost, none twice
    for cell in cells:
        row = by_id[cell.id]
        if cell.levels["activation"] == "tanh":
            assert row["status"] == "error" and "died (exit code -9)" in row["error"]
        else:
            assert row["status"] == "ok"
        assert row["packed_cells"] == 2


@pytest.mark.parametrize(("jobs", "threads", "each"), [(1, 2, 2), (2, 2, 1), (4, 2, 1), (2, 16, 8), (3, 16, 5)])
def test_packed_cells_share_the_threads(jobs, threads, each):
    assert threads_per_cell(jobs, threads) == each


@pytest.mark.parametrize("argv", [["--jobs", "0"], ["--jobs", "two"], ["--jobs", "2", "--executor", "ray"]])
def test_bad_jobs_is_a_one_line_error(tmp_path, tiny_study_file, argv, capsys):
    tiny_study_file(**TINY)
    with pytest.raises(SystemExit) as exit_:
        code = main(
            ["ablate", "--study", str(tmp_path / "tiny.toml"), "--profile", "smoke", "--out", str(tmp_path), *argv]
        )
        raise SystemExit(code)
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "--jobs" in err[-1] and "Traceback" not in "\n".join(err)


def test_packing_measurement_has_a_row_per_count_with_the_ratio_to_one_cell():
    table = measure_packing("lenet5", device="cpu", packs=(1, 2), batch_size=4, rounds=2, round_s=0.01)
    assert list(table["packed_cells"]) == [1, 2]
    assert (table["train_images_per_s"] > 0).all() and table["total_vs_fewest"].iloc[0] == 1.0
    # total = N x per cell, from the same median round
    assert table["train_images_per_s"].tolist() == pytest.approx((table["per_cell_images_per_s"] * [1, 2]).tolist())
    assert table["device"].iloc[0] == "cpu" and table["steps_per_cell"].iloc[0] >= 3


@pytest.mark.parametrize("packs", [(), (0, 1), (2, 2)])
def test_packing_refuses_impossible_counts(packs):
    with pytest.raises(UserError, match="packs"):
        measure_packing("lenet5", device="cpu", packs=packs)


def test_measure_packs_writes_one_row_per_count(tmp_path, capsys):
    out = tmp_path / "packing.csv"
    argv = ["measure", "--model", "lenet5", "--device", "cpu", "--packs", "1,2", "--quick", "--batch-size", "4"]
    assert main([*argv, "--out", str(out)]) == 0
    table = pd.read_csv(out)
    assert list(table["packed_cells"]) == [1, 2] and set(table["model"]) == {"lenet5"}
    assert "total_vs_fewest" in capsys.readouterr().out
    assert main([*argv, "--out", str(out)]) == 0  # measured again: its rows replaced, not appended
    assert len(pd.read_csv(out)) == 2


@pytest.mark.parametrize("packs", ["0", "1,1", "two", ""])
def test_bad_packs_is_a_one_line_error(packs, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["measure", "--model", "lenet5", "--packs", packs])
    assert exit_.value.code == 2
    assert "--packs" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("jobs", "to_run", "confirm", "expected", "said"),
    [
        (64, 2, [], 2, ["--jobs 64, and 2 cells to run: 2 run at a time (runs.csv packed_cells = 2)"]),
        (2, 8, [], 2, []),
        (1, 8, [], 1, []),
        (64, 8, [], 8, ["--jobs 64, and 8 cells to run: 8 run at a time", "8 cells at once on 2 CPU cores"]),
        (4, 2, [1, 2], 4, ["4 cells at once on 2 CPU cores"]),  # two stages: each capped as it starts
    ],
)
def test_jobs_records_the_packing_used_and_says_so(monkeypatch, caplog, jobs, to_run, confirm, expected, said):
    """`ablate --jobs 64` on 2 cores: never more at once than there are cells to run (runs.csv's
    packed_cells qualifies each throughput number), and a word on each thing overridden."""
    import argparse
    import logging

    from bench import ablate

    monkeypatch.setattr(ablate.os, "cpu_count", lambda: 2)
    study = argparse.Namespace(name="tiny", confirm_seeds=lambda profile: confirm)
    args = argparse.Namespace(executor="local", jobs=jobs, device="cpu", seeds=None)
    with caplog.at_level(logging.WARNING):
        assert ablate._jobs(args, study, "smoke", to_run) == expected
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == len(said)
    for message, needle in zip(messages, said):
        assert message.startswith("tiny/smoke: ") and needle in message, message
