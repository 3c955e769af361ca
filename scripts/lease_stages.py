"""The GPU lease's stages that run the package: `scripts/gpu_lease.py` starts each as its own process.

    python scripts/lease_stages.py smoke --out CSV --profile gpu --data ARCHIVE --device auto
    python scripts/lease_stages.py modes --out CSV --device auto
    python scripts/lease_stages.py packs --out CSV --device auto --packs 1,2,4,8
    python scripts/lease_stages.py study --study figure1 --profile gpu --out ROOT --seed-from results ...

The lease's driver imports only the standard library (it installs the carried wheels before
anything imports `bench`); these do the work, through the package's public functions. Each
writes its table after every unit of work (a cell, a net, a model), atomically, so a stage
stopped at its budget keeps what it finished, and each skips what its table already holds, so a
later lease resumes it.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's `bench`, also where the package is installed elsewhere

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from bench.env import environment  # noqa: E402
from bench.errors import UserError  # noqa: E402
from bench.io import read_csv, write_csv  # noqa: E402
from bench.studies import list_studies  # noqa: E402
from bench.sweep.results import ResultsFolder  # noqa: E402
from bench.sweep.study import Study, find_study  # noqa: E402
from bench.train.result import FINISHED  # noqa: E402
from bench.train.target import TRAILING_EPOCH_MEAN  # noqa: E402

log = logging.getLogger("lease")

# The studies in the order their nets are measured (what the CPU can least answer first).
STUDY_ORDER = ("figure1", "alexnet", "cifar-lrn", "overfitting", "architectures")
GRAPHED_NETS = ("layers-80sec", "alexnet")  # launch-bound at batch 128: CUDA graphs and packed cells for these
SPEED_BATCH = 128  # results/measure/modes-cuda.csv's batch: the paper's


# --- smoke: one tiny cell of each study's profile, eager and graphed -----------------------------


def tiny_cell(study: Study, profile: str, data: str, per_class: int, graph: bool):
    """The profile's baseline cell (its first where none is marked) on a few images for one epoch."""
    overrides = dict(data=data, epochs=1, train_per_class=per_class, test_per_class=2, val_size=20)
    overrides.update(train_eval_size=20, graph=graph)
    cells = study.cells(profile, seeds=[0], overrides=overrides)
    return next((c for c in cells if c.is_baseline), cells[0])


def smoke(args: argparse.Namespace) -> int:
    """Exit 0: every cell that ran was ok; 1: a graphed cell failed (on CUDA); 3: an eager cell failed or
    none ran. Stopped at its budget (SIGINT), it judges the cells that ran (the rest are `not run`)."""
    from bench.device import pick_device

    cuda = pick_device(args.device).type == "cuda"
    real = studies_in_order() if args.real is None else args.real.split(",")
    # synthetic data first (the GPU path of every study), graphed, then the real archive (its decoding
    # takes the longest, and the cache it leaves serves the figure1 stage)
    plan = [(name, "synthetic", False) for name in studies_in_order()]
    plan += [(name, "synthetic", True) for name in studies_in_order()]  # graph = true: refused off CUDA
    plan += [(name, args.data, False) for name in real] if args.data else []
    rows = []
    try:
        for name, data, graph in plan:
            rows.append(smoke_cell(args, name, data, graph, cuda))
            write_csv(args.out, rows)  # after every cell: a stage stopped at its budget keeps what ran
    except KeyboardInterrupt:
        log.warning("smoke: stopped at its budget after %d of %d cells", len(rows), len(plan))
    rows += [smoke_row(n, d, g, {"status": "not run"}, 0.0, cuda) for n, d, g in plan[len(rows) :]]
    write_csv(args.out, rows)
    ran = [r for r in rows if r["verdict"] != "not run"]
    eager_failed = [r for r in ran if not r["graph"] and r["verdict"] != "ok"]
    graph_failed = [r for r in ran if r["graph"] and r["verdict"] not in ("ok", "refused")]
    log.info("smoke: %d cells, %d eager failed, %d graphed failed", len(ran), len(eager_failed), len(graph_failed))
    return 3 if eager_failed or not ran else 1 if graph_failed else 0


