"""Per-layer optimisation a model declares, for `make_optimizer(decay="layers")`.

cuda-convnet gives every layer its own weight decay (`wc`) and its biases their own
learning rate (`epsB`). A model declares both here, on its modules; nothing is
read unless a run asks for `decay="layers"`:

- `mark_decay(module, multiplier)`: the module's weights are decayed at
  `weight_decay * multiplier` (undeclared: 1). Biases are never decayed.
- `set_bias_lr(model, multiplier)`: every bias learns at `lr * multiplier`
  (undeclared: 1).
"""

from __future__ import annotations

import torch.nn as nn

DECAY_MULTIPLIER_ATTR = "weight_decay_multiplier"
BIAS_LR_MULTIPLIER_ATTR = "bias_lr_multiplier"


def mark_decay(module: nn.Module, multiplier: float) -> nn.Module:
    """Decay `module`'s own weights at `weight_decay * multiplier` under decay='layers'."""
    if not multiplier >= 0:
        raise ValueError(f"a weight-decay multiplier must be 0 or more, got {multiplier}")
    setattr(module, DECAY_MULTIPLIER_ATTR, float(multiplier))
    return module


def set_bias_lr(model: nn.Module, multiplier: float) -> nn.Module:
    """Train every bias of `model` at `lr * multiplier` under decay='layers'."""
    if not multiplier > 0:
        raise ValueError(f"a bias learning-rate multiplier must be above 0, got {multiplier}")
    setattr(model, BIAS_LR_MULTIPLIER_ATTR, float(multiplier))
    return model


def decay_multiplier(module: nn.Module) -> float:
    return getattr(module, DECAY_MULTIPLIER_ATTR, 1.0)


def bias_lr_multiplier(model: nn.Module) -> float:
    return getattr(model, BIAS_LR_MULTIPLIER_ATTR, 1.0)
