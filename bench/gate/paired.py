"""`gate --against REF`: this checkout and a git commit, timed in alternating rounds in one window of time.

A stored baseline was measured minutes or days before the run compared with it.
On a machine whose speed drifts that gap is itself a change: on a shared 2-core
VM, three baselines of the same code differed by 8-59% in images/s and every
identical rerun failed against the fastest; and from one suite run to the next,
single benchmarks of the same code moved by -32% to +47%, each its own way (the
host's speed changes within seconds). Here both sides run now, a round at a time.
The commit's tree is exported (`exported`, git archive: the checkout and its git
state are not touched); a worker process (`bench.measure.worker`) starts from it
and one from this checkout. Per benchmark both build the same workload (this
checkout's suite names it: `bench.gate.suite.Options.spec`; each side builds it with
its own code) and warm it up, then time `pairs` pairs of rounds in strict
alternation, R H R H ..., so that the two rounds of a pair are a fraction of a
second apart and every round follows one of the other side's (each re-warmed
alike: `bench.measure.worker.REWARM`). Measured on a 2-core AMD EPYC, same code both
sides: a pair's log ratio varied 6-9% (sd), where single suite runs of one
benchmark varied 20-30% from run to run.

Each benchmark's change is the geometric mean of its pairs' ratios (this
checkout's images/s over the commit's), with the 95% paired Student t interval of
their logs (`bench.stats.paired`, pairs - 1 degrees of freedom). It is
suspected (`judge`) when it lost more than `threshold` and its interval excludes
no loss; a gain beyond `threshold` whose interval excludes 0 is `faster`;
anything else is `ok`. A suspect is set up and measured again in fresh pairs
(`bench.gate.compare.confirm`), and the gate fails only if every set of pairs
suspects it. A benchmark the commit cannot build (a model it does not have) is
listed as `new`, not compared.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

from bench.errors import UserError
from bench.gate.compare import VERDICTS, label, number, regressed, table_lines
from bench.gate.suite import describe_device, device_id
from bench.measure.worker import Worker, WorkerFailed
from bench.stats import paired

WORKER_IN_TREE = Path("bench/measure/worker.py")
REF, HERE = "ref", "here"
# Removes the exported tree when the gate's end of its input closes: when the gate is done, or killed
# (kill -9 included). In a session of its own, so that a signal to the gate's process group spares it.
REAPER = "import shutil, sys; sys.stdin.read(); shutil.rmtree(sys.argv[1], ignore_errors=True)"


def _git(root: Path, *args: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
    except OSError as exc:  # no git on PATH
        raise UserError(f"--against needs git ({exc.strerror}); compare with a saved baseline instead") from None


def resolve(root: Path, ref: str) -> str:
    """The full commit id `ref` names in the repository at `root`; `UserError` naming what is wrong."""
    if _git(root, "rev-parse", "--git-dir").returncode != 0:
        raise UserError(f"--against {ref}: {root} is not a git checkout; compare with a saved baseline instead")
    found = _git(root, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
    if found.returncode != 0:
        raise UserError(f"--against {ref!r} names no commit in {root}; give a branch, tag or commit id (e.g. main)")
    return found.stdout.strip()


@contextlib.contextmanager
def exported(root: Path, commit: str) -> Iterator[Path]:
    """The tree of `commit` (git archive) in a temporary folder, removed afterwards, even if this process is killed.

    `UserError` if the tree has no worker to time it with.
    """
    folder = Path(tempfile.mkdtemp(prefix="bench-gate-"))
    reaper = subprocess.Popen(
        [sys.executable, "-I", "-S", "-c", REAPER, str(folder)], stdin=subprocess.PIPE, start_new_session=True
    )
    try:
        archive, tree = folder / "tree.tar", folder / "tree"
        made = _git(root, "archive", "--format=tar", "-o", str(archive), commit)
        if made.returncode != 0:
            raise UserError(f"git archive {commit[:12]} failed: {made.stderr.strip()}")
        with tarfile.open(archive) as tar:
            tar.extractall(tree, filter="data")
        archive.unlink()
        if not (tree / WORKER_IN_TREE).is_file():
            raise UserError(
                f"commit {commit[:12]} has no {WORKER_IN_TREE}: it predates this gate's --against; compare with a "
                "saved baseline instead"
            )
        yield tree
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        reaper.stdin.close()
        reaper.wait()


def start_workers(tree: Path, where: str) -> tuple[Worker, Worker]:
    """A worker from the exported tree and one from this checkout, starting (importing torch) at once."""
    ref = Worker(tree, where)
    try:
        return ref, Worker()
    except BaseException:
        ref.close()
        raise


def check_same_device(ref: Worker, here: Worker, device: str, ref_name: str) -> dict:
    """This checkout's worker's environment on `device`; `UserError` unless the commit's worker runs on the same."""
    was, now = ref.ask(environment=device), here.ask(environment=device)
    if device_id(was) != device_id(now):
        raise UserError(
            f"the worker of {ref_name} runs on {describe_device(was)}, this checkout's on {describe_device(now)}"
        )
    return now


