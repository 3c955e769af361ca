"""Where a result came from: the provenance written beside every result.

`environment` returns a flat dict of plain values (device, versions, threads,
host, git commit) to store with every row or run; choosing the device is
`bench.device.pick_device`. Nothing here imports more than torch and the
standard library, and nothing here raises on a missing tool (no git, no
nvidia-smi): absent facts are None.
"""

from __future__ import annotations

import platform
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import torch

# The project root: the folder holding the `bench` package.
_ROOT = Path(__file__).resolve().parent.parent


def _run(cmd: list[str], cwd: Path | None = None) -> str | None:
    """stdout of `cmd`, stripped, or None if it is missing, fails or hangs."""
    try:
        out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def cpu_name() -> str:
    """The CPU model as the OS reports it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    if sys.platform == "darwin":
        brand = _run(["sysctl", "-n", "machdep.cpu.brand_string"])
        if brand:
            return brand
    return platform.processor() or platform.machine() or "unknown cpu"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return f"Apple MPS ({cpu_name()})"
    return cpu_name()


def git_commit() -> str | None:
    """HEAD of the project's repository, with `-dirty` if tracked files changed; None outside git."""
    head = _run(["git", "rev-parse", "HEAD"], cwd=_ROOT)
    if head is None:
        return None
    # Untracked files are not counted: results/ and scratch files would make every run dirty.
    dirty = _run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=_ROOT)
    return head + ("-dirty" if dirty else "")


def _gpu_driver() -> str | None:
    out = _run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
    return out.splitlines()[0].strip() if out else None


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def environment(device: torch.device | str) -> dict:
    """Provenance for a result measured on `device`: a flat dict of str / int / bool / None.

    CUDA, cuDNN and driver versions are None unless `device` is a CUDA device.
    """
    device = torch.device(device)
    on_cuda = device.type == "cuda"
    cudnn = torch.backends.cudnn.version() if on_cuda and torch.backends.cudnn.is_available() else None
    return {
        "device": device.type,
        "device_name": device_name(device),
        "torch": torch.__version__,
        # Read from package metadata so that provenance never pays for importing torchvision.
        "torchvision": _version("torchvision"),
        "cuda": (torch.version.cuda or getattr(torch.version, "hip", None)) if on_cuda else None,
        "cudnn": str(cudnn) if cudnn is not None else None,
        "gpu_driver": _gpu_driver() if on_cuda else None,
        # TF32 and cudnn.benchmark change fp32 speed on GPUs: record the settings in force.
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark) if on_cuda else None,
        "cudnn_allow_tf32": bool(torch.backends.cudnn.allow_tf32) if on_cuda else None,
        "python": platform.python_version(),
        "num_threads": torch.get_num_threads(),
        "hostname": socket.gethostname(),
        "git_commit": git_commit(),
    }
