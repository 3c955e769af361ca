"""What a training run returns, its summary, and the statuses a run or a sweep cell ends with.

Torch-free, so that the report can read the statuses without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
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
    history: list[dict]
    summary: dict
    model: nn.Module = field(repr=False)


def summarize(history: list[dict], status: str) -> dict:
    done = [h for h in history if "test_top1_err_pct" in h]
    last = done[-1] if done else {}
    return {
        "status": status,
        "epochs_run": len(done),
        "final_train_loss": last.get("train_loss"),
        "final_train_err_pct": last.get("train_err_pct"),
        "final_test_top1_err_pct": last.get("test_top1_err_pct"),
        "final_test_top5_err_pct": last.get("test_top5_err_pct"),
        "best_test_top1_err_pct": min((h["test_top1_err_pct"] for h in done), default=None),
        "train_seconds": sum(h["epoch_seconds"] for h in history),
        "median_train_images_per_s": _median([h["train_images_per_s"] for h in done]),
    }


def _median(values: list[float]) -> float | None:
    if not values:
        return None
    s = sorted(values)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else 0.5 * (s[mid - 1] + s[mid])
