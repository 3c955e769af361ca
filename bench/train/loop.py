"""The one training loop: train a model on a data set, evaluating after every epoch.

`train(cfg)` returns the history and summary in memory; `run_training(cfg, out)`
also writes the run folder (config.json, history.csv, progress.csv, summary.json,
checkpoint.pt, through the `RunFolder` hook). Sweeps and the CLI both go through
`train`. What is not training hangs off it through one interface,
`bench.train.hooks.Hook`: the run folder, TensorBoard, LRN activity, a study's early
stop. Under torchrun the same loop trains data-parallel; the lines marked `DDP:` are
what that takes (bench.train.distributed), and each is a no-op in a single process.

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
from collections.abc import Sequence
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
from bench.train import distributed as ddp
from bench.train.checkpoint import save_checkpoint
from bench.train.config import TrainConfig
from bench.train.dataspec import data_spec
from bench.train.finetune import apply_finetune, check_fits
from bench.train.graphed import Stepper, graph_unavailable_reason, lr_value
from bench.train.hooks import AddToSummary, Hook, Hooks, LrnActivity
from bench.train.modes import apply_backend_flags, compile_model, resolve_dtype
from bench.train.result import DIVERGED, OK, RunResult, summarize
from bench.train.schedule import LrSchedule, check_schedule
from bench.train.step import autocast, grad_scaler, make_optimizer
from bench.train.target import LOG_PER_EPOCH

log = logging.getLogger(__name__)

# The history columns of each evaluated split: test_*, val_*, and train_clean_* for train_eval.
EVAL_PREFIX = {"train_eval": "train_clean"}


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
    cfg: TrainConfig, data: Dataset | None = None, *, progress: bool = True, hooks: Sequence[Hook] = ()
) -> RunResult:
    """Train `cfg.model` for `cfg.epochs` epochs; a NaN/inf loss ends the run as `diverged`.

    `hooks` (`bench.train.hooks.Hook`), in order, see the start, each sub-epoch progress point,
    each epoch's history row (one returning True ends training early) and the result.
    """
    device = ddp.place(pick_device(cfg.device))  # DDP: the GPU of this process's local rank
    cfg = cfg.replace(dtype=resolve_dtype(device, cfg.dtype))  # `auto` resolved once; all below see the result
    check_graph(cfg, device)
    data = data if data is not None else load_data(data_spec(cfg))
    check_schedule(cfg.schedule, data.has("val"))
    torch.manual_seed(cfg.seed)  # the weights' initialisation, and dropout's draws while training
    model = _new_model(cfg, data.classes, device)
    data = data.to(device)
    modes = {"dtype_resolved": cfg.dtype, **apply_backend_flags(device, cfg.cudnn_benchmark, cfg.tf32)}
    # Shares model's weights; evaluation and the checkpoint use model. DDP: net all-reduces the gradients.
    net = compile_model(ddp.wrap(model, device), cfg.compile)
    optimizer = make_optimizer(model, cfg.lr, cfg.momentum, cfg.weight_decay, cfg.decay)
    scaler = grad_scaler(device, cfg.dtype)
    stepper = Stepper(net, optimizer, batch_size=cfg.batch_size, dtype=cfg.dtype, scaler=scaler, graph=cfg.graph)
    n_train, steps_per_epoch = data.size("train"), data.num_batches("train", cfg.batch_size)
    ddp.check_split(n_train, cfg.batch_size)  # DDP: every rank needs images in every step
    schedule = LrSchedule(optimizer, cfg, steps_per_epoch)
    log_at = log_steps(steps_per_epoch)
    augment = parse_augment(cfg.augment)
    g = torch.Generator(device=device).manual_seed(cfg.seed)
    # In the summary's order: the LRN activity, then the run's facts, then what the caller's hooks add.
    facts = AddToSummary({**data.provenance, **modes, **ddp.describe()})
    hooks = Hooks([LrnActivity(), facts, *hooks])
    hooks.on_start(model, data)
    shard = ddp.shard()  # DDP: this rank's slice of each (global) batch; None in a single process

    history, points, status, step, train_seconds = [], [], OK, 0, 0.0  # train_seconds: evaluation left out
    run_start = time.perf_counter()
    for epoch in range(1, cfg.epochs + 1):
        lr, running = lr_value(optimizer.param_groups[0]["lr"]), _Running(device)
        synchronize(device)
        t0 = time.perf_counter()
        bar = _progress_bar(progress, epoch, cfg.epochs, steps_per_epoch)
        batches = data.batches("train", cfg.batch_size, augment=augment, generator=g, shard=shard)
        for i, (x, y) in enumerate(ddp.with_shares(batches, cfg.batch_size, n_train)):  # DDP: weighted gradients
            x = x.contiguous(memory_format=torch.channels_last) if cfg.channels_last else x
            running.add(*stepper(x, y), len(y))
            schedule.after_step(step)
            step += 1
            bar.update()
            if i + 1 in log_at:
                points.append(running.point(step, epoch - 1 + (i + 1) / steps_per_epoch, train_seconds, t0))
                hooks.on_point(points[-1])
                if not running.finite:
                    break
        bar.close()
        synchronize(device)
        seconds = time.perf_counter() - t0
        train_seconds += seconds
        if not running.finite:
            status = DIVERGED
            history.append(
                {"epoch": epoch, "step": step, "train_running_loss": math.nan, "lr": lr, "epoch_seconds": seconds}
            )
            log.warning("loss became NaN/inf in epoch %d; run ends as diverged", epoch)
            break
        row = {"epoch": epoch, "step": step, **running.epoch_means(n_train)}
        ddp.sync_buffers(model)  # DDP: every rank evaluates rank 0's model, the one the checkpoint holds
        for split in (s for s in ("train_eval", "val", "test") if data.has(s) and _scored(s, epoch, cfg)):
            row.update(evaluate(model, data, split, dtype=cfg.dtype, channels_last=cfg.channels_last, shard=shard))
        row.update(lr=lr, epoch_seconds=seconds, train_images_per_s=n_train / seconds)
        row.update(elapsed_seconds=time.perf_counter() - run_start)
        row = ddp.broadcast_object(row)  # DDP: rank 0's row (its timings), so every rank decides alike
        history.append(row)
        schedule.after_epoch(step, row)
        if ddp.broadcast_object(hooks.on_epoch_end(row)):  # DDP: rank 0's decision
            break  # a hook has seen enough (e.g. a study's target was reached)
    # A graphed run gives the optimizer back with float learning rates. (After an exception the
    # optimizer, this function's own, goes with it.)
    stepper.close()
    facts.values.update(stepper.facts())
    result = RunResult(status, history, summarize(history, status, has_val=data.has("val")), model, points)
    hooks.on_end(result)
    return result


def _scored(split: str, epoch: int, cfg: TrainConfig) -> bool:
    """Whether `split` is evaluated after `epoch`: validation always (it picks the best epoch), the
    reported splits (test, clean training) every `cfg.score_every` epochs and at the last (a run a hook
    stops early has them only if that epoch was scored)."""
    if split == "val" or epoch == cfg.epochs:
        return True
    return cfg.score_every > 0 and epoch % cfg.score_every == 0


def check_graph(cfg: TrainConfig, device: torch.device) -> None:
    """graph=true where the whole step cannot be captured: one line (`UserError`), before anything runs."""
    if cfg.graph:
        reason = graph_unavailable_reason(device, cfg.dtype, cfg.compile, ddp.world_size())
        if reason is not None:
            raise UserError(f"graph=true: {reason}")


def _new_model(cfg: TrainConfig, classes: list[str], device: torch.device) -> nn.Module:
    """The run's model, on its device: initialised, or fine-tuned (--init-from, --reinit-head, --freeze)."""
    model = create_model(cfg.model, num_classes=len(classes), init=cfg.init, **cfg.knobs)
    model = apply_finetune(model, cfg, classes).to(device)
    return model.to(memory_format=torch.channels_last) if cfg.channels_last else model


