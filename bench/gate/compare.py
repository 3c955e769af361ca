"""Read the suite's pytest-benchmark JSON files and compare a run with a baseline in images/s.

A benchmark's throughput is `extra_info["images_per_round"]` over the round time
statistic (`median` by default, or `min`), both saved by the suite.

The gate knows its own noise. Each measurement carries its spread (`spread`: the
interquartile range of its rounds over their median, or of its suite runs'
throughputs when it merges several, `--repeat`, whichever is wider). A benchmark's
noise band is `NOISE_K` times the baseline's and the run's spreads combined
(root sum of squares), never narrower than `threshold` and never wider than
`MAX_BAND` (wider would hide a 2x slowdown). A drop beyond the band makes the
benchmark a suspect, not a regression: `confirm` re-measures the suspects and
fails only those that stay beyond the band in every re-measurement. Load from
other work only slows a benchmark down, so one re-measurement back within the
band shows the first drop was the machine, not the code; a real slowdown is
there every time. Benchmarks present on one side only are listed, and do not
fail the gate. `merge_runs` combines repeated runs of the suite into one.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.errors import UserError
from bench.gate.suite import MEASUREMENT_KEYS, describe_device, device_id

STATS = ("median", "min")
# The band is this many combined spreads (IQR over median, baseline's and run's in quadrature).
# An IQR is 1.35 standard deviations of a normal spread, so 2 is about 3.8 sigma of the
# difference of two single rounds; medians of rounds vary less.
NOISE_K = 2.0
# The widest band: a benchmark this noisy still fails on a confirmed loss of more than 30%
# (one CPU thread instead of two costs 23-48%; half the GPU, 50%).
MAX_BAND = 0.30
CONFIRM = 3  # re-measurements of a suspected regression before the gate fails

# Recorded software and settings that, when they changed, are named beside the table.
CHANGES_SHOWN = (
    "num_threads",
    "torch",
    "torchvision",
    "cuda",
    "cudnn",
    "gpu_driver",
    "python",
    "float32_matmul_precision",
    "cudnn_benchmark",
    "cudnn_allow_tf32",
)


@dataclass(frozen=True)
class Run:
    """One saved run of the suite."""

    path: Path
    environment: dict  # bench.env.environment of the device it ran on
    settings: dict  # bench.gate.suite.Options.recorded()
    datetime: str
    commit: str | None
    benchmarks: dict  # pytest-benchmark name -> its JSON entry
    repeat: int = 1  # suite runs merged into this one (see `merge_runs`)

    @property
    def device_id(self) -> str:
        return device_id(self.environment)

    @property
    def device(self) -> str:
        return describe_device(self.environment)


def load_run(path: Path) -> Run:
    """A run from a JSON file written by the suite; `UserError` if it is not one."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        bench = data["machine_info"]["bench"]
        benchmarks = {b["name"]: b for b in data["benchmarks"]}
        env, settings = bench["environment"], bench["settings"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{path} is not a run of the throughput suite ({type(exc).__name__}: {exc})") from None
    _check_run(path, env, settings, benchmarks)
    info = data.get("commit_info") or {}
    commit = f"{info['id'][:12]}{'-dirty' if info.get('dirty') else ''}" if info.get("id") else None
    return Run(path, env, settings, data.get("datetime", "?"), commit, benchmarks, bench.get("repeat", 1))


def _check_run(path: Path, env, settings, benchmarks: dict) -> None:
    """`UserError` naming what a saved run lacks that the comparison reads: before the suite runs, not after."""

    def refuse(what: str):
        raise UserError(f"{path} {what}; it was edited or damaged: save the baseline again with gate --save NAME")

    def positive(value) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0

    if not isinstance(env, dict) or not all(isinstance(env.get(k), str) and env[k] for k in ("device", "device_name")):
        refuse("records no device (its environment has no device and device_name)")
    if not isinstance(settings, dict):
        refuse(f"records settings {settings!r}, not a table of them")
    if not benchmarks:
        refuse("holds no benchmark")
    for name, entry in benchmarks.items():
        stats = entry.get("stats") if isinstance(entry, dict) else None
        info = entry.get("extra_info") if isinstance(entry, dict) else None
        for stat in STATS:
            value = stats.get(stat) if isinstance(stats, dict) else None
            if not positive(value):
                refuse(f"gives benchmark {name!r} a {stat} round time of {value!r} s, not a time above 0")
        if not isinstance(info, dict) or not positive(info.get("images_per_round")):
            refuse(f"gives benchmark {name!r} no extra_info.images_per_round (images timed per round)")
        for key in ("phase", "case"):
            if not isinstance(info.get(key), str):
                refuse(f"gives benchmark {name!r} no extra_info.{key}")


def images_per_s(entry: dict, stat: str = "median") -> float:
    return entry["extra_info"]["images_per_round"] / entry["stats"][stat]


def merge_runs(paths: list[Path], out: Path, stat: str = "median") -> Path:
    """K runs of the suite as one file: per benchmark, the entry of the run with the median throughput.

    On a shared machine speed drifts in phases lasting seconds (other tenants,
    clocks), longer than one benchmark takes; K short runs spread over minutes
    see different phases, and their median ignores one bad (or lucky) phase
    where one long run could not. The chosen entry keeps its own statistics;
    `extra_info["repeat_images_per_s"]` lists all K throughputs, in run order.
    """
    runs = [json.loads(Path(p).read_text()) for p in paths]
    merged = runs[0]
    by_name = [{b["name"]: b for b in run["benchmarks"]} for run in runs]
    benchmarks = []
    for name in by_name[0]:
        entries = [b[name] for b in by_name if name in b]
        chosen = sorted(entries, key=lambda e: images_per_s(e, stat))[(len(entries) - 1) // 2]
        chosen["extra_info"]["repeat_images_per_s"] = [images_per_s(e, stat) for e in entries]
        benchmarks.append(chosen)
    merged["benchmarks"] = benchmarks
    merged["machine_info"]["bench"]["repeat"] = len(runs)
    Path(out).write_text(json.dumps(merged, indent=4))
    return Path(out)


def _relative_iqr(values: list[float]) -> float:
    if len(values) < 2:
        return 0.0
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return (q3 - q1) / statistics.median(values)


def spread(entry: dict) -> float:
    """How noisy one measurement was: the IQR over the median of its rounds' times, or of its suite runs'.

    The rounds of one run see the machine over a fraction of a second; a merged
    entry (`--repeat`) also carries the throughputs of K runs spread over minutes,
    whose spread is the one that shows slower phases. The wider of the two counts.
    """
    stats = entry["stats"]
    rounds = stats["iqr"] / stats["median"] if stats.get("iqr") is not None and stats["median"] else 0.0
    runs = entry.get("extra_info", {}).get("repeat_images_per_s") or []
    return max(rounds, _relative_iqr(list(runs)))


def noise_band(old: dict, new: dict, *, threshold: float) -> float:
    """The largest drop (a fraction) of `new` from `old` that their noise explains: see the module docstring."""
    noise = NOISE_K * math.hypot(spread(old), spread(new))
    return min(max(threshold, noise), max(threshold, MAX_BAND))


def check_comparable(baseline: Run, current: Run) -> None:
    """`UserError` unless both ran on the same device and measured the same thing."""
    if baseline.device_id != current.device_id:
        raise UserError(
            f"baseline {baseline.path.name} was measured on {baseline.device}; this run is on {current.device}; "
            f"baselines are kept per device: save one on this device first"
        )
    check_settings(baseline, current.settings)
    for name in baseline.benchmarks.keys() & current.benchmarks.keys():
        was, now = (run.benchmarks[name]["extra_info"].get("mode") for run in (baseline, current))
        if was != now:
            raise UserError(
                f"baseline {baseline.path.name} timed {name} in mode {was}; this run timed it in mode {now}; "
                f"pass the same suite options (--quick, --dtype, ...), or save a new baseline"
            )


def check_settings(baseline: Run, settings: dict, verb: str = "measured") -> None:
    """`UserError` unless `settings` (a run's, or those a run is about to use) measure what the baseline did."""
    differ = [k for k in MEASUREMENT_KEYS if baseline.settings.get(k) != settings.get(k)]
    if differ:
        was = ", ".join(f"{k}={baseline.settings.get(k)}" for k in differ)
        now = ", ".join(f"{k}={settings.get(k)}" for k in differ)
        raise UserError(
            f"baseline {baseline.path.name} measured {was}; this run {verb} {now}; "
            f"pass the same suite options (--quick, --dtype, ...), or save a new baseline"
        )


def compare(baseline: Run, current: Run, *, threshold: float, stat: str = "median") -> list[dict]:
    """One row per benchmark on either side, baseline order first: images/s both sides, change, band, status.

    status: `ok`, `suspect` (slower than its noise band: `confirm` decides),
    `faster` (faster beyond the band), `new` (no baseline) or `missing` (not in this run).
    """
    if stat not in STATS:
        raise UserError(f"--stat {stat!r} is not valid; choose one of: {', '.join(STATS)}")
    rows = []
    for name in [*baseline.benchmarks, *(n for n in current.benchmarks if n not in baseline.benchmarks)]:
        old, new = baseline.benchmarks.get(name), current.benchmarks.get(name)
        entry = new or old
        row = {
            "benchmark": name,
            "phase": entry["extra_info"].get("phase", entry.get("group")),
            "case": entry["extra_info"].get("case", name),
            "baseline_images_per_s": images_per_s(old, stat) if old else None,
            "images_per_s": images_per_s(new, stat) if new else None,
            "change": None,
            "baseline_spread": spread(old) if old else None,
            "spread": spread(new) if new else None,
            "band": None,
            "remeasured": [],  # changes measured again for a suspect (`confirm`)
        }
        if old is None:
            row["status"] = "new"
        elif new is None:
            row["status"] = "missing"
        else:
            row["change"] = row["images_per_s"] / row["baseline_images_per_s"] - 1
            row["band"] = band = noise_band(old, new, threshold=threshold)
            row["status"] = "suspect" if row["change"] < -band else "faster" if row["change"] > band else "ok"
        rows.append(row)
    return rows


# remeasure(benchmark names, attempt) -> a new measurement of each (attempt counts from 1): by default its
# images/s; whatever it is, `judge` reads it.
Remeasure = Callable[[list[str], int], dict]
# judge(suspect's row, its new measurement) -> (the change it measured, whether it is still suspected)
Judge = Callable[[dict, object], tuple[float, bool]]


def beyond_band(row: dict, rate: float) -> tuple[float, bool]:
    """A re-measured images/s against the row's baseline: its change, and whether it is beyond the band."""
    change = rate / row["baseline_images_per_s"] - 1
    return change, change < -row["band"]


def confirm(
    rows: list[dict], remeasure: Remeasure | None, times: int = CONFIRM, judge: Judge = beyond_band
) -> list[dict]:
    """Re-measure the suspects up to `times` times; `regressed` if suspected every time, else `noise`.

    A suspect is cleared by its first re-measurement that `judge` clears (by
    default: back within its band), and then not measured again. With `times` 0
    every suspect is a regression. The re-measured changes are kept in
    `row["remeasured"]`. Returns the suspects.
    """
    suspects = [r for r in rows if r["status"] == "suspect"]
    pending = suspects
    for attempt in range(1, times + 1):
        if not pending:
            break
        again = remeasure([r["benchmark"] for r in pending], attempt)
        still = []
        for r in pending:
            if again.get(r["benchmark"]) is None:
                raise UserError(f"re-measuring {r['benchmark']} gave no result; the suite did not run it")
            change, suspected = judge(r, again[r["benchmark"]])
            r["remeasured"].append(change)
            still += [r] if suspected else []
        pending = still
    for r in suspects:
        r["status"] = "regressed" if r in pending else "noise"
    return suspects


def regressed(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r["status"] in ("regressed", "suspect")]


def label(row: dict) -> str:
    return f"{row['phase']} {row['case']}"


def _data_path(settings: dict) -> str:
    if settings.get("data") == "dataset":
        return f"drawn from a data set on the device, augmented {settings.get('augment')}"
    return "one fixed batch"


def _changes(baseline: Run, current: Run) -> str:
    pieces = []
    for key in CHANGES_SHOWN:
        was, now = baseline.environment.get(key), current.environment.get(key)
        if was != now:
            pieces.append(f"{'threads' if key == 'num_threads' else key} {was} -> {now}")
    return ", ".join(pieces)


def format_report(baseline: Run, current: Run, rows: list[dict], *, threshold: float, stat: str) -> str:
    """The header (what is compared with what), the table, and the verdict naming the regressed benchmarks."""
    s = current.settings
    commit = f" at commit {baseline.commit}" if baseline.commit else ""
    lines = [
        f"baseline: {baseline.path} (saved {baseline.datetime}{commit})",
        f"device: {current.device}; {s.get('dtype')}, {s.get('memory_format')}, batch {s.get('batch_size')}, "
        f"width {s.get('width')}; threads {current.environment.get('num_threads')}",
        f"training batches: {_data_path(s)}"
        + (f"; cudnn.benchmark {s.get('cudnn_benchmark')}, tf32 {s.get('tf32')}" if s.get("cudnn_benchmark") else ""),
    ]
    if changes := _changes(baseline, current):
        lines.append(f"changed since the baseline: {changes}")
    if baseline.repeat > 1 or current.repeat > 1:
        lines.append(
            f"per benchmark, the median of {baseline.repeat} suite run(s) for the baseline "
            f"and of {current.repeat} for this run (--repeat)"
        )
    lines.append(
        f"images/s from the {stat} round time; a benchmark is suspected when it drops beyond its noise band "
        f"({threshold:.0%} or more, up to {max(threshold, MAX_BAND):.0%}), and fails only if re-measurement confirms it"
    )
    lines.append(
        "spread: interquartile range over the median, of the rounds or of the --repeat runs (the wider); "
        f"band: {NOISE_K:g} x the baseline's and this run's spreads combined\n"
    )

    def percent(v, fmt=".0%"):
        return "-" if v is None else format(v, fmt)

    verdicts = {**VERDICTS, "new": "new (no baseline)"}
    table = [("benchmark", "baseline img/s", "this run img/s", "spread", "band", "change", "")]
    for r in rows:
        table.append(
            (
                label(r),
                number(r["baseline_images_per_s"]),
                number(r["images_per_s"]),
                percent(r.get("spread")),
                percent(r.get("band")),
                percent(r["change"], "+.1%"),
                verdicts.get(r["status"], ""),
            )
        )
    lines += table_lines(table)

    remeasured = [r for r in rows if r.get("remeasured")]
    if remeasured:
        lines.append("\nre-measured, because the first measurement dropped beyond the band:")
        for r in remeasured:
            again = ", ".join(f"{c:+.1%}" for c in r["remeasured"])
            outcome = (
                "beyond the band every time: a regression"
                if r["status"] == "regressed"
                else "back within the band: noise, not a regression"
            )
            lines.append(f"  {label(r)}: {r['change']:+.1%} beyond -{r['band']:.0%}; again {again}; {outcome}")

    compared = [r for r in rows if r["change"] is not None]
    bad = regressed(rows)
    lines.append("")
    if bad:
        confirmed = any(r.get("remeasured") for r in bad)
        lines.append(
            f"FAILED: {len(bad)} of {len(compared)} benchmarks lost more throughput than their noise band"
            f"{', confirmed by re-measurement' if confirmed else ''}: {', '.join(label(r) for r in bad)}"
        )
    else:
        lines.append(f"PASSED: all {len(compared)} benchmarks within their noise band of the baseline or faster")
    if not compared:
        lines[-1] = "FAILED: no benchmark in common with the baseline"
    return "\n".join(lines)


# A row's status as the reports' last column says it.
VERDICTS = {
    "regressed": "REGRESSED (confirmed)",
    "suspect": "REGRESSED",
    "noise": "noise (re-measured)",
    "faster": "faster",
    "missing": "not run",
}


def number(v: float | None) -> str:
    """images/s as the reports show them."""
    return "-" if v is None else f"{v:,.1f}"


def table_lines(table: list[tuple[str, ...]]) -> list[str]:
    """Rows of cells as aligned lines: the first column left, the last (a verdict) free, the others right."""
    n = len(table[0]) - 1
    widths = [max(len(row[i]) for row in table) for i in range(n)]
    return [
        "  ".join([f"{row[0]:<{widths[0]}}", *(f"{v:>{w}}" for v, w in zip(row[1:n], widths[1:])), row[n]]).rstrip()
        for row in table
    ]


def format_run(run: Run, stat: str = "median") -> str:
    """A saved run's images/s per benchmark."""
    width = max(
        (len(f"{b['extra_info']['phase']} {b['extra_info']['case']}") for b in run.benchmarks.values()), default=9
    )
    lines = [f"{'benchmark':<{width}}  {'images/s':>10}"]
    for b in run.benchmarks.values():
        label = f"{b['extra_info']['phase']} {b['extra_info']['case']}"
        lines.append(f"{label:<{width}}  {images_per_s(b, stat):>10,.1f}")
    return "\n".join(lines)
