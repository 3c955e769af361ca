"""How often the gate fails identical code, and how often it catches a real slowdown.

Against a stored baseline (the default): saves one baseline, then runs `gate --compare`
N times at the baseline's thread count (identical code: every failure is a false alarm)
and N times at half the threads (about half the speed: every run should fail).

With `--against`: `gate --against HEAD` from a clone of this repository's HEAD, N times
as it is (identical code on both sides) and N times with the clone's working tree
patched to run at half the threads (`SLOWER`: a change that costs what one thread of two
does). Prints the counts and each run's exit status and verdict.

    python scripts/gate_reruns.py --runs 10 --threads 2 --model 'lenet5*,alexnet*' [--against] [--logs DIR]

Time nothing else while it runs: other load is what makes a gate cry wolf.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The slower candidate of --against: the clone's worker halves its threads before it builds anything.
PATCHED = Path("bench/gate/worker.py")
ANCHOR = "    args = p.parse_args(argv)\n"
SLOWER = ANCHOR + "    torch.set_num_threads(max(1, torch.get_num_threads() // 2))  # gate_reruns.py: a slower change\n"


def gate(threads: int, *args: str, log: Path | None = None, cwd: Path = REPO) -> tuple[int, float, str]:
    """Exit status, seconds, and the verdict line (FAILED names the benchmarks) of one gate run from the
    checkout `cwd`; its whole output into `log` when given."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    argv = [sys.executable, "-m", "bench", "gate", "--device", "cpu", *args]
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)
    if log is not None:
        log.write_text(done.stdout + done.stderr)
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.startswith(("FAILED", "PASSED"))]
    return done.returncode, time.perf_counter() - start, (lines[-1] if lines else "")[:200]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--threads", type=int, default=2, help="the baseline's and the identical runs' threads")
    p.add_argument("--model", default="lenet5*,alexnet*")
    p.add_argument("--half-runs", type=int, help="runs at half the threads (default: --runs)")
    p.add_argument("--logs", type=Path, help="a folder for each gate run's whole output")
    p.add_argument("--against", action="store_true", help="run gate --against HEAD, not a stored baseline")
    args = p.parse_args()
    args.half_runs = args.runs if args.half_runs is None else args.half_runs
    if args.logs:
        args.logs.mkdir(parents=True, exist_ok=True)
    common = ["--quick", "--model", args.model]
    if args.against:
        return against(args, common)
    with tempfile.TemporaryDirectory() as tmp:
        storage = ["--storage", tmp]
        code, seconds, _ = gate(args.threads, "--save", "base", *storage, *common)
        print(f"baseline: exit {code}, {seconds:.0f} s, {args.threads} threads", flush=True)
        if code != 0:
            return code
        half = max(1, args.threads // 2)
        counts = [
            reruns(args, label, runs, lambda log, t=threads: gate(t, "--compare", "base", *storage, *common, log=log))
            for label, threads, runs in (
                ("identical", args.threads, args.runs),
                ("half the threads", half, args.half_runs),
            )
        ]
    report(counts)
    return 0


def against(args, common: list[str]) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        clone = Path(tmp) / "clone"
        subprocess.run(["git", "clone", "-q", "--shared", str(REPO), str(clone)], check=True)

        def run(log):
            return gate(args.threads, "--against", "HEAD", *common, log=log, cwd=clone)

        counts = [reruns(args, "identical", args.runs, run, prefix="against-")]
        worker = clone / PATCHED
        text = worker.read_text()
        if ANCHOR not in text:
            raise SystemExit(f"{PATCHED} has no line {ANCHOR.strip()!r} to patch; update SLOWER")
        worker.write_text(text.replace(ANCHOR, SLOWER, 1))
        counts.append(reruns(args, "half the threads", args.half_runs, run, prefix="against-"))
    report(counts)
    return 0


def reruns(args, label: str, runs: int, run_one, prefix: str = "") -> tuple[str, int, int]:
    """Run the gate `runs` times by `run_one(log)`, printing each; (label, runs that failed, runs)."""
    failed = 0
    for i in range(runs):
        log = args.logs / f"{prefix}{label.replace(' ', '-')}-{i + 1}.txt" if args.logs else None
        code, seconds, line = run_one(log)
        failed += code == 1
        print(f"{label} run {i + 1}: exit {code}, {seconds:.0f} s {line}", flush=True)
    return label, failed, runs


def report(counts: list[tuple[str, int, int]]) -> None:
    for label, failed, runs in counts:
        print(f"{label}: {failed} of {runs} runs failed")


if __name__ == "__main__":
    raise SystemExit(main())
