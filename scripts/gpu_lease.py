"""One lease of a GPU machine: stages in priority order under one deadline, one archive always current.

The lent machine (an H100 or H200; torch, torchvision, pandas, seaborn and pytest-benchmark
installed, no network) gets one call of at most 600 s, about 15 minutes of device time in all.
Prepare here, once (wheels, the data archive and the last two commits, into the git-ignored .gpu/):

    python3 scripts/prepare_lease.py

then call the device tool's `run` with exactly:

    command:   PYTHONUNBUFFERED=1 python3 scripts/gpu_lease.py --out "$OUT"
    carry:     [".gpu"]
    timeout_s: 600

and unpack what comes back into results/ (and the gate's baselines) here:

    python3 scripts/unpack_lease.py /work/.device/.../lease.tar.gz

A second call continues: stages that finished on this GPU model (results/lease/<gpu>/stages.csv,
written by the unpacking) are skipped, a speed table's finished nets and a study's finished cells
are kept. The CPU dry run, seconds (tests/test_lease.py runs it): the same stages shrunk, on
synthetic data and the CPU:

    python3 scripts/gpu_lease.py --dry-run --out /tmp/lease-out --work /tmp/lease-work

What comes back. Only $OUT returns: at most 8 files, each under 16 MiB, at most two folders
down, named in letters, digits, '.', '_' and '-'. So everything goes into one archive,
$OUT/lease.tar.gz, rewritten after every stage and every REFRESH_S seconds within one
(a temporary file, then a rename: a call killed at any moment, the script SIGKILLed included,
leaves the last whole archive), with $OUT/lease.json beside it (what ran). The archive holds:

    lease.json                          the lease, the GPU and driver, each stage: start, seconds,
                                        budget, exit status, status (ok | failed | stopped | skipped)
    logs/NN-<stage>.log                 each stage's whole output (only 12,000 characters of the
                                        call's output come back)
    results/...                         the tables, at their paths in this repository
    gate/<device id>/...                the gate's baseline for this GPU model
    gpu-utilisation.csv                 nvidia-smi every 5 s

The stages (budgets in seconds, PLAN below; the last takes what is left):

    setup        install the carried wheels that are missing (no index, no network), make the copy
                 a git checkout again from .gpu/repo.git, read the GPU
    smoke        one tiny cell of each study's `gpu` profile on synthetic and on the real data,
                 and graphed (graph = true) on synthetic data: the GPU path of every study;
                 if an eager cell fails, nothing else runs (exit 3)
    modes        the studies' nets at batch 128 in their profiles' modes, against fp32 eager, and
                 for the four-layer net and AlexNet-CIFAR whole-step CUDA graphs too
    packs        1, 2, 4 and 8 cells of those two nets packed on the GPU (ablate --jobs N)
    gate-against gate --against HEAD~ at --quick, the two nets (identical code must pass)
    gate-save    a baseline `lease` for this GPU model: four cases, one suite run (--repeat 1)
    figure1      the Figure 1 `gpu` profile on the trailing-epoch stopper: the committed cells
                 stopped by the older one-window rule are run again; resumable cell by cell

Each stage runs in its own session (process group). At its budget the whole group gets
SIGINT (a sweep keeps its finished cells), then SIGKILL after GRACE_S; every wait is bounded.
The stage's leader also dies with this script (PR_SET_PDEATHSIG), so a SIGKILL of the script
does not leave a sweep running on the lent machine.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import ctypes
import importlib.metadata
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STAGES_PY = "scripts/lease_stages.py"
DEADLINE_S = 540.0  # one call is at most 600 s; the rest is the start, the transfers and slack
MARGIN_S = 30.0  # kept free at the end: the last archive, and a stage that overran its SIGINT
GRACE_S = 20.0  # SIGINT -> SIGKILL: a sweep merging its finished cells needs seconds
REFRESH_S = 30.0  # the archive is rewritten this often while a stage runs
MIN_STAGE_S = 10.0  # a stage that would get less is skipped
NOT_ASKED = "not asked for (--stages)"
ARCHIVE, SUMMARY = "lease.tar.gz", "lease.json"
LOG_CAP = 4 << 20  # bytes of one stage's log kept in the archive (its head and its tail)
ARCHIVE_CAP = 15 << 20  # the archive must stay under the 16 MiB a file may have
NAME = re.compile(r"[A-Za-z0-9._-]+")
WHEELS = ".gpu/wheels"
DATA = ".gpu/cifar10-jpeg.tar.gz"
GIT_COPY = ".gpu/repo.git"

# The gate's cases, named exactly: `alexnet*` would also take the 227-pixel alexnet-paper and
# alexnet-tv. `?` stands for the comma inside the AlexNet study's case id (--model splits on commas).
AGAINST_MODELS = "layers-80sec,alexnet"
BASELINE_MODELS = "layers-80sec,alexnet,alexnet:groups=2?lrn_alpha=0.4,cifar-conv-local"


@dataclass(frozen=True)
class Stage:
    name: str
    budget_s: float
    argv: list[str] = field(default_factory=list)  # run with this Python from the repository root
    run: Callable | None = None  # or in this process: run(lease, log) -> exit status
    needed: bool = False  # a failure stops the plan (stopped at its budget, it stops it unless it exited 0)
    again: bool = False  # runs in every lease, also after it finished in an earlier one
    rest: bool = False  # takes every second left before the deadline's margin
    open_ended: bool = False  # stopped at its budget is its normal end (a sweep resumed in the next lease)
    needs_data: bool = False  # skipped when the data archive was not carried


@dataclass
class Lease:
    out: Path  # $OUT: the archive and the summary beside it, nothing else
    work: Path  # everything the archive holds
    cache: Path  # the data and compile caches: kept out of the archive
    site: Path  # the carried wheels setup installed (PYTHONPATH of every stage)
    dry_run: bool
    device: str
    results_from: Path  # the committed results: tables to start from, stages done in earlier leases
    deadline: float = DEADLINE_S
    margin: float = MARGIN_S
    grace: float = GRACE_S
    refresh: float = REFRESH_S
    started: float = field(default_factory=time.monotonic)
    record: dict = field(default_factory=dict)
    stop: list = field(default_factory=list)  # a signal this script got
    scale: float = 1.0  # --budget-scale: budgets meant to be enough, for a slow machine (a loaded CPU)

    def left(self) -> float:
        """Seconds left for stages: to the deadline less the margin."""
        return self.deadline - self.margin - (time.monotonic() - self.started)


# --- the plan -----------------------------------------------------------------------------------


def plan(lease: Lease) -> list[Stage]:
    """The stages in priority order; a dry run's are the same shrunk to seconds on the CPU. The dry run
    keeps the budgets (its stages end long before them, also on a loaded CPU) but gives figure1 a few
    seconds and no more: it is stopped at its budget, as on the GPU."""
    dry = lease.dry_run
    return [
        Stage("setup", 20, run=setup, needed=True, again=True),
        Stage("smoke", 120, smoke_argv(lease), needed=True, again=True),
        Stage("modes", 100, speed_argv(lease, "modes"), open_ended=True),  # net by net: the next lease goes on
        Stage("packs", 60, speed_argv(lease, "packs"), open_ended=True),
        Stage("gate-against", 60, against_argv(lease)),
        Stage("gate-save", 50, baseline_argv(lease)),
        Stage("figure1", 15 if dry else 90, figure1_argv(lease), rest=not dry, open_ended=True, needs_data=not dry),
    ]


def lease_tables(lease: Lease) -> Path:
    """results/lease/<gpu>/ in the work folder: the smoke cells, the gate's comparison."""
    return lease.work / "results" / "lease" / lease.record["gpu"]["slug"]


