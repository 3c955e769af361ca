"""The throughput gate, shown to work: it saves, passes a re-run, fails a slower run naming it, refuses bad baselines.

The end-to-end tests run the real suite (bench/gate/throughput_suite.py, from the
package) in quick mode on one tiny case, four times in all: save, identical re-run, slowed
re-run and its confirmation. The slowed runs are the real suite's, read as if each
round had timed a thousandth of its images (the `slower` fixture, in the test alone): a
certain -99.9% that no machine noise can produce or hide, 50 times the 20x that the 95%
threshold tolerates. Both comparisons use a 95% threshold instead of the 10%
default: on the shared 2-vCPU development machine, re-runs of the same code
differed by up to 40% per benchmark when it was quiet, and by 2-4x when other
jobs shared the cores (a 75% threshold failed an identical re-run once, under a
study and three other suites); 95% (fail below a twentieth of the baseline) leaves
the identical re-run to nothing the machine's load does and still separates "same
code" from "a thousandth of the work". The 10% default itself is checked on exact
numbers in the unit tests of `compare` below.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import tomllib
from pathlib import Path

import pytest

from bench.cli import main as cli_main
from bench.env import environment
from bench.errors import UserError
from bench.gate import command, suite
from bench.gate.compare import (
    Run,
    check_comparable,
    compare,
    confirm,
    format_report,
    load_run,
    merge_runs,
    regressed,
    spread,
)
from bench.gate.suite import Case, all_cases, cases, device_id, resolve_options, study_cases
from bench.models import input_size_of, list_models, model_knobs
from bench.train.config import TrainConfig

# One tiny case (AlexNet at 1/8 width, batch 16: about 15 ms a training step on one
# CPU thread), quick mode, 3 rounds of 50 ms: a run is a few seconds, most of it imports.
SUITE_ARGS = [
    "--quick",
    "--model",
    "alexnet",
    "--width",
    "0.125",
    "--batch-size",
    "16",
    "--rounds",
    "3",
]
TOLERANT = ["--threshold", "0.95"]  # see the module docstring


def _gate(*args: str) -> int:
    return cli_main(["gate", *args])


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """A storage folder holding baseline `base`, saved by the gate from a real quick run."""
    storage = tmp_path_factory.mktemp("benchmarks")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")  # a 2-core machine shared with other work
        # One suite run, not the default 3: this baseline's noise is not what these tests check.
        assert _gate("--save", "base", "--storage", str(storage), "--repeat", "1", *SUITE_ARGS) == 0
    return storage


@pytest.fixture(autouse=True)
def pauses(monkeypatch) -> list[float]:
    """The waits before re-measurements, recorded instead of slept."""
    waited: list[float] = []
    monkeypatch.setattr(command, "pause", waited.append)
    return waited


@pytest.fixture
def one_thread(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


@pytest.fixture
def no_suite_run(monkeypatch):
    """The gate must refuse before running anything: running the suite fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("the suite ran, but the gate should have refused first")

    monkeypatch.setattr(command, "run_suite", refuse)


def _only_file(storage: Path) -> Path:
    (path,) = storage.glob("*/*/*_base.json")
    return path


def _one_line_error(capfd) -> str:
    err = capfd.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "Traceback" not in err, err
    return err


# ---------------------------------------------------------------- end to end


def test_save_stores_a_baseline_per_device(saved):
    path = _only_file(saved)
    here = environment("cpu")
    assert path.parts[-3] == device_id(here)  # STORAGE/<device id>/<machine>/0001_base.json
    run = load_run(path)
    assert run.environment["device_name"] == here["device_name"]
    assert {"torch", "torchvision", "cuda", "cudnn", "gpu_driver", "num_threads"} <= set(run.environment)
    assert run.settings["width"] == 0.125 and run.settings["batch_size"] == 16
    assert sorted(run.benchmarks) == ["test_infer[alexnet]", "test_train[alexnet]"]
    for entry in run.benchmarks.values():
        info = entry["extra_info"]
        assert info["images_per_s"] == pytest.approx(info["images_per_round"] / entry["stats"]["median"])
        assert entry["stats"]["rounds"] == 3
        assert info["images_per_round"] == 16 * info["steps_per_round"]


