"""GoogLeNet / Inception v1 (Szegedy et al. 2014) for 32x32 CIFAR-10, as kuangliu/pytorch-cifar.

The ImageNet stem (7x7 stride 2, pools, LRN) is replaced by one 3x3 conv to
192 maps at 32x32; then the paper's nine Inception modules (3a-b, pool, 4a-e,
pool, 5a-b) at 32, 16 and 8, global average pool, one linear layer; no
auxiliary classifiers. As in kuangliu's version, every conv is followed by
BatchNorm and ReLU, and the 5x5 branch is two stacked 3x3 convs (same receptive
field, fewer weights). Convs keep their bias, as kuangliu's do, so parameter
counts match that code. `width` scales every channel count.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from bench.models.common import check_width, scale_channels
from bench.models.registry import register_model

# Per module: 1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool projection (the paper's Table 1).
MODULES = {
    "3a": (64, 96, 128, 16, 32, 32),
    "3b": (128, 128, 192, 32, 96, 64),
    "4a": (192, 96, 208, 16, 48, 64),
    "4b": (160, 112, 224, 24, 64, 64),
    "4c": (128, 128, 256, 24, 64, 64),
    "4d": (112, 144, 288, 32, 64, 64),
    "4e": (256, 160, 320, 32, 128, 128),
    "5a": (256, 160, 320, 32, 128, 128),
    "5b": (384, 192, 384, 48, 128, 128),
}
POOL_AFTER = ("3b", "4e")


def _conv_bn_relu(cin: int, cout: int, kernel: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, kernel, padding=kernel // 2), nn.BatchNorm2d(cout), nn.ReLU()]


class Inception(nn.Module):
    def __init__(self, cin: int, n1: int, r3: int, n3: int, r5: int, n5: int, pool_proj: int):
        super().__init__()
        self.b1 = nn.Sequential(*_conv_bn_relu(cin, n1, 1))
        self.b3 = nn.Sequential(*_conv_bn_relu(cin, r3, 1), *_conv_bn_relu(r3, n3, 3))
        self.b5 = nn.Sequential(*_conv_bn_relu(cin, r5, 1), *_conv_bn_relu(r5, n5, 3), *_conv_bn_relu(n5, n5, 3))
        self.bpool = nn.Sequential(nn.MaxPool2d(3, 1, padding=1), *_conv_bn_relu(cin, pool_proj, 1))
        self.out_channels = n1 + n3 + n5 + pool_proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b1(x), self.b3(x), self.b5(x), self.bpool(x)], dim=1)


class GoogLeNet(nn.Module):
    def __init__(self, num_classes: int, width: float):
        super().__init__()
        cin = scale_channels(192, width)
        self.stem = nn.Sequential(*_conv_bn_relu(3, cin, 3))
        layers: list[nn.Module] = []
        for name, channels in MODULES.items():
            module = Inception(cin, *(scale_channels(c, width) for c in channels))
            layers.append(module)
            cin = module.out_channels
            if name in POOL_AFTER:
                layers.append(nn.MaxPool2d(3, 2, padding=1))
        self.inception = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.inception(self.stem(x)))


@register_model("googlenet", input_size=32)
def googlenet(*, num_classes: int = 10, width: float = 1.0) -> nn.Module:
    """GoogLeNet (Inception v1) for CIFAR-10: 3x3 stem, nine Inception modules, no auxiliary heads."""
    return GoogLeNet(num_classes, check_width("width", width))
