"""The one training loop: train a model on a data set, evaluating after every epoch.

`train(cfg)` returns the history and summary in memory; `run_training(cfg, out)`
also writes the run folder (config.json, history.csv, progress.csv, summary.json,
checkpoint.pt). Sweeps and the CLI both go through `train`. Under torchrun the same
loop trains data-parallel; the lines marked `DDP:` are what that takes
(bench.train.distributed), and each is a no-op in a single process.

Each epoch's history row has three training errors, kept apart by name:
`train_running_*` (the in-epoch average while the weights move, dropout and
augmentation on: what the paper's Figure 1 plots), `train_clean_*` (the
`train_eval` images in eval mode, un-augmented, after the epoch: what a gap to
the test error is measured against) and the `val_*` / `test_*` errors. The best
epoch is chosen on the validation error alone (`bench.train.result.summarize`).
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

from bench.data import Dataset, load_data, parse_augment
from bench.device import pick_device, synchronize
from bench.env import environment
from bench.errors import UserError
from bench.io import atomic_write_text, write_csv
from bench.models import create_model
from bench.models.lrn import lrn_activity
from bench.train import distributed as ddp
from bench.train.checkpoint import save_checkpoint
from bench.train.config import TrainConfig
from bench.train.dataspec import data_spec
from bench.train.finetune import apply_finetune, check_fits
from bench.train.modes import apply_backend_flags, compile_model, resolve_dtype
from bench.train.result import DIVERGED, OK, RunResult, summarize
from bench.train.schedule import lr_factor, plateau_scheduler
from bench.train.step import autocast, grad_scaler, make_optimizer, train_step
from bench.train.target import LOG_PER_EPOCH

log = logging.getLogger(__name__)

# The history columns of each evaluated split: test_*, val_*, and train_clean_* for train_eval.
EVAL_PREFIX = {"train_eval": "train_clean"}
PROBE_IMAGES = 256  # the fixed validation batch on which LRN activity is measured, at init and after training


def log_steps(steps_per_epoch: int) -> set[int]:
    """The steps of an epoch (1-based) that end a progress point: `LOG_PER_EPOCH` evenly
    spaced, the last at the epoch's end; every step when an epoch has fewer."""
    return {math.ceil(k * steps_per_epoch / LOG_PER_EPOCH) for k in range(1, LOG_PER_EPOCH + 1)}


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    data: Dataset,
    split: str = "test",
    batch_size: int = 1000,
    dtype: str = "fp32",
    channels_last: bool = False,
    shard: tuple[int, int] | None = None,
) -> dict:
    """Top-1 and top-5 error (percent) and mean loss on `split`, in eval mode, never augmented.

    Keys are `<prefix>_loss`, `<prefix>_top1_err_pct`, `<prefix>_top5_err_pct` with the
    split's name as prefix, `train_clean` for `train_eval`. The model is left in eval mode.
    `shard` (`bench.train.distributed.shard()`): this rank evaluates its slice of each
    batch and the sums are all-reduced, so every rank returns the same numbers.
    """
    if not data.has(split):
        raise ValueError(f"the {split} split of this data set is empty")
    model.eval()
    correct1 = correct5 = torch.zeros((), device=data.device, dtype=torch.long)
    loss_sum = torch.zeros((), device=data.device)
    k = min(5, len(data.classes))
    for x, y in data.batches(split, batch_size, shard=shard):
        if len(y) == 0:  # DDP: a short last batch leaves some ranks nothing
            continue
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(x.device, dtype):
            logits = model(x)
        loss_sum += nn.functional.cross_entropy(logits.float(), y, reduction="sum")
        topk = logits.topk(k, dim=1).indices
        correct1 = correct1 + (topk[:, 0] == y).sum()
        correct5 = correct5 + (topk == y[:, None]).any(1).sum()
    n = data.size(split)
    totals = torch.stack([loss_sum, correct1.to(loss_sum.dtype), correct5.to(loss_sum.dtype)])
    if shard is not None:
        ddp.all_reduce_sum(totals)  # DDP: the sums over every rank's slices
    loss, c1, c5 = totals.tolist()
    p = EVAL_PREFIX.get(split, split)
    return {f"{p}_loss": loss / n, f"{p}_top1_err_pct": 100.0 * (1 - c1 / n), f"{p}_top5_err_pct": 100.0 * (1 - c5 / n)}


