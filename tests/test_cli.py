"""`python -m bench train` end to end: help, one-line errors with exit status 2, a tiny real run."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import bench.train.command as train_command
from bench.cli import main
from bench.errors import UserError
from bench.train.config import TrainConfig, field_choices, option
from bench.train.flags import add_config_arguments, config_from_args, config_values, flag_of
from bench.train.result import RunResult
from tests.tiny import TRAIN_ARGS

REPO = Path(__file__).resolve().parents[1]
PROG = "python -m bench"
# Fast settings for a run that gets as far as training (tests/tiny.py), with a validation split.
TINY = [*TRAIN_ARGS, "--val-size", "20"]


def run_bench(args: list[str], cwd: Path, cache: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BENCH_")}
    env.update(
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
        BENCH_CACHE=str(cache),
        OMP_NUM_THREADS="1",
    )
    return subprocess.run(
        [sys.executable, "-m", "bench", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def assert_user_error(stderr: str, *needles: str) -> None:
    """One or two lines, starting `error:` or with the argparse program name, no traceback."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert 1 <= len(lines) <= 2, stderr
    assert lines[0].startswith(("error:", PROG)), stderr
    assert "Traceback" not in stderr
    for needle in needles:
        assert needle in stderr, (needle, stderr)


def _folder_without_train(where: Path) -> Path:
    folder = where / "no-train"
    (folder / "test" / "cat").mkdir(parents=True)
    return folder


# Through the real entry point, one process each: `args`, then what stderr must name.
SUBPROCESS_ERRORS = {
    "unknown model": (["--model", "alexnett"], ["unknown model 'alexnett'", "layers-80sec"]),
    "unknown knob": (["--model", "layers-80sec", "--knob", "widht=2"], ["no knob widht", "activation"]),
    "bad augment": (["--augment", "crop+blur"], ["unknown augmentation 'blur'", "crop, flip, pca"]),
    "bad schedule": (["--schedule", "linear"], ["schedule='linear'", "constant, cosine, step"]),
    "missing data path": (["--data", "{tmp}/nowhere.tar.gz"], ["does not exist", "nowhere.tar.gz"]),
    "folder without train": (["--data", "{tmp}/no-train"], ["no train/ sub-folder"]),
    "not an int": (["--epochs", "three"], ["argument --epochs", "invalid int value"]),
}


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory):
    """Every `python -m bench` error case, two processes at a time (each spends ~4 s importing torch).

    Maps case -> (CompletedProcess, the case's folder). Each case runs in an empty
    working folder `work/` with `--out results/run` inside its own folder.
    """
    base = tmp_path_factory.mktemp("cli")
    cache = base / "bench-cache"
    jobs = {"help": (["--help"], base / "help"), "train help": (["train", "--help"], base / "train-help")}
    for case, (args, _) in SUBPROCESS_ERRORS.items():
        where = base / case.replace(" ", "-")
        _folder_without_train(where)
        args = [a.format(tmp=where) for a in args]
        jobs[case] = (["train", *TINY, *args, "--out", str(where / "results" / "run")], where)
    for _, where in jobs.values():
        (where / "work").mkdir(parents=True)
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {case: pool.submit(run_bench, args, where / "work", cache) for case, (args, where) in jobs.items()}
        return {case: (futures[case].result(), jobs[case][1]) for case in jobs}


def test_top_level_help(cli_runs):
    r, _ = cli_runs["help"]
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"usage: {PROG}") and "train" in r.stdout


def test_only_the_chosen_command_is_imported():
    """`--help` lists every command from the table alone; a command imports its own module and no other's."""
    code = (
        "import sys; from bench.cli import COMMANDS, build_parser; build_parser(sys.argv[1] or None)\n"
        "print(' '.join(n for n, (m, _) in COMMANDS.items() if m in sys.modules) or '-', 'torch' in sys.modules)"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    out = {
        command: subprocess.run(
            [sys.executable, "-c", code, command], env=env, capture_output=True, text=True, timeout=300, check=True
        ).stdout.split()
        for command in ("", "report")
    }
    assert out[""] == ["-", "False"]
    assert out["report"] == ["report", "False"]


def test_train_help(cli_runs):
    r, _ = cli_runs["train help"]
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"usage: {PROG} train")
    for flag in (
        "--model",
        "--knob",
        "--data",
        "--data-root",
        "--augment",
        "--schedule",
        "--out",
        "--val-size",
        "--train-eval-size",
        "--data-seed",
        "--image-size",
        "--plateau-patience",
        "--plateau-max-drops",
        "--decay",
    ):
        assert flag in r.stdout, flag


