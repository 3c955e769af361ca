"""Minor page faults per AlexNet-CIFAR training step on the CPU, with and without LRN.

    python scripts/step_page_faults.py --width 0.125 [--keep-heap]

Batch 128, channels_last, fp32, lrn_alpha 0.4 (the studies' CPU mode); 3 warm-up steps, then
the mean over 5. A count, not a time: it holds under any load. `--keep-heap` applies what every
CPU run applies (`apply_backend_flags`, which keeps freed memory in the process).
"""

from __future__ import annotations

import argparse
import resource

import torch

from bench.models import create_model
from bench.train.modes import apply_backend_flags
from bench.train.step import make_optimizer, train_step


def faults_per_step(norm: str, width: float, steps: int = 5) -> float:
    torch.manual_seed(0)
    x = torch.randn(128, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (128,))
    model = create_model("alexnet", norm=norm, width=width, lrn_alpha=0.4).to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, lr=0.01)
    for _ in range(3):
        train_step(model, optimizer, x, y)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(steps):
        train_step(model, optimizer, x, y)
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--width", type=float, default=0.125)
    p.add_argument("--keep-heap", action="store_true", help="apply the CPU run settings first")
    args = p.parse_args()
    if args.keep_heap:
        apply_backend_flags("cpu", cudnn_benchmark=True, tf32=True)
    for norm in ("lrn", "none"):
        print(f"width {args.width} norm {norm}: {faults_per_step(norm, args.width):,.0f} minor page faults per step")


if __name__ == "__main__":
    main()
