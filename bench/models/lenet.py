"""LeNet-5 (LeCun, Bottou, Bengio, Haffner 1998) on 32x32 RGB: its 1998 form and its common form.

`lenet5-1998`: C1 conv 6 5x5 -> S2 subsample -> C3 conv 16 5x5 -> S4 subsample
-> C5 conv 120 5x5 -> F6 fc 84 -> output fc 10, every unit squashed (LeCun's
scaled tanh 1.7159 tanh(2x/3) by default). The subsampling layers are the
paper's: the 2x2 average times a trainable per-map coefficient plus a trainable
per-map bias, then the squashing function. Two simplifications, both standard:
C3 connects to all six S2 maps (the paper's sparse connection table is
dropped), and the output layer is a linear layer rather than Euclidean RBF units.

`lenet5`: the form most code calls LeNet-5: ReLU and 2x2 max-pooling, no
trainable subsampling, fc 120 -> 84 -> 10.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from bench.models.common import check_choice
from bench.models.registry import register_model


class ScaledTanh(nn.Module):
    """1.7159 tanh(2x/3): LeCun's choice, so that f(1) = 1 and f(-1) = -1 (1998, appendix A)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 1.7159 * torch.tanh(x * (2.0 / 3.0))


SQUASHERS = {"scaled_tanh": ScaledTanh, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}


class Subsample(nn.Sequential):
    """S2/S4: 2x2 average, per-map coefficient and bias (a depthwise 1x1 conv), squashing."""

    def __init__(self, channels: int, squash: type[nn.Module]):
        super().__init__(
            nn.AvgPool2d(2),
            nn.Conv2d(channels, channels, 1, groups=channels),
            squash(),
        )


@register_model("lenet5-1998", input_size=32)
def lenet5_1998(*, num_classes: int = 10, activation: str = "scaled_tanh") -> nn.Module:
    """LeNet-5 as in 1998; activation scaled_tanh | tanh | sigmoid."""
    check_choice("activation", activation, tuple(SQUASHERS))
    squash = SQUASHERS[activation]
    return nn.Sequential(
        nn.Conv2d(3, 6, 5),
        squash(),  # C1: 32 -> 28
        Subsample(6, squash),  # S2: 28 -> 14
        nn.Conv2d(6, 16, 5),
        squash(),  # C3: 14 -> 10
        Subsample(16, squash),  # S4: 10 -> 5
        nn.Conv2d(16, 120, 5),
        squash(),  # C5: 5 -> 1
        nn.Flatten(),
        nn.Linear(120, 84),
        squash(),  # F6
        nn.Linear(84, num_classes),
    )


@register_model("lenet5", input_size=32)
def lenet5(*, num_classes: int = 10) -> nn.Module:
    """LeNet-5 in its common modern form: ReLU, 2x2 max-pooling."""
    return nn.Sequential(
        nn.Conv2d(3, 6, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120),
        nn.ReLU(),
        nn.Linear(120, 84),
        nn.ReLU(),
        nn.Linear(84, num_classes),
    )
