"""Every bad input we know of, through the real command line: one line, exit status 2, nothing written.

Each case is `python -m bench ARGS` in its own process and its own empty working
folder (so `results/` is the case's own), with its own data cache. What each must
do: exit status 2; exactly one line on stderr, naming the bad value (and no
traceback); nothing on stdout; the working folder (results/ included) exactly as
it was. The cases run through `tests/forked_cli.py`, which imports torch once and
forks a process per case: ~90 fresh interpreters would cost minutes of imports.
`test_forked_runs_match_fresh_interpreters` runs one case per command in a fresh
`python -m bench` too, to show the two give the same.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import io
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.tiny import CHECKPOINT_EDITS, TRAIN_ARGS, cli_env, study_toml

REPO = Path(__file__).resolve().parents[1]
PROG = "python -m bench"
NOWHERE = "/proc/bench-nowhere"  # no one, root included, can create anything under /proc
TINY = TRAIN_ARGS  # tests/tiny.py: 2 training and 1 test synthetic image per class, one epoch
QUICK_MEASURE = ["--model", "lenet5", "--quick", "--device", "cpu"]
STUDY = study_toml()  # tests/tiny.py: the tiny net, factor activation, a smoke profile
ABLATE = ["--study", "{shared}/tiny.toml", "--profile", "smoke", "--no-progress", "--no-report"]
# runs.csv as a sweep writes it (levels between cell_id and is_baseline; status mid-row), two cells
RUNS_HEADER = (
    "study,profile,cell_id,activation,is_baseline,seed,cfg_model,cfg_epochs,device,status,error,"
    "final_test_top1_err_pct,final_train_running_err_pct,epochs_run,params_total,finished_at"
)
RUNS_ROWS = [
    "tiny,smoke,aaaaaaaaaaaa,relu,True,0,layers-80sec,1,cpu,ok,,71.5,80.25,1,79510,2024-01-01T00:00:00",
    "tiny,smoke,bbbbbbbbbbbb,tanh,False,0,layers-80sec,1,cpu,ok,,73.5,82.5,1,79510,2024-01-01T00:01:00",
]


@dataclass
class Case:
    """`python -m bench ARGV` in `<case>/work/`. In ARGV and ENV, {case} is the case's folder,
    {work} its working folder and {shared} the folder of the shared inputs (`_shared_inputs`)."""

    argv: list[str]
    needles: tuple[str, ...]  # what the one stderr line must name
    setup: Callable[[Path], None] | None = None  # makes inputs in the case's folder (results under work/)
    env: dict = field(default_factory=dict)
    permission_bits: bool = False  # a read-only folder case: its process obeys permission bits, root too


def _train(*args: str, needles, **kw) -> Case:
    return Case(["train", *TINY, "--out", "results/run", *args], needles, **kw)


def _measure(*args: str, needles, **kw) -> Case:
    return Case(["measure", *QUICK_MEASURE, *args], needles, **kw)


def _ablate(*args: str, needles, **kw) -> Case:
    return Case(["ablate", *ABLATE, *args], needles, **kw)


def _write(path: Path, text: str | bytes) -> Callable[[Path], None]:
    """A setup that writes `text` at `path` (relative to the case's folder)."""

    def setup(case: Path) -> None:
        target = case / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(text) if isinstance(text, bytes) else target.write_text(text)

    return setup


def _runs(text: str | bytes) -> Callable[[Path], None]:
    return _write(Path("work/results/tiny/smoke/runs.csv"), text)


def _locked(case: Path) -> None:
    (case / "locked").mkdir(mode=0o500)


GATE = ["--storage", "{case}/gate", "--device", "cpu", "--quick", "--model", "lenet5"]


def _baseline(edit: Callable[[dict], None]) -> Callable[[Path], None]:
    """A setup that saves baseline `base` for this CPU under {case}/gate as the gate would, edited by `edit`."""

    def setup(case: Path) -> None:
        import torch

        from bench.env import environment
        from bench.gate.suite import device_id, resolve_options

        env = environment("cpu")
        settings = resolve_options(device=torch.device("cpu"), quick=True, models="lenet5").recorded()
        entry = {"name": "test_train[lenet5]", "group": "train", "stats": {"median": 0.1, "min": 0.1, "iqr": 0.0},
                 "extra_info": {"phase": "train", "case": "lenet5", "images_per_round": 100}}  # fmt: skip
        run = {"machine_info": {"bench": {"environment": env, "settings": settings}}, "benchmarks": [entry]}
        edit(run)
        _write(Path("gate") / device_id(env) / "machine" / "0001_base.json", json.dumps(run))(case)

    return setup


def _zero_round_times(run: dict) -> None:
    run["benchmarks"][0]["stats"].update(median=0.0, min=0.0)


@functools.cache
def _checkpoint_bytes() -> bytes:
    """An (untrained) layers-80sec checkpoint of 2 synthetic images per class, as `train` saves one."""
    import tempfile

    from bench.data import load_data
    from bench.models import create_model
    from bench.train.checkpoint import save_checkpoint
    from bench.train.config import TrainConfig
    from bench.train.dataspec import data_spec

    cfg = TrainConfig(data="synthetic", train_per_class=2, test_per_class=1, augment="none", device="cpu", val_size=0)
    with tempfile.TemporaryDirectory() as tmp:
        path = save_checkpoint(Path(tmp) / "c.pt", create_model(cfg.model), cfg, load_data(data_spec(cfg), None), {})
        return path.read_bytes()


def _checkpoint(edit: Callable[[dict], None] | None = None) -> Callable[[Path], None]:
    """A setup that writes that checkpoint, edited by `edit`, as work/run/checkpoint.pt."""

    def setup(case: Path) -> None:
        import torch

        raw = torch.load(io.BytesIO(_checkpoint_bytes()), weights_only=True)
        if edit is not None:
            edit(raw)
        target = case / "work" / "run" / "checkpoint.pt"
        target.parent.mkdir(parents=True, exist_ok=True)
        torch.save(raw, target)

    return setup


def _both(*setups: Callable[[Path], None]) -> Callable[[Path], None]:
    def setup(case: Path) -> None:
        for one in setups:
            one(case)

    return setup


def _predict(setup, needles, *args: str) -> Case:
    return Case(["predict", "run", "{shared}/good/test/cat/0000.png", "--device", "cpu", *args], needles, setup)


def _evaluate(setup, needles, *args: str) -> Case:
    return Case(["evaluate", "run", "--device", "cpu", *args], needles, setup)


CASES: dict[str, Case] = {
    # --- train: the cases of tests/test_cli.py ---
    "train unknown model": _train("--model", "alexnett", needles=("unknown model 'alexnett'", "layers-80sec")),
    "train unknown knob": _train("--knob", "widht=2", needles=("no knob widht", "activation")),
    "train bad augment": _train("--augment", "crop+blur", needles=("unknown augmentation 'blur'",)),
    "train bad schedule": _train("--schedule", "linear", needles=("schedule='linear'", "constant, cosine, step")),
    "train missing data path": _train("--data", "{case}/nowhere.tar.gz", needles=("does not exist",)),
    "train folder without train": _train("--data", "{shared}/no-train", needles=("no train/ sub-folder",)),
    "train epochs not an int": _train("--epochs", "three", needles=("argument --epochs", "invalid int value")),
    "train epochs 1e12 as text": _train("--epochs", "1e12", needles=("argument --epochs", "invalid int value")),
    "train knob not key=value": _train("--knob", "tanh", needles=("not key=value", "--knob activation=tanh")),
    "train bad preprocess": _train("--preprocess", "zca", needles=("preprocess='zca'", "standardize, meanonly")),
    "train bad init": _train("--init", "xavier", needles=("init='xavier'", "default, kaiming, paper")),
    "train bad device": _train("--device", "tpu", needles=("device='tpu'", "cpu")),
    "train zero epochs": _train("--epochs", "0", needles=("epochs must be at least 1",)),
    "train negative lr": _train("--lr", "-0.1", needles=("lr must be",)),
    "train negative momentum": _train("--momentum", "-1", needles=("momentum must be 0 or more, got -1.0",)),
    "train negative weight decay": _train("--weight-decay=-0.001", needles=("weight_decay must be",)),
    "train bad activation": _train("--knob", "activation=swish", needles=("swish", "relu, tanh")),
    "train absent cuda device": _train("--device", "cuda:99", needles=("cuda:99",)),
    "train subset of zero": _train("--train-per-class", "0", needles=("at least 1",)),
    "train offline cifar10": _train(
        "--data", "cifar10", "--data-root", "{case}/empty-root", needles=("could not be downloaded", "--data-root")
    ),
    "train out folder not empty": _train(
        "--out",
        "results/taken",
        needles=("already exists", "--out"),
        setup=_write(Path("work/results/taken/summary.json"), "{}"),
    ),
    "train out is a file": _train("--out", "a-file", needles=("--out",), setup=_write(Path("work/a-file"), "keep")),
    # --- train: the probe's cases ---
    "train out under /proc": _train("--out", f"{NOWHERE}/run", needles=("--out", NOWHERE)),
    "train out under a file": _train(
        "--out", "a-file/run", needles=("--out", "a-file", "not a folder"), setup=_write(Path("work/a-file"), "keep")
    ),
    "train out in a read-only folder": _train(
        "--out", "{case}/locked/run", needles=("--out", "locked"), setup=_locked, permission_bits=True
    ),
    "train tensorboard in a read-only folder": _train(
        "--tensorboard", "{case}/locked/tb", needles=("--tensorboard", "locked"), setup=_locked, permission_bits=True
    ),
    "train seed overflow": _train("--seed", "99999999999999999999", needles=("seed", "99999999999999999999")),
    "train negative seed": _train("--seed", "-1", needles=("seed", "-1")),
    "train warm-up longer than the run": _train("--warmup-epochs", "5", needles=("warmup_epochs", "5")),
    "train width 1e-4": _train("--model", "alexnet", "--knob", "width=1e-4", needles=("width=0.0001",)),
    "train width 1e6": _train("--model", "alexnet", "--knob", "width=1e6", needles=("width=1000000",)),
    "train conv_width 1e-4": _train("--model", "alexnet", "--knob", "conv_width=1e-4", needles=("conv_width",)),
    "train same knob twice": _train(
        "--knob", "activation=tanh", "--knob", "activation=relu", needles=("activation", "twice")
    ),
    "train epochs 1e12": _train("--epochs", "1000000000000", needles=("epochs", "10000")),
    "train lr inf": _train("--lr", "inf", needles=("lr", "inf")),
    "train lr nan": _train("--lr", "nan", needles=("lr", "nan")),
    "train weight decay inf": _train("--weight-decay", "inf", needles=("weight_decay", "inf")),
    # --- train: data (bench.data) ---
    "train one-class data set": _train("--data", "{shared}/one-class", needles=("1 class", "at least 2 classes")),
    "train mixed image sizes": _train("--data", "{shared}/mixed", needles=("differ in size", "--image-size 32")),
    "train corrupt jpeg": _train("--data", "{shared}/corrupt", needles=("cannot read image", "0001.jpg")),
    "train BENCH_CACHE is a file": _train(
        "--data",
        "{shared}/good",
        needles=("BENCH_CACHE", "is a file"),
        env={"BENCH_CACHE": "{case}/cache-file"},
        setup=_write(Path("cache-file"), ""),
    ),
    "train BENCH_CACHE under /proc": _train(
        "--data", "{shared}/good", needles=("BENCH_CACHE", "not writable"), env={"BENCH_CACHE": f"{NOWHERE}/cache"}
    ),
    "train offline cifar10 into a new folder": _train(
        "--data", "cifar10", "--data-root", "new/data", needles=("could not be downloaded",)
    ),
    # --- measure ---
    "measure out under /proc": _measure("--out", f"{NOWHERE}/m.csv", needles=("--out", NOWHERE)),
    "measure out under a file": _measure(
        "--out", "a-file/m.csv", needles=("--out", "a-file"), setup=_write(Path("work/a-file"), "keep")
    ),
    "measure out in a read-only folder": _measure(
        "--out", "{case}/locked/m.csv", needles=("--out", "locked"), setup=_locked, permission_bits=True
    ),
    "measure out is a folder": _measure(
        "--out", "results", needles=("--out", ".csv"), setup=_write(Path("work/results/keep.txt"), "")
    ),
    "measure unreadable saved table": _measure(
        "--out",
        "results/m.csv",
        needles=("results/m.csv", "readable"),
        setup=_write(Path("work/results/m.csv"), b"\xff\xfe\x00garbage\n"),
    ),
    "measure unknown model": _measure("--model", "nope", needles=("--model 'nope' matches no model",)),
    "measure bad dtype": _measure("--dtype", "fp64", needles=("dtype='fp64'", "fp32, bf16")),
    "measure zero batch": _measure("--batch-size", "0", needles=("batch_size must be at least 1",)),
    "measure absent cuda device": _measure("--device", "cuda:7", needles=("cuda:7",)),
    "measure modes with dtype": _measure("--modes", "fp32", "--dtype", "bf16", needles=("--modes",)),
    "measure bad mode": _measure("--modes", "fp32,warp", needles=("--modes", "warp")),
    "measure empty modes": _measure("--modes", "", needles=("--modes", "names no mode")),
    "measure mode twice": _measure("--modes", "fp32,fp32", needles=("--modes", "lists fp32 twice")),
    "measure unknown knob": _measure("--model", "alexnet", "--knob", "widht=2", needles=("no knob widht",)),
    "measure bad knob value": _measure("--model", "alexnet", "--knob", "activation=swish", needles=("swish",)),
    "measure width 1e-4": _measure("--model", "alexnet", "--knob", "width=1e-4", needles=("width=0.0001",)),
    "measure same knob twice": _measure(
        "--model", "alexnet", "--knob", "width=0.5", "--knob", "width=0.25", needles=("width", "twice")
    ),
    # --- ablate ---
    "ablate out under /proc": _ablate("--out", f"{NOWHERE}/results", needles=("--out", NOWHERE)),
    "ablate out is a file": _ablate(
        "--out", "a-file", needles=("--out", "a-file"), setup=_write(Path("work/a-file"), "keep")
    ),
    "ablate out under a file": _ablate(
        "--out", "a-file/results", needles=("--out", "a-file"), setup=_write(Path("work/a-file"), "keep")
    ),
    "ablate out in a read-only folder": _ablate(
        "--out", "{case}/locked/results", needles=("--out", "locked"), setup=_locked, permission_bits=True
    ),
    "ablate seed overflow": _ablate("--seeds", "99999999999999999999", needles=("seed", "99999999999999999999")),
    "ablate corrupt jpeg in the data": _ablate("--data", "{shared}/corrupt", needles=("cannot read image",)),
    "ablate absent cuda device": _ablate("--device", "cuda:7", needles=("cuda:7",)),
    "ablate bad seeds": _ablate("--seeds", "abc", needles=("--seeds", "not a comma-separated list")),
    "ablate empty seeds": _ablate("--seeds", ",", needles=("--seeds", "at least one integer")),
    "ablate unknown profile": _ablate("--profile", "huge", needles=("huge",)),
    "ablate unknown study": Case(["ablate", "--study", "nope", "--profile", "smoke"], ("unknown study 'nope'",)),
    "ablate study with a bad key": Case(
        ["ablate", "--study", "{case}/bad.toml", "--profile", "smoke"],
        ("lrr",),
        setup=_write(Path("bad.toml"), STUDY.replace("[base]", "[base]\nlrr = 1")),
    ),
    "ablate study name escaping --out": Case(
        ["ablate", "--study", "{case}/esc.toml", "--profile", "smoke", "--out", "deep/results", "--no-progress"],
        ("study.name='../../esc' is not a valid study name", "letters, digits"),
        setup=_write(Path("esc.toml"), STUDY.replace('name = "tiny"', 'name = "../../esc"')),
    ),
    "ablate study name a number": Case(
        ["ablate", "--study", "{case}/five.toml", "--profile", "smoke", "--no-progress"],
        ("study.name=5 is not a valid study name",),
        setup=_write(Path("five.toml"), STUDY.replace('name = "tiny"', "name = 5")),
    ),
    "ablate level listed twice": Case(
        ["ablate", "--study", "{case}/twice.toml", "--profile", "smoke", "--no-progress"],
        ("factors.activation.levels lists 'relu' twice", "list it once"),
        setup=_write(Path("twice.toml"), STUDY.replace('["relu", "tanh"]', '["relu", "relu", "tanh"]')),
    ),
    "ablate learning rate listed twice": Case(
        ["ablate", "--study", "{case}/lr.toml", "--profile", "smoke", "--no-progress"],
        ("factors.lr.levels lists '0.1' twice", "list it once"),
        setup=_write(Path("lr.toml"), STUDY + '\n[factors.lr]\nkey = "lr"\nlevels = [0.1, 0.10]\n'),
    ),
    "ablate target nan": Case(
        ["ablate", "--study", "{case}/nan.toml", "--profile", "smoke", "--no-progress"],
        ("study.target.value=nan is not a finite number",),
        setup=_write(
            Path("nan.toml"),
            STUDY.replace("seeds = [0]", 'seeds = [0]\ntarget = { metric = "train_running_err_pct", value = nan }'),
        ),
    ),
    "ablate cell record without status": _ablate(
        needles=("cccccccccccc.json", "its row has no status", "move it aside"),
        setup=lambda case: (
            _runs("\n".join([RUNS_HEADER, *RUNS_ROWS]) + "\n")(case),
            _write(
                Path("work/results/tiny/smoke/cells/cccccccccccc.json"),
                json.dumps({"row": {"cell_id": "cccccccccccc", "seed": 0}, "history": [], "progress": []}),
            )(case),
        ),
    ),
    "ablate runs.csv without status column": _ablate(
        needles=("runs.csv has no status column", "move it aside"),
        setup=_runs(
            "\n".join(",".join(f for i, f in enumerate(r.split(",")) if i != 9) for r in [RUNS_HEADER, *RUNS_ROWS])
            + "\n"
        ),
    ),
    "ablate ray option without ray": _ablate("--gpus-per-cell", "0.5", needles=("--gpus-per-cell applies to",)),
    "ablate missing data path": _ablate("--data", "{case}/nowhere", needles=("does not exist",)),
    "ablate unreadable runs.csv": _ablate(needles=("runs.csv",), setup=_runs(b"\xff\xfe\x00\x01garbage\n")),
    "ablate torn runs.csv": _ablate(
        needles=("runs.csv", "line 4", "torn"), setup=_runs("\n".join([RUNS_HEADER, *RUNS_ROWS, RUNS_ROWS[1][:60]]))
    ),
    # --- report ---
    "report missing path": Case(["report", "{case}/nowhere"], ("does not exist",)),
    "report folder without runs.csv": Case(
        ["report", "results"], ("no runs.csv",), setup=_write(Path("work/results/notes.txt"), "")
    ),
    "report unreadable runs.csv": Case(
        ["report", "results/tiny/smoke"], ("runs.csv",), setup=_runs(b"\xff\xfe\x00\x01garbage\n")
    ),
    "report zero-byte runs.csv": Case(["report", "results/tiny/smoke"], ("runs.csv", "empty"), setup=_runs("")),
    "report header-torn runs.csv": Case(
        ["report", "results/tiny/smoke"], ("runs.csv", "header"), setup=_runs(RUNS_HEADER[:23])
    ),
    "report header torn above rows": Case(
        ["report", "results/tiny/smoke"],
        ("runs.csv", "line 2"),
        setup=_runs(RUNS_HEADER[:40] + "\n" + "\n".join(RUNS_ROWS) + "\n"),
    ),
    "report torn last row": Case(
        ["report", "results/tiny/smoke"],
        ("runs.csv", "line 4", "torn"),
        setup=_runs("\n".join([RUNS_HEADER, *RUNS_ROWS, RUNS_ROWS[1][:60]])),
    ),
    "report row without status": Case(
        ["report", "results/tiny/smoke"],
        ("runs.csv", "line 3", "status"),
        setup=_runs("\n".join([RUNS_HEADER, RUNS_ROWS[0], RUNS_ROWS[1].replace(",ok,", ",,")]) + "\n"),
    ),
    "report row with extra fields": Case(
        ["report", "results/tiny/smoke"],
        ("runs.csv", "line 3"),
        setup=_runs("\n".join([RUNS_HEADER, RUNS_ROWS[0], RUNS_ROWS[1] + ",x,y"]) + "\n"),
    ),
    "report read-only folder": Case(
        ["report", "{case}/locked"],
        ("locked", "cannot write the report there", "somewhere writable"),
        setup=lambda case: (
            _write(Path("locked/runs.csv"), "\n".join([RUNS_HEADER, *RUNS_ROWS]) + "\n")(case),
            (case / "locked").chmod(0o500),
        ),  # fmt: skip
        permission_bits=True,
    ),
    # --- gate ---
    "gate storage under /proc": Case(
        ["gate", "--save", "base", "--storage", f"{NOWHERE}/gate", "--quick", "--model", "lenet5"],
        ("--storage", NOWHERE),
    ),
    "gate storage is a file": Case(
        ["gate", "--save", "base", "--storage", "a-file", "--quick", "--model", "lenet5"],
        ("--storage", "a-file"),
        setup=_write(Path("work/a-file"), "keep"),
    ),
    "gate storage in a read-only folder": Case(
        ["gate", "--save", "base", "--storage", "{case}/locked/gate", "--quick", "--model", "lenet5"],
        ("--storage", "locked"),
        setup=_locked,
        permission_bits=True,
    ),
    "gate report under /proc": Case(
        ["gate", "--compare", "base", "--storage", "{case}", "--report", f"{NOWHERE}/r.csv"], ("--report", NOWHERE)
    ),
    "gate no baseline": Case(["gate", "--compare", "nope", "--storage", "{case}"], ("no baseline 'nope'",)),
    "gate bad threshold": Case(["gate", "--compare", "x", "--threshold", "2"], ("--threshold",)),
    "gate even repeat": Case(["gate", "--compare", "x", "--repeat", "2"], ("--repeat must be an odd number",)),
    "gate bad stat": Case(["gate", "--compare", "x", "--stat", "mean"], ("--stat 'mean'",)),
    "gate bad name": Case(["gate", "--save", "bad name!"], ("baseline name 'bad name!'",)),
    "gate device after --": Case(["gate", "--save", "x", "--", "--bench-device", "cpu"], ("give --device before --",)),
    "gate models match nothing": Case(["gate", "--save", "x", "--model", "zzz*"], ("zzz",)),
    "gate suite option after --": Case(["gate", "--save", "x", "--", "--quick"], ("give --quick before --",)),
    "gate width 1e-4": Case(["gate", "--save", "x", "--width", "1e-4"], ("--width", "0.0001")),
    "gate baseline with an empty environment": Case(
        ["gate", "--compare", "base", *GATE],
        ("0001_base.json", "records no device", "--save"),
        setup=_baseline(lambda run: run["machine_info"]["bench"].update(environment={})),
    ),
    "gate baseline with zero round times": Case(
        ["gate", "--compare", "base", *GATE],
        ("0001_base.json", "test_train[lenet5]", "median round time of 0.0 s", "--save"),
        setup=_baseline(_zero_round_times),
    ),
    "gate baseline without extra_info": Case(
        ["gate", "--compare", "base", *GATE],
        ("0001_base.json", "test_train[lenet5]", "images_per_round", "--save"),
        setup=_baseline(lambda run: run["benchmarks"][0].pop("extra_info")),
    ),
    # --- predict and evaluate: a checkpoint edited by hand ---
    "predict a text file as the checkpoint": _predict(
        _write(Path("work/run/checkpoint.pt"), CHECKPOINT_EDITS["a text file"]),
        ("run/checkpoint.pt", "not a PyTorch checkpoint", "b'weights: see the'"),
    ),
    "predict checkpoint with a wrong class count": _predict(
        _checkpoint(CHECKPOINT_EDITS["wrong class count"]),
        ("run/checkpoint.pt", "5 class names", "10 outputs"),
    ),
    "predict checkpoint with a dropped weight": _predict(
        _checkpoint(CHECKPOINT_EDITS["a dropped weight"]),  # the first: features.0.weight
        ("run/checkpoint.pt", "do not fit layers-80sec", "no features.0.weight"),
    ),
    "predict checkpoint with a reshaped weight": _predict(
        _checkpoint(CHECKPOINT_EDITS["a reshaped weight"]),
        ("run/checkpoint.pt", "features.0.weight is [2400] in the checkpoint, [32, 3, 5, 5] in the model"),
    ),
    "predict checkpoint without a model name": _predict(
        _checkpoint(CHECKPOINT_EDITS["missing model name"]), ("run/checkpoint.pt", "no model.name")
    ),
    "predict checkpoint with an unknown model": _predict(
        _checkpoint(lambda raw: raw["model"].update(name="alexnett")), ("run/checkpoint.pt", "unknown model 'alexnett'")
    ),
    "predict checkpoint with input size big": _predict(
        _checkpoint(CHECKPOINT_EDITS['input size "big"']),
        ("run/checkpoint.pt", "model.input_size='big'", "whole number"),
    ),
    "predict checkpoint with a bad normalisation mode": _predict(
        _checkpoint(CHECKPOINT_EDITS['normalisation "zca"']),
        ("run/checkpoint.pt", "normalization.mode='zca'", "standardize, meanonly"),
    ),
    "evaluate checkpoint with a dropped weight": _evaluate(
        _checkpoint(lambda raw: raw["state_dict"].pop("classifier.3.bias")), ("no classifier.3.bias",)
    ),
    "evaluate checkpoint with input size big": _evaluate(
        _checkpoint(CHECKPOINT_EDITS['input size "big"']), ("model.input_size='big'",)
    ),
    # --- evaluate: options ---
    "evaluate test-per-class 0": _evaluate(
        _checkpoint(), ("--test-per-class 0", "at least 1"), "--test-per-class", "0"
    ),
    "evaluate out is a file": _evaluate(
        _both(_checkpoint(), _write(Path("work/a-file"), "keep")), ("--out", "a-file", "a folder"), "--out", "a-file"
    ),
    "evaluate out under /proc": _evaluate(_checkpoint(), ("--out", NOWHERE), "--out", f"{NOWHERE}/eval"),
    "evaluate out in a read-only folder": Case(
        ["evaluate", "run", "--device", "cpu", "--out", "{case}/locked/eval"],
        ("--out", "locked"),
        setup=_both(_checkpoint(), _locked),
        permission_bits=True,
    ),
}


def _unreadable_cache(case: Path) -> None:
    """A cache file of the `good` folder that loads only with weights_only=False."""
    import pathlib

    import torch

    from bench.data import DataSpec, load_data

    load_data(DataSpec(source=str(case.parent / "shared" / "good")), cache_dir=case / "cache")
    (cached,) = (case / "cache").glob("*.pt")
    torch.save({"train_x": pathlib.PurePosixPath("not/a/tensor")}, cached)


# Inputs that must work, with one warning line: (case, what the warning must say, what it must not).
GOOD_CASES = {
    "train with an unreadable data cache": (
        _train("--data", "{shared}/good", "--val-size", "0", needles=(), setup=_unreadable_cache),
        ("unreadable", "objects other than tensors", "decoding the source again"),
        "weights_only",
    ),
}


def _shared_inputs(folder: Path) -> None:
    """Image folders and the study file that several cases read (none of them writes here)."""
    rng = np.random.default_rng(0)

    def image(path: Path, size=(32, 32)) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)

    for tree in ("good", "mixed", "corrupt"):
        for split, n in (("train", 2), ("test", 1)):  # TINY asks for 2 training and 1 test image per class
            for cls in ("cat", "dog"):
                for i in range(n):
                    image(folder / tree / split / cls / f"000{i}.png")
    image(folder / "mixed" / "train" / "dog" / "0001.png", size=(20, 24))
    jpeg = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(jpeg, format="JPEG")
    (folder / "corrupt" / "train" / "dog" / "0001.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    for split in ("train", "test"):
        image(folder / "one-class" / split / "cat" / "0000.png")
        image(folder / "one-class" / split / "cat" / "0001.png")
    (folder / "no-train" / "test" / "cat").mkdir(parents=True)
    (folder / "tiny.toml").write_text(STUDY)


def case_env(cache: Path) -> dict:
    return cli_env(cache)  # tests/tiny.py: no BENCH_/RAY_ settings from the shell, downloads fail at once


def snapshot(folder: Path) -> dict:
    """Every path under `folder`, with a file's content hash: what must not change."""
    if not folder.exists():
        return {}
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(folder.rglob("*"))
    }


