"""What the count columns mean, and how tables written under the earlier convention are read.

Torch-free, so that the report (which never imports torch) and the measurement
code share one definition. The counts themselves are made in
`bench.measure.flops`, whose docstring lists the per-element costs.

Per image, forward pass:

* `macs`: multiply-adds of convolutions and linear layers / matmuls only (what
  fvcore, torchvision and the paper count);
* `elementwise_ops`: operations of everything else (activations, pooling,
  normalisation, element-wise arithmetic), at documented costs per output element;
* `flops`: 2 x `macs` + `elementwise_ops`.

Tables written before this convention have `macs` = multiply-adds plus the same
per-element costs, `core_macs` = conv + linear multiply-adds, `flops` = 2 x that
`macs`. Their per-element costs were counted one per operation, as now, so the
old columns convert exactly (`upgrade_counts`).
"""

from __future__ import annotations

import pandas as pd

FLOP_CONVENTION = (
    "macs=multiply-adds of conv and linear layers; elementwise_ops=activation, pooling and normalisation ops; "
    "flops=2*macs+elementwise_ops; per image, forward pass"
)
COUNT_COLUMNS = ("macs", "elementwise_ops", "flops")
OLD_CORE_MACS = "core_macs"  # read from old tables only, never written


def upgrade_counts(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` with every row of the old convention (both `macs` and `core_macs`, no
    `elementwise_ops`) converted to this one, and `core_macs` dropped.

    Achieved FLOP/s and their percentages are rescaled by new/old `flops`, since they
    are rates of that column; `flop_convention` says the row was converted.
    """
    if OLD_CORE_MACS not in frame:
        return frame
    frame = frame.copy()
    if "elementwise_ops" not in frame:
        frame["elementwise_ops"] = pd.NA
    old = frame[OLD_CORE_MACS].notna() & frame.get("macs", pd.Series(pd.NA, index=frame.index)).notna()
    old &= frame["elementwise_ops"].isna()
    if old.any():
        core = pd.to_numeric(frame.loc[old, OLD_CORE_MACS])
        all_macs = pd.to_numeric(frame.loc[old, "macs"])
        old_flops = 2 * all_macs
        frame.loc[old, "elementwise_ops"] = all_macs - core
        frame.loc[old, "macs"] = core
        frame.loc[old, "flops"] = 2 * core + (all_macs - core)
        rates = [c for c in frame if c.endswith(("achieved_flops_per_s", "_pct_of_matmul"))]
        for column in rates:
            frame.loc[old, column] = pd.to_numeric(frame.loc[old, column]) * frame.loc[old, "flops"] / old_flops
        recorded = frame.get("flop_convention", pd.Series(pd.NA, index=frame.index))[old]
        frame.loc[old, "flop_convention"] = [
            f"{FLOP_CONVENTION} (converted from: {r})" if pd.notna(r) else FLOP_CONVENTION for r in recorded
        ]
    for column in (c for c in COUNT_COLUMNS if c in frame):  # counts stay integers beside blanks
        frame[column] = pd.to_numeric(frame[column]).astype("Int64")
    return frame.drop(columns=OLD_CORE_MACS)
