"""Training-step and inference throughput of every case of `bench.gate.suite`: the regression gate's suite.

Run it through the gate (`python -m bench gate --save NAME | --compare NAME`, or
`nox -s bench -- ...`); by hand, see `bench.gate.plugin`, which gives it its cases
(the `case` parameter) and the `options` fixture.

A thin adapter: the timed subject is the case's `bench.measure.workload.Workload`,
timed by the rule of `bench.measure.timing` (warm-up and round sizing are timing's;
the timed rounds are timing's loop run by pytest-benchmark, `benchmark.pedantic`,
one call per round, so that it records and saves every round). images/s is the
round's images over the median round.
"""

from __future__ import annotations

import torch

from bench.measure.timing import steps_per_round, time_rounds, warm_up
from bench.train.modes import apply_backend_flags


def _pytest_benchmark_loop(benchmark):
    """timing's round loop, run by pytest-benchmark: the seconds of each round, as it recorded them."""

    def loop(one_round, rounds: int) -> list[float]:
        benchmark.pedantic(one_round, rounds=rounds, iterations=1)
        return list(benchmark.stats.stats.data) if benchmark.stats else []  # no stats under --benchmark-disable

    return loop


def _time(benchmark, options, case, phase: str) -> None:
    """Build the case's workload, warm up, size the rounds, and time `phase` (training steps or inference batches)."""
    device, timing = torch.device(options.device), options.timing
    apply_backend_flags(device, bool(options.cudnn_benchmark), bool(options.tf32))
    run = options.workload(case).run(phase)
    per_round = steps_per_round(warm_up(run, device, timing), timing)
    images = options.batch_size * per_round

    benchmark.group = phase
    benchmark.extra_info.update(
        mode=options.mode(),
        case=case.id,
        model=case.model,
        knobs=dict(case.knobs),
        phase=phase,
        batch_size=options.batch_size,
        steps_per_round=per_round,
        images_per_round=images,
    )
    rounds = time_rounds(run, device, steps=per_round, rounds=timing.rounds, loop=_pytest_benchmark_loop(benchmark))
    if rounds.seconds:
        benchmark.extra_info["images_per_s"] = rounds.per_s(images).median


def test_train(benchmark, options, case):
    """Taking a batch by the mode's data path, then forward, loss, backward and SGD step."""
    _time(benchmark, options, case, "train")


def test_infer(benchmark, options, case):
    """Forward only, in eval mode under `inference_mode`."""
    _time(benchmark, options, case, "infer")
