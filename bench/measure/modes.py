"""`measure --modes`: each model's speed under each speed mode, as a ratio to fp32 eager from the same run.

A mode is a '+'-joined set of tokens: a precision (`fp32`, `bf16`, `fp16`;
fp32 when absent), `cl` for channels_last, and a compile mode (`compile` for
torch.compile's default, `max-autotune`, `reduce-overhead`; eager when absent)
or `graph` (the whole training step captured as one CUDA graph,
`bench.train.graphed`; CUDA only, training only: its inference rows are eager).
E.g. `fp32`, `bf16+cl`, `compile+bf16+cl`, `graph+bf16+cl`. fp32 eager is always measured: it is
the denominator of every ratio.

For one model, each mode gets its own `bench.measure.workload.Workload` (a copy
of the model, optimizer and fixed on-device batch, as in `bench.measure.speed`):
the training step is the project's one (`bench.train.step.train_step`) on the
model as `bench.train.modes.compile_model` wraps it. Timing goes through
`bench.measure.timing`:

1. first call: the first warm-up step's seconds (`*_first_call_s`); for compiled
   modes this is mostly compilation (less when the kernels are in the compile cache);
2. warm-up, each mode on its own (compiled modes take at least 3 steps: CUDA graphs
   are recorded on the second call and replayed from the third);
3. timed rounds, interleaved across modes (`time_interleaved`): round r of every
   mode before round r+1 of any, so that a slower or faster spell of the machine
   falls on all modes alike;
4. the step split into forward (with loss), backward (with zeroing the gradients)
   and optimizer, each synchronised apart (`time_phases`): milliseconds per step.

Training rounds come first for every mode, then inference rounds (forward only,
`eval()` under `inference_mode`), interleaved the same way. A mode that fails is
a row with `error` set; the others go on.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import pandas as pd
import torch
from torch import nn

from bench.device import DTYPES
from bench.env import environment
from bench.measure.speed import ENV_COLUMNS, Settings, error_text
from bench.measure.timing import release_memory, steps_per_round, time_interleaved, time_phases, warm_up
from bench.measure.workload import Workload
from bench.models import create_model, format_knobs
from bench.train.config import TrainConfig

log = logging.getLogger(__name__)

CHANNELS_LAST = "cl"
GRAPH = "graph"  # the whole training step captured as one CUDA graph (bench.train.graphed); training only
COMPILE_TOKENS = {"compile": "default", "max-autotune": "max-autotune", "reduce-overhead": "reduce-overhead"}
BASELINE = "fp32"
DEFAULT_MODES = ("fp32", "bf16", "bf16+cl", "compile+fp32", "compile+bf16+cl")
CUDA_MODES = ("fp16", "reduce-overhead+bf16+cl", "graph+bf16+cl", "graph+fp32")  # fp16 tensor cores, CUDA graphs
COMPILED_WARMUP_STEPS = 3

COLUMNS = [
    "model",
    "knobs",
    "mode",
    "dtype",
    "memory_format",
    "compile",
    "compile_backend",
    "batch_size",
    "input_size",
    "train_images_per_s",
    "train_images_per_s_min",
    "train_images_per_s_max",
    "train_vs_fp32",
    "infer_images_per_s",
    "infer_images_per_s_min",
    "infer_images_per_s_max",
    "infer_vs_fp32",
    "train_first_call_s",
    "infer_first_call_s",
    "train_forward_ms",
    "train_backward_ms",
    "train_optimizer_ms",
    "rounds",
    "train_steps_per_round",
    "infer_steps_per_round",
    "quick",
    *ENV_COLUMNS,
    "error",
]
# What `measure_modes` fills in (None where a mode failed before it got there).
METRICS = [
    c
    for c in COLUMNS[COLUMNS.index("train_images_per_s") : COLUMNS.index("infer_steps_per_round") + 1]
    if c != "rounds"
]
# A model's rows are replaced together: their ratios share one fp32 baseline.
ROW_KEY = ["model", "knobs", "device_name", "quick"]


@dataclass(frozen=True)
class Mode:
    dtype: str = "fp32"
    channels_last: bool = False
    compile: str = "off"
    graph: bool = False

    @property
    def name(self) -> str:
        tokens = [] if self.compile == "off" else [next(t for t, m in COMPILE_TOKENS.items() if m == self.compile)]
        tokens += [GRAPH] if self.graph else []
        return "+".join([*tokens, self.dtype, *([CHANNELS_LAST] if self.channels_last else [])])

    @property
    def memory_format(self) -> str:
        return "channels_last" if self.channels_last else "contiguous"


def parse_mode(text: str) -> Mode:
    """`bf16+cl` -> Mode(dtype="bf16", channels_last=True); ValueError naming a bad token."""
    dtype, channels_last, compile_mode, graph = None, False, None, False
    for token in (t.strip() for t in text.split("+")):
        if token in DTYPES and dtype is None:
            dtype = token
        elif token == CHANNELS_LAST and not channels_last:
            channels_last = True
        elif token == GRAPH and not graph and compile_mode is None:
            graph = True
        elif token in COMPILE_TOKENS and compile_mode is None and not graph:
            compile_mode = COMPILE_TOKENS[token]
        else:
            valid = ", ".join([*DTYPES, CHANNELS_LAST, *COMPILE_TOKENS, GRAPH])
            raise ValueError(
                f"mode {text!r}: {token!r} is unknown or repeated; join at most one each of "
                f"a precision, cl and a compile mode or graph with '+', from: {valid}"
            )
    return Mode(dtype or "fp32", channels_last, compile_mode or "off", graph)


def parse_modes(spec: str | None, device: torch.device) -> list[Mode]:
    """Comma-separated modes in order, fp32 eager first (added if missing); None: the device's default list."""
    texts = [*DEFAULT_MODES, *(CUDA_MODES if device.type == "cuda" else ())] if spec is None else spec.split(",")
    modes = [parse_mode(t) for t in texts if t.strip()]
    if spec is not None and not modes:
        raise ValueError(f"{spec!r} names no mode; give a comma-separated list, e.g. --modes fp32,bf16")
    if spec is not None and (twice := next((t for i, t in enumerate(modes) if t in modes[:i]), None)):
        raise ValueError(f"{spec!r} lists {twice.name} twice; list each mode once, e.g. --modes fp32,bf16")
    baseline = parse_mode(BASELINE)
    ordered = [baseline, *(m for m in modes if m != baseline)]
    return list(dict.fromkeys(ordered))  # without repeats


