"""A locally connected layer: a convolution whose kernel differs at every output location.

cuda-convnet's `type=local` layer ("unshared" weights): each output position (i, j)
has its own (out_channels, in_channels, k, k) kernel and its own bias per filter,
so an HxW output holds H*W kernels and out_channels*H*W biases (cuda-convnet's
`LocalUnsharedLayerParser` makes `modules * filters` biases).

How: `F.unfold` (im2col) copies each k x k patch of the zero-padded input into a
column, (N, C*k*k, L) for L = H*W output locations; one `torch.bmm`, batched over
the L locations, multiplies each location's columns (L, N, C*k*k) by that
location's weights (L, C*k*k, O); the (L, N, O) result is viewed as (N, O, H, W)
without a copy. Why: both are single native ops with native backwards (unfold's
is fold, col2im); the unfolded copy is small where these layers sit (64 channels
x 9 taps x 36 locations per image in cifar-conv-local); and fvcore counts bmm's
multiply-adds exactly, where its generic einsum count is parsed from numpy's
einsum_path report, rounded to four significant digits (1,327,104 reads as
1.327e+06). `bench.measure.flops` counts im2col as data movement (0) and the
bias as an element-wise add, one per output. An `as_strided` view instead of
unfold would save the copy in the forward, but its backward is autograd's
generic as_strided scatter, and bmm needs the patches contiguous anyway.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class LocallyConnected2d(nn.Module):
    """Untied-weight 2-D convolution for a fixed square input side.

    `weight`: (out_h, out_w, out_channels, in_channels, k, k), so `weight[i, j]` is the
    ordinary conv kernel applied at output location (i, j). `bias`:
    (out_channels, out_h, out_w), one per filter per location. The input side is
    fixed when the layer is built; another side is a ValueError.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        input_size: int,
        *,
        stride: int = 1,
        padding: int = 0,
        bias: bool = True,
    ):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.input_size = input_size
        self.output_size = (input_size + 2 * padding - kernel_size) // stride + 1
        if self.output_size < 1:
            raise ValueError(
                f"a {kernel_size}x{kernel_size} kernel with padding {padding} does not fit a {input_size}x{input_size} input"
            )
        side = self.output_size
        self.weight = nn.Parameter(torch.empty(side, side, out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels, side, side)) if bias else None
        self.reset_parameters()

    @property
    def fan_in(self) -> int:
        """Inputs to one output unit: in_channels * k * k (as a conv's)."""
        return self.in_channels * self.kernel_size**2

    @property
    def fan_out(self) -> int:
        """Outputs one input unit feeds, away from the border: out_channels * k * k (as a conv's)."""
        return self.out_channels * self.kernel_size**2

    def reset_parameters(self) -> None:
        # As nn.Conv2d's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases.
        bound = 1.0 / math.sqrt(self.fan_in)
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        if (c, h, w) != (self.in_channels, self.input_size, self.input_size):
            raise ValueError(
                f"{type(self).__name__} was built for {self.in_channels}x{self.input_size}x{self.input_size} "
                f"inputs (its weights are per location), got {c}x{h}x{w}"
            )
        cols = F.unfold(x, self.kernel_size, padding=self.padding, stride=self.stride)  # (N, C*k*k, L)
        side = self.output_size
        weight = self.weight.reshape(side * side, self.out_channels, -1)  # (L, O, C*k*k), a view
        out = torch.bmm(cols.permute(2, 0, 1), weight.transpose(1, 2))  # (L, N, O)
        out = out.permute(1, 2, 0).view(n, self.out_channels, side, side)
        return out if self.bias is None else out + self.bias

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, input_size={self.input_size}, output_size={self.output_size}, "
            f"bias={self.bias is not None}"
        )
