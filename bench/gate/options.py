"""The suite's options, declared once.

`python -m bench gate` takes them on its command line, under the names `train`
and `measure` give the same things (`--quick`, `--dtype`, `--channels-last`,
`--batch-size`, `--model`), and checks them against the baseline before anything
runs. It then hands them to the pytest run that times the suite, where
`bench.gate.plugin` declares them with the prefix `--bench-` (`PYTEST_PREFIX`) so
that they cannot meet an option of pytest's or of another plugin; the prefix
stays inside that run. The specs are argparse keyword arguments, which pytest's
`addoption` accepts too. Nothing here imports torch, so that building the
command line stays cheap.
"""

from __future__ import annotations

import argparse

DATA_PATHS = ("fixed", "dataset")
PYTEST_PREFIX = "--bench-"

# The verdict's defaults (bench.gate.compare). The band is this many combined spreads
# (IQR over median, baseline's and run's in quadrature). An IQR is 1.35 standard
# deviations of a normal spread, so 2 is about 3.8 sigma of the difference of two
# single rounds; medians of rounds vary less.
NOISE_K = 2.0
# The widest band: a benchmark this noisy still fails on a confirmed loss of more
# than 30% (one CPU thread instead of two costs 23-48%; half the GPU, 50%).
MAX_BAND = 0.30
CONFIRM = 3  # re-measurements of a suspected regression before the gate fails
# Seconds before the second re-measurement, twice that before the third, and so on: a slow
# phase of the machine (one lasted through an immediate re-measurement on a 2-core EPYC VM)
# passes, a slower code does not. A run with nothing suspect waits nothing.
CONFIRM_PAUSE = 10.0

# The gate's own `--device` is the suite's device: the pytest run gets the one it resolved.
DEVICE = "--device"

OPTIONS = {
    "--quick": dict(action="store_true", help="small batch and width, few rounds: a CPU run"),
    "--dtype": dict(
        default=None,
        help="fp32 | bf16 | fp16 autocast (default: on CUDA the dtype of the AlexNet study's gpu profile, else fp32)",
    ),
    "--channels-last": dict(
        action=argparse.BooleanOptionalAction,
        default=None,
        help="channels_last memory format (default: on CUDA as the AlexNet study's gpu profile, else off)",
    ),
    # Not --data: that is the data set in train, ablate and evaluate; this is how the
    # timed steps get their batches (recorded in a baseline as its `data` setting).
    "--batches": dict(
        default=None,
        metavar="KIND",
        help="training batches: 'dataset' (drawn from a device-resident uint8 data set, normalised and "
        "augmented on the device as the study trains) or 'fixed' (one fixed batch); default dataset on CUDA, "
        "fixed elsewhere",
    ),
    "--batch-size": dict(type=int, default=None, help="images per step (default 128, quick 32)"),
    "--width": dict(
        type=float, default=None, help="channel multiplier for models with a width knob (default 1, quick 0.25)"
    ),
    "--rounds": dict(type=int, default=None, help="timed rounds per benchmark (default 15, quick 5)"),
    "--model": dict(
        default="",
        metavar="PATTERN",
        help="comma-separated wildcards over case ids, e.g. 'alexnet*,vgg11' (default all)",
    ),
    "--inject-slowdown": dict(
        type=int,
        default=1,
        metavar="K",
        help="test hook: run every timed round K times, counting its images once (default 1)",
    ),
}


def dest(flag: str) -> str:
    """The attribute argparse and pytest store an option under: `--batch-size` -> `batch_size`."""
    return flag.lstrip("-").replace("-", "_")


def prefixed(flag: str) -> str:
    """The option's name in the suite's pytest run: `--quick` -> `--bench-quick`."""
    return PYTEST_PREFIX + flag.lstrip("-")


def values_of(namespace, *, in_pytest: bool = False) -> dict:
    """The options' values, keyed by `dest` of their gate flag, from the gate's arguments or pytest's options."""
    return {dest(flag): getattr(namespace, dest(prefixed(flag) if in_pytest else flag)) for flag in OPTIONS}


def suite_option(arg: str) -> str | None:
    """The gate flag a pytest argument would set, named as the gate's or as pytest's (`--bench-quick` -> `--quick`)."""
    flag = arg.split("=", 1)[0].replace("--no-", "--", 1)
    if flag.startswith(PYTEST_PREFIX):
        flag = "--" + flag[len(PYTEST_PREFIX) :]
    return flag if flag in OPTIONS or flag == DEVICE else None


def as_arguments(values) -> list[str]:
    """pytest arguments that give the suite the gate's option values in `values` (those not at their default)."""
    args = []
    for flag, spec in OPTIONS.items():
        value, name = getattr(values, dest(flag)), prefixed(flag)
        if spec.get("action") == "store_true":
            args += [name] if value else []
        elif spec.get("action") is argparse.BooleanOptionalAction:
            args += [] if value is None else [name if value else name.replace("--", "--no-", 1)]
        elif value != spec.get("default"):
            args.append(f"{name}={value}")
    return args
