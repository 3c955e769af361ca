"""`python -m bench ablate`: run studies (ablations/*.toml) at a profile into results/<study>/<profile>/."""

from __future__ import annotations

import argparse
import logging
import os
import time
from dataclasses import fields
from pathlib import Path

import torch

from bench.data.sources import check_folder
from bench.device import pick_device
from bench.errors import UserError
from bench.io import check_writable
from bench.sweep.packed import PackedExecutor
from bench.sweep.ray_executor import RayExecutor
from bench.sweep.runner import check_data, run_study
from bench.sweep.study import PROFILES, list_studies, load_study
from bench.train.config import TrainConfig
from bench.train.loop import check_graph
from bench.train.result import FINISHED
from bench.train.tensorboard import summary_writer_class

log = logging.getLogger(__name__)

DEFAULT_MAX_RETRIES = 2
RAY_OPTIONS = ("ray_address", "gpus_per_cell", "cpus_per_cell", "max_retries")
PROFILE_RESOURCES = ("gpus_per_cell", "cpus_per_cell")  # per-cell defaults a study profile may set
# The environment variables that default the data options: TrainConfig declares them (`option(..., env=)`).
OPTION_ENV = {f.name: f.metadata["env"] for f in fields(TrainConfig) if f.metadata.get("env")}


def default_profile() -> str:
    return "gpu" if torch.cuda.is_available() else "cpu"


def parse_seeds(text: str) -> list[int]:
    # ArgumentTypeError: argparse prints its message as is (a ValueError it would replace)
    parts = [s.strip() for s in text.split(",")]
    if not any(parts):
        raise argparse.ArgumentTypeError("needs at least one integer, e.g. --seeds 0")
    if not all(parts):
        raise argparse.ArgumentTypeError(f"{text!r} has an empty item; give each seed once, e.g. --seeds 0,1,2")
    try:
        seeds = [int(s) for s in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of integers, e.g. --seeds 0,1,2"
        ) from None
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise argparse.ArgumentTypeError(
            f"{text!r} repeats seed {repeated[0]} (the same run counted twice); give each seed once, e.g. --seeds 0,1,2"
        )
    return seeds


