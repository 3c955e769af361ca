"""`python -m bench gate --against REF | --save NAME | --compare NAME [--threshold 0.1] [--model PATTERN] [--quick ...]`.

The throughput gate (`python -m bench.gate ...` is the same command). Runs the
suite `bench.gate.throughput_suite` under pytest-benchmark in a fresh process,
on the device at hand (CUDA when present), in the mode the studies train in
there (`bench.gate.suite.study_mode`). The suite ships inside the package, so an
installed package has the gate too; pytest and pytest-benchmark are needed only
here (`pip install 'alexnet-bench[dev]'`). The suite's options (`--model`,
`--quick`, `--dtype`, ...: `bench.gate.options`) are the gate's own, named as in
`train` and `measure` (checked before anything runs); arguments after `--` pass
to pytest, e.g. `-- -x -k alexnet`.

`--save NAME` runs the suite `--repeat` times (default 3) and stores, if it
passed, the median run per benchmark with its spread as a baseline in
STORAGE/<device id>/ (pytest-benchmark's numbered files: saving NAME again keeps
the old file, the newest wins).
`--compare NAME` first checks that this device has a baseline NAME (exit 2 if
not, before anything runs), runs the suite (once by default), and compares each
benchmark's images/s with the baseline's. A drop beyond the benchmark's noise
band (`bench.gate.compare`) makes it a suspect; the suspects alone are run
again, up to `--confirm` times (default 3, the later ones after growing pauses,
`--confirm-pause`), and the gate exits 1 only if one stays beyond its band every
time, else 0. It prints old against new images/s
per benchmark, and what was re-measured and why.

`--against REF` compares this checkout with git commit REF, both measured now:
two worker processes, one from an export of REF, time each benchmark in
alternating rounds (`bench.gate.paired`, `bench.gate.worker`), so a machine
whose speed drifts cannot pass for a regression; nothing is stored.

Exit status: 0 saved or passed; 1 regressed, or the suite itself failed;
2 bad input (missing baseline, baseline from another device or other
settings, bad option), as one line on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.util
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
from bench.gate.options import (
    CONFIRM,
    CONFIRM_PAUSE,
    DEVICE,
    NOISE_K,
    OPTIONS,
    as_arguments,
    prefixed,
    suite_option,
    values_of,
)
from bench.gate.suite import cases, describe_device, device_id, options_from
from bench.io import atomic_write_text, check_writable, write_csv

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]  # the folder holding the `bench` package: a checkout, or site-packages
SUITE = Path(__file__).with_name("throughput_suite.py")
PLUGIN = "bench.gate.plugin"
STORAGE_ENV = "BENCH_GATE_STORAGE"
DEFAULT_THRESHOLD = 0.10
# A baseline is measured once and compared with many times: its error would fail
# every later comparison alike, so it takes the median of 3 suite runs.
SAVE_REPEAT, COMPARE_REPEAT = 3, 1
# --against: pairs of rounds per benchmark, and fresh sets of them to confirm a suspect. On a
# 2-core EPYC a pair's log ratio varies 6-9%: 10 pairs give an interval of about +-6% (t, 9 df),
# a tenth of a second each; one confirmation, since the pairs already cancel the drift.
PAIRS, AGAINST_CONFIRM = 10, 1
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_PYTEST_USAGE_ERROR, _PYTEST_NO_TESTS = 4, 5


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Throughput regression gate: run the benchmark suite and save it as a baseline, "
        "or compare it with one (exit 1 when a benchmark lost more than the threshold)."
    )
    p.epilog = "Arguments after -- pass to pytest, e.g. -- -x -k alexnet."
    action = p.add_mutually_exclusive_group(required=True)
    action.add_argument("--save", metavar="NAME", help="run the suite and store it as baseline NAME")
    action.add_argument("--compare", metavar="NAME", help="run the suite and compare it with baseline NAME")
    action.add_argument(
        "--against",
        metavar="REF",
        help="compare this checkout with git commit REF (a branch, tag or id), both measured now, alternately: "
        "no stored baseline, and a machine whose speed drifts cancels out",
    )
    p.add_argument(
        "--pairs",
        type=int,
        default=None,
        metavar="N",
        help=f"with --against: pairs of rounds per benchmark, one of each side (default {PAIRS}; at least 2, for an "
        "interval)",
    )
    p.add_argument(
        "--threshold",
        type=float,
        default=DEFAULT_THRESHOLD,
        help="smallest noise band: a throughput drop up to this fraction never fails (default %(default)s = 10%%)",
    )
    p.add_argument(
        "--noise-k",
        type=float,
        default=NOISE_K,
        metavar="K",
        help="noise band: K times the baseline's and the run's spreads combined, at least --threshold "
        "(default %(default)s)",
    )
    p.add_argument(
        "--confirm",
        type=int,
        default=None,
        metavar="R",
        help="re-measure a benchmark that dropped beyond its band up to R times; it fails only if it stays "
        f"beyond every time (default {CONFIRM}; with --against, R sets of fresh pairs, default {AGAINST_CONFIRM}; "
        "0 fails on the first measurement)",
    )
    p.add_argument(
        "--confirm-pause",
        type=float,
        default=CONFIRM_PAUSE,
        metavar="S",
        help="seconds to wait before the second re-measurement, 2S before the third, and so on, so that a slow "
        "phase of the machine passes (default %(default)s)",
    )
    p.add_argument(
        "--repeat",
        type=int,
        default=None,
        metavar="K",
        help="run the suite K times (K odd) and keep, per benchmark, the run with the median throughput, "
        f"and the spread of the K: steadier, K times as long (default {SAVE_REPEAT} with --save, "
        f"{COMPARE_REPEAT} with --compare)",
    )
    p.add_argument("--stat", default="median", help="round-time statistic compared: median | min (default %(default)s)")
    p.add_argument(DEVICE, default="auto", help="auto | cpu | cuda | cuda:N | mps (default %(default)s)")
    p.add_argument(
        "--storage",
        type=Path,
        default=None,
        help=f"baseline folder (default ${STORAGE_ENV}, else .benchmarks in the checkout, else in the current folder)",
    )
    p.add_argument("--report", type=Path, default=None, help="also write the comparison as CSV here")
    suite = p.add_argument_group("the suite's options")
    for flag, spec in OPTIONS.items():
        suite.add_argument(flag, **spec)
    p.add_argument("pytest_args", nargs="*", metavar="-- PYTEST_ARGS", help=argparse.SUPPRESS)


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


def _saved_anywhere(storage: Path, name: str) -> list[Path]:
    """Runs saved as NAME for any device (STORAGE/<device id>/<machine>/<NNNN>_NAME.json)."""
    return sorted(storage.glob(f"*/*/[0-9][0-9][0-9][0-9]_{name}.json"))


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
    elsewhere = [p for p in _saved_anywhere(storage, name) if p.parts[-3] != here_id]
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


def _check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise UserError(f"baseline name {name!r} is not valid; use letters, digits, '.', '_' and '-'")
    return name


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


def run_suite(device: str, json_path: Path, pytest_args: list[str], select: list[str] | None = None) -> int:
    """pytest's exit status for the suite on `device`, its results written to `json_path`.

    `select`: only these benchmarks (their names, e.g. `test_train[alexnet]`), not the whole suite.
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
        f"{prefixed(DEVICE)}={device}",
        "--benchmark-only",
        f"--benchmark-json={json_path}",
        "--benchmark-disable-gc",
        "--benchmark-columns=min,median,iqr,rounds",
        "--benchmark-sort=name",
    ]
    cmd += pytest_args
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


