"""The tiny inputs that many tests (and scripts/probe_inputs.py) share: one copy of each.

- `TRAIN_ARGS`: `train`'s options for a run of seconds: 2 training and 1 test synthetic image per
  class, one epoch, on the CPU, no progress bar.
- `config(**changes)`: a `TrainConfig` of 200 synthetic training images (20 per class) and 50
  validation images, at a rate checked to learn in 4 epochs.
- `study_toml(...)`: a study file of the tiny net on synthetic data whose smoke profile measures
  nothing: by default 2 training and 1 test image per class, one epoch, factor activation.
- `cli_env(cache)`: the environment a command runs in as a new user's would: no BENCH_ or RAY_
  settings from the shell, its own data cache, and downloads that fail at once.
- `CHECKPOINT_EDITS`: a saved checkpoint edited by hand, each edit by name.

Tests import them from here (`from tests import tiny`); `tests/conftest.py`'s `tiny_study_file`
writes a study file into the test's folder. Nothing here imports torch or pytest at import time,
so scripts/probe_inputs.py reads it without either.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

TRAIN_ARGS = [
    "--data",
    "synthetic",
    "--train-per-class",
    "2",
    "--test-per-class",
    "1",
    "--epochs",
    "1",
    "--batch-size",
    "10",
    "--augment",
    "none",
    "--device",
    "cpu",
    "--no-progress",
]

CONFIG = {
    "data": "synthetic",
    "train_per_class": 20,
    "test_per_class": 5,
    "val_size": 50,
    "epochs": 4,
    "batch_size": 10,
    "lr": 0.01,
    "schedule": "constant",
    "augment": "none",
    "device": "cpu",
    "seed": 0,
}


def config(**changes):
    """`CONFIG` as a TrainConfig, with `changes`."""
    from bench.train.config import TrainConfig

    return TrainConfig(**{**CONFIG, **changes})


ACTIVATION = {"activation": ("knobs.activation", ["relu", "tanh"])}
STUDY_BASE = {
    "model": "layers-80sec",
    "data": "synthetic",
    "train_per_class": 2,
    "test_per_class": 1,
    "batch_size": 10,
    "epochs": 1,
    "augment": "none",
}


def _toml(value) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    return repr(value)


def study_toml(
    *,
    name: str = "tiny",
    design: str = "factorial",
    seeds=(0,),
    target: dict | None = None,
    factors: dict | None = None,
    lr: list | None = None,
    **base,
) -> str:
    """A study file's text: `STUDY_BASE` with `base` as [base], `factors` (name -> (key, levels);
    default the activation) and, with `lr`, a learning-rate factor after them."""
    factors = dict(ACTIVATION if factors is None else factors)
    if lr is not None:
        factors["lr"] = ("lr", list(lr))
    study = [f"name = {_toml(name)}", f"design = {_toml(design)}", f"seeds = {_toml(list(seeds))}"]
    if target is not None:
        study.append(f"target = {_toml(target)}")
    lines = ["[study]", *study, "", "[base]", *(f"{k} = {_toml(v)}" for k, v in {**STUDY_BASE, **base}.items())]
    for fname, (key, levels) in factors.items():
        lines += ["", f"[factors.{fname}]", f"key = {_toml(key)}", f"levels = {_toml(list(levels))}"]
    lines += ["", "[profiles.smoke]", 'measure = "none"']
    return "\n".join(lines) + "\n"


def cli_env(cache: Path) -> dict:
    """This process's environment for a command, as a new user's would be (see the module docstring)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BENCH_", "RAY_"))}
    env.update(
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
        BENCH_CACHE=str(cache),
        BENCH_GATE_STORAGE=str(cache / "gate"),  # never the checkout's .benchmarks
        OMP_NUM_THREADS="1",
        # A download fails at once, network or not: nothing listens on port 9.
        https_proxy="http://127.0.0.1:9",
        HTTPS_PROXY="http://127.0.0.1:9",
        http_proxy="http://127.0.0.1:9",
        HTTP_PROXY="http://127.0.0.1:9",
    )
    return env


def _reshape_first_weight(raw: dict) -> None:
    name = next(iter(raw["state_dict"]))
    raw["state_dict"][name] = raw["state_dict"][name].flatten()


# A checkpoint's contents (as torch.load gives them) edited by hand; "text" replaces the file.
CHECKPOINT_EDITS = {
    "a text file": "weights: see the other file\n",
    "wrong class count": lambda raw: raw.update(classes=raw["classes"][:5]),
    "a dropped weight": lambda raw: raw["state_dict"].pop(next(iter(raw["state_dict"]))),
    "a reshaped weight": _reshape_first_weight,
    "missing model name": lambda raw: raw["model"].pop("name"),
    'input size "big"': lambda raw: raw["model"].update(input_size="big"),
    'normalisation "zca"': lambda raw: raw["normalization"].update(mode="zca"),
}