def profile_of(lease: Lease) -> str:
    return "smoke" if lease.dry_run else "gpu"


def smoke_argv(lease: Lease) -> list[str]:
    """Dry: the smoke profile, 4 images per class, the real archive for figure1 alone."""
    data = lease.record.get("data")
    argv = [STAGES_PY, "smoke", "--out", str(lease_tables(lease) / "smoke.csv"), "--device", lease.device]
    argv += ["--profile", profile_of(lease), *(["--data", data] if data else [])]
    return argv + (["--per-class", "4", "--real", "figure1"] if lease.dry_run else [])


def speed_argv(lease: Lease, what: str) -> list[str]:
    """`modes` or `packs` into results/measure/<table>-<device>.csv, started from the committed table.
    Dry: measure's quick settings, one net, one pack, a batch of 16, one short round."""
    table = {"modes": "modes", "packs": "packing"}[what] + ("-cpu.csv" if lease.dry_run else "-cuda.csv")
    argv = [STAGES_PY, what, "--out", str(lease.work / "results" / "measure" / table), "--device", lease.device]
    argv += ["--profile", profile_of(lease), "--seed-from", str(lease.results_from / "measure" / table)]
    if not lease.dry_run:
        return argv
    if what == "modes":
        return argv + ["--quick", "--nets", "1"]
    return argv + ["--packs", "1", "--nets", "1", "--batch-size", "16", "--rounds", "1", "--round-s", "0.1"]