def train(
    cfg: TrainConfig, data: Dataset | None = None, *, progress: bool = True, on_epoch=None, on_point=None
) -> RunResult:
    """Train `cfg.model` for `cfg.epochs` epochs; a NaN/inf loss ends the run as `diverged`.

    `on_epoch(row)` sees each epoch's history row; returning True ends training early.
    `on_point(point)` sees each sub-epoch progress point as it is logged.
    """
    device = ddp.place(pick_device(cfg.device))  # DDP: the GPU of this process's local rank
    cfg = cfg.replace(dtype=resolve_dtype(device, cfg.dtype))  # `auto` resolved once; all below see the result
    if data is None:
        data = load_data(data_spec(cfg))
    if cfg.schedule == "plateau" and not data.has("val"):
        raise UserError(
            "schedule='plateau' steps on the validation error, and this data set has no "
            "validation split; set val_size above 0 or choose another schedule"
        )
    torch.manual_seed(cfg.seed)
    model = create_model(cfg.model, num_classes=len(data.classes), init=cfg.init, **cfg.knobs)
    model = apply_finetune(model, cfg, data.classes)  # --init-from, --reinit-head, --freeze
    data = data.to(device)
    model = model.to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    modes = {"dtype_resolved": cfg.dtype, **apply_backend_flags(device, cfg.cudnn_benchmark, cfg.tf32)}
    # Shares model's weights; evaluation and the checkpoint use model. DDP: net all-reduces the gradients.
    net = compile_model(ddp.wrap(model, device), cfg.compile)
    optimizer = make_optimizer(model, cfg.lr, cfg.momentum, cfg.weight_decay, cfg.decay)
    scaler = grad_scaler(device, cfg.dtype)
    steps_per_epoch = data.num_batches("train", cfg.batch_size)
    ddp.check_split(data.size("train"), cfg.batch_size)  # DDP: every rank needs images in every step
    total = cfg.epochs * steps_per_epoch
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(cfg.schedule, s, total, warmup))
    # The plateau rule takes over from the per-step schedule once warm-up is done:
    # stepping both would have the per-step one undo its drops.
    plateau = (
        plateau_scheduler(optimizer, cfg.lr, cfg.plateau_patience, cfg.plateau_max_drops)
        if cfg.schedule == "plateau"
        else None
    )
    log_at = log_steps(steps_per_epoch)
    evaluated = [s for s in ("train_eval", "val", "test") if data.has(s)]
    augment = parse_augment(cfg.augment)
    g = torch.Generator(device=device).manual_seed(cfg.seed)
    probe = _probe_batch(data)
    activity = _suffixed(lrn_activity(model, probe), "_init") if probe is not None else {}
    shard = ddp.shard()  # DDP: this rank's slice of each (global) batch; None in a single process

    history: list[dict] = []
    points: list[dict] = []
    status = OK
    n_train = len(data.train_y)
    step = 0
    train_seconds = 0.0  # training only: evaluation left out
    run_start = time.perf_counter()
    for epoch in range(1, cfg.epochs + 1):
        lr = optimizer.param_groups[0]["lr"]
        epoch_loss = epoch_correct = 0.0
        interval_loss = torch.zeros((), device=device)
        interval_correct = torch.zeros((), device=device, dtype=torch.long)
        interval_images = 0
        finite = True
        synchronize(device)
        t0 = time.perf_counter()
        bar = tqdm(
            total=steps_per_epoch,
            desc=f"epoch {epoch}/{cfg.epochs}",
            leave=False,
            disable=None if progress and ddp.is_main() else True,
            unit="step",
        )
        for i, (x, y) in enumerate(data.batches("train", cfg.batch_size, augment=augment, generator=g, shard=shard)):
            ddp.set_share(len(y), min(cfg.batch_size, n_train - i * cfg.batch_size))  # DDP: weights the gradient
            if cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            batch_loss, batch_correct = train_step(net, optimizer, x, y, dtype=cfg.dtype, scaler=scaler)
            if plateau is None or step < warmup:
                scheduler.step()
            step += 1
            interval_loss += batch_loss
            interval_correct += batch_correct
            interval_images += len(y)
            bar.update()
            if i + 1 not in log_at:
                continue
            # A progress point: the one host sync since the last one, which also checks for NaN/inf.
            counts = torch.stack(
                [interval_loss, interval_correct.to(interval_loss.dtype), interval_loss.new_tensor(interval_images)]
            )
            loss_sum, correct, images = ddp.all_reduce_sum(counts).tolist()  # DDP: over all ranks
            point = {
                "step": step,
                "epoch": epoch - 1 + (i + 1) / steps_per_epoch,
                "train_running_err_pct": 100.0 * (1 - correct / images),
                "train_running_loss": loss_sum / images,
                "train_seconds": train_seconds + time.perf_counter() - t0,
            }
            points.append(point)
            if on_point is not None:
                on_point(point)
            epoch_loss += loss_sum
            epoch_correct += correct
            interval_loss.zero_()
            interval_correct.zero_()
            interval_images = 0
            if not math.isfinite(loss_sum):
                finite = False
                break
        bar.close()
        synchronize(device)
        seconds = time.perf_counter() - t0
        train_seconds += seconds
        if not finite:
            status = DIVERGED
            history.append(
                {"epoch": epoch, "step": step, "train_running_loss": float("nan"), "lr": lr, "epoch_seconds": seconds}
            )
            log.warning("loss became NaN/inf in epoch %d; run ends as diverged", epoch)
            break
        row = {
            "epoch": epoch,
            "step": step,
            "train_running_loss": epoch_loss / n_train,
            "train_running_err_pct": 100.0 * (1 - epoch_correct / n_train),
        }
        ddp.sync_buffers(model)  # DDP: every rank evaluates rank 0's model, the one the checkpoint holds
        for split in evaluated:
            row.update(evaluate(model, data, split, dtype=cfg.dtype, channels_last=cfg.channels_last, shard=shard))
        row.update(
            lr=lr,
            epoch_seconds=seconds,
            train_images_per_s=n_train / seconds,
            elapsed_seconds=time.perf_counter() - run_start,
        )
        row = ddp.broadcast_object(row)  # DDP: rank 0's row (its timings), so every rank decides alike
        history.append(row)
        if plateau is not None and step >= warmup:
            plateau.step(row["val_top1_err_pct"])
        if ddp.broadcast_object(on_epoch is not None and on_epoch(row)):  # DDP: rank 0's decision
            break  # the caller has seen enough (e.g. a study's target was reached)
    summary = summarize(history, status, has_val=data.has("val"))
    if probe is not None:
        activity.update(_suffixed(lrn_activity(model, probe), "_final"))
    summary.update(activity)
    summary.update(data.provenance)
    summary.update(modes, **ddp.describe())
    return RunResult(status, history, summary, model, points)