def _non_negative(kind):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = -1
        if not value >= 0:  # NaN too
            raise argparse.ArgumentTypeError(f"{text!r} is not a non-negative {kind.__name__}")
        return value

    return parse


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of 1 or more")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--study", default="all", help="comma-separated study names from ablations/ or .toml paths (default: all)"
    )
    p.add_argument(
        "--profile", default=None, help="smoke | cpu | cpu-full | gpu (default: gpu when CUDA is present, else cpu)"
    )
    data_env, root_env = OPTION_ENV["data"], OPTION_ENV["data_root"]
    p.add_argument(
        "--data",
        default=os.environ.get(data_env),
        help="cifar10 | synthetic | PATH to an ImageFolder tree or .tar.gz "
        f"(default ${data_env}, else what the study's profile says, else cifar10)",
    )
    p.add_argument(
        "--data-root",
        default=os.environ.get(root_env),
        help=f"folder holding cifar-10-batches-py/ (default ${root_env} or ./data)",
    )
    p.add_argument("--seeds", type=parse_seeds, default=None, help="override the profile's seeds, e.g. 0,1,2")
    p.add_argument(
        "--device",
        default="auto",
        help="auto | cpu | cuda | cuda:N | mps (default auto); under --executor ray, cuda means each cell's own GPU(s)",
    )
    p.add_argument(
        "--executor",
        choices=("local", "ray"),
        default="local",
        help="local: cells on this machine's one device (--jobs at a time); ray: cells as Ray tasks, one per GPU "
        "(or share of one) on this machine or a Ray cluster (default %(default)s)",
    )
    p.add_argument(
        "--jobs",
        type=_positive_int,
        default=1,
        metavar="N",
        help="--executor local: run N cells at once on the one device, each in its own process with "
        "1/N of the CPU threads (packing small nets onto a GPU; on a GPU, CUDA MPS lets them overlap). "
        "Throughput measured by packed cells is their share (runs.csv: packed_cells). Default 1",
    )
    p.add_argument("--out", type=Path, default=Path("results"), help="results root (default %(default)s)")
    p.add_argument("--no-report", action="store_true", help="do not draw the report after the studies")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument(
        "--tensorboard",
        type=Path,
        default=None,
        metavar="DIR",
        help="also write each cell's per-epoch history as TensorBoard scalars: DIR/<study>/<profile>/<levels,seed>",
    )
    ray = p.add_argument_group(
        "--executor ray", "Resources default to the study profile's gpus_per_cell and cpus_per_cell, when it sets them."
    )
    ray.add_argument(
        "--ray-address",
        default=None,
        metavar="ADDRESS",
        help="auto | HOST:PORT | ray://HOST:PORT: the Ray cluster to run on "
        "(default $RAY_ADDRESS, else a Ray runtime started on this machine)",
    )
    ray.add_argument(
        "--gpus-per-cell",
        type=_non_negative(float),
        default=None,
        metavar="N",
        help="GPUs each cell reserves; a fraction shares one, e.g. 0.5 (default: 1 when the cluster has GPUs, else 0)",
    )
    ray.add_argument(
        "--cpus-per-cell",
        type=_non_negative(float),
        default=None,
        metavar="N",
        help="CPUs each cell reserves, and its torch threads (default 1)",
    )
    ray.add_argument(
        "--max-retries",
        type=_non_negative(int),
        default=None,
        metavar="N",
        help="runs of a cell after its worker process died, before its row says crashed "
        f"(default {DEFAULT_MAX_RETRIES})",
    )


def run(args: argparse.Namespace) -> int:
    profile = args.profile or default_profile()
    if profile not in PROFILES:
        raise UserError(f"--profile {profile!r} is not valid; choose one of: {', '.join(PROFILES)}")
    names = list_studies() if args.study == "all" else [s.strip() for s in args.study.split(",") if s.strip()]
    studies = [load_study(n) for n in names]  # every study file is checked before anything runs
    overrides = {}
    if args.data:
        overrides["data"] = args.data
    if args.data_root:
        overrides["data_root"] = args.data_root
    for study in studies:
        study.cells(profile, args.seeds, overrides)  # a missing profile fails before anything runs
        _profile_resources(study, profile)
        if args.seeds is not None and study.confirm_seeds(profile):
            log.warning(
                "%s/%s: --seeds %s runs those seeds on the whole design; the profile's second stage "
                "(confirm_seeds %s at the chosen learning rates) is skipped",
                study.name,
                profile,
                ",".join(map(str, args.seeds)),
                study.confirm_seeds(profile),
            )
    if args.executor == "local":
        given = [o for o in RAY_OPTIONS if getattr(args, o) is not None]
        if given:
            raise UserError(f"--{given[0].replace('_', '-')} applies to --executor ray only")
    elif args.jobs != 1:
        raise UserError("--jobs applies to --executor local only; Ray places cells by --gpus-per-cell/--cpus-per-cell")
    else:
        for study in studies:  # a missing extra, an unreachable cluster, cells no node could run: now
            _executor(args, study, profile, 1).check()
    if args.data and args.data not in ("cifar10", "synthetic"):
        check_folder(Path(args.data).expanduser())
    # Before any folder is made or locked: where results go, the device, every unfinished cell's data.
    check_writable(args.out, "--out", folder=True)
    if args.tensorboard is not None:
        summary_writer_class()  # a missing package is one line now, not an error row per cell
        check_writable(args.tensorboard, "--tensorboard", folder=True)
    if args.executor == "local":
        device = pick_device(args.device)
        for study in studies:  # graph=true on a device that cannot capture: one line, not an error row per cell
            for cell in study.cells(profile, args.seeds, overrides):
                check_graph(cell.config, device)
    to_run = {
        study.name: check_data(
            study,
            profile,
            out_root=args.out,
            seeds=args.seeds,
            overrides=overrides,
            keep=args.executor == "local" and args.jobs == 1,
        )
        for study in studies
    }
    jobs = {study.name: _jobs(args, study, profile, to_run[study.name]) for study in studies}
    status = 0
    for study in studies:
        start = time.perf_counter()
        runs = run_study(
            study,
            profile,
            out_root=args.out,
            seeds=args.seeds,
            overrides=overrides,
            device=args.device,
            executor=_executor(args, study, profile, jobs[study.name]),
            progress=not args.no_progress,
            tensorboard=str(args.tensorboard) if args.tensorboard else None,
        )
        failed = int((~runs["status"].isin(FINISHED)).sum()) if len(runs) else 0
        log.info(
            "%s/%s: %d cells in runs.csv, %d failed; this sweep took %.0f s -> %s",
            study.name,
            profile,
            len(runs),
            failed,
            time.perf_counter() - start,
            args.out / study.name / profile,
        )
        status = status or (1 if failed else 0)
    if not args.no_report:
        _report(args.out, [s.name for s in studies], profile)
    return status


