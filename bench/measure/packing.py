"""Total training images/s of N cells packed on one device, against one cell alone, in one run.

What `ablate --jobs N` does to a sweep, measured on one model: N worker processes
(`bench.measure.worker`), each with its own `Workload` (a copy of the model, SGD
optimizer and fixed on-device batch), train at once; the total rate is
N x steps x batch over the wall time from the common start to the last worker's
end. Each worker uses 1/N of the CPU threads (`threads_per_cell`), as packed cells do.

Rounds are interleaved: every round times each N once, in an order reversed every
other round, so a slower spell of the machine falls on every N alike; the table
gives the median round and the ratio to N = 1 from the same run. Warm-up: each
worker warms up after building its workload, again at each new thread count, and
re-warms before every round (`bench.measure.worker.REWARM`); the rounds are as many
steps as last `round_s` at the first worker's warm-up pace, alone.

    python -m bench measure --model layers-80sec --packs 1,2,4,8
"""

from __future__ import annotations

import contextlib
import statistics
import time

import pandas as pd
import torch

from bench.device import pick_device, threads_per_cell
from bench.env import environment
from bench.errors import UserError
from bench.measure.speed import ENV_COLUMNS
from bench.measure.worker import Worker
from bench.measure.workload import spec
from bench.models import format_knobs
from bench.train.config import TrainConfig

WARMUP_STEPS = 3
QUICK = {"rounds": 3, "round_s": 0.5}  # `measure --packs --quick`: seconds, for a smoke run
# A model's rows are replaced together: their ratios share one run.
ROW_KEY = ["model", "knobs", "device_name", "dtype", "memory_format", "batch_size"]


def measure_packing(
    model_name: str,
    knobs: dict | None = None,
    *,
    device: str = "auto",
    packs: tuple[int, ...] = (1, 2, 4, 8),
    batch_size: int = 128,
    dtype: str = "fp32",
    channels_last: bool = False,
    rounds: int = 5,
    round_s: float = 2.0,
) -> pd.DataFrame:
    """One row per N: total and per-cell images/s (median round), and the ratio to N = 1."""
    if not packs or any(n < 1 for n in packs) or len(set(packs)) != len(packs):
        raise UserError(f"packs {packs!r}: give distinct whole numbers of 1 or more, e.g. 1,2,4,8")
    knobs = knobs or {}
    dev = pick_device(device)
    config = TrainConfig(
        model=model_name, knobs=knobs, device=str(dev), batch_size=batch_size, dtype=dtype, channels_last=channels_last
    )
    threads = torch.get_num_threads()
    timing = {"warmup_steps": WARMUP_STEPS, "round_steps": WARMUP_STEPS, "min_round_s": round_s}
    with contextlib.ExitStack() as stack:
        workers = []
        for _ in range(max(packs)):
            workers.append(Worker())
            stack.callback(workers[-1].close)
        # The first sizes the rounds, alone; then the others build and warm up, together.
        steps = workers[0].ask(setup=spec(config, "train", timing=timing))["steps_per_round"]
        for w in workers[1:]:
            w.send(setup=spec(config, "train", timing=timing))
        for w in workers[1:]:
            w.read()

        def one_round(n: int) -> float:
            active = workers[:n]
            for w in active:
                w.send(round={"steps": steps, "threads": threads_per_cell(n, threads), "barrier": True})
            for w in active:
                w.read()  # every worker warmed and waiting
            start = time.perf_counter()
            for w in active:
                w.send(go=True)
            for w in active:
                w.read()
            return time.perf_counter() - start

        seconds: dict[int, list[float]] = {n: [] for n in packs}
        order = sorted(packs)
        for _ in range(rounds):
            for n in order:
                seconds[n].append(one_round(n))
            order.reverse()
    env = environment(dev)
    rows = []
    for n in sorted(packs):
        wall = statistics.median(seconds[n])
        rows.append(
            {
                "model": model_name,
                "knobs": format_knobs(knobs),
                "packed_cells": n,
                "threads_per_cell": threads_per_cell(n, threads) if dev.type == "cpu" else None,
                "batch_size": batch_size,
                "dtype": dtype,
                "memory_format": "channels_last" if channels_last else "contiguous",
                "steps_per_cell": steps,
                "rounds": rounds,
                "median_round_s": wall,
                "train_images_per_s": n * steps * batch_size / wall,
                "per_cell_images_per_s": steps * batch_size / wall,
                **{k: env.get(k) for k in ENV_COLUMNS},
            }
        )
    table = pd.DataFrame(rows)
    one = table.loc[table["packed_cells"] == min(packs), "train_images_per_s"].iloc[0]
    table["total_vs_fewest"] = table["train_images_per_s"] / one
    return table
