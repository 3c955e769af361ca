"""One tidy row per model: counts, speed, memory, achieved FLOP/s, and the provenance beside them.

Achieved FLOP/s convention (the `flops` column is per image, forward pass):

* inference: `flops` x inference images/s;
* training: 3 x `flops` x training images/s -- the backward pass is taken as
  twice the forward (one product for the input gradient and one for the weight
  gradient per layer), the usual convention; the optimizer step is not counted.

`*_pct_of_matmul` is that rate as a percentage of `matmul_flops_per_s`, a square
matmul timed on the same device in the same dtype: how far the model is from the
device's practical dense-matmul rate, not from a datasheet peak. In fp32 on
CUDA the reference allows TF32 when cuDNN convolutions do (see
`matmul_flops_per_s`). Both sides are estimates, so a training percentage can
pass 100: the 3x rule counts an input gradient for the first layer that is never
computed, and convolution kernels can run faster than one square matmul size.
"""

from __future__ import annotations

import logging

import pandas as pd
import torch

from bench.device import pick_device
from bench.env import environment
from bench.flop_convention import FLOP_CONVENTION, upgrade_counts
from bench.measure.flops import count_model, count_params
from bench.measure.speed import (
    ENV_COLUMNS,
    THROUGHPUT_KEYS,
    error_text,
    matmul_flops_per_s,
    measure_throughput,
    settings_for,
    validate,
)
from bench.models import create_model, format_knobs

log = logging.getLogger(__name__)

TRAIN_FLOPS_PER_FORWARD = 3  # forward + backward (2x forward); see the module docstring

COLUMNS = [
    "model",
    "knobs",
    "params_total",
    "params_trainable",
    "input_size",
    "macs",
    "elementwise_ops",
    "flops",
    "flop_convention",
    "uncounted_ops",
    *THROUGHPUT_KEYS,
    "matmul_flops_per_s",
    "train_achieved_flops_per_s",
    "infer_achieved_flops_per_s",
    "train_pct_of_matmul",
    "infer_pct_of_matmul",
    "batch_size",
    "dtype",
    "memory_format",
    "quick",
    *ENV_COLUMNS,
    "error",
]


INT_COLUMNS = ("params_total", "params_trainable", "input_size", "macs", "elementwise_ops", "flops", "batch_size")


def _rate(flops: float | None, images_per_s: float | None, factor: int = 1) -> float | None:
    if flops is None or images_per_s is None:
        return None
    return factor * flops * images_per_s


def _pct(achieved: float | None, matmul: float | None) -> float | None:
    if achieved is None or not matmul:
        return None
    return 100.0 * achieved / matmul


def achieved_columns(flops: float | None, speed: dict, matmul: float | None) -> dict:
    """Achieved FLOP/s and percentage of the matmul rate, from a per-image `flops` and a speed dict."""
    train = _rate(flops, speed.get("train_images_per_s"), TRAIN_FLOPS_PER_FORWARD)
    infer = _rate(flops, speed.get("infer_images_per_s"))
    return {
        "matmul_flops_per_s": matmul,
        "train_achieved_flops_per_s": train,
        "infer_achieved_flops_per_s": infer,
        "train_pct_of_matmul": _pct(train, matmul),
        "infer_pct_of_matmul": _pct(infer, matmul),
    }


def measure_model(
    name: str,
    *,
    batch_size: int | None,
    device: torch.device,
    dtype: str,
    memory_format: str,
    quick: bool,
    knobs: dict | None = None,
    matmul: float | None = None,
) -> dict:
    """One row (without provenance) for the registered model `name`; failures fill `error`."""
    row: dict = {"model": name}
    try:
        model = create_model(name, **(knobs or {}))
        row["params_total"] = count_params(model)["params_total"]  # known even if counting fails
        row["input_size"] = model.input_size
        row.update(count_model(model, model.input_size))
    except Exception as exc:  # noqa: BLE001 -- the row records the failure; the bulk run goes on
        log.warning("%s: %s", name, error_text(exc))
        return {**row, "error": error_text(exc)}
    speed = measure_throughput(
        model,
        input_size=model.input_size,
        batch_size=batch_size,
        device=device,
        dtype=dtype,
        memory_format=memory_format,
        quick=quick,
    )
    if speed["error"]:
        log.warning("%s: %s", name, speed["error"])
    return {**row, **speed, **achieved_columns(row["flops"], speed, matmul)}


# A row measures the same thing as another when these agree; `merge_tables` replaces it.
ROW_KEY = ["model", "knobs", "device_name", "dtype", "memory_format", "quick"]


def merge_tables(saved: pd.DataFrame, new: pd.DataFrame, row_key: list[str] = ROW_KEY) -> pd.DataFrame:
    """`saved` with `new`'s rows in place of those they measure again (same `row_key`); other rows kept,
    sorted by model.

    Rows saved under the earlier FLOP convention are converted to the current one first.
    """
    saved = upgrade_counts(saved)
    saved = saved.assign(knobs=saved["knobs"].fillna("") if "knobs" in saved else "")

    def key(frame):
        return frame[row_key].astype(str).agg("|".join, axis=1)

    kept = saved[~key(saved).isin(set(key(new)))]
    merged = pd.concat([kept, new], ignore_index=True) if len(kept) else new
    return merged.sort_values(["model", "knobs"], kind="stable").reset_index(drop=True)[new.columns]


def measure_models(
    names: list[str],
    *,
    batch_size: int | None = None,
    device: torch.device | str = "auto",
    dtype: str = "fp32",
    memory_format: str = "contiguous",
    quick: bool = False,
    knobs: dict | None = None,
) -> pd.DataFrame:
    """Measure each registered model; one row per model, in `COLUMNS` order, failures included.

    `batch_size` None takes the preset's (quick 16, full 128); `knobs` are passed
    to every `create_model`. The matmul rate is measured once for the table.
    """
    validate(dtype, memory_format, batch_size or 1)  # bad settings fail before any model is built
    device = pick_device(device) if isinstance(device, str) else device
    env = environment(device)
    matmul = matmul_flops_per_s(device, dtype, quick=quick)
    log.info("matmul %s on %s: %.3g FLOP/s", dtype, env["device_name"], matmul)
    rows = []
    for name in names:
        log.info("measuring %s", name)
        row = measure_model(
            name,
            batch_size=batch_size,
            device=device,
            dtype=dtype,
            memory_format=memory_format,
            quick=quick,
            knobs=knobs,
            matmul=matmul,
        )
        row.setdefault("batch_size", batch_size or settings_for(quick).batch_size)
        rows.append(
            {
                **row,
                "knobs": format_knobs(knobs),
                "dtype": dtype,
                "memory_format": memory_format,
                "quick": quick,
                "flop_convention": FLOP_CONVENTION,
                **env,
            }
        )
    frame = pd.DataFrame(rows)
    for column in COLUMNS:  # a table whose every model failed still has every column
        if column not in frame:
            frame[column] = None
    for column in INT_COLUMNS:  # counts stay integers beside a failed row's blanks
        frame[column] = frame[column].astype("Int64")
    extra = [c for c in frame.columns if c not in COLUMNS]
    return frame[COLUMNS + extra]
