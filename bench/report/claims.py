"""The paper's claims (`bench.report.paper`, the registry) re-measured: their verdicts from a study's runs.

`assess` turns a study's runs into one `Assessment` per claim it can re-measure:
the difference level − baseline with its 95% interval, and the verdict against the
sign the paper expects (`Claim.side`); `claims_table` gives the same as flat rows
for a table. The factors and levels compared are the registry's, never named here.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, replace

import pandas as pd

from bench.report import format as fmt
from bench.report.load import CLEAN_TRAIN  # the final weights' training error, without augmentation or dropout
from bench.report.paper import (
    CLAIMS,
    FITS_TRAINING_SET,
    LRN_ACTIVE,
    PAPER,
    SPEEDUP,
    TRAINED_OUT,
    Claim,
    claims_for,
    measures,
    same_level,
)
from bench.report.verdict import (
    AGREES,
    NOT_RESOLVABLE,
    detectable,
    half_width,
    overfit_verdict,
    verdict,
    where_paper_lies,
)
from bench.stats import PAIRED, Difference, Summary, compare, summarize
from bench.train.result import OK

# The registry's names too: callers of the claims read them from here.
__all__ = [
    "CLAIMS",
    "NOT_TESTED",
    "PAPER",
    "Assessment",
    "Claim",
    "assess",
    "assess_seeds",
    "assess_speedup",
    "by_seed",
    "claims_for",
    "claims_table",
    "lrn_share",
    "models_of",
]

TOP1 = "final_test_top1_err_pct"
NOT_TESTED = "not tested"  # the mechanism the claim is about was not active in the cells that ran
EARLY_TRAINING = "early training"  # the cells were still improving when they stopped
# An LRN layer whose data term is below this share of its denominator, at the end of training, is a
# constant gain k^-beta, not a normaliser: removing it rescales the signal and nothing else.
LRN_ACTIVE_SHARE = 0.01
# An overfitting claim needs the arm without the regulariser to (nearly) fit its training set: a net
# that cannot fit the training images cannot show a gap that the regulariser would have closed.
FIT_MAX_CLEAN_TRAIN = 10.0  # % clean training error
# Still improving: the best validation epoch is the last, and over the last quarter of the epochs
# (at least 2) validation error falls faster than this, by a least-squares slope.
STILL_FALLING = 0.5  # pp per epoch
VAL_EPOCH = "val_top1_err_pct"
MACS_TOLERANCE = 0.01  # an arm whose MACs differ from the baseline's by more than this has the ratio noted


def models_of(runs: pd.DataFrame) -> set[str] | None:
    """The nets a study's cells trained (runs.csv cfg_model), None where not recorded."""
    if "cfg_model" not in runs or not runs["cfg_model"].notna().any():
        return None
    return {str(m) for m in runs["cfg_model"].dropna().unique()}


