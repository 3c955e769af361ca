"""Training: the run configuration, the one training step, the one loop, and the `train` command.

    config.py   TrainConfig: one frozen dataclass, validated, saved with every run
    step.py     train_step, the optimizer (weight decay on weights only, or on all), the fp16 loss scaler, autocast
    schedule.py learning-rate schedules, the paper's plateau rule
    target.py   progress points per epoch, the trailing-epoch mean, the interpolated crossing of a target
    loop.py     train (in memory) and run_training (into a run folder)
    distributed.py  data-parallel training under torchrun: process group, shards, DDP, rank-0 writes
    result.py   RunResult, its summary, and the run and sweep-cell statuses
    command.py  `python -m bench train`

The public names are loaded on first use: `bench.train.result` imports no
torch, and the report (which reads the statuses from it) must not pay for torch
by importing this package.
"""

from __future__ import annotations

import importlib

_HOME = {
    "TrainConfig": "config",
    "SCHEDULES": "schedule",
    "DECAYS": "config",
    "RunResult": "result",
    "summarize": "result",
    "OK": "result",
    "DIVERGED": "result",
    "OOM": "result",
    "ERROR": "result",
    "FINISHED": "result",
    "train_step": "step",
    "autocast": "step",
    "grad_scaler": "step",
    "make_optimizer": "step",
    "train": "loop",
    "run_training": "loop",
    "evaluate": "loop",
    "data_spec": "dataspec",
    "lr_factor": "schedule",
    "plateau_scheduler": "schedule",
    "crossing": "target",
    "LOG_PER_EPOCH": "target",
    "TRAILING_EPOCH_MEAN": "target",
    "trailing_epoch_mean": "target",
}

__all__ = sorted(_HOME)


def __getattr__(name: str):
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOME))
