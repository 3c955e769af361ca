"""The architecture comparison, a kind of study: one `architecture` factor, each net on one recipe.

Applies to a study with an `architecture` factor, e.g. ablations/architectures.toml.
Writes the figures `architectures_error_vs_cost` (test error vs MACs, vs
parameters and vs measured training throughput) and `architectures_throughput` (training and inference images/s),
and the table `architectures`, with the architectures in the study's order.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter, NullFormatter

from bench.report import format as fmt
from bench.report import plot
from bench.report.effects import (
    diff_header,
    effects,
    effects_notes,
    flops_header,
    in_level_order,
    macs_header,
    method_text,
    missing_reason,
    throughput_sources,
)
from bench.report.load import StudyData
from bench.report.markdown import Section
from bench.report.output import Outcome, Output

WHAT = "the architecture comparison"
FIGURES, TABLES = ("architectures_error_vs_cost", "architectures_throughput"), ("architectures",)
FACTOR = "architecture"


def applies(sd: StudyData) -> bool:
    return FACTOR in sd.factors


def build(out: Output, outcome: Outcome) -> None:
    sd = out.sd
    eff = in_level_order(sd, effects(sd))
    s = Section("Architectures: error, size, compute and throughput")
    out.figure(
        out.guarded("error vs cost", architectures_cost, sd, eff),
        "architectures_error_vs_cost",
        "Test top-1 error vs multiply-adds per image, vs parameters and vs measured training throughput (log scales).",
        s,
    )
    out.figure(
        out.guarded("throughput", architectures_throughput, sd, eff),
        "architectures_throughput",
        "Training and inference throughput, images/s.",
        s,
    )
    out.table(architectures_table(sd, eff), eff, s)
    outcome.sections.append(s)
    outcome.effects = eff


# --- the table --------------------------------------------------------------------------


def architectures_table(sd: StudyData, eff: pd.DataFrame) -> fmt.Table:
    train_col, train_desc, infer_col = throughput_sources(sd)
    ref = eff.loc[eff["is_baseline"], "config"]
    ref = (
        ref.iloc[0].split(" = ")[-1]
        if len(ref) and ref.iloc[0] != "baseline"
        else (next(iter(sd.baseline.values())) if sd.baseline else "baseline")
    )
    columns = [
        "architecture",
        "normalisation",
        "params",
        macs_header(sd),
        flops_header(sd),
        f"train images/s ({train_desc})",
        "inference images/s (model only)",
        "test top-1 err. % (mean ± sd)",
        "test top-5 err. % (mean ± sd)",
        f"Δ top-1 vs {ref}, pp [95% {diff_header(eff)} CI]",
        "Δ: method, n",
    ]
    rows = []
    for _, r in eff.iterrows():
        n = int(r["n"])
        name = r["level"] or ref
        rows.append(
            [
                name,
                normalisation(sd, r["level"] or ref),
                fmt.count(r["params"]),
                fmt.count(r["macs"]),
                fmt.count(r["flops"]),
                fmt.rate(r["train_ips"]),
                fmt.rate(r["infer_ips"]) if infer_col else "not measured",
                fmt.mean_sd(r["top1_mean"], r["top1_sd"], n, why_missing=missing_reason(r)),
                fmt.mean_sd(r["top5_mean"], r["top5_sd"], int(r["top5_n"]), why_missing=missing_reason(r)),
                "(reference)"
                if r["is_baseline"]
                else fmt.diff_with_interval(r["diff"], r["diff_lo"], r["diff_hi"], (int(r["diff_n"]),) * 2),
                "" if r["is_baseline"] else method_text(r),
            ]
        )
    notes = effects_notes(sd, eff)
    notes.append(
        "normalisation: the layers each net normalises with. Batch normalisation speeds and steadies training "
        "at a short budget, so where the leaders use it and the others do not, the table compares recipes as "
        "much as architectures."
    )
    if not infer_col:
        notes.append("Inference throughput was not measured at this profile (measure = none).")
    return fmt.Table(
        "architectures", f"{sd.study} ({sd.profile}): size, cost, throughput and test error", columns, rows, notes
    )


def normalisation(sd: StudyData, level: str) -> str:
    """'batch norm', 'LRN', both or 'none': what the level's net (runs.csv cfg_model) normalises with."""
    # here: building the net needs torch, which the rest of the report does not
    from torch import nn

    from bench.models import create_model

    cells = sd.cells_at({FACTOR: level})
    if not len(cells) or "cfg_model" not in cells:
        return fmt.MISSING
    try:  # the net as its builder makes it: the normalisation layers are the architecture's, not a knob's
        model = create_model(str(cells.iloc[0]["cfg_model"]))
    except Exception:  # noqa: BLE001 - a net this checkout cannot build is named as unknown, not a failed report
        return "unknown"
    kinds = [
        name
        for name, cls in (("batch norm", nn.modules.batchnorm._BatchNorm), ("LRN", nn.Module))
        if any(
            isinstance(m, cls) and (name != "LRN" or "LocalResponseNorm" in type(m).__name__) for m in model.modules()
        )
    ]
    return " + ".join(kinds) or "none"


