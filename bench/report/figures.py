"""Seaborn figures drawn from the tidy tables, each saved as PNG and PDF.

Figures are `matplotlib.figure.Figure` objects, not pyplot figures: they render
through the Agg (PNG) and PDF backends with no display and no global figure
registry, and the seaborn style applies only inside `style()`, never at import.

Colours: seaborn's 'colorblind' palette through one fixed mapping from
(factor, level) to colour (`color_for`), so a configuration has the same colour
in every figure; the baseline configuration, and every factor's baseline level,
is blue.
"""

from __future__ import annotations

import logging
import math
import os
import zlib
from contextlib import ExitStack, contextmanager
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import EngFormatter, MaxNLocator, MultipleLocator, NullFormatter

from bench.report import figure1 as f1
from bench.report.claims import CLAIMS, claims_for
from bench.report.load import StudyData
from bench.report.tables import config_label, throughput_sources
from bench.train.result import DIVERGED, OK

FORMATS = ("png", "pdf")
DPI = 150
CURVE_STATUSES = (OK, DIVERGED)
BASELINE_INDEX = 0
# (factor, level) -> index into seaborn's colorblind palette (10 colours). Levels not
# listed get a stable colour from their name.
LEVEL_COLORS = {
    ("activation", "relu"): 0, ("activation", "tanh"): 1,
    ("norm", "lrn"): 0, ("norm", "none"): 2,
    ("pool", "overlap"): 0, ("pool", "nonoverlap"): 3,
    ("dropout", "0.5"): 0, ("dropout", "0.0"): 4,
    ("towers", "two"): 0, ("towers", "one"): 5, ("towers", "one-half"): 6,
    ("augment", "crop+flip"): 0, ("augment", "none"): 7, ("augment", "crop+flip+pca"): 9,
    ("architecture", "alexnet"): 0, ("architecture", "zfnet"): 1, ("architecture", "vgg11"): 2,
    ("architecture", "resnet18"): 3, ("architecture", "googlenet"): 4, ("architecture", "resnet34"): 5,
    ("architecture", "layers-80sec"): 6, ("architecture", "lenet5-1998"): 7, ("architecture", "vgg16"): 8,
    ("architecture", "lenet5"): 9,
}
PAPER_MARKERS = {"ImageNet": "D", "CIFAR-10": "s"}


def palette() -> list:
    return sns.color_palette("colorblind", 10)


def color_for(factor: str | None, level: str | None) -> tuple:
    """The fixed colour of a configuration: `factor` = `level` (None, None for the baseline)."""
    if factor is None:
        return palette()[BASELINE_INDEX]
    index = LEVEL_COLORS.get((factor, str(level)))
    if index is None:
        index = zlib.crc32(f"{factor}={level}".encode()) % 10
    return palette()[index]


@contextmanager
def style():
    """The report's look: seaborn whitegrid, sized for a README at ~800 px wide, TrueType in PDFs."""
    with ExitStack() as stack:
        stack.enter_context(sns.axes_style("whitegrid"))
        stack.enter_context(sns.plotting_context("notebook", font_scale=1.05))
        stack.enter_context(matplotlib.rc_context({
            "pdf.fonttype": 42, "savefig.dpi": DPI, "axes.titlesize": 12, "figure.titlesize": 13,
            "legend.fontsize": 10, "legend.framealpha": 0.9}))
        yield


