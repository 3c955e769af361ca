"""The training loop on tiny synthetic data: learning, history, determinism, divergence, run folder, schedules."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
import torch.nn as nn

import bench.train.loop
from bench.data import DataSpec, load_data
from bench.errors import UserError
from bench.models import create_model
from bench.train.config import TrainConfig
from bench.train.dataspec import data_spec
from bench.train.hooks import Hook
from bench.train.loop import evaluate, run_training, train
from bench.train.schedule import lr_factor
from bench.train.target import LOG_PER_EPOCH
from tests import tiny

# The columns of every completed epoch's history row (with a validation split).
HISTORY_COLUMNS = {
    "epoch",
    "step",
    "train_running_loss",
    "train_running_err_pct",
    "train_clean_loss",
    "train_clean_top1_err_pct",
    "train_clean_top5_err_pct",
    "val_loss",
    "val_top1_err_pct",
    "val_top5_err_pct",
    "test_loss",
    "test_top1_err_pct",
    "test_top5_err_pct",
    "lr",
    "epoch_seconds",
    "train_images_per_s",
    "elapsed_seconds",
}
PROGRESS_COLUMNS = {"step", "epoch", "train_running_err_pct", "train_running_loss", "train_seconds"}
RUN_FILES = {"config.json", "history.csv", "progress.csv", "summary.json", "checkpoint.pt"}


def tiny_config(**changes) -> TrainConfig:
    """200 training images (20 per class), batch 10, plain SGD at a rate checked to learn in 4 epochs;
    50 validation images (held out on top of the 200): tests/tiny.py's."""
    return tiny.config(**changes)


@pytest.fixture(scope="module")
def synthetic():
    """The synthetic source at the size `tiny_config` asks for (shared: data sets are not modified)."""
    return load_data(data_spec(tiny_config()), cache_dir=None)


def test_loss_falls_on_synthetic_data(synthetic):
    result = train(tiny_config(), synthetic, progress=False)
    losses = [h["train_running_loss"] for h in result.history]
    assert result.status == "ok" and len(losses) == 4
    assert losses[0] == pytest.approx(math.log(10), abs=0.1)  # starts at chance
    assert losses[-1] < 0.75 * losses[0], losses
    assert result.history[-1]["test_top1_err_pct"] < 50, result.history  # chance is 90
    assert result.summary["status"] == "ok" and result.summary["epochs_run"] == 4
    assert result.summary["final_train_running_loss"] == losses[-1]
    best = min(result.history, key=lambda h: h["val_top1_err_pct"])
    assert result.summary["best_val_top1_err_pct"] == best["val_top1_err_pct"]
    assert result.summary["best_epoch"] == best["epoch"]
    assert result.summary["test_top1_err_pct_at_best_val"] == best["test_top1_err_pct"]
    assert "best_test_top1_err_pct" not in result.summary  # a minimum over test epochs selects on test


def test_history_rows_have_the_documented_columns():
    result = train(tiny_config(epochs=2, train_per_class=3), progress=False)
    assert [h["epoch"] for h in result.history] == [1, 2]
    for row in result.history:
        assert set(row) == HISTORY_COLUMNS
        assert 0 <= row["train_running_err_pct"] <= 100 and 0 <= row["test_top1_err_pct"] <= 100
        assert row["test_top5_err_pct"] <= row["test_top1_err_pct"]
        assert row["epoch_seconds"] > 0 and row["train_images_per_s"] > 0
    assert result.history[1]["elapsed_seconds"] > result.history[0]["elapsed_seconds"]
    assert result.summary["train_images"] == 30 and result.summary["data_source"] == "synthetic"
    assert result.summary["val_images"] == 50 and result.summary["train_eval_images"] == 30
    # 30 images in batches of 10: 3 steps an epoch, so a progress point after every step
    assert [p["step"] for p in result.progress] == [1, 2, 3, 4, 5, 6]
    assert [p["epoch"] for p in result.progress] == pytest.approx([1 / 3, 2 / 3, 1, 4 / 3, 5 / 3, 2])
    assert all(set(p) == PROGRESS_COLUMNS for p in result.progress)
    # the epoch's running error is the image-weighted mean of its points' (equal batches here)
    first = sum(p["train_running_err_pct"] for p in result.progress[:3]) / 3
    assert result.history[0]["train_running_err_pct"] == pytest.approx(first)