def _probe_batch(data: Dataset) -> torch.Tensor | None:
    """The first `PROBE_IMAGES` validation images (fixed by the data seed), else clean-training ones."""
    split = next((s for s in ("val", "train_eval") if data.has(s)), None)
    if split is None:
        return None
    return next(iter(data.batches(split, PROBE_IMAGES)))[0]


def _suffixed(values: dict, suffix: str) -> dict:
    return {k + suffix: v for k, v in values.items()}


def run_training(cfg: TrainConfig, out_dir: Path, *, progress: bool = True, epoch_hook=None) -> RunResult:
    """Train and write the run folder; each file is written whole (temp file, then rename).

    `epoch_hook(row)` also sees each epoch's history row (e.g. a TensorBoard writer).
    """
    out_dir = Path(out_dir)
    device = ddp.place(pick_device(cfg.device))  # an absent device fails before data loading and before any file
    main = ddp.is_main()  # DDP: only rank 0 writes and logs
    start = time.perf_counter()
    with ddp.main_first():  # DDP: one process decodes a folder into the cache, the others read it
        data = load_data(data_spec(cfg))
    startup = time.perf_counter() - start
    check_fits(cfg, len(data.classes))  # --init-from weights that do not fit fail before any file
    ddp.check_split(data.size("train"), cfg.batch_size)  # DDP: so does a last batch too short to split
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(
            out_dir / "config.json",
            json.dumps(
                {"config": cfg.to_dict(), "environment": {**environment(device), **ddp.describe()}},
                indent=2,
                default=str,
            ),
        )

    def on_epoch(row):
        if not main:
            return
        val = f", val err {row['val_top1_err_pct']:.2f}%" if "val_top1_err_pct" in row else ""
        log.info(
            "epoch %d: running train loss %.4f, running train err %.2f%%%s, test err %.2f%% (top-5 %.2f%%), "
            "%.1f s, %.0f img/s",
            row["epoch"],
            row["train_running_loss"],
            row["train_running_err_pct"],
            val,
            row["test_top1_err_pct"],
            row["test_top5_err_pct"],
            row["epoch_seconds"],
            row["train_images_per_s"],
        )
        write_csv(out_dir / "history.csv", result_rows + [row])
        write_csv(out_dir / "progress.csv", points)
        result_rows.append(row)
        if epoch_hook is not None:
            epoch_hook(row)

    result_rows: list[dict] = []
    points: list[dict] = []
    result = train(cfg, data, progress=progress, on_epoch=on_epoch, on_point=points.append)
    result.summary.update(data_load_seconds=startup, wall_seconds=time.perf_counter() - start, seed=cfg.seed)
    if main:
        write_csv(out_dir / "history.csv", result.history)
        write_csv(out_dir / "progress.csv", result.progress)
        atomic_write_text(out_dir / "summary.json", json.dumps(result.summary, indent=2, default=str))
        save_checkpoint(out_dir / "checkpoint.pt", result.model, cfg, data, result.summary)
    return result
