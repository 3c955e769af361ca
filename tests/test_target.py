"""The statistic a running-training-error target is judged on: the trailing-epoch mean.

The synthetic histories here are what the four-layer net's progress points look like near 25%:
a slow linear trend, the first window after each reshuffle below it (the dip), and noise. Every
expected number is worked out by hand from the trend, not by the code under test.
"""

from __future__ import annotations

import math

import pytest

from bench.sweep.runner import _Stopper, time_to_target
from bench.train.target import LOG_PER_EPOCH, TRAILING_EPOCH_MEAN, crossing, trailing_epoch_mean, trailing_mean_at

ERR = "train_running_err_pct"
STEPS = 10  # per progress window: equal windows, so each weighs the same
DIP, NOISE = 0.9, 0.2  # pp: the first window of an epoch below the trend; +-NOISE alternating


def dipped_progress(start: float, slope: float, epochs: int) -> list[dict]:
    """Progress points of a run whose trend is `start - slope * t` (t in epochs), each window logged
    at its end with the trend at its middle, minus DIP in the first window of each epoch, plus
    +NOISE / -NOISE alternately (window 0 of an epoch +, window 1 -, ...)."""
    points = []
    for e in range(epochs):
        for j in range(LOG_PER_EPOCH):
            t = e + (j + 1) / LOG_PER_EPOCH
            y = start - slope * (t - 0.5 / LOG_PER_EPOCH) + (NOISE if j % 2 == 0 else -NOISE) - (DIP if j == 0 else 0)
            points.append({"step": (e * LOG_PER_EPOCH + j + 1) * STEPS, "epoch": t, "train_seconds": t * 2.0, ERR: y})
    return points


def trailing_by_hand(start: float, slope: float, t: float) -> float:
    """Any ten consecutive windows: their middles average to t - 0.5 (the trend is linear), exactly
    one is a first window (-DIP / 10), and the noise cancels."""
    return start - slope * (t - 0.5) - DIP / LOG_PER_EPOCH


def test_the_reshuffle_dip_pulls_one_window_early_but_not_the_trailing_epoch_mean():
    # tanh near 25%: 0.3 pp per epoch. Trailing mean 30.06 - 0.3 t: 25% at t = 5.06 / 0.3 = 16.87.
    points = dipped_progress(30.0, 0.3, 20)
    late = 0.5 + (30.0 - DIP / LOG_PER_EPOCH - 25.0) / 0.3
    assert late == pytest.approx(16.8667, abs=1e-4)
    trailing = trailing_epoch_mean(points, ERR)
    assert crossing(trailing, ERR, 25.0, at="epoch") == pytest.approx(late)
    # One window: epoch 15.0 ends a -NOISE window at 30 - 0.3 * 14.95 - 0.2 = 25.315; the dipped
    # first window of epoch 16 ends at 15.1 with 30 - 0.3 * 15.05 - 0.9 + 0.2 = 24.785.
    early = 15.0 + 0.1 * (25.315 - 25.0) / (25.315 - 24.785)
    assert crossing(points, ERR, 25.0, at="epoch") == pytest.approx(early)
    assert late - early > 1.8  # epochs
    # ReLU near 25%: 3 pp per epoch; the dip moves one window's crossing by a fraction of an epoch
    fast = dipped_progress(40.0, 3.0, 8)
    fast_late = 0.5 + (40.0 - DIP / LOG_PER_EPOCH - 25.0) / 3.0
    assert crossing(trailing_epoch_mean(fast, ERR), ERR, 25.0, at="epoch") == pytest.approx(fast_late)
    assert fast_late - crossing(fast, ERR, 25.0, at="epoch") < 0.5
    # so one window squeezes the tanh / ReLU ratio
    assert early / crossing(fast, ERR, 25.0, at="epoch") < late / fast_late


