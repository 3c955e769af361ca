"""The claim verdicts: what a measured difference's 95% interval says of the paper's claim."""

from __future__ import annotations

import math

from bench.stats import PAIRED, Difference, Summary

AGREES, DISAGREES, NOT_RESOLVABLE = "agrees", "disagrees", "not resolvable"
VERDICT_RULE = (  # two sentences for the report and the README
    "Each verdict comes from the 95% interval of the measured difference (configuration minus baseline, "
    "paired over the seeds both share: Student t with n − 1 degrees of freedom on the per-seed differences; "
    "Welch's unpaired interval only where they share no seed): `agrees` if it excludes 0 on the paper's "
    "side, `disagrees` if it excludes 0 on the other side, and `not resolvable` if it contains 0 or fewer "
    "than two seeds leave no interval. An overfitting claim agrees only if the gap (test error minus "
    "training error measured without augmentation or dropout) is both wider than at the baseline and "
    "above 0, each by its 95% interval."
)


def verdict(d: Difference | None, side: int) -> str:
    """AGREES, DISAGREES or NOT_RESOLVABLE for a claim that b - a has the sign `side` (+1 or -1).

    Never a direction from one seed: an interval is needed, and it must exclude 0.
    """
    if side not in (1, -1):
        raise ValueError(f"side={side!r} must be +1 or -1")
    if d is None or d.n < 2 or not (math.isfinite(d.lo) and math.isfinite(d.hi)):
        return NOT_RESOLVABLE
    if d.lo > 0:
        return AGREES if side > 0 else DISAGREES
    if d.hi < 0:
        return AGREES if side < 0 else DISAGREES
    return NOT_RESOLVABLE


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
