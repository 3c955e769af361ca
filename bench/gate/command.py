"""`python -m bench gate --against REF | --save NAME | --compare NAME [--threshold 0.1] [--model PATTERN] [--quick ...]`.

The throughput gate (`python -m bench.gate ...` is the same command): exit 1 when this
checkout trains or infers slower than a reference, on the device at hand (CUDA when
present), in the mode the studies train in there (`bench.gate.suite.study_mode`). Each
benchmark times a `bench.measure.workload.Workload` (`bench.gate.suite`). The run
options (`--device`, `--dtype`, `--[no-]channels-last`, `--batch-size`,
`--[no-]cudnn-benchmark`, `--[no-]tf32`) are `TrainConfig`'s flags, as in `train` and
`measure`; `--quick`, `--model`, `--width`, `--rounds` and `--batches` choose the suite.
Everything is checked before anything runs.

`--against REF` (for CI, and any machine whose speed drifts): this checkout and git
commit REF, both measured now, in alternating rounds of two worker processes
(`bench.gate.paired`); nothing is stored.

`--save NAME` / `--compare NAME` (a record per device over time): the suite
`bench.gate.throughput_suite` under pytest-benchmark in a fresh process (pytest and
pytest-benchmark: `pip install 'alexnet-bench[dev]'`; arguments after `--` pass to
pytest). `--save` runs it `--repeat` times (default 3) and stores, if it passed, the
median run per benchmark with its spread in STORAGE/<device id>/ (pytest-benchmark's
numbered files: saving NAME again keeps the old file, the newest wins). `--compare`
checks that this device has a baseline NAME, runs the suite once, and compares each
benchmark's images/s with the baseline's within its noise band (`bench.gate.compare`);
suspects are run again, up to `--confirm` times after growing pauses, and fail only if
they stay beyond their band every time.

Exit status: 0 saved or passed; 1 regressed, or the suite itself failed; 2 bad input
(missing baseline, baseline from another device or other settings, bad option), as
one line on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.util
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.device import pick_device
from bench.env import environment
from bench.errors import UserError
from bench.gate import paired
from bench.gate.compare import (
    CONFIRM,
    STATS,
    check_comparable,
    check_settings,
    compare,
    confirm,
    format_report,
    format_run,
    images_per_s,
    load_run,
    merge_runs,
    regressed,
)
from bench.gate.plugin import OPTION
from bench.gate.suite import PHASES, cases, describe_device, device_id, resolve_options
from bench.io import atomic_write_text, check_writable, write_csv
from bench.train.flags import add_config_arguments

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]  # the folder holding the `bench` package: a checkout, or site-packages
SUITE = Path(__file__).with_name("throughput_suite.py")
PLUGIN = "bench.gate.plugin"
STORAGE_ENV = "BENCH_GATE_STORAGE"
DEFAULT_THRESHOLD = 0.10
# A baseline is measured once and compared with many times: its error would fail
# every later comparison alike, so it takes the median of 3 suite runs.
SAVE_REPEAT, COMPARE_REPEAT = 3, 1
# Seconds before the second re-measurement of a stored comparison, twice that before the third, and
# so on: a slow phase of the machine (one lasted through an immediate re-measurement on a 2-core EPYC
# VM) passes, a slower code does not. A run with nothing suspect waits nothing.
CONFIRM_PAUSE = 10.0
# --against: pairs of rounds per benchmark, and fresh sets of them to confirm a suspect. On a
# 2-core EPYC a pair's log ratio varies 6-9%: 10 pairs give an interval of about +-6% (t, 9 df),
# a tenth of a second each; one confirmation, since the pairs already cancel the drift.
PAIRS, AGAINST_CONFIRM = 10, 1
# The run options, as TrainConfig's flags; None: the suite's preset and the device's study mode decide.
RUN_OPTIONS = ("device", "dtype", "channels_last", "batch_size", "cudnn_benchmark", "tf32")
UNSET = {
    "dtype": "on CUDA the AlexNet study's gpu profile's, else fp32",
    "channels_last": "on CUDA as the AlexNet study's gpu profile, else off",
    "batch_size": "128, quick 32",
}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_PYTEST_USAGE_ERROR, _PYTEST_NO_TESTS = 4, 5


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Throughput regression gate: compare this checkout with a git commit (--against), or save the "
        "benchmark suite as a baseline and compare with it later; exit 1 on a confirmed loss."
    )
    p.epilog = "Arguments after -- pass to pytest (--save, --compare), e.g. -- -x -k alexnet."
    action = p.add_mutually_exclusive_group(required=True)
    action.add_argument(
        "--against",
        metavar="REF",
        help="compare this checkout with git commit REF (a branch, tag or id), both measured now, alternately: "
        "no stored baseline, and a machine whose speed drifts cancels out (the one for CI)",
    )
    action.add_argument("--save", metavar="NAME", help="run the suite and store it as baseline NAME")
    action.add_argument("--compare", metavar="NAME", help="run the suite and compare it with baseline NAME")
    p.add_argument(
        "--threshold",
        type=float,
        default=DEFAULT_THRESHOLD,
        help="a throughput loss up to this fraction never fails (default %(default)s = 10%%)",
    )
    p.add_argument(
        "--confirm",
        type=int,
        default=None,
        metavar="R",
        help="measure a suspected loss again up to R times; it fails only if suspected every time "
        f"(default: --against {AGAINST_CONFIRM} fresh set of pairs, --compare {CONFIRM}; 0 fails at once)",
    )
    p.add_argument("--report", type=Path, default=None, help="also write the comparison as CSV here")
    p.add_argument(
        "--pairs",
        type=int,
        default=None,
        metavar="N",
        help=f"--against: pairs of rounds per benchmark, one of each side (default {PAIRS}; at least 2)",
    )
    p.add_argument(
        "--repeat",
        type=int,
        default=None,
        metavar="K",
        help="--save, --compare: run the suite K times (K odd) and keep, per benchmark, the median run and "
        f"the spread of the K (default {SAVE_REPEAT} with --save, {COMPARE_REPEAT} with --compare)",
    )
    p.add_argument(
        "--stat", default="median", help="--save, --compare: round-time statistic, median | min (default %(default)s)"
    )
    p.add_argument(
        "--storage",
        type=Path,
        default=None,
        help=f"--save, --compare: baseline folder (default ${STORAGE_ENV}, else .benchmarks in the checkout, "
        "else in the current folder)",
    )
    suite = p.add_argument_group("the suite")
    suite.add_argument("--quick", action="store_true", help="small batch and width, few rounds: a CPU run")
    suite.add_argument(
        "--model", default="", metavar="PATTERN", help="comma-separated wildcards over case ids, e.g. 'alexnet*,vgg11'"
    )
    suite.add_argument("--width", type=float, default=None, help="channel multiplier of models with a width knob "
                       "(default 1, quick 0.25)")  # fmt: skip
    suite.add_argument("--rounds", type=int, default=None, help="--save, --compare: timed rounds per benchmark "
                       "(default 15, quick 5)")  # fmt: skip
    # Not --data: that is the data set in train and ablate; this is how the timed steps get their batches.
    suite.add_argument(
        "--batches",
        default=None,
        metavar="KIND",
        help="training batches: 'dataset' (drawn from a device-resident uint8 data set, normalised and augmented "
        "on the device as the study trains) or 'fixed' (one fixed batch); default dataset on CUDA, else fixed",
    )
    add_config_arguments(suite, RUN_OPTIONS, unset=UNSET)
    p.add_argument("pytest_args", nargs="*", metavar="-- PYTEST_ARGS", help=argparse.SUPPRESS)
    p.set_defaults(_flags=[s for a in p._actions for s in a.option_strings])


def run(args: argparse.Namespace) -> int:
    _check(args)
    device = pick_device(args.device)
    try:
        values = _suite_values(args, device)
        options = resolve_options(**values)
        cases(options)  # a --model pattern that matches nothing, or a broken study file, fails now
    except ValueError as e:
        raise UserError(str(e)) from None
    if args.report is not None:
        check_writable(args.report, "--report", folder=False)
    try:
        if args.against is not None:
            return _against(args, options)
        return _stored(args, values, options)
    except KeyboardInterrupt:
        print("interrupted; nothing saved", file=sys.stderr)
        return 130


def _check(args: argparse.Namespace) -> None:
    """Each argument the command line alone can judge: `UserError` naming the first that is wrong."""
    against = args.against is not None
    if against and not args.against.strip():
        raise UserError(
            "--against needs a git ref (a branch, tag or commit id), got an empty one; if it came from a "
            "variable ($REF), that variable is unset"
        )
    if not 0 < args.threshold < 1:
        raise UserError(f"--threshold must be a fraction between 0 and 1 (0.1 = 10%), got {args.threshold}")
    if args.confirm is not None and args.confirm < 0:
        raise UserError(f"--confirm must be 0 or more re-measurements, got {args.confirm}")
    if args.stat not in STATS:
        raise UserError(f"--stat {args.stat!r} is not valid; choose one of: {', '.join(STATS)}")
    if args.repeat is not None and (args.repeat < 1 or args.repeat % 2 == 0):
        raise UserError(
            f"--repeat must be an odd number (1, 3, 5: the median is then one of the runs), got {args.repeat}"
        )
    stored_only = [flag for flag, given in (("--repeat", args.repeat is not None), ("--rounds", args.rounds is not None),
                   ("--stat", args.stat != "median"), ("--storage", args.storage is not None)) if given]  # fmt: skip
    if against and stored_only:
        raise UserError(
            f"{stored_only[0]} is for --save and --compare; --against times --pairs pairs of rounds and stores nothing"
        )
    if against and args.pytest_args:
        raise UserError("--against runs no pytest: arguments after -- are for --save and --compare")
    if not against and args.pairs is not None:
        raise UserError("--pairs is for --against; --save and --compare repeat the suite with --repeat")
    if args.pairs is not None and args.pairs < 2:
        raise UserError(f"--pairs must be 2 or more (one pair gives no interval), got {args.pairs}")
    for arg in args.pytest_args:  # the suite's options, under the gate's name or as pytest would take them
        flag = arg.split("=", 1)[0].replace("--no-", "--", 1).replace("--bench-", "--", 1)
        if flag in args._flags and flag not in ("-h", "--help"):
            raise UserError(f"give {flag} before --, not after it: the gate checks the suite's options itself")
        if arg.startswith(OPTION):
            raise UserError(f"{OPTION} is the gate's to give: give the suite's options before --")


def _suite_values(args: argparse.Namespace, device) -> dict:
    """`resolve_options`' keywords from the gate's arguments: what the suite's pytest run gets, as JSON."""
    names = ("quick", "dtype", "channels_last", "batch_size", "cudnn_benchmark", "tf32", "width", "rounds")
    return {"device": str(device), **{n: getattr(args, n) for n in names}, "data": args.batches, "models": args.model}


