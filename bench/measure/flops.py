"""Parameter and operation counts, with the FLOP convention stated in every result.

Per image, forward pass (`bench.flop_convention` holds the convention string):

* `macs`: multiply-adds of convolutions and linear layers / matmuls only, as
  fvcore, torchvision ("GFLOPS") and the paper count them (bias additions not
  included), so they compare with published numbers (torchvision `alexnet`:
  0.714 G at 224). Equal to torch's `FlopCounterMode` total / 2.
* `elementwise_ops`: everything else that is costed: activations, pooling, LRN,
  batch norm, element-wise arithmetic, at the per-element costs below;
* `flops`: 2 x `macs` + `elementwise_ops` (one multiply-add = two operations).

Counting is fvcore's `FlopCountAnalysis` (a `torch.jit` trace of one forward
pass at batch 1, in eval mode), which counts one multiply-add as one "flop": its
conv and matmul numbers are `macs`. Off the shelf it counts nothing for ReLU,
tanh, max-pooling or LRN, so the AlexNet ablations (tanh vs ReLU, LRN on/off,
overlapping pooling) would show identical `flops`. This module adds handles so
they do not. Costs are operations per element of the op's output (one
elementary arithmetic operation or comparison = 1; exp counted as 1):

| op (aten name in the trace)            | cost per output element | why                                        |
|----------------------------------------|-------------------------|--------------------------------------------|
| conv, linear, addmm, (b)mm, matmul,    | fvcore's multiply-adds  | these, and only these, are `macs`          |
| einsum                                 |                         |                                            |
| relu, relu6/hardtanh, leaky_relu,      | 1                       | one compare-and-select                     |
| threshold                              |                         |                                            |
| tanh                                   | 5                       | 1 - 2/(exp(2x) + 1): scale, exp, add,      |
|                                        |                         | divide, subtract                           |
| sigmoid                                | 4                       | 1/(1 + exp(-x)): negate, exp, add, divide  |
| silu                                   | 5                       | sigmoid (4) + multiply                     |
| add, sub, rsub, mul, div, pow, sqrt,   | 1                       | one arithmetic operation                   |
| rsqrt, exp, neg, reciprocal (and _)    |                         |                                            |
| max_pool1d/2d/3d                       | kernel_volume - 1       | comparisons to find the window's max       |
| avg_pool1d/2d/3d                       | kernel_volume           | kernel_volume - 1 adds + 1 scale           |
| adaptive_avg_pool2d                    | 1 per *input* element   | fvcore's: each input summed once           |
| adaptive_avg_pool1d/3d                 | 1 per *input* element   | the same                                   |
| adaptive_max_pool1d/2d/3d              | in_numel - out_numel    | window - 1 comparisons per output, total   |
| batch_norm (eval)                      | 2 (1 without affine)    | fvcore's: scale and shift                  |
| upsample_bilinear2d (tv: models)       | 4                       | fvcore's: four-tap interpolation           |
| LRN: nn.LocalResponseNorm, modules     | size + 5                | square (1), sum over `size` channels       |
| named *LocalResponseNorm, and          |                         | (size), scale by alpha (1), add k (1),     |
| bench.models.lrn's _LRNFunction        |                         | pow beta (1), divide (1)                   |
| dropout, flatten, view, pad, cat,      | 0                       | data movement or identity at inference     |
| im2col (unfold), ...                   |                         |                                            |

Other ops fvcore costs by default (group/layer/instance norm, nearest upsampling,
grid sampling) are counted at fvcore's cost in `elementwise_ops`. Pooling
windows are counted at their full kernel size even where `ceil_mode` or padding
clips them at the border, so pooling counts are upper bounds by a few percent.
LRN costs size + 5 per element however it is written: PyTorch's
`nn.LocalResponseNorm` decomposes into exactly the elementwise ops and the
(size, 1, 1) avg_pool3d of the table, so its trace sums to size + 5;
`bench.models.lrn`'s autograd Function traces as one
`prim::PythonOp._LRNFunction`, handled by name with `size` read from its
scalar arguments; and any module that `is_lrn` is costed as a whole by a
forward hook, replacing whatever fvcore made of its insides, so that no LRN
implementation (a conv over channels, say) leaks into `macs`. Ops with no
handle cost 0 and are listed in `uncounted_ops`.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from typing import Any

import torch
import torch.nn as nn

# fvcore calls torch.jit.script at import time, which torch now answers with a
# FutureWarning that says nothing to our users.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)
    warnings.simplefilter("ignore", DeprecationWarning)
    from fvcore.nn import FlopCountAnalysis

# fvcore's operator names (after its own renaming) that are convolution or matmul work: `macs`.
MAC_OPS = ("conv", "linear", "addmm", "mm", "matmul", "bmm", "einsum")

# Operations per output element; see the table in the module docstring.
ACTIVATION_COST = {
    "relu": 1,
    "relu_": 1,
    "relu6": 1,
    "hardtanh": 1,
    "hardtanh_": 1,
    "leaky_relu": 1,
    "leaky_relu_": 1,
    "threshold": 1,
    "threshold_": 1,
    "tanh": 5,
    "tanh_": 5,
    "sigmoid": 4,
    "sigmoid_": 4,
    "silu": 5,
    "silu_": 5,
}
ARITHMETIC_OPS = ("add", "sub", "rsub", "mul", "div", "pow", "sqrt", "rsqrt", "exp", "neg", "reciprocal")
# Data movement and identity-at-inference ops fvcore does not already ignore.
ZERO_COST_OPS = (
    "aten::pad",
    "aten::dropout_",
    "aten::feature_dropout",
    "aten::alpha_dropout",
    "aten::feature_alpha_dropout",
    "aten::clone",
    "aten::identity",
    "aten::im2col",  # F.unfold: the patch copy of a locally connected layer (bench.models.local)
)
LRN_EXTRA_COST = 5  # per element on top of the window sum: square, scale, add k, pow, divide


def _numel(value: Any) -> int:
    """Elements of a traced tensor value; 0 for ints and other non-tensors (shape arithmetic)."""
    try:
        if not value.isCompleteTensor():
            return 0
    except AttributeError:
        return 0
    return math.prod(value.type().sizes())


def _per_output(cost: int, label: str):
    def handle(inputs, outputs):
        return Counter({label: cost * _numel(outputs[0])})

    return handle


def _int_list(value: Any) -> list[int]:
    """A traced int[] argument: a constant, or a prim::ListConstruct of constants."""
    ivalue = value.toIValue()
    if ivalue is None and value.node().kind() == "prim::ListConstruct":
        ivalue = [v.toIValue() for v in value.node().inputs()]
    if ivalue is None or (isinstance(ivalue, list) and None in ivalue):
        raise ValueError(f"cannot read a constant kernel size from {value.node()}")
    return ivalue


def _kernel_volume(inputs, outputs) -> int:
    """prod(kernel_size), with a 1-element kernel broadcast over the op's spatial dims."""
    kernel = _int_list(inputs[1])
    if isinstance(kernel, int):
        kernel = [kernel]
    spatial = len(outputs[0].type().sizes()) - 2  # (N, C, *spatial); unbatched inputs are rare here
    if len(kernel) == 1:
        kernel = list(kernel) * max(spatial, 1)
    return math.prod(kernel)