def test_identical_rerun_passes(saved, one_thread, capfd):
    assert _gate("--compare", "base", "--storage", str(saved), *TOLERANT, *SUITE_ARGS) == 0
    out = capfd.readouterr().out
    assert "PASSED: all 2 benchmarks" in out
    assert "train alexnet" in out and "infer alexnet" in out and "REGRESSED" not in out


@pytest.fixture
def slower(monkeypatch):
    """The real suite, each run read as if its rounds had timed a thousandth of their images: 1000 times slower."""
    real = command.run_suite

    def run_suite(values, json_path, pytest_args, select=None):
        status = real(values, json_path, pytest_args, select)
        data = json.loads(json_path.read_text())
        for entry in data["benchmarks"]:
            entry["extra_info"]["images_per_round"] /= 1000
        json_path.write_text(json.dumps(data))
        return status

    monkeypatch.setattr(command, "run_suite", run_suite)


def test_slower_run_fails_naming_the_regressed(saved, one_thread, slower, capfd, tmp_path):
    report = tmp_path / "comparison.csv"
    status = _gate(
        "--compare",
        "base",
        "--storage",
        str(saved),
        *TOLERANT,
        "--report",
        str(report),
        "--confirm",
        "1",  # once is enough here; the scripted-suite tests check the default 3
        *SUITE_ARGS,
    )
    captured = capfd.readouterr()
    out = captured.out
    assert status == 1, out
    verdict = next(line for line in out.splitlines() if line.startswith("FAILED"))
    assert "2 of 2" in verdict and "train alexnet" in verdict and "infer alexnet" in verdict
    assert "confirmed by re-measurement" in verdict
    # Both suspects were run again, alone, and stayed slow.
    assert "re-measuring 2 benchmark(s)" in captured.err and "(1 of at most 1)" in captured.err
    again = r"again -\d+\.\d%; beyond"
    assert re.search(rf"^  train alexnet: -\d+\.\d% beyond -95%; {again}", out, re.M), out
    rows = report.read_text().splitlines()
    assert rows[0].startswith("benchmark,") and sum(",regressed" in r for r in rows) == 2


def test_missing_baseline_is_one_line_exit_2(tmp_path, no_suite_run, capfd):
    assert _gate("--compare", "nothing-here", "--storage", str(tmp_path), *SUITE_ARGS) == 2
    err = _one_line_error(capfd)
    assert "no baseline 'nothing-here'" in err and "--save nothing-here" in err


@pytest.mark.parametrize(
    "change, message",
    [
        (["--width", "0.25"], "width=0.125; this run would measure width=0.25"),
        (["--batch-size=8"], "batch_size=16; this run would measure batch_size=8"),
        (["--dtype", "bf16"], "dtype=fp32; this run would measure dtype=bf16"),
        (["--batches", "dataset"], "data=fixed; this run would measure data=dataset"),
        (["--channels-last"], "memory_format=contiguous; this run would measure memory_format=channels_last"),
    ],
)
def test_baseline_with_other_settings_is_refused_before_the_suite_runs(saved, no_suite_run, capfd, change, message):
    args = [a for a in SUITE_ARGS]
    for option in {c.split("=")[0] for c in change} & set(args):  # replace, not repeat, what SUITE_ARGS sets
        i = args.index(option)
        del args[i : i + 2]
    assert _gate("--compare", "base", "--storage", str(saved), *args, *change) == 2
    err = _one_line_error(capfd)
    assert message in err and "pass the same suite options (--quick, --dtype, ...)" in err


@pytest.mark.parametrize("where", ["same folder, edited", "another device's folder"])
def test_baseline_from_another_device_is_one_line_exit_2(saved, tmp_path, no_suite_run, capfd, where):
    storage = tmp_path / "benchmarks"
    shutil.copytree(saved, storage)
    path = _only_file(storage)
    data = json.loads(path.read_text())
    env = data["machine_info"]["bench"]["environment"]
    env.update(device="cuda", device_name="NVIDIA H100 80GB HBM3", cuda="13.0", cudnn="91900")
    path.write_text(json.dumps(data))
    if where == "another device's folder":
        other = storage / device_id(env) / path.parent.name
        other.mkdir(parents=True)
        path.rename(other / path.name)

    assert _gate("--compare", "base", "--storage", str(storage), *SUITE_ARGS) == 2
    err = _one_line_error(capfd)
    assert "cuda 'NVIDIA H100 80GB HBM3'" in err  # where the baseline is from
    assert f"cpu {environment('cpu')['device_name']!r}" in err  # and where this run is


