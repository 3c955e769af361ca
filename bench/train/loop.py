"""The one training loop: train a model on a data set, evaluating after every epoch.

`train(cfg)` returns the history and summary in memory; `run_training(cfg, out)`
also writes the run folder (config.json, history.csv, summary.json, checkpoint.pt).
Sweeps and the CLI both go through `train`.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from bench.data import Dataset, DataSpec, load_data, parse_augment
from bench.device import pick_device, synchronize
from bench.env import environment
from bench.io import atomic_write_text, write_csv
from bench.models import create_model, input_size_of
from bench.train.checkpoint import save_checkpoint
from bench.train.config import TrainConfig
from bench.train.finetune import apply_finetune, check_fits
from bench.train.result import DIVERGED, OK, RunResult, summarize
from bench.train.step import autocast, grad_scaler, make_optimizer, train_step

log = logging.getLogger(__name__)

# How often (in steps) the loss is checked for NaN/inf: each check synchronises the device.
DIVERGENCE_CHECK_EVERY = 20


def data_spec(cfg: TrainConfig) -> DataSpec:
    return DataSpec(
        source=cfg.data, root=cfg.data_root, image_size=input_size_of(cfg.model),
        train_per_class=cfg.train_per_class, test_per_class=cfg.test_per_class, preprocess=cfg.preprocess,
    )


def lr_factor(schedule: str, step: int, total: int, warmup: int) -> float:
    """Multiplier on the base learning rate at optimizer step `step` of `total`."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    t = step / max(total, 1)
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * t))
    if schedule == "step":
        return 0.1 ** ((t >= 0.5) + (t >= 0.75))
    return 1.0


@torch.inference_mode()
def evaluate(model: nn.Module, data: Dataset, batch_size: int = 1000, dtype: str = "fp32",
             channels_last: bool = False) -> dict:
    """Top-1 and top-5 error (percent) and mean loss on the test split."""
    model.eval()
    correct1 = correct5 = torch.zeros((), device=data.device, dtype=torch.long)
    loss_sum = torch.zeros((), device=data.device)
    k = min(5, len(data.classes))
    for x, y in data.batches("test", batch_size):
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(x.device, dtype):
            logits = model(x)
        loss_sum += nn.functional.cross_entropy(logits.float(), y, reduction="sum")
        topk = logits.topk(k, dim=1).indices
        correct1 = correct1 + (topk[:, 0] == y).sum()
        correct5 = correct5 + (topk == y[:, None]).any(1).sum()
    n = len(data.test_y)
    return {
        "test_loss": loss_sum.item() / n,
        "test_top1_err_pct": 100.0 * (1 - correct1.item() / n),
        "test_top5_err_pct": 100.0 * (1 - correct5.item() / n),
    }


def train(cfg: TrainConfig, data: Dataset | None = None, *, progress: bool = True,
          on_epoch=None) -> RunResult:
    """Train `cfg.model` for `cfg.epochs` epochs; a NaN/inf loss ends the run as `diverged`.

    `on_epoch(row)` sees each epoch's history row; returning True ends training early.
    """
    device = pick_device(cfg.device)
    if data is None:
        data = load_data(data_spec(cfg))
    torch.manual_seed(cfg.seed)
    model = create_model(cfg.model, num_classes=len(data.classes), init=cfg.init, **cfg.knobs)
    model = apply_finetune(model, cfg, data.classes)  # --init-from, --reinit-head, --freeze
    data = data.to(device)
    model = model.to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, cfg.lr, cfg.momentum, cfg.weight_decay)
    scaler = grad_scaler(device, cfg.dtype)
    steps_per_epoch = data.num_batches("train", cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(cfg.schedule, s, total, warmup))
    augment = parse_augment(cfg.augment)
    g = torch.Generator(device=device).manual_seed(cfg.seed)

    history: list[dict] = []
    status = OK
    n_train = len(data.train_y)
    run_start = time.perf_counter()
    for epoch in range(1, cfg.epochs + 1):
        lr = optimizer.param_groups[0]["lr"]
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        synchronize(device)
        t0 = time.perf_counter()
        bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch}/{cfg.epochs}", leave=False,
                   disable=None if progress else True, unit="step")
        for i, (x, y) in enumerate(data.batches("train", cfg.batch_size, augment=augment, generator=g)):
            if cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            batch_loss, batch_correct = train_step(model, optimizer, x, y, dtype=cfg.dtype, scaler=scaler)
            scheduler.step()
            loss_sum += batch_loss
            correct += batch_correct
            if (i + 1) % DIVERGENCE_CHECK_EVERY == 0 and not torch.isfinite(loss_sum):
                break
            bar.update()
        bar.close()
        synchronize(device)
        seconds = time.perf_counter() - t0
        if not torch.isfinite(loss_sum):
            status = DIVERGED
            history.append({"epoch": epoch, "train_loss": float("nan"), "lr": lr, "epoch_seconds": seconds})
            log.warning("loss became NaN/inf in epoch %d; run ends as diverged", epoch)
            break
        row = {
            "epoch": epoch,
            "train_loss": loss_sum.item() / n_train,
            "train_err_pct": 100.0 * (1 - correct.item() / n_train),
            **evaluate(model, data, dtype=cfg.dtype, channels_last=cfg.channels_last),
            "lr": lr,
            "epoch_seconds": seconds,
            "train_images_per_s": n_train / seconds,
            "elapsed_seconds": time.perf_counter() - run_start,
        }
        history.append(row)
        if on_epoch is not None and on_epoch(row):
            break  # the caller has seen enough (e.g. a study's target was reached)
    summary = summarize(history, status)
    summary.update(data.provenance)
    return RunResult(status, history, summary, model)


def run_training(cfg: TrainConfig, out_dir: Path, *, progress: bool = True, epoch_hook=None) -> RunResult:
    """Train and write the run folder; each file is written whole (temp file, then rename).

    `epoch_hook(row)` also sees each epoch's history row (e.g. a TensorBoard writer).
    """
    out_dir = Path(out_dir)
    device = pick_device(cfg.device)  # an absent device fails before data loading and before any file
    start = time.perf_counter()
    data = load_data(data_spec(cfg))
    startup = time.perf_counter() - start
    check_fits(cfg, len(data.classes))  # --init-from weights that do not fit fail before any file
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "config.json", json.dumps(
        {"config": cfg.to_dict(), "environment": environment(device)}, indent=2, default=str))

    def on_epoch(row):
        log.info("epoch %d: train loss %.4f, train err %.2f%%, test err %.2f%% (top-5 %.2f%%), %.1f s, %.0f img/s",
                 row["epoch"], row["train_loss"], row["train_err_pct"], row["test_top1_err_pct"],
                 row["test_top5_err_pct"], row["epoch_seconds"], row["train_images_per_s"])
        write_csv(out_dir / "history.csv", result_rows + [row])
        result_rows.append(row)
        if epoch_hook is not None:
            epoch_hook(row)

    result_rows: list[dict] = []
    result = train(cfg, data, progress=progress, on_epoch=on_epoch)
    write_csv(out_dir / "history.csv", result.history)
    result.summary.update(data_load_seconds=startup, wall_seconds=time.perf_counter() - start, seed=cfg.seed)
    atomic_write_text(out_dir / "summary.json", json.dumps(result.summary, indent=2, default=str))
    save_checkpoint(out_dir / "checkpoint.pt", result.model, cfg, data, result.summary)
    return result
