"""Time to a target at sub-epoch resolution.

The loop logs the running training error every 1/`LOG_PER_EPOCH` epoch (the
error over the steps since the previous log point, accumulated on the device
anyway). The first crossing of a target is placed by linear interpolation
between the last point above it and the first point at or below it, so that
"epochs to 25%" is not rounded up to whole epochs.

A target on the running training error is judged on its trailing-epoch mean
(`trailing_epoch_mean`), not on one progress window. One window is noisy (an sd
of about 0.9 pp on CIFAR-10 near 25%), and the first window after each reshuffle
sits below the trend (about 0.8 pp for the four-layer net): a slowly falling
curve then meets the target on a lucky window epochs before its trend does,
while a steep one barely moves, and the ratio of the two is squeezed. The mean
over the trailing epoch holds every window of the epoch once, the dip included,
so it has no such bias; at the end of an epoch it is that epoch's mean running
error (history.csv), the quantity the paper's Figure 1 plots.
"""

from __future__ import annotations

LOG_PER_EPOCH = 10  # progress points per epoch
TRAILING_EPOCH_MEAN = "trailing-epoch mean"  # the statistic a running-error target is judged on (runs.csv)
_EPS = 1e-6  # epochs: slack for the float positions of the points (k / steps_per_epoch)


def crossing(points: list[dict], metric: str, value: float, at: str = "step") -> float | None:
    """Interpolated `at` (e.g. step or epoch) where `metric` first falls to `value` or below; None if never.

    `points` are in training order; each has `at` and `metric`. Before the first
    point the metric is taken as above the target, so a first point already at
    or below it gives that point's own position.
    """
    prev = None
    for p in points:
        y = p.get(metric)
        if y is None or y != y:  # missing or NaN
            prev = None
            continue
        if y <= value:
            if prev is None or prev[metric] == y:
                return float(p[at])
            frac = (prev[metric] - value) / (prev[metric] - y)
            return float(prev[at] + frac * (p[at] - prev[at]))
        prev = p
    return None


def trailing_mean_at(points: list[dict], k: int, metric: str) -> float | None:
    """`metric` averaged over the progress windows of the epoch that ends at point `k`: the points
    whose `epoch` lies in (epoch_k - 1, epoch_k]; None before the end of epoch 1, or where a
    window in it lacks the metric (NaN: a diverged run).

    Each window is weighted by its steps (`step` minus the previous point's), i.e. by its images
    except for the epoch's last batch, which may be short (80 of 128 images on CIFAR-10's 50,000:
    a thousandth of an epoch's weight). The LOG_PER_EPOCH windows of an epoch differ by at most
    one step, so the weights are nearly equal either way.
    """
    end = points[k]["epoch"]
    if end < 1 - _EPS:
        return None
    total = weight = 0.0
    j = k
    while j >= 0 and points[j]["epoch"] > end - 1 + _EPS:
        y = points[j].get(metric)
        if y is None or y != y:
            return None
        w = points[j]["step"] - (points[j - 1]["step"] if j > 0 else 0)
        total += w * y
        weight += w
        j -= 1
    return total / weight if weight > 0 else None


def trailing_epoch_mean(points: list[dict], metric: str) -> list[dict]:
    """The progress points from the end of epoch 1 on, each with `metric` replaced by its
    trailing-epoch mean (`trailing_mean_at`); the other keys (step, epoch, seconds) are the point's
    own, so `crossing` over the result places the target between two such means.

    `points`: one run's progress points in training order, each with `step`, `epoch` and `metric`.
    """
    out = []
    for k, p in enumerate(points):
        if p["epoch"] < 1 - _EPS:
            continue
        v = trailing_mean_at(points, k, metric)
        out.append({**p, metric: float("nan") if v is None else v})
    return out