class _Subject:
    """One mode's `Workload` (its own copy of the model, optimizer and fixed batch) and the error that stopped it."""

    def __init__(
        self, model: nn.Module, mode: Mode, device: torch.device, input_size: int, batch_size: int, compile_backend: str
    ):
        config = TrainConfig(
            device=str(device),
            dtype=mode.dtype,
            channels_last=mode.channels_last,
            compile=mode.compile,
            batch_size=batch_size,
        )
        self.mode = mode
        self.work = Workload(
            config, model=model, input_size=input_size, graph=mode.graph, compile_backend=compile_backend
        )
        self.error: str | None = None

    def guarded(self, fn):
        """`fn` that, once it has failed, records the error and does nothing more (the other modes go on)."""

        def run(*args) -> None:
            if self.error is None:
                try:
                    fn(*args)
                except Exception as exc:  # noqa: BLE001 -- the failure becomes this mode's row
                    self.error = error_text(exc)

        return run


def _ratio(value: float | None, baseline: float | None) -> float | None:
    return None if value is None or not baseline else value / baseline


def _phase(
    subjects: list[_Subject], warmups: dict, settings: Settings, device: torch.device, phase: str, rows: dict
) -> None:
    """Warm up each live subject's `phase` (train or infer), then time their rounds interleaved."""
    live = []
    for s in subjects:
        if s.error:
            continue
        try:
            step_s = warm_up(s.work.run(phase), device, warmups[s.mode])
        except Exception as exc:  # noqa: BLE001 -- this mode's row records it; the others go on
            s.error = error_text(exc)
            continue
        rows[s.mode][f"{phase}_first_call_s"] = step_s[0]
        live.append((s, steps_per_round(step_s, warmups[s.mode])))
    timed = time_interleaved(
        [s.guarded(s.work.run(phase)) for s, _ in live], device, steps=[n for _, n in live], rounds=settings.repeats
    )
    for (s, n), rounds in zip(live, timed):
        if s.error:
            continue
        rate = rounds.per_s(n * s.work.batch_size)
        rows[s.mode].update(
            {
                f"{phase}_images_per_s": rate.median,
                f"{phase}_images_per_s_min": rate.min,
                f"{phase}_images_per_s_max": rate.max,
                f"{phase}_steps_per_round": n,
            }
        )


