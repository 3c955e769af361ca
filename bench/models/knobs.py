"""Model knobs as text: `--knob key=value` on the command line, `key=value,...` in a table cell or a case id."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping

from bench.errors import UserError


def parse_knobs(items: Iterable[str]) -> dict:
    """`key=value` pairs, each key once; values read as JSON when they parse (numbers, true/false), else strings."""
    knobs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--knob {item!r} is not key=value; e.g. --knob activation=tanh")
        if key in knobs:  # the later would silently win: a typo in a long command line
            raise UserError(f"--knob {key} given twice ({key}={knobs[key]!r}, then {item}); give each knob once")
        try:
            knobs[key] = json.loads(value)
        except json.JSONDecodeError:
            knobs[key] = value
    return knobs


def format_knobs(knobs: Mapping | None) -> str:
    """Knobs as one string sorted by name, e.g. "groups=2,width=0.25"; empty for none."""
    return ",".join(f"{k}={v}" for k, v in sorted((knobs or {}).items()))