def _progress_bar(progress: bool, epoch: int, epochs: int, steps: int) -> tqdm:
    """An epoch's bar of steps: on rank 0 alone (DDP), and on a terminal alone (tqdm's `disable=None`)."""
    disable = None if progress and ddp.is_main() else True
    return tqdm(total=steps, desc=f"epoch {epoch}/{epochs}", leave=False, disable=disable, unit="step")


class _Running:
    """The training loss and correct predictions since the last progress point, summed on the
    device (no host sync per step), and the epoch's sums over its points so far."""

    def __init__(self, device: torch.device):
        self.loss = torch.zeros((), device=device)
        self.correct = torch.zeros((), device=device, dtype=torch.long)
        self.images = 0
        self.epoch_loss = self.epoch_correct = 0.0
        self.finite = True

    def add(self, loss: torch.Tensor, correct: torch.Tensor, images: int) -> None:
        self.loss += loss
        self.correct += correct
        self.images += images

    def point(self, step: int, epoch: float, train_seconds: float, epoch_start: float) -> dict:
        """The progress point that ends the interval: the one host sync since the last, which
        also checks for NaN/inf. Its sums are over all ranks."""
        counts = torch.stack([self.loss, self.correct.to(self.loss.dtype), self.loss.new_tensor(self.images)])
        loss_sum, correct, images = ddp.all_reduce_sum(counts).tolist()  # DDP: over all ranks
        point = {
            "step": step,
            "epoch": epoch,
            "train_running_err_pct": 100.0 * (1 - correct / images),
            "train_running_loss": loss_sum / images,
            "train_seconds": train_seconds + time.perf_counter() - epoch_start,
        }
        self.epoch_loss += loss_sum
        self.epoch_correct += correct
        self.loss.zero_()
        self.correct.zero_()
        self.images = 0
        self.finite = math.isfinite(loss_sum)
        return point

    def epoch_means(self, n_train: int) -> dict:
        return {
            "train_running_loss": self.epoch_loss / n_train,
            "train_running_err_pct": 100.0 * (1 - self.epoch_correct / n_train),
        }