# ---------------------------------------------------------------- --against


def _against(args: argparse.Namespace, options) -> int:
    """This checkout against commit REF: two workers, alternating rounds (`bench.gate.paired`)."""
    commit = paired.resolve(ROOT, args.against)  # a ref that names nothing fails before the export
    where = f"{args.against} ({commit[:12]})"
    pairs, times = args.pairs or PAIRS, AGAINST_CONFIRM if args.confirm is None else args.confirm
    specs = {f"test_{phase}[{c.id}]": options.spec(c, phase) for phase in PHASES for c in cases(options)}
    with paired.exported(ROOT, commit) as tree, contextlib.ExitStack() as stack:
        ref, here = paired.start_workers(tree, where)
        stack.callback(ref.close)
        stack.callback(here.close)
        try:
            env = paired.check_same_device(ref, here, options.device, args.against)

            def measure(names: list[str]) -> dict[str, tuple]:
                found = {}
                for i, name in enumerate(names):
                    log.info("%s (%d of %d): %d pairs of rounds", name, i + 1, len(names), pairs)
                    found[name] = paired.time_pairs(ref, here, specs[name], pairs)
                return found

            def remeasure(names: list[str], attempt: int) -> dict[str, tuple[float, float, float]]:
                print(
                    f"measuring {len(names)} suspected benchmark(s) again in {pairs} fresh pairs of rounds "
                    f"({attempt} of at most {times}): {', '.join(names)}",
                    file=sys.stderr,
                )
                return {name: paired.paired_change(*rates) for name, rates in measure(names).items()}

            rows = [paired.row(name, *rates, args.threshold) for name, rates in measure(list(specs)).items()]
            confirm(rows, remeasure, times, functools.partial(paired.judge_again, threshold=args.threshold))
        except paired.WorkerFailed as failed:
            print(f"error: the gate worker of {failed.where} failed: {failed}", file=sys.stderr)
            return 1
    print(paired.format_paired_report(rows, ref=args.against, commit=commit, env=env,
                                      settings=options.recorded(), threshold=args.threshold))  # fmt: skip
    if args.report is not None:
        write_csv(args.report, [paired.csv_row(r) for r in rows])
        log.info("wrote %s", args.report)
    return _verdict(rows)