def test_score_every_scores_the_reported_splits_sparsely_and_always_at_the_last_epoch(synthetic):
    result = train(tiny_config(epochs=5, score_every=2), synthetic, progress=False)
    scored = [h["epoch"] for h in result.history if "test_top1_err_pct" in h]
    clean = [h["epoch"] for h in result.history if "train_clean_top1_err_pct" in h]
    assert scored == clean == [2, 4, 5]
    assert all("val_top1_err_pct" in h for h in result.history)  # validation picks the best epoch: every one
    assert result.summary["final_test_top1_err_pct"] == result.history[-1]["test_top1_err_pct"]
    last_only = train(tiny_config(epochs=3, score_every=0), synthetic, progress=False)
    assert [h["epoch"] for h in last_only.history if "test_top1_err_pct" in h] == [3]


def test_same_seed_same_history_different_seed_differs(synthetic):
    # Augmentation on, so the data generator's seed matters as well as the weights'.
    cfg = tiny_config(epochs=2, augment="crop+flip+pca")
    a = train(cfg, synthetic, progress=False)
    b = train(cfg, synthetic, progress=False)
    c = train(cfg.replace(seed=1), synthetic, progress=False)

    def losses(r):
        return [(h["train_running_loss"], h["test_loss"], h["train_running_err_pct"]) for h in r.history]

    assert losses(a) == losses(b)
    assert losses(a) != losses(c)
    assert all(torch.equal(p, q) for p, q in zip(a.model.state_dict().values(), b.model.state_dict().values()))


class Spy(Hook):
    """Records every call; asks to stop after epoch `stop_at` (None: never)."""

    def __init__(self, stop_at=None):
        self.stop_at, self.calls = stop_at, []

    def on_start(self, model, data):
        self.calls.append(("start", model))

    def on_point(self, point):
        self.calls.append(("point", point["step"]))

    def on_epoch_end(self, row):
        self.calls.append(("epoch", row["epoch"]))
        return row["epoch"] == self.stop_at

    def on_end(self, result):
        self.calls.append(("end", dict(result.summary)))


def test_hooks_see_start_points_rows_and_end_and_any_of_them_stops_the_run(synthetic):
    stopper, spy = Spy(stop_at=2), Spy()
    result = train(tiny_config(epochs=4), synthetic, progress=False, hooks=[stopper, spy])
    assert len(result.history) == 2  # the first hook stopped it...
    assert [c[1] for c in spy.calls if c[0] == "epoch"] == [1, 2]  # ...and the second still saw epoch 2
    assert spy.calls[0] == ("start", result.model)
    assert [c[1] for c in spy.calls if c[0] == "point"] == [p["step"] for p in result.progress]
    # each epoch's points come before its row
    assert [c[0] for c in spy.calls[1:-1]] == (["point"] * LOG_PER_EPOCH + ["epoch"]) * 2
    end = spy.calls[-1]
    # a hook's end sees the whole summary: the run's facts in it, and nothing added after it
    assert end[0] == "end" and end[1] == result.summary and {"world_size", "dtype_resolved"} <= set(end[1])


def test_lrn_activity_is_in_the_summary_at_init_and_after_training(synthetic):
    result = train(tiny_config(model="alexnet", knobs={"width": 0.125}, epochs=1), progress=False)
    init = {k.removesuffix("_init"): v for k, v in result.summary.items() if k.endswith("_init")}
    final = {k.removesuffix("_final"): v for k, v in result.summary.items() if k.endswith("_final")}
    assert init and init.keys() == final.keys() and all(k.startswith("lrn_") for k in init)
    assert init != final  # measured on the trained weights, not the initial ones again
    assert not any(k.startswith("lrn_") for k in train(tiny_config(), synthetic, progress=False).summary)  # no LRN


def test_absurd_learning_rate_ends_as_diverged(synthetic):
    result = train(tiny_config(lr=1e6, epochs=6), synthetic, progress=False)
    assert result.status == "diverged"
    assert result.summary["status"] == "diverged"
    last = result.history[-1]
    assert math.isnan(last["train_running_loss"]) and "test_top1_err_pct" not in last
    assert len(result.history) < 6  # it stops at the first non-finite epoch
    assert result.summary["epochs_run"] == len(result.history) - 1


