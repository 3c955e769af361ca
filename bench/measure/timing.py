"""How anything is timed: warm-up, round sizing, synchronized clocks, round statistics.

`bench.measure` (throughput, latency, the matmul reference) and the throughput
gate (`bench.gate`) both time through this module, so their numbers mean the
same thing. The rule, given a callable `run(n)` that does n steps (training
steps, inference batches, matmuls) on a device:

1. Warm-up (`warm_up`): untimed steps, at least `warmup_steps` and for at least
   `warmup_s` seconds. They absorb lazy initialisation, allocator growth,
   cuDNN/oneDNN kernel choice and CPU clock and thread-pool ramp-up. Each is
   followed by a device synchronize and its duration kept, to size the rounds.
2. Round sizing (`steps_per_round`): a round has at least `round_steps` steps,
   and as many as make it last `min_round_s`, judged from the fastest warm-up
   step after the first (the first carries one-time costs). Short rounds would
   time clock jitter instead of the work.
3. Timed rounds (`time_rounds`): `rounds` rounds; each runs its steps and then
   synchronizes the device inside the clock, so all queued GPU work is counted
   and the next round starts with an empty queue (CUDA and MPS run
   asynchronously; CPU ops return when done). The clock is `time.perf_counter`,
   read by a round loop that can be swapped: the gate lets pytest-benchmark run
   the same loop so that it records the rounds.
4. Statistics (`Rounds`): items per second of the median round (the reported
   rate), of the slowest and of the fastest round (the spread).

Comparing several variants of one workload (speed modes, say), `time_interleaved`
runs round r of every variant before round r+1 of any, so that the machine's drift
(clock boost, heat, other load) falls on all of them alike and their ratios hold.
`time_phases` splits a step into phases (forward, backward, optimizer) timed apart:
it synchronizes between them, which serialises work the device would overlap, so
use it to apportion a step's time, not as a throughput.
"""

from __future__ import annotations

import gc
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from bench.device import synchronize

# run_rounds(one_round, rounds) -> the seconds of each round: the timed loop.
RoundLoop = Callable[[Callable[[], None], int], Sequence[float]]


@dataclass(frozen=True)
class Timing:
    """How long to warm up and how to size and count the timed rounds."""

    warmup_steps: int  # untimed steps first, at least this many ...
    rounds: int  # timed rounds; their median is reported
    warmup_s: float = 0.0  # ... and for at least this long, seconds
    round_steps: int = 1  # a round has at least this many steps ...
    min_round_s: float = 0.0  # ... and as many as make it last this long, seconds

    def __post_init__(self):
        if self.warmup_steps < 1 or self.rounds < 1 or self.round_steps < 1:
            raise ValueError(f"timing needs warmup_steps, rounds and round_steps >= 1: {self}")
        if self.warmup_s < 0 or self.min_round_s < 0:
            raise ValueError(f"timing needs warmup_s and min_round_s >= 0: {self}")


@dataclass(frozen=True)
class Rate:
    """Items per second: of the median round, the slowest and the fastest."""

    median: float
    min: float
    max: float


@dataclass(frozen=True)
class Rounds:
    """The timed rounds of one measurement."""

    steps: int  # steps in each round
    seconds: tuple[float, ...]  # each round's duration, in order

    def median_s(self) -> float:
        return statistics.median(self.seconds)

    def per_s(self, items_per_round: float) -> Rate:
        """`items_per_round` over the median, the slowest and the fastest round time."""
        return Rate(
            items_per_round / self.median_s(), items_per_round / max(self.seconds), items_per_round / min(self.seconds)
        )


def release_memory(device: torch.device) -> None:
    """Give freed memory back (CUDA's and MPS's caches too), so the next measurement starts clean."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()


def warm_up(run: Callable[[int], None], device: torch.device, timing: Timing) -> list[float]:
    """Run untimed warm-up steps one by one; the seconds each took."""
    step_s, start = [], time.perf_counter()
    while len(step_s) < timing.warmup_steps or time.perf_counter() - start < timing.warmup_s:
        t0 = time.perf_counter()
        run(1)
        synchronize(device)
        step_s.append(time.perf_counter() - t0)
    return step_s


def steps_per_round(warmup_step_s: Sequence[float], timing: Timing) -> int:
    """Steps in a timed round: `round_steps`, or more to last `min_round_s` at the fastest warm-up pace."""
    if not timing.min_round_s:
        return timing.round_steps
    fastest = min(warmup_step_s[1:] or warmup_step_s)
    return max(timing.round_steps, math.ceil(timing.min_round_s / max(fastest, 1e-9)))


def _perf_counter_loop(one_round: Callable[[], None], rounds: int) -> list[float]:
    seconds = []
    for _ in range(rounds):
        start = time.perf_counter()
        one_round()
        seconds.append(time.perf_counter() - start)
    return seconds


def time_rounds(
    run: Callable[[int], None],
    device: torch.device,
    *,
    steps: int,
    rounds: int,
    loop: RoundLoop = _perf_counter_loop,
) -> Rounds:
    """`rounds` timed rounds of `run(steps)`, each ending with a device synchronize inside the clock."""

    def one_round() -> None:
        run(steps)
        synchronize(device)

    synchronize(device)  # the first round starts with an empty queue, like every later one
    return Rounds(steps, tuple(loop(one_round, rounds)))


def measure(run: Callable[[int], None], device: torch.device, timing: Timing) -> Rounds:
    """Warm up, size the rounds and time them: the whole rule in one call."""
    step_s = warm_up(run, device, timing)
    return time_rounds(run, device, steps=steps_per_round(step_s, timing), rounds=timing.rounds)


def time_interleaved(
    runs: Sequence[Callable[[int], None]],
    device: torch.device,
    *,
    steps: Sequence[int],
    rounds: int,
) -> list[Rounds]:
    """Timed rounds of each `runs[i](steps[i])`, round r of every run before round r+1 of any.

    Each round ends with a device synchronize inside its clock, as in `time_rounds`.
    """
    if len(steps) != len(runs):
        raise ValueError(f"{len(runs)} runs but {len(steps)} step counts")
    seconds: list[list[float]] = [[] for _ in runs]
    synchronize(device)
    for _ in range(rounds):
        for run, n, taken in zip(runs, steps, seconds):
            start = time.perf_counter()
            run(n)
            synchronize(device)
            taken.append(time.perf_counter() - start)
    return [Rounds(n, tuple(taken)) for n, taken in zip(steps, seconds)]


def time_phases(
    phases: Sequence[Callable[[], None]],
    device: torch.device,
    *,
    steps: int,
    rounds: int,
) -> list[Rounds]:
    """Per phase, `rounds` rounds of `steps` steps; a step calls every phase in order.

    Each phase is clocked on its own, from its call to the device synchronize after it.
    """
    seconds: list[list[float]] = [[] for _ in phases]
    synchronize(device)
    for _ in range(rounds):
        taken = [0.0] * len(phases)
        for _ in range(steps):
            for i, phase in enumerate(phases):
                start = time.perf_counter()
                phase()
                synchronize(device)
                taken[i] += time.perf_counter() - start
        for per_phase, t in zip(seconds, taken):
            per_phase.append(t)
    return [Rounds(steps, tuple(per_phase)) for per_phase in seconds]
