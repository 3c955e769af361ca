"""What a training run returns, its summary, and the statuses a run or a sweep cell ends with.

Torch-free, so that the report can read the statuses without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the annotation alone: the report imports this module, and must not pay for torch
    import torch.nn as nn

# The `status` of a run (RunResult, summary.json) and of a sweep cell (runs.csv).
OK = "ok"  # trained to the end, or until the caller stopped it; its final numbers count
DIVERGED = "diverged"  # the loss became NaN/inf; the history up to then is kept
OOM = "oom"  # a sweep cell whose run ran out of device memory
ERROR = "error"  # a sweep cell whose run raised anything else
CRASHED = "crashed"  # a sweep cell whose worker process died (killed, segfault) and retries ran out
FINISHED = (OK, DIVERGED)  # a sweep skips these on resume and retries the others


@dataclass
class RunResult:
    status: str  # OK | DIVERGED
    history: list[dict]  # one row per epoch
    summary: dict
    model: nn.Module = field(repr=False)
    progress: list[dict] = field(default_factory=list)  # sub-epoch points: step, epoch, running error and loss


def summarize(history: list[dict], status: str, has_val: bool | None = None) -> dict:
    """The run's summary: final numbers, and the best epoch chosen on the validation error alone.

    The test error is reported at the epoch the validation error picks, never
    minimised over: a minimum over test epochs is selection on the test set.
    Without a validation split (`has_val` False; None: whether the history has
    validation errors) `has_val_split` is False and the best-epoch and val fields are None.
    """
    done = [h for h in history if "train_running_err_pct" in h]  # the last row of a diverged run is not
    last = done[-1] if done else {}
    if has_val is None:
        has_val = any(h.get("val_top1_err_pct") is not None for h in done)
    best = min(
        (h for h in done if h.get("val_top1_err_pct") is not None), key=lambda h: h["val_top1_err_pct"], default={}
    )  # ties: the earliest epoch
    return {
        "status": status,
        "epochs_run": len(done),
        "has_val_split": has_val,
        "final_train_running_loss": last.get("train_running_loss"),
        "final_train_running_err_pct": last.get("train_running_err_pct"),
        "final_train_clean_loss": last.get("train_clean_loss"),
        "final_train_clean_top1_err_pct": last.get("train_clean_top1_err_pct"),
        "final_val_loss": last.get("val_loss"),
        "final_val_top1_err_pct": last.get("val_top1_err_pct"),
        "final_test_top1_err_pct": last.get("test_top1_err_pct"),
        "final_test_top5_err_pct": last.get("test_top5_err_pct"),
        "best_val_top1_err_pct": best.get("val_top1_err_pct"),
        "best_epoch": best.get("epoch"),
        "test_top1_err_pct_at_best_val": best.get("test_top1_err_pct"),
        "train_seconds": sum(h["epoch_seconds"] for h in history),
        "median_train_images_per_s": _median([h["train_images_per_s"] for h in done]),
    }


def _median(values: list[float]) -> float | None:
    if not values:
        return None
    s = sorted(values)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else 0.5 * (s[mid - 1] + s[mid])
