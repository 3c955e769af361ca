"""Learning-rate schedules: constant, cosine and step by optimizer step, and the paper's plateau rule.

`lr_factor` is the multiplier on the base learning rate at one optimizer step.
A linear warm-up (from 1/warmup to 1) comes first in every schedule; cosine and
step then run over the steps that remain, so cosine starts at exactly 1 after
warm-up.

`plateau` is the paper's schedule (section 5): divide the learning rate by 10
when the validation error stops improving, at most `max_drops` times. It is
torch's `ReduceLROnPlateau` stepped once per epoch on the validation error;
the cap is its `min_lr`.

`LrSchedule` is a run's learning rate: both, stepped where the training loop says.
A param group's lr may be a 0-d tensor on the device (a graphed run,
`bench.train.graphed.capturable_lrs`): torch's schedulers then write it in place,
which keeps the address a captured step reads; they do so under no_grad here, since
that tensor is a leaf that requires grad.
"""

from __future__ import annotations

import math
import warnings

import torch

from bench.errors import UserError
from bench.train.config import TrainConfig

SCHEDULES = ("constant", "cosine", "step", "plateau")
PLATEAU_FACTOR = 0.1  # the paper divides by 10


def lr_factor(schedule: str, step: int, total: int, warmup: int) -> float:
    """Multiplier on the base learning rate at optimizer step `step` (0-based) of `total`."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(total - warmup, 1)
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * t))
    if schedule == "step":
        return 0.1 ** ((t >= 0.5) + (t >= 0.75))
    return 1.0  # constant, and plateau between its drops


def plateau_scheduler(optimizer: torch.optim.Optimizer, lr: float, patience: int, max_drops: int):
    """Divide the lr by 10 after `patience` epochs without a better validation error, `max_drops` times at most."""
    # min_lr sits just below the last allowed value so rounding cannot block the final drop.
    floor = lr * PLATEAU_FACTOR**max_drops * (1 - 1e-6)
    return torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=PLATEAU_FACTOR, patience=patience, threshold=0.0, min_lr=floor
    )


class LrSchedule:
    """A run's learning rate: `after_step` after every optimizer step, `after_epoch` after every
    evaluated epoch. The plateau rule takes over from the per-step schedule once warm-up is
    done: stepping both would have the per-step one undo its drops."""

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int):
        total = cfg.epochs * steps_per_epoch
        self.warmup = warmup = round(cfg.warmup_epochs * steps_per_epoch)
        self.per_step = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: lr_factor(cfg.schedule, s, total, warmup)
        )
        self.plateau = (
            plateau_scheduler(optimizer, cfg.lr, cfg.plateau_patience, cfg.plateau_max_drops)
            if cfg.schedule == "plateau"
            else None
        )

    def after_step(self, step: int) -> None:
        """`step`: the optimizer steps taken before this one."""
        if self.plateau is None or step < self.warmup:
            with torch.no_grad():  # an lr tensor (graphed run) is written in place
                self.per_step.step()

    def after_epoch(self, step: int, row: dict) -> None:
        """`step`: the optimizer steps taken so far; `row`: the epoch's history row."""
        if self.plateau is not None and step >= self.warmup:
            with torch.no_grad(), warnings.catch_warnings():
                # the rule reads a tensor lr with float(), once an epoch: a sync, and a warning that says so
                warnings.filterwarnings("ignore", "Converting a tensor with requires_grad=True to a scalar")
                self.plateau.step(row["val_top1_err_pct"])


def check_schedule(schedule: str, has_val: bool) -> None:
    """The plateau rule needs a validation split to step on."""
    if schedule == "plateau" and not has_val:
        raise UserError(
            "schedule='plateau' steps on the validation error, and this data set has no "
            "validation split; set val_size above 0 or choose another schedule"
        )