def _verdict(rows: list[dict]) -> int:
    """1 if a benchmark regressed or none was compared (a run that compared nothing proves nothing), else 0."""
    return 1 if regressed(rows) or not any(r["change"] is not None for r in rows) else 0


# ---------------------------------------------------------------- --save and --compare


def storage_dir(arg: Path | None) -> Path:
    if arg is not None:
        return arg.expanduser().resolve()
    if os.environ.get(STORAGE_ENV):
        return Path(os.environ[STORAGE_ENV]).expanduser().resolve()
    if (ROOT / "pyproject.toml").is_file():  # a checkout: baselines beside it, git-ignored
        return ROOT / ".benchmarks"
    return Path(".benchmarks").resolve()


def _saved(folder: Path, name: str) -> list[Path]:
    """Runs saved as NAME under `folder` (pytest-benchmark's <machine>/<NNNN>_NAME.json files)."""
    return sorted(folder.glob(f"*/[0-9][0-9][0-9][0-9]_{name}.json"))


def _newest(paths: list[Path]):
    return max((load_run(p) for p in paths), key=lambda run: (run.datetime, str(run.path)))


def find_baseline(storage: Path, name: str, here_id: str, here: str):
    """The newest baseline NAME saved on this device; `UserError` naming what exists instead."""
    mine = _saved(storage / here_id, name)
    if mine:
        run = _newest(mine)
        if run.device_id != here_id:
            raise UserError(
                f"baseline {name!r} ({run.path}) was measured on {run.device}, but this is {here}; "
                f"baselines are kept per device: save one here with --save {name}"
            )
        return run
    elsewhere = [p for p in sorted(storage.glob(f"*/*/[0-9][0-9][0-9][0-9]_{name}.json")) if p.parts[-3] != here_id]
    if elsewhere:
        run = _newest(elsewhere)
        raise UserError(
            f"baseline {name!r} exists only for {run.device} ({run.path}), but this is {here}; "
            f"baselines are kept per device: save one here with --save {name}"
        )
    names = sorted({p.name.split("_", 1)[1][:-5] for p in (storage / here_id).glob("*/[0-9]*_*.json")})
    have = f"; baselines for this device: {', '.join(names)}" if names else ""
    raise UserError(
        f"no baseline {name!r} for {here} in {storage}{have}; make one with: python -m bench gate --save {name}"
    )