def _max_pool(inputs, outputs):
    return (_kernel_volume(inputs, outputs) - 1) * _numel(outputs[0])


def _avg_pool(inputs, outputs):
    return _kernel_volume(inputs, outputs) * _numel(outputs[0])


def _adaptive_avg_pool(inputs, outputs):
    return _numel(inputs[0])


def _adaptive_max_pool(inputs, outputs):
    return max(_numel(inputs[0]) - _numel(outputs[0]), 0)


# torch.autograd.Function classes that implement LRN, traced as prim::PythonOp.<name>
# with scalar args (size, alpha, beta, k): bench.models.lrn's.
LRN_FUNCTIONS = ("_LRNFunction",)


def _lrn_function(inputs, outputs):
    size = outputs[0].node().scalar_args()[0]
    return Counter({"lrn": (int(size) + LRN_EXTRA_COST) * _numel(outputs[0])})


def _handles() -> dict:
    # Labels drop the in-place underscore so that relu and relu_ are reported together.
    handles = {f"aten::{name}": _per_output(cost, name.rstrip("_")) for name, cost in ACTIVATION_COST.items()}
    for name in ARITHMETIC_OPS:
        handles[f"aten::{name}"] = handles[f"aten::{name}_"] = _per_output(1, name)
    for d in (1, 2, 3):
        handles[f"aten::max_pool{d}d"] = _max_pool
        handles[f"aten::max_pool{d}d_with_indices"] = _max_pool
        handles[f"aten::avg_pool{d}d"] = _avg_pool
        handles[f"aten::adaptive_avg_pool{d}d"] = _adaptive_avg_pool
        handles[f"aten::adaptive_max_pool{d}d"] = _adaptive_max_pool
    for name in LRN_FUNCTIONS:
        handles[f"prim::PythonOp.{name}"] = _lrn_function
    for name in ZERO_COST_OPS:
        handles[name] = None  # fvcore: None means "known, costs nothing", not "unsupported"
    return handles


