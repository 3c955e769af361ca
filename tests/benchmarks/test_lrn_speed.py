"""LRN forward+backward: torch's nn.LocalResponseNorm against bench's, on AlexNet conv1 outputs.

Run: python -m pytest tests/benchmarks/test_lrn_speed.py --benchmark-only -p no:cacheprovider
Group `lrn` is the CIFAR AlexNet's conv1 output at batch 128 (128 x 96 x 32 x 32);
group `lrn-55x55` is the paper's conv1 output (96 x 55 x 55) at batch 8.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from bench.models.lrn import LocalResponseNorm

SIZE, ALPHA, BETA, K = 5, 1e-4, 0.75, 2.0  # the paper's constants
SHAPES = {"lrn": (128, 96, 32, 32), "lrn-55x55": (8, 96, 55, 55)}
IMPLEMENTATIONS = {
    "torch": lambda: nn.LocalResponseNorm(SIZE, ALPHA * SIZE, BETA, K),  # torch divides alpha by size
    "bench": lambda: LocalResponseNorm(SIZE, ALPHA, BETA, K),
}


def run_fwd_bwd(benchmark, impl: str, group: str) -> None:
    benchmark.group = group
    torch.manual_seed(0)
    x = torch.relu(torch.randn(SHAPES[group])).requires_grad_()  # LRN follows a ReLU
    grad_out = torch.randn(SHAPES[group])
    layer = IMPLEMENTATIONS[impl]()

    def step():
        (grad,) = torch.autograd.grad(layer(x), x, grad_out)
        return grad

    benchmark.pedantic(step, rounds=7, warmup_rounds=1)


@pytest.mark.parametrize("group", SHAPES)
def test_torch_lrn(benchmark, group):
    run_fwd_bwd(benchmark, "torch", group)


@pytest.mark.parametrize("group", SHAPES)
def test_bench_lrn(benchmark, group):
    run_fwd_bwd(benchmark, "bench", group)
