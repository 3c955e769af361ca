"""cuda-convnet's `layers-conv-local-11pct`: the AlexNet paper's own CIFAR-10 net (section 3.3).

The paper: "On CIFAR-10 ... a four-layer CNN achieved a 13% test error rate
without normalization and 11% with normalization". Layer for layer from
cuda-convnet's example-layers/layers-conv-local-11pct.cfg and
layer-params-conv-local-11pct.cfg (latest release), channels at width 1:

    layer   what                                    output    cfg initW
    conv1   conv 64 5x5 pad 2 -> act1               64x24x24  1e-4
    pool1   max 3x3 stride 2                        64x12x12
    norm1   cross-map response norm over 9 maps
    conv2   conv 64 5x5 pad 2 -> act2               64x12x12  0.01
    norm2   cross-map response norm over 9 maps
    pool2   max 3x3 stride 2                        64x6x6
    local3  locally connected 64 3x3 pad 1 -> act3  64x6x6    0.04
    local4  locally connected 32 3x3 pad 1 -> act4  32x6x6    0.04
    fc10    fully connected 10                      10        0.01

2,112,970 parameters and 19,512,576 multiply-adds per 24x24 image.

Input: 24x24 crops of the 32x32 images. With the cifar10 source, bench.data cuts
them: a random window (and a random flip) in training with `crop` (and `flip`)
augmentation, the centre window in evaluation, cuda-convnet's one-view test.

Pooling: cuda-convnet's pool side is ceil((in - sizeX) / stride) + 1 (layer.py,
PoolLayerParser, outputsX=0, start=0), so 24 -> 12 -> 6: MaxPool2d(3, 2,
ceil_mode=True), whose last window hangs one pixel over the border and takes the
max of what it covers, as cuda-convnet's does.

Normalisation: cmrnorm with size=9, scale=0.001, pow=0.75. layer.py divides
`scale` by `size` for cross-map norm, and the kernel (kFCNorm in conv_util.cu)
adds 1 and sums maps c-4 .. c+4, clipped at the ends:

    b_c = a_c / (1 + (0.001 / 9) * sum_{9 maps} a^2) ^ 0.75

which is LocalResponseNorm(size=9, alpha=0.001/9, beta=0.75, k=1) here (this
project's alpha is the paper's, per element, not divided by size), that is
torch.nn.LocalResponseNorm(9, alpha=0.001, beta=0.75, k=1).

Locally connected layers (cuda-convnet's `type=local`) have a kernel and a bias
per filter per output location: bench.models.local.LocallyConnected2d.

Knobs:
  norm        lrn | none. `none` drops norm1 and norm2 and nothing else (same
              parameters): the controlled comparison of the paper's sentence.
              cuda-convnet's own 13pct file differs in more than the norm
              layers: its local3 has 32 filters, not 64, and its fc10 wc is 0.004.
  width       multiplier on every layer's channels (conv1, conv2, local3, local4).
  activation  relu (the cfg's) | tanh.

With init='paper' each layer's weights are drawn from N(0, cfg initW), biases 0
(cuda-convnet's initB default).

The recipe (layer-params-conv-local-11pct.cfg): epsW 0.001, epsB 0.002, momW =
momB = 0.9, wc 0 for conv1 and conv2, 0.004 for local3 and local4, 0.01 for
fc10; biases are never decayed. cuda-convnet's update (weights.cuh) is

    inc = mom * inc + eps * mean gradient - wc * eps * W;  W += inc

and PyTorch's SGD (momentum, no dampening) with lr = eps and weight_decay = wc
takes the same steps while the rate is constant (after a rate change they differ:
cuda-convnet's momentum carries the old eps, PyTorch's applies the new lr).
`RECIPE` holds it as TrainConfig values: decay='layers' decays each layer at
weight_decay (0.004) times the multiplier it declares here (0, 0, 1, 1, 2.5), and
biases learn at lr times 2. cuda-convnet's CIFAR provider subtracts the mean image
from raw 0-255 pixels (preprocess='meanonly'), the scale conv1's 1e-4 is set for.
Its batch is 128; its schedule was by hand (the params file's methodology: about
350 epochs at 0.001 on four of the five training batches, 150 more with the fifth
folded in, then 10 at 0.0001 and 10 at 0.00001).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn as nn

from bench.models.common import ACTIVATIONS, activation_layer, check_choice, check_width, scale_channels
from bench.models.init import mark_paper_std
from bench.models.local import LocallyConnected2d
from bench.models.lrn import LocalResponseNorm
from bench.models.recipe import mark_decay, set_bias_lr
from bench.models.registry import register_model

NORMS = ("lrn", "none")
INPUT_SIZE = 24
CHANNELS = (64, 64, 64, 32)  # conv1, conv2, local3, local4
# cfg initW per layer: the paper init's weight std.
INIT_STD = {"conv1": 1e-4, "conv2": 0.01, "local3": 0.04, "local4": 0.04, "fc10": 0.01}
# cfg wc per layer over the recipe's weight_decay (0.004): decay='layers' multiplies by these.
DECAY_MULTIPLIER = {"conv1": 0.0, "conv2": 0.0, "local3": 1.0, "local4": 1.0, "fc10": 2.5}
BIAS_LR_MULTIPLIER = 2.0  # epsB / epsW
# The cfg's optimisation as TrainConfig values (see the module docstring).
RECIPE = {
    "init": "paper",
    "preprocess": "meanonly",
    "augment": "crop+flip",
    "batch_size": 128,
    "lr": 0.001,
    "momentum": 0.9,
    "weight_decay": 0.004,
    "decay": "layers",
    "schedule": "constant",
}


def pool_side(side: int, size: int = 3, stride: int = 2) -> int:
    """cuda-convnet's pool output side: ceil((side - size) / stride) + 1 (what ceil_mode=True gives)."""
    return -(-(side - size) // stride) + 1


class ConvLocalNet(nn.Module):
    """`features` and `classifier` are Sequentials of named layers, each activation,
    normalisation and pool a module of its own so hooks and FLOP counters see it."""

    def __init__(self, *, num_classes: int, norm: str, width: float, activation: str):
        super().__init__()
        check_choice("norm", norm, NORMS)
        check_choice("activation", activation, tuple(ACTIVATIONS))
        width = check_width("width", width)
        c1, c2, c3, c4 = (scale_channels(c, width) for c in CHANNELS)

        def lrn(i: int) -> list:
            # cuda-convnet's cmrnorm size=9, scale=0.001 (divided by size), pow=0.75, plus 1.
            return [(f"norm{i}", LocalResponseNorm(size=9, alpha=0.001 / 9, beta=0.75, k=1.0))] if norm == "lrn" else []

        def pool(i: int) -> tuple:
            return (f"pool{i}", nn.MaxPool2d(3, 2, ceil_mode=True))

        side = pool_side(pool_side(INPUT_SIZE))  # 24 -> 12 -> 6
        layers = [
            ("conv1", nn.Conv2d(3, c1, 5, padding=2)),
            ("act1", activation_layer(activation)),
            pool(1),
            *lrn(1),
            ("conv2", nn.Conv2d(c1, c2, 5, padding=2)),
            ("act2", activation_layer(activation)),
            *lrn(2),
            pool(2),
            ("local3", LocallyConnected2d(c2, c3, 3, side, padding=1)),
            ("act3", activation_layer(activation)),
            ("local4", LocallyConnected2d(c3, c4, 3, side, padding=1)),
            ("act4", activation_layer(activation)),
        ]
        self.features = nn.Sequential(OrderedDict(layers))
        self.classifier = nn.Sequential(
            OrderedDict([("flatten", nn.Flatten()), ("fc10", nn.Linear(c4 * side * side, num_classes))])
        )
        for name, module in (*self.features.named_children(), *self.classifier.named_children()):
            if name in INIT_STD:
                mark_paper_std(module, INIT_STD[name])
                mark_decay(module, DECAY_MULTIPLIER[name])
        set_bias_lr(self, BIAS_LR_MULTIPLIER)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@register_model("cifar-conv-local", input_size=INPUT_SIZE, crop_from=32)
def cifar_conv_local(
    *, num_classes: int = 10, norm: str = "lrn", width: float = 1.0, activation: str = "relu"
) -> nn.Module:
    """cuda-convnet's layers-conv-local-11pct (24x24 crops): conv, conv, two locally connected, fc; LRN knob."""
    return ConvLocalNet(num_classes=num_classes, norm=norm, width=width, activation=activation)
