"""`python -m bench train`: one training run into a run folder under results/runs/."""

from __future__ import annotations

import argparse
import logging
import shutil
import time
from pathlib import Path

from bench.device import pick_device
from bench.errors import UserError
from bench.io import WriteError, check_writable
from bench.models import create_model
from bench.train import distributed as ddp
from bench.train.config import TrainConfig
from bench.train.flags import add_config_arguments, config_from_args
from bench.train.loop import run_training
from bench.train.result import OK
from bench.train.tensorboard import EpochScalars

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p)  # the run's settings, one flag per TrainConfig field
    # Not run settings: where the run's outputs go and how it shows progress.
    p.add_argument(
        "--tensorboard",
        type=Path,
        default=None,
        metavar="DIR",
        help="also write the per-epoch history as TensorBoard scalars to DIR/<run folder name>",
    )
    p.add_argument("--out", type=Path, default=None, help="run folder (default results/runs/<time>-<model>)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    try:  # bad names and knob values fail before any file is written
        create_model(cfg.model, init=cfg.init, **cfg.knobs)
    except UserError:
        raise
    except ValueError as e:  # a builder rejecting a knob's value, e.g. activation=swish
        raise UserError(f"model {cfg.model!r} with knobs {cfg.knobs}: {e}") from None
    # Under torchrun: join the other processes (bench.train.distributed); alone, nothing.
    ddp.init(pick_device(cfg.device), cfg.batch_size)
    try:
        return _train(cfg, args)
    finally:
        ddp.teardown()


def _remove_unfinished(out: Path, made: bool) -> str:
    """Empty the run folder this run filled (and remove it if this run made it); says what became of it."""
    try:
        for path in out.iterdir() if out.is_dir() else ():
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
        if made:
            out.rmdir()
    except OSError as e:
        return f"the unfinished run folder {out} is left ({e.strerror}): remove it before running again"
    return f"removed the unfinished run folder {out}"


def _train(cfg: TrainConfig, args: argparse.Namespace) -> int:
    out = args.out or Path("results/runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{cfg.model.replace(':', '_')}"
    out = ddp.broadcast_object(out)  # DDP: rank 0's clock names the one run folder
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"run folder {out} already exists and is not an empty folder; pass another --out")
    if ddp.is_main():
        check_writable(out, "--out", folder=True)  # not after the data has loaded
        if args.tensorboard:  # not after the first epoch has trained
            check_writable(args.tensorboard / out.name, "--tensorboard", folder=True)
    ddp.barrier()  # DDP: every rank has checked the folder before rank 0 writes into it
    # DDP: rank 0 alone writes the TensorBoard run
    scalars = EpochScalars(args.tensorboard, out.name, cfg.to_json()) if args.tensorboard and ddp.is_main() else None
    made = not out.exists()  # else it is empty (checked above): either way, all it will hold is this run's
    try:
        result = run_training(cfg, out, progress=not args.no_progress, hooks=[scalars] if scalars is not None else [])
    except WriteError as e:  # a full disk: a folder without its checkpoint would pass for a finished run
        if not ddp.is_main():
            raise
        raise UserError(f"{e}; {_remove_unfinished(out, made)}") from None
    finally:
        if scalars is not None:
            scalars.close()
    s = result.summary

    def number(key: str) -> float:  # None (no epoch finished, or not scored) prints as nan; 0.0 stays 0.0
        return float("nan") if s.get(key) is None else s[key]

    at_best = number("test_top1_err_pct_at_best_val")
    best = (
        f"; best validation error {number('best_val_top1_err_pct'):.2f}% at epoch {s['best_epoch']} "
        + (f"(test error there {at_best:.2f}%)" if at_best == at_best else "(the test set was not scored there)")
        if s.get("best_epoch") is not None
        else ""
    )
    log.info(
        "%s: %d epochs, final test error %.2f%% (top-5 %.2f%%), %.0f train img/s%s; wrote %s",
        result.status,
        s["epochs_run"],
        number("final_test_top1_err_pct"),
        number("final_test_top5_err_pct"),
        number("median_train_images_per_s"),
        best,
        out,
    )
    return 0 if result.status == OK else 1
