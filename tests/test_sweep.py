"""The study runner: study files, expansion into cells, tidy tables, resume after a kill."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from bench import studies
from bench.cli import main
from bench.errors import UserError
from bench.sweep.choice import chosen_combinations
from bench.sweep.runner import check_data, run_study, time_to_target
from bench.sweep.study import PROFILES, Study, list_studies, load_study
from tests.tiny import study_toml

REPO = Path(__file__).resolve().parents[1]

TARGET = {"metric": "train_running_err_pct", "value": 95.0}


def sweep_study(design: str = "factorial", epochs: int = 2, lr=(0.01, 0.02)) -> str:
    """The sweep tests' study: the tiny study (tests/tiny.py) with 8 training, 4 test and 20
    validation images per class, batch 16, a target, and factors activation and (with `lr`) lr."""
    return study_toml(
        design=design,
        target=TARGET,
        lr=lr,
        train_per_class=8,
        test_per_class=4,
        val_size=20,
        batch_size=16,
        epochs=epochs,
    )


def write_study(tmp_path: Path, design: str = "factorial", epochs: int = 2, text: str | None = None) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(text if text is not None else sweep_study(design, epochs))
    return path


def test_shipped_studies_load_and_expand():
    assert set(list_studies()) >= {"alexnet", "architectures", "figure1"}
    alexnet = load_study("alexnet")
    cells = alexnet.cells("cpu")
    baseline = [c for c in cells if c.is_baseline]
    assert len(baseline) == 1
    assert baseline[0].config.knobs | {} == {
        **baseline[0].config.knobs,
        "activation": "relu",
        "norm": "lrn",
        "pool": "overlap",
        "dropout": 0.5,
        "groups": 2,
    }
    # one-at-a-time: the baseline plus one cell per non-baseline level
    extra_levels = sum(len(f["levels"]) - 1 for f in alexnet.factors.values())
    assert len(cells) == 1 + extra_levels
    for cell in cells:  # each ablation differs from the baseline in exactly one factor
        changed = [f for f in alexnet.factors if cell.levels[f] != baseline[0].levels[f]]
        assert len(changed) <= 1
    assert len({c.id for c in cells}) == len(cells)
    assert len(load_study("alexnet").cells("gpu")) == 3 * len(cells)  # three seeds on GPU


def test_every_shipped_study_has_every_profile():
    # `ablate --profile P` runs every study at P: one missing section would stop the whole sweep.
    for name in list_studies():
        study = load_study(name)
        assert set(study.profiles) == set(PROFILES), name
        assert study.cells("cpu-full") and study.cells("cpu")


def test_cells_run_seed_by_seed():
    # A sweep stopped part-way then holds whole seeds: complete pairs for the paired statistics.
    study = load_study("overfitting")
    cells = study.cells("cpu-full", seeds=[0, 1, 2])
    seeds = [c.config.seed for c in cells]
    assert seeds == sorted(seeds) and set(seeds) == {0, 1, 2}
    per_seed = [[(tuple(c.levels.values()), c.config.lr) for c in cells if c.config.seed == s] for s in (0, 1, 2)]
    # five arms, each at every rate of the profile's grid
    assert per_seed[0] == per_seed[1] == per_seed[2] and len(set(per_seed[0])) == len(per_seed[0]) == 5 * len(
        study.lr_grid("cpu-full")
    )


def test_overfitting_study_runs_the_arm_of_each_claim():
    levels = {tuple(c.levels.values()) for c in load_study("overfitting").cells("cpu-full")}
    assert levels == {
        ("0.5", "crop+flip", "overlap"),  # the paper's configuration, the baseline
        ("0.0", "crop+flip", "overlap"),
        ("0.5", "none", "overlap"),
        ("0.5", "crop+flip+pca", "overlap"),
        ("0.5", "crop+flip", "nonoverlap"),
    }


def test_factorial_and_one_at_a_time_designs(tmp_path):
    factorial = load_study(str(write_study(tmp_path, "factorial")))
    assert len(factorial.cells("smoke")) == 4
    oat = load_study(str(write_study(tmp_path, "one-at-a-time")))
    assert sorted(tuple(c.levels.values()) for c in oat.cells("smoke")) == [
        ("relu", "0.01"),
        ("relu", "0.02"),
        ("tanh", "0.01"),
    ]


def test_a_profile_that_leaves_out_the_baseline_level(tmp_path):
    keep_002 = 'measure = "none"\nonly = { lr = [0.02] }'
    # factorial: the first level `only` keeps is this profile's baseline, so its cells have one
    factorial = sweep_study("factorial", 2).replace('measure = "none"', keep_002)
    study = load_study(str(write_study(tmp_path, text=factorial)))
    assert [c.levels for c in study.cells("smoke") if c.is_baseline] == [{"activation": "relu", "lr": "0.02"}]
    assert study.baseline("smoke") == {"activation": "relu", "lr": "0.02"}
    assert study.baseline() == {"activation": "relu", "lr": "0.01"}
    # one-at-a-time varies every factor from the baseline: leaving it out is an error before anything runs
    oat = sweep_study("one-at-a-time", 2).replace('measure = "none"', keep_002)
    path = write_study(tmp_path, text=oat)
    with pytest.raises(UserError) as err:
        load_study(str(path))
    assert str(path) in str(err.value) and "lr's baseline level '0.01'" in str(err.value)
    assert "\n" not in str(err.value)


def test_figure1_grid_differs_per_setup():
    cells = load_study("figure1").cells("cpu")
    lrs = {(c.levels["setup"], c.levels["activation"]): set() for c in cells}
    for c in cells:
        lrs[(c.levels["setup"], c.levels["activation"])].add(c.config.lr)
    # four rates in factor-2 steps per setup and activation, so an edge choice shows
    assert lrs[("modern", "relu")] == lrs[("modern", "tanh")] == {0.0125, 0.025, 0.05, 0.1}
    assert lrs[("paper", "relu")] == lrs[("paper", "tanh")] == {0.0025, 0.005, 0.01, 0.02}
    # the lr is chosen on training error, so this laptop profile evaluates no validation split
    assert all(c.config.val_size == 0 and c.config.train_eval_size == 0 for c in cells)
    paper = next(c for c in cells if c.levels["setup"] == "paper")
    assert (paper.config.init, paper.config.preprocess) == ("paper", "meanonly")
    assert all(c.config.weight_decay == 0 and c.config.augment == "none" for c in cells)


def two_stage_fastest(text: str, per: str = '["activation"]') -> str:
    """A study file's `text` made two-stage by Figure 1's rule: `fastest_lr_per = per` (TOML) in [study],
    and confirming seeds 1 and 2 in the smoke profile."""
    text = text.replace('measure = "none"', 'measure = "none"\nconfirm_seeds = [1, 2]')
    return text.replace("[base]", f"fastest_lr_per = {per}\n\n[base]", 1)


# (edit of sweep_study(), what the error names); the last field: found by the torch-free reader
# (bench.studies) too, not only by the sweep's checks of every cell and model
STUDY_ERRORS = [
    (lambda s: s.replace('design = "factorial"', 'design = "fractional"'), "study.design", True),
    (lambda s: s.replace("[base]", "[base]\nbatchsize = 3"), "batchsize", True),
    (lambda s: s.replace("epochs = 2", 'epochs = "two"'), "epochs", False),
    (lambda s: s.replace('levels = ["relu", "tanh"]', 'levels = ["relu", "swish"]'), "swish", False),
    (lambda s: s.replace('key = "lr"', 'key = "learning_rate"'), "learning_rate", True),
    (lambda s: s.replace("[profiles.smoke]", "[profiles.huge]"), "huge", True),
    (lambda s: s.replace('measure = "none"', 'measure = "none"\nonly = { lr = [0.5] }'), "0.5", True),
    (lambda s: s.replace('model = "layers-80sec"', 'model = "layers-80sec"\nknobs = { width = 0.5 }'), "width", False),
    (lambda s: s + "\n[extra]\n", "extra", True),
    (lambda s: two_stage_fastest(s).replace("confirm_seeds = [1, 2]", "confirm_seeds = [0]"), "repeats seed 0", True),
    (
        lambda s: s.replace('measure = "none"', 'measure = "none"\nconfirm_seeds = [1]'),
        "confirm_seeds runs more seeds at the learning rates the profile's seeds chose, and nothing says how",
        True,
    ),
    # fastest_lr_per: which factors Figure 1's rule chooses a rate per, declared in the study file
    (
        lambda s: two_stage_fastest(s).replace("target", "# target"),
        "fastest_lr_per chooses the rate that reaches study.target",
        True,
    ),
    (
        lambda s: two_stage_fastest(s, '["width"]'),
        "fastest_lr_per names 'width', which is not a factor of this study",
        True,
    ),
    (lambda s: two_stage_fastest(s, '["lr"]'), "fastest_lr_per names 'lr', the factor whose level it chooses", True),
    (lambda s: two_stage_fastest(s, '"activation"'), "fastest_lr_per must be a non-empty list of factor names", True),
    (lambda s: two_stage_fastest(s, "[]"), "fastest_lr_per must be a non-empty list of factor names", True),
    (lambda s: two_stage_fastest(s, '["activation", "activation"]'), "fastest_lr_per lists 'activation' twice", True),
    (
        lambda s: two_stage_fastest(s).replace("train_running_err_pct", "test_top1_err_pct"),
        "fastest_lr_per would choose each rate on the test set",
        True,
    ),
    (lambda s: two_stage_fastest(s).replace("[factors.lr]", "[factors.rate]"), "this study has no factor lr", True),
    (lambda s: s.replace("[study]", "[study\n"), "TOML", True),
    (lambda s: s.replace('name = "tiny"', 'name = "../../esc"'), "study.name='../../esc' is not a valid", True),
    (lambda s: s.replace('name = "tiny"', "name = 5"), "study.name=5 is not a valid", True),
    (lambda s: s.replace('["relu", "tanh"]', '["relu", "relu", "tanh"]'), "lists 'relu' twice", True),
    (lambda s: s.replace("[0.01, 0.02]", "[0.01, 0.010, 0.02]"), "lists '0.01' twice", True),
    (lambda s: s.replace("value = 95.0", "value = nan"), "study.target.value=nan is not a finite", True),
    # issue 35: refused when the file is read, not after a first stage has run
    (lambda s: s.replace('measure = "none"', 'measure = "none"\nconfirm_seeds = [-1]'), "has seed -1", True),
    (lambda s: s.replace("seeds = [0]", "seeds = [0, -2]"), "seeds must be from 0 to 2**63-1", True),
    (
        lambda s: s.replace("[factors.lr]", "[factors.rate]").replace(
            'measure = "none"', 'measure = "none"\ntune_lr = [0.01, 0.02]'
        ),
        "tune_lr tunes lr, which factor 'rate' of this study already sets",
        True,
    ),
    (
        lambda s: s.replace('[factors.lr]\nkey = "lr"\nlevels = [0.01, 0.02]\n', "").replace(
            'measure = "none"',
            'measure = "none"\nseeds = [0]\nconfirm_seeds = [1]\ntune_lr = [0.01, 0.02]\nval_size = 0',
        ),
        "and val_size = 0 leaves no validation split",
        True,
    ),
    (
        lambda s: s.replace("[base]", "[base]\ndata_seed = 5").replace(
            'measure = "none"', 'measure = "none"\ndata_follows_seed = true'
        ),
        "data_follows_seed draws each cell's data from its seed, so data_seed = 5 would be ignored",
        True,
    ),
]


@pytest.mark.parametrize("edit, needle", [case[:2] for case in STUDY_ERRORS])
def test_study_file_errors_name_file_and_key(tmp_path, edit, needle):
    path = write_study(tmp_path, text=edit(sweep_study("factorial", 2)))
    with pytest.raises(UserError) as err:
        load_study(str(path))
    message = str(err.value)
    assert str(path) in message and needle in message
    assert "\n" not in message


@pytest.mark.parametrize("edit, needle, in_file", STUDY_ERRORS)
def test_the_study_reader_finds_what_needs_no_torch(tmp_path, edit, needle, in_file):
    path = write_study(tmp_path, text=edit(sweep_study("factorial", 2)))
    if not in_file:  # a value of a setting, or a model that cannot be built: the sweep's check finds it
        assert studies.load_study(str(path)).name == "tiny"
        return
    with pytest.raises(UserError) as err:
        studies.load_study(str(path))
    assert str(path) in str(err.value) and needle in str(err.value)


def test_the_study_reader_imports_no_torch_and_matches_the_sweep():
    code = (
        "import sys\n"
        "from bench.studies import load_study\n"
        "s = load_study('figure1')\n"
        "print(len(s.combinations('cpu')), s.levels('lr')[0], s.factors['setup']['baseline'])\n"
        "assert 'torch' not in sys.modules, 'the study reader imported torch'\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    sweep = load_study("figure1")
    assert done.stdout.split() == [str(len({tuple(c.levels.values()) for c in sweep.cells("cpu")})), "0.0025", "modern"]


def test_shipped_studies_install_as_package_data():
    import importlib.resources
    import tomllib

    folder = Path(str(importlib.resources.files("ablations")))
    assert folder.resolve() == studies.studies_dir().resolve()
    assert studies.list_studies() == list_studies() == sorted(p.stem for p in folder.glob("*.toml"))
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "ablations" in setuptools["packages"]["find"]["include"]
    assert setuptools["package-data"]["ablations"] == ["*.toml"]
    with pytest.raises(UserError, match=r"unknown study 'nope'; choose one of: alexnet, architectures"):
        studies.find_study("nope")


@pytest.mark.parametrize(
    "seeds, needle", [("abc", "'abc' is not a comma-separated list of integers"), (",", "needs at least one integer")]
)
def test_cli_bad_seeds_is_one_line_naming_the_fix(tmp_path, capsys, seeds, needle):
    with pytest.raises(SystemExit) as exit_:
        main(["ablate", "--seeds", seeds, "--out", str(tmp_path / "results")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--seeds" in err and needle in err and "e.g. --seeds" in err


def test_cli_study_error_is_one_line_and_runs_nothing(tmp_path, capsys):
    path = write_study(tmp_path, text=sweep_study("factorial", 2).replace("[base]", "[base]\nlrr = 1"))
    out = tmp_path / "results"
    assert main(["ablate", "--study", str(path), "--profile", "smoke", "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "lrr" in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_sweep_writes_tidy_tables_and_skips_finished_cells(tmp_path):
    study = load_study(str(write_study(tmp_path, "factorial", epochs=2)))
    runs = run_study(study, "smoke", out_root=tmp_path / "results", progress=False)
    out = tmp_path / "results" / "tiny" / "smoke"
    runs = pd.read_csv(out / "runs.csv")
    hist = pd.read_csv(out / "history.csv")
    assert len(runs) == 4 and runs["cell_id"].is_unique
    assert set(runs["status"]) == {"ok"}
    for column in (
        "activation",
        "lr",
        "seed",
        "data_source",
        "params_total",
        "macs",
        "flops",
        "final_train_running_err_pct",
        "final_train_clean_top1_err_pct",
        "final_val_top1_err_pct",
        "final_test_top1_err_pct",
        "final_test_top5_err_pct",
        "best_val_top1_err_pct",
        "best_epoch",
        "test_top1_err_pct_at_best_val",
        "steps_to_target",
        "epochs_to_target",
        "seconds_to_target",
        "target_statistic",
        "wall_seconds",
        "device",
        "torch",
        "git_commit",
        "cfg_lr",
        "cfg_val_size",
        "cfg_decay",
        "knob_activation",
    ):
        assert column in runs.columns, column
    assert "best_test_top1_err_pct" not in runs.columns  # selection on the test set
    assert (runs["target_statistic"] == "trailing-epoch mean").all()  # what the target was judged on
    # progress points beside the history: 80 images in batches of 16 = 5 steps, a point after each
    prog = pd.read_csv(out / "progress.csv")
    assert len(prog) == 4 * 2 * 5 and not prog.duplicated(["cell_id", "step"]).any()
    assert {"cell_id", "activation", "lr", "seed", "step", "epoch", "train_running_err_pct"} <= set(prog.columns)
    assert set(runs["activation"]) == {"relu", "tanh"} and set(runs["lr"]) == {0.01, 0.02}
    assert (runs["data_source"] == "synthetic").all()
    # tidy history: one row per cell per epoch, no wide pivoting
    assert len(hist) == 4 * 2
    assert all(sorted(epochs) == [1, 2] for epochs in hist.groupby("cell_id")["epoch"].apply(list))
    assert not any(re.search(r"\d$", c) for c in hist.columns)  # no per-epoch columns
    # the tanh net has more counted FLOPs than the ReLU net (documented per-element costs)
    flops = runs.groupby("activation")["flops"].first()
    assert flops["tanh"] > flops["relu"]
    assert (out / "environment.json").exists()
    mtime = (out / "runs.csv").stat().st_mtime_ns
    again = run_study(study, "smoke", out_root=tmp_path / "results", progress=False)
    assert len(again) == 4 and (out / "runs.csv").stat().st_mtime_ns == mtime  # nothing re-ran


def test_failed_cell_is_a_row_and_the_sweep_goes_on(tmp_path):
    text = sweep_study("factorial", 1).replace("levels = [0.01, 0.02]", "levels = [0.01, 1e9]")
    study = load_study(str(write_study(tmp_path, text=text)))
    runs = run_study(study, "smoke", out_root=tmp_path / "results", progress=False)
    assert len(runs) == 4
    assert runs["lr"].map(type).eq(str).all()  # factor levels are read back as text, as written
    statuses = runs.assign(lr=runs["lr"].astype(float)).set_index(["activation", "lr"])["status"]
    assert statuses[("relu", 0.01)] == "ok"
    assert statuses[("relu", 1e9)] == "diverged"


def test_a_diverged_cell_counts_as_finished_on_resume_and_in_the_report(tmp_path, monkeypatch):
    """A diverged cell is a result (the rate is too high), not a failure: never re-run, never "did not finish"."""
    from bench.report.draw import report_study

    text = sweep_study("factorial", 1).replace('levels = ["relu", "tanh"]', 'levels = ["relu"]')
    study = load_study(str(write_study(tmp_path, text=text.replace("levels = [0.01, 0.02]", "levels = [0.01, 1e9]"))))
    first = run_study(study, "smoke", out_root=tmp_path / "results", progress=False)
    assert sorted(first["status"]) == ["diverged", "ok"]
    ran = _spy_cells(monkeypatch)
    again = run_study(study, "smoke", out_root=tmp_path / "results", progress=False)
    assert ran == [], "a diverged cell was run again on resume"
    assert again["finished_at"].tolist() == first["finished_at"].tolist()
    out = tmp_path / "results" / "tiny" / "smoke"
    report_study(out)
    report = (out / "report.md").read_text()
    assert "did not finish" not in report and "diverged" in report


def test_time_to_target_of_an_evaluated_metric_interpolates_between_epochs():
    hist = [
        {"epoch": 1, "epoch_seconds": 2.0, "e": 40.0},
        {"epoch": 2, "epoch_seconds": 3.0, "e": 24.0},
        {"epoch": 3, "epoch_seconds": 3.0, "e": 20.0},
    ]
    # 40 -> 24 crosses 25 at 15/16 of the way from the end of epoch 1 (2 s) to the end of epoch 2 (5 s)
    assert time_to_target(hist, [], "e", 25.0) == {
        "steps_to_target": None,
        "epochs_to_target": pytest.approx(1 + 15 / 16),
        "seconds_to_target": pytest.approx(2.0 + 3.0 * 15 / 16),
        "target_statistic": "end-of-epoch value",
    }  # these rows have no step column
    assert time_to_target(hist, [], "e", 10.0) == {
        **dict.fromkeys(("steps_to_target", "epochs_to_target", "seconds_to_target")),
        "target_statistic": "end-of-epoch value",
    }


def _spy_cells(monkeypatch) -> list[str]:
    """The ids of the cells the sweep trains from now on (finished ones are skipped, not run)."""
    import bench.sweep.runner as runner

    ran, real = [], runner.run_cell
    monkeypatch.setattr(runner, "run_cell", lambda cell, *a, **kw: ran.append(cell.id) or real(cell, *a, **kw))
    return ran


def test_resume_after_kill_loses_nothing_and_duplicates_nothing(tmp_path, monkeypatch):
    """What a sweep killed mid-cell leaves behind, built exactly, then the sweep run again."""
    from bench.sweep.results import ResultsFolder

    study = load_study(str(write_study(tmp_path, "factorial", epochs=2)))
    out_root = tmp_path / "results"
    out = out_root / "tiny" / "smoke"
    run_study(study, "smoke", out_root=out_root, progress=False)
    runs = pd.read_csv(out / "runs.csv", dtype={"cell_id": str})
    hist = pd.read_csv(out / "history.csv", dtype={"cell_id": str})
    a, b, c, d = runs["cell_id"]
    # The state of the kill: a and b merged into the tables; c finished and recorded in cells/ but
    # not merged; d in flight, its history rows left in history.csv by an older merge (marked with a
    # loss of -1) and its record torn as a temporary file; a temporary runs.csv from a torn write.

    def rows(*ids):
        return runs[runs["cell_id"].isin(ids)]

    def epochs(*ids):
        return hist[hist["cell_id"].isin(ids)]

    rows(a, b).to_csv(out / "runs.csv", index=False)
    pd.concat([epochs(a, b), epochs(d).assign(train_running_loss=-1.0)]).to_csv(out / "history.csv", index=False)
    ResultsFolder(out).record(rows(c).iloc[0].to_dict(), epochs(c).to_dict("records"))
    (out / "cells" / f".{d}.json.x1.tmp").write_text('{"row": {"cell_id": "')
    (out / ".runs.csv.x2.tmp").write_text("study,profile,cell_id\ntiny,smo")
    before = pd.read_csv(out / "runs.csv", dtype={"cell_id": str})
    assert len(before) == 2 and set(before["cell_id"]) == {a, b}

    ran = _spy_cells(monkeypatch)
    assert check_data(study, "smoke", out_root=out_root) == 1  # what `ablate` loads data for first: d alone
    again = run_study(study, "smoke", out_root=out_root, progress=False)
    assert ran == [d]  # only the cell in flight runs again; c is merged from its record
    after = pd.read_csv(out / "runs.csv", dtype={"cell_id": str})
    after_hist = pd.read_csv(out / "history.csv", dtype={"cell_id": str})
    assert len(again) == len(after) == 4 and after["cell_id"].is_unique and set(after["cell_id"]) == {a, b, c, d}
    finished_at = after.set_index("cell_id")["finished_at"]
    assert finished_at[[a, b, c]].tolist() == runs.set_index("cell_id").loc[[a, b, c], "finished_at"].tolist()
    assert finished_at[d] >= runs.set_index("cell_id").loc[d, "finished_at"]  # d's row is new
    assert len(after_hist) == 4 * 2 and not after_hist.duplicated(["cell_id", "epoch"]).any()
    assert set(after_hist["cell_id"]) == set(after["cell_id"])
    assert (after_hist["train_running_loss"] > 0).all()  # d's leftover rows were replaced, not kept beside the new
    assert not list(out.glob(".*.tmp")) and not list(out.glob("cells/*"))  # temporary files and records gone


@pytest.mark.parametrize(
    "failure, status",
    [(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"), "oom"), (ValueError("a bug"), "error")],
)
def test_a_failed_cell_is_retried_on_resume_and_only_it(tmp_path, monkeypatch, failure, status):
    import bench.sweep.runner as runner

    study = load_study(str(write_study(tmp_path, "factorial", epochs=1)))
    real, failed = runner.train, []

    def fail_once(cfg, *args, **kwargs):
        if not failed and cfg.knobs["activation"] == "tanh":
            failed.append(cfg)
            raise failure
        return real(cfg, *args, **kwargs)

    monkeypatch.setattr(runner, "train", fail_once)
    first = run_study(study, "smoke", out_root=tmp_path / "results", progress=False).set_index("cell_id")
    (bad,) = first.index[first["status"] == status]
    assert first.loc[bad, "error"].startswith(type(failure).__name__) and (first["status"] == "ok").sum() == 3
    ran = _spy_cells(monkeypatch)
    second = run_study(study, "smoke", out_root=tmp_path / "results", progress=False).set_index("cell_id")
    assert ran == [bad] and second.loc[bad, "status"] == "ok" and pd.isna(second.loc[bad, "error"])
    others = first.index.drop(bad)
    assert second.loc[others, "finished_at"].tolist() == first.loc[others, "finished_at"].tolist()
    hist = pd.read_csv(tmp_path / "results" / "tiny" / "smoke" / "history.csv", dtype={"cell_id": str})
    assert sorted(hist["cell_id"]) == sorted(first.index)  # one epoch each, the retried cell's included


def _stop_after_study(tmp_path: Path):
    """Two cells of 5 epochs whose target is reached in epoch 1, always, and `stop_after = 1`."""
    text = sweep_study("factorial", 5).replace("levels = [0.01, 0.02]", "levels = [0.01]")
    text = text.replace("value = 95.0 }", "value = 100.0, stop_after = 1 }")
    return load_study(str(write_study(tmp_path, text=text)))


def test_stop_after_ends_a_cell_that_many_epochs_after_its_target(tmp_path):
    runs = run_study(_stop_after_study(tmp_path), "smoke", out_root=tmp_path / "results", progress=False)
    hist = pd.read_csv(tmp_path / "results" / "tiny" / "smoke" / "history.csv")
    # reached within epoch 1 (interpolated between progress points), then one epoch more
    assert len(runs) == 2 and (runs["epochs_to_target"] <= 1).all() and (runs["epochs_run"] == 2).all()
    assert hist.groupby("cell_id")["epoch"].apply(list).tolist() == [[1, 2], [1, 2]]  # not 5 epochs


def test_a_stopped_cell_writes_its_tensorboard_scalars_up_to_the_epoch_it_stopped(tmp_path):
    """The early stop and the TensorBoard writer are two hooks of the one training: both see every epoch run."""
    pytest.importorskip("tensorboard", reason="tensorboard is not installed: pip install 'alexnet-bench[tb]'")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = tmp_path / "tb"
    runs = run_study(
        _stop_after_study(tmp_path), "smoke", out_root=tmp_path / "results", progress=False, tensorboard=str(tb)
    )
    assert (runs["epochs_run"] == 2).all()
    steps = []
    for folder in sorted((tb / "tiny" / "smoke").iterdir()):
        events = EventAccumulator(str(folder))
        events.Reload()
        steps.append([s.step for s in events.Scalars("train_running_loss")])
    assert steps == [[1, 2], [1, 2]]  # one TensorBoard run per cell, ended where the stopper ended the cell


def test_confirm_seeds_run_only_the_rate_the_grid_chose(tmp_path, caplog):
    """Figure 1's two stages: seed 0 runs the whole grid, seeds 1 and 2 each activation's fastest rate,
    chosen by the sweep itself (`fastest_lr_per = ["activation"]`)."""
    study = load_study(str(write_study(tmp_path, text=two_stage_fastest(sweep_study()))))
    runs = run_study(study, "smoke", out_root=tmp_path / "results", progress=False)
    assert len(runs) == 4 + 2 * 2 and set(runs["status"]) == {"ok"}
    grid = runs[runs["seed"] == 0]
    for act, g in grid.groupby("activation"):
        # the rule, written out: fewest epochs to the target, then lower final running error, then lower lr
        best = g.sort_values(["epochs_to_target", "final_train_running_err_pct", "lr"]).iloc[0]
        confirming = runs[(runs["activation"] == act) & (runs["seed"] > 0)]
        assert sorted(confirming["seed"]) == [1, 2] and set(confirming["lr"]) == {best["lr"]}
    with caplog.at_level(logging.WARNING):
        again = run_study(study, "smoke", out_root=tmp_path / "results", progress=False)
    assert len(again) == 8 and not [r for r in caplog.records if "does not define" in r.getMessage()]
    # --seeds runs what it names, with no second stage
    only = run_study(study, "smoke", out_root=tmp_path / "other", seeds=[0], progress=False)
    assert sorted(only["seed"]) == [0, 0, 0, 0]


# Epochs to the 95% target of seed 0's cells (activation, batch, lr) in `test_the_study_file_says_...`:
# per batch size, batch 8 is fastest at lr 0.01 and batch 16 at 0.02; pooled over both, 0.01 (3 vs 4
# epochs for relu, 5 vs 6 for tanh).
EPOCHS_TO_TARGET = {
    ("relu", "8", "0.01"): 2,
    ("relu", "8", "0.02"): 5,
    ("relu", "16", "0.01"): 4,
    ("relu", "16", "0.02"): 3,
    ("tanh", "8", "0.01"): 4,
    ("tanh", "8", "0.02"): 7,
    ("tanh", "16", "0.01"): 6,
    ("tanh", "16", "0.02"): 5,
}


@pytest.mark.parametrize(
    "per, rates",
    [
        ('["activation", "batch"]', {"8": "0.01", "16": "0.02"}),  # a rate per batch size
        ('["activation"]', {"8": "0.01", "16": "0.01"}),  # batch size pooled: one rate for both
    ],
)
def test_the_study_file_says_which_factors_the_confirming_rate_is_chosen_per(tmp_path, per, rates):
    """`fastest_lr_per` in the study file, not the schema, says what the sweep chooses a rate per; the
    first stage's cells are written by hand (epochs to the target from history.csv, no training)."""
    text = two_stage_fastest(sweep_study(), per).replace(
        "[factors.lr]", '[factors.batch]\nkey = "batch_size"\nlevels = [8, 16]\n\n[factors.lr]'
    )
    study = Study.read(write_study(tmp_path, text=text))
    assert study.fastest_lr_per == json.loads(per)
    folder = tmp_path / "results" / "tiny" / "smoke"
    folder.mkdir(parents=True)
    runs, history = [], []
    for (act, batch, lr), reach in EPOCHS_TO_TARGET.items():
        cid = f"{act}-{batch}-{lr}"
        runs.append(
            {
                "cell_id": cid,
                "study": "tiny",
                "profile": "smoke",
                "status": "ok",
                "activation": act,
                "batch": batch,
                "lr": lr,
                "seed": 0,
                "epochs_run": 8,
                "cfg_epochs": 8,
                "final_train_running_err_pct": 50.0,
                "target_metric": TARGET["metric"],
                "target_value": TARGET["value"],
            }
        )
        history += [
            {"cell_id": cid, "epoch": e, "train_running_err_pct": 99.0 if e < reach else 90.0} for e in range(1, 9)
        ]
    pd.DataFrame(runs).to_csv(folder / "runs.csv", index=False)
    pd.DataFrame(history).to_csv(folder / "history.csv", index=False)
    combos = chosen_combinations(folder, study, "smoke", {0})
    assert combos == [
        {"activation": act, "batch": batch, "lr": rates[batch]} for act in ("relu", "tanh") for batch in ("8", "16")
    ]