def against_argv(lease: Lease) -> list[str]:
    """Dry: against HEAD (the committed tree, the checkout as it is), LeNet-5, 2 pairs."""
    argv = ["-m", "bench", "gate", "--device", lease.device, "--against", "HEAD" if lease.dry_run else "HEAD~"]
    argv += ["--quick", "--report", str(lease_tables(lease) / "gate-against.csv")]
    return argv + (["--model", "lenet5", "--pairs", "2"] if lease.dry_run else ["--model", AGAINST_MODELS])


def baseline_argv(lease: Lease) -> list[str]:
    """Dry: LeNet-5 at --quick, 2 rounds."""
    argv = ["-m", "bench", "gate", "--device", lease.device, "--save", "lease", "--repeat", "1"]
    argv += ["--storage", str(lease.work / "gate")]
    return argv + (["--quick", "--model", "lenet5", "--rounds", "2"] if lease.dry_run else ["--model", BASELINE_MODELS])


def figure1_argv(lease: Lease) -> list[str]:
    """Into the work folder's results/, from the committed cells. Dry: the smoke profile, synthetic data."""
    argv = [STAGES_PY, "study", "--study", "figure1", "--profile", profile_of(lease), "--device", lease.device]
    argv += ["--out", str(lease.work / "results")]
    if lease.dry_run:
        return argv + ["--data", "synthetic"]
    return argv + ["--seed-from", str(lease.results_from), "--data", str(lease.record.get("data"))]


def check_plan(stages: list[Stage], deadline: float, margin: float) -> None:
    """The budgets fit the deadline with its margin; names are fit for files."""
    total = sum(s.budget_s for s in stages)
    if total > deadline - margin:
        raise ValueError(f"stage budgets sum to {total:.0f} s, over the deadline {deadline:.0f} s less {margin:.0f} s")
    for s in stages:
        if not NAME.fullmatch(s.name):
            raise ValueError(f"stage name {s.name!r}: letters, digits, '.', '_' and '-' only")


# --- setup: wheels, git, the GPU ----------------------------------------------------------------


def missing_wheels(folder: Path) -> list[str]:
    """The distributions in `folder` that this Python lacks (the image's own versions are kept)."""
    names = sorted({re.sub(r"[-_.]+", "-", w.name.split("-")[0]).lower() for w in folder.glob("*.whl")})
    missing = []
    for name in names:
        try:
            importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(name)
    return missing


def install_wheels(folder: Path, target: str, log) -> int:
    """pip install, from `folder` alone and without dependencies, what is missing; pip's exit status."""
    missing = missing_wheels(folder) if folder.is_dir() else []
    if not missing:
        print(f"wheels: nothing missing from {folder}", file=log, flush=True)
        return 0
    cmd = [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--no-compile", "--no-cache-dir"]
    cmd += ["--disable-pip-version-check", "--target", target, "--find-links", str(folder), *missing]
    print("wheels:", " ".join(cmd), file=log, flush=True)
    return subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, timeout=120).returncode


def restore_git(root: Path, copy: Path, log) -> bool:
    """Make `root` a git checkout again from the carried bare copy, where it came without .git (the
    lent machine gets the working tree alone): the index is rebuilt from HEAD, the files are left as
    they came, so uncommitted changes stay changes. Whether `root` is a checkout now."""
    if (root / ".git").exists():
        return True
    if not copy.is_dir() or shutil.which("git") is None:
        print(f"git: {root} is no checkout and {copy} or git is missing", file=log, flush=True)
        return False
    shutil.copytree(copy, root / ".git")
    steps = (["config", "core.bare", "false"], ["reset", "-q"])
    ok = all(subprocess.run(["git", *s], cwd=root, stdout=log, stderr=subprocess.STDOUT).returncode == 0 for s in steps)
    print(f"git: {root} made a checkout from {copy}: {'ok' if ok else 'failed'}", file=log, flush=True)
    return ok


def gpu_info() -> dict:
    """The GPU's model and driver from nvidia-smi, or 'none'; `slug` names its folder."""
    query = ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]
    try:
        line = subprocess.run(query, capture_output=True, text=True, timeout=30).stdout.strip().splitlines()[0]
        name, driver, memory = (part.strip() for part in line.split(","))
    except (OSError, IndexError, ValueError, subprocess.TimeoutExpired):
        return {"name": "none", "driver": "none", "memory": "none", "slug": "cpu"}
    return {"name": name, "driver": driver, "memory": memory, "slug": slug_of(name)}


