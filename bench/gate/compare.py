"""Read the suite's pytest-benchmark JSON files and compare a run with a baseline in images/s.

A benchmark's throughput is `extra_info["images_per_round"]` over the round time
statistic (`median` by default, or `min`), both saved by the suite. It has
regressed when it is more than `threshold` (a fraction) below the baseline's.
Benchmarks present on one side only are listed, and do not fail the gate.
`merge_runs` combines repeated runs of the suite (`--repeat`) into one.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from bench.errors import UserError
from bench.gate.suite import MEASUREMENT_KEYS, describe_device, device_id

STATS = ("median", "min")
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


def _spread(entry: dict) -> float | None:
    """Interquartile range of the rounds over their median: how noisy this measurement was."""
    stats = entry["stats"]
    return stats["iqr"] / stats["median"] if "iqr" in stats and stats["median"] else None


def check_comparable(baseline: Run, current: Run) -> None:
    """`UserError` unless both ran on the same device and measured the same thing."""
    if baseline.device_id != current.device_id:
        raise UserError(
            f"baseline {baseline.path.name} was measured on {baseline.device}; this run is on {current.device}; "
            f"baselines are kept per device: save one on this device first"
        )
    check_settings(baseline, current.settings)


def check_settings(baseline: Run, settings: dict, verb: str = "measured") -> None:
    """`UserError` unless `settings` (a run's, or those a run is about to use) measure what the baseline did."""
    differ = [k for k in MEASUREMENT_KEYS if baseline.settings.get(k) != settings.get(k)]
    if differ:
        was = ", ".join(f"{k}={baseline.settings.get(k)}" for k in differ)
        now = ", ".join(f"{k}={settings.get(k)}" for k in differ)
        raise UserError(
            f"baseline {baseline.path.name} measured {was}; this run {verb} {now}; "
            f"pass the same --bench-* options, or save a new baseline"
        )


def compare(baseline: Run, current: Run, *, threshold: float, stat: str = "median") -> list[dict]:
    """One row per benchmark on either side, baseline order first: images/s both sides, change, status.

    status: `ok`, `regressed` (more than `threshold` slower), `faster` (more than
    `threshold` faster), `new` (no baseline) or `missing` (not in this run).
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
            "spread": _spread(new) if new else None,
        }
        if old is None:
            row["status"] = "new"
        elif new is None:
            row["status"] = "missing"
        else:
            row["change"] = row["images_per_s"] / row["baseline_images_per_s"] - 1
            row["status"] = (
                "regressed" if row["change"] < -threshold else "faster" if row["change"] > threshold else "ok"
            )
        rows.append(row)
    return rows


def regressed(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r["status"] == "regressed"]


def _label(row: dict) -> str:
    return f"{row['phase']} {row['case']}"


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
    ]
    if changes := _changes(baseline, current):
        lines.append(f"changed since the baseline: {changes}")
    if baseline.repeat > 1 or current.repeat > 1:
        lines.append(
            f"per benchmark, the median of {baseline.repeat} suite run(s) for the baseline "
            f"and of {current.repeat} for this run (--repeat)"
        )
    if s.get("inject_slowdown", 1) != 1:
        lines.append(f"note: this run injected a {s['inject_slowdown']}x slowdown (--bench-inject-slowdown)")
    lines.append(f"images/s from the {stat} round time; a drop of more than {threshold:.0%} fails")
    lines.append("spread: interquartile range of this run's round times over their median\n")

    def number(v):
        return "-" if v is None else f"{v:,.1f}"

    table = [("benchmark", "baseline img/s", "this run img/s", "spread", "change", "")]
    for r in rows:
        change = "-" if r["change"] is None else f"{r['change']:+.1%}"
        spread = "-" if r.get("spread") is None else f"{r['spread']:.0%}"
        verdict = {"regressed": "REGRESSED", "faster": "faster", "new": "new (no baseline)", "missing": "not run"}.get(
            r["status"], ""
        )
        table.append(
            (_label(r), number(r["baseline_images_per_s"]), number(r["images_per_s"]), spread, change, verdict)
        )
    widths = [max(len(row[i]) for row in table) for i in range(5)]
    for row in table:
        lines.append(
            "  ".join([f"{row[0]:<{widths[0]}}", *(f"{v:>{w}}" for v, w in zip(row[1:5], widths[1:])), row[5]]).rstrip()
        )

    compared = [r for r in rows if r["change"] is not None]
    bad = regressed(rows)
    lines.append("")
    if bad:
        lines.append(
            f"FAILED: {len(bad)} of {len(compared)} benchmarks lost more than {threshold:.0%} "
            f"throughput: {', '.join(_label(r) for r in bad)}"
        )
    else:
        lines.append(f"PASSED: all {len(compared)} benchmarks within {threshold:.0%} of the baseline or faster")
    if not compared:
        lines[-1] = "FAILED: no benchmark in common with the baseline"
    return "\n".join(lines)


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