def _profile_resources(study, profile: str) -> dict:
    """The per-cell resources the study's profile sets, checked."""
    table = study.profiles[profile]
    found = {}
    for key in PROFILE_RESOURCES:
        if key in table:
            value = table[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise UserError(f"{study.path}: profiles.{profile}.{key} must be a non-negative number, got {value!r}")
            found[key] = value
    return found


def _jobs(args: argparse.Namespace, study, profile: str, to_run: int) -> int:
    """The cells of `study` that run at once under --jobs: no more than it has to run (what
    runs.csv's packed_cells then records), said where that is fewer than asked; and a word where
    more run at once on the CPU than it has cores. A two-stage profile's second stage is not known
    yet: each stage's cells are capped as they start (`PackedExecutor.run`)."""
    if args.executor != "local" or args.jobs == 1:
        return 1
    two_stage = args.seeds is None and bool(study.confirm_seeds(profile))
    jobs = args.jobs if two_stage or not to_run else min(args.jobs, to_run)
    if jobs < args.jobs and to_run:
        log.warning(
            "%s/%s: --jobs %d, and %d cells to run: %d run at a time (runs.csv packed_cells = %d)",
            study.name,
            profile,
            args.jobs,
            to_run,
            jobs,
            jobs,
        )
    cores = os.cpu_count() or 1
    if jobs > cores and pick_device(args.device).type == "cpu":
        log.warning(
            "%s/%s: %d cells at once on %d CPU cores: they take turns on the cores, one thread each, and each "
            "cell's measured throughput is its share of them",
            study.name,
            profile,
            jobs,
            cores,
        )
    return jobs


def _executor(args: argparse.Namespace, study, profile: str, jobs: int):
    """None for the runner's local executor (a PackedExecutor for `jobs` at once); a RayExecutor with
    the CLI's, else the profile's, resources."""
    if args.executor == "local":
        return PackedExecutor(args.device, jobs) if jobs > 1 else None
    per_cell = {
        **_profile_resources(study, profile),
        **{k: getattr(args, k) for k in PROFILE_RESOURCES if getattr(args, k) is not None},
    }
    return RayExecutor(
        args.device,
        address=args.ray_address,
        gpus_per_cell=per_cell.get("gpus_per_cell"),
        cpus_per_cell=per_cell.get("cpus_per_cell", 1.0),
        max_retries=args.max_retries if args.max_retries is not None else DEFAULT_MAX_RETRIES,
    )


def _report(out: Path, studies: list[str], profile: str) -> None:
    from bench.report.draw import report_study  # here: plotting libraries load only when a report is drawn

    for name in studies:
        report_study(out / name / profile)
