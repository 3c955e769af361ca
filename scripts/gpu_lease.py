"""Everything one short lease of a GPU machine runs, in priority order, under one deadline.

Run from the repo root on the lent machine:

    python3 scripts/gpu_lease.py --out "$OUT" --data .gpu/cifar10-jpeg.tar.gz

and here, first, its CPU dry run (the same stages at the smoke profile on synthetic data,
seconds; tests/test_lease.py runs it too):

    python3 scripts/gpu_lease.py --dry-run --out /tmp/lease-out

Why this shape:
- One deadline for the whole call (`--deadline-s`, default 540: a 600 s call limit less a
  margin). Each stage gets what is left, and a study still running at the deadline is sent
  SIGINT, which keeps every finished cell.
- Results are written straight under OUT (OUT/results/<study>/<profile>/) as each cell
  finishes, so a call killed at its limit still brings back every finished cell; they merge
  into results/ by the normal resume (copy the folder, or run the study there again).
- Stages run in the order of what the CPU cannot answer: the smoke check (exit 3 if the
  package does not run there), the whole-step CUDA graph against eager steps
  (tests/test_graphed.py), the gate's baseline for this GPU model (OUT/gate), the speed
  modes with CUDA graphs, packed cells (1, 2, 4, 8), then the studies at their `gpu`
  profile (the CIFAR-10 net's LRN study first). A study whose committed results/<study>/gpu/ already
  holds every declared cell finished is skipped.
- GPU utilisation is logged every 5 s beside the results (OUT/gpu-utilisation.csv), so a
  launch-bound stage shows as a low number, not a guess.
"""

from __future__ import annotations

import argparse
import csv
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STUDIES = ("cifar-lrn", "alexnet", "overfitting", "architectures")  # what the CPU can least answer first
MEASURE_ARCHS = ("layers-80sec", "alexnet", "resnet18", "googlenet")
SMOKE_S = 120  # the smoke check's own limit: it takes seconds where the package works
MODES_S = 90  # each net's speed modes: interleaved rounds of a few modes
GATE_S = 120  # the gate's baseline: the suite three times (--save), the studies' nets only
GATE_MODELS = "layers-80sec*,alexnet*,resnet18*,googlenet*"
# {dry run: modes}: eager, channels_last, bf16, compiled, the model's CUDA graphs, the whole step's
MODES = {
    False: "fp32,fp32+cl,bf16+cl,compile+bf16+cl,reduce-overhead+bf16+cl,graph+bf16+cl,graph+fp32",
    True: "fp32",
}
PACKED = (("layers-80sec", []), ("alexnet", []))  # the four-layer net, AlexNet-CIFAR at full width
PACKS = {False: "1,2,4,8", True: "1,2"}


def declared_cells_done(folder: Path, study: str, profile: str) -> bool:
    """Whether `folder` (results/<study>/<profile>) holds every cell the profile declares, finished."""
    sys.path.insert(0, str(REPO))
    from bench.sweep.study import load_study
    from bench.train.result import FINISHED

    runs_path = folder / "runs.csv"
    if not runs_path.is_file():
        return False
    with runs_path.open() as f:
        done = {r["cell_id"] for r in csv.DictReader(f) if r.get("status") in FINISHED}
    spec = load_study(study)
    if spec.confirm_seeds(profile):
        return False  # the second stage's cells are known only after the first: let the sweep resume
    return {c.id for c in spec.cells(profile)} <= done


class Lease:
    def __init__(self, out: Path, deadline_s: float, log):
        self.out, self.end, self.log = out, time.monotonic() + deadline_s, log

    def left(self) -> float:
        return self.end - time.monotonic()

    def run(self, what: str, argv: list[str], limit: float | None = None) -> int | None:
        """Run `argv` until it ends or its share of the deadline runs out (then SIGINT, then kill)."""
        budget = min(self.left(), limit if limit is not None else float("inf"))
        if budget < 5:
            self.log(f"skip {what}: {self.left():.0f} s left")
            return None
        self.log(f"start {what} ({budget:.0f} s at most): {' '.join(argv)}")
        proc = subprocess.Popen([sys.executable, *argv], cwd=REPO)
        try:
            code = proc.wait(timeout=budget)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGINT)  # a sweep keeps every finished cell on Ctrl-C
            try:
                code = proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait()
            self.log(f"{what}: stopped at its limit")
        self.log(f"end {what}: exit {code}, {self.left():.0f} s left")
        return code


