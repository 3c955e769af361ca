"""ResNet (He, Zhang, Ren, Sun 2015) for 32x32 CIFAR-10, in the form of kuangliu/pytorch-cifar.

The ImageNet stem (7x7 stride 2 conv + max-pool) would shrink 32x32 to 8x8
before the first block, so the CIFAR variant uses a 3x3 stride-1 conv and no
max-pool: stages at 32, 16, 8, 4 with 64, 128, 256, 512 channels (times
`width`), basic blocks, global average pool, one linear layer.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from bench.models.common import check_width, scale_channels
from bench.models.registry import register_model


def _conv_bn(cin: int, cout: int, kernel: int, stride: int) -> list[nn.Module]:
    # No conv bias: the BatchNorm that follows has its own shift.
    return [nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2, bias=False), nn.BatchNorm2d(cout)]


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.residual = nn.Sequential(*_conv_bn(cin, cout, 3, stride), nn.ReLU(), *_conv_bn(cout, cout, 3, 1))
        # Projection shortcut only where the shape changes (option B of the paper).
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(*_conv_bn(cin, cout, 1, stride))
        else:
            self.shortcut = nn.Identity()
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.residual(x) + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, blocks: tuple[int, ...], num_classes: int, width: float):
        super().__init__()
        widths = [scale_channels(c, width) for c in (64, 128, 256, 512)]
        self.stem = nn.Sequential(*_conv_bn(3, widths[0], 3, 1), nn.ReLU())
        stages, cin = [], widths[0]
        for i, (n, cout) in enumerate(zip(blocks, widths)):
            first = BasicBlock(cin, cout, stride=1 if i == 0 else 2)
            stages.append(nn.Sequential(first, *(BasicBlock(cout, cout, 1) for _ in range(n - 1))))
            cin = cout
        self.stages = nn.Sequential(*stages)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)))


@register_model("resnet18", input_size=32)
def resnet18(*, num_classes: int = 10, width: float = 1.0) -> nn.Module:
    """ResNet-18 for CIFAR-10 (3x3 stem, no max-pool): 2-2-2-2 basic blocks."""
    return ResNet((2, 2, 2, 2), num_classes, check_width("width", width))


@register_model("resnet34", input_size=32)
def resnet34(*, num_classes: int = 10, width: float = 1.0) -> nn.Module:
    """ResNet-34 for CIFAR-10 (3x3 stem, no max-pool): 3-4-6-3 basic blocks."""
    return ResNet((3, 4, 6, 3), num_classes, check_width("width", width))
