"""How often the gate fails identical code, and how often it catches a real slowdown.

Saves one baseline, then runs `gate --compare` N times at the baseline's thread count
(identical code: every failure is a false alarm) and N times at half the threads (about
half the speed: every run should fail). Prints the counts and each run's exit status.

    python scripts/gate_reruns.py --runs 10 --threads 2 --model 'lenet5*,alexnet*' [--logs DIR]

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


def gate(storage: Path, threads: int, *args: str, log: Path | None = None) -> tuple[int, float, str]:
    """Exit status, seconds, and the verdict line (FAILED names the benchmarks) of one gate run;
    its whole output into `log` when given."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    argv = [sys.executable, "-m", "bench", "gate", "--device", "cpu", "--storage", str(storage), *args]
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True)
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
    args = p.parse_args()
    args.half_runs = args.runs if args.half_runs is None else args.half_runs
    if args.logs:
        args.logs.mkdir(parents=True, exist_ok=True)
    common = ["--quick", "--model", args.model]
    with tempfile.TemporaryDirectory() as tmp:
        storage = Path(tmp)
        code, seconds, _ = gate(storage, args.threads, "--save", "base", *common)
        print(f"baseline: exit {code}, {seconds:.0f} s, {args.threads} threads", flush=True)
        if code != 0:
            return code
        counts = {}
        half = max(1, args.threads // 2)
        for label, threads, runs in (
            ("identical", args.threads, args.runs),
            ("half the threads", half, args.half_runs),
        ):
            failed = 0
            for i in range(runs):
                log = args.logs / f"{label.replace(' ', '-')}-{i + 1}.txt" if args.logs else None
                code, seconds, line = gate(storage, threads, "--compare", "base", *common, log=log)
                failed += code == 1
                print(f"{label} run {i + 1}: exit {code}, {seconds:.0f} s {line}", flush=True)
            counts[label] = (failed, runs)
        for label, (failed, runs) in counts.items():
            print(f"{label}: {failed} of {runs} runs failed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