def store(run_json: Path, folder: Path, name: str) -> Path:
    """Copy a run into `folder` as the next numbered NAME, in pytest-benchmark's layout; its path.

    The layout (<machine>/<NNNN>_<NAME>.json) is the one `--benchmark-save` writes,
    so pytest-benchmark's own `compare` and `list` read these files too. The gate
    writes them itself, and only after the suite passed: a failed run leaves no
    partial baseline.
    """
    # pytest-benchmark is the dev extra: _check_installed names it before the suite runs
    from pytest_benchmark.utils import get_machine_id

    numbers = [int(p.name[:4]) for p in folder.glob("*/[0-9][0-9][0-9][0-9]_*.json")]
    target = folder / get_machine_id() / f"{max(numbers, default=0) + 1:04d}_{name}.json"
    atomic_write_text(target, run_json.read_text())
    return target


def run_suite(values: dict, json_path: Path, pytest_args: list[str], select: list[str] | None = None) -> int:
    """pytest's exit status for the suite with options `values` (`resolve_options`' keywords), its results
    written to `json_path`. `select`: only these benchmarks (e.g. `test_train[alexnet]`), not the whole suite.
    """
    cmd = [
        # The suite runs from its place in the package, with no project configuration
        # (-c devnull) or conftest: the same run in a checkout and in an installation.
        sys.executable,
        "-m",
        "pytest",
        "-p",
        PLUGIN,
        "-p",
        "no:cacheprovider",
        "-c",
        os.devnull,
        "--noconftest",
        f"--rootdir={ROOT}",
        *([f"{SUITE}::{name}" for name in select] if select else [str(SUITE)]),
        f"{OPTION}={json.dumps(values)}",
        "--benchmark-only",
        f"--benchmark-json={json_path}",
        "--benchmark-disable-gc",
        "--benchmark-columns=min,median,iqr,rounds",
        "--benchmark-sort=name",
        *pytest_args,
    ]
    log.info("running: %s", " ".join(cmd))
    # pytest's output goes to stderr: stdout carries only the gate's table and verdict.
    return subprocess.run(cmd, stdout=2).returncode


