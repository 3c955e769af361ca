"""The throughput regression gate: a pytest-benchmark suite, baselines kept per device, a readable comparison.

* `bench.gate.suite`: what is benchmarked (the cases, read partly from the
  AlexNet study file; the quick and full presets) and what identifies a device.
* `bench.gate.options`: the suite's options (`--quick`, `--dtype`, ...), declared once.
* `bench.gate.throughput_suite`: the timed code, a thin pytest-benchmark adapter
  over `bench.measure.timing`; `bench.gate.plugin` adds its options, cases and
  the machine information to pytest.
* `bench.gate.compare`: reads the suite's JSON files and compares a run with a
  baseline, benchmark by benchmark, in images/s.
* `bench.gate.command`: `python -m bench gate --save NAME | --compare NAME`
  (alias: `python -m bench.gate`, `bench/gate/__main__.py`).
"""