class NaNNet(nn.Module):
    """Trainable, but every logit is NaN."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.fc = nn.Linear(3 * 32 * 32, num_classes)

    def forward(self, x):
        return self.fc(x.flatten(1)) * float("nan")


def test_nan_model_ends_as_diverged_and_the_run_folder_says_so(monkeypatch, tmp_path):
    monkeypatch.setattr(bench.train.loop, "create_model", lambda *args, num_classes=10, **kw: NaNNet(num_classes))
    out = tmp_path / "run"
    result = run_training(tiny_config(epochs=3, train_per_class=3), out, progress=False)
    assert result.status == "diverged"
    assert len(result.history) == 1 and math.isnan(result.history[0]["train_running_loss"])
    assert {p.name for p in out.iterdir()} == RUN_FILES
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["epochs_run"] == 0


def test_run_training_writes_the_run_folder(tmp_path):
    cfg = tiny_config(epochs=2, train_per_class=3, test_per_class=2)
    out = tmp_path / "runs" / "one"
    result = run_training(cfg, out, progress=False)
    assert {p.name for p in out.iterdir()} == RUN_FILES  # and no temporary files left behind

    config = json.loads((out / "config.json").read_text())
    assert config["config"] == cfg.to_dict()
    assert TrainConfig.from_dict(config["config"]) == cfg  # the saved config rebuilds the run's
    assert config["environment"]  # provenance beside the result

    with open(out / "history.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert set(rows[0]) == HISTORY_COLUMNS
    assert float(rows[-1]["train_running_loss"]) == pytest.approx(result.history[-1]["train_running_loss"])
    with open(out / "progress.csv", newline="") as f:
        points = list(csv.DictReader(f))
    assert len(points) == len(result.progress) == 2 * 3 and set(points[0]) == PROGRESS_COLUMNS
    assert float(points[-1]["epoch"]) == pytest.approx(2.0)

    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["epochs_run"] == 2 and summary["seed"] == 0
    assert summary["data_source"] == "synthetic" and summary["train_images"] == 30
    assert summary["final_test_top1_err_pct"] == pytest.approx(result.history[-1]["test_top1_err_pct"])

    # The checkpoint reproduces the final test error.
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["config"] == cfg.to_dict()
    model = create_model(cfg.model)
    model.load_state_dict(ckpt["state_dict"])
    again = evaluate(model, load_data(data_spec(cfg), cache_dir=None))
    assert again["test_top1_err_pct"] == pytest.approx(summary["final_test_top1_err_pct"])


# --- learning-rate schedules ------------------------------------------------------


def test_cosine_schedule_starts_at_one_and_ends_near_zero():
    total = 100
    values = [lr_factor("cosine", s, total, 0) for s in range(total + 1)]
    assert values[0] == 1.0
    assert values[50] == pytest.approx(0.5)
    assert values[-2] < 1e-3 and values[-1] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_step_schedule_drops_tenfold_at_half_and_three_quarters():
    total = 100
    f = [lr_factor("step", s, total, 0) for s in range(total)]
    assert f[0] == f[49] == 1.0
    assert f[50] == pytest.approx(0.1) and f[74] == pytest.approx(0.1)
    assert f[75] == pytest.approx(0.01) and f[99] == pytest.approx(0.01)


def test_warmup_ramps_linearly_then_hands_over():
    ramp = [lr_factor("constant", s, 100, 10) for s in range(12)]
    assert ramp[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert ramp[10:] == [1.0, 1.0]
    assert lr_factor("constant", 50, 100, 0) == 1.0
    assert lr_factor("cosine", 0, 100, 10) == pytest.approx(0.1)  # warm-up wins over the schedule


@pytest.fixture(scope="module")
def twenty_images():
    """20 images, batch 10: 2 optimizer steps per epoch."""
    return load_data(
        DataSpec(source="synthetic", synthetic_train=200, synthetic_test=50, train_per_class=2, test_per_class=1),
        cache_dir=None,
    )


def test_train_applies_the_step_schedule_per_optimizer_step(twenty_images):
    result = train(tiny_config(schedule="step", lr=0.01), twenty_images, progress=False)
    # 8 steps: epochs start at steps 0, 2, 4 (t = 0.5) and 6 (t = 0.75).
    assert [h["lr"] for h in result.history] == pytest.approx([0.01, 0.01, 0.001, 0.0001])


def test_train_applies_warmup_in_epochs(twenty_images):
    result = train(tiny_config(warmup_epochs=2.0, lr=0.01), twenty_images, progress=False)
    # Warm-up of 4 steps: epochs start at steps 0 and 2 (factors 1/4, 3/4), then the full rate.
    assert [h["lr"] for h in result.history] == pytest.approx([0.0025, 0.0075, 0.01, 0.01])


# --- configuration ----------------------------------------------------------------


def test_config_rejects_unknown_keys_wrong_types_and_bad_choices():
    with pytest.raises(UserError, match="unknown key 'learning_rate'.*valid keys:.*lr"):
        TrainConfig.from_dict({"learning_rate": 0.1})
    with pytest.raises(UserError, match="epochs='3' has the wrong type"):
        TrainConfig(epochs="3")
    with pytest.raises(UserError, match="schedule='linear'.*constant, cosine, step"):
        TrainConfig(schedule="linear")
    with pytest.raises(UserError, match="lr must be positive"):
        TrainConfig(lr=0.0)
    assert TrainConfig(lr=1).lr == 1  # an int is a fine learning rate


def test_fp16_steps_use_a_loss_scaler_and_still_step():
    """Only fp16 gets a scaler, and a scaled step still updates the weights."""
    from bench.train.step import grad_scaler, make_optimizer, train_step

    assert grad_scaler(torch.device("cpu"), "fp32") is None and grad_scaler(torch.device("cpu"), "bf16") is None
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 10))
    x, y = torch.randn(4, 3, 4, 4), torch.randint(0, 10, (4,))
    scaler = grad_scaler(x.device, "fp16")
    before = [p.detach().clone() for p in model.parameters()]
    train_step(model, make_optimizer(model, lr=0.1, weight_decay=0.0), x, y, dtype="fp16", scaler=scaler)
    after = list(model.parameters())
    assert all(torch.isfinite(p).all() for p in after)
    assert any(not torch.equal(a, b) for a, b in zip(after, before))  # the step was taken, not skipped


class Tiny(nn.Module):
    """Multiplies by 1e-8, so that the gradients behind it are ~1e-9: below fp16's smallest (~6e-8)."""

    def forward(self, x):
        return x * 1e-8


