"""The timed subject: a model, its batches, optimizer and loss scaler, built from a `TrainConfig`.

Every throughput in the project times one of these: `measure` (`bench.measure.speed`),
its speed modes (`bench.measure.modes`), packed cells (`bench.measure.packing`, in
`bench.measure.worker` processes) and the throughput gate (its pytest suite and its
`--against` workers). `train(n)` runs n training steps and `infer(n)` n inference
batches; `bench.measure.timing` decides how many and clocks them.

What the config gives: `model` and `knobs` (or pass a built `model=`, which is copied:
the caller's weights are never touched), `device`, `dtype` (autocast, `auto` resolved),
`channels_last`, `batch_size`, `compile`, the optimizer (`make_optimizer` with `lr`,
`momentum`, `weight_decay` and `decay`: the run's SGD; its cost does not depend on the
values), `augment` and `seed`.

* Batches: `fixed`, one random batch made on the device before timing (the model's cost
  alone: nanoGPT's and airbench's benchmark mode), or `dataset`, a device-resident uint8
  data set of `DATASET_BATCHES` batches drawn in a fresh order each epoch, normalised and
  augmented on the device by `Dataset.batches`, as training draws them. Inference always
  takes the fixed batch.
* `train(n)`: n of the project's training steps (`bench.train.step.train_step`), or n
  replays of the whole step captured as one CUDA graph (`graph=True`, `bench.train.graphed`).
* `infer(n)`: n forward passes in `eval()` under `inference_mode` and autocast;
  `infer(n, images=1)` is batch-1 latency.

Building one changes nothing process-wide: the global random state is left as it was
(the build is seeded apart, from `seed`), and backend flags (cuDNN autotuning, TF32) and
thread counts are the caller's.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

from bench.data import Dataset, parse_augment
from bench.data.augment import Normalizer
from bench.device import pick_device
from bench.models import create_model, crop_from_of, input_size_of
from bench.train.config import TrainConfig
from bench.train.graphed import GraphedStep
from bench.train.modes import compile_model, resolve_dtype
from bench.train.step import autocast, backward, forward_loss, grad_scaler, make_optimizer, optimizer_step, train_step

BATCHES = ("fixed", "dataset")
DATASET_BATCHES = 8  # the device-resident data set holds this many batches: an epoch, reshuffled, then again
MEMORY_FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}
# The config fields a workload reads (and the backend flags its process sets from it): what a worker
# is sent, so that a commit whose TrainConfig lacks a newer, unrelated field still builds the same thing.
FIELDS = (
    "model",
    "knobs",
    "device",
    "dtype",
    "channels_last",
    "batch_size",
    "lr",
    "momentum",
    "weight_decay",
    "decay",
    "compile",
    "augment",
    "seed",
    "cudnn_benchmark",
    "tf32",
)


class Workload:
    """`train(n)` and `infer(n)` of one model, built and ready to time (see the module docstring)."""

    def __init__(
        self,
        config: TrainConfig,
        *,
        model: nn.Module | None = None,
        batches: str = "fixed",
        input_size: int | None = None,
        graph: bool = False,
        compile_backend: str = "inductor",
    ):
        if batches not in BATCHES:
            raise ValueError(f"batches {batches!r} is not one of: {', '.join(BATCHES)}")
        self.config = config
        self.device = device = pick_device(config.device)
        self.dtype = resolve_dtype(device, config.dtype)
        self.memory_format = "channels_last" if config.channels_last else "contiguous"
        fmt = MEMORY_FORMATS[self.memory_format]
        cuda = (
            [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
        )
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(config.seed)
            built = create_model(config.model, **config.knobs) if model is None else copy.deepcopy(model)
            self.model = built.to(device=device, memory_format=fmt)
            side = input_size or self.model.input_size
            self.x = torch.randn(config.batch_size, 3, side, side, device=device).contiguous(memory_format=fmt)
            with torch.no_grad():  # eager, before any compiling: the class count from one image
                classes = self.model.eval()(self.x[:1]).shape[1]
            self.y = torch.randint(0, classes, (config.batch_size,), device=device)
        self._drawn = self._dataset_batches() if batches == "dataset" else None
        self.net = compile_model(self.model, config.compile, backend=compile_backend)
        self.optimizer = make_optimizer(
            self.model, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay, decay=config.decay
        )
        self.scaler = grad_scaler(device, self.dtype)
        self.graphed = GraphedStep(self.model, self.optimizer, self.x, self.y, self.dtype) if graph else None
        self._small: dict[int, torch.Tensor] = {}

    @property
    def batch_size(self) -> int:
        return self.config.batch_size

    def train(self, n: int) -> None:
        """n training steps, each on the next batch."""
        for _ in range(n):
            x, y = next(self._drawn) if self._drawn is not None else (self.x, self.y)
            if self.graphed is not None:
                self.graphed(x, y)
            else:
                train_step(self.net, self.optimizer, x, y, dtype=self.dtype, scaler=self.scaler)

    def infer(self, n: int, images: int | None = None) -> None:
        """n forward passes of the fixed batch, or of its first `images` images (a copy of their own)."""
        x = self.x if images is None else self._small.setdefault(images, self.x[:images].clone())
        self.net.eval()
        with torch.inference_mode(), autocast(self.device, self.dtype):
            for _ in range(n):
                self.net(x)

    def run(self, phase: str):
        """`train` or `infer`, by name."""
        if phase not in ("train", "infer"):
            raise ValueError(f"phase {phase!r} is not one of: train, infer")
        return getattr(self, phase)

    def phases(self):
        """forward (with loss), backward (with zeroing the gradients), optimizer: one training step taken apart."""
        state = {}

        def forward() -> None:
            self.net.train()
            state["loss"] = forward_loss(self.net, self.x, self.y, self.dtype)[1]

        return (
            forward,
            lambda: backward(state.pop("loss"), self.optimizer, self.scaler),
            lambda: optimizer_step(self.optimizer, self.scaler),
        )

    def _dataset_batches(self):
        """Endless training batches drawn from random uint8 images held on the device, as training draws them.

        The images are held at the side the model's data is (a crop model's crops are cut from it).
        """
        name, device = self.config.model, self.device
        side = crop_from_of(name) or input_size_of(name)
        crop = input_size_of(name) if crop_from_of(name) else None
        g = torch.Generator().manual_seed(self.config.seed)
        n = self.config.batch_size * DATASET_BATCHES
        images = torch.randint(0, 256, (n, 3, side, side), dtype=torch.uint8, generator=g)
        labels = torch.randint(0, 10, (n,), generator=g)
        classes = [str(i) for i in range(10)]
        data = Dataset(images, labels, images[:0], labels[:0], classes, Normalizer.fit(images), crop_size=crop)
        data = data.to(device)
        augment = parse_augment(self.config.augment)
        order = torch.Generator(device=device).manual_seed(self.config.seed)
        fmt = MEMORY_FORMATS[self.memory_format]
        while True:
            for xb, yb in data.batches("train", self.config.batch_size, augment=augment, generator=order):
                yield xb.contiguous(memory_format=fmt), yb


def spec(config: TrainConfig, phase: str, batches: str = "fixed", timing: dict | None = None) -> dict:
    """What a worker (`bench.measure.worker`) is asked to build and how to time it, as plain values."""
    return {
        "config": {k: v for k, v in config.to_dict().items() if k in FIELDS},
        "phase": phase,
        "batches": batches,
        "timing": timing or {},
    }
