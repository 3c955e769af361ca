"""Data-parallel training (`torchrun -m bench train`): two gloo processes on the CPU train as one process does.

Each DDP case runs torchrun once (two workers) and the same command once in this
process, then compares the curves. The models are dropout- and batch-norm-free, so
the only difference left is float summation order: the all-reduce adds two
half-batch gradients where one process sums the whole batch's. Observed differences
are ~1e-7 relative; `RTOL` leaves room for that drift to grow over the steps and
still catches a wrong order, slice or augmentation, which moves a step's loss by
~1e-2.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import REPO, write_tree

from bench.cli import main
from bench.data import DataSpec, load_data, parse_augment

RTOL = 1e-4
RUN_FILES = {"config.json", "history.csv", "progress.csv", "summary.json", "checkpoint.pt"}
COMMON = ["--model", "lenet5", "--epochs", "2", "--device", "cpu", "--no-progress", "--lr", "0.05"]


def read_csv(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def column(rows: list[dict], name: str) -> list[float]:
    return [float(r[name]) for r in rows]


def torchrun(args: list[str], cwd) -> subprocess.CompletedProcess:
    # --standalone: torchrun finds a free port itself (no race with a port picked here).
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        "OMP_NUM_THREADS": "1",
    }
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            "-m",
            "bench",
            "train",
            *args,
        ],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def case_args(name: str, tmp_path) -> list[str]:
    if name == "synthetic, augment none":
        return [
            "--data",
            "synthetic",
            "--train-per-class",
            "20",
            "--test-per-class",
            "2",
            "--val-size",
            "10",
            "--train-eval-size",
            "20",
            "--batch-size",
            "20",
            "--augment",
            "none",
        ]
    # 12 folder images less 1 held out: batches of 4, 4 and 3, the last split 1 and 2 over
    # the ranks; the folder is decoded into the cache by rank 0 before rank 1 reads it.
    tree = write_tree(tmp_path / "tree")
    return ["--data", str(tree.path), "--val-size", "1", "--batch-size", "4", "--augment", "crop+flip"]


@pytest.mark.parametrize("name", ["synthetic, augment none", "folder, crop+flip, uneven last batch"])
def test_torchrun_matches_one_process(name, tmp_path, capsys):
    args = COMMON + case_args(name, tmp_path)
    assert main(["train", *args, "--out", str(tmp_path / "single")]) == 0
    cwd = tmp_path / "ddp"
    cwd.mkdir()
    done = torchrun(args, cwd)
    assert done.returncode == 0, done.stderr[-3000:]

    # One run folder, named by rank 0, holding one set of files, and nothing else written.
    (run,) = (cwd / "results" / "runs").iterdir()
    assert {p.name for p in run.iterdir()} == RUN_FILES
    assert sorted(str(p.relative_to(cwd)) for p in cwd.rglob("*") if p.is_file()) == sorted(
        str((run / f).relative_to(cwd)) for f in RUN_FILES
    )
    assert done.stderr.count("epoch 1: running train loss") == 1  # rank 0 logs, rank 1 does not
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["status"] == "ok"
    assert json.loads((run / "config.json").read_text())["environment"]["world_size"] == 2

    single = tmp_path / "single"
    for table, names in (
        ("progress.csv", ["train_running_loss"]),
        ("history.csv", ["train_running_loss", "test_loss", "val_loss", "train_clean_loss"]),
    ):
        want, got = read_csv(single / table), read_csv(run / table)
        assert len(got) == len(want)
        for c in names:
            assert column(got, c) == pytest.approx(column(want, c), rel=RTOL), (table, c)
    # The curve moves: a comparison of flat curves would pass with the batches in any order.
    steps = column(read_csv(run / "progress.csv"), "train_running_loss")
    assert max(steps) - min(steps) > 100 * RTOL * max(steps)


def test_batch_size_must_split_over_the_processes(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    out = tmp_path / "run"
    code = main(
        ["train", *COMMON, "--data", "synthetic", "--train-per-class", "2", "--batch-size", "15", "--out", str(out)]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.count("\n") == 0 and "batch_size 15 does not split over 2 processes" in err
    assert not out.exists() and not torch.distributed.is_initialized()


@pytest.mark.parametrize("augment", ["none", "crop+flip+pca"])
def test_shards_of_a_batch_are_the_batch(augment):
    """Each rank's slice, put back together, is the single-process batch, image for image."""
    data = load_data(DataSpec(source="synthetic", train_per_class=3, test_per_class=1, val_size=0), cache_dir=None)
    aug = parse_augment(augment)

    def batches(split, shard=None):
        g = torch.Generator().manual_seed(7) if split == "train" else None
        return list(data.batches(split, 7, augment=aug if split == "train" else frozenset(), generator=g, shard=shard))

    for split in ("train", "test"):
        whole = batches(split)
        parts = [batches(split, (r, 3)) for r in range(3)]
        assert len(whole) > 1 and all(len(p) == len(whole) for p in parts)
        for i, (x, y) in enumerate(whole):
            sizes = [len(p[i][1]) for p in parts]
            assert sum(sizes) == len(y) and max(sizes) - min(sizes) <= 1
            assert torch.equal(torch.cat([p[i][0] for p in parts]), x)
            assert torch.equal(torch.cat([p[i][1] for p in parts]), y)