def test_trailing_mean_by_hand_at_a_few_points():
    points = dipped_progress(30.0, 0.3, 3)
    trailing = trailing_epoch_mean(points, ERR)
    assert trailing[0]["epoch"] == pytest.approx(1.0)  # nothing before the end of epoch 1
    assert len(trailing) == len(points) - (LOG_PER_EPOCH - 1)
    for t in (1.0, 1.3, 2.0, 2.7, 3.0):
        (p,) = [p for p in trailing if p["epoch"] == pytest.approx(t)]
        assert p[ERR] == pytest.approx(trailing_by_hand(30.0, 0.3, t)), t
    # at the end of epoch 1: the ten windows of epoch 1, by hand, 29.76
    assert trailing[0][ERR] == pytest.approx(sum(p[ERR] for p in points[:10]) / 10) == pytest.approx(29.76)


def test_windows_are_weighted_by_their_steps():
    # three windows an epoch of 3, 3 and 4 steps
    points = [
        {"step": 3, "epoch": 1 / 3, ERR: 30.0},
        {"step": 6, "epoch": 2 / 3, ERR: 20.0},
        {"step": 10, "epoch": 1.0, ERR: 10.0},
        {"step": 13, "epoch": 4 / 3, ERR: 40.0},
        {"step": 16, "epoch": 5 / 3, ERR: math.nan},  # a diverged window: no mean over it
    ]
    assert trailing_mean_at(points, 1, ERR) is None  # before the end of epoch 1
    assert trailing_mean_at(points, 2, ERR) == pytest.approx((3 * 30 + 3 * 20 + 4 * 10) / 10)  # 19
    assert trailing_mean_at(points, 3, ERR) == pytest.approx((3 * 20 + 4 * 10 + 3 * 40) / 10)  # 22
    assert trailing_mean_at(points, 4, ERR) is None
    got = trailing_epoch_mean(points, ERR)
    assert [p["step"] for p in got] == [10, 13, 16] and math.isnan(got[-1][ERR])


def test_time_to_target_on_the_running_error_uses_the_trailing_epoch_mean_and_says_so():
    points = dipped_progress(30.0, 0.3, 20)
    late = 0.5 + (30.0 - DIP / LOG_PER_EPOCH - 25.0) / 0.3
    got = time_to_target([], points, ERR, 25.0)
    assert got == {
        "steps_to_target": pytest.approx(late * LOG_PER_EPOCH * STEPS),
        "epochs_to_target": pytest.approx(late),
        "seconds_to_target": pytest.approx(late * 2.0),
        "target_statistic": TRAILING_EPOCH_MEAN,
    }
    assert time_to_target([], points, ERR, 20.0)["epochs_to_target"] is None


def test_the_stopper_waits_for_the_trailing_epoch_mean():
    """stop_after = 0, as ablations/figure1.toml: the old rule (one window) stopped this run at the
    end of epoch 16, before the trailing mean crossed; the stopper now ends it with epoch 17."""
    points = dipped_progress(30.0, 0.3, 20)
    stop = _Stopper({"metric": ERR, "value": 25.0, "stop_after": 0})
    stopped_at = None
    for e in range(1, 21):
        for p in points[(e - 1) * LOG_PER_EPOCH : e * LOG_PER_EPOCH]:
            stop.on_point(p)
        # the epoch row's own mean is not what is judged: a value below the target changes nothing
        if stop.on_epoch_end({"epoch": e, ERR: 0.0}):
            stopped_at = e
            break
    assert stopped_at == 17 == math.ceil(0.5 + (30.0 - DIP / LOG_PER_EPOCH - 25.0) / 0.3)
    assert time_to_target([], points[: 17 * LOG_PER_EPOCH], ERR, 25.0)["epochs_to_target"] is not None


def test_the_stopper_on_an_evaluated_metric_still_reads_the_epoch_rows():
    stop = _Stopper({"metric": "test_top1_err_pct", "value": 25.0, "stop_after": 1})
    stop.on_point({"step": 10, "epoch": 1.0, ERR: 10.0})  # another metric's points: ignored
    assert stop.on_epoch_end({"epoch": 1, "test_top1_err_pct": 30.0}) is False
    assert stop.on_epoch_end({"epoch": 2, "test_top1_err_pct": 24.0}) is False
    assert stop.on_epoch_end({"epoch": 3, "test_top1_err_pct": 26.0}) is True
