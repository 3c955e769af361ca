"""The suite's `--bench-*` options, declared once.

`python -m bench gate` takes them on its command line (and checks them against
the baseline before anything runs), then hands them to pytest, where
`bench.gate.plugin` declares the same options. The specs are argparse keyword
arguments, which pytest's `addoption` accepts too. Nothing here imports torch,
so that building the command line stays cheap.
"""

from __future__ import annotations

OPTIONS = {
    "--bench-quick": dict(action="store_true", help="small batch and width, few rounds: a CPU run"),
    "--bench-device": dict(default="auto", help="auto | cpu | cuda | cuda:N | mps (default auto)"),
    "--bench-dtype": dict(default="fp32", help="fp32 | bf16 | fp16 autocast (default fp32)"),
    "--bench-channels-last": dict(action="store_true", help="channels_last memory format"),
    "--bench-batch-size": dict(type=int, default=None, help="images per step (default 128, quick 32)"),
    "--bench-width": dict(
        type=float, default=None, help="channel multiplier for models with a width knob (default 1, quick 0.25)"
    ),
    "--bench-rounds": dict(type=int, default=None, help="timed rounds per benchmark (default 15, quick 5)"),
    "--bench-models": dict(
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
        elif value != spec.get("default"):
            args.append(f"{flag}={value}")
    return args
