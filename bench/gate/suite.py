"""What the gate benchmarks, at what size, and what makes two runs comparable.

Cases: every registered architecture, and the model variants of the AlexNet
study (`ablations/alexnet.toml`: its baseline and each of the paper's design
choices flipped alone from it), read from the study file so that the gate
benchmarks exactly what the study trains. A study case is named by its knobs
that differ from the registered model's defaults (`alexnet:groups=2`,
`alexnet:activation=tanh,groups=2`); a variant equal to a registered model
(the one-tower level: plain `alexnet`) is that model's case, and levels that
change no model (augmentation) add none. The 224/227-input models
(`alexnet-paper`, `alexnet-tv`) join only outside quick mode: at that input
size one CPU step takes seconds.

Each case is timed twice, as a training step (`bench.train.step.train_step`: forward,
loss, backward, SGD step) and as an inference batch (eval, `inference_mode`),
by the rule of `bench.measure.timing`: untimed warm-up steps (at least
`warmup_steps`, for at least `warmup_s`), then `rounds` timed rounds, each as
many steps as last `min_round_s` at the fastest warm-up pace and ending with a
device synchronize. The gate compares the median round, in images/s.

The mode: on CUDA the suite times the way the studies train there (`study_mode`:
the dtype and memory format of the AlexNet study's `gpu` profile, cuDNN autotuning
and TF32 as `TrainConfig` sets them, and training batches drawn from a uint8 data
set held on the GPU, normalised and augmented there as `bench.data` does in
training). Elsewhere it keeps fp32, contiguous tensors and one fixed batch, the
precision the CPU profiles pin. Each option can override its part.

A baseline is comparable with a run when both come from the same device (the
`device_id`: the device type and its model name, e.g. `cuda-nvidia-h100-80gb-hbm3`)
and measure the same thing (`MEASUREMENT_KEYS`: the mode, batch and width). Software versions and the CPU thread count are recorded but are not
part of the identity: a slowdown they cause is a regression the gate should
show, and re-saving the baseline accepts it.
"""

from __future__ import annotations

import fnmatch
import functools
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn

from bench.data import Dataset, parse_augment
from bench.data.augment import Normalizer
from bench.device import DTYPES
from bench.errors import UserError
from bench.gate.options import DATA_PATHS
from bench.measure.speed import MEMORY_FORMATS
from bench.measure.timing import Timing
from bench.models import create_model, crop_from_of, format_knobs, input_size_of, list_models, model_knobs
from bench.models.common import WIDTH_RANGE
from bench.studies import StudyFile, studies_dir
from bench.train.config import TrainConfig
from bench.train.modes import apply_backend_flags
from bench.train.step import autocast, grad_scaler, make_optimizer, train_step


@dataclass(frozen=True)
class Preset:
    """Sizes and timing; the options override batch, width and rounds."""

    batch_size: int  # images per step
    width: float  # channel multiplier, for models with a `width` knob
    timing: Timing  # warm-up (at least 2 steps: the first is not used to size rounds) and rounds


# Full: the paper's batch at full width, 15 rounds of at least 50 ms. Quick: the
# whole suite in about 40 s on a 2-core CPU, still compute-bound enough that the
# thread count shows (1 thread instead of 2 costs most cases 25-50%). Rounds of
# at least 50 ms keep the smallest models (LeNet-5: a few milliseconds a step)
# from timing clock jitter.
FULL = Preset(batch_size=128, width=1.0, timing=Timing(warmup_steps=10, warmup_s=0.5, rounds=15, min_round_s=0.05))
QUICK = Preset(batch_size=32, width=0.25, timing=Timing(warmup_steps=2, warmup_s=0.2, rounds=5, min_round_s=0.05))

# Two runs measure the same thing only if these settings agree (besides the device).
MEASUREMENT_KEYS = ("dtype", "memory_format", "cudnn_benchmark", "tf32", "data", "augment", "batch_size", "width")
# The part of the settings that is the training mode, also recorded in every benchmark's extra_info.
MODE_KEYS = MEASUREMENT_KEYS[:6]
DATASET_BATCHES = 8  # the device-resident data set holds this many batches: an epoch, reshuffled, then again

