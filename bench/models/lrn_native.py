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

The cache is trusted only as far as it can be checked. A library is loaded only if its bytes
match the checksum written beside it when it was built, and is built again otherwise: a
copy cut short is a bus error once mapped into the process, not an exception, so the check
comes before loading. The folder must be this user's and writable by no one else (whoever
can write there can put code into this process); where it is not, or cannot be written,
the kernels are built in a private temporary folder, and a warning says so once.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import torch

from bench.cache_dir import default_cache_dir

log = logging.getLogger(__name__)

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


def library_name(source: bytes, compiler: str) -> str:
    """The cached library's file name: a hash of all that makes it (the C source, the compiler,
    its flags, this CPU's instruction set), so that a change to any one of them builds it again."""
    key = hashlib.sha256(b"\0".join([source, compiler.encode(), " ".join(FLAGS).encode(), _cpu_identity().encode()]))
    return f"lrn_cpu-{key.hexdigest()[:16]}.so"


def unsafe_folder(folder: Path) -> str | None:
    """Why `folder` cannot hold libraries for this process to load, or None where it can: it must
    be a folder of this user's that no one else can write. A missing one is made, private."""
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = folder.stat()
    except OSError as e:
        return e.strerror or type(e).__name__
    if not stat.S_ISDIR(info.st_mode):
        return "not a folder"
    if info.st_uid != os.geteuid():
        return f"owned by another user (uid {info.st_uid})"
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"writable by other users ({stat.filemode(info.st_mode)})"
    return None


def _checksum_file(library: Path) -> Path:
    return library.with_name(library.name + ".sha256")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _whole(library: Path) -> bool | None:
    """Whether a cached library is byte for byte what was built (the checksum recorded beside it);
    None where there is no library or no checksum."""
    try:
        recorded = _checksum_file(library).read_text().strip()
        return _sha256(library) == recorded
    except FileNotFoundError:
        return None
    except OSError:
        return False


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
    name = library_name(SOURCE.read_bytes(), compiler)
    folder = kernel_cache_dir()
    why = unsafe_folder(folder)
    if why is None:
        library = folder / name
        try:
            whole = _whole(library)
            if whole is False:
                log.warning("the cached CPU LRN kernels %s do not match their checksum; building them again", library)
            if not whole:
                _compile(compiler, library)
            return _load(library)
        except subprocess.CalledProcessError as exc:
            return _failed(compiler, exc)
        except OSError as exc:
            why = f"cannot write there: {exc.strerror or exc}"
    log.warning(
        "the CPU LRN kernels' cache %s%s is not usable (%s); building them in a private temporary folder "
        "(set BENCH_KERNELS to a folder of your own to keep them)",
        folder,
        " ($BENCH_KERNELS)" if os.environ.get("BENCH_KERNELS") else "",
        why,
    )
    private = Path(tempfile.mkdtemp(prefix="bench-kernels-"))
    try:
        _compile(compiler, private / name)
        return _load(private / name)
    except subprocess.CalledProcessError as exc:
        return _failed(compiler, exc)
    except OSError as exc:
        return f"building the CPU LRN kernels failed: {exc}"
    finally:
        shutil.rmtree(private, ignore_errors=True)  # this process's own: loaded (or not), it is not needed again


def _failed(compiler: str, exc: subprocess.CalledProcessError) -> str:
    return f"building the CPU LRN kernels failed ({compiler}): {(exc.stderr or '').strip()[-300:]}"


def _load(library: Path) -> _Built | str:
    try:
        return _Built(ctypes.CDLL(str(library)))
    except (OSError, AttributeError) as exc:
        return f"loading the CPU LRN kernels failed: {exc}"


def _compile(compiler: str, library: Path) -> None:
    """Build `library` and its checksum, each into a temporary name and then renamed: processes
    building at once never load a half-written file, and a crash between the two renames leaves
    a library with no checksum or another's, which is built again."""
    partial = library.with_name(f".{library.name}.{os.getpid()}.partial")
    partial_sum = _checksum_file(partial)
    try:
        subprocess.run(
            [compiler, *FLAGS, str(SOURCE), "-o", str(partial), "-lm"], check=True, capture_output=True, text=True
        )
        partial_sum.write_text(_sha256(partial) + "\n")
        os.replace(partial, library)
        os.replace(partial_sum, _checksum_file(library))
    finally:
        partial.unlink(missing_ok=True)
        partial_sum.unlink(missing_ok=True)


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
