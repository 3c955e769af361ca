"""The float32 CPU kernels of the LRN (`lrn_cpu.c`): built once per machine with its C compiler, then loaded.

Why C and not inductor on CPU: inductor's kernels vectorise over the channels, which at
the studies' widths (12 and 32 channels at 1/8) leaves most of each vector masked, and
they need two passes for the backward; these take any channel count at full vector width
and do the backward in one pass. Building takes about a second (no torch headers), so
every size can use them: no threshold, no minutes of first-call compile.

The shared library is cached under `kernel_cache_dir()`, named by a hash of the source,
the compiler, its flags and this CPU's instruction set (it is built for this CPU), and
compiled with OpenMP: loaded into a process that runs torch, it uses torch's OpenMP runtime
and threads. Without a compiler or OpenMP, `unavailable_reason` says why and the LRN runs
its other paths.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

from bench.data.cache import default_cache_dir

SOURCE = Path(__file__).with_name("lrn_cpu.c")
FLAGS = ("-O3", "-march=native", "-fno-math-errno", "-fopenmp", "-fPIC", "-shared", "-std=c11")

_I64, _F32 = ctypes.c_int64, ctypes.c_float
_POINTER = ctypes.c_void_p
_SIGNATURES = {
    "lrn_rows_forward": (_POINTER, _POINTER, _I64, _I64, _I64, _I64, _F32, _F32, _F32),
    "lrn_rows_backward": (_POINTER, _POINTER, _POINTER, _I64, _I64, _I64, _I64, _F32, _F32, _F32),
    "lrn_planes_forward": (_POINTER, _POINTER, _I64, _I64, _I64, _I64, _I64, _F32, _F32, _F32),
    "lrn_planes_backward": (_POINTER, _POINTER, _POINTER, _I64, _I64, _I64, _I64, _I64, _F32, _F32, _F32),
}


def _compiler() -> str | None:
    chosen = os.environ.get("CC")
    if chosen:
        return shutil.which(chosen)
    return shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")


def kernel_cache_dir() -> Path:
    """Where built kernels are kept: `$BENCH_KERNELS`, else `$BENCH_CACHE/kernels`."""
    chosen = os.environ.get("BENCH_KERNELS")
    return Path(chosen) if chosen else default_cache_dir() / "kernels"


def _cpu_identity() -> str:
    """What `-march=native` builds for: this CPU's feature flags (Linux), else the platform's name."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith("flags")), platform.processor())
    except OSError:
        return platform.machine() + platform.processor()


class _Built:
    def __init__(self, library: ctypes.CDLL):
        self.functions = {}
        for name, arguments in _SIGNATURES.items():
            fn = getattr(library, name)
            fn.argtypes, fn.restype = arguments, ctypes.c_int
            self.functions[name] = fn
        library.lrn_isa.argtypes, library.lrn_isa.restype = (), ctypes.c_char_p
        self.isa = library.lrn_isa().decode()


@functools.cache
def _build() -> _Built | str:
    """The loaded kernels, or why they could not be built (a string)."""
    compiler = _compiler()
    if compiler is None:
        chosen = os.environ.get("CC")
        return f"no C compiler for the CPU LRN kernels ({f'$CC={chosen} not found' if chosen else 'cc, gcc or clang'})"
    source = SOURCE.read_bytes()
    key = hashlib.sha256(b"\0".join([source, compiler.encode(), " ".join(FLAGS).encode(), _cpu_identity().encode()]))
    name = f"lrn_cpu-{key.hexdigest()[:16]}.so"
    for folder in (kernel_cache_dir(), None):
        private = folder is None
        try:
            folder = folder or Path(
                tempfile.mkdtemp(prefix="bench-kernels-")
            )  # an unwritable cache: this process's own
            folder.mkdir(parents=True, exist_ok=True)
            library = folder / name
            if not library.exists():
                _compile(compiler, folder, library)
            break
        except subprocess.CalledProcessError as exc:
            return f"building the CPU LRN kernels failed ({compiler}): {(exc.stderr or '').strip()[-300:]}"
        except OSError as exc:
            why = f"building the CPU LRN kernels failed: {exc}"
    else:
        return why
    try:
        return _Built(ctypes.CDLL(str(library)))
    except (OSError, AttributeError) as exc:
        return f"loading the CPU LRN kernels failed: {exc}"
    finally:
        if private:
            shutil.rmtree(folder, ignore_errors=True)  # this process's own: loaded (or not), it is not needed again