def smoke_cell(args: argparse.Namespace, name: str, data: str, graph: bool, cuda: bool) -> dict:
    """One tiny cell, trained and counted as a sweep's (`run_cell`, no throughput), as a smoke row."""
    from bench.sweep.runner import run_cell

    cell = tiny_cell(study_named(name), args.profile, data, args.per_class, graph)
    start = time.perf_counter()
    try:
        done = run_cell(cell, args.device, measure="none", target=None, profile=args.profile, progress=False).row
    except UserError as e:  # graph=true with --device cpu is refused before the cell starts
        done = {"status": "error", "error": str(e)}
    row = smoke_row(name, data, graph, done, time.perf_counter() - start, cuda)
    log.info("smoke %s %s%s: %s %s", name, row["data"], " graph" if graph else "", row["verdict"], row["error"] or "")
    return row


def studies_in_order() -> list[str]:
    """The studies shipped in ablations/, those of STUDY_ORDER first."""
    found = list_studies()
    return [s for s in STUDY_ORDER if s in found] + [s for s in found if s not in STUDY_ORDER]


@functools.cache
def study_named(name: str) -> Study:
    # the file read and checked, without load_study's building of every profile's models (seconds):
    # a bad cell fails when it runs, as its row
    return Study.read(find_study(name))


def smoke_row(study: str, data: str, graph: bool, row: dict, seconds: float, cuda: bool) -> dict:
    """A smoke cell's verdict: ok, failed, or (a graphed cell off CUDA) refused as it should be."""
    error = row.get("error")
    status = row.get("status")
    verdict = "ok" if status in FINISHED else "not run" if status == "not run" else "failed"
    if graph and not cuda and error and "need a CUDA device" in error:
        verdict = "refused"  # the one-line refusal is the expected outcome on a CPU
    keep = ("cell_id", "device", "device_name", "torch", "cuda", "cudnn", "git_commit", "dtype_resolved")
    keep += ("cfg_model", "cfg_channels_last", "cfg_batch_size", "train_images", "final_train_running_loss")
    keep += ("graph_partial_batch", "graph_replays", "graph_eager_steps", "data_source")
    return {
        "study": study,
        "data": "synthetic" if data == "synthetic" else "archive",
        "graph": graph,
        "verdict": verdict,
        "status": status,
        "error": error,
        "seconds": round(seconds, 2),
        **{k: row.get(k) for k in keep},
    }


# --- speed: the studies' nets in their profiles' modes, incrementally --------------------------


def study_nets(profile: str) -> list[dict]:
    """Each study's net at `profile` (its baseline; every architecture of `architectures`) with the mode it
    trains in, without repeats, in STUDY_ORDER."""
    nets, seen = [], set()
    for name in studies_in_order():
        cells = study_named(name).cells(profile, seeds=[0])
        chosen = cells if name == "architectures" else [next((c for c in cells if c.is_baseline), cells[0])]
        for cell in chosen:
            cfg = cell.config
            knobs = changed_knobs(cfg.model, cfg.knobs)
            mode = "+".join([cfg.dtype if cfg.dtype != "auto" else "bf16", *(["cl"] if cfg.channels_last else [])])
            key = json.dumps([cfg.model, knobs, mode], sort_keys=True)
            if key not in seen:  # the same net in the same mode, named by two studies, is measured once
                seen.add(key)
                nets.append({"model": cfg.model, "knobs": knobs, "mode": mode, "study": name})
    return nets


def changed_knobs(model: str, knobs: dict) -> dict:
    """The knobs that differ from the model's defaults: a study that spells out a default names the same net."""
    from bench.models import model_knobs

    defaults = model_knobs(model)
    return {k: v for k, v in knobs.items() if defaults.get(k, object()) != v}


def net_modes(net: dict, cuda: bool) -> list[str]:
    """fp32 eager (every ratio's baseline), the profile's mode, and for a launch-bound net on CUDA its graphs."""
    modes = ["fp32", net["mode"]]
    if cuda and net["model"] in GRAPHED_NETS:
        modes += [f"graph+{net['mode']}", "graph+fp32"]
    return list(dict.fromkeys(modes))


def seed_table(out: Path, seed_from: Path | None) -> None:
    """Start `out` from the committed table, so the archive holds it whole and finished rows are skipped."""
    if seed_from is not None and seed_from.is_file() and not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(seed_from, out)


def saved_rows(out: Path) -> pd.DataFrame:
    return read_csv(out, ["knobs"]) if out.is_file() and out.stat().st_size else pd.DataFrame()


