"""One side of `gate --against`: a process that times the suite's workloads a round at a time, when asked.

The gate starts two workers, one from the exported commit and one from this
checkout, and alternates their rounds (`bench.gate.paired`), so that both sides
of every pair of rounds run within a fraction of a second of each other. While
one times a round the other waits on its input, using no CPU.

    python -m bench.gate.worker --bench-device=cpu [--bench-quick --bench-model=... (the suite's options)]

Protocol, version `PROTOCOL`: one JSON object per line, requests on stdin, replies
on stdout (nothing else is written there; logs go to stderr).
- At start the worker says who it is: {"protocol", "environment", "settings", "cases"}.
- {"setup": CASE, "phase": "train" | "infer"}: build the workload (`bench.gate.suite.workload`),
  warm it up and size its rounds by `bench.measure.timing`'s rule; reply {"images_per_round",
  "steps_per_round", "mode"}.
- {"round": true}: a few untimed steps (`REWARM`), then one timed round of the workload set up
  last (its steps ending with a device synchronize inside the clock, `time_rounds`); reply {"seconds"}.
- A request that fails: reply {"error": "one line"}; end of input: exit 0.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import sys

import torch

from bench.device import pick_device
from bench.env import environment
from bench.errors import UserError
from bench.gate.options import DEVICE, OPTIONS, prefixed, values_of
from bench.gate.suite import cases, options_from, workload
from bench.measure.timing import release_memory, steps_per_round, time_rounds, warm_up

# What a round means, as well as how it is asked for. Version 1 (the first commits of
# --against) included workers whose rounds were not re-warmed: a gate of this version would
# compare its re-warmed rounds with their cold ones, so it refuses them.
PROTOCOL = 2
# Before each timed round, untimed steps for this fraction of a round. A round that follows the
# other worker's starts with caches holding the other's data and this process's threads asleep:
# on a 2-core AMD EPYC, LeNet-5's training rounds in strict alternation varied 17% (sd of the log
# ratio of a pair's two rounds, same code both sides) without, 9% with a quarter round of re-warming.
REWARM = 0.25


def _reply(message: dict) -> None:
    print(json.dumps(message), flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gate.worker", description=__doc__.splitlines()[0])
    for flag, spec in OPTIONS.items():
        p.add_argument(prefixed(flag), **spec)
    p.add_argument(prefixed(DEVICE), default="auto")
    args = p.parse_args(argv)
    try:
        device = pick_device(args.bench_device)
        options = options_from(values_of(args, in_pytest=True), device)
        by_id = {c.id: c for c in cases(options)}
    except (UserError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    _reply(
        {
            "protocol": PROTOCOL,
            "environment": environment(device),
            "settings": options.recorded(),
            "cases": list(by_id),
        }
    )
    try:
        _serve(options, by_id)
    except KeyboardInterrupt:  # the gate was interrupted too, and says so
        return 130
    return 0


def _serve(options, by_id: dict) -> None:
    """Answer requests until the end of input."""
    run, steps, rewarm, timed = None, 0, 1, torch.device(options.device)
    for line in sys.stdin:
        request = json.loads(line)
        try:
            if "setup" in request:
                run = None
                release_memory(timed)  # the last workload's memory, back before the next is built
                gc.enable()
                if request["setup"] not in by_id:
                    raise ValueError(f"no case {request['setup']!r} in this suite ({', '.join(by_id)})")
                run = workload(by_id[request["setup"]], options, request["phase"])
                per_round = steps_per_round(warm_up(run, timed, options.timing), options.timing)
                steps = per_round * options.inject_slowdown  # the test hook repeats work, not images counted
                rewarm = max(1, math.ceil(per_round * REWARM))
                gc.collect()
                gc.disable()  # as the suite's --benchmark-disable-gc: no collection inside a round
                _reply(
                    {"images_per_round": options.batch_size * per_round, "steps_per_round": per_round,
                     "mode": options.mode()}
                )  # fmt: skip
            elif "round" in request:
                if run is None:
                    raise ValueError("a round was asked for before any setup")
                time_rounds(run, timed, steps=rewarm, rounds=1)  # untimed: see REWARM
                _reply({"seconds": time_rounds(run, timed, steps=steps, rounds=1).seconds[0]})
            else:
                raise ValueError(f"unknown request {request!r}")
        except (KeyError, ValueError, RuntimeError) as exc:
            _reply({"error": f"{type(exc).__name__}: {exc}"})


if __name__ == "__main__":
    raise SystemExit(main())
