"""Training-step and inference throughput of every case of `bench.gate.suite`: the regression gate's suite.

Run it through the gate (`python -m bench.gate --save NAME | --compare NAME`, or
`nox -s bench -- ...`); by hand: `python -m pytest tests/benchmarks/test_throughput.py --bench-quick`.
The cases (the `case` parameter) and the `options` fixture come from conftest.py.

How a benchmark is timed: untimed warm-up steps, at least `warmup_steps` and for
at least `warmup_s` (lazy initialisation, allocator growth, cuDNN/oneDNN kernel
choice, CPU clock and thread-pool ramp-up); the fastest warm-up step after the
first sizes the rounds; then `rounds` timed rounds of as many steps as last
`min_round_s`.
Every round ends with a device synchronize inside the timed callable, so the
clock, read by pytest-benchmark when the callable returns, includes all queued
GPU work, and the next round starts with an empty queue. pytest-benchmark saves
seconds per round; images/s is the round's images over the median round.
"""

from __future__ import annotations

import math
import time

import torch

from bench.device import synchronize
from bench.gate.suite import build
from bench.train.step import autocast, grad_scaler, make_optimizer, train_step


def _time(benchmark, options, case, phase: str, steps) -> None:
    """Warm up, size the rounds, and time `steps(n)` (n training steps or inference batches)."""
    device = torch.device(options.device)

    def run(n: int) -> None:
        steps(n)
        synchronize(device)

    step_s, start = [], time.perf_counter()
    while len(step_s) < options.warmup_steps or time.perf_counter() - start < options.warmup_s:
        t0 = time.perf_counter()
        run(1)
        step_s.append(time.perf_counter() - t0)
    per_round = max(1, math.ceil(options.min_round_s / min(step_s[1:])))
    images = options.batch_size * per_round

    benchmark.group = phase
    benchmark.extra_info.update(
        case=case.id, model=case.model, knobs=dict(case.knobs), phase=phase,
        batch_size=options.batch_size, steps_per_round=per_round, images_per_round=images,
    )
    # --bench-inject-slowdown (a test hook) repeats the work, not the images counted.
    benchmark.pedantic(run, args=(per_round * options.inject_slowdown,), rounds=options.rounds, iterations=1)
    if benchmark.stats:  # None under --benchmark-disable
        benchmark.extra_info["images_per_s"] = images / benchmark.stats.stats.median


def test_train(benchmark, options, case):
    """Forward, loss, backward and SGD step on a fixed batch."""
    model, x, y = build(case, options)
    optimizer = make_optimizer(model, lr=0.01)  # its value does not change the cost
    scaler = grad_scaler(x.device, options.dtype)

    def steps(n: int) -> None:
        for _ in range(n):
            train_step(model, optimizer, x, y, dtype=options.dtype, scaler=scaler)

    _time(benchmark, options, case, "train", steps)


def test_infer(benchmark, options, case):
    """Forward only, in eval mode under `inference_mode`."""
    model, x, _ = build(case, options)
    model.eval()
    device = torch.device(options.device)

    def steps(n: int) -> None:
        with torch.inference_mode(), autocast(device, options.dtype):
            for _ in range(n):
                model(x)

    _time(benchmark, options, case, "infer", steps)