def modes(args: argparse.Namespace) -> int:
    """`measure --modes` net by net, the table rewritten after each; a net whose modes are there is skipped."""
    from bench.device import pick_device
    from bench.measure.modes import ROW_KEY, measure_modes_table, parse_modes
    from bench.measure.speed import settings_for
    from bench.measure.table import merge_tables
    from bench.models import format_knobs
    from bench.train.modes import apply_backend_flags

    device = pick_device(args.device)
    apply_backend_flags(device, True, True)  # measure's defaults: cuDNN autotuning and TF32 on
    seed_table(args.out, args.seed_from)
    name = environment(device)["device_name"]
    failed = 0
    nets = study_nets(args.profile)[: args.nets or None]
    for net in nets:
        # a net's rows are replaced together (one fp32 baseline): modes measured before are measured again
        wanted = list(dict.fromkeys(net_modes(net, device.type == "cuda") + modes_in(saved_rows(args.out), net, name)))
        if modes_done(saved_rows(args.out), net, wanted, name, args.quick):
            log.info("modes of %s %s: in the table already", net["model"], format_knobs(net["knobs"]))
            continue
        frame = measure_modes_table(
            [net["model"]],
            parse_modes(",".join(wanted), device),
            device=device,
            settings=settings_for(args.quick),
            quick=args.quick,
            batch_size=None if args.quick else SPEED_BATCH,
            knobs=net["knobs"] or None,
        )
        saved = saved_rows(args.out)
        write_csv(args.out, frame if not len(saved) else merge_tables(saved, frame, ROW_KEY))
        failed += int(frame["error"].notna().sum())
        log.info("modes of %s: %s", net["model"], summary_of(frame, "mode", "train_vs_fp32"))
    return 1 if failed else 0


def rows_of_net(saved: pd.DataFrame, net: dict, device_name: str, quick: bool | None = None) -> pd.DataFrame:
    """The table's rows of `net` on this device model (and at `quick`, where given)."""
    from bench.models import format_knobs

    if not len(saved) or "mode" not in saved:
        return saved
    mine = (saved["model"] == net["model"]) & (saved["knobs"].fillna("") == format_knobs(net["knobs"]))
    mine &= saved["device_name"] == device_name
    if quick is not None:
        mine &= saved["quick"].astype(str) == str(quick)
    return saved[mine]


def modes_in(saved: pd.DataFrame, net: dict, device_name: str) -> list[str]:
    rows = rows_of_net(saved, net, device_name)
    return list(rows["mode"]) if len(rows) else []


def modes_done(saved: pd.DataFrame, net: dict, wanted: list[str], device_name: str, quick: bool) -> bool:
    rows = rows_of_net(saved, net, device_name, quick)
    return bool(len(rows)) and set(wanted) <= set(rows.loc[rows["error"].isna(), "mode"])


def summary_of(frame: pd.DataFrame, key: str, value: str) -> str:
    return ", ".join(f"{k} {v:.2f}x" if pd.notna(v) else f"{k} -" for k, v in zip(frame[key], frame[value]))


# --- packed cells: the launch-bound nets, model by model ----------------------------------------


def packs(args: argparse.Namespace) -> int:
    """`measure --packs` for the four-layer net and AlexNet-CIFAR as their studies train them, one table write
    per model; a model whose packs are there is skipped."""
    from bench.device import pick_device
    from bench.measure.packing import ROW_KEY, measure_packing
    from bench.measure.table import merge_tables

    device = pick_device(args.device)
    seed_table(args.out, args.seed_from)
    name = environment(device)["device_name"]
    wanted = tuple(int(n) for n in args.packs.split(","))
    for net in [n for n in study_nets(args.profile) if n["model"] in GRAPHED_NETS][: args.nets or None]:
        dtype, channels_last = net["mode"].split("+")[0], net["mode"].endswith("+cl")
        if packs_done(saved_rows(args.out), net, wanted, name, dtype, channels_last, args.batch_size):
            log.info("packs of %s: in the table already", net["model"])
            continue
        frame = measure_packing(
            net["model"],
            net["knobs"],
            device=str(device),
            packs=wanted,
            batch_size=args.batch_size,
            dtype=dtype,
            channels_last=channels_last,
            rounds=args.rounds,
            round_s=args.round_s,
        )
        saved = saved_rows(args.out)
        write_csv(args.out, frame if not len(saved) else merge_tables(saved, frame, ROW_KEY))
        log.info("packs of %s: %s", net["model"], summary_of(frame, "packed_cells", "total_vs_fewest"))
    return 0


