"""`python -m bench train`: one training run into a run folder under results/runs/."""

from __future__ import annotations

import argparse
import logging
import shutil
import time
from dataclasses import fields
from pathlib import Path

from bench.data import default_data_root, default_data_source
from bench.device import pick_device
from bench.errors import UserError
from bench.io import WriteError, check_writable
from bench.models import create_model, parse_knobs
from bench.train import distributed as ddp
from bench.train.config import TrainConfig
from bench.train.loop import run_training
from bench.train.modes import COMPILE_MODES, DTYPE_CHOICES, add_backend_arguments
from bench.train.result import OK
from bench.train.tensorboard import EpochScalars

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = TrainConfig()
    p.add_argument(
        "--model", default=d.model, help="registered model name or tv:<torchvision name> (default %(default)s)"
    )
    p.add_argument(
        "--knob",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="model knob, repeatable, e.g. --knob activation=tanh --knob width=0.25",
    )
    p.add_argument(
        "--init", default=d.init, help="default (PyTorch's) | kaiming (He) | paper (N(0, 0.01)) (default %(default)s)"
    )
    p.add_argument(
        "--data",
        default=default_data_source(),
        help="cifar10 | synthetic | PATH to an ImageFolder tree or .tar.gz (default $BENCH_DATA or cifar10)",
    )
    p.add_argument(
        "--data-root",
        default=default_data_root(),
        help="folder holding cifar-10-batches-py/ (default $BENCH_DATA_ROOT or ./data)",
    )
    p.add_argument("--train-per-class", type=int, default=None, help="stratified training subset, images per class")
    p.add_argument("--test-per-class", type=int, default=None, help="stratified test subset, images per class")
    p.add_argument("--preprocess", default=d.preprocess, help="standardize | meanonly (default %(default)s)")
    p.add_argument("--augment", default=d.augment, help="none or '+'-joined crop, flip, pca (default %(default)s)")
    p.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="resize a folder of mixed image sizes to this side (must be the model's input size)",
    )
    p.add_argument(
        "--val-size",
        type=int,
        default=d.val_size,
        help="images held out of the full training split for validation; 0: none (default %(default)s)",
    )
    p.add_argument(
        "--train-eval-size",
        type=int,
        default=d.train_eval_size,
        help="training images evaluated un-augmented after each epoch, for the clean training error "
        "(default %(default)s)",
    )
    p.add_argument(
        "--data-seed",
        type=int,
        default=d.data_seed,
        help="seed of the validation hold-out and the subsets (default %(default)s)",
    )
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr, help="base learning rate (default %(default)s)")
    p.add_argument("--momentum", type=float, default=d.momentum)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument(
        "--decay",
        default=d.decay,
        help="weights (weight decay on weight matrices and kernels only) | all (biases and norm "
        "parameters too, the paper read literally) | layers (weight decay times each layer's "
        "declared multiplier, biases at the model's bias learning rate: cuda-convnet's recipe) "
        "(default %(default)s)",
    )
    p.add_argument(
        "--schedule",
        default=d.schedule,
        help="constant | cosine | step | plateau (x0.1 when the validation error stalls) (default %(default)s)",
    )
    p.add_argument("--warmup-epochs", type=float, default=d.warmup_epochs)
    p.add_argument(
        "--plateau-patience",
        type=int,
        default=d.plateau_patience,
        help="plateau: epochs without a better validation error before a drop (default %(default)s)",
    )
    p.add_argument(
        "--plateau-max-drops",
        type=int,
        default=d.plateau_max_drops,
        help="plateau: drops at most (default %(default)s, as in the paper)",
    )
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--device", default=d.device, help="auto | cpu | cuda | cuda:N | mps (default %(default)s)")
    # speed modes (bench.train.modes)
    p.add_argument(
        "--dtype",
        default=d.dtype,
        choices=DTYPE_CHOICES,
        help="autocast precision; auto = bf16 where the device computes it natively, else fp32 (default %(default)s)",
    )
    p.add_argument("--channels-last", action="store_true", help="channels_last memory format for model and batches")
    p.add_argument(
        "--compile",
        default=d.compile,
        choices=COMPILE_MODES,
        help="torch.compile mode; reduce-overhead adds CUDA graphs on CUDA (default %(default)s)",
    )
    add_backend_arguments(p, d)
    # fine-tuning (bench.train.finetune)
    p.add_argument(
        "--init-from",
        default=None,
        metavar="CHECKPOINT",
        help="start from these weights: a checkpoint.pt or the run folder holding it (same model and knobs)",
    )
    p.add_argument(
        "--freeze",
        default=d.freeze,
        help="none | features: train only the classifier head, the last Linear layer (default %(default)s)",
    )
    p.add_argument(
        "--reinit-head",
        action="store_true",
        help="with --init-from: start the classifier head afresh (needed when the class count differs)",
    )
    p.add_argument(
        "--tensorboard",
        type=Path,
        default=None,
        metavar="DIR",
        help="also write the per-epoch history as TensorBoard scalars to DIR/<run folder name>",
    )
    p.add_argument("--out", type=Path, default=None, help="run folder (default results/runs/<time>-<model>)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    values = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if hasattr(args, f.name)}
    values["knobs"] = parse_knobs(args.knob)
    return TrainConfig(**values)


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
    ddp.barrier()  # DDP: every rank has checked the folder before rank 0 writes into it
    hook = EpochScalars(args.tensorboard, out.name, cfg.to_json()) if args.tensorboard and ddp.is_main() else None
    made = not out.exists()  # else it is empty (checked above): either way, all it will hold is this run's
    try:
        result = run_training(cfg, out, progress=not args.no_progress, epoch_hook=hook)
    except WriteError as e:  # a full disk: a folder without its checkpoint would pass for a finished run
        if not ddp.is_main():
            raise
        raise UserError(f"{e}; {_remove_unfinished(out, made)}") from None
    finally:
        if hook is not None:
            hook.close()
    s = result.summary

    def number(key: str) -> float:  # None (no epoch finished) prints as nan; 0.0 stays 0.0
        return float("nan") if s[key] is None else s[key]

    best = (
        f"; best validation error {number('best_val_top1_err_pct'):.2f}% at epoch {s['best_epoch']} "
        f"(test error there {number('test_top1_err_pct_at_best_val'):.2f}%)"
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