# --- the figures --------------------------------------------------------------------------


def _place_labels(ax, points: list[tuple[float, float, str]], fontsize: float = 9.5) -> None:
    """Label each point beside it: of 16 spots around it (near, then farther with a leader line),
    the first that covers no other label or point, else the one that covers least."""
    fig = ax.figure
    fig.draw_without_rendering()  # lay the figure out first, so that data maps to its final pixels
    scale = fig.dpi / 72  # points -> pixels
    dots = [tuple(ax.transData.transform((x, y))) for x, y, _ in points]
    frame = ax.get_window_extent()
    placed: list[tuple[float, float, float, float]] = []
    near = [
        (7, 4, "left", "bottom"),
        (7, -4, "left", "top"),
        (-7, 4, "right", "bottom"),
        (-7, -4, "right", "top"),
        (0, 9, "center", "bottom"),
        (0, -9, "center", "top"),
        (10, 0, "left", "center"),
        (-10, 0, "right", "center"),
    ]
    spots = near + [(dx * 2.6, dy * 2.6, ha, va) for dx, dy, ha, va in near]

    def overlap(a, b) -> float:
        return max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))

    for (x, y, text), (px, py) in zip(points, dots):
        w, h = len(text) * fontsize * 0.62 * scale, fontsize * 1.25 * scale
        best = None
        for rank, (dx, dy, ha, va) in enumerate(spots):
            ox, oy = px + dx * scale, py + dy * scale
            x0 = ox if ha == "left" else ox - w if ha == "right" else ox - w / 2
            y0 = oy if va == "bottom" else oy - h if va == "top" else oy - h / 2
            box = (x0, y0, x0 + w, y0 + h)
            cost = sum(overlap(box, b) for b in placed)
            cost += sum(overlap(box, (qx - 6, qy - 6, qx + 6, qy + 6)) for qx, qy in dots if (qx, qy) != (px, py))
            cost += 10 * (w * h - overlap(box, (frame.x0, frame.y0, frame.x1, frame.y1)))  # stay inside the axes
            if best is None or cost < best[0] - 1e-9:
                best = (cost, rank, (dx, dy, ha, va), box)
            if cost == 0:
                break
        _, rank, (dx, dy, ha, va), box = best
        placed.append(box)
        arrow = dict(arrowstyle="-", color="0.5", lw=0.7, shrinkA=0, shrinkB=4) if rank >= len(near) else None
        ax.annotate(
            text,
            (x, y),
            xytext=(dx, dy),
            textcoords="offset points",
            ha=ha,
            va=va,
            fontsize=fontsize,
            color="0.15",
            arrowprops=arrow,
        )


def _log_limits(values: np.ndarray) -> tuple[float, float]:
    lo, hi = float(values.min()), float(values.max())
    pad = max((hi / lo) ** 0.12, 1.6) if lo > 0 else 2
    return lo / pad, hi * pad


