"""The suite's options, declared once.

`python -m bench gate` takes them on its command line (and checks them against
the baseline before anything runs), then hands them to pytest, where
`bench.gate.plugin` declares the same options. The specs are argparse keyword
arguments, which pytest's `addoption` accepts too. Nothing here imports torch,
so that building the command line stays cheap.
"""

from __future__ import annotations

import argparse

DATA_PATHS = ("fixed", "dataset")

# The verdict's defaults (bench.gate.compare). The band is this many combined spreads
# (IQR over median, baseline's and run's in quadrature). An IQR is 1.35 standard
# deviations of a normal spread, so 2 is about 3.8 sigma of the difference of two
# single rounds; medians of rounds vary less.
NOISE_K = 2.0
# The widest band: a benchmark this noisy still fails on a confirmed loss of more
# than 30% (one CPU thread instead of two costs 23-48%; half the GPU, 50%).
MAX_BAND = 0.30
CONFIRM = 3  # re-measurements of a suspected regression before the gate fails

OPTIONS = {
    "--bench-quick": dict(action="store_true", help="small batch and width, few rounds: a CPU run"),
    "--bench-device": dict(default="auto", help="auto | cpu | cuda | cuda:N | mps (default auto)"),
    "--bench-dtype": dict(
        default=None,
        help="fp32 | bf16 | fp16 autocast (default: on CUDA the dtype of the AlexNet study's gpu profile, else fp32)",
    ),
    "--bench-channels-last": dict(
        action=argparse.BooleanOptionalAction,
        default=None,
        help="channels_last memory format (default: on CUDA as the AlexNet study's gpu profile, else off)",
    ),
    "--bench-data": dict(
        default=None,
        help="training batches: 'dataset' (drawn from a device-resident uint8 data set, normalised and "
        "augmented on the device as the study trains) or 'fixed' (one fixed batch); default dataset on CUDA, "
        "fixed elsewhere",
    ),
    "--bench-batch-size": dict(type=int, default=None, help="images per step (default 128, quick 32)"),
    "--bench-width": dict(
        type=float, default=None, help="channel multiplier for models with a width knob (default 1, quick 0.25)"
    ),
    "--bench-rounds": dict(type=int, default=None, help="timed rounds per benchmark (default 15, quick 5)"),
    "--model": dict(
        default="", metavar="GLOBS", help="comma-separated wildcards over case ids, e.g. 'alexnet*,vgg11' (default all)"
    ),
    "--bench-inject-slowdown": dict(
        type=int,
        default=1,
        metavar="K",
        help="test hook: run every timed round K times, counting its images once (default 1)",
    ),
}


def dest(flag: str) -> str:
    """The attribute argparse and pytest store an option under: `--bench-dtype` -> `bench_dtype`."""
    return flag.lstrip("-").replace("-", "_")


def is_suite_option(arg: str) -> bool:
    """Whether a command-line argument sets one of `OPTIONS` (`--model=x`, `--no-bench-channels-last`)."""
    flag = arg.split("=", 1)[0]
    return flag in OPTIONS or flag.replace("--no-", "--", 1) in OPTIONS


def as_arguments(values) -> list[str]:
    """Command-line arguments that give pytest the option values in `values` (those not at their default).

    `--bench-device` is left out: the gate passes the device it resolved itself.
    """
    args = []
    for flag, spec in OPTIONS.items():
        if flag == "--bench-device":
            continue
        value = getattr(values, dest(flag))
        if spec.get("action") == "store_true":
            args += [flag] if value else []
        elif spec.get("action") is argparse.BooleanOptionalAction:
            args += [] if value is None else [flag if value else flag.replace("--", "--no-", 1)]
        elif value != spec.get("default"):
            args.append(f"{flag}={value}")
    return args