def parse_name(name: str) -> tuple[str, str]:
    """`test_train[alexnet:groups=2]` -> ("train", "alexnet:groups=2")."""
    phase, case = name.removeprefix("test_").split("[", 1)
    return phase, case[:-1]


def time_pairs(ref: Worker, here: Worker, spec: dict, pairs: int) -> tuple[list[float] | None, list[float]]:
    """images/s of `pairs` alternating pairs of rounds of one workload: the commit's (None if it cannot build
    it), this checkout's."""
    try:
        ref_images = ref.ask(setup=spec)["images_per_round"]
    except WorkerFailed as failed:
        if failed.status is not None:  # the worker died: not a benchmark it lacks
            raise
        return None, []
    here_images = here.ask(setup=spec)["images_per_round"]
    rates: dict[str, list[float]] = {REF: [], HERE: []}
    for _ in range(pairs):
        rates[REF].append(ref_images / ref.ask(round={})["seconds"])
        rates[HERE].append(here_images / here.ask(round={})["seconds"])
    return rates[REF], rates[HERE]


def judge(change: float, lo: float, hi: float, threshold: float) -> str:
    """`suspect`, `faster` or `ok` for a change (fraction) with its 95% interval."""
    if change < -threshold and hi < 0:
        return "suspect"
    if change > threshold and lo > 0:
        return "faster"
    return "ok"


def judge_again(row: dict, again: tuple[float, float, float], *, threshold: float) -> tuple[float, bool]:
    """A suspect's fresh pairs (change, lo, hi), for `bench.gate.compare.confirm`: its change, and whether they
    suspect it too. The interval is kept beside the change, in `row["remeasured_intervals"]`."""
    row.setdefault("remeasured_intervals", []).append(again[1:])
    return again[0], judge(*again, threshold) == "suspect"


def csv_row(row: dict) -> dict:
    """A row for `--report`: the re-measured changes and intervals as text, one per set of fresh pairs."""
    return {
        **{k: v for k, v in row.items() if k != "remeasured_intervals"},
        "remeasured": " ".join(
            f"{c:+.4f} [{lo:+.4f} {hi:+.4f}]"
            for c, (lo, hi) in zip(row["remeasured"], row.get("remeasured_intervals", []))
        ),
    }


def paired_change(ref: list[float], here: list[float]) -> tuple[float, float, float]:
    """here over ref as a change (fraction), the geometric mean of the pairs' ratios, and its 95% interval."""
    d = paired(dict(enumerate(map(math.log, ref))), dict(enumerate(map(math.log, here))))
    return math.exp(d.diff) - 1, math.exp(d.lo) - 1, math.exp(d.hi) - 1


