"""A worker process that times one workload a round at a time, when asked; and `Worker`, its client.

`gate --against` starts two, one from an exported commit and one from this checkout, and
alternates their rounds; `measure --packs` starts N of one checkout and times them together.
While one worker waits for its next request it uses no CPU.

    python -m bench.measure.worker

Protocol, version `PROTOCOL`: one JSON object per line, requests on stdin, replies on stdout
(nothing else is written there; logs go to stderr).
- At start: {"protocol": PROTOCOL}.
- {"environment": DEVICE}: reply `bench.env.environment` of that device.
- {"setup": SPEC} (`bench.measure.workload.spec`: TrainConfig fields, phase, batches, timing):
  set the config's backend flags, build the `Workload`, warm it up and size its rounds by
  `bench.measure.timing`'s rule; reply {"images_per_round", "steps_per_round"}.
- {"round": {}}: `REWARM` of a round's steps untimed, then one timed round of the workload set
  up last (its steps ending with a device synchronize inside the clock); reply {"seconds"}.
  Optional: "steps" (else the setup's), "threads" (set first; a new count is warmed up
  again), "barrier" (reply {"ready": true} after the re-warming and start the clock only on
  the next request, {"go": true}: packed workers start together).
- A request that fails: reply {"error": "one line"}; end of input: exit 0. A worker `Worker`
  starts dies with the process that started it (Linux: the parent-death signal, `BOOT`;
  elsewhere at its next read).
"""

from __future__ import annotations

import gc
import json
import math
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from bench.device import pick_device
from bench.env import environment
from bench.errors import UserError
from bench.measure.timing import Timing, release_memory, steps_per_round, time_rounds, warm_up
from bench.measure.workload import Workload
from bench.train.config import TrainConfig
from bench.train.modes import apply_backend_flags

# What a round means, as well as how it is asked for; a client refuses a worker of another version.
PROTOCOL = 3
# Before each timed round, untimed steps for this fraction of a round. A round that follows another
# process's starts with caches holding the other's data and this process's threads asleep: on a
# 2-core AMD EPYC, LeNet-5's training rounds in strict alternation varied 17% (sd of the log ratio
# of a pair's two rounds, same code both sides) without, 9% with a quarter round of re-warming.
REWARM = 0.25
# How a client starts a worker: set to be killed when the client dies (Linux: the parent-death signal,
# kill -9 of the client included), before anything slow is imported, then run this module.
BOOT = """import ctypes, os, runpy, signal, sys
if sys.platform.startswith("linux"):
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
if os.getppid() != int(sys.argv.pop(1)):
    sys.exit(1)  # the client died before the signal was set
runpy.run_module("bench.measure.worker", run_name="__main__", alter_sys=True)
"""
ROOT = Path(__file__).resolve().parents[2]  # the folder holding this `bench` package


# (run, device, images per step) of a setup request's spec
Build = Callable[[dict], tuple[Callable[[int], None], torch.device, int]]


def build(spec: dict) -> tuple[Callable[[int], None], torch.device, int]:
    config = TrainConfig(**spec["config"])
    device = pick_device(config.device)
    apply_backend_flags(device, config.cudnn_benchmark, config.tf32)  # this process is the workload's own
    work = Workload(config, batches=spec.get("batches", "fixed"))
    return work.run(spec["phase"]), device, config.batch_size


def serve(lines: Iterator[str], reply: Callable[[dict], None], build: Build = build) -> None:
    """Answer requests until the end of input."""
    run = device = timing = None
    steps = 1
    for line in lines:
        request = json.loads(line)
        try:
            if "environment" in request:
                reply(environment(pick_device(request["environment"])))
            elif "setup" in request:
                run = None
                if device is not None:
                    release_memory(device)  # the last workload's memory, back before the next is built
                gc.enable()
                spec = request["setup"]
                run, device, images = build(spec)
                timing = Timing(**{"warmup_steps": 2, "rounds": 1, **spec.get("timing", {})})
                steps = steps_per_round(warm_up(run, device, timing), timing)
                gc.collect()
                gc.disable()  # as the suite's --benchmark-disable-gc: no collection inside a round
                reply({"images_per_round": images * steps, "steps_per_round": steps})
            elif "round" in request:
                if run is None:
                    raise ValueError("a round was asked for before any setup")
                ask = request["round"] or {}
                threads = ask.get("threads")
                if threads is not None and threads != torch.get_num_threads():
                    torch.set_num_threads(threads)
                    warm_up(run, device, timing)  # a new thread count re-plans oneDNN's kernels
                n = ask.get("steps", steps)
                time_rounds(run, device, steps=max(1, math.ceil(n * REWARM)), rounds=1)  # untimed: see REWARM
                if ask.get("barrier"):
                    reply({"ready": True})
                    if json.loads(next(lines)) != {"go": True}:
                        raise ValueError("a barrier round waits for {'go': true}")
                reply({"seconds": time_rounds(run, device, steps=n, rounds=1).seconds[0]})
            else:
                raise ValueError(f"unknown request {request!r}")
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:  # UserError is a ValueError
            reply({"error": f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"})


def _reply(message: dict) -> None:
    print(json.dumps(message), flush=True)


def main() -> int:
    _reply({"protocol": PROTOCOL})
    try:
        serve(iter(sys.stdin), _reply)
    except (KeyboardInterrupt, BrokenPipeError):  # the client was interrupted too, and says so
        return 130
    return 0


class WorkerFailed(Exception):
    def __init__(self, where: str, status: int | None, error: str | None = None):
        self.where, self.status, self.error = where, status, error
        super().__init__(error or f"exited with status {status}")


class Worker:
    """A worker process running the `bench` package of `root` (this one's, or an exported commit's)."""

    def __init__(self, root: Path = ROOT, where: str = "this checkout"):
        self.where = where
        path = os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))
        env = {**os.environ, "PYTHONPATH": path}
        # stderr passes through: the worker's warnings and a failure's reason reach the user
        self.process = subprocess.Popen(
            [sys.executable, "-c", BOOT, str(os.getpid())],
            cwd=root,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self._hello: dict | None = None

    @property
    def hello(self) -> dict:
        """What the worker said at start: read when first asked for, so that several start at once."""
        if self._hello is None:
            self._hello = self.read()
            if self._hello.get("protocol") != PROTOCOL:
                raise UserError(
                    f"the worker of {self.where} speaks protocol {self._hello.get('protocol')}, this one {PROTOCOL}: "
                    "compare a commit that predates it with a saved baseline instead"
                )
        return self._hello

    def send(self, **request) -> None:
        self.hello  # noqa: B018 -- the greeting comes first
        try:
            self.process.stdin.write(json.dumps(request) + "\n")
            self.process.stdin.flush()
        except BrokenPipeError:
            raise WorkerFailed(self.where, self.process.wait()) from None

    def read(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            raise WorkerFailed(self.where, self.process.wait())
        reply = json.loads(line)
        if "error" in reply:
            raise WorkerFailed(self.where, None, reply["error"])
        return reply

    def ask(self, **request) -> dict:
        self.send(**request)
        return self.read()

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


if __name__ == "__main__":
    raise SystemExit(main())
