"""`python -m bench measure`: count params and FLOPs, time training and inference, write one CSV row per model.

With `--modes`, time each model under each speed mode instead (bench.measure.modes): one row per model and mode.
With `--packs`, time N cells packed on the device against one (bench.measure.packing): one row per model and N.
"""

from __future__ import annotations

import argparse
import fnmatch
import logging
from pathlib import Path

import pandas as pd
import torch

from bench.device import pick_device
from bench.errors import UserError
from bench.io import check_writable, read_csv, write_csv
from bench.measure import modes as speed_modes
from bench.measure import packing
from bench.measure.speed import settings_for
from bench.measure.table import ROW_KEY, measure_models, merge_tables
from bench.models import create_model, list_models, model_knobs, parse_knobs
from bench.train.config import TrainConfig
from bench.train.flags import add_config_arguments, config_values
from bench.train.modes import apply_backend_flags, resolve_dtype

log = logging.getLogger(__name__)

# The run options measure takes as `train` does: the same flags, defaults and checks (bench.train.flags).
RUN_OPTIONS = ("device", "dtype", "channels_last", "cudnn_benchmark", "tf32")
ALL_MODES = "default"  # the value of `--modes` given alone: the device's default list

# The columns printed for people; the CSV holds them all.
SHOWN = {
    "model": "model",
    "params_total": "params_M",
    "macs": "GMACs",
    "flops": "GFLOPs",
    "train_images_per_s": "train_img/s",
    "infer_images_per_s": "infer_img/s",
    "latency_ms_b1": "lat_b1_ms",
    "peak_mem_mb": "peak_MiB",
    "train_pct_of_matmul": "train_%mm",
    "batch_size": "batch",
    "error": "error",
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        default="*",
        metavar="PATTERN",
        help="registered model names, shell wildcards, comma-separated, or tv:<torchvision name> "
        "(default: every registered model)",
    )
    p.add_argument(
        "--knob",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="model knob applied to every model, repeatable, e.g. --knob activation=tanh",
    )
    add_config_arguments(
        p, (*RUN_OPTIONS, "batch_size"), unset={"batch_size": "128, or 16 with --quick; halved on out-of-memory"}
    )
    p.add_argument(
        "--modes",
        nargs="?",
        const=ALL_MODES,
        default=None,
        metavar="MODE,MODE",
        help="time each model under speed modes instead, e.g. fp32,bf16,bf16+cl,compile+bf16+cl "
        f"(alone: {', '.join(speed_modes.DEFAULT_MODES)}, and on CUDA "
        f"{', '.join(speed_modes.CUDA_MODES)}); ratios to fp32 eager of the same run",
    )
    p.add_argument(
        "--packs",
        type=_packs,
        default=None,
        metavar="N,N",
        help="time N training cells packed on the device at once instead (as ablate --jobs N runs them), "
        "e.g. 1,2,4,8: total images/s and the ratio to the fewest, interleaved rounds",
    )
    p.add_argument("--quick", action="store_true", help="few warm-up and timed steps, small batch: a CPU smoke run")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="CSV to write (default results/measure/<device>.csv, or modes-<device>.csv), replaced atomically",
    )


def _packs(text: str) -> tuple[int, ...]:
    try:
        packs = tuple(int(n) for n in text.split(","))
    except ValueError:
        packs = ()
    if not packs or min(packs) < 1 or len(set(packs)) != len(packs):
        raise argparse.ArgumentTypeError(f"{text!r}: give distinct whole numbers of 1 or more, e.g. 1,2,4,8")
    return packs


def resolve_names(spec: str) -> list[str]:
    """Comma-separated wildcards over the registry (and tv:<name> as given), in order, without repeats."""
    names: list[str] = []
    for piece in (s.strip() for s in spec.split(",")):
        if not piece:
            continue
        if ":" in piece:  # a prefix family (tv:<name>); model_knobs raises UserError for an unknown prefix
            model_knobs(piece)
            matched = [piece]
        else:
            matched = list_models(piece)
        if not matched:
            close = fnmatch.filter(list_models(), f"*{piece.strip('*')}*")
            hint = f" (did you mean {', '.join(close)}?)" if close and close != list_models() else ""
            raise UserError(
                f"--model {piece!r} matches no model{hint}; choose from: {', '.join(list_models())}, "
                f"or tv:<torchvision model name>"
            )
        names += [n for n in matched if n not in names]
    if not names:
        raise UserError("--model is empty; give a model name or pattern, e.g. --model 'alexnet*'")
    return names