def slug_of(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "gpu"


def setup(lease: Lease, log) -> int:
    shutil.rmtree(lease.site, ignore_errors=True)  # this lease's, nothing older
    status = install_wheels(REPO / WHEELS, str(lease.site), log)
    restore_git(REPO, REPO / GIT_COPY, log)
    print(json.dumps(lease.record["gpu"]), file=log, flush=True)
    return status


# --- running a stage in its own process group ---------------------------------------------------


def _die_with_parent() -> None:
    """In the stage's leader before it runs: SIGKILL when this script dies (Linux; elsewhere nothing)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def run_group(argv: list[str], budget: float, log, env: dict, grace: float, on_wait=None, stop=()) -> tuple:
    """Run `argv` in a new session until it ends or `budget` runs out (or a signal reached this script):
    then SIGINT to its whole group, SIGKILL after `grace`. (exit status or None, stopped, pid)."""
    proc = subprocess.Popen(
        argv,
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=_die_with_parent,
    )
    end, stopped = time.monotonic() + budget, False
    while proc.poll() is None and time.monotonic() < end and not stop:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=1.0)
        if on_wait is not None:
            on_wait(proc.pid)
    if proc.poll() is None:
        stopped = True
        signal_group(proc.pid, signal.SIGINT)  # the sweep keeps every finished cell
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)
    signal_group(proc.pid, signal.SIGKILL)  # what is left of the group: workers, pytest, the leader itself
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)
    return proc.poll(), stopped, proc.pid


def signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


# --- the archive --------------------------------------------------------------------------------


def write_archive(lease: Lease) -> None:
    """Rewrite OUT/lease.tar.gz from the work folder (a temporary file, then a rename), and lease.json."""
    write_json(lease.work / SUMMARY, lease.record)
    part = lease.out / (ARCHIVE + ".part")
    with tarfile.open(part, "w:gz") as tar:
        for path in files_under(lease.work):
            add_file(tar, path, path.relative_to(lease.work).as_posix())
    if part.stat().st_size > ARCHIVE_CAP:  # never expected: logs are capped, tables are small
        lease.record.setdefault("warnings", []).append(f"archive {part.stat().st_size} bytes: results left out")
        with tarfile.open(part, "w:gz") as tar:
            for path in [lease.work / SUMMARY, *sorted((lease.work / "logs").glob("*.log"))]:
                add_file(tar, path, path.relative_to(lease.work).as_posix())
    os.replace(part, lease.out / ARCHIVE)
    write_json(lease.out / SUMMARY, lease.record)


def files_under(folder: Path) -> list[Path]:
    """The files to archive, in order; os.walk, since a stage may remove a folder meanwhile (a merged
    cells/). Left out: temporary files of a write in progress, and a sweep's lock."""
    found = []
    for top, dirs, files in os.walk(folder):
        dirs.sort()
        found += [Path(top, f) for f in sorted(files) if not (f.endswith((".tmp", ".part")) or f == ".sweep.lock")]
    return found


def add_file(tar: tarfile.TarFile, path: Path, name: str) -> None:
    """One file, a log longer than LOG_CAP as its head and tail (a file still being written is read once)."""
    try:
        data = path.read_bytes()
    except OSError:
        return  # removed while the archive was written (a cell file merged): the table holds it
    if path.suffix == ".log" and len(data) > LOG_CAP:
        cut = f"\n[... {len(data) - LOG_CAP} bytes cut by gpu_lease.py ...]\n".encode()
        data = data[: LOG_CAP // 8] + cut + data[-(LOG_CAP - LOG_CAP // 8) :]
    info = tarfile.TarInfo(name)
    info.size, info.mtime = len(data), int(time.time())
    tar.addfile(info, io.BytesIO(data))


def write_json(path: Path, value: dict) -> None:
    part = path.with_name(path.name + ".part")
    part.write_text(json.dumps(value, indent=2, default=str) + "\n")
    os.replace(part, path)


# --- the lease ----------------------------------------------------------------------------------


def done_before(results_from: Path, slug: str) -> set[str]:
    """The stages whose latest run on this GPU model, in an earlier lease, was ok."""
    path = results_from / "lease" / slug / "stages.csv"
    if not path.is_file():
        return set()
    latest = {}
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            latest[row["stage"]] = row["status"]
    return {stage for stage, status in latest.items() if status == "ok"}


def budget_of(lease: Lease, stage: Stage) -> float:
    """The seconds `stage` gets now: its budget (times --budget-scale, unless it is stopped at its budget by
    design), or all that is left for the stage that takes the rest; never more than is left."""
    if stage.rest:
        return lease.left()
    return min(stage.budget_s * (1.0 if stage.open_ended else lease.scale), lease.left())


def run_stage(lease: Lease, number: int, stage: Stage) -> dict:
    """Run one stage within its budget, logging to logs/NN-name.log; its record."""
    budget = budget_of(lease, stage)
    entry = {"stage": stage.name, "budget_s": round(budget, 1), "planned_s": stage.budget_s}
    entry.update(started=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), at_s=round(lease_time(lease), 1))
    lease.record["running"] = stage.name
    lease.record["stages"].append(entry)
    write_json(lease.out / SUMMARY, lease.record)
    log_path = lease.work / "logs" / f"{number:02d}-{stage.name}.log"
    start = time.monotonic()
    with log_path.open("a") as log:
        if stage.run is not None:
            exit_status, stopped = stage.run(lease, log), False
        else:
            argv = [sys.executable, *stage.argv]
            log.write("$ " + " ".join(argv) + "\n")
            log.flush()
            last = [time.monotonic()]

            def refresh(pid: int) -> None:
                if entry.get("pid") != pid:  # known: say so beside the archive (which process to look for)
                    entry["pid"] = pid
                    write_json(lease.out / SUMMARY, lease.record)
                if time.monotonic() - last[0] >= lease.refresh:
                    last[0] = time.monotonic()
                    entry["seconds"] = round(time.monotonic() - start, 1)
                    write_archive(lease)

            env = stage_env(lease)  # after setup: the wheels it installed
            exit_status, stopped, entry["pid"] = run_group(argv, budget, log, env, lease.grace, refresh, lease.stop)
    entry.update(seconds=round(time.monotonic() - start, 1), exit=exit_status)
    entry["status"] = "ok" if exit_status == 0 else "stopped" if stopped else "failed"
    lease.record["running"] = None
    write_json(log_path.with_suffix(".json"), entry)  # the stage's own record beside its log
    return entry


def lease_time(lease: Lease) -> float:
    return time.monotonic() - lease.started


def skip(lease: Lease, stage: Stage, why: str) -> dict:
    entry = {"stage": stage.name, "planned_s": stage.budget_s, "status": "skipped", "why": why}
    lease.record["stages"].append(entry)
    return entry


def stage_env(lease: Lease) -> dict:
    """The stages' environment: this checkout's `bench` first, then the wheels setup installed (if any)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", BENCH_CACHE=str(lease.cache))
    site = str(lease.site) if lease.site.is_dir() else None
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), site, env.get("PYTHONPATH")]))
    env.setdefault("MPLBACKEND", "Agg")
    return env


def utilisation_logger(lease: Lease):
    """nvidia-smi every 5 s into the archive, or None (no nvidia-smi: the CPU dry run)."""
    if lease.dry_run or shutil.which("nvidia-smi") is None:
        return None
    query = "timestamp,name,utilization.gpu,memory.used,power.draw"
    with (lease.work / "gpu-utilisation.csv").open("w") as f:
        return subprocess.Popen(
            ["nvidia-smi", f"--query-gpu={query}", "--format=csv", "-l", "5"],
            stdout=f,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )


def skip_reason(lease: Lease, stage: Stage, only: set[str] | None, before: set[str], redo: set[str]) -> str | None:
    """Why `stage` does not run in this lease, or None."""
    if lease.stop:
        return f"signal {lease.stop[0]}"
    if only is not None and stage.name not in only:
        return NOT_ASKED
    if stage.name in before and not stage.again and stage.name not in redo:
        return "ok in an earlier lease on this GPU model (--redo runs it again)"
    if stage.needs_data and not lease.record["data"]:
        return "no data archive (prepare_lease.py copies it into .gpu/)"
    if budget_of(lease, stage) < MIN_STAGE_S:
        return f"{lease.left():.0f} s left"
    return None


def outcome(stage: Stage, entry: dict) -> int:
    """What a stage's end means for the lease: 0 as planned, 1 a stage fell short (the lease goes on),
    3 what the rest needs did not pass (the lease stops). A stage stopped at its budget that exited 0
    judged what it ran and found it good (the smoke check does); open-ended stages end so."""
    status = entry["status"]
    if status == "skipped":
        return 3 if stage.needed and entry["why"] != NOT_ASKED else 0
    if status == "ok" or (status == "stopped" and stage.open_ended):
        return 0
    if status == "stopped" and entry["exit"] == 0:
        return 1
    return 3 if stage.needed else 1


def run_lease(lease: Lease, stages: list[Stage], only: set[str] | None, redo: set[str]) -> int:
    """Every stage in order while time is left; the lease's exit status: the worst `outcome`."""
    check_plan(stages, DEADLINE_S, MARGIN_S)  # the design; a shorter --deadline-s cuts the stages that come last
    before = done_before(lease.results_from, lease.record["gpu"]["slug"])
    util = utilisation_logger(lease)
    status = 0
    try:
        write_archive(lease)
        for number, stage in enumerate(stages):
            why = skip_reason(lease, stage, only, before, redo)
            entry = skip(lease, stage, why) if why else run_stage(lease, number, stage)
            print(f"[{lease_time(lease):5.0f} s] {stage.name}: {entry['status']} ({why or entry['exit']})", flush=True)
            status = max(status, outcome(stage, entry))
            write_archive(lease)
            if status == 3:
                break
    finally:
        if util is not None:
            signal_group(util.pid, signal.SIGKILL)
        lease.record.update(finished=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), seconds=lease_time(lease))
        lease.record["exit"] = status
        write_archive(lease)
    return status


