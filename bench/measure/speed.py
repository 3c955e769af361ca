"""Throughput, latency, peak memory and the device's matmul rate, on synthetic on-device tensors.

What is timed, and how:

* Inputs are one fixed random batch made on the device before timing, so the
  numbers are the model's cost alone, with no data loading or host-to-device
  copies (nanoGPT's and airbench's benchmark mode).
* What is timed is a `bench.measure.workload.Workload`: training is
  `bench.train.step.train_step` (the project's one training step: forward, loss,
  backward, SGD step) on a deep copy of the model, so the caller's weights,
  batch-norm statistics and train/eval modes are never touched. Inference: forward
  only, `model.eval()` under `torch.inference_mode()`.
* `dtype` is autocast's (`fp32` = none, `bf16`, `fp16`); weights stay fp32, as in
  mixed-precision training. `memory_format='channels_last'` converts the model and
  the batch.
* Timing follows `bench.measure.timing` (the rule the throughput gate uses
  too): `warmup` untimed steps first (allocator growth, cuDNN/oneDNN kernel
  choice, lazy initialisation), then `repeats` timed rounds of `steps` steps
  each, the device synchronised inside every clock. Reported: images/s of the
  median round, with the slowest and fastest rounds as the spread.
* Batch-1 latency: median over `latency_iters` single forward passes, each
  a synchronised round of its own, in milliseconds.
* Peak memory of training (`peak_mem_mb`, MiB), labelled by `peak_mem_kind`:
  - `cuda_peak_allocated`: `torch.cuda.max_memory_allocated` over the training
    phase (copy of the model, optimizer state, warm-up and timed steps) minus
    what was allocated before it began: weights + gradients + momentum +
    activations saved for backward + the batch + cuDNN workspaces, as PyTorch's
    caching allocator hands them out (rounded up to its 512-byte blocks). Not
    included: cached-but-free blocks and the CUDA context.
  - `tracked_tensor_peak` (CPU, MPS): the peak of the bytes of live tensor
    storages created during the copy of the model and the warm-up steps,
    tracked by a `TorchDispatchMode` (every op's outputs pass through it; a
    weakref notices each free). The same list as above, deterministic and independent
    of what the process did before -- unlike resident set size, which on
    Linux counts lazily loaded libraries (~170 MiB on the first step of a
    process) and reads 0 when the C allocator reuses memory freed by an
    earlier model. Not included: scratch buffers that kernels (oneDNN) allocate
    internally without making tensors, and the allocator's own overhead. The
    dispatch mode costs Python time per op, so it is active only for the
    untimed warm-up steps. (The MPS path is untested: written for, not run on, a Mac.)
* Out of memory: retried at half the batch until it fits (`batch_size` in the
  result is the batch actually used); any failure no retry fixes is returned as
  `error` with the numbers None, never raised.

`matmul_flops_per_s` times a square matmul in the same dtype on the same
device, the practical peak a model's FLOP/s can be compared against (never a
hard-coded datasheet number).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from bench.device import DTYPES, is_oom, synchronize
from bench.measure.timing import Timing, measure, release_memory, steps_per_round, time_rounds, warm_up
from bench.measure.workload import MEMORY_FORMATS, Workload
from bench.train.config import TrainConfig

_MIB = 2**20


@dataclass(frozen=True)
class Settings:
    """How long to measure. Step counts are per phase (training, inference)."""

    warmup: int  # untimed steps before timing
    repeats: int  # timed rounds; the median and min/max are reported
    steps: int  # steps per timed round
    latency_iters: int  # timed batch-1 forward passes
    batch_size: int  # batch used when the caller gives none

    def __post_init__(self):
        # Peak memory is metered over the warm-up steps, so at least one is needed.
        if self.warmup < 1 or self.repeats < 1 or self.steps < 1 or self.latency_iters < 0 or self.batch_size < 1:
            raise ValueError(f"settings need warmup, repeats, steps, batch_size >= 1: {self}")

    @property
    def timing(self) -> Timing:
        """Throughput: rounds of a fixed number of steps (no time-based warm-up or sizing)."""
        return Timing(warmup_steps=self.warmup, rounds=self.repeats, round_steps=self.steps)


FULL = Settings(warmup=10, repeats=7, steps=20, latency_iters=50, batch_size=128)  # 128: the paper's batch
QUICK = Settings(warmup=2, repeats=3, steps=3, latency_iters=10, batch_size=16)  # a CPU smoke measurement


def settings_for(quick: bool) -> Settings:
    return QUICK if quick else FULL


def error_text(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}".strip()


# ---------------------------------------------------------------- memory meters


class _TensorTracker(TorchDispatchMode):
    """Live and peak bytes of tensor storages created while active (or handed to `track`).

    Every op's outputs pass through `__torch_dispatch__`; each new storage is
    counted once (views and in-place results share it) and uncounted by a weakref
    callback when it is freed. Backward ops on CPU run on the calling thread, so
    gradients and saved activations are seen.
    """

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self._refs: dict[int, weakref.ref] = {}  # storage address -> weakref to the storage

    def track(self, tensor) -> None:
        if not isinstance(tensor, torch.Tensor) or tensor.device.type == "meta":
            return
        storage = tensor.untyped_storage()
        nbytes, key = storage.nbytes(), storage.data_ptr()
        if nbytes == 0 or key in self._refs:
            return

        def freed(_ref, key=key, nbytes=nbytes):
            self._refs.pop(key, None)
            self.live -= nbytes

        self._refs[key] = weakref.ref(storage, freed)
        self.live += nbytes
        self.peak = max(self.peak, self.live)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            self.track(t)
        return out


class _MemoryMeter:
    """Meters the training phase: `start`, `track(net)`, `stop_tracking` before timing, `peak_mib`."""

    def __init__(self, device: torch.device):
        self.device = device
        self.kind = "cuda_peak_allocated" if device.type == "cuda" else "tracked_tensor_peak"
        self._tracker: _TensorTracker | None = None

    def start(self) -> None:
        if self.kind == "cuda_peak_allocated":
            synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        else:
            self._tracker = _TensorTracker()
            self._tracker.__enter__()
            self._peak = 0

    def track(self, module: nn.Module) -> None:
        """Count a module's parameters and buffers, however `deepcopy` made them."""
        if self._tracker is not None:
            for t in (*module.parameters(), *module.buffers()):
                self._tracker.track(t)

    def stop_tracking(self) -> None:
        """Leave the dispatch mode (before timing: it adds Python work to every op)."""
        if self._tracker is not None:
            synchronize(self.device)
            self._tracker.__exit__(None, None, None)
            self._peak, self._tracker = self._tracker.peak, None

    def peak_mib(self) -> float:
        """Peak growth since `start`, MiB."""
        if self.kind == "cuda_peak_allocated":
            synchronize(self.device)
            grown = torch.cuda.max_memory_allocated(self.device) - self._base
        else:
            self.stop_tracking()
            grown = self._peak
        return max(grown, 0) / _MIB


