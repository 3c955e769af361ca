"""The paper's Figure 1 four-layer CIFAR-10 net, in the shape of cuda-convnet's `layers-80sec`.

conv 32 5x5 -> max-pool 3/2 -> act; conv 32 5x5 -> act -> avg-pool 3/2;
conv 64 5x5 -> act -> avg-pool 3/2; fc 64 -> act; fc 10.
cuda-convnet's pools cover the border (ceil mode), so 32 -> 16 -> 8 -> 4.
"""

from __future__ import annotations

import torch.nn as nn

from bench.models.common import activation_layer
from bench.models.registry import register_model


class Layers80Sec(nn.Module):
    def __init__(self, num_classes: int = 10, activation: str = "relu"):
        super().__init__()
        act = lambda: activation_layer(activation)  # noqa: E731
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, 5, padding=2),
            nn.MaxPool2d(3, 2, ceil_mode=True),
            act(),
            nn.Conv2d(32, 32, 5, padding=2),
            act(),
            nn.AvgPool2d(3, 2, ceil_mode=True, count_include_pad=False),
            nn.Conv2d(32, 64, 5, padding=2),
            act(),
            nn.AvgPool2d(3, 2, ceil_mode=True, count_include_pad=False),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(64 * 4 * 4, 64), act(), nn.Linear(64, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x))


@register_model("layers-80sec")
def layers_80sec(*, num_classes: int = 10, activation: str = "relu") -> nn.Module:
    """Figure 1's four-layer net (three conv + one hidden FC), activation `relu` | `tanh`."""
    return Layers80Sec(num_classes, activation)
