"""Whole-step CUDA graphs (bench.train.graphed): refused clearly where they cannot run; in training,
full batches replayed and the short last one eager, the schedules writing the lr tensor in place, the
optimizer given back with floats (on the CPU, with a stand-in for the capture); on a GPU, replaying the
captured step trains exactly as eager steps do (the lease's smoke stage trains graphed cells there)."""

from __future__ import annotations

import copy

import pytest
import torch

import bench.train.graphed
import bench.train.loop
from bench.data import load_data
from bench.errors import UserError
from bench.measure.modes import Mode, measure_modes, parse_mode
from bench.measure.speed import settings_for
from bench.models import create_model
from bench.train.config import TrainConfig
from bench.train.dataspec import data_spec
from bench.train.graphed import (
    PARTIAL_BATCH,
    GraphedStep,
    Stepper,
    capturable_lrs,
    graph_unavailable_reason,
    lr_value,
)
from bench.train.loop import train
from bench.train.schedule import LrSchedule
from bench.train.step import make_optimizer, train_step


def test_graph_is_a_mode_token_and_excludes_a_compile_mode():
    assert parse_mode("graph+bf16+cl") == Mode("bf16", True, "off", True)
    assert parse_mode("graph+bf16+cl").name == "graph+bf16+cl"
    for text in ("graph+compile", "reduce-overhead+graph", "graph+graph"):
        with pytest.raises(ValueError, match="unknown or repeated"):
            parse_mode(text)


@pytest.mark.parametrize(
    ("device", "dtype", "needle"), [("cpu", "fp32", "need a CUDA device"), ("cuda", "fp16", "bf16")]
)
def test_where_a_graph_cannot_run_says_why(device, dtype, needle):
    assert needle in graph_unavailable_reason(device, dtype)
    if device == "cpu":
        model = create_model("lenet5")
        x, y = torch.randn(2, 3, 32, 32), torch.tensor([0, 1])
        with pytest.raises(UserError, match=needle):
            GraphedStep(model, make_optimizer(model, lr=0.1), x, y, dtype)


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"device": "cpu"}, "need a CUDA device, not cpu"),
        ({"dtype": "fp16"}, "fp16's loss scaler"),
        ({"compile": "default"}, "does not combine with compile='default'"),
    ],
)
def test_a_config_asking_for_a_graph_where_none_can_run_is_one_line(changes, needle):
    with pytest.raises(UserError, match=needle) as refused:
        TrainConfig(graph=True, **changes)
    assert str(refused.value).startswith("graph=true: ") and "\n" not in str(refused.value)


def test_an_auto_device_that_is_the_cpu_is_refused_when_training_starts():
    cfg = TrainConfig(graph=True, data="synthetic", train_per_class=2, val_size=0, epochs=1)  # device auto
    if torch.cuda.is_available():
        pytest.skip("auto is a CUDA device here")
    with pytest.raises(UserError, match="graph=true: whole-step CUDA graphs need a CUDA device, not cpu"):
        train(cfg, progress=False)


def test_a_graph_mode_that_cannot_run_is_its_rows_error_and_the_others_go_on():
    rows = measure_modes(
        create_model("lenet5"), [Mode(), Mode(graph=True)], device=torch.device("cpu"), settings=settings_for(True)
    )
    eager, graphed = rows
    assert eager["error"] is None and eager["train_images_per_s"] > 0
    assert "need a CUDA device" in graphed["error"] and graphed["train_images_per_s"] is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_replayed_steps_train_as_eager_steps_do(dtype):
    torch.manual_seed(0)
    device = torch.device("cuda")
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    eager = create_model("layers-80sec").to(device)
    graphed = copy.deepcopy(eager)
    opt_e, opt_g = make_optimizer(eager, lr=0.05), make_optimizer(graphed, lr=0.05)
    batches = [
        (torch.randn(16, 3, 32, 32, device=device), torch.randint(0, 10, (16,), device=device)) for _ in range(4)
    ]
    step = GraphedStep(graphed, opt_g, *batches[0], dtype)
    for i, (x, y) in enumerate(batches):
        lr = 0.05 if i < 2 else 0.01  # a schedule's change reaches the captured step
        for g in opt_e.param_groups:
            g["lr"] = lr
        step.set_lr(lr)
        loss_e, correct_e = train_step(eager, opt_e, x, y, dtype=dtype)
        loss_g, correct_g = step(x, y)
        tol = 1e-4 if dtype == "fp32" else 1e-2
        torch.testing.assert_close(loss_g, loss_e, rtol=tol, atol=tol)
        if dtype == "fp32":
            assert int(correct_g) == int(correct_e)
    for p_e, p_g in zip(eager.parameters(), graphed.parameters()):
        torch.testing.assert_close(p_g, p_e, rtol=1e-3, atol=1e-4 if dtype == "fp32" else 1e-2)


# --- training with graph = true, on the CPU: the capture stood in for --------------------------


