"""Methodology a reviewer would ask for: selection on validation only, a clean training error,
sub-epoch time to target, weight decay on weights only, the plateau schedule, distinct seeds."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
import torch.nn as nn

import bench.train.loop
from bench.cli import main
from bench.data import Dataset
from bench.data.augment import Normalizer
from bench.errors import UserError
from bench.report.load import load
from bench.studies import StudyFile
from bench.sweep.runner import _Stopper, time_to_target
from bench.train.config import TrainConfig
from bench.train.loop import train
from bench.train.result import summarize
from bench.train.step import make_optimizer

N_CLASSES = 4


# --- best epoch: chosen on validation, never on test --------------------------------------


def _row(epoch: int, val: float | None, test: float) -> dict:
    row = {
        "epoch": epoch,
        "train_running_loss": 1.0,
        "train_running_err_pct": 30.0,
        "test_top1_err_pct": test,
        "test_top5_err_pct": test / 4,
        "epoch_seconds": 1.0,
        "train_images_per_s": 100.0,
    }
    if val is not None:
        row["val_top1_err_pct"] = val
    return row


def test_best_epoch_is_chosen_on_validation_and_the_test_error_is_read_there():
    # the best test epoch (2) is not the best validation epoch (3): selection on test would pick 2
    history = [_row(1, 40.0, 41.0), _row(2, 35.0, 20.0), _row(3, 30.0, 33.0), _row(4, 31.0, 25.0)]
    s = summarize(history, "ok", has_val=True)
    assert (s["best_epoch"], s["best_val_top1_err_pct"], s["test_top1_err_pct_at_best_val"]) == (3, 30.0, 33.0)
    assert s["final_test_top1_err_pct"] == 25.0 and s["final_val_top1_err_pct"] == 31.0
    assert not any("best" in k and "test" in k and k != "test_top1_err_pct_at_best_val" for k in s)


def test_without_a_validation_split_the_summary_says_so():
    s = summarize([_row(1, None, 41.0), _row(2, None, 20.0)], "ok", has_val=False)
    assert s["has_val_split"] is False
    assert s["best_epoch"] is None and s["best_val_top1_err_pct"] is None
    assert s["test_top1_err_pct_at_best_val"] is None and s["final_val_top1_err_pct"] is None
    assert s["final_test_top1_err_pct"] == 20.0  # the test error is still reported, at the last epoch


def test_plateau_needs_a_validation_split():
    with pytest.raises(UserError, match="plateau.*val_size"):
        TrainConfig(schedule="plateau", val_size=0)


@pytest.mark.parametrize(
    "changes, needle",
    [
        ({"val_size": -1}, "val_size must be 0 or more"),
        ({"train_eval_size": -5}, "train_eval_size must be"),
        ({"data_seed": -1}, "data_seed must be"),
        ({"plateau_patience": -1}, "plateau_patience must be"),
        ({"plateau_max_drops": -1}, "plateau_max_drops must be"),
        ({"image_size": 0}, "image_size must be"),
        ({"decay": "bias"}, "decay='bias'.*weights, all"),
        ({"val_size": 1.5}, "val_size=1.5 has the wrong type"),
    ],
)
def test_new_config_fields_are_validated_in_one_line(changes, needle):
    with pytest.raises(UserError, match=needle) as err:
        TrainConfig(**changes)
    assert "\n" not in str(err.value)


# --- a mock data set: the class is the image's brightness ---------------------------------


def _images(per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
    y = torch.arange(N_CLASSES).repeat_interleave(per_class)
    x = (40 + 50 * y).to(torch.uint8).view(-1, 1, 1, 1).expand(-1, 3, 8, 8).contiguous()
    return x, y


def mock_data(val: bool = True) -> Dataset:
    train_x, train_y = _images(6)
    test_x, test_y = _images(2)
    val_x, val_y = _images(2) if val else (None, None)
    norm = Normalizer.fit(train_x, "standardize")
    return Dataset(
        train_x,
        train_y,
        test_x,
        test_y,
        [str(c) for c in range(N_CLASSES)],
        norm,
        {"data_source": "mock"},
        val_x,
        val_y,
        torch.arange(0, 24, 2),
    )


class ModeNet(nn.Module):
    """Right in eval mode on un-augmented images; class 0 always in training mode.

    Eval mode: the class whose normalised brightness is nearest the image's mean (a
    crop's zero padding pulls the mean towards the middle classes, so cropped images
    are often misread). Training mode: class 0, wrong for 3 of the 4 balanced classes.
    """

    def __init__(self, prototypes: torch.Tensor):
        super().__init__()
        self.register_buffer("prototypes", prototypes)
        self.w = nn.Parameter(torch.zeros(1))  # something for the optimizer to hold

    def forward(self, x):
        if self.training:
            return torch.nn.functional.one_hot(torch.zeros(len(x), dtype=torch.long), N_CLASSES).float() + self.w
        return -200.0 * (x.mean((1, 2, 3))[:, None] - self.prototypes[None, :]) ** 2 + self.w


def _mode_net(monkeypatch, data: Dataset) -> None:
    levels = (40 + 50 * torch.arange(N_CLASSES)).to(torch.uint8).view(-1, 1, 1, 1).expand(-1, 3, 8, 8)
    prototypes = data.normalizer(levels.contiguous()).mean((1, 2, 3))
    monkeypatch.setattr(bench.train.loop, "create_model", lambda *a, **kw: ModeNet(prototypes))


def mock_config(**changes) -> TrainConfig:
    base = {
        "data": "synthetic",
        "epochs": 2,
        "batch_size": 4,
        "lr": 0.1,
        "schedule": "constant",
        "augment": "none",
        "device": "cpu",
        "val_size": 8,
    }
    return TrainConfig(**{**base, **changes})


def test_clean_training_error_is_measured_in_eval_mode_without_augmentation(monkeypatch):
    data = mock_data()
    _mode_net(monkeypatch, data)
    result = train(mock_config(augment="crop"), data, progress=False)
    for row in result.history:
        assert row["train_running_err_pct"] == pytest.approx(75.0)  # training mode: class 0 for all
        assert row["train_clean_top1_err_pct"] == 0.0  # eval mode, un-cropped: right every time
        assert row["val_top1_err_pct"] == 0.0 and row["test_top1_err_pct"] == 0.0
    assert result.summary["final_train_clean_top1_err_pct"] == 0.0
    assert result.summary["final_train_running_err_pct"] == pytest.approx(75.0)
    # the same eval-mode model on cropped training images errs: so the clean pass was not cropped
    model = result.model.eval()
    g = torch.Generator().manual_seed(0)
    crops = [
        (model(x).argmax(1) != y).sum().item()
        for x, y in data.batches("train", 24, augment=frozenset({"crop"}), generator=g)
    ]
    assert sum(crops) > 0


def test_no_validation_split_gives_no_val_columns(monkeypatch):
    data = mock_data(val=False)
    _mode_net(monkeypatch, data)
    result = train(mock_config(val_size=0), data, progress=False)
    assert not any(k.startswith("val_") for row in result.history for k in row)
    assert result.summary["has_val_split"] is False and result.summary["best_epoch"] is None
    with pytest.raises(UserError, match="no validation split"):
        train(mock_config(schedule="plateau"), data, progress=False)  # the data set decides, not only the config


def test_plateau_divides_the_lr_by_ten_when_validation_stalls_at_most_max_drops(monkeypatch):
    data = mock_data()
    _mode_net(monkeypatch, data)  # its validation error is 0 every epoch: never better after the first
    cfg = mock_config(schedule="plateau", epochs=5, plateau_patience=0, plateau_max_drops=2)
    result = train(cfg, data, progress=False)
    # lr at the start of each epoch: the first epoch sets the best; each later one stalls
    assert [h["lr"] for h in result.history] == pytest.approx([0.1, 0.1, 0.01, 0.001, 0.001])


def test_plateau_steps_on_the_validation_error_never_the_test_error():
    """Validation stalls while test improves: the rate drops. Validation improves while test
    stalls: it does not. (The mock net above has both errors at 0, so it cannot tell them apart.)"""
    from bench.train.schedule import LrSchedule

    def lrs(val, test) -> list[float]:
        net = nn.Linear(2, 2)
        optimizer = make_optimizer(net, lr=0.1)
        schedule = LrSchedule(optimizer, mock_config(schedule="plateau", plateau_patience=1, epochs=4), 1)
        for epoch, (v, t) in enumerate(zip(val, test), 1):
            schedule.after_epoch(epoch, {"val_top1_err_pct": v, "test_top1_err_pct": t})
        return [g["lr"] for g in optimizer.param_groups]

    assert lrs(val=[50, 50, 50, 50], test=[50, 40, 30, 20]) == pytest.approx([0.01] * 2)
    assert lrs(val=[50, 40, 30, 20], test=[50, 50, 50, 50]) == pytest.approx([0.1] * 2)


def test_plateau_waits_for_warmup(monkeypatch):
    data = mock_data()
    _mode_net(monkeypatch, data)
    cfg = mock_config(schedule="plateau", epochs=4, warmup_epochs=2.0, plateau_patience=0)
    result = train(cfg, data, progress=False)
    # 6 steps an epoch, warm-up 12: epoch 2 starts at 7/12; plateau steps only from epoch 2's end
    assert [h["lr"] for h in result.history] == pytest.approx([0.1 / 12, 0.1 * 7 / 12, 0.1, 0.01])


# --- progress points and the interpolated time to target ---------------------------------


def test_progress_points_ten_per_epoch_one_per_tenth(monkeypatch):
    data = mock_data()
    _mode_net(monkeypatch, data)
    result = train(mock_config(batch_size=1, epochs=1), data, progress=False)  # 24 steps
    assert [p["step"] for p in result.progress] == [3, 5, 8, 10, 12, 15, 17, 20, 22, 24]
    assert [p["epoch"] for p in result.progress] == pytest.approx(
        [s / 24 for s in (3, 5, 8, 10, 12, 15, 17, 20, 22, 24)]
    )
    seconds = [p["train_seconds"] for p in result.progress]
    assert seconds == sorted(seconds) and seconds[-1] <= result.history[0]["epoch_seconds"] + 1e-9


def test_time_to_target_interpolates_between_trailing_epoch_means():
    points = [
        {"step": 10, "epoch": 0.5, "train_seconds": 4.0, "train_running_err_pct": 60.0},
        {"step": 20, "epoch": 1.0, "train_seconds": 8.0, "train_running_err_pct": 30.0},
        {"step": 30, "epoch": 1.5, "train_seconds": 13.0, "train_running_err_pct": 20.0},
        {"step": 40, "epoch": 2.0, "train_seconds": 18.0, "train_running_err_pct": 10.0},
    ]
    history = [
        {"epoch": 1, "step": 20, "epoch_seconds": 8.0, "train_running_err_pct": 45.0},
        {"epoch": 2, "step": 40, "epoch_seconds": 10.0, "train_running_err_pct": 15.0},
    ]
    # trailing-epoch means: 45 at epoch 1.0, 25 at 1.5, 15 at 2.0; 20% halfway between 1.5 and 2.0
    # (one window alone would be at 20% already at 1.5), not "epoch 2"
    got = time_to_target(history, points, "train_running_err_pct", 20.0)
    assert got == {
        "steps_to_target": pytest.approx(35.0),
        "epochs_to_target": pytest.approx(1.75),
        "seconds_to_target": pytest.approx(15.5),
        "target_statistic": "trailing-epoch mean",
    }
    assert time_to_target(history, points, "train_running_err_pct", 5.0)["epochs_to_target"] is None


def test_stop_after_counts_from_the_epoch_a_progress_point_reaches_the_target():
    stop = _Stopper({"metric": "train_running_err_pct", "value": 25.0, "stop_after": 1})
    stop.on_point({"step": 10, "epoch": 0.5, "train_running_err_pct": 30.0})
    stop.on_point({"step": 20, "epoch": 1.0, "train_running_err_pct": 26.0})  # trailing mean 28
    stop.on_point({"step": 30, "epoch": 1.5, "train_running_err_pct": 23.0})  # 24.5: reached inside epoch 2
    assert stop.on_epoch_end({"epoch": 2, "train_running_err_pct": 27.0}) is False  # the epoch row is not judged
    assert stop.on_epoch_end({"epoch": 3, "train_running_err_pct": 23.0}) is True


# --- weight decay ---------------------------------------------------------------------------


def _net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))


@pytest.mark.parametrize(
    "decay, decayed",
    [
        ("weights", {"0.weight", "3.weight"}),
        ("all", {"0.weight", "0.bias", "1.weight", "1.bias", "3.weight", "3.bias"}),
    ],
)
def test_weight_decay_on_weights_only_or_on_all(decay, decayed):
    torch.manual_seed(0)
    net = _net()
    names = {id(p): n for n, p in net.named_parameters()}
    opt = make_optimizer(net, lr=0.1, momentum=0.0, weight_decay=0.5, decay=decay)
    groups = {names[id(p)]: g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert set(groups) == set(names.values())  # every parameter once
    assert {n for n, wd in groups.items() if wd > 0} == decayed
    # a step with zero gradients: only decay moves a parameter
    with torch.no_grad():
        net[1].weight.fill_(1.0)
        net[1].bias.fill_(1.0)
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    moved = {n for n, p in net.named_parameters() if not torch.equal(p, before[n])}
    assert moved == decayed


# --- distinct seeds ----------------------------------------------------------------------


def _study(tmp_path, seeds_line: str, profile_line: str = "") -> str:
    path = tmp_path / "dup.toml"
    path.write_text(
        f'[study]\nname = "dup"\n{seeds_line}\n[base]\ndata = "synthetic"\n'
        f'[factors.lr]\nkey = "lr"\nlevels = [0.01]\n[profiles.smoke]\n{profile_line}\n'
    )
    return str(path)


@pytest.mark.parametrize(
    "seeds_line, profile_line, where",
    [
        ("seeds = [0, 0]", "", "study.seeds repeats seed 0"),
        ("seeds = [0]", "seeds = [1, 2, 1]", "profiles.smoke.seeds repeats seed 1"),
    ],
)
def test_a_repeated_seed_in_a_study_is_a_one_line_error(tmp_path, seeds_line, profile_line, where):
    path = _study(tmp_path, seeds_line, profile_line)
    with pytest.raises(UserError, match=where) as err:
        StudyFile.read(path)
    assert "\n" not in str(err.value) and path in str(err.value)


@pytest.mark.parametrize(
    "seeds, needle", [("0,0", "repeats seed 0"), ("1,,2", "empty item"), ("2,1,2", "repeats seed 2")]
)
def test_repeated_or_empty_seeds_on_the_command_line(tmp_path, capsys, seeds, needle):
    with pytest.raises(SystemExit) as exit_:
        main(["ablate", "--seeds", seeds, "--out", str(tmp_path / "results")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--seeds" in err and needle in err
    assert not (tmp_path / "results").exists()


def test_a_study_target_on_the_old_metric_name_or_stopping_on_test_is_refused(tmp_path):
    base = '[study]\nname = "t"\ntarget = {target}\n[base]\n[profiles.smoke]\n'
    path = tmp_path / "t.toml"
    path.write_text(base.format(target='{ metric = "train_err_pct", value = 25.0 }'))
    with pytest.raises(UserError, match="now called 'train_running_err_pct'"):
        StudyFile.read(path)
    path.write_text(base.format(target='{ metric = "test_top1_err_pct", value = 25.0, stop_after = 0 }'))
    with pytest.raises(UserError, match="would stop on the test set"):
        StudyFile.read(path)
    path.write_text(base.format(target='{ metric = "val_top1_err_pct", value = 25.0, stop_after = 0 }'))
    assert StudyFile.read(path).target["metric"] == "val_top1_err_pct"


# --- results swept before the rename still load ----------------------------------------------


def test_old_column_names_load_as_todays(tmp_path):
    folder = tmp_path / "old" / "cpu"
    folder.mkdir(parents=True)
    pd.DataFrame(
        [
            {
                "study": "old",
                "profile": "cpu",
                "cell_id": "a",
                "activation": "relu",
                "is_baseline": True,
                "seed": 0,
                "status": "ok",
                "final_train_err_pct": 20.0,
                "final_train_loss": 0.5,
                "final_test_top1_err_pct": 30.0,
                "best_test_top1_err_pct": 28.0,
                "target_metric": "train_err_pct",
                "target_value": 25.0,
                "epochs_to_target": 3,
            }
        ]
    ).to_csv(folder / "runs.csv", index=False)
    pd.DataFrame(
        [{"cell_id": "a", "epoch": 1, "train_loss": 0.5, "train_err_pct": 20.0, "test_top1_err_pct": 30.0}]
    ).to_csv(folder / "history.csv", index=False)
    sd = load(folder)
    assert sd.runs.loc[0, "final_train_running_err_pct"] == 20.0
    assert sd.runs.loc[0, "final_train_running_loss"] == 0.5
    assert "best_test_top1_err_pct" not in sd.runs and "final_train_err_pct" not in sd.runs
    assert sd.target["metric"] == "train_running_err_pct"
    assert list(sd.history["train_running_err_pct"]) == [20.0] and "train_err_pct" not in sd.history
    assert not math.isnan(sd.history.loc[0, "train_running_loss"])