def measure_modes(
    model: nn.Module,
    modes: list[Mode],
    *,
    device: torch.device,
    settings: Settings,
    input_size: int | None = None,
    batch_size: int | None = None,
    compile_backend: str = "inductor",
) -> list[dict]:
    """One row per mode, in order: images/s (median, min, max) and the ratio to fp32 eager (which `modes`
    must hold), first-call seconds, the step's phase split; `error` for a mode that failed.

    The caller's model is untouched. `compile_backend="eager"` traces compiled modes without
    generating code (tests).
    """
    if Mode() not in modes:
        raise ValueError(f"modes {[m.name for m in modes]} lack {BASELINE}, the baseline of the ratios")
    input_size = input_size or model.input_size
    batch_size = batch_size or settings.batch_size
    rows = {
        m: {
            "mode": m.name,
            "dtype": m.dtype,
            "memory_format": m.memory_format,
            "compile": m.compile,
            "compile_backend": compile_backend if m.compile != "off" else None,
            "batch_size": batch_size,
            "input_size": input_size,
            "rounds": settings.repeats,
            **dict.fromkeys(METRICS),
            "error": None,
        }
        for m in modes
    }
    subjects = []
    for m in modes:
        try:
            subjects.append(_Subject(model, m, device, input_size, batch_size, compile_backend))
        except Exception as exc:  # noqa: BLE001 -- the failure becomes this mode's row
            rows[m]["error"] = error_text(exc)
    timing = settings.timing
    compiled = dataclasses.replace(timing, warmup_steps=max(timing.warmup_steps, COMPILED_WARMUP_STEPS))
    warmups = {s.mode: timing if s.mode.compile == "off" else compiled for s in subjects}
    try:
        _phase(subjects, warmups, settings, device, "train", rows)
        for s in subjects:
            if s.error is None and s.work.graphed is None:  # one graph has no phases to time apart
                split = time_phases(
                    [s.guarded(p) for p in s.work.phases()], device, steps=timing.round_steps, rounds=settings.repeats
                )
                if s.error is None:
                    for name, rounds in zip(("forward", "backward", "optimizer"), split):
                        rows[s.mode][f"train_{name}_ms"] = 1e3 * rounds.median_s() / rounds.steps
        for s in subjects:
            s.work.optimizer.zero_grad(set_to_none=True)  # gradients are not part of inference
        _phase(subjects, warmups, settings, device, "infer", rows)
    finally:
        for s in subjects:
            if s.error:
                rows[s.mode]["error"] = s.error
        del subjects
        release_memory(device)
    base = rows[Mode()]
    for row in rows.values():
        for phase in ("train", "infer"):
            row[f"{phase}_vs_fp32"] = _ratio(row.get(f"{phase}_images_per_s"), base.get(f"{phase}_images_per_s"))
    return list(rows.values())


def measure_modes_table(
    names: list[str],
    modes: list[Mode],
    *,
    device: torch.device,
    settings: Settings,
    quick: bool,
    batch_size: int | None = None,
    knobs: dict | None = None,
    compile_backend: str = "inductor",
) -> pd.DataFrame:
    """`measure_modes` for each registered model: the tidy table, in `COLUMNS` order, provenance on every row."""
    env = environment(device)
    rows = []
    for name in names:
        log.info("measuring %s under %s", name, ", ".join(m.name for m in modes))
        try:
            model = create_model(name, **(knobs or {}))
            measured = measure_modes(
                model, modes, device=device, settings=settings, batch_size=batch_size, compile_backend=compile_backend
            )
        except Exception as exc:  # noqa: BLE001 -- a model that cannot be built is a row per mode, never an aborted bulk run
            measured = [{"mode": m.name, "error": error_text(exc)} for m in modes]
        for row in measured:
            if row.get("error"):
                log.warning("%s %s: %s", name, row["mode"], row["error"])
            rows.append({"model": name, "knobs": format_knobs(knobs), "quick": quick, **row, **env})
    frame = pd.DataFrame(rows)
    for column in COLUMNS:  # a table whose every mode failed still has every column
        if column not in frame:
            frame[column] = None
    return frame[COLUMNS]