def new_record(args, gpu: dict) -> dict:
    started = time.gmtime()
    data = data_path(args.data)
    return {
        "lease_id": time.strftime("%Y%m%dT%H%M%SZ", started),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", started),
        "dry_run": args.dry_run,
        "deadline_s": args.deadline_s,
        "margin_s": MARGIN_S,
        "gpu": gpu,
        "data": data,
        "python": sys.version.split()[0],
        "argv": sys.argv,
        "stages": [],
        "running": None,
    }


def data_path(given: str | None) -> str | None:
    """The data archive as an absolute path (relative: to the current folder, else to the repository), or
    None where it is not there (not carried)."""
    if not given:
        return None
    for path in (Path(given), REPO / given):
        if path.exists():
            return str(path.resolve())
    return None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="where the archive goes ($OUT on the lease)")
    p.add_argument("--work", type=Path, default=Path("/tmp/gpu-lease/work"), help="the archive's contents")
    p.add_argument("--cache", type=Path, default=None, help="data and compile caches (default: beside --work)")
    p.add_argument("--data", default=DATA, help="the data archive carried to the machine (default %(default)s)")
    p.add_argument("--results-from", type=Path, default=REPO / "results", help="the committed results")
    p.add_argument("--deadline-s", type=float, default=DEADLINE_S, help="the whole call (default %(default)s s)")
    p.add_argument("--stages", default=None, help="comma-separated stage names to run (default: all)")
    p.add_argument(
        "--redo", default="", help="comma-separated stages to run again though an earlier lease finished them"
    )
    p.add_argument("--dry-run", action="store_true", help="the CPU dry run: every stage shrunk, synthetic data")
    p.add_argument(
        "--budget-scale",
        type=float,
        default=1.0,
        help="multiply the deadline and the budgets of the stages meant to finish (a dry run on a loaded CPU)",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out, work = args.out.resolve(), args.work.resolve()
    out.mkdir(parents=True, exist_ok=True)
    if work == out or out in work.parents:
        raise SystemExit("--work must not be inside --out: only the archive and its summary go there")
    shutil.rmtree(work, ignore_errors=True)  # one lease's work; the committed results are the memory
    (work / "logs").mkdir(parents=True)
    gpu = {"name": "none", "driver": "none", "memory": "none", "slug": "cpu"} if args.dry_run else gpu_info()
    lease = Lease(
        out=out,
        work=work,
        cache=(args.cache or work.parent / "cache").resolve(),
        site=work.parent / "site",
        dry_run=args.dry_run,
        device="cpu" if args.dry_run else "auto",
        results_from=args.results_from.resolve(),
        deadline=args.deadline_s * args.budget_scale,
        scale=args.budget_scale,
        grace=5.0 if args.dry_run else GRACE_S,
        record=new_record(args, gpu),
    )
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda number, frame: lease.stop.append(signal.Signals(number).name))
    stages = plan(lease)
    only = set(args.stages.split(",")) if args.stages else None
    status = run_lease(lease, stages, only, set(filter(None, args.redo.split(","))))
    print(f"lease: exit {status}; {out / ARCHIVE} ({(out / ARCHIVE).stat().st_size} bytes)", flush=True)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
