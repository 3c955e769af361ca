"""What every figure shares: the style, saving as PNG and PDF, colours, curves over epochs.

Figures are `matplotlib.figure.Figure` objects, not pyplot figures: they render
through the Agg (PNG) and PDF backends with no display and no global figure
registry, and the seaborn style applies only inside `style()`, never at import.

Colours come from the study's level order (`level_colors`): the baseline
configuration, and every factor's baseline level, is the first colour (blue);
each other level takes the next, factor by factor in the study's order, so a
configuration has the same colour in every figure of its study.
"""

from __future__ import annotations

import logging
import textwrap
from contextlib import ExitStack, contextmanager
from pathlib import Path

import matplotlib
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, MultipleLocator

from bench.io import atomic_write
from bench.report.load import StudyData
from bench.train.result import DIVERGED, OK

FORMATS = ("png", "pdf")
DPI = 150
CURVE_STATUSES = (OK, DIVERGED)  # a diverged cell's curve up to the divergence still counts
# seaborn's colorblind palette with its yellow (slot 8), the hardest to see on white, last:
# a study uses it only when it needs all ten colours.
COLORBLIND_ORDER = (0, 1, 2, 3, 4, 5, 6, 7, 9, 8)


def palette(n: int) -> list:
    """`n` distinct colours, the first blue: the colorblind palette up to ten, else evenly spaced hues."""
    if n <= len(COLORBLIND_ORDER):
        colors = sns.color_palette("colorblind", len(COLORBLIND_ORDER))
        return [colors[i] for i in COLORBLIND_ORDER[:n]]
    return list(sns.husl_palette(n, h=0.7))  # hue 0.7: blue first, as in the colorblind palette


def level_colors(sd: StudyData, factors: list[str] | None = None) -> dict[tuple, tuple]:
    """(factor, level) -> colour for the levels of `factors` (default: all), and (None, None) for
    the baseline configuration; see the module docstring."""
    factors = sd.factors if factors is None else factors
    base = {f: (sd.baseline or {}).get(f) or (sd.levels[f] or [None])[0] for f in factors}
    others = [(f, lv) for f in factors for lv in sd.levels[f] if lv != base[f]]
    colors = palette(1 + len(others))
    return {(None, None): colors[0], **{(f, base[f]): colors[0] for f in factors}, **dict(zip(others, colors[1:]))}


@contextmanager
def style():
    """The report's look: seaborn whitegrid, sized for a README at ~800 px wide, TrueType in PDFs."""
    with ExitStack() as stack:
        stack.enter_context(sns.axes_style("whitegrid"))
        stack.enter_context(sns.plotting_context("notebook", font_scale=1.05))
        stack.enter_context(
            matplotlib.rc_context(
                {
                    "pdf.fonttype": 42,
                    "savefig.dpi": DPI,
                    "axes.titlesize": 12,
                    "figure.titlesize": 13,
                    "legend.fontsize": 10,
                    "legend.framealpha": 0.9,
                }
            )
        )
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
    metadata = {"CreationDate": None} if ext == "pdf" else {}  # the same tables give the same PDF
    atomic_write(
        path, lambda f: fig.savefig(f, format=ext, bbox_inches="tight", metadata=metadata, dpi=DPI), binary=True
    )
    return path


def note(fig: Figure, lines: list[str]) -> None:
    """Small print under the axes: what the bands mean, what is missing."""
    if lines:
        # Wrapped to the figure's width (about 15 characters an inch at this size): a long line
        # would otherwise widen a one-panel figure's saved bounding box far past its axes.
        width = max(40, int(fig.get_figwidth() * 15))
        text = "\n".join(textwrap.fill(line, width) for line in lines)
        fig.text(0.01, -0.01, text, ha="left", va="top", fontsize=9, color="0.25")


def curves(sd: StudyData, cell_ids) -> pd.DataFrame:
    """The history rows of these cells that have a curve to draw."""
    h = sd.history
    return h[h["cell_id"].isin(list(cell_ids)) & h["status"].isin(CURVE_STATUSES)]


def line(ax, h: pd.DataFrame, y: str, color, linestyle: str, label: str | None = None):
    """Mean over seeds; with several seeds, a band over their range (min to max)."""
    h = h[["epoch", y, "seed"]].dropna()
    if not len(h):
        return
    several = h["seed"].nunique() > 1
    sns.lineplot(
        data=h,
        x="epoch",
        y=y,
        estimator="mean",
        errorbar=("pi", 100) if several else None,
        ax=ax,
        color=color,
        linestyle=linestyle,
        label=label,
        linewidth=2,
        marker="o" if h["epoch"].nunique() <= 3 else None,
        legend=False,
    )


def epoch_axis(ax, last: float) -> None:
    """Integer epoch ticks (every epoch when there are few) from 0.5 to the last epoch + 0.5."""
    ax.xaxis.set_major_locator(MultipleLocator(1) if last <= 12 else MaxNLocator(integer=True))
    ax.set_xlim(0.5, last + 0.5)


def unique(sd: StudyData, column: str) -> str:
    """The distinct values of a runs.csv column, comma-joined in order of appearance ('' if none)."""
    if column not in sd.runs or not sd.runs[column].notna().any():
        return ""
    return ", ".join(str(v) for v in dict.fromkeys(sd.runs[column].dropna()))
