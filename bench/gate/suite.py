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

Each case is a `bench.measure.workload.Workload` built from a `TrainConfig`
(`Options.config`), timed twice, as training steps and as inference batches, by
the rule of `bench.measure.timing`: untimed warm-up steps (at least
`warmup_steps`, for at least `warmup_s`), then `rounds` timed rounds, each as
many steps as last `min_round_s` at the fastest warm-up pace and ending with a
device synchronize. The gate compares the median round, in images/s.

The mode: on CUDA the suite times the way the studies train there (`study_mode`:
the dtype and memory format of the AlexNet study's `gpu` profile, cuDNN autotuning
and TF32 as `TrainConfig` sets them, and training batches drawn from a uint8 data
set held on the GPU, normalised and augmented there as training draws them).
Elsewhere it keeps fp32, contiguous tensors and one fixed batch, the precision the
CPU profiles pin. Each option can override its part; the run options (`--dtype`,
`--channels-last`, `--batch-size`, `--cudnn-benchmark`, `--tf32`, `--device`) are
`TrainConfig`'s flags, checked as a run's are.

A baseline is comparable with a run when both come from the same device (the
`device_id`: the device type and its model name, e.g. `cuda-nvidia-h100-80gb-hbm3`)
and measure the same thing (`MEASUREMENT_KEYS`: the mode, batch and width).
Software versions and the CPU thread count are recorded but are not part of the identity: a slowdown they cause is a regression the gate should
show, and re-saving the baseline accepts it.
"""

from __future__ import annotations

import fnmatch
import functools
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from bench.errors import UserError
from bench.measure.timing import Timing
from bench.measure.workload import BATCHES, Workload
from bench.measure.workload import spec as worker_spec
from bench.models import format_knobs, input_size_of, list_models, model_knobs
from bench.models.common import WIDTH_RANGE
from bench.studies import StudyFile, studies_dir
from bench.train.config import TrainConfig
from bench.train.modes import resolve_dtype


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
    """The suite's settings for one run, resolved once (`resolve_options`) and recorded with it."""

    device: str
    dtype: str  # resolved: fp32 | bf16 | fp16
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

    def __post_init__(self):
        if self.data not in BATCHES:
            raise ValueError(f"--batches {self.data!r} is not valid; choose one of: {', '.join(BATCHES)}")
        if not WIDTH_RANGE[0] <= self.width <= WIDTH_RANGE[1]:
            raise ValueError(f"--width must be from {WIDTH_RANGE[0]:g} to {WIDTH_RANGE[1]:g}, got {self.width}")
        if self.rounds < 1:
            raise ValueError(f"--rounds must be at least 1, got {self.rounds}")

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

    def config(self, case: Case) -> TrainConfig:
        """The case's workload as a run's config: its model and knobs (`width` where it has that knob), this mode."""
        knobs = dict(case.knobs)
        if "width" in model_knobs(case.model):
            knobs["width"] = self.width
        return TrainConfig(
            model=case.model,
            knobs=knobs,
            device=self.device,
            dtype=self.dtype,
            channels_last=self.memory_format == "channels_last",
            batch_size=self.batch_size,
            cudnn_benchmark=bool(self.cudnn_benchmark),
            tf32=bool(self.tf32),
            augment=self.augment,
        )

    def spec(self, case: Case, phase: str) -> dict:
        """What a `bench.measure.worker` builds for this benchmark, and how it warms up and sizes its rounds."""
        timing = {"warmup_steps": self.warmup_steps, "warmup_s": self.warmup_s, "min_round_s": self.min_round_s}
        return worker_spec(self.config(case), phase, self.data, timing)

    def workload(self, case: Case) -> Workload:
        return Workload(self.config(case), batches=self.data)


def resolve_options(
    *,
    device: torch.device | str,
    quick: bool = False,
    dtype: str | None = None,
    channels_last: bool | None = None,
    batch_size: int | None = None,
    cudnn_benchmark: bool | None = None,
    tf32: bool | None = None,
    data: str | None = None,
    width: float | None = None,
    rounds: int | None = None,
    models: str = "",
) -> Options:
    """The preset for `quick` and the device's mode (`study_mode`), overridden by the values given.

    The run options (dtype, memory format, batch, backend flags) are `TrainConfig`'s, checked
    as a run's are. `ValueError` names a bad value.
    """
    preset, device = QUICK if quick else FULL, torch.device(device)
    mode = study_mode(device)
    run = TrainConfig(
        device=str(device),
        dtype=mode["dtype"] if dtype is None else dtype,
        channels_last=mode["channels_last"] if channels_last is None else channels_last,
        batch_size=preset.batch_size if batch_size is None else batch_size,
        cudnn_benchmark=TrainConfig.cudnn_benchmark if cudnn_benchmark is None else cudnn_benchmark,
        tf32=TrainConfig.tf32 if tf32 is None else tf32,
    )
    cuda = device.type == "cuda"
    return Options(
        device=str(device),
        dtype=resolve_dtype(device, run.dtype),
        memory_format="channels_last" if run.channels_last else "contiguous",
        cudnn_benchmark=run.cudnn_benchmark if cuda else None,
        tf32=run.tf32 if cuda else None,
        data=mode["data"] if data is None else data,
        augment=mode["augment"],
        batch_size=run.batch_size,
        width=preset.width if width is None else width,
        warmup_steps=preset.timing.warmup_steps,
        warmup_s=preset.timing.warmup_s,
        rounds=preset.timing.rounds if rounds is None else rounds,
        min_round_s=preset.timing.min_round_s,
        quick=quick,
        models=tuple(p.strip() for p in models.split(",") if p.strip()),
    )


def study_mode(device: torch.device) -> dict:
    """How the studies train on `device`: dtype, channels_last, backend flags, data path and augmentation.

    CUDA: the AlexNet study's `gpu` profile (its baseline cell's dtype, memory format
    and augmentation), with `TrainConfig`'s cuDNN autotuning and TF32, and batches
    drawn from a data set on the GPU. Elsewhere: fp32 (the precision the CPU profiles
    pin), contiguous, one fixed batch; the backend flags do not apply (None).
    """
    if device.type != "cuda":
        return dict(dtype="fp32", channels_last=False, data="fixed", augment="none")
    path = _study_path()
    baseline = _study_settings(path, path.stat().st_mtime_ns)[0]
    return dict(
        dtype=baseline.get("dtype", TrainConfig.dtype),
        channels_last=bool(baseline.get("channels_last", TrainConfig.channels_last)),
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


PHASES = ("train", "infer")


def device_id(env: dict) -> str:
    """A file-name-safe identity of the device from `bench.env.environment`: type and model name.

    Same GPU model, same id, whatever the host; a different model (or the same
    machine's CPU) is a different id, so their baselines never meet.
    """
    slug = re.sub(r"[^a-z0-9]+", "-", f"{env['device']} {env['device_name']}".lower()).strip("-")
    return slug or "unknown-device"


def describe_device(env: dict) -> str:
    return f"{env['device']} {env['device_name']!r}"