def run(args: argparse.Namespace) -> int:
    try:
        return _gate(args)
    except KeyboardInterrupt:
        print("interrupted; nothing saved", file=sys.stderr)
        return 130


def _check_pairs(args: argparse.Namespace) -> None:
    """`--against` takes `--pairs` and none of the options of a stored comparison; the others not `--pairs`."""
    if args.against:
        unused = [
            flag
            for flag, value, default in (
                ("--repeat", args.repeat, None),
                ("--rounds", args.rounds, None),
                ("--stat", args.stat, "median"),
                ("--noise-k", args.noise_k, NOISE_K),
                ("--confirm-pause", args.confirm_pause, CONFIRM_PAUSE),
                ("--storage", args.storage, None),
            )
            if value != default
        ]
        if unused:
            raise UserError(
                f"{unused[0]} is for --save and --compare; --against times --pairs pairs of rounds and stores nothing"
            )
        args.pairs = PAIRS if args.pairs is None else args.pairs
        if args.pairs < 2:
            raise UserError(f"--pairs must be 2 or more (one pair gives no interval), got {args.pairs}")
    elif args.pairs is not None:
        raise UserError("--pairs is for --against; --save and --compare repeat the suite with --repeat")


def _gate(args: argparse.Namespace) -> int:
    if not 0 < args.threshold < 1:
        raise UserError(f"--threshold must be a fraction between 0 and 1 (0.1 = 10%), got {args.threshold}")
    if args.noise_k < 0:
        raise UserError(f"--noise-k must be 0 or more (0: the band is --threshold alone), got {args.noise_k}")
    if args.confirm is None:
        args.confirm = AGAINST_CONFIRM if args.against else CONFIRM
    if args.confirm < 0:
        raise UserError(f"--confirm must be 0 or more re-measurements, got {args.confirm}")
    _check_pairs(args)
    if not 0 <= args.confirm_pause < float("inf"):
        raise UserError(f"--confirm-pause must be 0 or more seconds, got {args.confirm_pause}")
    if args.repeat is None:
        args.repeat = SAVE_REPEAT if args.save else COMPARE_REPEAT
    if not args.against and (args.repeat < 1 or args.repeat % 2 == 0):
        raise UserError(
            f"--repeat must be an odd number (1, 3, 5: the median is then one of the runs), got {args.repeat}"
        )
    if args.stat not in STATS:
        raise UserError(f"--stat {args.stat!r} is not valid; choose one of: {', '.join(STATS)}")
    after = [flag for flag in map(suite_option, args.pytest_args) if flag]
    if after:
        raise UserError(
            f"give {after[0]} before --, not after it: the gate checks its suite options against the baseline"
        )
    name = _check_name(args.save or args.compare) if not args.against else None
    if args.save:  # the baseline is stored after minutes of suite: its folder must take it
        check_writable(
            storage_dir(args.storage),
            "--storage" if args.storage is not None or not os.environ.get(STORAGE_ENV) else f"${STORAGE_ENV}",
            folder=True,
        )
    if args.report is not None:
        check_writable(args.report, "--report", folder=False)
    if not args.against:  # the workers time without pytest
        _check_installed()
    device = pick_device(args.device)
    try:
        options = options_from(values_of(args), device)
        cases(options)  # a --model pattern that matches nothing, or a broken study file, fails now
    except ValueError as e:
        raise UserError(str(e)) from None
    env = environment(device)
    here_id, here = device_id(env), describe_device(env)
    storage = storage_dir(args.storage)
    baseline = find_baseline(storage, name, here_id, here) if args.compare else None  # fail before the run
    if baseline is not None:
        check_settings(baseline, options.recorded(), verb="would measure")  # not minutes later, after the suite
    if args.against:
        return _against(args, device)
    pytest_args = as_arguments(args) + args.pytest_args

    with tempfile.TemporaryDirectory(prefix="bench-gate-") as tmp:
        runs = []
        for i in range(args.repeat):
            if args.repeat > 1:
                log.info("suite run %d of %d", i + 1, args.repeat)
            runs.append(Path(tmp) / f"run{i}.json")
            status = run_suite(str(device), runs[-1], pytest_args)
            if status == _PYTEST_NO_TESTS:
                raise UserError("the pytest arguments selected no benchmark")
            if status == _PYTEST_USAGE_ERROR:
                return 2  # pytest printed the one-line reason
            if status != 0 or not runs[-1].is_file():
                print(
                    f"the benchmark suite failed (pytest exit status {status}); nothing compared or saved",
                    file=sys.stderr,
                )
                return 1
        json_path = runs[0] if len(runs) == 1 else merge_runs(runs, Path(tmp) / "merged.json", args.stat)
        current = load_run(json_path)
        if current.device_id != here_id:  # the suite resolved the device by itself: never file it wrongly
            raise UserError(f"the suite ran on {current.device}, not on {here}")
        if args.save:
            saved = load_run(store(json_path, storage / here_id, name))
            print(format_run(saved, args.stat))
            print(f"\nsaved baseline {name!r} for {saved.device}: {saved.path}")
            return 0

        check_comparable(baseline, current)
        rows = compare(baseline, current, threshold=args.threshold, stat=args.stat, noise_k=args.noise_k)

        def remeasure(names: list[str], attempt: int) -> dict[str, float]:
            """images/s of the named benchmarks, run again alone; `SuiteFailed` if the suite fails."""
            pause(args.confirm_pause * (attempt - 1))
            print(
                f"re-measuring {len(names)} benchmark(s) that dropped beyond their noise band "
                f"({attempt} of at most {args.confirm}): {', '.join(names)}",
                file=sys.stderr,
            )
            path = Path(tmp) / f"confirm{attempt}.json"
            status = run_suite(str(device), path, pytest_args, select=names)
            if status != 0 or not path.is_file():
                raise SuiteFailed(status)
            again = load_run(path)
            check_comparable(baseline, again)
            return {n: images_per_s(b, args.stat) for n, b in again.benchmarks.items()}

        try:
            confirm(rows, remeasure, args.confirm)
        except SuiteFailed as failed:
            print(
                f"re-measuring the suite failed (pytest exit status {failed.status}); nothing compared", file=sys.stderr
            )
            return 1

    print(format_report(baseline, current, rows, threshold=args.threshold, stat=args.stat, noise_k=args.noise_k))
    if args.report is not None:
        write_csv(args.report, [{**r, "remeasured": " ".join(f"{c:+.4f}" for c in r["remeasured"])} for r in rows])
        log.info("wrote %s", args.report)
    compared = [r for r in rows if r["change"] is not None]
    return 1 if regressed(rows) or not compared else 0


