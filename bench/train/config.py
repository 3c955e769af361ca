"""Run configuration: one frozen dataclass, resolved once, validated, saved with every run.

Each field is one run option, and all that the rest of the code knows of it: the
`train` command line derives its flag from the field (`bench.train.flags`: name,
type, default and the `option` metadata: help, choices, metavar, environment
variable), a study file's keys are the field names (`bench.studies`), and
`validate` checks the values from either. Adding a run option is adding a field.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import json
import math
from dataclasses import MISSING, dataclass, fields
from typing import get_args, get_type_hints

from bench.errors import UserError

DECAYS = ("weights", "all", "layers")  # bench.train.step.make_optimizer
FREEZES = ("none", "features")  # what --freeze keeps fixed; features: all but the classifier head
MAX_EPOCHS = 10_000  # more is a typo (1e12 would run for ever), not an experiment
MAX_SEED = 2**63 - 1  # torch.manual_seed overflows above; negative seeds are refused too, for one range


def option(default=MISSING, help: str = "", *, default_factory=MISSING, **metadata):
    """A run option: a dataclass field whose metadata holds what its flag shows and checks.

    `help` (required): what the option does, for --help. `choices`: the valid values,
    a tuple or the dotted name of one beside the code that uses it (`validate` checks
    them; --help shows them). `metavar`: the value's name in --help. `env`: an
    environment variable whose value is the flag's default. `flag`: the flag's name
    when it is not the field's (`knobs` is `--knob KEY=VALUE`, given once per knob).
    """
    if not help:
        raise TypeError("a run option needs its help text: option(default, help)")
    return dataclasses.field(default=default, default_factory=default_factory, metadata={"help": help, **metadata})


def field_choices(f: dataclasses.Field) -> tuple | None:
    """The valid values of field `f`, or None when any value of its type goes."""
    choices = f.metadata.get("choices")
    if isinstance(choices, str):
        # A table beside torch code is named, not imported: the study reader and the report read this class without torch.
        module, _, name = choices.rpartition(".")
        choices = getattr(importlib.import_module(module), name)
    return choices


@dataclass(frozen=True)
class TrainConfig:
    # model
    model: str = option("layers-80sec", "registered model name or tv:<torchvision name>")
    knobs: dict = option(
        help="model knob, repeatable, e.g. --knob activation=tanh --knob width=0.25",
        default_factory=dict,
        flag="knob",
        metavar="KEY=VALUE",
    )
    init: str = option(
        "default",
        "initial weights: default (PyTorch's) | kaiming (He) | paper (N(0, 0.01) weights)",
        choices="bench.models.init.INITS",
    )
    # data
    data: str = option(
        "cifar10", "cifar10 | synthetic | PATH to an ImageFolder tree or .tar.gz", metavar="DATA", env="BENCH_DATA"
    )
    data_root: str = option("data", "folder holding cifar-10-batches-py/", metavar="DIR", env="BENCH_DATA_ROOT")
    train_per_class: int | None = option(None, "stratified training subset, images per class (quick runs)")
    test_per_class: int | None = option(None, "stratified test subset, images per class")
    preprocess: str = option(
        "standardize",
        "standardize | meanonly (the paper's mean-image subtraction)",
        choices="bench.data.augment.PREPROCESS",
    )
    augment: str = option("crop+flip", "none, or '+'-joined crop, flip, pca")
    image_size: int | None = option(
        None, "resize a folder of mixed image sizes to this side, in pixels (must be the model's input size)"
    )
    val_size: int | None = option(
        None,
        "images held out of the full training split for validation; 0: none "
        "(default: a tenth of the full training split, at most 5000)",
    )
    train_eval_size: int = option(
        5000, "training images evaluated un-augmented after each epoch, for the clean training error"
    )
    data_seed: int = option(0, "seed of the validation hold-out and the subsets, apart from the training seed")
    # Scoring the whole test set (and the clean training images) every epoch can cost more than the
    # epoch it scores (10,000 images against 1,000 trained, at 1/8-width AlexNet); both are reported,
    # never chosen on, so their curves can be sparse. Validation stays every epoch: it picks the best one.
    score_every: int = option(
        1, "evaluate the test and clean-training splits every N epochs and at the last; 0: the last epoch only"
    )
    # optimisation (paper section 5: SGD, momentum 0.9, weight decay 5e-4, batch 128)
    epochs: int = option(10, "training epochs")
    batch_size: int = option(128, "images per training step")
    lr: float = option(0.01, "base learning rate")
    momentum: float = option(0.9, "SGD momentum")
    weight_decay: float = option(5e-4, "L2 weight decay")
    decay: str = option(
        "weights",
        "weights: weight decay on weight matrices and kernels only | all: biases and norm parameters too "
        "(the paper read literally) | layers: weight decay times each layer's declared multiplier, biases "
        "at the model's bias learning rate (cuda-convnet's recipe)",
        choices=DECAYS,
    )
    schedule: str = option(
        "cosine",
        "learning-rate schedule: constant | cosine | step (x0.1 at 50% and 75% of the epochs) "
        "| plateau (x0.1 when the validation error stalls)",
        choices="bench.train.schedule.SCHEDULES",
    )
    warmup_epochs: float = option(0.0, "linear warm-up of the learning rate from 0, in epochs")
    plateau_patience: int = option(3, "plateau: epochs without a better validation error before a drop")
    plateau_max_drops: int = option(3, "plateau: drops at most (the paper: three)")
    # execution
    seed: int = option(0, "training seed: initial weights, batch order, augmentation, dropout")
    device: str = option("auto", "auto (cuda, then mps, then cpu) | cpu | cuda | cuda:N | mps")
    dtype: str = option(
        "fp32",
        "autocast precision; auto: bf16 where the device computes it natively, else fp32",
        choices="bench.train.modes.DTYPE_CHOICES",
    )
    channels_last: bool = option(False, "channels_last memory format for model and batches")
    compile: str = option(
        "off", "torch.compile mode; reduce-overhead adds CUDA graphs on CUDA", choices="bench.train.modes.COMPILE_MODES"
    )
    graph: bool = option(
        False,
        "CUDA: capture the whole training step (forward, loss, backward, SGD) as one CUDA graph and replay it "
        "for every full batch; an epoch's short last batch runs eagerly (bench.train.graphed)",
    )
    cudnn_benchmark: bool = option(True, "CUDA: let cuDNN time its convolution algorithms and keep the fastest")
    tf32: bool = option(True, "CUDA: fp32 matmuls and convolutions on TF32 tensor cores (10-bit mantissa)")
    # fine-tuning (bench.train.finetune)
    init_from: str | None = option(
        None,
        "start from these weights: a checkpoint.pt or the run folder holding it (same model and knobs)",
        metavar="CHECKPOINT",
    )
    freeze: str = option(
        "none", "none | features: train only the classifier head, the last Linear layer", choices=FREEZES
    )
    reinit_head: bool = option(
        False, "with --init-from: start the classifier head afresh (needed when the class count differs)"
    )

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        self._check_types()
        for f in fields(self):
            valid = field_choices(f)
            if valid is not None and getattr(self, f.name) not in valid:
                raise UserError(f"{f.name}={getattr(self, f.name)!r} is not valid; choose one of: {', '.join(valid)}")
        # Both import torch; the study reader and the report read this class without it.
        from bench.data import parse_augment
        from bench.device import DEVICES

        parse_augment(self.augment)
        if not (self.device in DEVICES or self.device.startswith("cuda:")):
            raise UserError(f"device={self.device!r} is not valid; choose one of: {', '.join(DEVICES)}, cuda:N")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise UserError(f"lr must be positive, got {self.lr}")
        for name in (
            "val_size",
            "train_eval_size",
            "data_seed",
            "score_every",
            "plateau_patience",
            "plateau_max_drops",
        ):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise UserError(f"{name} must be 0 or more, got {getattr(self, name)}")
        if self.image_size is not None and self.image_size < 1:
            raise UserError(f"image_size must be at least 1 pixel, got {self.image_size}")
        if self.schedule == "plateau" and self.val_size == 0:
            raise UserError(
                "schedule='plateau' steps on the validation error; set val_size above 0 "
                "(e.g. --val-size 5000) or choose another schedule"
            )
        for name in ("momentum", "weight_decay", "warmup_epochs"):
            if not getattr(self, name) >= 0:
                raise UserError(f"{name} must be 0 or more, got {getattr(self, name)}")
        if self.momentum >= 1:
            raise UserError(f"momentum must be below 1 (the paper's is 0.9), got {self.momentum}")
        if self.graph:
            self._check_graph()
        if self.reinit_head and self.init_from is None:
            raise UserError("reinit_head re-initialises the head of loaded weights: it needs init_from (--init-from)")
        for name in ("lr", "weight_decay"):
            if not math.isfinite(getattr(self, name)):
                raise UserError(f"{name} must be a finite number, got {getattr(self, name)}")
        if self.epochs > MAX_EPOCHS:
            raise UserError(
                f"epochs must be at most {MAX_EPOCHS} (a sanity bound: the paper trains ~90), got {self.epochs}"
            )
        if self.warmup_epochs > self.epochs:
            raise UserError(
                f"warmup_epochs={self.warmup_epochs} is longer than the run (epochs={self.epochs}): "
                f"the rate would never reach lr; use at most {self.epochs}"
            )
        for name in ("seed", "data_seed"):
            if not 0 <= getattr(self, name) <= MAX_SEED:
                raise UserError(
                    f"{name} must be from 0 to 2**63-1 (what torch.manual_seed takes), got {getattr(self, name)}"
                )

    def _check_graph(self) -> None:
        """What can be known before the device is: graph=true with fp16, a compile mode or device=cpu.
        An `auto` device that resolves to the CPU is refused when the run starts (`bench.train.graphed`)."""
        from bench.train.modes import graph_unavailable_reason  # imports torch; see validate

        device = "cuda" if self.device == "auto" else self.device  # auto: known when the run starts
        reason = graph_unavailable_reason(device, self.dtype, self.compile)
        if reason is not None:
            raise UserError(f"graph=true: {reason}")

    def _check_types(self) -> None:
        types = field_types(type(self))
        for f in fields(self):
            value, hint = getattr(self, f.name), types[f.name]
            ok = isinstance(value, hint) and not (isinstance(value, bool) and bool not in hint)
            if not ok:
                names = " or ".join("null" if t is type(None) else t.__name__ for t in hint)
                raise UserError(f"{f.name}={value!r} has the wrong type; expected {names}")

    def replace(self, **changes) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict, where: str = "config") -> TrainConfig:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise UserError(f"{where}: unknown key {unknown[0]!r}; valid keys: {', '.join(sorted(names))}")
        return cls(**d)


@functools.cache
def field_types(cls) -> dict[str, tuple[type, ...]]:
    """Each field's types, from its annotation: the declared type first, then the others it accepts."""
    out = {}
    for name, hint in get_type_hints(cls).items():
        args = get_args(hint) or (hint,)
        types = tuple(a for a in args if isinstance(a, type))
        if float in types:
            types += (int,)  # 1 is a fine learning rate
        out[name] = types
    return out