def _check_knobs(names: list[str], knobs: dict) -> None:
    for name in names:
        unknown = sorted(set(knobs) - set(model_knobs(name)))
        if unknown:
            raise UserError(
                f"model {name!r} has no knob {', '.join(unknown)}; its knobs: "
                f"{', '.join(model_knobs(name)) or 'none'} (narrow --model to models that have it)"
            )


def _show(frame) -> str:
    shown = frame[[c for c in SHOWN if c in frame]].rename(columns=SHOWN).copy()
    for column in shown.columns.drop(["model", "error"]):
        shown[column] = pd.to_numeric(shown[column], errors="coerce").astype(float)  # None -> NaN -> "-"
    shown["params_M"] /= 1e6
    shown["GMACs"] /= 1e9
    shown["GFLOPs"] /= 1e9
    shown["error"] = shown["error"].fillna("").astype(str).str.slice(0, 60)
    return shown.to_string(index=False, float_format=lambda v: f"{v:.4g}", na_rep="-")


def _check_prefixed(names: list[str]) -> None:
    """Build `tv:<name>`-style models once, so that a bad name is a usage error, not a failed row."""
    for name in names:
        if ":" in name:
            create_model(name)


def _check_knob_values(names: list[str], knobs: dict) -> None:
    """Build each model with the knobs on the meta device (no memory, no compute), so that a bad
    value (activation=swish, width=1e-4) is a usage error now, not a failed row after the others."""
    for name in names if knobs else []:
        try:
            with torch.device("meta"):
                create_model(name, **knobs)
        except UserError:
            raise
        except (ValueError, TypeError) as e:  # a builder's own check of a value
            raise UserError(f"model {name!r} with knobs {knobs}: {e}") from None


def _saved_table(out: Path, row_key: list[str] = ROW_KEY, what: str = "`python -m bench measure`"):
    """The table already at `out`, which this run updates (see `merge_tables`), or None."""
    if not out.is_file() or out.stat().st_size == 0:
        return None
    try:
        saved = read_csv(out, [k for k in row_key if k != "quick"])
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise UserError(
            f"{out} is not a readable table ({type(e).__name__}); move it aside or pass another --out"
        ) from None
    if not set(row_key) - {"knobs"} <= set(saved.columns):  # older tables have no knobs column
        raise UserError(f"{out} is not a table of {what}; move it aside or pass another --out")
    return saved


def _check_out(out: Path) -> None:
    if out.is_dir() or out.suffix.lower() != ".csv":
        raise UserError(
            f"--out {out} must name a .csv file (a folder is not accepted), "
            f"e.g. --out {out / 'measure.csv' if out.is_dir() else out.with_suffix('.csv')}"
        )


def run(args: argparse.Namespace) -> int:
    # Every argument is checked before anything is measured or written; the run options as a run's are.
    batch = {} if args.batch_size is None else {"batch_size": args.batch_size}  # None: measure's own default
    TrainConfig(**config_values(args, RUN_OPTIONS), **batch)
    if args.modes is not None and (args.dtype != "fp32" or args.channels_last):
        raise UserError(
            "--modes sets the precision and memory format of each mode; "
            "drop --dtype and --channels-last, e.g. --modes fp32,bf16+cl"
        )
    device = pick_device(args.device)
    names = resolve_names(args.model)
    knobs = parse_knobs(args.knob)
    _check_knobs(names, knobs)
    _check_prefixed(names)
    _check_knob_values(names, knobs)
    apply_backend_flags(device, args.cudnn_benchmark, args.tf32)  # each row's provenance records them
    if args.modes is not None and args.packs is not None:
        raise UserError("--modes and --packs are two measurements; run them one at a time")
    if args.modes is not None:
        return _run_modes(args, device, names, knobs)
    if args.packs is not None:
        return _run_packs(args, device, names, knobs)
    dtype = resolve_dtype(device, args.dtype)
    out = args.out or Path("results") / "measure" / f"{device.type}.csv"
    _check_out(out)
    check_writable(out, "--out", folder=False)
    saved = _saved_table(out)  # an unreadable table fails now, not after measuring

    frame = measure_models(
        names,
        batch_size=args.batch_size,
        device=device,
        dtype=dtype,
        memory_format="channels_last" if args.channels_last else "contiguous",
        quick=args.quick,
        knobs=knobs or None,
    )
    first = frame.iloc[0]
    kinds = ", ".join(frame["peak_mem_kind"].dropna().unique()) or "-"
    print(
        f"{first['device_name']} ({first['device']}), torch {first['torch']}, {dtype}, "
        f"{'channels_last' if args.channels_last else 'contiguous'}; {first['flop_convention']}; "
        f"peak memory: {kinds}"
    )
    print(_show(frame))  # before writing: a failed write (disk full) still shows what was measured
    write_csv(out, frame if saved is None else merge_tables(saved, frame))
    log.info("wrote %d rows to %s (rows of other models or settings already there are kept)", len(frame), out)
    failed = int(frame["error"].notna().sum())
    if failed:
        log.warning("%d of %d models failed; see the error column", failed, len(frame))
    return 1 if failed else 0


