"""Weight initialisation schemes shared by every model."""

from __future__ import annotations

import torch.nn as nn

INITS = ("default", "paper")

# Modules whose bias the paper sets to 1 carry this attribute (AlexNet's conv2,
# conv4, conv5 and hidden FC layers: "accelerates the early stages of learning
# by providing the ReLUs with positive inputs", section 5).
PAPER_BIAS_ATTR = "paper_bias"


def mark_paper_bias(module: nn.Module, value: float = 1.0) -> nn.Module:
    setattr(module, PAPER_BIAS_ATTR, value)
    return module


def apply_init(model: nn.Module, init: str) -> None:
    """`default`: leave PyTorch's init. `paper`: weights N(0, 0.01), biases 0 (or the marked value)."""
    if init == "default":
        return
    if init != "paper":
        raise ValueError(f"unknown init {init!r}")
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.normal_(m.weight, mean=0.0, std=0.01)
            if m.bias is not None:
                nn.init.constant_(m.bias, getattr(m, PAPER_BIAS_ATTR, 0.0))