# The study whose model variants are benchmarked, and the profile whose cells are
# read: `gpu`, the paper-scale one (the gate sets the width itself).
STUDY, STUDY_PROFILE = "alexnet", "gpu"
LARGE_INPUT = 64  # models built for inputs above this side are left out of quick mode


@dataclass(frozen=True)
class Case:
    model: str
    knobs: tuple[tuple[str, object], ...] = ()

    @property
    def id(self) -> str:
        """`alexnet`, `alexnet:groups=2,norm=none`: the benchmark's name; keep it stable, baselines are keyed on it."""
        if not self.knobs:
            return self.model
        return f"{self.model}:{format_knobs(dict(self.knobs))}"


@dataclass(frozen=True)
class Options:
    """The suite's settings for one run, resolved once from the pytest options and recorded with it."""

    device: str
    dtype: str
    memory_format: str
    batch_size: int
    width: float
    warmup_steps: int
    warmup_s: float
    rounds: int
    min_round_s: float
    quick: bool
    models: tuple[str, ...]  # shell wildcards over case ids; empty = every case
    cudnn_benchmark: bool | None = None  # CUDA only (None elsewhere): cuDNN times its algorithms per shape
    tf32: bool | None = None  # CUDA only: fp32 matmuls and convolutions on TF32 tensor cores
    data: str = "fixed"  # fixed: one batch; dataset: batches drawn from a device-resident data set
    augment: str = "none"  # applied to the drawn batches (data = dataset), as in training
    # Test hook: every timed round runs its steps this many times while counting
    # the images once, so the run is that many times slower under the same names.
    # tests/test_gate.py uses it to prove that the gate fails; never set it otherwise.
    inject_slowdown: int = 1

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ValueError(f"--dtype {self.dtype!r} is not valid; choose one of: {', '.join(DTYPES)}")
        if self.data not in DATA_PATHS:
            raise ValueError(f"--batches {self.data!r} is not valid; choose one of: {', '.join(DATA_PATHS)}")
        parse_augment(self.augment)
        if self.memory_format not in MEMORY_FORMATS:
            raise ValueError(f"memory format {self.memory_format!r} is not one of: {', '.join(MEMORY_FORMATS)}")
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be at least 1, got {self.batch_size}")
        if not WIDTH_RANGE[0] <= self.width <= WIDTH_RANGE[1]:
            raise ValueError(f"--width must be from {WIDTH_RANGE[0]:g} to {WIDTH_RANGE[1]:g}, got {self.width}")
        if self.rounds < 1:
            raise ValueError(f"--rounds must be at least 1, got {self.rounds}")
        if self.warmup_steps < 2 or self.warmup_s < 0 or self.min_round_s < 0:
            raise ValueError(f"warm-up needs at least 2 steps and round lengths >= 0: {self}")
        if self.inject_slowdown < 1:
            raise ValueError(f"--inject-slowdown must be at least 1, got {self.inject_slowdown}")

    def recorded(self) -> dict:
        """Plain values, stored in the run's machine info."""
        return {**asdict(self), "models": list(self.models)}

    def mode(self) -> dict:
        """The training mode timed: precision, memory format, backend flags and data path."""
        return {k: getattr(self, k) for k in MODE_KEYS}

    @property
    def timing(self) -> Timing:
        return Timing(
            warmup_steps=self.warmup_steps, warmup_s=self.warmup_s, rounds=self.rounds, min_round_s=self.min_round_s
        )


def options_from(values: dict, device: torch.device) -> Options:
    """`resolve_options` from the option values of `bench.gate.options.values_of` (`quick`, `dtype`, ...)."""
    return resolve_options(
        device=device,
        quick=values["quick"],
        dtype=values["dtype"],
        channels_last=values["channels_last"],
        data=values["batches"],
        batch_size=values["batch_size"],
        width=values["width"],
        rounds=values["rounds"],
        models=values["model"],
        inject_slowdown=values["inject_slowdown"],
    )


