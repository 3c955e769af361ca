"""The throughput regression gate: a pytest-benchmark suite, baselines kept per device, a readable comparison.

* `bench.gate.suite`: what is benchmarked (the cases, the quick and full
  presets, the options) and what identifies a device.
* `bench.gate.compare`: reads the suite's JSON files and compares a run with a
  baseline, benchmark by benchmark, in images/s.
* `bench.gate.command`: `python -m bench.gate --save NAME | --compare NAME`.

The timed code is `tests/benchmarks/test_throughput.py`; its options and the
machine information are added in `tests/benchmarks/conftest.py`.
"""

from bench.gate.command import main

__all__ = ["main"]