def run_training(cfg: TrainConfig, out_dir: Path, *, progress: bool = True, hooks: Sequence[Hook] = ()) -> RunResult:
    """Train and write the run folder (`RunFolder`); each file is written whole (temp file, then rename).

    `hooks` as for `train`, after the run folder's. Each rank calls the hooks it is given: a hook
    that writes (e.g. TensorBoard's `EpochScalars`) is given on rank 0 alone.
    """
    out_dir = Path(out_dir)
    device = ddp.place(pick_device(cfg.device))  # an absent device fails before data loading and before any file
    check_graph(cfg, device)  # so does graph=true where it cannot run
    start = time.perf_counter()
    with ddp.main_first():  # DDP: one process decodes a folder into the cache, the others read it
        data = load_data(data_spec(cfg))
    folder = RunFolder(out_dir, cfg, data, start)  # writes nothing yet; times the data's loading
    check_fits(cfg, len(data.classes))  # --init-from weights that do not fit fail before any file
    ddp.check_split(data.size("train"), cfg.batch_size)  # DDP: so does a last batch too short to split
    folder.write_config(device)
    return train(cfg, data, progress=progress, hooks=[folder, *hooks])


class RunFolder(Hook):
    """The run folder, written by rank 0 alone (DDP): config.json before training, history.csv
    and progress.csv after every epoch, and at the end summary.json and checkpoint.pt.

    Adds the data's loading time, the run's wall time and its seed to the summary.
    """

    def __init__(self, out_dir: Path, cfg: TrainConfig, data: Dataset, start: float):
        self.out_dir, self.cfg, self.data, self.start = Path(out_dir), cfg, data, start
        self.data_load_seconds = time.perf_counter() - start
        self.main = ddp.is_main()  # DDP: only rank 0 writes and logs
        self.rows: list[dict] = []
        self.points: list[dict] = []

    def write_config(self, device: torch.device) -> None:
        if not self.main:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(
            self.out_dir / "config.json",
            json.dumps(
                {"config": self.cfg.to_dict(), "environment": {**environment(device), **ddp.describe()}},
                indent=2,
                default=str,
            ),
        )

    def on_point(self, point: dict) -> None:
        self.points.append(point)

    def on_epoch_end(self, row: dict) -> None:
        if not self.main:
            return
        val = f", val err {row['val_top1_err_pct']:.2f}%" if "val_top1_err_pct" in row else ""
        test = (
            f", test err {row['test_top1_err_pct']:.2f}% (top-5 {row['test_top5_err_pct']:.2f}%)"
            if "test_top1_err_pct" in row
            else ""
        )
        log.info(
            "epoch %d: running train loss %.4f, running train err %.2f%%%s%s, %.1f s, %.0f img/s",
            row["epoch"],
            row["train_running_loss"],
            row["train_running_err_pct"],
            val,
            test,
            row["epoch_seconds"],
            row["train_images_per_s"],
        )
        write_csv(self.out_dir / "history.csv", self.rows + [row])
        write_csv(self.out_dir / "progress.csv", self.points)
        self.rows.append(row)

    def on_end(self, result: RunResult) -> None:
        result.summary.update(
            data_load_seconds=self.data_load_seconds,
            wall_seconds=time.perf_counter() - self.start,
            seed=self.cfg.seed,
        )
        if self.main:
            write_csv(self.out_dir / "history.csv", result.history)
            write_csv(self.out_dir / "progress.csv", result.progress)
            atomic_write_text(self.out_dir / "summary.json", json.dumps(result.summary, indent=2, default=str))
            save_checkpoint(self.out_dir / "checkpoint.pt", result.model, self.cfg, self.data, result.summary)