# The columns `--modes` prints for people; the CSV holds them all.
MODES_SHOWN = {
    "model": "model",
    "mode": "mode",
    "train_images_per_s": "train_img/s",
    "train_vs_fp32": "train_x",
    "infer_images_per_s": "infer_img/s",
    "infer_vs_fp32": "infer_x",
    "train_first_call_s": "first_call_s",
    "train_forward_ms": "fwd_ms",
    "train_backward_ms": "bwd_ms",
    "train_optimizer_ms": "opt_ms",
    "error": "error",
}


def _run_modes(args: argparse.Namespace, device, names: list[str], knobs: dict) -> int:
    try:
        modes = speed_modes.parse_modes(None if args.modes == ALL_MODES else args.modes, device)
    except ValueError as e:
        raise UserError(f"--modes: {e}") from None
    out = args.out or Path("results") / "measure" / f"modes-{device.type}.csv"
    _check_out(out)
    check_writable(out, "--out", folder=False)
    saved = _saved_table(out, speed_modes.ROW_KEY, "`python -m bench measure --modes`")

    frame = speed_modes.measure_modes_table(
        names,
        modes,
        device=device,
        settings=settings_for(args.quick),
        quick=args.quick,
        batch_size=args.batch_size,
        knobs=knobs or None,
    )
    first = frame.iloc[0]
    print(
        f"{first['device_name']} ({first['device']}), torch {first['torch']}, batch {first['batch_size']}, "
        f"{first['rounds']} interleaved rounds; x = images/s over fp32 eager's in this run"
    )
    shown = frame[list(MODES_SHOWN)].rename(columns=MODES_SHOWN)
    shown["error"] = shown["error"].fillna("").astype(str).str.slice(0, 60)
    print(shown.to_string(index=False, float_format=lambda v: f"{v:.4g}", na_rep="-"))
    write_csv(out, frame if saved is None else merge_tables(saved, frame, speed_modes.ROW_KEY))
    log.info("wrote %d rows to %s (rows of other models already there are kept)", len(frame), out)
    failed = int(frame["error"].notna().sum())
    if failed:
        log.warning("%d of %d model-mode rows failed; see the error column", failed, len(frame))
    return 1 if failed else 0


PACKS_SHOWN = ["model", "knobs", "packed_cells", "threads_per_cell", "train_images_per_s", "total_vs_fewest"]


def _run_packs(args: argparse.Namespace, device, names: list[str], knobs: dict) -> int:
    out = args.out or Path("results") / "measure" / f"packing-{device.type}.csv"
    _check_out(out)
    check_writable(out, "--out", folder=False)
    saved = _saved_table(out, packing.ROW_KEY, "`python -m bench measure --packs`")
    frame = pd.concat(
        [
            packing.measure_packing(
                name,
                knobs,
                device=str(device),
                packs=args.packs,
                batch_size=args.batch_size or (16 if args.quick else 128),
                dtype=resolve_dtype(device, args.dtype),
                channels_last=args.channels_last,
                **(packing.QUICK if args.quick else {}),
            )
            for name in names
        ],
        ignore_index=True,
    )
    first = frame.iloc[0]
    print(
        f"{first['device_name']} ({first['device']}), torch {first['torch']}, batch {first['batch_size']}, "
        f"{first['dtype']}, {first['memory_format']}; median of {first['rounds']} interleaved rounds; "
        "total_vs_fewest = total images/s over the fewest cells' in this run"
    )
    print(frame[PACKS_SHOWN].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    write_csv(out, frame if saved is None else merge_tables(saved, frame, packing.ROW_KEY))
    log.info("wrote %d rows to %s (rows of other models or settings already there are kept)", len(frame), out)
    return 0
