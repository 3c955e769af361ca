"""Total training images/s of N cells packed on one device, against one cell alone, in one run.

What `ablate --jobs N` does to a sweep, measured on one model: N worker processes
(spawned, as `bench.sweep.packed` starts them), each with its own copy of the model,
SGD optimizer and fixed on-device batch, train at once; the total rate is
N x steps x batch over the wall time from the common start to the last worker's
end. Each worker uses 1/N of the CPU threads (`threads_per_cell`), as packed cells do.

Rounds are interleaved: every round times each N once, in an order reversed every
other round, so a slower spell of the machine falls on every N alike; the table
gives the median round and the ratio to N = 1 from the same run. Warm-up: each
worker runs untimed steps after building its model (allocator growth, oneDNN or
cuDNN kernel choice) and one untimed step at each new thread count.

    python -m bench measure --model layers-80sec --packs 1,2,4,8
"""

from __future__ import annotations

import multiprocessing as mp
import statistics
import time

import pandas as pd
import torch

from bench.device import pick_device, synchronize, threads_per_cell
from bench.env import environment
from bench.errors import UserError
from bench.measure.speed import ENV_COLUMNS
from bench.models import create_model, format_knobs
from bench.train.step import make_optimizer, train_step

WARMUP_STEPS = 3
QUICK = {"rounds": 3, "round_s": 0.5}  # `measure --packs --quick`: seconds, for a smoke run
# A model's rows are replaced together: their ratios share one run.
ROW_KEY = ["model", "knobs", "device_name", "dtype", "memory_format", "batch_size"]


def _worker(conn, model_name: str, knobs: dict, device: str, batch_size: int, dtype: str, channels_last: bool):
    torch.manual_seed(0)
    dev = torch.device(device)
    model = create_model(model_name, **knobs).to(dev)
    size = getattr(model, "input_size", 32)
    x = torch.randn(batch_size, 3, size, size, device=dev)
    y = torch.randint(0, 10, (batch_size,), device=dev)
    if channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, lr=0.01)

    def steps(n: int) -> None:
        for _ in range(n):
            train_step(model, optimizer, x, y, dtype=dtype)
        synchronize(dev)

    threads = None
    while (task := conn.recv()) is not None:
        n, wanted_threads = task
        if wanted_threads != threads:
            torch.set_num_threads(wanted_threads)
            threads = wanted_threads
            steps(WARMUP_STEPS)  # a new thread count re-plans oneDNN's kernels
        conn.send("ready")
        conn.recv()  # the go signal, sent to every worker of the round at once
        start = time.perf_counter()
        steps(n)
        conn.send(time.perf_counter() - start)


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
    threads = torch.get_num_threads()
    ctx = mp.get_context("spawn")
    conns, workers = [], []
    for _ in range(max(packs)):
        mine, theirs = ctx.Pipe()
        args = (theirs, model_name, knobs, str(dev), batch_size, dtype, channels_last)
        workers.append(ctx.Process(target=_worker, args=args, daemon=True))
        workers[-1].start()
        conns.append(mine)

    def one_round(n: int, steps: int) -> float:
        active = conns[:n]
        for c in active:
            c.send((steps, threads_per_cell(n, threads)))
        for c in active:
            c.recv()  # every worker warmed and waiting
        start = time.perf_counter()
        for c in active:
            c.send("go")
        for c in active:
            c.recv()
        return time.perf_counter() - start

    try:
        one_step = one_round(1, WARMUP_STEPS) / WARMUP_STEPS
        steps = max(WARMUP_STEPS, round(round_s / max(one_step, 1e-6)))
        seconds: dict[int, list[float]] = {n: [] for n in packs}
        order = sorted(packs)
        for _ in range(rounds):
            for n in order:
                seconds[n].append(one_round(n, steps))
            order.reverse()
    finally:
        for c in conns:
            c.send(None)
        for w in workers:
            w.join(timeout=30)
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