def row(name: str, ref_rates: list[float] | None, here_rates: list[float] | None, threshold: float) -> dict:
    """A benchmark's row: each side's geometric mean images/s, the paired change with its interval, status.

    status as in `bench.gate.compare.compare`: ok, suspect, faster, or new (the commit cannot build it).
    """
    phase, case = parse_name(name)
    r = {
        "benchmark": name,
        "phase": phase,
        "case": case,
        "baseline_images_per_s": _geomean(ref_rates),
        "images_per_s": _geomean(here_rates),
        "change": None,
        "lo": None,
        "hi": None,
        "pairs": 0,
        "remeasured": [],
    }
    if not ref_rates:
        r["status"] = "new"
    else:
        r["change"], r["lo"], r["hi"] = paired_change(ref_rates, here_rates)
        r["pairs"] = len(here_rates)
        r["status"] = judge(r["change"], r["lo"], r["hi"], threshold)
    return r


def _geomean(values: list[float] | None) -> float | None:
    return math.exp(sum(map(math.log, values)) / len(values)) if values else None


def format_paired_report(
    rows: list[dict], *, ref: str, commit: str, env: dict, settings: dict, threshold: float
) -> str:
    """The header (what ran against what, how), the table with intervals, what was re-measured, the verdict.

    `env`: this checkout's worker's environment; `settings`: the suite's (`Options.recorded`).
    """
    s = settings
    here_commit = env.get("git_commit")
    pairs = max((r["pairs"] for r in rows), default=0)
    lines = [
        f"against: {ref} (commit {commit[:12]}), timed in alternating rounds with this checkout"
        + (f" ({here_commit[:12]}{'-dirty' if here_commit.endswith('-dirty') else ''})" if here_commit else ""),
        f"device: {describe_device(env)}; {s.get('dtype')}, {s.get('memory_format')}, batch {s.get('batch_size')}, "
        f"width {s.get('width')}; threads {env.get('num_threads')}",
        f"per benchmark {pairs} pairs of rounds, R H R H ...; images/s: the geometric mean over the rounds; "
        "change: this checkout over the commit, the geometric mean of the pairs' ratios, with its 95% paired t "
        "interval",
        f"a benchmark is suspected when it lost more than {threshold:.0%} and its interval excludes no loss, "
        "and fails only if fresh pairs suspect it again\n",
    ]

    def interval(r):
        return "-" if r["change"] is None else f"{r['change']:+.1%} [{r['lo']:+.1%}, {r['hi']:+.1%}]"

    verdicts = {**VERDICTS, "new": "new (not at the commit)"}
    table = [("benchmark", f"{ref} img/s", "here img/s", "change [95% interval]", "")]
    table += [
        (
            label(r),
            number(r["baseline_images_per_s"]),
            number(r["images_per_s"]),
            interval(r),
            verdicts.get(r["status"], ""),
        )
        for r in rows
    ]
    lines += table_lines(table)

    remeasured = [r for r in rows if r["remeasured"]]
    if remeasured:
        lines.append("\nmeasured again in fresh pairs, because the first pairs suspected a loss:")
        for r in remeasured:
            again = ", ".join(
                f"{c:+.1%} [{lo:+.1%}, {hi:+.1%}]" for c, (lo, hi) in zip(r["remeasured"], r["remeasured_intervals"])
            )
            outcome = "suspected every time: a regression" if r["status"] == "regressed" else "cleared: noise"
            lines.append(f"  {label(r)}: {interval(r)}; again {again}; {outcome}")

    compared = [r for r in rows if r["change"] is not None]
    bad = regressed(rows)
    lines.append("")
    if not compared:
        lines.append(f"FAILED: no benchmark ran both here and at {ref}")
    elif bad:
        lines.append(
            f"FAILED: {len(bad)} of {len(compared)} benchmarks lost more than {threshold:.0%} against {ref}, "
            f"with intervals excluding no loss: {', '.join(label(r) for r in bad)}"
        )
    else:
        lines.append(f"PASSED: no benchmark of {len(compared)} lost more than {threshold:.0%} against {ref}")
    return "\n".join(lines)