def resolve_options(
    *,
    device: torch.device,
    quick: bool = False,
    dtype: str | None = None,
    channels_last: bool | None = None,
    data: str | None = None,
    batch_size: int | None = None,
    width: float | None = None,
    rounds: int | None = None,
    models: str = "",
    inject_slowdown: int = 1,
) -> Options:
    """The preset for `quick` and the device's mode (`study_mode`), overridden by the values given.

    `ValueError` names a bad value.
    """
    preset = QUICK if quick else FULL
    mode = study_mode(torch.device(device))
    if channels_last is None:
        channels_last = mode["channels_last"]
    return Options(
        device=str(device),
        dtype=mode["dtype"] if dtype is None else dtype,
        memory_format="channels_last" if channels_last else "contiguous",
        cudnn_benchmark=mode["cudnn_benchmark"],
        tf32=mode["tf32"],
        data=mode["data"] if data is None else data,
        augment=mode["augment"],
        batch_size=preset.batch_size if batch_size is None else batch_size,
        width=preset.width if width is None else width,
        warmup_steps=preset.timing.warmup_steps,
        warmup_s=preset.timing.warmup_s,
        rounds=preset.timing.rounds if rounds is None else rounds,
        min_round_s=preset.timing.min_round_s,
        quick=quick,
        models=tuple(p.strip() for p in models.split(",") if p.strip()),
        inject_slowdown=inject_slowdown,
    )


def study_mode(device: torch.device) -> dict:
    """How the studies train on `device`: dtype, channels_last, backend flags, data path and augmentation.

    CUDA: the AlexNet study's `gpu` profile (its baseline cell's dtype, memory format
    and augmentation), with `TrainConfig`'s cuDNN autotuning and TF32, and batches
    drawn from a data set on the GPU. Elsewhere: fp32 (the precision the CPU profiles
    pin), contiguous, one fixed batch; the backend flags do not apply (None).
    """
    if device.type != "cuda":
        return dict(dtype="fp32", channels_last=False, cudnn_benchmark=None, tf32=None, data="fixed", augment="none")
    path = _study_path()
    baseline = _study_settings(path, path.stat().st_mtime_ns)[0]
    return dict(
        dtype=baseline.get("dtype", TrainConfig.dtype),
        channels_last=bool(baseline.get("channels_last", TrainConfig.channels_last)),
        cudnn_benchmark=TrainConfig.cudnn_benchmark,
        tf32=TrainConfig.tf32,
        data="dataset",
        augment=baseline.get("augment", TrainConfig.augment),
    )


def _study_path() -> Path:
    path = studies_dir() / f"{STUDY}.toml"
    if not path.is_file():
        raise UserError(
            f"the study file {path} is missing: the gate benchmarks its model variants; "
            f"reinstall the package (it ships ablations/)"
        )
    return path


@functools.cache
def _study_settings(path: Path, mtime_ns: int) -> tuple[dict, ...]:
    """The settings of every cell of the study at `path`, at `STUDY_PROFILE`, in study order (baseline first).

    The one place the gate reads a study file; cached while the file is unchanged.
    """
    study = StudyFile.read(path)
    return tuple(study.settings(combo, STUDY_PROFILE) for combo in study.combinations(STUDY_PROFILE))


def study_cases() -> list[Case]:
    """The study's model variants that are not a registered model as it is (`alexnet:groups=2`, ...).

    Distinct variants, named by the knobs changed from the model's defaults. The
    width (`--width`) is the gate's, not the study's.
    """
    path = _study_path()
    found: list[Case] = []
    for s in _study_settings(path, path.stat().st_mtime_ns):
        model, knobs = s.get("model", TrainConfig.model), dict(s.get("knobs", {}))
        defaults = model_knobs(model)
        changed = {k: v for k, v in knobs.items() if k != "width" and (k not in defaults or defaults[k] != v)}
        case = Case(model, tuple(sorted(changed.items())))
        if case not in found:
            found.append(case)
    return [c for c in found if c.knobs]


def all_cases(*, large_inputs: bool = True) -> list[Case]:
    """Every registered architecture, then the study's model variants."""
    every = [Case(n) for n in list_models()] + study_cases()
    return [c for c in every if large_inputs or input_size_of(c.model) <= LARGE_INPUT]


def cases(options: Options) -> list[Case]:
    """The cases this run benchmarks; a `--model` pattern that matches none raises `ValueError`."""
    pool = all_cases(large_inputs=not options.quick)
    if not options.models:
        return pool
    for pattern in options.models:
        if not any(fnmatch.fnmatchcase(c.id, pattern) for c in pool):
            raise ValueError(f"--model {pattern!r} matches no benchmark case; cases: {', '.join(c.id for c in pool)}")
    return [c for c in pool if any(fnmatch.fnmatchcase(c.id, p) for p in options.models)]