def packs_done(saved, net, wanted, device_name, dtype, channels_last, batch_size) -> bool:
    from bench.models import format_knobs

    if not len(saved) or "packed_cells" not in saved:
        return False
    mine = saved[
        (saved["model"] == net["model"])
        & (saved["knobs"].fillna("") == format_knobs(net["knobs"]))
        & (saved["device_name"] == device_name)
        & (saved["dtype"] == dtype)
        & (saved["memory_format"] == ("channels_last" if channels_last else "contiguous"))
        & (saved["batch_size"] == batch_size)
    ]
    return set(wanted) <= set(mine["packed_cells"].astype(int))


# --- a study, resumed from the committed cells judged as the sweep now judges them ----------------


def study(args: argparse.Namespace) -> int:
    """Seed the lease's results folder, then `ablate` the study into it (SIGINT keeps finished cells)."""
    from bench.cli import main

    seeded = seed_study(args.study, args.profile, args.seed_from, args.out)
    log.info("%s/%s: %d finished cells carried over from %s", args.study, args.profile, seeded, args.seed_from)
    argv = ["ablate", "--study", args.study, "--profile", args.profile, "--out", str(args.out), "--device", args.device]
    argv += ["--no-progress", "--no-report", *(["--data", args.data] if args.data else [])]
    return main(argv)


def seed_study(name: str, profile: str, seed_from: Path | None, out_root: Path) -> int:
    """Copy the finished cells of `seed_from/<study>/<profile>` into `out_root` (once: a folder already
    there is the lease's own, resumed as it is); how many.

    A study whose target is the running training error stops each cell on its trailing-epoch mean
    (`bench.train.target`); a cell recorded before that rule (no `target_statistic` of that name) stopped
    on one window and is left out, so the sweep runs it again.
    """
    src, dst = (seed_from / name / profile if seed_from else None), out_root / name / profile
    if dst.exists() or src is None or not src.is_dir():
        return 0
    spec = study_named(name)
    columns = ["study", "profile", "status", *spec.factors]
    runs, history, progress = ResultsFolder(src, columns).read()
    if not len(runs):
        return 0
    keep = runs["status"].isin(FINISHED)
    if (spec.target or {}).get("metric") == "train_running_err_pct":
        stat = runs["target_statistic"] if "target_statistic" in runs else pd.Series("", index=runs.index)
        keep &= stat == TRAILING_EPOCH_MEAN
    into = ResultsFolder(dst, columns)
    for _, row in runs[keep].iterrows():
        cell = row["cell_id"]
        into.record(row.dropna().to_dict(), rows_of(history, cell), rows_of(progress, cell))
    return into.merge()


def rows_of(table: pd.DataFrame, cell_id: str) -> list[dict]:
    if not len(table):
        return []
    return [r.dropna().to_dict() for _, r in table[table["cell_id"] == cell_id].iterrows()]


# --- command line --------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = main_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    log.info("torch %s, CUDA %s, device %s", torch.__version__, torch.version.cuda, args.device)
    return {"smoke": smoke, "modes": modes, "packs": packs, "study": study}[args.stage](args)


def main_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="stage", required=True)
    for name in ("smoke", "modes", "packs", "study"):
        s = sub.add_parser(name)
        s.add_argument("--out", type=Path, required=True, help="the table (or, for study, the results root)")
        s.add_argument("--device", default="auto")
        s.add_argument("--profile", default="gpu", help="the studies' profile (smoke in a CPU dry run)")
        s.add_argument("--seed-from", type=Path, default=None, help="the committed table or results root to start from")
    sub.choices["smoke"].add_argument("--data", default=None, help="the real data archive, after synthetic data")
    sub.choices["smoke"].add_argument("--per-class", type=int, default=26, help="training images per class")
    sub.choices["smoke"].add_argument("--real", default=None, help="studies run on --data too (default: all)")
    sub.choices["modes"].add_argument("--quick", action="store_true", help="measure's quick settings (a dry run)")
    for name in ("modes", "packs"):
        sub.choices[name].add_argument("--nets", type=int, default=0, help="the first N nets only (0: all)")
    for option, kind, default in (("--batch-size", int, SPEED_BATCH), ("--rounds", int, 3), ("--round-s", float, 1.0)):
        sub.choices["packs"].add_argument(option, type=kind, default=default)
    sub.choices["packs"].add_argument("--packs", default="1,2,4,8")
    sub.choices["study"].add_argument("--study", required=True)
    sub.choices["study"].add_argument("--data", default=None)
    return p


if __name__ == "__main__":
    raise SystemExit(main())