def _check_installed() -> None:
    missing = [m for m in ("pytest", "pytest_benchmark") if importlib.util.find_spec(m) is None]
    if missing:
        raise UserError(
            f"the gate runs its suite with pytest and pytest-benchmark ({', '.join(missing)} not "
            f"installed): pip install 'alexnet-bench[dev]'"
        )


def _stored(args: argparse.Namespace, values: dict, options) -> int:
    """`--save NAME`: run the suite and store it; `--compare NAME`: run it and compare with the stored NAME."""
    name = args.save if args.save is not None else args.compare
    if not _NAME.fullmatch(name):
        raise UserError(f"baseline name {name!r} is not valid; use letters, digits, '.', '_' and '-'")
    storage = storage_dir(args.storage)
    if args.save is not None:  # the baseline is stored after minutes of suite: its folder must take it
        flag = "--storage" if args.storage is not None or not os.environ.get(STORAGE_ENV) else f"${STORAGE_ENV}"
        check_writable(storage, flag, folder=True)
    _check_installed()
    env = environment(options.device)
    here_id, here = device_id(env), describe_device(env)
    baseline = None
    if args.compare is not None:  # fail before the run, not minutes later
        baseline = find_baseline(storage, name, here_id, here)
        check_settings(baseline, options.recorded(), verb="would measure")
    repeat = args.repeat or (SAVE_REPEAT if args.save is not None else COMPARE_REPEAT)

    with tempfile.TemporaryDirectory(prefix="bench-gate-") as tmp:

        def suite(path: Path, select: list[str] | None = None) -> None:
            status = run_suite(values, path, args.pytest_args, select)
            if status == _PYTEST_NO_TESTS:
                raise UserError("the pytest arguments selected no benchmark")
            if status == _PYTEST_USAGE_ERROR:
                raise SuiteFailed(status, "pytest refused its arguments (it said why above)")
            if status != 0 or not path.is_file():
                raise SuiteFailed(status, f"the benchmark suite failed (pytest exit status {status})")

        try:
            runs = [Path(tmp) / f"run{i}.json" for i in range(repeat)]
            for i, path in enumerate(runs):
                log.info("suite run %d of %d", i + 1, repeat)
                suite(path)
            json_path = runs[0] if repeat == 1 else merge_runs(runs, Path(tmp) / "merged.json", args.stat)
            current = load_run(json_path)
            if current.device_id != here_id:  # the suite resolved the device by itself: never file it wrongly
                raise UserError(f"the suite ran on {current.device}, not on {here}")
            if args.save is not None:
                saved = load_run(store(json_path, storage / here_id, name))
                print(format_run(saved, args.stat))
                print(f"\nsaved baseline {name!r} for {saved.device}: {saved.path}")
                return 0
            check_comparable(baseline, current)
            rows = compare(baseline, current, threshold=args.threshold, stat=args.stat)

            def remeasure(names: list[str], attempt: int) -> dict[str, float]:
                """images/s of the named benchmarks, run again alone."""
                pause(CONFIRM_PAUSE * (attempt - 1))
                print(f"re-measuring {len(names)} benchmark(s) that dropped beyond their noise band "
                      f"({attempt} of at most {times}): {', '.join(names)}", file=sys.stderr)  # fmt: skip
                path = Path(tmp) / f"confirm{attempt}.json"
                suite(path, select=names)
                again = load_run(path)
                check_comparable(baseline, again)
                return {n: images_per_s(b, args.stat) for n, b in again.benchmarks.items()}

            times = CONFIRM if args.confirm is None else args.confirm
            confirm(rows, remeasure, times)
        except SuiteFailed as failed:
            print(f"{failed}; nothing compared or saved", file=sys.stderr)
            return 2 if failed.status == _PYTEST_USAGE_ERROR else 1

    print(format_report(baseline, current, rows, threshold=args.threshold, stat=args.stat))
    if args.report is not None:
        write_csv(args.report, [{**r, "remeasured": " ".join(f"{c:+.4f}" for c in r["remeasured"])} for r in rows])
        log.info("wrote %s", args.report)
    return _verdict(rows)


def pause(seconds: float) -> None:
    """Wait before a re-measurement (the tests record these instead of waiting)."""
    if seconds > 0:
        time.sleep(seconds)


class SuiteFailed(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
