"""Time to a target at sub-epoch resolution.

The loop logs the running training error every 1/`LOG_PER_EPOCH` epoch (the
error over the steps since the previous log point, accumulated on the device
anyway). The first crossing of a target is placed by linear interpolation
between the last point above it and the first point at or below it, so that
"epochs to 25%" is not rounded up to whole epochs.
"""

from __future__ import annotations

LOG_PER_EPOCH = 10  # progress points per epoch


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