def utilisation_logger(out: Path):
    """nvidia-smi writing utilisation every 5 s, or None where there is none (the CPU dry run)."""
    if shutil.which("nvidia-smi") is None:
        return None
    query = "timestamp,name,utilization.gpu,memory.used,power.draw"
    with (out / "gpu-utilisation.csv").open("w") as f:
        return subprocess.Popen(
            ["nvidia-smi", f"--query-gpu={query}", "--format=csv", "-l", "5"], stdout=f, stderr=subprocess.DEVNULL
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="where everything is written ($OUT on the lease)")
    p.add_argument("--data", default=".gpu/cifar10-jpeg.tar.gz", help="the data archive carried to the machine")
    p.add_argument("--deadline-s", type=float, default=540.0, help="the whole call's time (default %(default)s s)")
    p.add_argument("--studies", default=",".join(STUDIES), help="studies in priority order (default %(default)s)")
    p.add_argument("--dry-run", action="store_true", help="the CPU dry run: smoke profile, synthetic data, seconds")
    args = p.parse_args(argv)
    out = args.out.resolve()
    (out / "results").mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    log_file = (out / "lease.log").open("a")

    def log(message: str) -> None:
        line = f"[{time.monotonic() - start:6.0f} s] {message}"
        print(line, flush=True)
        log_file.write(line + "\n")
        log_file.flush()

    lease = Lease(out, args.deadline_s, log)
    # Stage caps keep one stage from eating a lease; a dry run on a loaded CPU has only the deadline.
    smoke_s, modes_s = (None, None) if args.dry_run else (SMOKE_S, MODES_S)
    device = "cpu" if args.dry_run else "auto"
    profile = "smoke" if args.dry_run else "gpu"
    data = "synthetic" if args.dry_run else args.data
    common = ["--device", device, "--no-progress", "--no-report"]
    util = utilisation_logger(out)
    try:
        smoke = lease.run(
            "smoke check",
            ["-m", "bench", "ablate", "--study", "figure1", "--profile", "smoke", "--out", str(out / "smoke"), *common],
            smoke_s,
        )
        if smoke != 0:
            log("the smoke check failed: nothing else runs")
            return 3
        # The whole-step CUDA graph checked against eager steps first: the graph modes below time it.
        lease.run(
            "whole-step graph test", ["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_graphed.py"], 120
        )
        lease.run(
            "gate baseline",
            ["-m", "bench", "gate", "--save", "lease", "--device", device, "--storage", str(out / "gate")]
            + (["--quick", "--model", "lenet5", "--repeat", "1"] if args.dry_run else ["--model", GATE_MODELS]),
            GATE_S,
        )
        for arch in MEASURE_ARCHS[:1] if args.dry_run else MEASURE_ARCHS:
            lease.run(
                f"speed modes of {arch}",
                [
                    "-m",
                    "bench",
                    "measure",
                    "--model",
                    arch,
                    "--device",
                    device,
                    "--modes",
                    MODES[args.dry_run],
                    "--quick",
                ]
                + ["--out", str(out / "results" / "measure" / f"modes-{arch}.csv")],
                modes_s,
            )
        for arch, knobs in PACKED[:1] if args.dry_run else PACKED:
            lease.run(
                f"packed cells of {arch}",
                ["-m", "bench", "measure", "--model", arch, *knobs, "--device", device, "--packs", PACKS[args.dry_run]]
                + ["--quick", "--out", str(out / "results" / "measure" / f"packing-{arch}.csv")],
                modes_s,
            )
        for study in args.studies.split(","):
            if not args.dry_run and declared_cells_done(REPO / "results" / study / profile, study, profile):
                log(f"skip {study}/{profile}: every declared cell is committed")
                continue
            lease.run(
                f"{study}/{profile}",
                ["-m", "bench", "ablate", "--study", study, "--profile", profile, "--data", data]
                + ["--out", str(out / "results"), *common],
            )
    finally:
        if util is not None:
            util.terminate()
        log(f"done: {lease.left():.0f} s of the deadline left")
        log_file.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