def architectures_cost(sd: StudyData, eff: pd.DataFrame) -> Figure:
    """Test error vs MACs, vs parameters and vs measured training throughput (log x), one labelled
    point per architecture: what a net costs on paper, and what it costs on this device."""
    fig = Figure(figsize=(16.0, 5.0), layout="constrained")
    axes = fig.subplots(1, 3, sharey=True)
    ok = eff[eff["n"] > 0]
    colors = plot.level_colors(sd)
    notes = []
    ys = np.concatenate([ok[c].to_numpy(dtype=float) for c in ("top1_mean", "top1_lo", "top1_hi")])
    ys = ys[np.isfinite(ys)]
    train_desc = throughput_sources(sd)[1]
    panels = (
        (axes[0], "macs", "MACs per image (conv + FC multiply-adds, forward pass; log scale)"),
        (axes[1], "params", "parameters (log scale)"),
        (axes[2], "train_ips", f"training images/s ({train_desc}; log scale)"),
    )
    for ax, column, xlabel in panels:
        have = ok[ok[column].notna() & (ok[column] > 0)]
        for _, r in have.iterrows():
            c = colors[(FACTOR, _arch(r, sd))]
            yerr = [[r["top1_mean"] - r["top1_lo"]], [r["top1_hi"] - r["top1_mean"]]] if r["n"] > 1 else None
            ax.errorbar(
                r[column], r["top1_mean"], yerr=yerr, fmt="o", ms=9, color=c, mec="black", mew=0.7, capsize=3, zorder=3
            )
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(EngFormatter(sep=""))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(xlabel)
        if len(have):
            ax.set_xlim(*_log_limits(have[column].to_numpy(dtype=float)))
        if len(have) < len(ok):
            what = "measured throughput" if column == "train_ips" else column
            notes.append(f"no {what} for: " + ", ".join(_arch(r, sd) for _, r in ok.iterrows() if not (r[column] > 0)))
    if len(ys):
        span = max(float(np.nanmax(ys) - np.nanmin(ys)), 2.0)
        axes[0].set_ylim(float(np.nanmin(ys)) - 0.12 * span, float(np.nanmax(ys)) + 0.12 * span)
    axes[0].set_ylabel("test top-1 error (%)")
    axes[0].set_title("error vs compute")
    axes[1].set_title("error vs size")
    axes[2].set_title(f"error vs measured speed ({plot.unique(sd, 'device_name') or 'device unknown'})")
    for ax, column, _ in panels:  # after every point is drawn, so that labels see them all
        have = ok[ok[column].notna() & (ok[column] > 0)]
        _place_labels(ax, [(r[column], r["top1_mean"], _arch(r, sd)) for _, r in have.iterrows()])
    missing = eff[eff["n"] == 0]
    if len(missing):
        notes.append(
            "not shown (no finished cell): "
            + ", ".join(
                f"{_arch(r, sd)} ({'not run' if r['cells'] == 0 else r['failed']})" for _, r in missing.iterrows()
            )
        )
    if (ok["n"] > 1).any():
        notes.append("Bars: 95% t-interval over seeds.")
    elif len(ok):
        notes.append("One seed per architecture: no intervals.")
    fig.suptitle(
        f"{sd.study}: test error vs cost ({sd.profile} profile, data: {plot.unique(sd, 'data_source') or 'unknown'})"
    )
    plot.note(fig, notes)
    return fig


def _arch(r, sd: StudyData) -> str:
    return r["level"] or (sd.baseline or {}).get(FACTOR, "baseline")


def architectures_throughput(sd: StudyData, eff: pd.DataFrame) -> Figure:
    """Training and inference images/s per architecture, in the study's order."""
    train_col, train_desc, infer_col = throughput_sources(sd)
    fig = Figure(figsize=(11.5, 0.42 * len(eff) + 1.9), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    order = [_arch(r, sd) for _, r in eff.iterrows()]
    by_level = plot.level_colors(sd)
    colors = [by_level[(FACTOR, a)] for a in order]
    for ax, column, title in (
        (axes[0], "train_ips", f"training ({train_desc})"),
        (axes[1], "infer_ips", "inference (model only)"),
    ):
        values = eff[column].to_numpy(dtype=float)
        finite = values[np.isfinite(values) & (values > 0)]
        ax.set_title(title, fontsize=11)
        ax.set_yticks(range(len(order)), order)
        ax.set_ylim(len(order) - 0.5, -0.5)
        ax.set_xlabel("images/s" + (" (log scale)" if len(finite) and finite.max() / finite.min() > 30 else ""))
        if column == "infer_ips" and infer_col is None:
            ax.text(
                0.5,
                0.5,
                "not measured at this profile\n(measure = none)",
                transform=ax.transAxes,
                ha="center",
                va="center",
                color="0.4",
                style="italic",
            )
            ax.set_xticks([])
            ax.set_xlabel("")
            ax.grid(False)
            continue
        if not len(finite):
            continue
        log = finite.max() / finite.min() > 30
        if log:
            ax.set_xscale("log")
        left = finite.min() / 3 if log else 0
        for i, (v, c) in enumerate(zip(values, colors)):
            if np.isfinite(v) and v > 0:
                ax.barh(i, v - left, left=left, color=c, edgecolor="black", linewidth=0.5, height=0.7)
                ax.text(v, i, f" {v:,.0f}", va="center", ha="left", fontsize=9)
            else:
                r = eff.iloc[i]
                why = "not run" if r["cells"] == 0 else (r["failed"] or "not measured")
                ax.text(
                    left if log else 0,
                    i,
                    f"  missing ({why})",
                    va="center",
                    ha="left",
                    fontsize=9,
                    color="0.4",
                    style="italic",
                )
        ax.set_xlim(left, finite.max() * (4 if log else 1.25))
        ax.grid(axis="y", visible=False)
    fig.suptitle(
        f"{sd.study}: throughput, images/s ({sd.profile} profile, {plot.unique(sd, 'device_name') or 'device unknown'})"
    )
    plot.note(
        fig,
        ["Mean over seeds of each cell's median. Training throughput includes the backward pass and optimizer step."],
    )
    return fig