HANDLES = _handles()


def is_lrn(module: nn.Module) -> bool:
    """PyTorch's LRN or a project/custom one (any class named ...LocalResponseNorm with a `size`)."""
    return isinstance(module, nn.LocalResponseNorm) or (
        type(module).__name__.endswith("LocalResponseNorm") and hasattr(module, "size")
    )


def lrn_cost_per_element(module: nn.Module) -> int:
    return int(module.size) + LRN_EXTRA_COST


def flop_analysis(model: nn.Module, inputs: torch.Tensor | tuple) -> FlopCountAnalysis:
    """fvcore's analysis with this module's handles installed and its log and warning output off."""
    analysis = FlopCountAnalysis(model, inputs).set_op_handle(**HANDLES)
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    analysis.tracer_warnings("none")  # TracerWarnings about shapes turned constants: noise to users
    return analysis


def _top_level_lrns(model: nn.Module) -> dict[str, nn.Module]:
    found: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        if is_lrn(module) and not any(name.startswith(p + ".") for p in found):
            found[name] = module
    return found


def _example_input(model: nn.Module, input_size: int, batch: int = 1) -> torch.Tensor:
    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    return torch.randn(batch, 3, input_size, input_size, device=device)


def count_ops(model: nn.Module, input_size: int) -> dict:
    """Per-image forward-pass counts: `macs`, `elementwise_ops`, `flops`, `by_operator`, `uncounted_ops`.

    Traced at batch 1 in eval mode (so dropout is off and batch norm is the
    inference op); the model's own train/eval modes are restored afterwards.
    """
    x = _example_input(model, input_size)
    modes = {m: m.training for m in model.modules()}
    lrns = _top_level_lrns(model)
    lrn_ops = Counter()

    def hook(module, args, output):
        lrn_ops["lrn"] += lrn_cost_per_element(module) * output.numel()

    handles = [m.register_forward_hook(hook) for m in lrns.values()]
    try:
        model.eval()
        with torch.no_grad():
            model(x)
        for h in handles:  # the trace below must not count LRNs a second time
            h.remove()
        handles = []
        analysis = flop_analysis(model, (x,))
        by_op = Counter(analysis.by_operator())
        unsupported = Counter(analysis.unsupported_ops())
        # Replace whatever fvcore made of each LRN's insides by the LRN's documented cost.
        for name in lrns:
            by_op -= analysis.by_operator(name)
            unsupported -= analysis.unsupported_ops(name)
        by_op += lrn_ops
    finally:
        for h in handles:
            h.remove()
        for m, training in modes.items():
            m.train(training)
    macs = int(sum(v for k, v in by_op.items() if k in MAC_OPS))
    elementwise = int(sum(v for k, v in by_op.items() if k not in MAC_OPS))
    return {
        "macs": macs,
        "elementwise_ops": elementwise,
        "flops": 2 * macs + elementwise,
        "by_operator": dict(by_op),
        "uncounted_ops": ",".join(sorted(unsupported)),
    }


def count_params(model: nn.Module) -> dict:
    """Total and trainable parameters (shared parameters counted once)."""
    params = list(model.parameters())  # .parameters() already yields a shared tensor once
    return {
        "params_total": sum(p.numel() for p in params),
        "params_trainable": sum(p.numel() for p in params if p.requires_grad),
    }


def count_model(model: nn.Module, input_size: int) -> dict:
    """`params_total`, `params_trainable`, `macs`, `elementwise_ops`, `flops` (per image), and `uncounted_ops`."""
    ops = count_ops(model, input_size)
    return {
        **count_params(model),
        "macs": ops["macs"],
        "elementwise_ops": ops["elementwise_ops"],
        "flops": ops["flops"],
        "uncounted_ops": ops["uncounted_ops"],
    }
