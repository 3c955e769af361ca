"""The one training step, shared by training runs, sweeps, measurement and benchmarks."""

from __future__ import annotations

import contextlib

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.device import DTYPES
from bench.models.recipe import bias_lr_multiplier, decay_multiplier
from bench.train.config import DECAYS


def autocast(device: torch.device, dtype: str):
    """Mixed-precision context for `dtype` (`fp32` means none)."""
    if DTYPES[dtype] is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[dtype])


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    dtype: str = "fp32",
    scaler: torch.amp.GradScaler | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward, backward and optimizer step on one batch.

    `scaler` (see `grad_scaler`) scales the loss so that fp16 gradients do not
    underflow; it skips a step whose gradients overflowed. Returns the batch's
    summed loss and number of correct top-1 predictions as device tensors,
    detached, so that callers decide when to synchronise.
    """
    model.train()
    logits, loss = forward_loss(model, x, y, dtype)
    backward(loss, optimizer, scaler)
    optimizer_step(optimizer, scaler)
    with torch.no_grad():
        correct = (logits.argmax(1) == y).sum()
    return loss.detach() * y.numel(), correct


# The step's three phases, apart so that `measure --modes` can time each (timm's --detail).


def forward_loss(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, dtype: str = "fp32"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and mean cross-entropy loss, under autocast."""
    with autocast(x.device, dtype):
        logits = model(x)
        loss = F.cross_entropy(logits, y)
    return logits, loss


def backward(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None = None) -> None:
    """Clear the gradients, then backpropagate `loss` (scaled, with a scaler)."""
    optimizer.zero_grad(set_to_none=True)
    if scaler is None:
        loss.backward()
    else:
        scaler.scale(loss).backward()


def optimizer_step(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None = None) -> None:
    """Apply the gradients; a scaler unscales them first and skips a step whose gradients overflowed."""
    if scaler is None:
        optimizer.step()
    else:
        scaler.step(optimizer)
        scaler.update()


def grad_scaler(device: torch.device, dtype: str) -> torch.amp.GradScaler | None:
    """A loss scaler for fp16 training (its gradients underflow without one); None otherwise."""
    return torch.amp.GradScaler(device.type) if dtype == "fp16" else None


def _is_weight(name: str, p: torch.Tensor) -> bool:
    """A weight matrix or kernel: more than one dimension and not a bias (a locally connected
    layer's biases are (out_channels, H, W), one per filter per location)."""
    return p.ndim > 1 and name.rsplit(".", 1)[-1] != "bias"


def _layer_groups(model: nn.Module, lr: float, weight_decay: float) -> list[dict]:
    """decay='layers': a group per (lr, weight decay) pair, weights' groups first, in model order.

    A module's own weights are decayed at `weight_decay` times the multiplier it declares
    (`bench.models.recipe.mark_decay`; 1 when it declares none); biases are never decayed
    and learn at `lr` times the model's bias multiplier (`set_bias_lr`; 1 without one);
    other parameters (normalisation scales) are not decayed and learn at `lr`.
    """
    bias_lr = lr * bias_lr_multiplier(model)
    weights: dict[float, list] = {}
    others: dict[tuple[float, float], list] = {}
    seen: set[int] = set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if id(p) in seen:  # shared: grouped where first met, as .parameters() yields it once
                continue
            seen.add(id(p))
            if _is_weight(name, p):
                weights.setdefault(weight_decay * decay_multiplier(module), []).append(p)
            else:
                others.setdefault((bias_lr if name == "bias" else lr, 0.0), []).append(p)
    return [{"params": ps, "lr": lr, "weight_decay": wd} for wd, ps in weights.items()] + [
        {"params": ps, "lr": group_lr, "weight_decay": wd} for (group_lr, wd), ps in others.items()
    ]


def make_optimizer(
    model: nn.Module, lr: float, momentum: float = 0.9, weight_decay: float = 5e-4, decay: str = "weights"
) -> torch.optim.SGD:
    """SGD with momentum and weight decay, as in the paper (section 5).

    `decay="weights"` decays only weight matrices and kernels (parameters with more
    than one dimension, biases aside): decaying biases and normalisation scales pulls
    them to zero for no regularising gain, the common practice since. `decay="all"`
    is the paper read literally: every parameter. The decayed group comes first; an
    empty group is left out. `decay="layers"` is cuda-convnet's per-layer recipe: the
    weight decay and bias learning rate each model declares (`_layer_groups`); a
    model that declares nothing gets what "weights" gives, in more groups.
    """
    if decay not in DECAYS:
        raise ValueError(f"decay={decay!r} is not valid; choose one of: {', '.join(DECAYS)}")
    if decay == "layers":
        return torch.optim.SGD(_layer_groups(model, lr, weight_decay), lr=lr, momentum=momentum)
    named = list(model.named_parameters())
    decayed = [p for name, p in named if decay == "all" or _is_weight(name, p)]
    ids = {id(p) for p in decayed}
    groups = [
        {"params": decayed, "weight_decay": weight_decay},
        {"params": [p for _, p in named if id(p) not in ids], "weight_decay": 0.0},
    ]
    return torch.optim.SGD([g for g in groups if g["params"]], lr=lr, momentum=momentum)
