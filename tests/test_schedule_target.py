"""Learning-rate schedules and the interpolated time to a target."""

import pytest
import torch

from bench.train.schedule import lr_factor, plateau_scheduler
from bench.train.target import crossing


def test_cosine_starts_at_one_after_warmup_and_ends_near_zero():
    total, warmup = 100, 10
    assert lr_factor("cosine", 0, total, warmup) == pytest.approx(0.1)
    assert lr_factor("cosine", warmup - 1, total, warmup) == pytest.approx(1.0)
    assert lr_factor("cosine", warmup, total, warmup) == pytest.approx(1.0)
    assert lr_factor("cosine", total - 1, total, warmup) < 0.001
    assert lr_factor("cosine", 55, total, warmup) == pytest.approx(0.5)  # halfway through the post-warm-up steps


def test_step_schedule_drops_at_half_and_three_quarters():
    assert [lr_factor("step", s, 100, 0) for s in (49, 50, 74, 75)] == pytest.approx([1, 0.1, 0.1, 0.01])


def test_plateau_divides_by_ten_after_patience_and_stops_after_max_drops():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.1)
    sched = plateau_scheduler(opt, 0.1, patience=1, max_drops=2)
    lrs = []
    for err in [50, 40, 40, 40, 40, 40, 40, 40, 40]:
        sched.step(err)
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs[:2] == pytest.approx([0.1, 0.1])
    assert lrs[3] == pytest.approx(0.01)  # two epochs without improvement, patience 1
    assert lrs[-1] == pytest.approx(0.001)  # two drops at most
    assert min(lrs) == pytest.approx(0.001)


def test_crossing_interpolates_between_log_points():
    points = [
        {"step": 10, "epoch": 0.1, "err": 60.0},
        {"step": 20, "epoch": 0.2, "err": 30.0},
        {"step": 30, "epoch": 0.3, "err": 20.0},
        {"step": 40, "epoch": 0.4, "err": 10.0},
    ]
    # 30 -> 20 crosses 25 halfway between steps 20 and 30.
    assert crossing(points, "err", 25.0) == pytest.approx(25.0)
    assert crossing(points, "err", 25.0, at="epoch") == pytest.approx(0.25)
    assert crossing(points, "err", 30.0) == pytest.approx(20.0)  # exactly at a point
    assert crossing(points, "err", 5.0) is None
    assert crossing(points[2:], "err", 25.0) == pytest.approx(30.0)  # first point already below
