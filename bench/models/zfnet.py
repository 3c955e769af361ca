"""ZFNet (Zeiler and Fergus 2013) adapted to 32x32 CIFAR-10.

ZFNet is AlexNet with a smaller, finer first layer (7x7 stride 2 instead of
11x11 stride 4, chosen after visualising AlexNet's aliased conv1 filters), dense
(ungrouped) conv layers, and the normalisation after each of the first two
pools. The CIFAR version keeps that relation to our CIFAR AlexNet: conv1 is
3x3 stride 1 (AlexNet's is 5x5), conv2 5x5; maps 32 -> 16 -> 8 -> 4:

    conv1 96 3x3 -> ReLU -> max-pool 3/2 -> LRN
    conv2 256 5x5 -> ReLU -> max-pool 3/2 -> LRN
    conv3 384, conv4 384, conv5 256 (3x3, ReLU) -> max-pool 3/2
    fc 4096 -> ReLU -> dropout; fc 4096 -> ReLU -> dropout; fc num_classes

LRN uses AlexNet's constants (paper's alpha).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn as nn

from bench.models.common import check_probability, check_width, scale_channels
from bench.models.lrn import LocalResponseNorm
from bench.models.registry import register_model


class ZFNet(nn.Module):
    def __init__(self, num_classes: int, width: float, dropout: float):
        super().__init__()
        c1, c2, c3, c4, c5 = (scale_channels(c, width) for c in (96, 256, 384, 384, 256))
        fc = scale_channels(4096, width)
        self.features = nn.Sequential(
            OrderedDict(
                [
                    ("conv1", nn.Conv2d(3, c1, 3, padding=1)),
                    ("act1", nn.ReLU()),
                    ("pool1", nn.MaxPool2d(3, 2, padding=1)),
                    ("norm1", LocalResponseNorm()),
                    ("conv2", nn.Conv2d(c1, c2, 5, padding=2)),
                    ("act2", nn.ReLU()),
                    ("pool2", nn.MaxPool2d(3, 2, padding=1)),
                    ("norm2", LocalResponseNorm()),
                    ("conv3", nn.Conv2d(c2, c3, 3, padding=1)),
                    ("act3", nn.ReLU()),
                    ("conv4", nn.Conv2d(c3, c4, 3, padding=1)),
                    ("act4", nn.ReLU()),
                    ("conv5", nn.Conv2d(c4, c5, 3, padding=1)),
                    ("act5", nn.ReLU()),
                    ("pool5", nn.MaxPool2d(3, 2, padding=1)),
                ]
            )
        )
        self.classifier = nn.Sequential(
            OrderedDict(
                [
                    ("flatten", nn.Flatten()),
                    ("fc6", nn.Linear(c5 * 4 * 4, fc)),
                    ("act6", nn.ReLU()),
                    ("drop6", nn.Dropout(dropout)),
                    ("fc7", nn.Linear(fc, fc)),
                    ("act7", nn.ReLU()),
                    ("drop7", nn.Dropout(dropout)),
                    ("fc8", nn.Linear(fc, num_classes)),
                ]
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@register_model("zfnet", input_size=32)
def zfnet(*, num_classes: int = 10, width: float = 1.0, dropout: float = 0.5) -> nn.Module:
    """ZFNet for 32x32: 3x3 stride-1 conv1, LRN after pools 1 and 2; `width` scales every layer."""
    return ZFNet(num_classes, check_width("width", width), check_probability("dropout", dropout))
