"""Run configuration: one frozen dataclass, resolved once, validated, saved with every run."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field, fields
from typing import get_args, get_type_hints

from bench.errors import UserError

DECAYS = ("weights", "all", "layers")  # bench.train.step.make_optimizer
FREEZES = ("none", "features")  # what --freeze keeps fixed; features: all but the classifier head
MAX_EPOCHS = 10_000  # more is a typo (1e12 would run for ever), not an experiment
MAX_SEED = 2**63 - 1  # torch.manual_seed overflows above; negative seeds are refused too, for one range


@dataclass(frozen=True)
class TrainConfig:
    # model
    model: str = "layers-80sec"
    knobs: dict = field(default_factory=dict)  # builder keyword knobs, e.g. {"activation": "tanh"}
    init: str = "default"  # default (PyTorch's) | paper (N(0, 0.01) weights)
    # data
    data: str = "cifar10"  # cifar10 | synthetic | path to an ImageFolder tree or .tar.gz
    data_root: str = "data"  # folder holding cifar-10-batches-py/
    train_per_class: int | None = None  # stratified subset for quick runs
    test_per_class: int | None = None
    preprocess: str = "standardize"  # standardize | meanonly (the paper's mean-image subtraction)
    augment: str = "crop+flip"  # none | '+'-joined subset of crop, flip, pca
    image_size: int | None = None  # side to resize a folder of mixed sizes to (must be the model's input)
    val_size: int = 5000  # images held out of the full training split for validation (0: none)
    train_eval_size: int = 5000  # training images evaluated un-augmented each epoch (clean training error)
    data_seed: int = 0  # seeds the hold-out and the subsets, apart from the training seed
    # optimisation (paper section 5: SGD, momentum 0.9, weight decay 5e-4, batch 128)
    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    decay: str = "weights"  # weights: decay only weight matrices and kernels | all: biases and norm params too
    # | layers: weight_decay times each layer's declared multiplier, biases at the model's bias lr (cuda-convnet)
    schedule: str = "cosine"  # constant | cosine | step (x0.1 at 50% and 75%) | plateau (x0.1 when val stalls)
    warmup_epochs: float = 0.0  # linear warm-up from 0, in epochs
    plateau_patience: int = 3  # plateau: epochs without a better validation error before a drop (the paper gives none)
    plateau_max_drops: int = 3  # plateau: drops at most (the paper: three)
    # execution
    seed: int = 0
    device: str = "auto"  # auto = cuda, then mps, then cpu
    dtype: str = "fp32"  # fp32 | bf16 | fp16 autocast | auto (bf16 where the device computes it natively, else fp32)
    channels_last: bool = False
    compile: str = "off"  # off | default | max-autotune | reduce-overhead (torch.compile; the last adds CUDA graphs)
    cudnn_benchmark: bool = True  # CUDA: cuDNN times its convolution algorithms once per shape, keeps the fastest
    tf32: bool = True  # CUDA: fp32 matmuls and convolutions on TF32 tensor cores (10-bit mantissa)
    # fine-tuning (bench.train.finetune)
    init_from: str | None = None  # checkpoint, or run folder, whose weights start this run
    freeze: str = "none"  # none | features (train only the classifier head, the last Linear layer)
    reinit_head: bool = False  # start the classifier head afresh: needed when the class count differs

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        # The tables of valid values live beside the code that uses them, which
        # imports torch; the study reader and the report read this class without it.
        from bench.data import PREPROCESS, parse_augment
        from bench.device import DEVICES
        from bench.models.init import INITS
        from bench.train.modes import COMPILE_MODES, DTYPE_CHOICES
        from bench.train.schedule import SCHEDULES

        self._check_types()

        def choice(name, valid):
            value = getattr(self, name)
            if value not in valid:
                raise UserError(f"{name}={value!r} is not valid; choose one of: {', '.join(valid)}")

        choice("schedule", SCHEDULES)
        choice("decay", DECAYS)
        choice("init", INITS)
        choice("preprocess", PREPROCESS)
        choice("dtype", DTYPE_CHOICES)
        choice("compile", COMPILE_MODES)
        parse_augment(self.augment)
        if not (self.device in DEVICES or self.device.startswith("cuda:")):
            raise UserError(f"device={self.device!r} is not valid; choose one of: {', '.join(DEVICES)}, cuda:N")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise UserError(f"lr must be positive, got {self.lr}")
        for name in ("val_size", "train_eval_size", "data_seed", "plateau_patience", "plateau_max_drops"):
            if getattr(self, name) < 0:
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
        choice("freeze", FREEZES)
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

    def _check_types(self) -> None:
        for f in fields(self):
            value, hint = getattr(self, f.name), _TYPES[f.name]
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


def _annotation_types(cls) -> dict[str, tuple[type, ...]]:
    hints = get_type_hints(cls)
    out = {}
    for name, hint in hints.items():
        args = get_args(hint) or (hint,)
        types = tuple(a for a in args if isinstance(a, type))
        if float in types:
            types += (int,)  # 1 is a fine learning rate
        out[name] = types
    return out


_TYPES = _annotation_types(TrainConfig)
