"""Any torchvision classification model by name (`tv:<name>`); torchvision's AlexNet as `alexnet-tv`.

`tv:` models are built untrained (weights=None) and wrapped in `Upsample`,
which bilinearly enlarges inputs smaller than the model's minimum input side
(torchvision's weights metadata `min_size`: 63 for alexnet, 75 for
inception_v3, 224 for the ViTs and Swins; most convnets take anything). Their
`input_size` is 32: they are fed CIFAR-10 batches as they are, and the
upsampling is part of the model's cost, like any other layer. The wrapped
torchvision model is `.model`; the side it resizes to is `.resize_to`.

`alexnet-tv` is torchvision's one-tower AlexNet (64-192-384-256-256, the
"one weird trick" variant) unwrapped, at its native 224x224 input: 61,100,840
parameters at 1000 classes.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.errors import UserError
from bench.models.common import check_probability
from bench.models.registry import register_model, register_prefix

TV_INPUT_SIZE = 32
# Models whose defaults would return auxiliary outputs in training mode, or warn.
EXTRA_KWARGS = {
    "googlenet": {"aux_logits": False, "init_weights": True},
    "inception_v3": {"aux_logits": False, "init_weights": True},
}


def min_input_side(name: str) -> int:
    """The smallest input side torchvision documents for `name`'s default architecture."""
    import torchvision  # lazily, here and below: it adds ~1 s to the start-up of every command that builds models

    try:
        weights = list(torchvision.models.get_model_weights(name))
    except (ValueError, KeyError):
        weights = []
    sides = [max(w.meta["min_size"]) for w in weights if "min_size" in w.meta]
    # No metadata: assume the model takes CIFAR's 32x32 as it is.
    return min(sides) if sides else TV_INPUT_SIZE


class Upsample(nn.Module):
    """Runs `model` on inputs enlarged (bilinear) to at least `resize_to` on each side."""

    def __init__(self, model: nn.Module, resize_to: int):
        super().__init__()
        self.model = model
        self.resize_to = resize_to

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if h < self.resize_to or w < self.resize_to:
            size = (max(h, self.resize_to), max(w, self.resize_to))
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return self.model(x)

    def extra_repr(self) -> str:
        return f"resize_to={self.resize_to}"


@register_prefix("tv:")
def torchvision_model(*, name: str, num_classes: int = 10) -> nn.Module:
    """torchvision's `name`, untrained, taking 32x32 input (upsampled inside where it needs more)."""
    import torchvision  # here: see min_input_side

    valid = torchvision.models.list_models(module=torchvision.models)
    if name not in valid:
        examples = ", ".join(
            n
            for n in (
                "alexnet",
                "resnet18",
                "resnet50",
                "mobilenet_v3_small",
                "efficientnet_b0",
                "vgg16_bn",
                "vit_b_16",
            )
            if n in valid
        )
        raise UserError(
            f"unknown torchvision model {name!r}; e.g. {examples} ({len(valid)} in torchvision.models.list_models())"
        )
    model = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **EXTRA_KWARGS.get(name, {}))
    wrapped = Upsample(model, min_input_side(name))
    wrapped.input_size = TV_INPUT_SIZE
    return wrapped


@register_model("alexnet-tv", input_size=224)
def alexnet_tv(*, num_classes: int = 10, dropout: float = 0.5) -> nn.Module:
    """torchvision's one-tower AlexNet at 224x224: 61,100,840 parameters at 1000 classes."""
    import torchvision  # here: see min_input_side

    return torchvision.models.alexnet(
        weights=None, num_classes=num_classes, dropout=check_probability("dropout", dropout)
    )