@pytest.mark.parametrize(
    "args, message",
    [
        (["--compare", "base", "--threshold", "10"], "--threshold must be a fraction"),
        (["--compare", "base", "--", "--bench-device", "cpu"], "give --device before --"),
        (["--save", "../up"], "baseline name '../up' is not valid"),
        (["--compare", "base", "--stat", "mean"], "--stat 'mean' is not valid"),
        (["--compare", "base", "--repeat", "0"], "--repeat must be an odd number"),
        (["--save", "base", "--repeat", "2"], "--repeat must be an odd number (1, 3, 5"),
        (["--compare", "base", "--confirm", "-1"], "--confirm must be 0 or more"),
        (["--compare", "base", "--batches", "disk"], "--batches 'disk' is not valid"),
        (["--compare", "base", "--dtype", "fp64"], "dtype='fp64' is not valid"),
        (["--save", "", "--quick"], "baseline name '' is not valid"),
    ],
)
def test_bad_arguments_are_one_line_exit_2(tmp_path, no_suite_run, capfd, args, message):
    assert _gate(*args, "--storage", str(tmp_path)) == 2
    assert message in _one_line_error(capfd)


def test_gate_is_a_subcommand_of_the_cli_and_its_suite_ships_in_the_package(tmp_path, no_suite_run, capfd):
    from bench.cli import main

    assert command.SUITE.is_file() and command.SUITE.parent == Path(command.__file__).parent
    assert main(["gate", "--compare", "nothing-here", "--storage", str(tmp_path), *SUITE_ARGS]) == 2
    assert "no baseline 'nothing-here'" in _one_line_error(capfd)
    # After --, a suite option is refused under its gate name and under the name pytest knows it by.
    for after in (["--quick"], ["--bench-quick"], ["--model=lenet5"], ["--no-bench-channels-last"]):
        assert main(["gate", "--save", "base", "--storage", str(tmp_path), "--", *after]) == 2
        flag = after[0].split("=")[0].replace("bench-", "").replace("--no-", "--")
        assert f"give {flag} before --, not after it" in _one_line_error(capfd)