def _compile(compiler: str, folder: Path, library: Path) -> None:
    # Into a temporary name, then renamed: processes building at once never load a half-written file.
    fd, partial = tempfile.mkstemp(dir=folder, suffix=".so.partial")
    os.close(fd)
    try:
        subprocess.run(
            [compiler, *FLAGS, str(SOURCE), "-o", partial, "-lm"], check=True, capture_output=True, text=True
        )
        os.replace(partial, library)
    finally:
        Path(partial).unlink(missing_ok=True)


def unavailable_reason() -> str | None:
    """None when the kernels are built and loaded, otherwise why not."""
    built = _build()
    return built if isinstance(built, str) else None


def isa() -> str | None:
    """The vector code the built kernels run: `avx512`, `avx2` (with FMA) or `plain` (C the
    compiler vectorises as it can); None when they could not be built."""
    built = _build()
    return None if isinstance(built, str) else built.isa


def layout(x: torch.Tensor) -> str | None:
    """`rows` (channels innermost: channels_last), `planes` (contiguous NCHW), or None (neither)."""
    if x.is_contiguous():
        return "planes"
    if x.dim() >= 3 and x.movedim(1, -1).is_contiguous():
        return "rows"
    return None


def supports(x: torch.Tensor) -> bool:
    """Whether the kernels take `x`: float32 on the CPU, in one of the two layouts, and they could be built."""
    return (
        x.device.type == "cpu" and x.dtype == torch.float32 and layout(x) is not None and unavailable_reason() is None
    )


def _shape(x: torch.Tensor, kind: str) -> tuple[int, ...]:
    channels = x.shape[1]
    if kind == "rows":
        return (x.numel() // channels if channels else 0, channels)
    return (x.shape[0], channels, x.numel() // (x.shape[0] * channels) if x.shape[0] * channels else 0)


def _in_layout(t: torch.Tensor, kind: str) -> torch.Tensor:
    """`t` in `kind`'s layout: copied only if it is not already (a gradient may arrive in another)."""
    if kind == "planes":
        return t.contiguous()
    return t if t.movedim(1, -1).is_contiguous() else t.movedim(1, -1).contiguous().movedim(-1, 1)


def _check(status: int) -> None:
    if status != 0:
        raise MemoryError("the CPU LRN kernel could not allocate its buffers")


def forward(x: torch.Tensor, size: int, alpha: float, beta: float, k: float) -> torch.Tensor:
    kind = layout(x)
    y = torch.empty_like(x)  # keeps x's memory format
    if x.numel():
        fn = _build().functions[f"lrn_{kind}_forward"]
        _check(fn(x.data_ptr(), y.data_ptr(), *_shape(x, kind), size // 2, (size - 1) // 2, alpha, beta, k))
    return y


def backward(x: torch.Tensor, g: torch.Tensor, size: int, alpha: float, beta: float, k: float) -> torch.Tensor:
    kind = layout(x)
    g = _in_layout(g, kind)
    dx = torch.empty_like(x)
    if x.numel():
        fn = _build().functions[f"lrn_{kind}_backward"]
        _check(
            fn(x.data_ptr(), g.data_ptr(), dx.data_ptr(), *_shape(x, kind), size // 2, (size - 1) // 2, alpha, beta, k)
        )
    return dx