def _against(args: argparse.Namespace, device) -> int:
    """`--against REF`: a worker from an export of REF and one from here, in alternating rounds (`bench.gate.paired`)."""
    if args.pytest_args:
        raise UserError("--against runs no pytest: arguments after -- are for --save and --compare")
    commit = paired.resolve(ROOT, args.against)  # a ref that names nothing fails before the export
    worker_args = [f"{prefixed(DEVICE)}={device}", *as_arguments(args)]
    where = f"{args.against} ({commit[:12]})"
    with tempfile.TemporaryDirectory(prefix="bench-gate-") as tmp, contextlib.ExitStack() as workers:
        tree = paired.export(ROOT, commit, Path(tmp))
        try:
            ref = paired.Worker(tree, worker_args, where)
            workers.callback(ref.close)
            here = paired.Worker(ROOT, worker_args, "this checkout")
            workers.callback(here.close)
            paired.check_same_measurement(ref, here, args.against)

            def measure(names: list[str]) -> dict[str, tuple[list[float], list[float]]]:
                found = {}
                for i, name in enumerate(names):
                    log.info("%s (%d of %d): %d pairs of rounds", name, i + 1, len(names), args.pairs)
                    found[name] = paired.time_pairs(ref, here, name, args.pairs)
                return found

            def remeasure(names: list[str], attempt: int) -> dict[str, tuple[float, float, float]]:
                print(
                    f"measuring {len(names)} suspected benchmark(s) again in {args.pairs} fresh pairs of rounds "
                    f"({attempt} of at most {args.confirm}): {', '.join(names)}",
                    file=sys.stderr,
                )
                return {name: paired.paired_change(*rates) for name, rates in measure(names).items()}

            names = paired.benchmarks(ref, here)
            rates = measure(names)
            rows = [paired.row(name, *rates[name], args.threshold) for name in names]
            rows += paired.one_sided_rows(ref, here, args.threshold)  # listed, not compared
            confirm(rows, remeasure, args.confirm, functools.partial(paired.judge_again, threshold=args.threshold))
        except paired.WorkerFailed as failed:
            print(f"error: the gate worker of {failed.where} failed: {failed}", file=sys.stderr)
            return 2 if failed.status == 2 else 1  # 2: it refused the options (said why above)
    report = paired.format_paired_report(
        rows, ref=args.against, commit=commit, hello=here.hello, threshold=args.threshold
    )
    print(report)
    if args.report is not None:
        write_csv(args.report, [paired.csv_row(r) for r in rows])
        log.info("wrote %s", args.report)
    compared = [r for r in rows if r["change"] is not None]
    return 1 if regressed(rows) or not compared else 0


def pause(seconds: float) -> None:
    """Wait before a re-measurement (the tests record these instead of waiting)."""
    if seconds > 0:
        time.sleep(seconds)


class SuiteFailed(Exception):
    def __init__(self, status: int):
        super().__init__(f"pytest exit status {status}")
        self.status = status
