"""`python -m bench measure`: count params and FLOPs, time training and inference, write one CSV row per model."""

from __future__ import annotations

import argparse
import fnmatch
import logging
from pathlib import Path

import pandas as pd

from bench.device import DTYPES, pick_device
from bench.errors import UserError
from bench.io import read_csv, write_csv
from bench.measure.table import ROW_KEY, measure_models, merge_tables
from bench.models import create_model, list_models, model_knobs, parse_knobs

log = logging.getLogger(__name__)

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
    p.add_argument("--arch", default="*", metavar="PATTERN",
                   help="registered model names, shell wildcards, comma-separated, or tv:<torchvision name> "
                        "(default: every registered model)")
    p.add_argument("--knob", action="append", default=[], metavar="KEY=VALUE",
                   help="model knob applied to every model, repeatable, e.g. --knob activation=tanh")
    p.add_argument("--batch-size", type=int, default=None,
                   help="training and inference batch (default 128, or 16 with --quick); halved on out-of-memory")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps (default %(default)s)")
    p.add_argument("--dtype", default="fp32", help="fp32 | bf16 | fp16 autocast (default %(default)s)")
    p.add_argument("--channels-last", action="store_true", help="channels_last memory format for model and batch")
    p.add_argument("--quick", action="store_true", help="few warm-up and timed steps, small batch: a CPU smoke run")
    p.add_argument("--out", type=Path, default=None,
                   help="CSV to write (default results/measure/<device>.csv), replaced atomically")


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
                f"--arch {piece!r} matches no model{hint}; choose from: {', '.join(list_models())}, "
                f"or tv:<torchvision model name>"
            )
        names += [n for n in matched if n not in names]
    if not names:
        raise UserError("--arch is empty; give a model name or pattern, e.g. --arch 'alexnet*'")
    return names


def _check_knobs(names: list[str], knobs: dict) -> None:
    for name in names:
        unknown = sorted(set(knobs) - set(model_knobs(name)))
        if unknown:
            raise UserError(
                f"model {name!r} has no knob {', '.join(unknown)}; its knobs: "
                f"{', '.join(model_knobs(name)) or 'none'} (narrow --arch to models that have it)"
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


def _saved_table(out: Path):
    """The table already at `out`, which this run updates (see `merge_tables`), or None."""
    if not out.is_file() or out.stat().st_size == 0:
        return None
    try:
        saved = read_csv(out, [k for k in ROW_KEY if k != "quick"])
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise UserError(f"{out} is not a readable table ({type(e).__name__}); "
                        f"move it aside or pass another --out") from None
    if not {"model", "device_name", "dtype", "memory_format", "quick"} <= set(saved.columns):
        raise UserError(f"{out} is not a table of `python -m bench measure`; move it aside or pass another --out")
    return saved


def run(args: argparse.Namespace) -> int:
    # Every argument is checked before anything is measured or written.
    if args.dtype not in DTYPES:
        raise UserError(f"--dtype {args.dtype!r} is not valid; choose one of: {', '.join(DTYPES)}")
    if args.batch_size is not None and args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {args.batch_size}")
    device = pick_device(args.device)
    names = resolve_names(args.arch)
    knobs = parse_knobs(args.knob)
    _check_knobs(names, knobs)
    _check_prefixed(names)
    out = args.out or Path("results") / "measure" / f"{device.type}.csv"
    if out.is_dir() or out.suffix.lower() != ".csv":
        raise UserError(f"--out {out} must name a .csv file (a folder is not accepted), "
                        f"e.g. --out {out / 'measure.csv' if out.is_dir() else out.with_suffix('.csv')}")
    saved = _saved_table(out)  # an unreadable table fails now, not after measuring

    frame = measure_models(
        names, batch_size=args.batch_size, device=device, dtype=args.dtype,
        memory_format="channels_last" if args.channels_last else "contiguous",
        quick=args.quick, knobs=knobs or None,
    )
    write_csv(out, frame if saved is None else merge_tables(saved, frame))
    first = frame.iloc[0]
    kinds = ", ".join(frame["peak_mem_kind"].dropna().unique()) or "-"
    print(f"{first['device_name']} ({first['device']}), torch {first['torch']}, {args.dtype}, "
          f"{'channels_last' if args.channels_last else 'contiguous'}; {first['flop_convention']}; "
          f"peak memory: {kinds}")
    print(_show(frame))
    log.info("wrote %d rows to %s (rows of other models or settings already there are kept)", len(frame), out)
    failed = int(frame["error"].notna().sum())
    if failed:
        log.warning("%d of %d models failed; see the error column", failed, len(frame))
    return 1 if failed else 0