# ---------------------------------------------------------------- the measurement


def _measure_at(
    model: nn.Module,
    *,
    input_size: int,
    batch_size: int,
    device: torch.device,
    dtype: str,
    memory_format: str,
    settings: Settings,
) -> dict:
    config = TrainConfig(
        device=str(device), dtype=dtype, channels_last=memory_format == "channels_last", batch_size=batch_size
    )
    meter = _MemoryMeter(device)
    meter.start()
    try:
        # Training phase (metered): the workload (a copy of the model, optimizer, fixed batch), warm-up, timed rounds.
        work = Workload(config, model=model, input_size=input_size)
        meter.track(work.model)
        timing = settings.timing
        warmup_step_s = warm_up(work.train, device, timing)
        meter.stop_tracking()
        train_rounds = time_rounds(
            work.train, device, steps=steps_per_round(warmup_step_s, timing), rounds=timing.rounds
        )
        peak_mem_mb = meter.peak_mib()
    finally:
        meter.stop_tracking()

    # Inference phase: same copy and batch, forward only.
    work.optimizer.zero_grad(set_to_none=True)  # gradients are not part of inference
    infer_rounds = measure(work.infer, device, timing)
    latency_ms = None  # latency_iters=0: not measured
    if settings.latency_iters:
        one = Timing(warmup_steps=settings.warmup, rounds=settings.latency_iters)
        latency_ms = measure(lambda n: work.infer(n, images=1), device, one).median_s() * 1e3
    train_rate = train_rounds.per_s(batch_size * train_rounds.steps)
    infer_rate = infer_rounds.per_s(batch_size * infer_rounds.steps)

    return {
        "train_images_per_s": train_rate.median,
        "train_images_per_s_min": train_rate.min,
        "train_images_per_s_max": train_rate.max,
        "infer_images_per_s": infer_rate.median,
        "infer_images_per_s_min": infer_rate.min,
        "infer_images_per_s_max": infer_rate.max,
        "latency_ms_b1": latency_ms,
        "peak_mem_mb": peak_mem_mb,
        "peak_mem_kind": meter.kind,
    }


# What every measurement row records of where it ran (bench.env.environment's keys).
ENV_COLUMNS = (
    "device",
    "device_name",
    "torch",
    "torchvision",
    "cuda",
    "cudnn",
    "gpu_driver",
    "float32_matmul_precision",
    "cudnn_benchmark",
    "cudnn_allow_tf32",
    "python",
    "num_threads",
    "hostname",
    "git_commit",
)

