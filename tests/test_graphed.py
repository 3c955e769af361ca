"""Whole-step CUDA graphs (bench.train.graphed): refused clearly where they cannot run; on a GPU
(the lease script runs this file there), replaying the captured step trains exactly as eager steps do."""

from __future__ import annotations

import copy

import pytest
import torch

from bench.errors import UserError
from bench.measure.modes import Mode, measure_modes, parse_mode
from bench.measure.speed import settings_for
from bench.models import create_model
from bench.train.graphed import GraphedStep, graph_unavailable_reason
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