def test_the_run_options_are_train_config_flags(capsys):
    """--dtype, --channels-last, --batch-size, ... are `TrainConfig`'s flags (help, choices), as in train and measure."""
    from dataclasses import fields

    from bench.cli import main

    with pytest.raises(SystemExit):
        main(["gate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for f in fields(TrainConfig):
        if f.name in command.RUN_OPTIONS:
            assert " ".join(f.metadata["help"].split()) in text, f.name
    assert "--inject-slowdown" not in text  # the tests' slowdown is theirs (`slower`), not a user's flag


def test_missing_pytest_benchmark_is_one_line_naming_the_extra(tmp_path, monkeypatch, no_suite_run, capfd):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "pytest_benchmark" else find_spec(name, *a)
    )
    assert _gate("--save", "base", "--storage", str(tmp_path)) == 2
    assert "pip install 'alexnet-bench[dev]'" in _one_line_error(capfd)


@pytest.mark.parametrize("pytest_status, gate_status", [(1, 1), (4, 2)])
def test_failed_suite_saves_nothing(tmp_path, monkeypatch, capfd, pytest_status, gate_status):
    """A test failure (1) or a bad suite option (4, pytest's usage error) leaves no baseline."""

    def failing_suite(values, json_path, pytest_args, select=None):
        json_path.write_text("{}")  # whatever pytest-benchmark left behind is not used
        return pytest_status

    monkeypatch.setattr(command, "run_suite", failing_suite)
    assert _gate("--save", "base", "--storage", str(tmp_path), *SUITE_ARGS) == gate_status
    assert not list(tmp_path.rglob("*.json"))


def _fake_suite(monkeypatch, case: str, env: dict | None = None, **changes):
    """Instead of the suite: a run with one benchmark `case`, measured with the options the gate resolved."""
    import torch

    def fake(values, json_path, pytest_args, select=None):
        bench = {"environment": env if env is not None else environment(torch.device("cpu")),
                 "settings": resolve_options(**values).recorded()}  # fmt: skip
        entry = {"name": f"test_train[{case}]", "group": "train", "stats": {"median": 0.1, "min": 0.1, "iqr": 0.0},
                 "extra_info": {"phase": "train", "case": case, "images_per_round": 100}}  # fmt: skip
        for key, value in changes.items():  # a run edited by hand: e.g. extra_info=None
            entry[key] = value
        json_path.write_text(json.dumps({"machine_info": {"bench": bench}, "benchmarks": [entry]}))
        return 0

    monkeypatch.setattr(command, "run_suite", fake)


def _scripted_suite(monkeypatch, rates: list[dict[str, float]]):
    """Instead of the suite: the i-th call records `rates[i]` (images/s per case); the calls' selections are returned."""
    import torch

    calls = []

    def fake(values, json_path, pytest_args, select=None):
        options = resolve_options(**values)
        bench = {"environment": environment(torch.device("cpu")), "settings": options.recorded()}
        chosen = {c: r for c, r in rates[len(calls)].items() if select is None or f"test_train[{c}]" in select}
        calls.append(select)
        entries = [
            {"name": f"test_train[{c}]", "group": "train", "stats": {"median": 1 / r, "min": 1 / r, "iqr": 0.01 / r},
             "extra_info": {"phase": "train", "case": c, "images_per_round": 1, "mode": options.mode()}}
            for c, r in chosen.items()
        ]  # fmt: skip
        json_path.write_text(json.dumps({"machine_info": {"bench": bench}, "benchmarks": entries}))
        return 0

    monkeypatch.setattr(command, "run_suite", fake)
    return calls


def test_a_drop_that_re_measurement_does_not_confirm_passes(tmp_path, monkeypatch, capfd, pauses):
    """Recorded timings: a baseline of 3 runs, then a run where one benchmark hit a slow phase."""
    steady = {"lenet5": 1000.0, "alexnet": 500.0}
    calls = _scripted_suite(monkeypatch, [steady, steady, steady, {"lenet5": 1000.0, "alexnet": 300.0}, steady])
    args = ["--storage", str(tmp_path), "--model", "lenet5,alexnet"]
    assert _gate("--save", "base", *args) == 0
    assert calls == [None] * 3  # --save: 3 suite runs by default
    assert _gate("--compare", "base", *args) == 0
    captured = capfd.readouterr()
    assert calls[3:] == [None, ["test_train[alexnet]"]]  # the suspect alone, once: it came back
    assert pauses == [0.0]  # the first re-measurement at once
    assert "re-measuring 1 benchmark(s) that dropped beyond their noise band (1 of at most 3)" in captured.err
    assert "train alexnet: -40.0% beyond -10%; again +0.0%; back within the band" in captured.out
    assert "PASSED: all 2 benchmarks within their noise band" in captured.out


def test_a_drop_that_re_measurement_confirms_fails(tmp_path, monkeypatch, capfd, pauses):
    steady, slow = {"lenet5": 1000.0, "alexnet": 500.0}, {"lenet5": 1000.0, "alexnet": 240.0}
    calls = _scripted_suite(monkeypatch, [steady] + [slow] * 9)
    args = ["--storage", str(tmp_path), "--model", "lenet5,alexnet"]
    assert _gate("--save", "base", "--repeat", "1", *args) == 0
    assert _gate("--compare", "base", *args) == 1
    out = capfd.readouterr().out
    assert calls[1:] == [None] + [["test_train[alexnet]"]] * 3
    assert pauses == [0.0, 10.0, 20.0]  # a slow phase of the machine had 30 s to pass; the code stayed slow
    assert "FAILED: 1 of 2 benchmarks lost more throughput than their noise band, confirmed" in out
    assert _gate("--compare", "base", "--confirm", "0", *args) == 1  # no re-measurement asked for
    assert calls[5:] == [None]


def test_no_benchmark_in_common_with_the_baseline_fails_the_gate(tmp_path, monkeypatch, capfd):
    """A run that compared nothing proves nothing: exit 1, saying so, not a silent pass."""
    _fake_suite(monkeypatch, "lenet5")
    assert _gate("--save", "base", "--storage", str(tmp_path), "--model", "lenet5") == 0
    _fake_suite(monkeypatch, "alexnet")
    status = _gate("--compare", "base", "--storage", str(tmp_path), "--model", "lenet5")
    out = capfd.readouterr().out
    assert "FAILED: no benchmark in common with the baseline" in out
    assert status == 1, "the gate passed a run that shares no benchmark with its baseline"


# ---------------------------------------------------------------- the comparison, on exact numbers


def _run(rates: dict[str, float], *, device_name="Some CPU", threads=2, spread=0.03, mode=None, **settings) -> Run:
    """A run whose benchmarks have these images/s (100 images per round), rounds spread by `spread` (IQR/median)."""
    benchmarks = {
        f"test_train[{case}]": {
            "name": f"test_train[{case}]",
            "group": "train",
            "extra_info": {"phase": "train", "case": case, "images_per_round": 100, "mode": mode},
            "stats": {"median": 100 / rate, "min": 90 / rate, "iqr": spread * 100 / rate},
        }
        for case, rate in rates.items()
    }
    env = {"device": "cpu", "device_name": device_name, "num_threads": threads, "torch": "2.14.1"}
    recorded = {"dtype": "fp32", "memory_format": "contiguous", "batch_size": 32, "width": 0.25, **settings}
    return Run(Path("0001_base.json"), env, recorded, "2026-01-01T00:00:00", None, benchmarks)


def test_compare_suspects_beyond_the_threshold_and_fails_only_the_unconfirmed():
    old = _run({"a": 1000, "b": 1000, "c": 1000, "gone": 1000})
    new = _run({"a": 910, "b": 890, "c": 1200, "added": 1000}, threads=1)
    rows = {r["case"]: r for r in compare(old, new, threshold=0.10)}
    assert {k: r["status"] for k, r in rows.items()} == {
        "a": "ok",
        "b": "suspect",
        "c": "faster",
        "gone": "missing",
        "added": "new",
    }
    assert rows["b"]["change"] == pytest.approx(-0.11)
    assert rows["b"]["band"] == pytest.approx(0.10)  # 2 x hypot(3%, 3%) = 8.5%: the threshold is the floor
    assert rows["b"]["baseline_images_per_s"] == pytest.approx(1000)
    assert [r["status"] for r in compare(old, new, threshold=0.12)][:2] == ["ok", "ok"]

    confirm(list(rows.values()), None, times=0)  # no re-measurement: a suspect is a regression
    assert rows["b"]["status"] == "regressed"
    text = format_report(old, new, list(rows.values()), threshold=0.10, stat="median")
    assert "FAILED: 1 of 3 benchmarks lost more throughput than their noise band: train b" in text
    assert "changed since the baseline: threads 2 -> 1" in text
    assert re.search(r"^train b +1,000\.0 +890\.0 +3% +10% +-11\.0% +REGRESSED \(confirmed\)$", text, re.M), text


@pytest.mark.parametrize(
    "spread, change, status, band",
    [
        (0.03, -0.20, "suspect", 0.10),  # quiet: the threshold is the band
        (0.10, -0.20, "ok", 2 * 0.1 * 2**0.5),  # noisy: 2 x hypot(10%, 10%) = 28% explains a 20% drop
        (0.50, -0.35, "suspect", 0.30),  # very noisy: the band stops at 30%, a 35% drop is suspect
        (0.10, +0.25, "ok", 2 * 0.1 * 2**0.5),  # a gain inside the band is not "faster" either
    ],
)
def test_the_noise_band_widens_with_the_measured_spread(spread, change, status, band):
    (row,) = compare(_run({"a": 1000}, spread=spread), _run({"a": 1000 * (1 + change)}, spread=spread), threshold=0.1)
    assert row["status"] == status
    assert row["band"] == pytest.approx(band)


def test_spread_of_a_merged_run_is_the_spread_of_its_suite_runs_when_wider():
    (entry,) = _run({"a": 100}, spread=0.01).benchmarks.values()
    assert spread(entry) == pytest.approx(0.01)
    entry["extra_info"]["repeat_images_per_s"] = [80.0, 100.0, 120.0]
    assert spread(entry) == pytest.approx(0.2)  # inclusive quartiles 90 and 110, over the median 100
    entry["extra_info"]["repeat_images_per_s"] = [100.0, 100.5, 101.0]
    assert spread(entry) == pytest.approx(0.01)  # the rounds' spread, the wider


def test_confirm_re_measures_only_the_suspects_and_fails_only_those_slow_every_time():
    old = _run({"ok": 1000, "blip": 1000, "slow": 1000, "late-blip": 1000})
    new = _run({"ok": 1000, "blip": 700, "slow": 500, "late-blip": 800})
    rows = compare(old, new, threshold=0.1)
    again = {"blip": [990], "slow": [510, 495], "late-blip": [850, 1005]}
    asked = []

    def remeasure(names, attempt):
        asked.append((attempt, names))
        return {f"test_train[{n}]": again[n][attempt - 1] for n in (name[11:-1] for name in names)}

    suspects = confirm(rows, remeasure, times=2)
    assert [r["case"] for r in suspects] == ["blip", "slow", "late-blip"]
    assert asked == [
        (1, ["test_train[blip]", "test_train[slow]", "test_train[late-blip]"]),
        (2, ["test_train[slow]", "test_train[late-blip]"]),  # blip came back within its band: not run again
    ]
    status = {r["case"]: r["status"] for r in rows}
    assert status == {"ok": "ok", "blip": "noise", "slow": "regressed", "late-blip": "noise"}
    assert next(r for r in rows if r["case"] == "slow")["remeasured"] == pytest.approx([-0.49, -0.505])
    text = format_report(old, new, rows, threshold=0.1, stat="median")
    assert "FAILED: 1 of 4 benchmarks lost more throughput than their noise band, confirmed" in text
    assert "  train blip: -30.0% beyond -10%; again -1.0%; back within the band: noise, not a regression" in text
    assert "  train slow: -50.0% beyond -10%; again -49.0%, -50.5%; beyond the band every time" in text


def _noisy(rng: random.Random, rate: float) -> float:
    """One measurement of a benchmark running at `rate` on a shared machine.

    The noise model of the issue's 2-core CPU (identical re-runs of single suite runs
    fell by up to 32% and rose by up to 72%): a slower phase of the machine one
    measurement in five, costing 10-35%, on top of a 3% jitter.
    """
    slow = rng.uniform(0.10, 0.35) if rng.random() < 0.2 else 0.0
    return rate * (1 - slow) * rng.lognormvariate(0, 0.03)


def _simulated_gate(rng: random.Random, true_rates: dict[str, float], base_rates: dict[str, float]) -> bool:
    """Whether the gate fails: baseline the median of 3 noisy runs, one noisy run, suspects re-measured."""

    def measured(rates, repeats=1):
        entries = {}
        for case, rate in rates.items():
            runs = sorted(_noisy(rng, rate) for _ in range(repeats))
            entries[case] = runs[len(runs) // 2], runs
        run = _run({c: r for c, (r, _) in entries.items()}, spread=0.03)
        for case, (_, runs) in entries.items():
            if repeats > 1:
                run.benchmarks[f"test_train[{case}]"]["extra_info"]["repeat_images_per_s"] = runs
        return run

    baseline = measured(base_rates, repeats=3)
    rows = compare(baseline, measured(true_rates), threshold=0.1)
    confirm(rows, lambda names, _: {n: _noisy(rng, true_rates[n[11:-1]]) for n in names})
    return bool(regressed(rows))


def test_on_a_modelled_noisy_machine_identical_runs_pass_and_half_the_speed_fails():
    """The verdict's logic against a recorded noise model, not this machine: 18 benchmarks, 10 runs each way."""
    rng = random.Random(0)
    rates = {f"case{i}": rng.uniform(200, 5000) for i in range(18)}
    identical = [_simulated_gate(rng, rates, rates) for _ in range(10)]
    # One thread of two: 23-48% slower per benchmark, as measured in the issue.
    half = [_simulated_gate(rng, {c: r * rng.uniform(0.52, 0.77) for c, r in rates.items()}, rates) for _ in range(10)]
    assert sum(identical) <= 1 and sum(half) == 10, (identical, half)


def test_compare_on_min_reads_the_min_round():
    rows = compare(_run({"a": 1000}), _run({"a": 1000}), threshold=0.1, stat="min")
    assert rows[0]["images_per_s"] == pytest.approx(100 / 0.09)


def test_repeated_runs_merge_to_the_median_run_per_benchmark(tmp_path):
    paths = []
    for i, rates in enumerate([{"a": 100, "b": 900}, {"a": 300, "b": 700}, {"a": 200, "b": 800}]):
        run = _run(rates)
        data = {
            "machine_info": {"bench": {"environment": run.environment, "settings": run.settings}},
            "benchmarks": list(run.benchmarks.values()),
            "datetime": f"2026-01-0{i + 1}",
        }
        paths.append(tmp_path / f"run{i}.json")
        paths[-1].write_text(json.dumps(data))
    merged = load_run(merge_runs(paths, tmp_path / "merged.json"))
    assert merged.repeat == 3
    rows = {r["case"]: r["images_per_s"] for r in compare(merged, merged, threshold=0.1)}
    assert rows == pytest.approx({"a": 200, "b": 800})
    assert merged.benchmarks["test_train[a]"]["extra_info"]["repeat_images_per_s"] == pytest.approx([100, 300, 200])


def test_runs_from_other_devices_or_settings_are_not_comparable():
    check_comparable(_run({"a": 1}), _run({"a": 1}, threads=1))  # threads: a measurement, not a device
    with pytest.raises(UserError, match="measured on cpu 'Other CPU'; this run is on cpu 'Some CPU'"):
        check_comparable(_run({"a": 1}, device_name="Other CPU"), _run({"a": 1}))
    with pytest.raises(UserError, match="measured dtype=fp32; this run measured dtype=bf16"):
        check_comparable(_run({"a": 1}), _run({"a": 1}, dtype="bf16"))


# ---------------------------------------------------------------- the suite's cases and device identity


def test_suite_covers_the_registry_and_the_ablations():
    every = {c.id for c in all_cases()}
    assert set(list_models()) <= every
    assert {c.id for c in study_cases()} <= every
    # The study's baseline is the two-tower net, and its flips are made from it.
    assert dict(study_cases()[0].knobs)["groups"] == 2  # the flips' knobs: test_ablation_cases_are_...
    quick = {c.model for c in cases(resolve_options(device="cpu", quick=True))}
    assert quick == {n for n in list_models() if input_size_of(n) <= 64}
    assert {"alexnet-paper", "alexnet-tv"} <= {c.model for c in cases(resolve_options(device="cpu"))}
    picked = cases(resolve_options(device="cpu", quick=True, models="alexnet:*"))
    assert [c.id for c in picked] == [c.id for c in study_cases()]
    with pytest.raises(ValueError, match="matches no benchmark case"):
        cases(resolve_options(device="cpu", models="alexnt"))


def _study_variants(study: dict, profile: str) -> tuple[dict, dict[tuple[str, str], dict]]:
    """The AlexNet study file's baseline model knobs, and the knobs of each non-baseline factor level, from its TOML.

    Read here without `bench.studies` or the gate: the base's and profile's knobs (less
    `width`, the gate's own), each factor's baseline level on top; a level's variant is
    the baseline with that level's knobs. A level that sets no knob (augment) has none.
    """

    def level_knobs(spec: dict, level) -> dict:
        if "key" in spec:
            key = spec["key"].split(".")
            return {key[1]: level} if key[0] == "knobs" else {}
        return dict(spec["levels"][level].get("knobs", {}))

    factors = study["factors"]
    baseline = {**study["base"].get("knobs", {}), **study["profiles"][profile].get("knobs", {})}
    for spec in factors.values():
        levels = list(spec["levels"])
        baseline.update(level_knobs(spec, spec.get("baseline", levels[0])))
    baseline.pop("width", None)
    variants = {}
    for name, spec in factors.items():
        levels = list(spec["levels"])
        for level in levels[1:] if "baseline" not in spec else [lv for lv in levels if lv != spec["baseline"]]:
            knobs = level_knobs(spec, level)
            if knobs:
                variants[(name, str(level))] = {**baseline, **knobs}
    return baseline, variants


def test_ablation_cases_are_the_study_files_model_variants():
    """Each model the AlexNet study trains is one case, and the gate adds no other.

    The expectation comes from the study file itself, so a new knob (a factor in the
    study file) needs no edit here: its level must show up as one more case that
    differs from the baseline's model in that knob alone.
    """
    study = tomllib.loads((suite.studies_dir() / f"{suite.STUDY}.toml").read_text())
    assert study["study"]["design"] == "one-at-a-time"  # a factorial study would cross the levels
    baseline, variants = _study_variants(study, suite.STUDY_PROFILE)
    defaults = {k: v for k, v in model_knobs("alexnet").items() if k != "width"}
    studied = study_cases()
    full = [{**defaults, **dict(c.knobs)} for c in studied]  # each case's whole model, defaults filled in
    assert all(study["base"]["model"] == c.model == "alexnet" for c in studied)
    assert full[0] == {**defaults, **baseline}, "the first case is the study's baseline model"
    assert len(variants) >= 5  # the paper's design choices: activation, norm, pool, dropout, towers
    for (factor, level), knobs in variants.items():
        wanted = {**defaults, **knobs}
        assert full.count(wanted) == 1 or (wanted == defaults and Case("alexnet") in all_cases()), (factor, level)
        changed = {k for k in wanted if wanted[k] != full[0][k]}
        assert changed and changed <= set(knobs), f"{factor}={level} changes {changed}, not only its own knobs"
    expected = [{**defaults, **baseline}] + [{**defaults, **k} for k in variants.values()]
    invented = [c.id for c, knobs in zip(studied, full) if knobs not in expected]
    assert not invented, f"cases the study does not train: {invented}"
    assert len(studied) == len({c.id for c in studied})


def test_ablation_cases_follow_the_study_file(tmp_path, monkeypatch):
    study = (suite.studies_dir() / f"{suite.STUDY}.toml").read_text()
    study += '\n[factors.wider]\nkey = "knobs.conv_width"\nlevels = [1.0, 1.5]\n'
    (tmp_path / f"{suite.STUDY}.toml").write_text(study)
    monkeypatch.setattr(suite, "studies_dir", lambda: tmp_path)
    baseline, wider = study_cases()[0], study_cases()[-1]
    assert dict(wider.knobs) == {**dict(baseline.knobs), "conv_width": 1.5}
    assert wider.id in {c.id for c in all_cases()}

    (tmp_path / f"{suite.STUDY}.toml").unlink()
    with pytest.raises(UserError, match="study file .* is missing"):
        study_cases()


def test_device_id_is_the_device_not_the_threads_or_versions():
    here = environment("cpu")
    assert device_id({**here, "num_threads": 1, "torch": "0.0"}) == device_id(here)
    assert device_id({**here, "device_name": "Other CPU"}) != device_id(here)
    assert device_id({"device": "cuda", "device_name": "NVIDIA H100 80GB HBM3"}) == "cuda-nvidia-h100-80gb-hbm3"


# ---------------------------------------------------------------- the training mode timed


def test_on_cuda_the_suite_times_the_gpu_profiles_mode_and_elsewhere_todays():
    import torch

    profile = suite._study_settings(suite._study_path(), suite._study_path().stat().st_mtime_ns)[0]
    cuda = resolve_options(device=torch.device("cuda"), quick=True)  # resolving needs no GPU
    assert cuda.mode() == {
        "dtype": profile["dtype"],
        "memory_format": "channels_last" if profile["channels_last"] else "contiguous",
        "cudnn_benchmark": True,
        "tf32": True,
        "data": "dataset",
        "augment": profile["augment"],
    }
    assert (profile["dtype"], profile["channels_last"]) == ("bf16", True)  # as ablations/alexnet.toml says today
    cpu = resolve_options(device=torch.device("cpu"), quick=True)
    assert cpu.mode() == {"dtype": "fp32", "memory_format": "contiguous", "cudnn_benchmark": None, "tf32": None,
                          "data": "fixed", "augment": "none"}  # fmt: skip
    overridden = resolve_options(device=torch.device("cuda"), dtype="fp32", channels_last=False, data="fixed")
    assert (overridden.dtype, overridden.memory_format, overridden.data) == ("fp32", "contiguous", "fixed")


def test_runs_timed_in_another_mode_are_not_comparable():
    fixed = {"dtype": "fp32", "data": "fixed"}
    check_comparable(_run({"a": 1}, mode=fixed), _run({"a": 1}, mode=fixed))
    with pytest.raises(UserError, match="in mode .*'fixed'.*; this run timed it in mode .*'dataset'"):
        check_comparable(_run({"a": 1}, mode=fixed), _run({"a": 1}, mode={**fixed, "data": "dataset"}))