def test_fp16_gradients_that_underflow_survive_with_the_scaler_and_vanish_without():
    from bench.train.step import grad_scaler, make_optimizer, train_step

    def first_layer_grads(dtype: str, scaler) -> list[torch.Tensor]:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 10), Tiny())
        x, y = torch.randn(4, 3, 4, 4), torch.randint(0, 10, (4,))
        train_step(model, make_optimizer(model, lr=0.1, weight_decay=0.0), x, y, dtype=dtype, scaler=scaler)
        return [p.grad.clone() for p in model[1].parameters()]  # left by the step, unscaled

    exact = first_layer_grads("fp32", None)
    assert all(g.abs().min() > 0 and g.abs().max() < 6e-8 for g in exact)  # every one below fp16's range
    unscaled = first_layer_grads("fp16", None)
    assert all(torch.equal(g, torch.zeros_like(g)) for g in unscaled)  # flushed to zero: nothing learnt
    scaled = first_layer_grads("fp16", grad_scaler(torch.device("cpu"), "fp16"))
    for g, e in zip(
        scaled, exact, strict=True
    ):  # scaled into fp16's range for the backward pass, unscaled before the step
        torch.testing.assert_close(g, e, rtol=0.01, atol=0.01 * e.abs().max().item())  # fp16 rounding


def test_best_epoch_is_chosen_on_validation_and_ties_go_to_the_earliest():
    """Epochs 2 and 3 tie on validation error: the best epoch is 2, with epoch 2's test error (not the lowest)."""
    from bench.train.result import summarize

    def epoch(n, val, test):
        return {"epoch": n, "train_running_err_pct": 50.0, "val_top1_err_pct": val, "test_top1_err_pct": test,
                "epoch_seconds": 1.0, "train_images_per_s": 100.0}  # fmt: skip

    history = [epoch(1, 40.0, 41.0), epoch(2, 30.0, 33.0), epoch(3, 30.0, 29.0), epoch(4, 35.0, 20.0)]
    s = summarize(history, "ok")
    assert (s["best_epoch"], s["best_val_top1_err_pct"], s["test_top1_err_pct_at_best_val"]) == (2, 30.0, 33.0)
    assert s["has_val_split"] and s["final_test_top1_err_pct"] == 20.0
