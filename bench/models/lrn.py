"""Cross-channel local response normalisation with the paper's constants, fast on CPU.

    b_c = a_c / (k + alpha * sum_{j in window(c)} a_j^2) ** beta

`window(c)` is channels c - size//2 .. c + (size-1)//2, clipped at the ends, as
in `torch.nn.LocalResponseNorm`. Unlike torch, `alpha` is the paper's (not
divided by `size`): this module with alpha=1e-4 equals
`nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2)`.

Why not torch's: it pads a copy of a^2, runs avg_pool3d over a (size, 1, 1)
window and leaves the backward to autograd through five ops, which is slow on
CPU. Here the window sum is `size` in-place multiply-adds on channel-shifted
views (no padded copy), a^-beta is exp(-beta * log d) (faster than pow on CPU),
and the backward is analytic, reusing the forward's denominator:

    dL/da_i = g_i d_i^-beta - 2 alpha beta a_i * sum_{c : i in window(c)} g_c a_c d_c^(-beta-1)
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.autograd.function import once_differentiable

_HALF = (torch.float16, torch.bfloat16)


def _window_addcmul(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor, value: float,
                    before: int, after: int) -> None:
    """out[:, c] += value * a[:, c'] * b[:, c'] for c' in c-before .. c+after (clipped), c' != c."""
    for o in range(1, after + 1):
        out[:, :-o].addcmul_(a[:, o:], b[:, o:], value=value)
    for o in range(1, before + 1):
        out[:, o:].addcmul_(a[:, :-o], b[:, :-o], value=value)


def _window_addcmul_transposed(grad: torch.Tensor, x: torch.Tensor, t: torch.Tensor, value: float,
                               before: int, after: int) -> None:
    """grad[:, i] += value * x[:, i] * t[:, c] for c in i-after .. i+before (clipped), c != i."""
    for o in range(1, before + 1):
        grad[:, :-o].addcmul_(x[:, :-o], t[:, o:], value=value)
    for o in range(1, after + 1):
        grad[:, o:].addcmul_(x[:, o:], t[:, :-o], value=value)


class _LRNFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, size: int, alpha: float, beta: float, k: float):
        before, after = size // 2, (size - 1) // 2
        out_dtype = x.dtype
        if x.dtype in _HALF:  # under autocast: d and d^-beta in float32, as torch's own LRN computes pow
            x = x.float()
        # fill_ with a Python number: a tensor made from one would be a host-to-device copy, a GPU sync
        d = torch.empty_like(x).fill_(k).addcmul_(x, x, value=alpha)
        _window_addcmul(d, x, x, alpha, before, after)
        p = torch.log(d).mul_(-beta).exp_()
        ctx.save_for_backward(x, p, d)
        ctx.constants = (size, alpha, beta)
        return (x * p).to(out_dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        x, p, d = ctx.saved_tensors
        size, alpha, beta = ctx.constants
        grad_dtype = g.dtype
        grad = g.to(x.dtype) * p
        t = torch.mul(grad, x).div_(d)  # g_c a_c d_c^(-beta-1)
        c = -2.0 * alpha * beta
        grad.addcmul_(x, t, value=c)
        # Input i feeds outputs i - after .. i + before: the window, transposed.
        _window_addcmul_transposed(grad, x, t, c, size // 2, (size - 1) // 2)
        return grad.to(grad_dtype), None, None, None, None


def local_response_norm(x: torch.Tensor, size: int = 5, alpha: float = 1e-4, beta: float = 0.75,
                        k: float = 2.0) -> torch.Tensor:
    """Functional form; channels are dim 1 of an (N, C, ...) tensor; paper's alpha."""
    if x.dim() < 3:
        raise ValueError(f"local_response_norm expects (N, C, ...) with 3 or more dims, got {x.dim()}")
    return _LRNFunction.apply(x, size, alpha, beta, k)


class LocalResponseNorm(nn.Module):
    """AlexNet's LRN (section 3.3); defaults are the paper's k=2, n=5, alpha=1e-4, beta=0.75."""

    def __init__(self, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0):
        super().__init__()
        if size < 1:
            raise ValueError(f"LRN size must be >= 1, got {size}")
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return local_response_norm(x, self.size, self.alpha, self.beta, self.k)

    def extra_repr(self) -> str:
        return f"size={self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k} (paper's alpha)"