# --- verdicts ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Assessment:
    """One claim re-measured: the difference level − baseline (overfit: of the gap; speedup: of
    ln epochs), its verdict, and a note where there is no verdict or something to know."""

    claim: Claim
    effect: Difference | None
    verdict: str
    note: str = ""
    gap: Summary | None = None  # overfit: the gap without the regulariser, over seeds

    def _scaled(self) -> tuple[float, float, float]:
        e = self.effect
        if e is None:
            return math.nan, math.nan, math.nan
        if self.claim.kind == "speedup":
            return math.exp(e.diff), math.exp(e.lo), math.exp(e.hi)
        return e.diff, e.lo, e.hi

    def measured(self) -> str:
        """'+1.23 pp [+0.40, +2.06]', '×2.10 [1.50, 2.95]', or '+1.23 pp (no interval)'."""
        value, lo, hi = self._scaled()
        if math.isnan(value):
            return fmt.MISSING
        ci = f"[{lo:+.2f}, {hi:+.2f}]" if math.isfinite(lo) and math.isfinite(hi) else "(no interval)"
        if self.claim.kind == "speedup":
            ci = f"[{lo:.2f}, {hi:.2f}]" if math.isfinite(lo) and math.isfinite(hi) else "(no interval)"
            return f"×{value:.2f} {ci}"
        text = f"{value:+.2f} pp {ci}"
        if self.claim.kind == "overfit":
            text = f"gap wider by {text}"
            if self.gap is not None and self.gap.n:
                gap_ci = f"[{self.gap.lo:+.2f}, {self.gap.hi:+.2f}]" if self.gap.n >= 2 else "(no interval)"
                text += f"; gap without it {self.gap.mean:+.2f} pp {gap_ci}"
        return text

    def spread(self) -> tuple[float, float]:
        """(half-width, detectable effect) in the row's units: pp, or for a ratio the factor exp(·)."""
        hw, mde = half_width(self.effect), detectable(self.effect)
        if self.claim.kind == "speedup":
            return math.exp(hw), math.exp(mde)
        return hw, mde

    def spread_text(self) -> str:
        """'±1.23 pp; detects 1.80 pp' or '×/÷1.50; detects ×2.10'."""
        hw, mde = self.spread()
        if not math.isfinite(hw):
            return fmt.MISSING
        if self.claim.kind == "speedup":
            return f"×/÷{hw:.2f}; detects ×{mde:.2f}"
        return f"±{hw:.2f} pp; detects {mde:.2f} pp"

    def n_text(self) -> str:
        e = self.effect
        if e is None:
            return "0"
        return f"{e.n} pair{'s' * (e.n != 1)}" if e.method == PAIRED else f"{e.n_a} vs {e.n_b}"

    def row(self) -> dict:
        """Claim, paper's number, measured effect with its 95% interval and n, method, verdict."""
        c, e = self.claim, self.effect
        value, lo, hi = self._scaled()
        return {
            "section": c.section,
            "claim": c.subject,
            "quote": c.quote,
            "data": c.data,
            "paper": c.paper_number,
            "measured": self.measured(),
            "effect": value,
            "lo": lo,
            "hi": hi,
            "n": e.n if e else 0,
            "n_baseline": e.n_a if e else 0,
            "n_level": e.n_b if e else 0,
            "n_text": self.n_text(),
            "half_width": self.spread()[0],
            "detectable": self.spread()[1],
            "spread": self.spread_text(),
            "method": e.method if e else "",
            "verdict": self.verdict,
            "note": self.note,
        }


def _at(runs: pd.DataFrame, levels: Mapping[str, str]) -> pd.DataFrame:
    mask = pd.Series(True, index=runs.index)
    for f, lv in levels.items():
        mask &= runs[f].map(lambda v, lv=lv: same_level(v, lv))
    return runs[mask]


def by_seed(cells: pd.DataFrame, values: pd.Series) -> dict[Hashable, float]:
    """seed -> value for the cells of one configuration (NaN kept: `compare` drops it)."""
    seeds = cells["seed"] if "seed" in cells else pd.Series(0, index=cells.index)
    if seeds.duplicated().any():
        raise ValueError(
            f"seeds repeat within one configuration ({sorted(seeds[seeds.duplicated()])}); "
            "pairing needs one cell per seed (bench.report.load keeps the latest)"
        )
    return {s: float(v) for s, v in zip(seeds, pd.to_numeric(values, errors="coerce"))}


def _column(runs: pd.DataFrame, cells: pd.DataFrame, name: str) -> pd.Series:
    return cells[name] if name in runs else pd.Series(math.nan, index=cells.index)


def _unpaired_note(e: Difference, n_base: int, n_level: int) -> str:
    notes = []
    if e.method == PAIRED and (n_base > e.n or n_level > e.n):
        notes.append(
            f"paired over the {e.n} common seed(s); {n_base - e.n} baseline and {n_level - e.n} "
            "level seed(s) without a partner left out"
        )
    if e.method != PAIRED and e.n:
        notes.append("no seed in common: Welch's unpaired interval")
    if e.n < 2:
        notes.append("fewer than two seeds: no interval")
    return "; ".join(notes)


