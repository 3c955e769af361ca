"""`python -m bench train`: one training run into a run folder under results/runs/."""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import fields
from pathlib import Path

from bench.data import default_data_root, default_data_source
from bench.errors import UserError
from bench.io import check_writable
from bench.models import create_model, parse_knobs
from bench.train.config import TrainConfig
from bench.train.loop import run_training
from bench.train.modes import COMPILE_MODES, DTYPE_CHOICES, add_backend_arguments
from bench.train.result import OK

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = TrainConfig()
    p.add_argument("--model", default=d.model, help="registered model name or tv:<torchvision name> (default %(default)s)")
    p.add_argument("--knob", action="append", default=[], metavar="KEY=VALUE",
                   help="model knob, repeatable, e.g. --knob activation=tanh --knob width=0.25")
    p.add_argument("--init", default=d.init,
                   help="default (PyTorch's) | kaiming (He) | paper (N(0, 0.01)) (default %(default)s)")
    p.add_argument("--data", default=default_data_source(),
                   help="cifar10 | synthetic | PATH to an ImageFolder tree or .tar.gz (default $BENCH_DATA or cifar10)")
    p.add_argument("--data-root", default=default_data_root(),
                   help="folder holding cifar-10-batches-py/ (default $BENCH_DATA_ROOT or ./data)")
    p.add_argument("--train-per-class", type=int, default=None, help="stratified training subset, images per class")
    p.add_argument("--test-per-class", type=int, default=None, help="stratified test subset, images per class")
    p.add_argument("--preprocess", default=d.preprocess, help="standardize | meanonly (default %(default)s)")
    p.add_argument("--augment", default=d.augment, help="none or '+'-joined crop, flip, pca (default %(default)s)")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr, help="base learning rate (default %(default)s)")
    p.add_argument("--momentum", type=float, default=d.momentum)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--schedule", default=d.schedule, help="constant | cosine | step (default %(default)s)")
    p.add_argument("--warmup-epochs", type=float, default=d.warmup_epochs)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--device", default=d.device, help="auto | cpu | cuda | cuda:N | mps (default %(default)s)")
    # speed modes (bench.train.modes)
    p.add_argument("--dtype", default=d.dtype, choices=DTYPE_CHOICES,
                   help="autocast precision; auto = bf16 where the device computes it natively, else fp32 "
                        "(default %(default)s)")
    p.add_argument("--channels-last", action="store_true", help="channels_last memory format for model and batches")
    p.add_argument("--compile", default=d.compile, choices=COMPILE_MODES,
                   help="torch.compile mode; reduce-overhead adds CUDA graphs on CUDA (default %(default)s)")
    add_backend_arguments(p)
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
    out = args.out or Path("results/runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{cfg.model.replace(':', '_')}"
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"run folder {out} already exists and is not an empty folder; pass another --out")
    check_writable(out, "--out", folder=True)  # not after the data has loaded
    result = run_training(cfg, out, progress=not args.no_progress)
    s = result.summary

    def number(key: str) -> float:  # None (no epoch finished) prints as nan; 0.0 stays 0.0
        return float("nan") if s[key] is None else s[key]

    log.info("%s: %d epochs, final test error %.2f%% (top-5 %.2f%%), %.0f train img/s; wrote %s",
             result.status, s["epochs_run"], number("final_test_top1_err_pct"),
             number("final_test_top5_err_pct"), number("median_train_images_per_s"), out)
    return 0 if result.status == OK else 1