def build(case: Case, options: Options) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """The case's model on the device, and one fixed random batch (inputs, labels) made there.

    `options.width` applies to models that have a `width` knob; the others run at
    their own size. Seeded, so every run times the same weights and data. Sets the
    mode's backend flags (CUDA only).
    """
    torch.manual_seed(0)
    knobs = dict(case.knobs)
    if "width" in model_knobs(case.model):
        knobs["width"] = options.width
    device = torch.device(options.device)
    apply_backend_flags(device, bool(options.cudnn_benchmark), bool(options.tf32))
    fmt = MEMORY_FORMATS[options.memory_format]
    model = create_model(case.model, **knobs).to(device=device, memory_format=fmt)
    side = model.input_size
    x = torch.randn(options.batch_size, 3, side, side, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (options.batch_size,), device=device)
    return model, x, y


def training_batches(case: Case, options: Options, x: torch.Tensor, y: torch.Tensor):
    """Endless (x, y) training batches of the mode's data path, on the device, in its memory format.

    `fixed`: the batch (x, y) of `build`, again and again. `dataset`: `DATASET_BATCHES`
    batches of random uint8 images held on the device as a `bench.data.Dataset`, drawn
    in a fresh shuffled order each epoch, normalised and augmented on the device (the
    same `Dataset.batches` the training loop iterates) from the side the data is held
    at (a crop model's crops are cut from it, as in training).
    """
    if options.data == "fixed":
        while True:
            yield x, y
    device = torch.device(options.device)
    fmt = MEMORY_FORMATS[options.memory_format]
    side = crop_from_of(case.model) or input_size_of(case.model)
    g = torch.Generator().manual_seed(0)
    n = options.batch_size * DATASET_BATCHES
    images = torch.randint(0, 256, (n, 3, side, side), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (n,), generator=g)
    crop = input_size_of(case.model) if crop_from_of(case.model) else None
    classes = [str(i) for i in range(10)]
    data = Dataset(images, labels, images[:0], labels[:0], classes, Normalizer.fit(images), crop_size=crop)
    data = data.to(device)
    augment = parse_augment(options.augment)
    order = torch.Generator(device=device).manual_seed(0)
    while True:
        for xb, yb in data.batches("train", options.batch_size, augment=augment, generator=order):
            yield xb.contiguous(memory_format=fmt), yb


PHASES = ("train", "infer")


def workload(case: Case, options: Options, phase: str) -> Callable[[int], None]:
    """`run(n)`: n training steps (`train`: a batch by the mode's data path, forward, loss, backward, SGD
    step) or n inference batches (`infer`: eval mode, `inference_mode`) of the case, built and ready.

    The suite times it under pytest-benchmark, `gate --against`'s workers time it in alternating rounds.
    """
    model, x, y = build(case, options)
    device = torch.device(options.device)
    if phase == "infer":
        model.eval()

        def infer(n: int) -> None:
            with torch.inference_mode(), autocast(device, options.dtype):
                for _ in range(n):
                    model(x)

        return infer
    if phase != "train":
        raise ValueError(f"phase {phase!r} is not one of {', '.join(PHASES)}")
    batches = training_batches(case, options, x, y)
    optimizer = make_optimizer(model, lr=0.01)  # its value does not change the cost
    scaler = grad_scaler(x.device, options.dtype)

    def train(n: int) -> None:
        for _ in range(n):
            xb, yb = next(batches)
            train_step(model, optimizer, xb, yb, dtype=options.dtype, scaler=scaler)

    return train


def device_id(env: dict) -> str:
    """A file-name-safe identity of the device from `bench.env.environment`: type and model name.

    Same GPU model, same id, whatever the host; a different model (or the same
    machine's CPU) is a different id, so their baselines never meet.
    """
    slug = re.sub(r"[^a-z0-9]+", "-", f"{env['device']} {env['device_name']}".lower()).strip("-")
    return slug or "unknown-device"


def describe_device(env: dict) -> str:
    return f"{env['device']} {env['device_name']!r}"
