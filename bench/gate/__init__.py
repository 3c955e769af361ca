"""The throughput regression gate: this checkout against a commit, or against baselines kept per device.

* `bench.gate.suite`: what is benchmarked (the cases, read partly from the AlexNet
  study file; the quick and full presets; each case's `TrainConfig` and workload)
  and what identifies a device.
* `bench.gate.paired`: `--against REF`, both sides timed now in alternating rounds
  by `bench.measure.worker` processes.
* `bench.gate.throughput_suite`: the pytest-benchmark suite of `--save` and
  `--compare`, a thin adapter over `bench.measure.workload` and `bench.measure.timing`;
  `bench.gate.plugin` gives it its options, cases and machine information.
* `bench.gate.compare`: reads the suite's JSON files and compares a run with a
  baseline, benchmark by benchmark, in images/s, within its noise band.
* `bench.gate.command`: `python -m bench gate --against REF | --save NAME | --compare NAME`
  (alias: `python -m bench.gate`, `bench/gate/__main__.py`).
"""
