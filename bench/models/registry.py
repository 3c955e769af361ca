"""One registry for every architecture: `register_model`, `create_model`, `list_models`.

Builders are small keyword-only functions; `create_model` checks the knobs against
the builder's signature so that a typo is an error that lists the valid knobs,
never a silently ignored setting. Every built model carries `input_size` (the
square side its builder was sized for) so measurement and training feed it the
right shape.
"""

from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Callable

import torch.nn as nn

from bench.errors import UserError
from bench.models.init import INITS, apply_init

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}
_INPUT_SIZE: dict[str, int] = {}
_CROP_FROM: dict[str, int] = {}  # models trained on crops: the side of the images they are cut from
_PREFIXES: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str, *, input_size: int = 32, crop_from: int | None = None):
    """Decorator: register a keyword-only builder under `name`, sized for `input_size`.

    `crop_from`: the model takes `input_size` crops of images held at this side (cuda-convnet's
    24x24 crops of 32x32 CIFAR-10): random windows in training with crop augmentation, the
    centre otherwise (`bench.data.Dataset.crop_size`).
    """

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _BUILDERS:
            raise RuntimeError(f"model {name!r} registered twice")
        _BUILDERS[name] = fn
        _INPUT_SIZE[name] = input_size
        if crop_from is not None:
            _CROP_FROM[name] = crop_from
        return fn

    return wrap


def register_prefix(prefix: str):
    """Decorator: one builder for a family of names, e.g. `tv:<name>` for torchvision.

    The builder receives `name=` (the part after the prefix) and must set
    `model.input_size` itself.
    """

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _PREFIXES[prefix] = fn
        return fn

    return wrap


def list_models(pattern: str = "*") -> list[str]:
    """Registered names matching a shell-style wildcard, sorted (prefix families excluded)."""
    return sorted(n for n in _BUILDERS if fnmatch.fnmatchcase(n, pattern))


def _lookup(name: str) -> tuple[Callable[..., nn.Module], dict]:
    for prefix, fn in _PREFIXES.items():
        if name.startswith(prefix):
            return fn, {"name": name[len(prefix) :]}
    if name in _BUILDERS:
        return _BUILDERS[name], {}
    raise UserError(
        f"unknown model {name!r}; choose one of: {', '.join(list_models())}, or tv:<torchvision model name>"
    )


def input_size_of(name: str) -> int:
    """The square input side a model is built for (prefix families resize inside: 32)."""
    _lookup(name)
    return _INPUT_SIZE.get(name, 32)


def crop_from_of(name: str) -> int | None:
    """The side of the images a model's inputs are cropped from (`register_model`), None if not cropped."""
    _lookup(name)
    return _CROP_FROM.get(name)


def model_knobs(name: str) -> dict[str, object]:
    """The keyword knobs a model accepts, with their defaults."""
    fn, _ = _lookup(name)
    return {
        p.name: p.default
        for p in inspect.signature(fn).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in ("num_classes", "name")
    }


def create_model(name: str, num_classes: int = 10, *, init: str = "default", **knobs) -> nn.Module:
    """Build a registered model; an unknown name, knob or init raises `UserError`.

    `init`: `default` keeps PyTorch's initialisation; `paper` draws weights from
    N(0, 0.01) with zero biases, and biases of 1 where a model marks the paper's
    choice (AlexNet's conv2, conv4, conv5 and hidden FC layers), and another std
    where a model marks one (cifar-conv-local: cuda-convnet's per-layer initW).
    """
    fn, extra = _lookup(name)
    valid = model_knobs(name)
    unknown = sorted(set(knobs) - set(valid))
    if unknown:
        raise UserError(
            f"model {name!r} has no knob {', '.join(unknown)}; valid knobs: {', '.join(sorted(valid)) or 'none'}"
        )
    if init not in INITS:
        raise UserError(f"unknown init {init!r}; choose one of: {', '.join(INITS)}")
    model = fn(num_classes=num_classes, **extra, **knobs)
    if not hasattr(model, "input_size"):
        model.input_size = _INPUT_SIZE[name]
    apply_init(model, init)
    return model
