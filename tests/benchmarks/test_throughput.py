"""Training-step and inference throughput of every case of `bench.gate.suite`: the regression gate's suite.

Run it through the gate (`python -m bench.gate --save NAME | --compare NAME`, or
`nox -s bench -- ...`); by hand: `python -m pytest tests/benchmarks/test_throughput.py --bench-quick`.

What one timed round is: `steps_per_round` training steps (`bench.step.train_step`,
the project's one step) or inference batches, then a device synchronize, so that
the clock, read by pytest-benchmark after the round, includes all queued GPU
work. The previous round (or warm-up) ended with a synchronize too, so none of
its work leaks in. Warm-up rounds run untimed first. The saved time is seconds
per round; `extra_info["images_per_s"]` is the round's images over the median.
The cases (the `case` parameter) and the `options` fixture come from conftest.py.
"""

from __future__ import annotations

import torch

from bench.gate.suite import build
from bench.measure.speed import synchronize
from bench.step import autocast, make_optimizer, train_step


def _time(benchmark, options, case, phase: str, run_round) -> None:
    """Time `run_round` (one round of `options.steps_per_round` steps) and record images/s."""
    images = options.batch_size * options.steps_per_round
    repeats = options.inject_slowdown

    def timed():
        for _ in range(repeats):
            run_round()
        synchronize(torch.device(options.device))

    benchmark.group = phase
    benchmark.extra_info.update(
        case=case.id, model=case.model, knobs=dict(case.knobs), phase=phase,
        batch_size=options.batch_size, images_per_round=images,
    )
    benchmark.pedantic(timed, rounds=options.rounds, warmup_rounds=options.warmup_rounds, iterations=1)
    if benchmark.stats:  # None under --benchmark-disable
        benchmark.extra_info["images_per_s"] = images / benchmark.stats.stats.median


def test_train(benchmark, options, case):
    """Forward, loss, backward and SGD step on a fixed batch."""
    model, x, y = build(case, options)
    optimizer = make_optimizer(model, lr=0.01)  # its value does not change the cost

    def run_round():
        for _ in range(options.steps_per_round):
            train_step(model, optimizer, x, y, dtype=options.dtype)

    _time(benchmark, options, case, "train", run_round)


def test_infer(benchmark, options, case):
    """Forward only, in eval mode under `inference_mode`."""
    model, x, _ = build(case, options)
    model.eval()
    device = torch.device(options.device)

    def run_round():
        with torch.inference_mode(), autocast(device, options.dtype):
            for _ in range(options.steps_per_round):
                model(x)

    _time(benchmark, options, case, "infer", run_round)