@pytest.mark.parametrize("case", SUBPROCESS_ERRORS)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, cli_runs):
    r, where = cli_runs[case]
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert_user_error(r.stderr, *SUBPROCESS_ERRORS[case][1])
    assert not (where / "results").exists()
    assert list((where / "work").iterdir()) == []  # no results/ (or anything else) where it ran


# In-process (cheap): more bad values through the same `main`.
IN_PROCESS_ERRORS = {
    "knob not key=value": (["--knob", "tanh"], ["not key=value", "--knob activation=tanh"]),
    "bad preprocess": (["--preprocess", "zca"], ["preprocess='zca'", "standardize, meanonly"]),
    "bad init": (["--init", "xavier"], ["init='xavier'", "default, kaiming, paper"]),
    "bad device": (["--device", "tpu"], ["device='tpu'", "cpu"]),
    "zero epochs": (["--epochs", "0"], ["epochs must be at least 1"]),
    "negative lr": (["--lr", "-0.1"], ["lr must be positive"]),
    "negative momentum": (["--momentum", "-1"], ["momentum must be 0 or more, got -1.0"]),
    "negative weight decay": (["--weight-decay=-0.001"], ["weight_decay must be 0 or more"]),
    "bad activation": (["--knob", "activation=swish"], ["swish", "relu, tanh"]),
    "absent cuda device": (["--device", "cuda:99"], ["cuda:99", "visible"]),
    "subset of zero": (["--train-per-class", "0"], ["at least 1"]),
    "plateau without validation": (["--schedule", "plateau", "--val-size", "0"], ["plateau", "val_size"]),
    "bad decay": (["--decay", "biases"], ["decay='biases'", "weights, all"]),
    "negative val size": (["--val-size=-1"], ["val_size must be 0 or more"]),
    "negative patience": (["--plateau-patience=-1"], ["plateau_patience must be 0 or more"]),
    "image size not the model's": (["--image-size", "64"], ["--image-size 64", "32x32"]),
}


@pytest.mark.parametrize("case", IN_PROCESS_ERRORS)
def test_bad_input_in_process(case, tmp_path, capsys):
    args, needles = IN_PROCESS_ERRORS[case]
    out = tmp_path / "results" / "run"
    assert main(["train", *TINY, *args, "--out", str(out)]) == 2
    assert_user_error(capsys.readouterr().err, *needles)
    assert not (tmp_path / "results").exists()