def assess(
    runs: pd.DataFrame,
    baseline: Mapping[str, str],
    *,
    declared_seeds: list | None = None,
    tuning_seeds: list | None = None,
    history: pd.DataFrame | None = None,
    **kwargs,
) -> list[Assessment]:
    """`assess_seeds` on the seeds the profile declared (its confirmatory n), with what else the
    rows say: any other seed's cells as an exploratory result in the note (the tuning seeds, which
    chose each arm's rate, count in neither), the MACs ratio of an arm that changes compute, cells of
    mixed precision refused, and each claim's preconditions (`bench.report.paper`) checked on the
    declared cells: LRN active, the unregularised arm fitting its training set, training run out
    (from `history`, history.csv's per-epoch rows)."""
    seeds = runs["seed"] if "seed" in runs else pd.Series(0, index=runs.index)
    tuning = set(tuning_seeds or [])
    counted = runs[~seeds.isin(list(tuning))]
    declared = counted if declared_seeds is None else runs[seeds.isin(list(declared_seeds)) & ~seeds.isin(list(tuning))]
    extra = sorted(set(seeds) - set(declared_seeds) - tuning) if declared_seeds is not None else []
    out = assess_seeds(declared, baseline, **kwargs)
    if extra:
        wider = {a.claim: a for a in assess_seeds(counted, baseline, **kwargs)}
        out = [_note(a, _exploratory(wider.get(a.claim), extra)) for a in out]
    precisions = _distinct(runs, "dtype_resolved")
    compute = _macs_ratios(runs, baseline)
    done = []
    for a in out:
        if len(precisions) > 1:
            a = replace(
                a,
                verdict=NOT_RESOLVABLE,
                note=_join(
                    a.note,
                    f"cells of different precision ({', '.join(precisions)}) are not pooled; "
                    f"re-run at one precision (the profile's dtype)",
                ),
            )
        ratio = compute.get((a.claim.factor, a.claim.level))
        if ratio is not None:
            a = _note(a, f"MACs ×{ratio:.2f} of the baseline's")
        if a.effect is not None:
            a = _preconditions(a, declared, baseline, history, kwargs.get("clean_train", CLEAN_TRAIN))
        done.append(a)
    return done


def _preconditions(
    a: Assessment, runs: pd.DataFrame, baseline: Mapping[str, str], history: pd.DataFrame | None, clean_train: str
) -> Assessment:
    """The claim's preconditions, checked in order; the first that fails sets the verdict."""
    ok = runs[runs["status"] == OK] if "status" in runs else runs
    reference = _at(ok, _reference_levels(a.claim, baseline))
    level = _at(ok, {**baseline, a.claim.factor: a.claim.level})
    for need in a.claim.preconditions:
        if need == LRN_ACTIVE:
            a = _lrn_gate(a, reference)
        elif need == FITS_TRAINING_SET:
            a = _fit_gate(a, level, clean_train)
        elif need == TRAINED_OUT:
            a = _trained_gate(a, pd.concat([reference, level]), history)
        if a.verdict.startswith((NOT_TESTED, EARLY_TRAINING)):
            break
    return a


def _join(*parts: str) -> str:
    return "; ".join(p for p in parts if p)


def _note(a: Assessment, text: str) -> Assessment:
    return replace(a, note=_join(a.note, text)) if text else a


def _exploratory(a: Assessment | None, extra: list) -> str:
    if a is None or a.effect is None:
        return ""
    return (
        f"exploratory, with seed(s) {', '.join(str(s) for s in extra)} that the profile did not declare: "
        f"{a.measured()}, {a.n_text()} ({a.verdict}); the verdict uses the declared seeds only"
    )