class EagerStandIn:
    """GraphedStep's contract without a GPU: the lr made a tensor (`capturable_lrs`), one batch shape,
    `release` giving the optimizer back; each step the project's eager step on the tensor lr."""

    made: list = []

    def __init__(self, model, optimizer, x, y, dtype):
        self.model, self.optimizer, self.dtype, self.shape = model, optimizer, dtype, x.shape
        self.undo = capturable_lrs(optimizer, x.device)
        self.lr_tensors = [g["lr"] for g in optimizer.param_groups]
        EagerStandIn.made.append(self)

    def __call__(self, x, y):
        assert x.shape == self.shape, "a captured step takes one batch shape"
        return train_step(self.model, self.optimizer, x, y, dtype=self.dtype)

    def release(self):
        self.undo()


def graphed_config(**changes) -> TrainConfig:
    # 200 images at batch 16: 12 full batches and a short one of 8 per epoch; the lr moves every step
    base = dict(data="synthetic", train_per_class=20, test_per_class=5, val_size=0, epochs=2, batch_size=16)
    base.update(lr=0.02, schedule="cosine", warmup_epochs=0.5, augment="none", seed=0)
    return TrainConfig(**{**base, **changes})


def test_a_graphed_run_replays_full_batches_steps_the_short_one_eagerly_and_trains_as_eager_does(monkeypatch):
    data = load_data(data_spec(graphed_config()), cache_dir=None)
    eager = train(graphed_config(), data, progress=False)
    monkeypatch.setattr(bench.train.loop, "check_graph", lambda cfg, device: None)  # the CPU stands in for CUDA
    monkeypatch.setattr(bench.train.graphed, "GraphedStep", EagerStandIn)
    EagerStandIn.made = []
    graphed = train(graphed_config(graph=True), data, progress=False)

    assert len(EagerStandIn.made) == 1  # captured once, at the first full batch
    assert graphed.summary["graph_partial_batch"] == PARTIAL_BATCH == "eager"
    assert graphed.summary["graph_replays"] == 2 * 12 and graphed.summary["graph_eager_steps"] == 2 * 1
    assert "graph_replays" not in eager.summary
    # every step's lr reached the tensors the captured step reads, and the run is the eager run
    assert [h["lr"] for h in graphed.history] == pytest.approx([h["lr"] for h in eager.history])
    assert all(isinstance(h["lr"], float) for h in graphed.history)
    for p_g, p_e in zip(graphed.model.parameters(), eager.model.parameters()):
        torch.testing.assert_close(p_g, p_e)
    # the optimizer given back: float learning rates at the schedule's last value, foreach as it was
    stand_in = EagerStandIn.made[0]
    for group, tensor in zip(stand_in.optimizer.param_groups, stand_in.lr_tensors):
        assert isinstance(group["lr"], float) and group["lr"] == pytest.approx(lr_value(tensor))
        assert group["foreach"] is None


def test_a_step_of_another_shape_never_reaches_the_captured_step():
    calls = []

    def fake(model, optimizer, x, y, dtype):
        calls.append(tuple(x.shape))
        return lambda xb, yb: calls.append(("replay", len(yb))) or (torch.zeros(()), torch.zeros((), dtype=torch.long))

    model = create_model("lenet5")
    stepper = Stepper(model, make_optimizer(model, lr=0.1), batch_size=4, dtype="fp32", graph=True, make_graphed=fake)
    for n in (4, 4, 3, 4):
        stepper(torch.randn(n, 3, 32, 32), torch.randint(0, 10, (n,)))
    assert calls == [(4, 3, 32, 32), ("replay", 4), ("replay", 4), ("replay", 4)]
    assert stepper.facts() == {"graph_partial_batch": "eager", "graph_replays": 3, "graph_eager_steps": 1}


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step()` before `optimizer.step()`")
@pytest.mark.parametrize("schedule", ["cosine", "plateau"])
def test_the_schedules_write_the_lr_tensor_in_place(schedule):
    """The tensors a captured step reads keep their address and carry the rate a float schedule gives."""

    def run(tensor_lrs: bool):
        torch.manual_seed(0)
        model = create_model("lenet5")
        optimizer = make_optimizer(model, lr=0.1)
        cfg = TrainConfig(lr=0.1, epochs=3, schedule=schedule, warmup_epochs=1.0, plateau_patience=0, val_size=10)
        lr_schedule = LrSchedule(optimizer, cfg, steps_per_epoch=4)
        undo = capturable_lrs(optimizer, "cpu") if tensor_lrs else None
        tensors = [g["lr"] for g in optimizer.param_groups]
        seen, step = [], 0
        for _epoch in range(3):
            for _ in range(4):
                lr_schedule.after_step(step)
                step += 1
                seen += [lr_value(g["lr"]) for g in optimizer.param_groups]
            lr_schedule.after_epoch(step, {"val_top1_err_pct": 50.0})  # never better: the plateau drops
            seen += [lr_value(g["lr"]) for g in optimizer.param_groups]
        if tensor_lrs:
            assert all(g["lr"] is t for g, t in zip(optimizer.param_groups, tensors))
            undo()
            assert [type(g["lr"]) for g in optimizer.param_groups] == [float] * len(tensors)
        return seen

    with_tensors, with_floats = run(tensor_lrs=True), run(tensor_lrs=False)
    assert with_tensors == pytest.approx(with_floats)
    assert min(with_floats) < max(with_floats)  # the schedule moved the rate