def test_missing_cifar10_without_network_says_how_to_fix(tmp_path, no_download, capsys):
    """In-process, so that the download can fail here whether or not this machine has a network."""
    root = tmp_path / "empty-root"
    out = tmp_path / "results" / "run"
    code = main(
        [
            "train",
            "--data",
            "cifar10",
            "--data-root",
            str(root),
            "--epochs",
            "1",
            "--device",
            "cpu",
            "--no-progress",
            "--out",
            str(out),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert len(no_download) == 1  # it tried to download, and that failed
    assert_user_error(err, "could not be downloaded", "URLError", "--data-root", "cifar10-jpeg.tar.gz")
    assert not (tmp_path / "results").exists()


def test_non_empty_out_folder_is_refused(tmp_path, capsys):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "summary.json").write_text("{}")
    assert main(["train", *TINY, "--out", str(out)]) == 2
    assert_user_error(capsys.readouterr().err, "already exists", "--out")
    assert (out / "summary.json").read_text() == "{}"


def test_out_that_is_a_file_is_refused(tmp_path, capsys):
    out = tmp_path / "a-file"
    out.write_text("keep me")
    assert main(["train", *TINY, "--out", str(out)]) == 2
    assert_user_error(capsys.readouterr().err, "--out")
    assert out.read_text() == "keep me"


def test_tiny_synthetic_run_writes_the_run_folder(tmp_path, bench_cache):
    out = tmp_path / "results" / "runs" / "tiny"
    r = run_bench(
        [
            "train",
            *TINY,
            "--epochs",
            "2",
            "--seed",
            "3",
            "--data-seed",
            "4",
            "--decay",
            "all",
            "--schedule",
            "plateau",
            "--plateau-patience",
            "1",
            "--plateau-max-drops",
            "2",
            "--train-eval-size",
            "10",
            "--out",
            str(out),
        ],
        tmp_path,
        bench_cache,
    )
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    assert {p.name for p in out.iterdir()} == {
        "config.json",
        "history.csv",
        "progress.csv",
        "summary.json",
        "checkpoint.pt",
    }
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["epochs_run"] == 2 and summary["seed"] == 3
    assert summary["val_images"] == 20 and summary["train_eval_images"] == 10 and summary["data_seed"] == 4
    assert summary["best_epoch"] in (1, 2) and "best validation error" in r.stderr
    config = json.loads((out / "config.json").read_text())["config"]
    assert config["data"] == "synthetic" and config["epochs"] == 2 and config["train_per_class"] == 2
    assert (config["val_size"], config["train_eval_size"], config["data_seed"], config["image_size"]) == (
        20,
        10,
        4,
        None,
    )
    assert (config["decay"], config["schedule"], config["plateau_patience"], config["plateau_max_drops"]) == (
        "all",
        "plateau",
        1,
        2,
    )
    assert r.stdout == ""  # people read stderr (logging); programs read the files


def test_end_of_run_line_prints_a_zero_error_as_zero(tmp_path, monkeypatch, caplog):
    summary = {
        "epochs_run": 3,
        "final_test_top1_err_pct": 0.0,
        "final_test_top5_err_pct": 0.0,
        "median_train_images_per_s": 1800.0,
    }
    monkeypatch.setattr(
        train_command, "run_training", lambda cfg, out, progress, **hooks: RunResult("ok", [], summary, None)
    )
    with caplog.at_level("INFO", logger="bench"):
        assert main(["train", *TINY, "--out", str(tmp_path / "run")]) == 0
    assert "final test error 0.00% (top-5 0.00%), 1800 train img/s" in caplog.text


# ------------------------------------------------- the command line is TrainConfig's


def _parse(cls, *argv):
    p = argparse.ArgumentParser()
    add_config_arguments(p, cls=cls)
    return config_from_args(p.parse_args(list(argv)), cls=cls)


def test_every_run_option_is_a_flag_with_the_fields_default_and_help():
    parser = argparse.ArgumentParser()
    train_command.add_arguments(parser)
    assert config_from_args(parser.parse_args([])) == TrainConfig()  # no flag given: every field's own default
    actions = {a.dest: a for a in parser._actions}
    for f in dataclasses.fields(TrainConfig):
        action = actions[f.name]
        assert flag_of(f) in action.option_strings and action.help.startswith(f.metadata["help"].replace("%", "%%"))
        if field_choices(f):
            assert action.metavar == "{" + ",".join(field_choices(f)) + "}"
    assert flag_of(dataclasses.fields(TrainConfig)[1]) == "--knob"  # knobs: one --knob KEY=VALUE per knob


def test_flags_take_values_as_the_fields_do():
    cfg = _parse(
        TrainConfig, "--knob", "width=0.5", "--lr", "1", "--train-per-class", "3", "--no-tf32", "--channels-last"
    )
    assert (cfg.knobs, cfg.lr, cfg.train_per_class, cfg.tf32, cfg.channels_last) == (
        {"width": 0.5},
        1.0,
        3,
        False,
        True,
    )
    with pytest.raises(UserError, match="schedule='linear' is not valid; choose one of: constant, cosine"):
        _parse(TrainConfig, "--schedule", "linear")


def test_a_new_field_is_a_new_flag_and_checked():
    """Adding a run option is adding a field: its flag, default, help and check follow."""

    @dataclasses.dataclass(frozen=True)
    class Extended(TrainConfig):
        label_smoothing: float = option(0.0, "label smoothing, 0 to 1")
        mixer: str = option("none", "batch mixing", choices=("none", "mixup", "cutmix"))
        ema: bool = option(False, "keep an exponential moving average of the weights")

    assert _parse(Extended) == Extended()
    cfg = _parse(Extended, "--label-smoothing", "0.1", "--mixer", "mixup", "--ema", "--epochs", "2")
    assert (cfg.label_smoothing, cfg.mixer, cfg.ema, cfg.epochs) == (0.1, "mixup", True, 2)
    with pytest.raises(UserError, match="mixer='blend' is not valid; choose one of: none, mixup, cutmix"):
        _parse(Extended, "--mixer", "blend")
    with pytest.raises(SystemExit):  # the field's type converts the flag's value
        _parse(Extended, "--label-smoothing", "lots")
    with pytest.raises(TypeError, match="help"):
        option(1)  # a run option without its help text


def test_flags_of_an_unknown_field_are_refused():
    """A misspelt name in a command's list of run options fails when the command is built, naming it."""
    p = argparse.ArgumentParser()
    with pytest.raises(ValueError, match="TrainConfig has no field nope"):
        add_config_arguments(p, ["lr", "nope"])
    with pytest.raises(ValueError, match="no field nope"):
        config_values(argparse.Namespace(lr=0.1), ["lr", "nope"])


def test_data_flags_default_to_the_environment(monkeypatch):
    monkeypatch.setenv("BENCH_DATA", "synthetic")
    monkeypatch.setenv("BENCH_DATA_ROOT", "/elsewhere")
    cfg = _parse(TrainConfig)
    assert (cfg.data, cfg.data_root) == ("synthetic", "/elsewhere")