def _distinct(runs: pd.DataFrame, column: str) -> list[str]:
    ok = runs[runs["status"] == OK] if "status" in runs else runs
    return sorted(str(v) for v in ok[column].dropna().unique()) if column in ok else []


def _macs_ratios(runs: pd.DataFrame, baseline: Mapping[str, str]) -> dict[tuple[str, str], float]:
    """(factor, level) -> mean MACs of the one-at-a-time arm / the baseline's, where they differ."""
    if "macs" not in runs:
        return {}
    macs = pd.to_numeric(runs["macs"], errors="coerce")
    base = macs[_at(runs, baseline).index].mean()
    out = {}
    for f in baseline:
        if f not in runs:
            continue
        for level in runs[f].dropna().unique():
            if same_level(level, baseline[f]):
                continue
            value = macs[_at(runs, {**baseline, f: str(level)}).index].mean()
            if math.isfinite(value) and base > 0 and abs(value / base - 1) > MACS_TOLERANCE:
                out[(f, str(level))] = value / base
    return out


def lrn_share(cells: pd.DataFrame, when: str = "final") -> dict[str, float]:
    """LRN layer -> mean data share of its denominator over `cells` (`bench.models.lrn.lrn_activity`),
    at init or at the end of training ({} where not recorded)."""
    suffix = f"_share_mean_{when}"
    return {
        c[len("lrn_") : -len(suffix)]: float(pd.to_numeric(cells[c], errors="coerce").mean())
        for c in cells.columns
        if c.startswith("lrn_") and c.endswith(suffix) and pd.to_numeric(cells[c], errors="coerce").notna().any()
    }


def _lrn_gate(a: Assessment, reference: pd.DataFrame) -> Assessment:
    """An LRN claim is tested only where the reference arm's LRN normalised: its largest layer's data share
    at the end of training (one layer that normalises is enough for LRN to act)."""
    shares = lrn_share(reference)
    if not shares:
        return replace(
            a, verdict=NOT_TESTED, note=_join(a.note, "LRN activity not recorded: whether LRN normalised is unknown")
        )
    text = ", ".join(f"{layer} {100 * v:.2g}%" for layer, v in shares.items())
    if max(shares.values()) < LRN_ACTIVE_SHARE:
        return replace(
            a,
            verdict=f"{NOT_TESTED}: LRN acts as a constant gain",
            note=_join(
                a.note, f"data share of the LRN denominators after training: {text} (below {LRN_ACTIVE_SHARE:.0%})"
            ),
        )
    return _note(a, f"LRN active: data share of its denominators after training {text}")


def _fit_gate(a: Assessment, level: pd.DataFrame, clean_train: str) -> Assessment:
    """An overfitting claim is tested only where the arm without the regulariser fits its training set."""
    clean = pd.to_numeric(level[clean_train], errors="coerce") if clean_train in level else pd.Series(dtype=float)
    if not clean.notna().any():
        return replace(
            a,
            verdict=NOT_TESTED,
            note=_join(a.note, "clean training error not recorded: whether the nets fit is unknown"),
        )
    mean = float(clean.mean())
    where = f"{a.claim.factor} = {a.claim.level}"
    if mean > FIT_MAX_CLEAN_TRAIN:
        return replace(
            a,
            verdict=f"{NOT_TESTED}: the nets do not fit their training set",
            note=_join(
                a.note,
                f"clean training error at {where} {mean:.1f}% (needs at most {FIT_MAX_CLEAN_TRAIN:g}%): "
                "train longer or on fewer images",
            ),
        )
    return _note(a, f"fits: clean training error at {where} {mean:.1f}%")