THROUGHPUT_KEYS = (
    "train_images_per_s",
    "train_images_per_s_min",
    "train_images_per_s_max",
    "infer_images_per_s",
    "infer_images_per_s_min",
    "infer_images_per_s_max",
    "latency_ms_b1",
    "peak_mem_mb",
    "peak_mem_kind",
)


def validate(dtype: str, memory_format: str, batch_size: int) -> None:
    """ValueError naming the bad value and the choices."""
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of: {', '.join(DTYPES)}")
    if memory_format not in MEMORY_FORMATS:
        raise ValueError(f"unknown memory format {memory_format!r}; choose one of: {', '.join(MEMORY_FORMATS)}")
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")


def measure_throughput(
    model: nn.Module,
    *,
    input_size: int | None = None,
    batch_size: int | None = None,
    device: torch.device | str = "cpu",
    dtype: str = "fp32",
    memory_format: str = "contiguous",
    quick: bool = False,
    settings: Settings | None = None,
) -> dict:
    """Training and inference images/s (median, min, max), batch-1 latency and peak training memory.

    Returns a flat dict: the keys of `THROUGHPUT_KEYS`, `batch_size` (the batch
    actually used, after any out-of-memory halving) and `error` (None, or the
    one-line reason every value is None). `input_size` defaults to
    `model.input_size`; `settings` overrides the `quick` preset. The caller's
    model is not modified.
    """
    settings = settings or settings_for(quick)
    device = torch.device(device)
    input_size = input_size or model.input_size
    batch_size = batch_size or settings.batch_size
    validate(dtype, memory_format, batch_size)
    error = None
    while True:
        oom = False
        try:
            result = _measure_at(
                model,
                input_size=input_size,
                batch_size=batch_size,
                device=device,
                dtype=dtype,
                memory_format=memory_format,
                settings=settings,
            )
            break
        except Exception as exc:  # noqa: BLE001 -- a failing model is a row, never an aborted bulk run
            if is_oom(exc) and batch_size > 1:
                oom = True
            else:
                error = error_text(exc)
                if is_oom(exc):
                    error += " (out of memory even at batch 1)"
                result = dict.fromkeys(THROUGHPUT_KEYS)
                break
        finally:
            release_memory(device)  # outside the except block, the traceback's tensors can be released
        if oom:
            batch_size //= 2
    return {**result, "batch_size": batch_size, "error": error}


def matmul_size(device: torch.device | str, quick: bool = False) -> int:
    """Side of the square matmul: large enough to near the device's practical peak, small enough to be quick.

    2 n^3 FLOPs each: n=1024 is 2.1 GFLOP (tens of ms on a few CPU cores),
    n=8192 is 1.1 TFLOP (a few ms on a current GPU in bf16).
    """
    if torch.device(device).type == "cpu":
        return 1024 if quick else 2048
    return 4096 if quick else 8192


def matmul_flops_per_s(
    device: torch.device | str,
    dtype: str = "fp32",
    *,
    n: int | None = None,
    quick: bool = False,
) -> float:
    """FLOP/s (2 per multiply-add) of an n x n @ n x n matmul in `dtype`, its fastest timed repeat.

    The fastest, not the median: this is the device's practical peak, and a slower
    repeat measures other work sharing the device (on a 2-core VM the median of
    three quick repeats ranged 1.0e11-1.75e11 FLOP/s between runs).

    `bf16` / `fp16` multiply tensors of that dtype directly. `fp32` on CUDA runs
    with TF32 allowed when cuDNN convolutions may use TF32 (PyTorch's default:
    convolutions yes, matmuls no), because convolutions dominate these models and
    a full-fp32 reference would put them above 100%; elsewhere fp32 runs under the
    matmul precision in force.
    """
    device = torch.device(device)
    # A CPU matmul at n=2048 takes ~0.1-0.5 s: fewer per round there.
    timing = Timing(warmup_steps=2, rounds=settings_for(quick).repeats, round_steps=2 if device.type == "cpu" else 10)
    n = n or matmul_size(device, quick)
    torch_dtype = DTYPES[dtype] or torch.float32
    tf32 = device.type == "cuda" and dtype == "fp32" and torch.backends.cudnn.allow_tf32
    previous = torch.get_float32_matmul_precision()
    try:
        if tf32:
            torch.set_float32_matmul_precision("high")
        a = torch.randn(n, n, device=device, dtype=torch_dtype)
        b = torch.randn(n, n, device=device, dtype=torch_dtype)
        out = torch.empty(n, n, device=device, dtype=torch_dtype)

        def matmuls(k: int) -> None:
            for _ in range(k):
                torch.mm(a, b, out=out)

        rounds = measure(matmuls, device, timing)
    finally:
        torch.set_float32_matmul_precision(previous)
    a = b = out = None  # drop the matrices (the closure holds them too) before the models are measured
    release_memory(device)  # give the matrices' blocks back before the models are measured
    return rounds.per_s(rounds.steps).max * 2 * n**3
