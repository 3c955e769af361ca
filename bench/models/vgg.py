"""VGG (Simonyan and Zisserman 2014) for 32x32 CIFAR-10, in the form of kuangliu/pytorch-cifar.

3x3 convs (pad 1) in five stages separated by 2x2 max-pools, 32 -> 1, then a
single linear layer on the 512 final maps (the ImageNet model's three FC layers
are dropped, as in kuangliu's version, whose VGG16 reached 92.64%).
`batchnorm` puts BatchNorm2d between each conv and its ReLU (kuangliu's default);
`width` scales every conv.
"""

from __future__ import annotations

import torch.nn as nn

from bench.models.common import check_choice, check_width, scale_channels
from bench.models.registry import register_model

POOL = "M"
CONFIGS = {
    "vgg11": [64, POOL, 128, POOL, 256, 256, POOL, 512, 512, POOL, 512, 512, POOL],
    "vgg16": [64, 64, POOL, 128, 128, POOL, 256, 256, 256, POOL, 512, 512, 512, POOL, 512, 512, 512, POOL],
}


def _vgg(config: list, num_classes: int, batchnorm: bool, width: float) -> nn.Module:
    check_choice("batchnorm", batchnorm, (True, False))
    width = check_width("width", width)
    layers: list[nn.Module] = []
    channels = 3
    for entry in config:
        if entry == POOL:
            layers.append(nn.MaxPool2d(2, 2))
            continue
        out = scale_channels(entry, width)
        layers.append(nn.Conv2d(channels, out, 3, padding=1))
        if batchnorm:
            layers.append(nn.BatchNorm2d(out))
        layers.append(nn.ReLU())
        channels = out
    return nn.Sequential(
        nn.Sequential(*layers),
        nn.Flatten(),
        nn.Linear(channels, num_classes),
    )


@register_model("vgg11", input_size=32)
def vgg11(*, num_classes: int = 10, batchnorm: bool = True, width: float = 1.0) -> nn.Module:
    """VGG11 (config A) for CIFAR-10: eight 3x3 convs, one linear layer."""
    return _vgg(CONFIGS["vgg11"], num_classes, batchnorm, width)


@register_model("vgg16", input_size=32)
def vgg16(*, num_classes: int = 10, batchnorm: bool = True, width: float = 1.0) -> nn.Module:
    """VGG16 (config D) for CIFAR-10: thirteen 3x3 convs, one linear layer."""
    return _vgg(CONFIGS["vgg16"], num_classes, batchnorm, width)