def prepare(base: Path, names) -> tuple[dict, dict]:
    """The forked_cli cases and each case's snapshot of its working folder before the run."""
    shared = base / "shared"
    _shared_inputs(shared)
    specs, before = {}, {}
    for name in names:
        case = CASES[name] if name in CASES else GOOD_CASES[name][0]
        where = base / name.replace(" ", "-").replace("/", "_")
        (where / "work").mkdir(parents=True)
        if case.setup:
            case.setup(where)
        fill = {"case": where, "work": where / "work", "shared": shared}
        env = case_env(where / "cache")
        env.update({k: v.format(**fill) for k, v in case.env.items()})
        specs[name] = {
            "argv": [a.format(**fill) for a in case.argv],
            "cwd": str(where / "work"),
            "env": env,
            "timeout": 120,
            "obey_permission_bits": case.permission_bits,
        }
        before[name] = snapshot(where / "work")
    return specs, before


def runnable(name: str) -> bool:
    # As root on anything but Linux, nothing can take root's permission overrides away.
    return name in GOOD_CASES or not CASES[name].permission_bits or os.geteuid() != 0 or sys.platform == "linux"


def selected(session) -> set[str]:
    """The cases the collected tests of this module ask for (`-k` may pick a few)."""
    here = [item for item in session.items if item.module.__name__ == __name__]
    names = {i.callspec.params["name"] for i in here if hasattr(i, "callspec") and "name" in i.callspec.params}
    if any(item.originalname == "test_forked_runs_match_fresh_interpreters" for item in here):
        names |= set(FRESH)
    return names


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory, request):
    """case -> (result, working folder before, after): each runnable case selected, forked from one process."""
    base = tmp_path_factory.mktemp("bad-input")
    wanted = selected(request.session)
    names = [n for n in [*CASES, *GOOD_CASES] if runnable(n) and n in wanted]
    specs, before = prepare(base, names)
    (base / "cases.json").write_text(json.dumps(specs))
    done = subprocess.run(
        [sys.executable, str(REPO / "tests" / "forked_cli.py"), str(base / "cases.json"), str(base / "results.json")],
        env=case_env(base / "runner-cache"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((base / "results.json").read_text())
    for result in results.values():
        result["base"] = str(base)
    return {n: (results[n], before[n], snapshot(Path(specs[n]["cwd"]))) for n in names}


@pytest.mark.parametrize("name", CASES)
def test_bad_input_is_one_line_exit_2_and_changes_nothing(name, outcomes):
    if not runnable(name):
        pytest.skip("root writes through permission bits")
    result, before, after = outcomes[name]
    err = result["stderr"]
    assert "Traceback" not in err, err
    assert result["returncode"] == 2, (result["returncode"], err[-2000:])
    lines = err.splitlines()
    assert len(lines) == 1, err  # no warnings, no log lines: the error alone
    assert lines[0].startswith(("error:", f"{PROG} ")), err
    for needle in CASES[name].needles:
        assert needle in lines[0], (needle, lines[0])
    assert result["stdout"] == ""
    assert after == before  # results/ (and everything else where it ran) untouched


@pytest.mark.parametrize("name", GOOD_CASES)
def test_good_input_runs_with_one_clear_warning(name, outcomes):
    result, _, _ = outcomes[name]
    _, says, never = GOOD_CASES[name]
    assert result["returncode"] == 0 and "Traceback" not in result["stderr"], result["stderr"][-2000:]
    (warning,) = [line for line in result["stderr"].splitlines() if says[0] in line]
    assert all(s in warning for s in says) and never not in warning


# One case of a command that imports torch, one of a command that does not.
FRESH = ("train seed overflow", "report torn last row")


def test_forked_runs_match_fresh_interpreters(outcomes, tmp_path):
    """The same cases as plain `python -m bench` processes: the same status, message and (no) files."""
    specs, before = prepare(tmp_path, FRESH)
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-m", "bench", *specs[name]["argv"]],
            cwd=specs[name]["cwd"],
            env=specs[name]["env"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in FRESH
    }
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        forked, _, _ = outcomes[name]
        assert proc.returncode == forked["returncode"] == 2, (name, err)
        # The message may name the case's folder, which differs between the two runs.
        assert err.replace(str(tmp_path), "BASE") == forked["stderr"].replace(forked["base"], "BASE"), name
        assert out == forked["stdout"] == ""
        assert snapshot(Path(specs[name]["cwd"])) == before[name]


def test_measure_prints_its_table_before_writing_it(tmp_path, monkeypatch, capsys):
    """A write that fails after the measuring (a disk that filled meanwhile) still shows what was measured."""
    import bench.measure.command
    from bench.cli import main

    def disk_full(path, frame):
        print("-- write_csv called --")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(bench.measure.command, "write_csv", disk_full)
    with pytest.raises(OSError, match="No space left"):
        main(["measure", *QUICK_MEASURE, "--batch-size", "2", "--out", str(tmp_path / "m.csv")])
    out = capsys.readouterr().out
    assert "lenet5" in out and out.index("lenet5") < out.index("-- write_csv called --")


def _disk_fills_after(monkeypatch, room: int) -> None:
    """From now on every file `bench.io` writes runs out of space (ENOSPC) after `room` bytes."""
    import bench.io

    real = os.fdopen

    class Filling:
        def __init__(self, f):
            self.f, self.written = f, 0

        def write(self, data):
            self.written += len(data)
            if self.written > room:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self.f.write(data)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(bench.io.os, "fdopen", lambda *a, **kw: Filling(real(*a, **kw)))


def test_a_full_disk_keeps_the_old_file_and_leaves_no_partial_one(tmp_path, monkeypatch):
    from bench.errors import UserError
    from bench.io import atomic_write_text

    target = tmp_path / "summary.json"
    target.write_text("old")
    _disk_fills_after(monkeypatch, 4)
    with pytest.raises(UserError) as e:
        atomic_write_text(target, "new, longer than the room left")
    assert f"could not write {target}: No space left on device" in str(e.value) and "\n" not in str(e.value)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_train_on_a_full_disk_is_one_line_and_leaves_no_run_folder(tmp_path, monkeypatch, capsys):
    """The checkpoint (~300 KB) does not fit; the history and summary (< 2 KB each) would: torch.save's own
    error (a RuntimeError wrapping the OSError) is one line too, and no unfinished run folder is left."""
    from bench.cli import main

    _disk_fills_after(monkeypatch, 50_000)
    out = tmp_path / "results" / "run"
    assert main(["train", *TINY, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = [line for line in err.splitlines() if line.startswith("error:")]
    assert f"could not write {out / 'checkpoint.pt'}: No space left on device" in line, line
    assert f"removed the unfinished run folder {out}" in line, line
    assert not out.exists() and not list((tmp_path / "results").rglob("*"))


def test_a_data_cache_that_does_not_fit_is_one_warning_and_no_partial_file(tmp_path, monkeypatch, caplog):
    """The decoded data is kept in memory and used; only the cache file (torch.save's write) is given up."""
    from bench.data import DataSpec, load_data

    for split, n in (("train", 2), ("test", 1)):
        for cls in ("cat", "dog"):
            for i in range(n):
                path = tmp_path / "tree" / split / cls / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.full((8, 8, 3), 40 * i, dtype=np.uint8)).save(path)
    _disk_fills_after(monkeypatch, 100)
    data = load_data(DataSpec(source=str(tmp_path / "tree")), cache_dir=tmp_path / "cache")
    assert data.classes == ["cat", "dog"] and len(data.test_y) == 2
    (warning,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert "could not store the data cache" in warning and "No space left on device" in warning, warning
    assert list((tmp_path / "cache").iterdir()) == []
