"""Several cells at once on one device, without Ray: `ablate --jobs N`.

Small nets leave most of a GPU idle (a launch-bound step uses a fraction of a percent
of its peak), and a 2-core laptop idles a core while one small cell waits on
memory. `PackedExecutor` keeps N worker processes busy on the same device, each
running one cell at a time from a shared queue, and yields each result as it
arrives; only the sweep's process writes files, as with every executor.

Each worker gets the parent's CPU threads divided by N, so N packed cells do not
oversubscribe the cores. On a GPU the workers share it as separate CUDA contexts;
NVIDIA's MPS (`nvidia-cuda-mps-control -d`), where the driver has it, lets their
kernels run concurrently instead of time-sliced. Ray stays the engine for several
GPUs and clusters.

A worker that dies (killed, out of memory, a crash in native code) turns its cell
into an `error` row naming the exit code, and a new worker takes its place.
Ctrl-C stops the workers; cells already yielded are the caller's, and the sweep
merges them as it does for any executor.

Timing caveat, recorded in every row (`packed_cells`: the cells run at once, N or
the fewer there were to run): the throughput a cell measures while others run
beside it is its share of the device, not the device's speed for that model alone.
"""

from __future__ import annotations

import multiprocessing as mp
import signal
from collections import deque
from collections.abc import Iterator
from multiprocessing.connection import wait

import torch

from bench.device import pick_device, threads_per_cell
from bench.env import environment
from bench.errors import UserError
from bench.train.result import ERROR


def _worker(conn, fn, device: str, threads: int, jobs: int) -> None:
    # The parent handles Ctrl-C and stops the workers; a worker interrupted mid-cell would
    # only turn its cell into an error row.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(threads)
    while (cell := conn.recv()) is not None:
        result = fn(cell, device)
        result.row["packed_cells"] = jobs
        conn.send(result)  # into the pipe before the next cell: a later crash cannot lose it


class PackedExecutor:
    """Up to `jobs` cells at a time on one device, each in its own worker process."""

    def __init__(self, device: str = "auto", jobs: int = 2):
        if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
            raise UserError(f"--jobs {jobs!r} is not a number of cells; give a whole number, 1 or more")
        self.device, self.jobs = device, jobs

    def environment(self) -> dict:
        return {"executor": "local", "packed_cells": self.jobs, **environment(pick_device(self.device))}

    def run(self, cells, fn) -> Iterator:
        ctx = mp.get_context("spawn")  # fork would copy a process that may hold CUDA state and threads
        todo = deque(cells)
        # What each row's packed_cells records: the cells that run at once, never more than there are
        # (a confirming stage of two cells under --jobs 8 runs two).
        packed = max(1, min(self.jobs, len(todo)))
        threads = threads_per_cell(packed)
        busy: dict = {}  # parent's end of a worker's pipe -> (process, the cell it runs)

        def give_work(conn, process) -> None:
            if todo:
                cell = todo.popleft()
                conn.send(cell)
                busy[conn] = (process, cell)
            else:
                conn.send(None)
                process.join()

        def start_worker() -> None:
            mine, theirs = ctx.Pipe()
            process = ctx.Process(target=_worker, args=(theirs, fn, self.device, threads, packed), daemon=True)
            process.start()
            theirs.close()
            give_work(mine, process)

        try:
            for _ in range(packed):
                start_worker()
            while busy:
                for conn in wait(list(busy)):  # a result, or end of file when a worker died
                    process, cell = busy.pop(conn)
                    try:
                        result = conn.recv()
                    except EOFError:
                        process.join()
                        result = fn.failed(
                            cell, ERROR, f"the cell's worker process died (exit code {process.exitcode})"
                        )
                        result.row["packed_cells"] = packed
                        yield result
                        if todo:
                            start_worker()
                        continue
                    yield result
                    give_work(conn, process)
        finally:
            for process, _ in busy.values():
                if process.is_alive():
                    process.terminate()
            for process, _ in busy.values():
                process.join(timeout=10)
