"""The device work runs on: choosing it, the precisions it computes in, waiting for it, running out of its memory.

`pick_device` resolves `--device` once; `synchronize` waits for queued work so
that a clock read after it is honest; `is_oom` tells an out-of-memory failure
from any other, so that callers can retry smaller or record `oom`;
`keep_cpu_heap` stops the C allocator handing a step's memory back to the
operating system only to fault it in again on the next step.
"""

from __future__ import annotations

import ctypes
import functools
import sys

import torch

from bench.errors import UserError

DEVICES = ("auto", "cpu", "cuda", "mps")  # and cuda:N for a particular GPU
# Autocast precisions; fp32 means no autocast.
DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def pick_device(name: str = "auto") -> torch.device:
    """`auto` picks cuda, then mps, then cpu; an explicit device that is absent raises `UserError`.

    Accepts `cuda:N` for a particular GPU.
    """
    kind, _, index = name.partition(":")
    if kind not in DEVICES or (index and (kind != "cuda" or not index.isdigit())):
        raise UserError(f"unknown device {name!r}; choose one of: {', '.join(DEVICES)} (or cuda:N)")
    if kind == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if kind == "cuda":
        if not torch.cuda.is_available():
            built = f"built with CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise UserError(
                f"--device {name}: no CUDA GPU is visible to torch {torch.__version__} ({built}); "
                "check nvidia-smi and CUDA_VISIBLE_DEVICES, install a CUDA build of PyTorch, "
                "or use --device cpu"
            )
        if index and int(index) >= torch.cuda.device_count():
            raise UserError(
                f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) visible; "
                f"use cuda:0 .. cuda:{torch.cuda.device_count() - 1}"
            )
    if kind == "mps" and not _mps_available():
        raise UserError(f"--device mps: MPS is not available in torch {torch.__version__}; use --device cpu")
    return torch.device(name)


def synchronize(device: torch.device) -> None:
    """Wait for queued device work, so that a clock read after it is honest."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def is_oom(exc: BaseException) -> bool:
    """Whether `exc` is the device (or the CPU allocator) running out of memory."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    msg = str(exc)
    return isinstance(exc, RuntimeError) and (
        "out of memory" in msg or "can't allocate memory" in msg  # MPS; CPU allocator
    )


def threads_per_cell(jobs: int, threads: int | None = None) -> int:
    """The CPU threads each of `jobs` packed cells may use: the parent's share, at least one."""
    return max(1, (threads if threads is not None else torch.get_num_threads()) // jobs)


# glibc's mallopt parameters (malloc.h) and the values set: blocks up to KEPT_BLOCK_BYTES come from
# the heap (a full-width AlexNet-CIFAR activation at batch 128 is 50 MB), and up to
# KEPT_FREE_BYTES of free memory stays at the heap's top instead of going back to the kernel.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
KEPT_BLOCK_BYTES = 256 << 20
KEPT_FREE_BYTES = 1 << 30


@functools.cache
def keep_cpu_heap() -> bool:
    """Keep freed CPU memory in the process (glibc); True when set, False where it does not apply.

    Why: glibc returns freed blocks to the kernel (munmap of blocks above its mmap threshold,
    which adapts only up to 32 MB; trimming of the heap's free top), and every page of the next
    step's tensors is then faulted in and zeroed again. Minor page faults per AlexNet-CIFAR
    training step (`scripts/step_page_faults.py`; batch 128, channels_last, fp32), with LRN /
    without, varying with the heap's history: width 1/8, 1,030-3,347 / 0-5,293; width 1/2,
    about 17,500 / 0-7,354; width 1, 188,681 / 72,774. With these settings: 1/8, 0-499 / 0;
    1/2, 0 / 0. A training process's memory stays at its peak, which it reaches every step anyway.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library the process already runs on
    except (OSError, AttributeError):  # a libc without mallopt (musl): nothing to set
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, KEPT_BLOCK_BYTES)) and bool(mallopt(_M_TRIM_THRESHOLD, KEPT_FREE_BYTES))