def still_improving(curve: pd.DataFrame, metric: str = VAL_EPOCH) -> float | None:
    """The slope (pp per epoch) of `metric` over the last quarter of one cell's epochs where the cell is
    still improving at its end (best epoch the last, slope below -STILL_FALLING), else None."""
    curve = curve.assign(_v=pd.to_numeric(curve[metric], errors="coerce")).dropna(subset=["_v"]).sort_values("epoch")
    if len(curve) < 2 or curve["_v"].idxmin() != curve.index[-1]:
        return None
    tail = curve.tail(max(2, math.ceil(len(curve) / 4)))
    x, y = tail["epoch"].astype(float), tail["_v"]
    slope = float(((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum())
    return slope if slope < -STILL_FALLING else None


def _trained_gate(a: Assessment, cells: pd.DataFrame, history: pd.DataFrame | None) -> Assessment:
    """An accuracy claim whose cells are mostly still improving at their end reads `early training`."""
    if history is None or not len(history) or VAL_EPOCH not in history or "cell_id" not in cells:
        return a
    curves = [history[history["cell_id"] == c] for c in cells["cell_id"]]
    slopes = [still_improving(h) for h in curves if len(h)]
    improving = [s for s in slopes if s is not None]
    if not slopes or 2 * len(improving) <= len(slopes):
        return a
    steps = pd.to_numeric(history[history["cell_id"].isin(cells["cell_id"])]["step"], errors="coerce")
    share = ""
    if a.claim.recipe_steps and steps.notna().any():
        share = (
            f"; the cells ran {steps.groupby(history['cell_id']).max().mean():,.0f} SGD steps, "
            f"{100 * steps.groupby(history['cell_id']).max().mean() / a.claim.recipe_steps:.1f}% of the "
            f"reference recipe's {a.claim.recipe_steps:,}"
        )
    return replace(
        a,
        verdict=EARLY_TRAINING,
        note=_join(
            a.note,
            f"{len(improving)} of {len(slopes)} cells still improving at their end (best validation epoch the "
            f"last, falling {-sum(improving) / len(improving):.1f} pp per epoch over the last quarter){share}",
        ),
    )


def _reference_levels(c: Claim, baseline: Mapping[str, str]) -> dict[str, str]:
    """The cells a claim's level is compared with: the baseline, or for a sensitivity claim the baseline
    with the claim's factor at its reference level."""
    return {**baseline, c.factor: c.reference} if c.sensitivity else dict(baseline)


def assess_seeds(
    runs: pd.DataFrame,
    baseline: Mapping[str, str],
    *,
    metric: str = TOP1,
    clean_train: str = CLEAN_TRAIN,
    claims: tuple[Claim, ...] = CLAIMS,
    only: Mapping[str, list[str]] | None = None,
) -> list[Assessment]:
    """The top1_diff and overfit claims that a one-at-a-time study re-measures, each with its verdict.

    runs: runs.csv rows (factor columns, `seed`, `status`, `metric`, and `clean_train` for the
    overfitting claims); baseline: factor -> baseline level; only: factor -> the only levels the
    profile runs, where it leaves some out. Only cells with status ok count. A claim whose factor
    is not a factor of the study, or whose level the design leaves out, is left out; speedup claims
    are left out (the paper picks each net's learning rate: see `assess_speedup`).
    """
    out = []
    status = runs["status"] if "status" in runs else pd.Series(OK, index=runs.index)
    ok = runs[status == OK]
    models = models_of(runs)
    for c in claims:
        if c.factor not in baseline or c.kind == "speedup" or not measures(c, models):
            continue
        if only and not any(same_level(c.level, lv) for lv in only.get(c.factor, [c.level])):
            continue  # another profile or study runs it (e.g. alexnet cpu-full's `only`)
        if c.sensitivity and not _at(runs, _reference_levels(c, baseline)).shape[0]:
            continue  # a second look that this study does not run
        if not c.sensitivity and not same_level(baseline[c.factor], c.reference):
            out.append(
                Assessment(
                    c,
                    None,
                    NOT_RESOLVABLE,
                    f"the study's baseline is {c.factor} = "
                    f"{baseline[c.factor]}, not the paper's reference {c.reference}",
                )
            )
            continue
        levels = {**baseline, c.factor: c.level}
        base, level = _at(ok, _reference_levels(c, baseline)), _at(ok, levels)
        if not len(level) or not len(base):
            which = "level" if not len(level) else "baseline"
            ran = len(_at(runs, levels if which == "level" else _reference_levels(c, baseline)))
            out.append(
                Assessment(
                    c, None, NOT_RESOLVABLE, f"no finished {which} cell ({'none run' if not ran else f'{ran} not ok'})"
                )
            )
            continue
        if c.kind == "top1_diff":
            a, b = by_seed(base, _column(runs, base, metric)), by_seed(level, _column(runs, level, metric))
            e = compare(a, b)
            notes = [_unpaired_note(e, _count(a), _count(b)), where_paper_lies(e, c.paper_effect)]
            out.append(Assessment(c, e, verdict(e, c.side, c.paper_effect), _join(*notes)))
            continue
        if clean_train not in runs or not runs[clean_train].notna().any():
            out.append(
                Assessment(
                    c,
                    None,
                    NOT_RESOLVABLE,
                    f"no {clean_train} column: the gap needs the training error measured "
                    "without augmentation or dropout",
                )
            )
            continue
        gap = {
            k: by_seed(
                cells, _column(runs, cells, metric).astype(float) - _column(runs, cells, clean_train).astype(float)
            )
            for k, cells in (("base", base), ("level", level))
        }
        e = compare(gap["base"], gap["level"])
        g = summarize(gap["level"].values())
        note = _unpaired_note(e, _count(gap["base"]), _count(gap["level"]))
        v = overfit_verdict(e, g)
        if v != AGREES and verdict(e, c.side) == AGREES:
            note = "; ".join(filter(None, [note, "the gap widens, but is not above 0 without the regulariser"]))
        out.append(Assessment(c, e, v, note, g))
    return out


def assess_speedup(
    reference: Mapping[Hashable, float], level: Mapping[Hashable, float], claim: Claim = SPEEDUP
) -> Assessment:
    """A speedup claim (Figure 1's: `level` tanh, `reference` ReLU) from epochs to the target per seed,
    each arm at its chosen learning rate.

    NaN = the seed did not reach the target. The effect is the paired difference of ln(epochs),
    level − reference (its exp is the geometric-mean ratio). A seed that did not reach the target has no
    epoch count, only a bound, so any such seed leaves the claim not resolvable here.
    """
    values = list(reference.values()) + list(level.values())
    if any(v is not None and math.isfinite(float(v)) and float(v) <= 0 for v in values):
        raise ValueError("epochs to the target must be positive")
    censored = sum(1 for v in values if v is None or not math.isfinite(float(v)))
    ref_log, level_log = (
        {s: math.log(float(v)) if v is not None and math.isfinite(float(v)) else math.nan for s, v in d.items()}
        for d in (reference, level)
    )
    e = compare(ref_log, level_log)
    if censored:
        return Assessment(
            claim, None, NOT_RESOLVABLE, f"{censored} cell(s) did not reach the target: only a lower bound on the ratio"
        )
    notes = [_unpaired_note(e, len(reference), len(level)), where_paper_lies(e, claim.paper_effect, _as_ratio)]
    return Assessment(claim, e, verdict(e, claim.side, claim.paper_effect), _join(*notes))


def _as_ratio(ln_ratio: float) -> str:
    return f"×{math.exp(ln_ratio):.2g}"


def _count(values: Mapping[Hashable, float]) -> int:
    return sum(1 for v in values.values() if math.isfinite(v))


def claims_table(runs: pd.DataFrame, baseline: Mapping[str, str], **kwargs) -> list[dict]:
    """`assess` as flat rows (see `Assessment.row`): one per claim the study re-measures."""
    return [a.row() for a in assess(runs, baseline, **kwargs)]