def save(fig: Figure, folder: Path, name: str) -> list[Path]:
    """Write `name`.png and `name`.pdf whole (temporary file, then rename)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    fonttools = logging.getLogger("fontTools")  # it logs every PDF font subset at INFO
    level = fonttools.level
    fonttools.setLevel(logging.WARNING)
    try:
        for ext in FORMATS:
            paths.append(_save_one(fig, folder, name, ext))
    finally:
        fonttools.setLevel(level)
    return paths


def _save_one(fig: Figure, folder: Path, name: str, ext: str) -> Path:
    path = folder / f"{name}.{ext}"
    tmp = folder / f".{name}.{ext}.tmp"
    metadata = {"CreationDate": None} if ext == "pdf" else {}  # the same tables give the same PDF
    fig.savefig(tmp, format=ext, bbox_inches="tight", metadata=metadata, dpi=DPI)
    os.replace(tmp, path)
    return path


def _note(fig: Figure, lines: list[str]) -> None:
    """Small print under the axes: what the bands mean, what is missing."""
    if lines:
        fig.text(0.01, -0.01, "\n".join(lines), ha="left", va="top", fontsize=9, color="0.25")


def _curves(sd: StudyData, cell_ids) -> pd.DataFrame:
    h = sd.history
    return h[h["cell_id"].isin(list(cell_ids)) & h["status"].isin(CURVE_STATUSES)]


def _line(ax, h: pd.DataFrame, y: str, color, linestyle: str, label: str | None = None):
    """Mean over seeds; with several seeds, a band over their range (min to max)."""
    h = h[["epoch", y, "seed"]].dropna()
    if not len(h):
        return
    several = h["seed"].nunique() > 1
    sns.lineplot(data=h, x="epoch", y=y, estimator="mean", errorbar=("pi", 100) if several else None,
                 ax=ax, color=color, linestyle=linestyle, label=label, linewidth=2,
                 marker="o" if h["epoch"].nunique() <= 3 else None, legend=False)


# --- Figure 1 --------------------------------------------------------------------------

def epoch_axis(ax, last: float) -> None:
    """Integer epoch ticks (every epoch when there are few) from 0.5 to the last epoch + 0.5."""
    ax.xaxis.set_major_locator(MultipleLocator(1) if last <= 12 else MaxNLocator(integer=True))
    ax.set_xlim(0.5, last + 0.5)


def figure1(sd: StudyData, chosen: pd.DataFrame, ratios: dict) -> Figure:
    """Training error vs epochs at each activation's chosen lr: one panel per setup, shared axes.

    Each panel's legend carries the chosen learning rates, the epochs to the target and the
    ratio beside the paper's; matplotlib places it where it covers the fewest data points.
    """
    metric, target = sd.target["metric"], sd.target["value"]
    setups = [s for s in sd.levels.get("setup", []) if s in set(chosen["setup"])] or list(dict.fromkeys(chosen["setup"]))
    fig = Figure(figsize=(5.6 * len(setups) + 0.6, 5.0), layout="constrained")
    axes = fig.subplots(1, len(setups), sharex=True, sharey=True, squeeze=False)[0]
    paper = next((c for c in CLAIMS if c.kind == "speedup"), None)
    seeds = sd.history["seed"].nunique() if len(sd.history) else 0
    top, last = target, 1.0
    for ax, setup in zip(axes, setups):
        rows = chosen[chosen["setup"] == setup]
        handles = []
        ax.axhline(target, color="0.35", linestyle=":", linewidth=1.2, zorder=1)
        ax.text(0.01, target, f" {target:g}%", transform=ax.get_yaxis_transform(), va="bottom", ha="left",
                fontsize=10, color="0.3")
        for _, r in rows.iterrows():
            act = r["activation"]
            color = color_for("activation", act)
            dash = "-" if act == f1.FAST else "--" if act == f1.SLOW else ":"
            h = _curves(sd, r["cell_ids"].split(","))
            _line(ax, h, metric, color, dash)
            if len(h):
                top = max(top, float(h[metric].max()))
                last = max(last, float(h["epoch"].max()))
            if r["reached"]:
                ax.plot([r["epochs_mean"]], [target], marker="o", ms=9, color=color, mec="black", zorder=5)
                ax.annotate(f"{r['epochs_mean']:.3g}", (r["epochs_mean"], target), xytext=(0, -17),
                            textcoords="offset points", ha="center", fontsize=10, color=color, fontweight="bold")
                what = f"{target:g}% at epoch {r['epochs_mean']:.3g}" + (f" (mean of {r['n']} seeds)" if r["n"] > 1 else "")
            else:
                what = f1.reached_text(r, sd)
            if not len(h):
                what += " (no curve: history missing)"
            handles.append(Line2D([], [], color=color, linestyle=dash, linewidth=2, label=f"{act}, lr {r['lr']}: {what}"))
        ratio = ratios.get(setup)
        extra = []
        if ratio is not None:
            extra.append(ratio.text.split(" (lower bound")[0] + (" (lower bound)" if ratio.kind == "lower bound" else ""))
        if paper:
            extra.append(f"paper: ReLU {paper.quote.split('ReLU ')[-1]}")
        handles += [Line2D([], [], linestyle="none", label=t) for t in extra]
        ax.legend(handles=handles, loc="best", fontsize=9.5, handlelength=2.2)
        title = f"setup = {setup}" if setup else (_unique(sd, "cfg_model") or sd.study)
        if ratio is not None and ratio.kind != "none":
            title += f": {ratio.text.split(' (')[0]}" + (" (lower bound)" if ratio.kind == "lower bound" else "")
        ax.set_title(title)
        ax.set_xlabel("epochs")
        ax.set_ylabel("training error (%)" if metric == "train_err_pct" else f"{metric} (%)")
    axes[0].set_ylim(0, min(100.0, top * 1.08 + 2))
    epoch_axis(axes[0], last)
    model = _unique(sd, "cfg_model")
    fig.suptitle(f"Figure 1 re-measured: {model or 'the four-layer net'}, training error vs epochs "
                 f"(ReLU solid, tanh dashed)")
    _note(fig, [f"{seeds} seeds: line = mean, band = range over seeds." if seeds > 1 else "One seed: no band.",
                f"Each activation at the learning rate that reaches {target:g}% in the fewest epochs "
                f"({sd.profile} profile, data: {_unique(sd, 'data_source') or 'unknown'})."])
    return fig


def _unique(sd: StudyData, column: str) -> str:
    if column not in sd.runs or not sd.runs[column].notna().any():
        return ""
    return ", ".join(str(v) for v in dict.fromkeys(sd.runs[column].dropna()))


# --- ablation effects -----------------------------------------------------------------

def ablation(sd: StudyData, eff: pd.DataFrame) -> Figure:
    """Test error per configuration beside the baseline, and the difference from it, sorted."""
    base = eff[eff["is_baseline"]].iloc[0] if eff["is_baseline"].any() else None
    others = eff[~eff["is_baseline"]].copy()
    others = others.assign(_missing=others["n"] == 0).sort_values(["_missing", "diff"], ascending=[True, False])
    rows = ([base] if base is not None else []) + [r for _, r in others.iterrows()]
    k = len(rows)
    fig = Figure(figsize=(11, 0.52 * k + 2.0), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2, sharey=True)
    if base is not None and base["n"] > 0:
        c = color_for(None, None)
        ax1.axvline(base["top1_mean"], color=c, linestyle="--", linewidth=1, zorder=1)
        if base["n"] > 1:
            ax1.axvspan(base["top1_lo"], base["top1_hi"], color=c, alpha=0.12, zorder=0)
    ax2.axvline(0, color="0.3", linewidth=1, zorder=1)
    used_markers = set()
    for i, r in enumerate(rows):
        factor = r["factor"] or None
        c = color_for(factor, r["level"] or None)
        n = int(r["n"])
        for claim in claims_for(factor, r["level"], "top1_diff") if factor else []:  # even where not measured
            used_markers.add(claim.data)
            ax2.plot([claim.paper_diff], [i], marker=PAPER_MARKERS.get(claim.data, "^"), ms=8, mfc="none",
                     mec="black", mew=1.4, linestyle="none", zorder=4)
        if n == 0:
            why = "not run" if r["cells"] == 0 else (r["failed"] or "no finished cell")
            ax1.text(0.5, i, f"missing ({why})", transform=ax1.get_yaxis_transform(), ha="center",
                     va="center", fontsize=9.5, color="0.4", style="italic")
            continue
        xerr = [[r["top1_mean"] - r["top1_lo"]], [r["top1_hi"] - r["top1_mean"]]] if n > 1 else None
        ax1.errorbar(r["top1_mean"], i, xerr=xerr, fmt="o", color=c, ms=8, capsize=3, elinewidth=2, mec="black",
                     mew=0.6, zorder=3)
        if factor is None:
            ax2.text(0, i, "  reference", ha="left", va="center", fontsize=9.5, color="0.35")
            continue
        if not math.isnan(r["diff"]):
            derr = [[r["diff"] - r["diff_lo"]], [r["diff_hi"] - r["diff"]]] if not math.isnan(r["diff_lo"]) else None
            ax2.errorbar(r["diff"], i, xerr=derr, fmt="o", color=c, ms=8, capsize=3, elinewidth=2, mec="black",
                         mew=0.6, zorder=3)
    ax1.margins(x=0.08)
    labels = [config_label(r["factor"] or None, r["level"] or None) + (f"  (n={int(r['n'])})" if r["n"] > 1 else "")
              for r in rows]
    ax1.set_yticks(range(k), labels)
    ax1.set_ylim(k - 0.5, -0.5)
    ax1.set_xlabel("test top-1 error (%)")
    ax2.set_xlabel("Δ test top-1 error vs baseline (percentage points)")
    several = any(int(r["n"]) > 1 for r in rows)
    ax1.set_title("error per configuration" + (" (95% t-interval)" if several else ""))
    ax2.set_title("difference from the baseline" + (" (95% Welch interval)" if several else ""))
    lo, hi = ax2.get_xlim()
    span = max(abs(lo), abs(hi), 0.5)
    ax2.set_xlim(-span * 1.1, span * 1.1)
    handles = [Line2D([], [], marker="o", color="0.3", linestyle="none", ms=8, label="measured")]
    handles += [Line2D([], [], marker=PAPER_MARKERS.get(d, "^"), mfc="none", mec="black", mew=1.4,
                       linestyle="none", ms=8, label=f"paper ({d})") for d in sorted(used_markers)]
    ax2.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=len(handles), fontsize=9.5,
               frameon=False, handletextpad=0.3, columnspacing=1.2)
    fig.suptitle(f"{sd.study}: effect of each design choice on test error ({sd.profile} profile)")
    seeds = sorted(sd.runs["seed"].unique())
    notes = [f"Measured on {_unique(sd, 'data_source') or 'unknown data'}, seeds {', '.join(str(s) for s in seeds)}; "
             "hollow markers: the paper's reported effect. Sorted by the measured difference; "
             "positive = the change raises error."]
    single = [config_label(r["factor"] or None, r["level"] or None) for r in rows if int(r["n"]) == 1]
    if single and len(single) == sum(int(r["n"]) > 0 for r in rows):
        notes.insert(0, "One seed per configuration: points only, no intervals.")
    elif single:
        notes.insert(0, f"One seed, so no interval: {', '.join(single)}.")
    _note(fig, notes)
    return fig


# --- overfitting ------------------------------------------------------------------------

OVERFIT_FACTORS = ("dropout", "pool", "augment")


def overfitting(sd: StudyData) -> Figure | None:
    """Train vs test error over epochs: one row per factor, one panel per level, shared axes."""
    factors = [f for f in OVERFIT_FACTORS if f in sd.factors]
    if not factors or sd.baseline is None or not len(sd.history):
        return None
    # rows with more levels last: a shared x axis shows its tick labels on the bottom row only
    factors.sort(key=lambda f: len(sd.levels[f]))
    grid = [[(None, sd.baseline[f])] + [(f, lv) for lv in sd.levels[f] if lv != sd.baseline[f]] for f in factors]
    ncols = max(len(g) for g in grid)
    fig = Figure(figsize=(4.0 * ncols + 0.5, 3.2 * len(factors) + 1.0), layout="constrained")
    axes = fig.subplots(len(factors), ncols, sharex=True, sharey=True, squeeze=False)
    top, last = 0.0, 1.0
    for row, (factor, configs) in enumerate(zip(factors, grid)):
        for col in range(ncols):
            ax = axes[row][col]
            if col >= len(configs):
                ax.set_visible(False)
                continue
            which, level = configs[col]
            cells = sd.cells_at({**sd.baseline, factor: level})
            h = _curves(sd, cells["cell_id"])
            c = color_for(which, level if which else None)
            title = f"{factor} = {level}" + (" (baseline)" if which is None else "")
            ax.set_xlabel("epochs" if row == len(factors) - 1 else "")
            ax.set_ylabel("error (%)" if col == 0 else "")
            if not len(h):
                why = "not run" if not len(cells) else ", ".join(sorted(set(cells["status"])))
                ax.text(0.5, 0.5, f"missing ({why})", transform=ax.transAxes, ha="center", va="center",
                        color="0.4", style="italic")
                ax.set_title(title, fontsize=11)
                continue
            _line(ax, h, "train_err_pct", c, "--")
            _line(ax, h, "test_top1_err_pct", c, "-")
            mean = h.groupby("epoch")[["train_err_pct", "test_top1_err_pct"]].mean()
            ax.fill_between(mean.index, mean["train_err_pct"], mean["test_top1_err_pct"], color=c, alpha=0.15,
                            linewidth=0)
            gap = mean["test_top1_err_pct"].iloc[-1] - mean["train_err_pct"].iloc[-1]
            ax.set_title(f"{title}\nlast epoch: test − train = {gap:+.1f} pp", fontsize=11)
            top = max(top, float(np.nanmax(mean.to_numpy())))
            last = max(last, float(mean.index.max()))
    axes[0][0].set_ylim(0, min(100.0, top * 1.08 + 2))
    epoch_axis(axes[0][0], last)
    handles = [Line2D([], [], color="0.2", linestyle="--", linewidth=2, label="train (during the epoch)"),
               Line2D([], [], color="0.2", linestyle="-", linewidth=2, label="test top-1")]
    axes[0][0].legend(handles=handles, loc="best", fontsize=9.5)
    fig.suptitle(f"{sd.study}: train vs test error over epochs ({sd.profile} profile)")
    seeds = sd.history["seed"].nunique()
    _note(fig, [("Line = mean over the seeds, band = their range; " if seeds > 1 else "One seed; ")
                + "shading = the gap between train and test error.",
                "Training error is measured during the epoch with dropout and augmentation active, "
                "test error without."])
    return fig


# --- architectures ----------------------------------------------------------------------

def _place_labels(ax, points: list[tuple[float, float, str]], fontsize: float = 9.5) -> None:
    """Label each point beside it: of 16 spots around it (near, then farther with a leader line),
    the first that covers no other label or point, else the one that covers least."""
    fig = ax.figure
    fig.draw_without_rendering()  # lay the figure out first, so that data maps to its final pixels
    scale = fig.dpi / 72  # points -> pixels
    dots = [tuple(ax.transData.transform((x, y))) for x, y, _ in points]
    frame = ax.get_window_extent()
    placed: list[tuple[float, float, float, float]] = []
    near = [(7, 4, "left", "bottom"), (7, -4, "left", "top"), (-7, 4, "right", "bottom"), (-7, -4, "right", "top"),
            (0, 9, "center", "bottom"), (0, -9, "center", "top"), (10, 0, "left", "center"), (-10, 0, "right", "center")]
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
        ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", ha=ha, va=va, fontsize=fontsize,
                    color="0.15", arrowprops=arrow)


def _log_limits(values: np.ndarray) -> tuple[float, float]:
    lo, hi = float(values.min()), float(values.max())
    pad = max((hi / lo) ** 0.12, 1.6) if lo > 0 else 2
    return lo / pad, hi * pad


def architectures_cost(sd: StudyData, eff: pd.DataFrame) -> Figure:
    """Test error vs MACs and vs parameters (log x), one labelled point per architecture."""
    fig = Figure(figsize=(11.5, 5.0), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    ok = eff[eff["n"] > 0]
    notes = []
    ys = np.concatenate([ok[c].to_numpy(dtype=float) for c in ("top1_mean", "top1_lo", "top1_hi")])
    ys = ys[np.isfinite(ys)]
    panels = ((axes[0], "macs", "MACs per image (multiply-adds, forward pass; log scale)"),
              (axes[1], "params", "parameters (log scale)"))
    for ax, column, xlabel in panels:
        have = ok[ok[column].notna() & (ok[column] > 0)]
        for _, r in have.iterrows():
            c = color_for("architecture", _arch(r, sd))
            yerr = [[r["top1_mean"] - r["top1_lo"]], [r["top1_hi"] - r["top1_mean"]]] if r["n"] > 1 else None
            ax.errorbar(r[column], r["top1_mean"], yerr=yerr, fmt="o", ms=9, color=c, mec="black", mew=0.7,
                        capsize=3, zorder=3)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(EngFormatter(sep=""))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(xlabel)
        if len(have):
            ax.set_xlim(*_log_limits(have[column].to_numpy(dtype=float)))
        if len(have) < len(ok):
            notes.append(f"no {column} for: " + ", ".join(_arch(r, sd) for _, r in ok.iterrows()
                                                          if not (r[column] > 0)))
    if len(ys):
        span = max(float(np.nanmax(ys) - np.nanmin(ys)), 2.0)
        axes[0].set_ylim(float(np.nanmin(ys)) - 0.12 * span, float(np.nanmax(ys)) + 0.12 * span)
    axes[0].set_ylabel("test top-1 error (%)")
    axes[0].set_title("error vs compute")
    axes[1].set_title("error vs size")
    for ax, column, _ in panels:  # after every point is drawn, so that labels see them all
        have = ok[ok[column].notna() & (ok[column] > 0)]
        _place_labels(ax, [(r[column], r["top1_mean"], _arch(r, sd)) for _, r in have.iterrows()])
    missing = eff[eff["n"] == 0]
    if len(missing):
        notes.append("not shown (no finished cell): " + ", ".join(
            f"{_arch(r, sd)} ({'not run' if r['cells'] == 0 else r['failed']})" for _, r in missing.iterrows()))
    if (ok["n"] > 1).any():
        notes.append("Bars: 95% t-interval over seeds.")
    elif len(ok):
        notes.append("One seed per architecture: no intervals.")
    fig.suptitle(f"{sd.study}: test error vs cost ({sd.profile} profile, data: {_unique(sd, 'data_source') or 'unknown'})")
    _note(fig, notes)
    return fig


def _arch(r, sd: StudyData) -> str:
    return r["level"] or (sd.baseline or {}).get("architecture", "baseline")


def architectures_throughput(sd: StudyData, eff: pd.DataFrame) -> Figure:
    """Training and inference images/s per architecture, in the study's order."""
    train_col, train_desc, infer_col = throughput_sources(sd)
    fig = Figure(figsize=(11.5, 0.42 * len(eff) + 1.9), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    order = [_arch(r, sd) for _, r in eff.iterrows()]
    for ax, column, title in ((axes[0], "train_ips", f"training ({train_desc})"),
                              (axes[1], "infer_ips", "inference (model only)")):
        values = eff[column].to_numpy(dtype=float)
        colors = [color_for("architecture", a) for a in order]
        finite = values[np.isfinite(values) & (values > 0)]
        ax.set_title(title, fontsize=11)
        ax.set_yticks(range(len(order)), order)
        ax.set_ylim(len(order) - 0.5, -0.5)
        ax.set_xlabel("images/s" + (" (log scale)" if len(finite) and finite.max() / finite.min() > 30 else ""))
        if column == "infer_ips" and infer_col is None:
            ax.text(0.5, 0.5, "not measured at this profile\n(measure = none)", transform=ax.transAxes,
                    ha="center", va="center", color="0.4", style="italic")
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
                ax.text(left if log else 0, i, f"  missing ({why})", va="center", ha="left", fontsize=9,
                        color="0.4", style="italic")
        ax.set_xlim(left, finite.max() * (4 if log else 1.25))
        ax.grid(axis="y", visible=False)
    fig.suptitle(f"{sd.study}: throughput, images/s ({sd.profile} profile, {_unique(sd, 'device_name') or 'device unknown'})")
    _note(fig, ["Mean over seeds of each cell's median. Training throughput includes the backward pass and "
                "optimizer step."])
    return fig
