"""Cross-channel local response normalisation with the paper's constants, fast on CPU.

    b_c = a_c / (k + alpha * sum_{j in window(c)} a_j^2) ** beta

`window(c)` is channels c - size//2 .. c + (size-1)//2, clipped at the ends, as
in `torch.nn.LocalResponseNorm`. Unlike torch, `alpha` is the paper's (not
divided by `size`): this module with alpha=1e-4 equals
`nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2)`.

Why not torch's: it pads a copy of a^2, runs avg_pool3d over a (size, 1, 1)
window and leaves the backward to autograd through five ops, which is slow on
CPU. Here the backward is analytic:

    dL/da_i = g_i d_i^-beta - 2 alpha beta a_i * sum_{c : i in window(c)} t_c,   t_c = g_c a_c d_c^(-beta-1)

Four ways to run it, chosen per call:

- native: float32 on the CPU, in NCHW or channels_last, at any size: C kernels
  (`lrn_native`, `lrn_cpu.c`), one pass over memory for the forward and one for
  the backward, built in about a second once per machine.
- fused: the forward is one loop over memory and the backward two, built by
  `torch.compile` (inductor: C++ on CPU, Triton on CUDA) once per process and
  cached. Only the input is saved for the backward, which recomputes the
  denominator from it: cheaper than writing and re-reading it. It needs a C++
  compiler (CPU) or Triton (CUDA), and is used from `FUSED_MIN_NUMEL` elements
  on, where the compile (15 s or more, once per process) pays for itself: on
  CUDA, and for half precision or other layouts on the CPU.
- eager: hand-written in-place ops on channel-shifted views (no padded copy);
  used without a compiler, for small tensors off the native path, and under `torch.jit.trace`
  (`bench.measure.flops` traces the model and counts this Function by name).
- traced: inside a model compiled as a whole (`torch.compiler.is_compiling()`),
  the fused path's functional math, forward and backward, which the outer
  compile traces without a graph break and fuses with its neighbours.

For the paper's beta = 3/4, d^-beta is q^3 with q = 1/sqrt(sqrt(d)), and
d^(-beta-1) is q^7: square roots and multiplies instead of log and exp.
"""

from __future__ import annotations

import functools
import inspect
import logging

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.autograd.function import once_differentiable
from torch.utils._python_dispatch import _get_current_dispatch_mode

import bench.models.lrn_native as lrn_native

log = logging.getLogger(__name__)

_HALF = (torch.float16, torch.bfloat16)

# Below this many elements the eager path is used: a compile costs seconds once per
# process, a small tensor saves milliseconds a call, and the unit tests' tiny models
# would each pay for it. AlexNet-CIFAR's conv1 output at batch 128 is 12.6M elements.
FUSED_MIN_NUMEL = 1 << 20

_compile_failed: dict[str, str] = {}  # device type -> why its fused kernels could not be built


# --- functional math: compiled for the fused path, traced by an outer compile --------


def _window_sum(t: torch.Tensor, before: int, after: int) -> torch.Tensor:
    """out[:, c] = sum of t[:, c - before .. c + after], clipped: shifted slices of a zero-padded t.

    The compiler turns the pad and slices into masked loads: nothing is padded in memory.
    """
    channels = t.shape[1]
    padded = F.pad(t, [0, 0] * (t.dim() - 2) + [before, after])
    out = padded[:, :channels]
    for offset in range(1, before + after + 1):
        out = out + padded[:, offset : offset + channels]
    return out


