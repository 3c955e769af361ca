"""Weight initialisation schemes shared by every model."""

from __future__ import annotations

import math

import torch.nn as nn

from bench.models.local import LocallyConnected2d

INITS = ("default", "kaiming", "paper")

# Modules whose bias the paper sets to 1 carry this attribute (AlexNet's conv2,
# conv4, conv5 and hidden FC layers: "accelerates the early stages of learning
# by providing the ReLUs with positive inputs", section 5).
PAPER_BIAS_ATTR = "paper_bias"

# Modules whose paper weight std is not 0.01 carry this attribute (cuda-convnet's
# per-layer `initW`: the layers-conv-local-11pct net's conv1 starts at 1e-4, its
# locally connected layers at 0.04).
PAPER_STD_ATTR = "paper_std"

# The layers `paper` and `kaiming` initialise: weights and (where present) biases.
WEIGHT_LAYERS = (nn.Conv2d, nn.Linear, LocallyConnected2d)


def mark_paper_bias(module: nn.Module, value: float = 1.0) -> nn.Module:
    setattr(module, PAPER_BIAS_ATTR, value)
    return module


def mark_paper_std(module: nn.Module, std: float) -> nn.Module:
    """Under init='paper', draw this layer's weights from N(0, std) instead of N(0, 0.01)."""
    setattr(module, PAPER_STD_ATTR, std)
    return module


def apply_init(model: nn.Module, init: str) -> None:
    """`default`: leave PyTorch's init. `paper`: weights N(0, 0.01), biases 0, or what a layer is marked with.

    `kaiming`: He-normal weights (ReLU gain; fan_out for convs and locally connected
    layers, fan_in for linear layers), zero biases. PyTorch's default (uniform, gain 1/sqrt(3)) shrinks the
    signal by ~0.58 per layer, and N(0, 0.01) FC weights by ~0.2 per layer, so a
    deep plain net such as AlexNet barely moves in its first few hundred steps.
    """
    if init == "default":
        return
    if init == "kaiming":
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            elif isinstance(m, LocallyConnected2d):  # as a conv: its weight's shape is not (out, in, k, k)
                nn.init.normal_(m.weight, mean=0.0, std=math.sqrt(2.0 / m.fan_out))
            else:
                continue
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        return
    if init != "paper":
        raise ValueError(f"unknown init {init!r}")
    for m in model.modules():
        if isinstance(m, WEIGHT_LAYERS):
            nn.init.normal_(m.weight, mean=0.0, std=getattr(m, PAPER_STD_ATTR, 0.01))
            if m.bias is not None:
                nn.init.constant_(m.bias, getattr(m, PAPER_BIAS_ATTR, 0.0))
