"""AlexNet (Krizhevsky, Sutskever, Hinton 2012): the published 227x227 net and a CIFAR-10 adaptation.

Layers as in the paper (section 3.5), channel counts at width 1:

    conv1 96 -> act -> norm -> max-pool
    conv2 256 (grouped) -> act -> norm -> max-pool
    conv3 384 -> act;  conv4 384 (grouped) -> act;  conv5 256 (grouped) -> act -> max-pool
    fc6 4096 -> act -> dropout;  fc7 4096 -> act -> dropout;  fc8 num_classes

`alexnet-paper` (227x227): conv1 11x11 stride 4, conv2 5x5 pad 2, conv3-5 3x3
pad 1, so the maps are 55 -> 27 -> 13 -> 6 and fc6 sees 256*6*6 = 9216.

`alexnet` (32x32, CIFAR-10): conv1 is 5x5 stride 1 pad 2 instead of 11x11
stride 4, because a stride-4 stem would leave an 8x8 map after conv1 and 1x1
after the third pool; with stride 1 the maps are 32 -> 16 -> 8 -> 4 and fc6
sees 256*4*4 = 4096, the same fc6 fan-in scale as the paper's. Everything
else is the paper's layer for layer.

Knobs (all independent):
  activation  relu | tanh (section 3.1).
  norm        lrn | batchnorm | none. LRN (k=2, n=5, alpha=1e-4, beta=0.75,
              the paper's constants) follows the activation of conv1 and conv2
              (section 3.3). `batchnorm` puts BatchNorm2d in exactly those two
              places, so the knob swaps only the normaliser.
  lrn_alpha   the LRN's alpha (default the paper's 1e-4). On standardised inputs
              with He weights, alpha = 1e-4 leaves the data term alpha * sum(a^2)
              ~1e-5 of the denominator: LRN is a constant gain of k^-beta. (With
              the paper's own N(0, 0.01) weights on raw pixels the share at
              initialisation is ~0.3%, so the paper's alpha is no normaliser at
              initialisation either.) The studies choose alpha so that LRN acts,
              and record its data share at initialisation and at the end
              (`lrn_activity`). Up to conv1's ReLU the net is positively
              homogeneous, so inputs scaled by c act like alpha * c^2; with
              c ~ 64 (the pixels' std in 0-255 units) cuda-convnet2's released
              ImageNet layer (scale 1e-4 divided by size 5) is alpha ~ 0.08.
  pool        overlap (3x3 stride 2, section 3.4) | nonoverlap (2x2 stride 2).
              Overlapping pools are padded (CIFAR: pad 1) so both give maps of
              the same size at every stage; only the overlap differs.
  dropout     probability in fc6 and fc7 (0.5 in the paper, 0 = off), applied
              to their outputs: "setting to zero the output of each hidden neuron".
  groups      1 | 2. 2 is the paper's two-GPU split (section 3.2): conv2, conv4,
              conv5 see only their own tower's maps; conv3 and the FC layers see
              both. With groups=2 the towers' LRN windows are not split at the
              tower boundary (a two-channel difference from cuda-convnet).
  width       multiplier on every conv channel count and FC width. Conv channels
              are rounded to a multiple of `groups` (at least `groups`).
  conv_width  multiplier on conv1-conv4 channels only. The paper's one-GPU
              baseline "with half the kernels in each conv layer" is
              groups=1, conv_width=0.5: its footnote says conv5 (and the FC
              layers after it) were left at full size so that the two nets have
              about the same number of parameters, and conv_width follows that.

With init='paper' the layers the paper starts with bias 1 (conv2, conv4,
conv5, fc6, fc7) get it; the rest get 0 (section 5).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn as nn

from bench.models.common import (
    ACTIVATIONS,
    activation_layer,
    check_choice,
    check_positive,
    check_probability,
    check_width,
    scale_channels,
)
from bench.models.init import mark_paper_bias
from bench.models.lrn import LocalResponseNorm
from bench.models.registry import register_model

NORMS = ("lrn", "batchnorm", "none")
POOLS = ("overlap", "nonoverlap")
GROUPS = (1, 2)
CONV_CHANNELS = (96, 256, 384, 384, 256)
FC_WIDTH = 4096


def _pool_out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


class AlexNet(nn.Module):
    """`features` and `classifier` are Sequentials of named layers, every activation,
    normalisation, pooling and dropout a module of its own so hooks and FLOP
    counters see each one."""

    def __init__(
        self,
        *,
        num_classes: int,
        input_size: int,
        stem: tuple[int, int, int],
        overlap_padding: int,
        activation: str,
        norm: str,
        pool: str,
        dropout: float,
        groups: int,
        width: float,
        conv_width: float,
        lrn_alpha: float = 1e-4,
    ):
        super().__init__()
        check_choice("activation", activation, tuple(ACTIVATIONS))
        check_choice("norm", norm, NORMS)
        check_choice("pool", pool, POOLS)
        check_choice("groups", groups, GROUPS)
        dropout = check_probability("dropout", dropout)
        width = check_width("width", width)
        conv_width = check_width("conv_width", conv_width)
        lrn_alpha = check_positive("lrn_alpha", lrn_alpha)

        multipliers = (conv_width,) * 4 + (1.0,)
        c1, c2, c3, c4, c5 = (scale_channels(c, width * m, groups) for c, m in zip(CONV_CHANNELS, multipliers))
        fc = scale_channels(FC_WIDTH, width)
        kernel, stride, padding = stem
        pool_shape = (3, 2, overlap_padding) if pool == "overlap" else (2, 2, 0)

        def normaliser(channels: int) -> nn.Module | None:
            if norm == "lrn":
                return LocalResponseNorm(size=5, alpha=lrn_alpha, beta=0.75, k=2.0)
            return nn.BatchNorm2d(channels) if norm == "batchnorm" else None

        def block(i: int, conv: nn.Conv2d, normalised: bool = False, pooled: bool = False):
            layers = [(f"conv{i}", conv), (f"act{i}", activation_layer(activation))]
            if normalised and (m := normaliser(conv.out_channels)) is not None:
                layers.append((f"norm{i}", m))
            if pooled:
                layers.append((f"pool{i}", nn.MaxPool2d(*pool_shape)))
            return layers

        grouped = dict(groups=groups)
        self.features = nn.Sequential(
            OrderedDict(
                block(1, nn.Conv2d(3, c1, kernel, stride, padding), normalised=True, pooled=True)
                + block(2, mark_paper_bias(nn.Conv2d(c1, c2, 5, padding=2, **grouped)), normalised=True, pooled=True)
                + block(3, nn.Conv2d(c2, c3, 3, padding=1))
                + block(4, mark_paper_bias(nn.Conv2d(c3, c4, 3, padding=1, **grouped)))
                + block(5, mark_paper_bias(nn.Conv2d(c4, c5, 3, padding=1, **grouped)), pooled=True)
            )
        )
        side = _pool_out(input_size, kernel, stride, padding)
        for _ in range(3):
            side = _pool_out(side, *pool_shape)

        def drop() -> nn.Module:
            return nn.Dropout(dropout) if dropout > 0 else nn.Identity()

        self.classifier = nn.Sequential(
            OrderedDict(
                [
                    ("flatten", nn.Flatten()),
                    ("fc6", mark_paper_bias(nn.Linear(c5 * side * side, fc))),
                    ("act6", activation_layer(activation)),
                    ("drop6", drop()),
                    ("fc7", mark_paper_bias(nn.Linear(fc, fc))),
                    ("act7", activation_layer(activation)),
                    ("drop7", drop()),
                    ("fc8", nn.Linear(fc, num_classes)),
                ]
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@register_model("alexnet", input_size=32)
def alexnet(
    *,
    num_classes: int = 10,
    activation: str = "relu",
    norm: str = "lrn",
    pool: str = "overlap",
    dropout: float = 0.5,
    groups: int = 1,
    width: float = 1.0,
    conv_width: float = 1.0,
    lrn_alpha: float = 1e-4,
) -> nn.Module:
    """AlexNet for 32x32 CIFAR-10: the paper's eight layers, 5x5 stride-1 conv1, one tower by default."""
    return AlexNet(
        num_classes=num_classes,
        input_size=32,
        stem=(5, 1, 2),
        overlap_padding=1,
        activation=activation,
        norm=norm,
        pool=pool,
        dropout=dropout,
        groups=groups,
        width=width,
        conv_width=conv_width,
        lrn_alpha=lrn_alpha,
    )


@register_model("alexnet-paper", input_size=227)
def alexnet_paper(
    *,
    num_classes: int = 1000,
    activation: str = "relu",
    norm: str = "lrn",
    pool: str = "overlap",
    dropout: float = 0.5,
    groups: int = 2,
    width: float = 1.0,
    conv_width: float = 1.0,
    lrn_alpha: float = 1e-4,
) -> nn.Module:
    """AlexNet as published, 227x227 input, two towers: 60,965,224 parameters at 1000 classes."""
    return AlexNet(
        num_classes=num_classes,
        input_size=227,
        stem=(11, 4, 0),
        overlap_padding=0,
        activation=activation,
        norm=norm,
        pool=pool,
        dropout=dropout,
        groups=groups,
        width=width,
        conv_width=conv_width,
        lrn_alpha=lrn_alpha,
    )
