"""The claim verdicts: what a measured difference's 95% interval says of the paper's claim.

A claim with a number (the paper's effect v, or its ratio on the log scale) is judged against
both 0 and v, so an interval that rules out an effect as large as the paper's says so even when
it cannot tell the sign; a claim with a sign only (the overfitting gaps) is judged against 0.
Beside each verdict: the interval's half-width and the smallest effect its n could detect
(`detectable`), so a reader sees what a `not resolvable` row could not have seen.
"""

from __future__ import annotations

import math

from bench.stats import CONFIDENCE, PAIRED, Difference, Summary, t_quantile

AGREES, DISAGREES, NOT_RESOLVABLE = "agrees", "disagrees", "not resolvable"
SMALLER = "smaller than the paper's"
POWER = 0.80  # the power at which `detectable` is quoted (the usual planning convention)
VERDICT_RULE = (  # for the report and the README
    "Each verdict comes from the 95% interval of the measured difference (configuration minus baseline, "
    "paired over the declared seeds both share: Student t with n − 1 degrees of freedom on the per-seed "
    "differences; Welch's unpaired interval only where they share no seed), set against 0 and the paper's "
    "effect v: `agrees` if it excludes 0 on the paper's side (the note says whether it also contains v), "
    "`disagrees` if it excludes 0 on the other side, `smaller than the paper's` if it contains 0 but lies "
    "wholly short of v, and `not resolvable` if it contains both, or fewer than two seeds leave no interval. "
    "Figure 1's ratio is judged the same way on the log scale, against 1 and the paper's ×6. An overfitting "
    "claim (no number in the paper) agrees only if the gap (test error minus training error measured without "
    "augmentation or dropout) is both wider than at the baseline and above 0, each by its 95% interval. "
    "`half-width` is half the interval; `detectable` is the smallest true effect that n seeds with this spread "
    "would find (excluding 0) four times in five."
)


def _interval(d: Difference | None) -> bool:
    return d is not None and d.n >= 2 and math.isfinite(d.lo) and math.isfinite(d.hi)


def verdict(d: Difference | None, side: int, paper: float | None = None) -> str:
    """The verdict on a claim that b − a has the sign `side` (+1 or -1) and, where the paper gives one,
    the size `paper` (same units as `d`; signed, so `paper` has the sign `side`).

    Never a direction from one seed: an interval is needed.
    """
    if side not in (1, -1):
        raise ValueError(f"side={side!r} must be +1 or -1")
    if paper is not None and (paper == 0 or math.copysign(1, paper) != side):
        raise ValueError(f"paper={paper!r} must be non-zero with the sign of side={side}")
    if not _interval(d):
        return NOT_RESOLVABLE
    if d.lo > 0 or d.hi < 0:
        return AGREES if (d.lo > 0) == (side > 0) else DISAGREES
    if paper is not None and not (d.lo <= paper <= d.hi):
        return SMALLER  # contains 0, so the interval lies between 0's side and short of v
    return NOT_RESOLVABLE


def where_paper_lies(d: Difference | None, paper: float | None, show=lambda v: f"{v:+.2f}") -> str:
    """Where the paper's value lies against the interval, in words ('' without an interval or a value)."""
    if paper is None or not _interval(d):
        return ""
    if d.lo > paper:
        return f"the interval lies above the paper's {show(paper)}"
    if d.hi < paper:
        return f"the interval lies below the paper's {show(paper)}"
    return f"the paper's {show(paper)} lies inside the interval"


def half_width(d: Difference | None) -> float:
    return (d.hi - d.lo) / 2 if _interval(d) else math.nan


def detectable(d: Difference | None, power: float = POWER) -> float:
    """The smallest true effect that a study of this n and spread detects (its 95% interval excluding 0)
    with probability `power`: (t_0.975 + t_power) · se, the se read off the interval itself."""
    if not _interval(d) or not math.isfinite(d.df) or d.df <= 0:
        return math.nan
    t_conf = t_quantile(0.5 + CONFIDENCE / 2, d.df)
    return (t_conf + t_quantile(power, d.df)) * half_width(d) / t_conf


def overfit_verdict(widening: Difference | None, gap: Summary | None) -> str:
    """Verdict on "without the regulariser, the net overfits (more)".

    widening: the change of the gap (test error minus clean training error) from the baseline to
    the configuration without the regulariser, ideally paired; gap: that configuration's gap
    over seeds. AGREES needs both intervals above 0: a wider gap, and a gap at all (a gap that
    goes from -6 to -1 pp is wider but is no overfitting). DISAGREES where either interval is below 0:
    the gap narrows, or test error is below clean training error without the regulariser.
    """
    widened = verdict(widening, +1)
    positive = (
        NOT_RESOLVABLE
        if gap is None or gap.n < 2
        else verdict(Difference(gap.mean, gap.lo, gap.hi, gap.n - 1.0, PAIRED, gap.n), +1)
    )
    if DISAGREES in (widened, positive):
        return DISAGREES
    return AGREES if widened == positive == AGREES else NOT_RESOLVABLE