def test_a_bad_fastest_lr_per_is_refused_before_anything_runs(tmp_path, capsys):
    path = write_study(tmp_path, text=two_stage_fastest(sweep_study(), '["activation", "setup"]'))
    out = tmp_path / "results"
    argv = ["ablate", "--study", str(path), "--profile", "smoke", "--out", str(out), "--no-progress", "--no-report"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "study.fastest_lr_per names 'setup', which is not a factor of this study; factors: activation, lr" in err
    assert str(path) in err and len(err.splitlines()) == 1 and not out.exists()


def test_a_quick_measure_profile_times_each_configuration_once_for_its_seeds(tmp_path):
    text = sweep_study("factorial", 1).replace("levels = [0.01, 0.02]", "levels = [0.01]")
    text = text.replace('levels = ["relu", "tanh"]', 'levels = ["relu"]').replace(
        'measure = "none"', 'measure = "quick"\nseeds = [0, 1]'
    )
    runs = run_study(
        load_study(str(write_study(tmp_path, text=text))), "smoke", out_root=tmp_path / "results", progress=False
    )
    assert len(runs) == 2 and list(runs["seed"]) == [0, 1]
    for column in ("train_images_per_s", "infer_images_per_s", "latency_ms_b1", "peak_mem_mb"):
        assert (runs[column] > 0).all(), column
    assert runs["measure_error"].isna().all() and (runs["measure_batch_size"] == 16).all()
    # measured once, on seed 0's model; seed 1's row carries that measurement
    assert list(runs["measure_cell_id"]) == [runs["cell_id"][0]] * 2
    assert runs["train_images_per_s"].nunique() == 1


def test_ctrl_c_keeps_finished_cells_and_exits_130_with_the_local_executor(tmp_path, monkeypatch, capsys):
    """The second cell is interrupted as Ctrl-C would interrupt it: the first cell's row stays."""
    import bench.sweep.runner as runner

    real, started = runner.run_cell, []

    def interrupt_the_second(cell, *args, **kwargs):
        started.append(cell.id)
        if len(started) == 2:
            raise KeyboardInterrupt
        return real(cell, *args, **kwargs)

    monkeypatch.setattr(runner, "run_cell", interrupt_the_second)
    study = write_study(tmp_path, "factorial", epochs=1)
    out = tmp_path / "results"
    status = main(
        ["ablate", "--study", str(study), "--profile", "smoke", "--out", str(out), "--no-progress", "--no-report"]
    )
    assert status == 130
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == "interrupted; finished results are kept" and "Traceback" not in err
    runs = pd.read_csv(out / "tiny" / "smoke" / "runs.csv", dtype={"cell_id": str})
    assert list(runs["cell_id"]) == started[:1] and list(runs["status"]) == ["ok"]
    assert not list((out / "tiny" / "smoke").glob("cells/*.json"))  # merged on the way out
    assert (
        main(["ablate", "--study", str(study), "--profile", "smoke", "--out", str(out), "--no-progress", "--no-report"])
        == 0
    )  # and the next run finishes the rest
    assert len(pd.read_csv(out / "tiny" / "smoke" / "runs.csv")) == 4


def test_smoke_profile_of_every_shipped_study_end_to_end(tmp_path):
    out = tmp_path / "results"
    assert main(["ablate", "--profile", "smoke", "--out", str(out), "--no-progress", "--no-report"]) == 0
    for name in list_studies():
        runs = pd.read_csv(out / name / "smoke" / "runs.csv")
        study = load_study(name)
        cells = study.cells("smoke")
        # a two-stage profile (figure1): each confirming seed once per (setup, activation), at its chosen rate
        groups = {tuple(v for f, v in c.levels.items() if f != "lr") for c in cells}
        assert len(runs) == len(cells) + len(study.confirm_seeds("smoke")) * len(groups)
        assert set(runs["status"]) == {"ok"}, runs[["status", "error"]]
        assert runs["params_total"].gt(0).all()


@pytest.mark.skipif(sys.platform == "win32", reason="advisory file locks are POSIX")
def test_a_second_sweep_on_the_same_folder_is_refused_while_the_first_runs(tmp_path):
    import fcntl

    study = load_study(str(write_study(tmp_path, "factorial", epochs=1)))
    out = tmp_path / "results" / "tiny" / "smoke"
    out.mkdir(parents=True)
    with open(out / ".sweep.lock", "w") as held:  # what a running sweep holds
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(UserError, match="another sweep is writing .*give this one another --out"):
            run_study(study, "smoke", out_root=tmp_path / "results", progress=False)
        assert not (out / "runs.csv").exists()
    assert len(run_study(study, "smoke", out_root=tmp_path / "results", progress=False)) == 4  # released: runs


# --- the results folder: per-cell records, merged into the tables ------------------------


def test_cells_recorded_but_not_merged_when_the_sweep_died_count_as_finished(tmp_path):
    """A kill between recording a cell and merging it loses nothing: the next sweep merges it."""
    from bench.sweep.results import ResultsFolder

    study = load_study(str(write_study(tmp_path, "factorial", epochs=1)))
    run_study(study, "smoke", out_root=tmp_path / "results", progress=False)
    out = tmp_path / "results" / "tiny" / "smoke"
    runs, hist = (
        pd.read_csv(out / "runs.csv", dtype={"cell_id": str}),
        pd.read_csv(out / "history.csv", dtype={"cell_id": str}),
    )
    # what a sweep killed after recording its first two cells and before any merge leaves behind
    (out / "runs.csv").unlink()
    (out / "history.csv").unlink()
    folder = ResultsFolder(out)
    for _, row in runs.iloc[:2].iterrows():
        folder.record(row.to_dict(), hist[hist["cell_id"] == row["cell_id"]].to_dict("records"))
    assert len(folder.pending()) == 2 and len(folder.read()[0]) == 2  # visible before any merge

    again = run_study(study, "smoke", out_root=tmp_path / "results", progress=False)
    assert len(again) == 4 and again["cell_id"].is_unique and not folder.pending()
    kept = again.set_index("cell_id").loc[runs["cell_id"][:2], "finished_at"]
    assert list(kept) == list(runs["finished_at"][:2])  # merged, not re-run
    assert len(pd.read_csv(out / "history.csv")) == 4


def test_a_merge_killed_half_way_is_redone_without_duplicates(tmp_path):
    from bench.sweep.results import ResultsFolder

    folder = ResultsFolder(tmp_path, ["level"])

    def row(cid, err):
        return {"cell_id": cid, "level": "none", "status": "ok", "err": err}

    def hist(cid):
        return [{"cell_id": cid, "epoch": e} for e in (1, 2)]

    folder.record(row("a", 1.0), hist("a"))
    folder.record(row("b", 2.0), hist("b"))
    assert folder.merge() == 2 and folder.merge() == 0
    folder.record(row("a", 3.0), hist("a"))  # cell a again (it had failed, say)
    # killed after writing history.csv, before runs.csv and before deleting the cell file
    _, merged_hist, _ = folder.read()
    merged_hist.to_csv(tmp_path / "history.csv", index=False)
    assert folder.merge() == 1
    runs, hist_rows = pd.read_csv(tmp_path / "runs.csv", keep_default_na=False), pd.read_csv(tmp_path / "history.csv")
    assert sorted(runs["cell_id"]) == ["a", "b"] and runs.set_index("cell_id")["err"].to_dict() == {"a": 3.0, "b": 2.0}
    assert list(runs["level"]) == ["none", "none"]  # a level named like a missing value stays text
    assert len(hist_rows) == 4 and not hist_rows.duplicated(["cell_id", "epoch"]).any()


def _row(cid: str, err: float = 1.0) -> dict:
    return {"cell_id": cid, "level": "none", "status": "ok", "seed": 0, "err": err}


def _epochs(cid: str) -> list[dict]:
    return [{"cell_id": cid, "epoch": e, "err": 10.0 * e} for e in (1, 2)]


def test_history_rows_of_a_cell_missing_from_runs_csv_are_dropped_on_resume(tmp_path):
    """Rows an interrupted write left for a cell runs.csv never got must not count beside its real ones."""
    from bench.sweep.results import ResultsFolder

    folder = ResultsFolder(tmp_path, ["level"])
    folder.record(_row("a"), _epochs("a"))
    assert folder.merge() == 1
    pd.DataFrame([*_epochs("a"), *_epochs("ghost")]).to_csv(tmp_path / "history.csv", index=False)
    pd.DataFrame([*_epochs("ghost")]).assign(step=1).to_csv(tmp_path / "progress.csv", index=False)
    _, hist, progress = folder.read()
    assert set(hist["cell_id"]) == {"a"}, "history rows of a cell absent from runs.csv were kept"
    assert not len(progress)
    folder.record(_row("b"), _epochs("b"))
    assert folder.merge() == 1
    assert sorted(set(pd.read_csv(tmp_path / "history.csv")["cell_id"])) == ["a", "b"]


@pytest.mark.parametrize("crash_at", ["history.csv", "progress.csv", "runs.csv", "unlink"])
def test_a_merge_that_crashes_part_way_loses_no_finished_cell(tmp_path, monkeypatch, crash_at):
    """Cell files are deleted only after every table holds their rows: a crash anywhere before loses nothing."""
    import bench.sweep.results as results

    folder = results.ResultsFolder(tmp_path, ["level"])
    folder.record(_row("a"), _epochs("a"), [{"cell_id": "a", "step": 1}])
    assert folder.merge() == 1
    folder.record(_row("b"), _epochs("b"), [{"cell_id": "b", "step": 1}])
    folder.record(_row("c"), _epochs("c"), [{"cell_id": "c", "step": 1}])
    real_write, real_unlink = results.write_csv, Path.unlink

    def write_csv(path, frame):
        if Path(path).name == crash_at:
            raise OSError(28, "No space left on device")
        real_write(path, frame)

    def unlink(self, *args, **kwargs):
        real_unlink(self, *args, **kwargs)
        if crash_at == "unlink" and self.parent.name == "cells":
            raise KeyboardInterrupt  # the crash comes after the first cell file is gone

    monkeypatch.setattr(results, "write_csv", write_csv)
    monkeypatch.setattr(Path, "unlink", unlink)
    with pytest.raises((OSError, KeyboardInterrupt)):
        folder.merge()
    monkeypatch.undo()
    runs, hist, _ = folder.read()
    assert sorted(runs["cell_id"]) == ["a", "b", "c"], f"a crash at {crash_at} lost a finished cell"
    assert sorted(set(hist["cell_id"])) == ["a", "b", "c"]
    folder.merge()
    on_disk = pd.read_csv(tmp_path / "runs.csv", dtype={"cell_id": str})
    assert sorted(on_disk["cell_id"]) == ["a", "b", "c"] and not folder.pending()
    assert len(pd.read_csv(tmp_path / "history.csv")) == 6


def test_a_torn_cell_record_is_a_one_line_error_naming_it(tmp_path):
    from bench.sweep.results import ResultsFolder

    (tmp_path / "cells").mkdir()
    (tmp_path / "cells" / "abc.json").write_text('{"row": {"cell_id": "abc"}')
    with pytest.raises(UserError, match=r"abc\.json is not a cell record"):
        ResultsFolder(tmp_path).merge()


def test_ray_options_need_the_ray_executor_and_profiles_may_set_resources(tmp_path, capsys):
    study = write_study(tmp_path, "factorial", epochs=1)
    out = tmp_path / "results"
    assert (
        main(["ablate", "--study", str(study), "--profile", "smoke", "--out", str(out), "--gpus-per-cell", "0.5"]) == 2
    )
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--gpus-per-cell applies to --executor ray" in err
    text = sweep_study("factorial", 1)
    good = load_study(
        str(write_study(tmp_path, text=text.replace('measure = "none"', 'measure = "none"\ngpus_per_cell = 0.5')))
    )
    assert (
        good.profiles["smoke"]["gpus_per_cell"] == 0.5
        and "gpus_per_cell" not in good.cells("smoke")[0].config.to_dict()
    )
    bad = write_study(tmp_path, text=text.replace('measure = "none"', 'measure = "none"\ncpus_per_cell = "two"'))
    assert main(["ablate", "--study", str(bad), "--profile", "smoke", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "profiles.smoke.cpus_per_cell must be a non-negative number" in err and str(bad) in err
    assert not out.exists()


def test_executor_ray_without_ray_installed_names_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    study = write_study(tmp_path, "factorial", epochs=1)
    out = tmp_path / "results"
    assert main(["ablate", "--study", str(study), "--profile", "smoke", "--out", str(out), "--executor", "ray"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "alexnet-bench[ray]" in err
    assert not out.exists()


def test_data_shipped_to_a_ray_task_is_the_data_set_field_by_field():
    """What `--executor ray` puts in the object store comes back whole: the validation split, the
    clean-training subset and the CIFAR net's crop size included (a cell without its crop size
    would train the 24x24 net on whole 32x32 images). No Ray needed: the round trip is plain Python."""
    import dataclasses

    import torch

    from bench.data import load_data
    from bench.sweep.ray_executor import _ShippedData
    from bench.train.config import TrainConfig
    from bench.train.dataspec import data_spec

    cfg = TrainConfig(
        model="cifar-conv-local", data="synthetic", train_per_class=4, test_per_class=2, val_size=10, train_eval_size=20
    )
    data = load_data(data_spec(cfg), cache_dir=None)
    assert data.crop_size == 24 and data.val_x is not None and data.train_eval_idx is not None
    back = _ShippedData.of(data).dataset()
    for f in dataclasses.fields(data):
        mine, theirs = getattr(data, f.name), getattr(back, f.name)
        if isinstance(mine, torch.Tensor):
            assert torch.equal(mine, theirs), f.name
        elif f.name == "normalizer":
            assert torch.equal(mine.mean, theirs.mean) and mine.mode == theirs.mode
        else:
            assert mine == theirs, f.name


def test_seeds_on_a_two_stage_profile_says_the_second_stage_is_skipped(tmp_path, caplog):
    """--seeds replaces the profile's seeds and runs them on the whole design: said before anything
    runs (here the run then stops at an --out it cannot write, so nothing trains)."""
    two_stage = two_stage_fastest(sweep_study("factorial", 1)).replace(
        "confirm_seeds = [1, 2]", "seeds = [0]\nconfirm_seeds = [1, 2]"
    )
    path = write_study(tmp_path, text=two_stage)
    (tmp_path / "a-file").write_text("")
    argv = ["ablate", "--study", str(path), "--profile", "smoke", "--no-progress", "--out", str(tmp_path / "a-file")]
    with caplog.at_level(logging.WARNING):
        assert main([*argv, "--seeds", "0,3"]) == 2
    (said,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert said == (
        "tiny/smoke: --seeds 0,3 runs those seeds on the whole design; the profile's second stage "
        "(confirm_seeds [1, 2] at the chosen learning rates) is skipped"
    )
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert main(argv) == 2  # without --seeds: both stages, nothing to say
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]