def _denominator_powers(x: torch.Tensor, size: int, alpha: float, beta: float, k: float):
    """d^-beta and d^(-beta-1) for d = k + alpha * (window sum of x^2)."""
    d = _window_sum(x * x, size // 2, (size - 1) // 2) * alpha + k
    if beta == 0.75:
        q = torch.rsqrt(torch.sqrt(d))  # d^-1/4
        p = q * q * q
        return p, p * p * q
    p = torch.exp(torch.log(d) * -beta)  # faster than pow on CPU
    return p, p / d


def _compute_dtype(x: torch.Tensor) -> torch.Tensor:
    # Under autocast: d and d^-beta in float32, as torch's own LRN computes pow.
    return x.float() if x.dtype in _HALF else x


def _math_forward(x, size, alpha, beta, k):
    xf = _compute_dtype(x)
    p, _ = _denominator_powers(xf, size, alpha, beta, k)
    return (xf * p).to(x.dtype)


def _math_backward_terms(x, g, size, alpha, beta, k):
    """t_c = g_c a_c d_c^(-beta-1), in the compute dtype: the backward's window sums over these."""
    xf = _compute_dtype(x)
    _, p_over_d = _denominator_powers(xf, size, alpha, beta, k)
    return _compute_dtype(g) * xf * p_over_d


def _math_backward(x, g, t, size, alpha, beta, k):
    xf = _compute_dtype(x)
    p, _ = _denominator_powers(xf, size, alpha, beta, k)
    # Input i feeds outputs i - after .. i + before: the forward's window, transposed.
    window_t = _window_sum(t, (size - 1) // 2, size // 2)
    return (_compute_dtype(g) * p - (2.0 * alpha * beta) * xf * window_t).to(g.dtype)


# Each pass compiles once per kind of input (dtype, memory format, training or inference
# tensor, constants); torch's default budget, 8 per function shared by all closures of it,
# can run out in one sweep. Older torch lacks these knobs: running out there counts as a
# failed build, and the eager path takes over.
_RECOMPILE_KNOBS = {"recompile_limit": 64, "isolate_recompiles": True}


@functools.cache
def _compiled(size: int, alpha: float, beta: float, k: float):
    """The three passes compiled for these constants, cached for the process.

    The constants are closed over, so each is a literal in the generated code.
    The backward is two compiled calls on purpose: one fused loop would recompute
    t at each of its `size` window positions (two square roots and a division
    each), which costs more than writing t once and reading it back.
    Shapes: static except the batch dimension (`_call_fused` marks it dynamic). A kernel
    that knows the channel count and the spatial size vectorises for them: at AlexNet-CIFAR's
    1/8 width in channels_last (12 channels, fewer than one 16-float vector) the all-dynamic
    kernel ran almost every element in its scalar tail loop. So each layer's output shape
    compiles once, and a last short batch or an evaluation batch reuses it.
    """

    def forward(x):
        return _math_forward(x, size, alpha, beta, k)

    def backward_terms(x, g):
        return _math_backward_terms(x, g, size, alpha, beta, k)

    def backward(x, g, t):
        return _math_backward(x, g, t, size, alpha, beta, k)

    accepted = inspect.signature(torch.compile).parameters
    knobs = {name: value for name, value in _RECOMPILE_KNOBS.items() if name in accepted}
    return tuple(torch.compile(f, fullgraph=True, dynamic=False, **knobs) for f in (forward, backward_terms, backward))


def _call_fused(index: int, constants: tuple, *tensors: torch.Tensor) -> torch.Tensor:
    """Pass `index` (forward, backward terms, backward) compiled; uncompiled once building one failed."""
    device = tensors[0].device.type
    if device not in _compile_failed:
        for t in tensors:
            torch._dynamo.maybe_mark_dynamic(t, 0)  # the batch: one kernel for full and short batches
        try:
            return _compiled(*constants)[index](*tensors)
        except Exception as exc:  # noqa: BLE001 -- a broken compiler or toolchain: the same math, unfused, from now on
            _compile_failed[device] = f"building the fused LRN failed: {type(exc).__name__}: {exc}"[:300]
            log.warning("%s; running unfused on %s from now on", _compile_failed[device], device)
    math = (_math_forward, _math_backward_terms, _math_backward)[index]
    return math(*tensors, *constants)


@functools.cache
def _toolchain_missing(device_type: str) -> str | None:
    # here: the compiler stack (dynamo, inductor, triton) loads only where a fused kernel is asked for
    import torch._dynamo

    if not torch._dynamo.is_dynamo_supported():
        return "torch.compile does not support this Python or platform"
    if device_type == "cpu":
        from torch._inductor.cpp_builder import get_cpp_compiler

        try:
            get_cpp_compiler()
        except Exception as exc:  # noqa: BLE001 -- inductor's own InvalidCxxCompiler, or whatever the probe raised
            return f"no C++ compiler for torch.compile on CPU (g++, or $CXX): {type(exc).__name__}"
        return None
    if device_type == "cuda":
        from torch.utils._triton import has_triton

        return None if has_triton() else "no Triton for torch.compile on CUDA"
    return f"fused LRN kernels are built for cpu and cuda only, not {device_type}"


def fused_unavailable_reason(device: torch.device | str) -> str | None:
    """None when the fused (compiled) LRN can run on `device`, otherwise why not."""
    device_type = torch.device(device).type
    return _compile_failed.get(device_type) or _toolchain_missing(device_type)


def _mode(x: torch.Tensor, fused: bool | None) -> str:
    if torch.compiler.is_compiling():
        return "traced"
    if fused is False or torch.jit.is_tracing():
        return "eager"
    if _get_current_dispatch_mode() is not None:
        # A Python dispatch mode (the memory tracker of bench.measure, a FLOP counter) is
        # active: torch.compile refuses to run under one, so this call runs eager and the
        # fused path stays available for the calls after it.
        return "eager"
    if lrn_native.supports(x):
        return "native"
    if fused is None:  # the size test first: it spares small tensors the toolchain probe's imports
        worth_it = x.numel() >= FUSED_MIN_NUMEL and fused_unavailable_reason(x.device) is None
        return "fused" if worth_it else "eager"
    reason = fused_unavailable_reason(x.device)
    if reason is not None:
        raise RuntimeError(f"fused LRN requested but unavailable: {reason}")
    return "fused"


# --- eager: in-place ops on channel-shifted views ---------------------------------


def _window_addcmul(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor, value: float, before: int, after: int) -> None:
    """out[:, c] += value * a[:, c'] * b[:, c'] for c' in c-before .. c+after (clipped), c' != c."""
    for o in range(1, after + 1):
        out[:, :-o].addcmul_(a[:, o:], b[:, o:], value=value)
    for o in range(1, before + 1):
        out[:, o:].addcmul_(a[:, :-o], b[:, :-o], value=value)


def _window_addcmul_transposed(
    grad: torch.Tensor, x: torch.Tensor, t: torch.Tensor, value: float, before: int, after: int
) -> None:
    """grad[:, i] += value * x[:, i] * t[:, c] for c in i-after .. i+before (clipped), c != i."""
    for o in range(1, before + 1):
        grad[:, :-o].addcmul_(x[:, :-o], t[:, o:], value=value)
    for o in range(1, after + 1):
        grad[:, o:].addcmul_(x[:, o:], t[:, :-o], value=value)


def _eager_forward(x, size, alpha, beta, k):
    """The output, and what the backward needs: (x in the compute dtype, d^-beta, d)."""
    out_dtype = x.dtype
    x = _compute_dtype(x)
    # fill_ with a Python number: a tensor made from one would be a host-to-device copy, a GPU sync
    d = torch.empty_like(x).fill_(k).addcmul_(x, x, value=alpha)
    _window_addcmul(d, x, x, alpha, size // 2, (size - 1) // 2)
    p = torch.log(d).mul_(-beta).exp_()
    return (x * p).to(out_dtype), (x, p, d)


def _eager_backward(g, x, p, d, size, alpha, beta):
    grad = g.to(x.dtype) * p
    t = torch.mul(grad, x).div_(d)  # g_c a_c d_c^(-beta-1)
    c = -2.0 * alpha * beta
    grad.addcmul_(x, t, value=c)
    _window_addcmul_transposed(grad, x, t, c, size // 2, (size - 1) // 2)
    return grad.to(g.dtype)


class _LRNFunction(torch.autograd.Function):
    # bench.measure.flops counts this Function by its name, reading `size` as its first scalar argument.

    @staticmethod
    def forward(ctx, x, size: int, alpha: float, beta: float, k: float, mode: str):
        ctx.constants = (size, alpha, beta, k)
        ctx.mode = mode
        if mode == "eager":
            out, saved = _eager_forward(x, size, alpha, beta, k)
            ctx.save_for_backward(*saved)
            return out
        ctx.save_for_backward(x)
        if mode == "native":
            return lrn_native.forward(x, size, alpha, beta, k)
        if mode == "fused":
            return _call_fused(0, ctx.constants, x)
        return _math_forward(x, size, alpha, beta, k)

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        size, alpha, beta, k = ctx.constants
        if ctx.mode == "eager":
            grad = _eager_backward(g, *ctx.saved_tensors, size, alpha, beta)
        elif ctx.mode == "native":
            (x,) = ctx.saved_tensors
            grad = lrn_native.backward(x, g, size, alpha, beta, k)
        elif ctx.mode == "fused":
            (x,) = ctx.saved_tensors
            t = _call_fused(1, ctx.constants, x, g)
            grad = _call_fused(2, ctx.constants, x, g, t)
        else:
            (x,) = ctx.saved_tensors
            t = _math_backward_terms(x, g, size, alpha, beta, k)
            grad = _math_backward(x, g, t, size, alpha, beta, k)
        return grad, None, None, None, None, None


def local_response_norm(
    x: torch.Tensor,
    size: int = 5,
    alpha: float = 1e-4,
    beta: float = 0.75,
    k: float = 2.0,
    *,
    fused: bool | None = None,
) -> torch.Tensor:
    """Functional form; channels are dim 1 of an (N, C, ...) tensor; paper's alpha.

    `fused`: None uses the native kernels where they apply (float32 on the CPU), else
    the compiled ones when they can be built and `x` has at least `FUSED_MIN_NUMEL`
    elements; True always a built kernel (RuntimeError if none can be built); False never.
    """
    if x.dim() < 3:
        raise ValueError(f"local_response_norm expects (N, C, ...) with 3 or more dims, got {x.dim()}")
    return _LRNFunction.apply(x, size, alpha, beta, k, _mode(x, fused))


class LocalResponseNorm(nn.Module):
    """AlexNet's LRN (section 3.3); defaults are the paper's k=2, n=5, alpha=1e-4, beta=0.75.

    `fused` as in `local_response_norm`.
    """

    def __init__(
        self, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0, *, fused: bool | None = None
    ):
        super().__init__()
        if size < 1:
            raise ValueError(f"LRN size must be >= 1, got {size}")
        self.size, self.alpha, self.beta, self.k, self.fused = size, alpha, beta, k, fused

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return local_response_norm(x, self.size, self.alpha, self.beta, self.k, fused=self.fused)

    def extra_repr(self) -> str:
        fused = "" if self.fused is None else f", fused={self.fused}"
        return f"size={self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k} (paper's alpha){fused}"


# --- how much of the denominator comes from the data -------------------------------------

ACTIVITY_QUANTILE = 0.99  # the "high percentile" of the data share, besides its mean


def data_share(x: torch.Tensor, size: int, alpha: float, k: float) -> torch.Tensor:
    """alpha * S / (k + alpha * S) at every element, S the window sum of x^2 (`_window_sum`).

    0 means the layer multiplies by the constant k^-beta (a gain, no normalisation); near 1
    means the denominator is all data. The paper's constants were set for its own
    activations: at another input scale or initialisation the share can be ~1e-5.
    """
    xf = x.detach().float()
    s = _window_sum(xf * xf, size // 2, (size - 1) // 2) * alpha
    return s / (k + s)


@torch.no_grad()
def lrn_activity(model: nn.Module, x: torch.Tensor) -> dict[str, float]:
    """The data share of every LocalResponseNorm of `model` on the batch `x`, in eval mode:
    `lrn_<layer>_share_mean` and `lrn_<layer>_share_p99` (layer: the module's last name, e.g.
    norm1). {} for a model without LRN. The model's training mode is restored."""
    layers = [(name.rsplit(".", 1)[-1], m) for name, m in model.named_modules() if isinstance(m, LocalResponseNorm)]
    if not layers:
        return {}
    out: dict[str, float] = {}

    def hook(name):
        def record(module, inputs, _output):
            share = data_share(inputs[0], module.size, module.alpha, module.k).flatten()
            # quantile() refuses tensors above 2**24 elements; a strided sample keeps it exact enough
            sample = share[:: max(1, share.numel() // (1 << 22))]
            out[f"lrn_{name}_share_mean"] = share.mean().item()
            out[f"lrn_{name}_share_p99"] = torch.quantile(sample, ACTIVITY_QUANTILE).item()

        return record

    handles = [m.register_forward_hook(hook(name)) for name, m in layers]
    was_training = model.training
    try:
        model.eval()
        model(x)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return out
