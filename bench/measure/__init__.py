"""Measurement: parameter and operation counts, throughput, latency, memory, tidy tables.

`count_model` and `measure_throughput` measure one built model (the study runner
calls them per cell); `measure_models` builds registered models by name and
returns one row per model. See `flops` for the FLOP convention and per-op costs,
`speed` for what is timed and how memory is metered, `timing` for how anything
is timed (warm-up, round sizing, synchronized clocks, statistics; the
throughput gate times through it too).
"""

from bench.flop_convention import FLOP_CONVENTION
from bench.measure.flops import count_model, count_ops, count_params
from bench.measure.speed import FULL, QUICK, Settings, matmul_flops_per_s, measure_throughput
from bench.measure.table import COLUMNS, achieved_columns, measure_models

__all__ = [
    "COLUMNS",
    "FLOP_CONVENTION",
    "FULL",
    "QUICK",
    "Settings",
    "achieved_columns",
    "count_model",
    "count_ops",
    "count_params",
    "matmul_flops_per_s",
    "measure_models",
    "measure_throughput",
]
