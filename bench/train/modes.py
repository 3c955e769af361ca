"""Speed modes: the precision, backend flags and compilation a run executes with.

Each is a run option recorded with the run (`TrainConfig`'s execution section):

* `dtype`: autocast precision. `auto` resolves once, per device, to `bf16` where
  the device computes it natively (a CUDA GPU that `torch.cuda.is_bf16_supported`
  without emulation; a CPU with AMX tiles or AVX512-BF16, as torch detects them),
  else `fp32`: emulated bf16 is slower than fp32, not faster.
* `cudnn_benchmark`, `tf32` (CUDA only): cuDNN times its convolution algorithms on
  the first call of each shape and keeps the fastest; fp32 matmuls and convolutions
  run on TF32 tensor cores (10-bit mantissa). Both are process-wide flags.
* `compile`: `torch.compile(model, mode=...)`; `reduce-overhead` also captures CUDA
  graphs on CUDA. Compiled kernels are cached on disk (`compile_cache_dir`) so that
  the next run of the same model skips most of the compile time.
* `graph`: the whole training step captured as one CUDA graph (`bench.train.graphed`);
  `graph_unavailable_reason` says where it cannot be.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch
from torch import nn

from bench.cache_dir import default_cache_dir
from bench.device import DTYPES, keep_cpu_heap

DTYPE_CHOICES = (*DTYPES, "auto")
COMPILE_MODES = ("off", "default", "max-autotune", "reduce-overhead")


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bf16 in hardware (not emulated through fp32)."""
    if device.type == "cuda":
        # is_bf16_supported asks the current device; cuda:N may be another model of GPU.
        where = torch.cuda.device(device.index) if device.index is not None else contextlib.nullcontext()
        with where:
            return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    if device.type == "cpu":
        return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())
    return False  # MPS: left at fp32 until measured there


def resolve_dtype(device: torch.device | str, dtype: str) -> str:
    """`dtype` itself, or for `auto` the one `device` runs fastest: `bf16` if native, else `fp32`."""
    if dtype not in DTYPE_CHOICES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of: {', '.join(DTYPE_CHOICES)}")
    if dtype != "auto":
        return dtype
    return "bf16" if native_bf16(torch.device(device)) else "fp32"


def apply_backend_flags(device: torch.device | str, cudnn_benchmark: bool, tf32: bool) -> dict:
    """Set cuDNN autotuning and TF32 for fp32 matmuls and convolutions on CUDA; the settings in force.

    Off CUDA both are recorded as None (they do not apply). On CPU the process keeps its freed
    memory (`keep_cpu_heap`), as every CPU run and benchmark should.
    """
    if torch.device(device).type != "cuda":
        if torch.device(device).type == "cpu":
            keep_cpu_heap()
        return {"cudnn_benchmark": None, "tf32": None}
    torch.backends.cudnn.benchmark = cudnn_benchmark
    # The legacy flags, which bench.env reads back (float32_matmul_precision, cudnn_allow_tf32).
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    return {"cudnn_benchmark": cudnn_benchmark, "tf32": tf32}


def compile_cache_dir() -> Path:
    """Where inductor keeps compiled kernels: under the project's cache (`$BENCH_CACHE`)."""
    return default_cache_dir() / "inductor"


def validate_compile(mode: str) -> None:
    if mode not in COMPILE_MODES:
        raise ValueError(f"unknown compile mode {mode!r}; choose one of: {', '.join(COMPILE_MODES)}")


class _NewStep(nn.Module):
    """A compiled module under CUDA graphs: each call starts a new graph step.

    The graph's outputs live in memory the next replay overwrites; the training step
    finishes with one call's outputs before it makes the next, which is what this marks.
    """

    def __init__(self, compiled: nn.Module):
        super().__init__()
        self.compiled = compiled

    def forward(self, x):
        torch.compiler.cudagraph_mark_step_begin()
        return self.compiled(x)


def compile_model(model: nn.Module, mode: str, *, backend: str = "inductor") -> nn.Module:
    """`model` compiled with torch.compile's `mode`, sharing its parameters; `model` itself for `off`.

    Compiles lazily, on the first call (its time is the first step's). Sets
    `TORCHINDUCTOR_CACHE_DIR` to `compile_cache_dir()` unless it is already set.
    `backend="eager"` traces without generating code (tests).
    """
    validate_compile(mode)
    if mode == "off":
        return model
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(compile_cache_dir()))
    # Modes are inductor's options; another backend (eager, aot_eager) takes none.
    compiled = torch.compile(model, backend=backend, **({"mode": mode} if backend == "inductor" else {}))
    return _NewStep(compiled) if mode == "reduce-overhead" else compiled


def graph_unavailable_reason(
    device: torch.device | str, dtype: str, compile_mode: str = "off", world_size: int = 1
) -> str | None:
    """None when the whole step can be captured on `device` in `dtype`, otherwise why not (one line)."""
    device = torch.device(device)
    if device.type != "cuda":
        return f"whole-step CUDA graphs need a CUDA device, not {device.type}"
    if dtype == "fp16":
        return "fp16's loss scaler decides on the host whether to step, which a CUDA graph cannot replay; use bf16"
    if compile_mode != "off":
        return f"graph captures the eager step; it does not combine with compile={compile_mode!r} (use compile='off')"
    if world_size > 1:
        return "graph is single-process only: DDP's gradient all-reduce is not captured; run without torchrun"
    return None
