"""Helpers shared by the model families: knob checks, channel scaling, activations.

A bad knob value is a `UserError` naming the knob, the value and what is valid.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn as nn

from bench.errors import UserError

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh}


def check_choice(knob: str, value: object, valid: Sequence) -> None:
    # Exact type match, so groups=True or groups=2.0 is rejected rather than passed on.
    if not any(type(value) is type(v) and value == v for v in valid):
        raise UserError(f"{knob}={value!r} is not valid; choose one of: {', '.join(map(str, valid))}")


def check_positive(knob: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
        raise UserError(f"{knob}={value!r} is not valid; it must be a finite number > 0")
    return float(value)


# Channel multipliers outside this range are typos, not experiments: below it layers shrink to
# a channel or two (1e-4 builds 1-channel layers); above it a model outgrows any GPU's memory.
WIDTH_RANGE = (0.01, 16.0)


def check_width(knob: str, value: object) -> float:
    """A channel multiplier (`width`, `conv_width`) within `WIDTH_RANGE`."""
    low, high = WIDTH_RANGE
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise UserError(
            f"{knob}={value!r} is not valid; it must be a number from {low:g} to {high:g} "
            f"(below, layers shrink to a channel or two; above, the model outgrows any GPU's memory)"
        )
    return float(value)


def check_probability(knob: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise UserError(f"{knob}={value!r} is not valid; it must be a number in [0, 1)")
    return float(value)


def scale_channels(channels: int, multiplier: float, multiple: int = 1) -> int:
    """`channels * multiplier` rounded to a multiple of `multiple`, at least `multiple`."""
    return max(multiple, int(channels * multiplier / multiple + 0.5) * multiple)


def activation_layer(name: str) -> nn.Module:
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise UserError(f"unknown activation {name!r}; choose one of: {', '.join(ACTIVATIONS)}") from None
